//! Where a training step's memory goes: resident memory (Linux) after building
//! the net, after a first training step and after a few more, beside what the
//! plan's buffers account for.
//!
//! ```text
//! cargo run --release -p alexnet --example memory_probe [PRESET] [BATCH] [fp32|bf16]
//! ```
//! Defaults: `alexnet`, batch 128, bf16.

use alexnet::fusion::{self, Fusion};
use alexnet::{Cpu, Model, NetSpec, Network, Precision, Products, Sgd, rng::Rng};

fn resident(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

fn report(stage: &str) {
    println!(
        "  {stage:<28} resident {:8.1} MiB, peak {:8.1} MiB",
        resident("VmRSS:"),
        resident("VmHWM:")
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let preset = args.next().unwrap_or_else(|| "alexnet".into());
    let batch: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let precision = match args.next().as_deref() {
        None | Some("bf16") => Precision::Bf16,
        Some("fp32") => Precision::F32,
        Some(other) => {
            return Err(format!("precision: expected fp32 or bf16, found {other}").into());
        }
    };
    let spec = NetSpec::preset(&preset)?;
    let backend = Cpu::with_products(Products {
        precision,
        ..Products::default()
    })?;
    println!("{preset}, batch {batch}, {}", precision.name());
    report("start");
    let mut net = Network::new(backend, &spec, batch, 1)?;
    let plan = net.plan().clone();
    report("net built");

    let mib = |floats: usize| floats as f64 * 4.0 / (1 << 20) as f64;
    let params: usize = plan.params.iter().map(|p| p.len()).sum();
    // A fused LRN's output has no buffer (see `alexnet::fusion`).
    let fusions = fusion::fusions(&plan);
    let unkept: usize = plan
        .layers
        .iter()
        .zip(&fusions)
        .filter(|(_, f)| matches!(f, Fusion::LrnIntoPool { .. }))
        .map(|(layer, _)| plan.activations[layer.dst])
        .sum();
    let activations = plan.activations.iter().sum::<usize>() - unkept;
    let [first, second] = fusion::gradient_lens(&plan, &fusions);
    println!(
        "  planned: parameters x3 {:.1} MiB; activations {:.2} MiB/image; gradients {:.2} + {:.2} MiB/image",
        mib(3 * params),
        mib(activations),
        mib(first),
        mib(second)
    );

    let mut rng = Rng::new(2);
    let images: Vec<f32> = (0..batch * plan.input_shape().len())
        .map(|_| (rng.uniform() * 256.0 - 128.0) as f32)
        .collect();
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.below(plan.classes()) as u32)
        .collect();
    report("batch made");
    let sgd = Sgd {
        learning_rate: 1e-5,
        ..Sgd::from_recipe(&spec.recipe)
    };
    net.train_step(&images, &labels, &sgd)?;
    report("first step");
    for _ in 0..3 {
        net.train_step(&images, &labels, &sgd)?;
    }
    report("four steps");
    Ok(())
}
