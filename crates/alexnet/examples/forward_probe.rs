//! Times inference (test-mode forward passes) of a preset on the fast CPU
//! backend, layer by layer: the figure the CPU speed work aims at, without the
//! training measurements `alexnet bench` runs first. Also a steady loop to
//! profile (`perf record`).
//!
//! ```text
//! cargo run --release -p alexnet --example forward_probe [PRESET] [BATCH] [PASSES] [fp32|bf16]
//! ```
//! Defaults: `alexnet`, batch 64, 10 passes (after one warm-up pass), fp32 products.

use std::time::Instant;

use alexnet::{Bf16Kernel, Cpu, Mode, Model, NetSpec, Network, Precision, Products, rng::Rng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let preset = args.next().unwrap_or_else(|| "alexnet".into());
    let batch: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let passes: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let precision = match args.next().as_deref() {
        None | Some("fp32") => Precision::F32,
        Some("bf16") => Precision::Bf16,
        Some(other) => return Err(format!("precision: fp32 or bf16, not {other}").into()),
    };

    let spec = NetSpec::preset(&preset)?;
    let products = Products {
        precision,
        bf16_kernel: Bf16Kernel::detect(),
    };
    let mut net = Network::new(Cpu::with_products(products)?, &spec, batch, 1)?;
    let plan = net.plan().clone();
    let mut rng = Rng::new(2);
    let images: Vec<f32> = (0..batch * plan.input_shape().len())
        .map(|_| (rng.uniform() as f32 - 0.5) * 100.0)
        .collect();
    net.predict(&images)?;

    // Whole passes first, untimed by layer (recording synchronises after each layer).
    let started = Instant::now();
    for _ in 0..passes {
        net.predict(&images)?;
    }
    let per_pass = started.elapsed().as_secs_f64() / passes as f64;

    net.record_layer_times(true);
    for _ in 0..passes {
        net.set_input(&images)?;
        net.forward(Mode::Test);
    }
    let times = net.layer_times().expect("recording is on").clone();
    println!(
        "{preset}, batch {batch}, {} threads: {:.1} images/s ({:.1} ms per pass)",
        rayon::current_num_threads(),
        batch as f64 / per_pass,
        per_pass * 1e3
    );
    for (layer, seconds) in plan.layers.iter().zip(&times.forward) {
        println!(
            "  {:<18} {:8.2} ms",
            layer.label,
            seconds / passes as f64 * 1e3
        );
    }
    Ok(())
}
