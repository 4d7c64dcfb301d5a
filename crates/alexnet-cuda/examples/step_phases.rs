//! Where a training step's time goes on the GPU, phase by phase: the paper's net at
//! batch 128, each phase followed by a wait for the GPU, so each figure is that
//! phase alone. `alexnet bench` times whole steps; this splits them.
//!
//!   cargo run --release -p alexnet-cuda --example step_phases [-- BATCH [STEPS [PRECISION]]]
//!
//! PRECISION is fp32 (the default), tf32 or bf16, as `--precision` takes them.
//!
//! Phases: uploading an f32 batch (the bench's input); uploading 256x256 stored
//! bytes and cutting 227x227 views on the GPU (the training loader's input); the
//! forward pass in training mode (dropout masks drawn on the host) and with masks
//! given; the backward pass (with the loss read back); the SGD update.

use std::time::Instant;

use alexnet::input::{StoredBatch, ViewPlacement};
use alexnet::layers::Shape;
use alexnet::rng::Rng;
use alexnet::{Backend, Mode, Model, NetSpec, Network, Sgd};
use alexnet_cuda::{CudaBackend, Precision};

const USAGE: &str = "arguments: BATCH [STEPS [fp32|tf32|bf16]]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().unwrap_or_else(|_| panic!("{USAGE}")))
    };
    let batch = number(0, 128);
    let steps = number(1, 10);
    let precision = match args.get(2).map(String::as_str) {
        None | Some("fp32") => Precision::F32,
        Some("tf32") => Precision::Tf32,
        Some("bf16") => Precision::Bf16,
        Some(_) => panic!("{USAGE}"),
    };
    let backend = match CudaBackend::with_precision(0, precision) {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("SKIPPED: no CUDA backend: {e}");
            return;
        }
    };
    println!("{}", backend.describe());
    let spec = NetSpec::preset("alexnet").expect("the alexnet preset parses");
    let mut net = Network::new(backend, &spec, batch, 1).expect("the net fits");
    let input = net.plan().input_shape();
    let mut rng = Rng::new(3);
    let images: Vec<f32> = (0..batch * input.len())
        .map(|_| (rng.uniform() * 255.0 - 128.0) as f32)
        .collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 1000).collect();
    let stored = Shape::new(3, 256, 256);
    let pixels: Vec<u8> = (0..batch * stored.len())
        .map(|_| (rng.uniform() * 256.0) as u8)
        .collect();
    let views: Vec<ViewPlacement> = (0..batch)
        .map(|image| ViewPlacement {
            image,
            y: 14,
            x: 15,
            flip: image % 2 == 1,
            shift: [1.0, -2.0, 0.5],
        })
        .collect();
    let stored_batch = StoredBatch::raw(&pixels, stored, input.height, input.width, &views);
    let masks: Vec<Vec<f32>> = net
        .plan()
        .layers
        .iter()
        .filter(|l| matches!(l.op, alexnet::plan::Op::Dropout { .. }))
        .map(|l| vec![2.0; batch * l.output.len()])
        .collect();
    let sgd = Sgd::from_recipe(&spec.recipe);

    // Each phase ends with a small download, which waits for the GPU.
    let mut phases: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut time = |name: &'static str, f: &mut dyn FnMut(&mut Network<CudaBackend>)| {
        let start = Instant::now();
        f(&mut net);
        let _ = net.param_values(net.plan().params.len() - 1);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        match phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(ms),
            None => phases.push((name, vec![ms])),
        }
    };
    for _ in 0..steps + 1 {
        time("upload f32 batch", &mut |n| {
            n.set_input(&images).unwrap();
        });
        time("upload bytes, cut views", &mut |n| {
            n.set_input_stored(&stored_batch).unwrap();
        });
        time("forward, masks drawn", &mut |n| n.forward(Mode::Train));
        time("forward, masks given", &mut |n| {
            n.set_next_dropout_masks(&masks).unwrap();
            n.forward(Mode::Train)
        });
        time("backward (+ loss)", &mut |n| {
            n.backward(&labels).unwrap();
        });
        time("sgd update", &mut |n| n.sgd_step(&sgd));
        time("forward, test mode", &mut |n| n.forward(Mode::Test));
    }
    copy_bandwidth(images.len());
    println!("batch {batch}, median of {steps} (after one warm-up), ms:");
    for (name, mut v) in phases {
        v.remove(0);
        v.sort_by(f64::total_cmp);
        println!("  {name:<26} {:8.2}", v[v.len() / 2]);
    }
}

/// Host-to-device copies of `len` f32 values from ordinary (pageable) memory and
/// from page-locked memory, in GB/s: what an upload could gain by staging.
fn copy_bandwidth(len: usize) {
    let context = cudarc::driver::CudaContext::new(0).expect("device 0 opened above");
    let stream = context.default_stream();
    let mut device = stream.alloc_zeros::<f32>(len).expect("room for one batch");
    let pageable = vec![1.0f32; len];
    // SAFETY: filled before it is read.
    let mut pinned = unsafe {
        context
            .alloc_pinned_with_flags::<f32>(len, 0)
            .expect("page-locked memory")
    };
    pinned
        .as_mut_slice()
        .expect("page-locked memory is mapped")
        .fill(1.0);
    let gigabytes = (len * 4) as f64 / 1e9;
    for (name, pinned_source) in [("pageable", false), ("page-locked", true)] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            if pinned_source {
                stream.memcpy_htod(&pinned, &mut device).unwrap();
            } else {
                stream.memcpy_htod(&pageable, &mut device).unwrap();
            }
            stream.synchronize().unwrap();
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "host to device, {name}: {:.1} GB/s ({:.2} ms for {gigabytes:.3} GB)",
            gigabytes / best,
            best * 1e3
        );
    }
}
