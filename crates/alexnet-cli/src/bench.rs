//! `alexnet bench`: images per second for the training step (forward, backward
//! and SGD) and for inference, latency at batch 1, peak memory, and the time of
//! each layer's forward and backward pass, on random data.

use std::time::Instant;

use alexnet::fusion::Fusion;
use alexnet::input::{StoredBatch, ViewPlacement};
use alexnet::layers::Shape;
use alexnet::plan::Op;
use alexnet::rng::Rng;
use alexnet::{Mode, Model, NetSpec, Sgd};
use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::engine::EngineSettings;

#[derive(Args)]
pub struct BenchArgs {
    /// A preset name or the path of a TOML description.
    #[arg(long, default_value = "alexnet")]
    arch: String,
    /// Seconds to run each measurement for (after one warm-up step).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Batch sizes of the training-step measurements.
    #[arg(long, value_delimiter = ',', default_value = "128,64")]
    train_batch: Vec<usize>,
    /// Batch size of the inference measurement.
    #[arg(long, default_value_t = 64)]
    infer_batch: usize,
    /// Training steps to time per layer (0 skips the breakdown). With --parallel
    /// towers a layer's time is the towers' times added up, and the exchanges
    /// between them are in no row.
    #[arg(long, default_value_t = 2)]
    layer_steps: usize,
    /// Also time preparing this photo as `classify` and `serve` do (decode,
    /// resize to --photo-size, crop, subtract a mean), on one thread.
    #[arg(long)]
    photo: Option<std::path::PathBuf>,
    /// The stored size --photo is resized to (the paper's 256).
    #[arg(long, default_value_t = 256, requires = "photo")]
    photo_size: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub placement: crate::device::Placement,
    #[command(flatten)]
    pub engine: crate::engine::EngineArgs,
}

/// Peak resident memory of this process so far, in bytes (Linux), if known.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

const BENCH_LEARNING_RATE: f32 = 1e-5;

struct Batch {
    images: Vec<f32>,
    labels: Vec<u32>,
}

fn random_batch(rng: &mut Rng, n: usize, image_len: usize, classes: usize) -> Batch {
    // Pixel values on the paper's scale: 0-255 minus a mean, so roughly +-128.
    let images = (0..n * image_len)
        .map(|_| (rng.uniform() * 256.0 - 128.0) as f32)
        .collect();
    let labels = (0..n).map(|_| rng.below(classes) as u32).collect();
    Batch { images, labels }
}

/// Runs `step` once to warm up, then repeatedly for at least `seconds` (and twice);
/// returns seconds per step.
fn time_steps(seconds: f64, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    let started = Instant::now();
    let mut steps = 0;
    while steps < 2 || started.elapsed().as_secs_f64() < seconds {
        step()?;
        steps += 1;
    }
    Ok(started.elapsed().as_secs_f64() / steps as f64)
}

pub fn run(args: BenchArgs, engine: &EngineSettings) -> Result<()> {
    let spec = NetSpec::resolve(&args.arch)?;
    let max_batch = args
        .train_batch
        .iter()
        .copied()
        .chain([args.infer_batch, 1])
        .max()
        .unwrap_or(1);
    if args.train_batch.contains(&0) || args.infer_batch == 0 {
        bail!("batch sizes must be at least 1");
    }
    let net = args.placement.nets(engine).network(&spec, max_batch, 1)?;
    measure(args, spec, net, engine.worker_threads())
}

/// Times `net` (built for the largest batch asked for) and prints the report.
fn measure(args: BenchArgs, spec: NetSpec, mut net: Box<dyn Model>, threads: usize) -> Result<()> {
    let mut rng = Rng::new(2);
    // Speed does not depend on the learning rate; a small one keeps the loss finite
    // while the same random batch is trained on again and again (at the recipe's
    // 0.01 it diverges within a few steps). tools/bench_pytorch.py uses the same.
    let sgd = Sgd {
        learning_rate: BENCH_LEARNING_RATE,
        ..Sgd::from_recipe(&spec.recipe)
    };
    let backend = net.describe();

    let mut training = TrainingBench {
        seconds: args.seconds,
        net: net.as_mut(),
        rng: &mut rng,
        sgd: &sgd,
    };
    let mut train = Vec::new();
    for &batch in &args.train_batch {
        train.push(training.f32_batches(batch)?);
    }
    let train_peak = peak_resident_bytes();
    let train_stored = match args.train_batch.first() {
        Some(&batch) => Some(training.stored_batches(batch)?),
        None => None,
    };
    let (inference, latency) = time_inference(&args, net.as_mut(), &mut rng)?;
    let layers = if args.layer_steps > 0 {
        layer_breakdown(&args, net.as_mut(), &mut rng)?
    } else {
        Vec::new()
    };
    let photo = match &args.photo {
        Some(path) => Some(time_photo(&args, path, net.plan().input_shape())?),
        None => None,
    };

    let report = json!({
        "arch": spec.name,
        "backend": backend,
        "threads": threads,
        "train": train,
        "train_stored": train_stored,
        "inference": inference,
        "latency_batch1_ms": latency * 1e3,
        "peak_resident_bytes_training": train_peak,
        "peak_resident_bytes": peak_resident_bytes(),
        "layers": layers,
        "photo": photo,
    });
    if args.json {
        println!("{report}");
    } else {
        print_report(&report, &args);
    }
    Ok(())
}

/// Preparing a photo file for the net, repeated: decoding, resizing and
/// cropping to the stored size, then the input crop with a mean subtracted.
fn time_photo(args: &BenchArgs, path: &std::path::Path, input: Shape) -> Result<serde_json::Value> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("--photo {}: {e}", path.display()))?;
    let side = args.photo_size as usize;
    if side < input.height || side < input.width || input.channels != 3 {
        bail!("--photo-size {side} must hold the net's {input} RGB input");
    }
    let preprocess = alexnet_train::Preprocess {
        stored: [3, side, side],
        subtract_mean: true,
        pixels: alexnet::spec::PixelScale::RawMinusMean,
        channel_std: None,
        class_ids: Vec::new(),
        class_names: Vec::new(),
        dataset: String::new(),
        mean: vec![120.0; 3 * side * side],
    };
    let per_image = time_steps(args.seconds.min(3.0), || {
        let photo =
            alexnet_data::photo_from_bytes(&bytes, args.photo_size, crate::classify::MAX_PIXELS)
                .map_err(|e| anyhow::anyhow!("--photo {}: {e}", path.display()))?;
        crate::classify::photo_input(&photo, &preprocess, input.height, input.width)?;
        Ok(())
    })?;
    Ok(json!({"file": path.display().to_string(), "size": side, "ms_per_image": per_image * 1e3}))
}

/// Training steps of `net` on random data, each kind timed for `seconds`.
struct TrainingBench<'a> {
    seconds: f64,
    net: &'a mut dyn Model,
    rng: &'a mut Rng,
    sgd: &'a Sgd,
}

impl TrainingBench<'_> {
    /// Training steps on one random batch of `batch` f32 images, repeated.
    fn f32_batches(&mut self, batch: usize) -> Result<serde_json::Value> {
        let plan = self.net.plan();
        let data = random_batch(self.rng, batch, plan.input_shape().len(), plan.classes());
        let (net, sgd) = (&mut *self.net, self.sgd);
        time_training_steps(self.seconds, batch, || {
            Ok(net.train_step(&data.images, &data.labels, sgd)?)
        })
    }

    /// The trainer's own input path: stored bytes (here 1/8 larger than the input
    /// on each side, as 256 is to the paper's 224) from which the backend cuts the
    /// views, reflected and colour-shifted; a GPU does it on the device after
    /// copying a quarter of the bytes an f32 batch needs.
    fn stored_batches(&mut self, batch: usize) -> Result<serde_json::Value> {
        let (net, rng, sgd) = (&mut *self.net, &mut *self.rng, self.sgd);
        let input = net.plan().input_shape();
        let classes = net.plan().classes();
        let stored = Shape::new(
            input.channels,
            input.height + input.height / 8,
            input.width + input.width / 8,
        );
        let pixels: Vec<u8> = (0..batch * stored.len())
            .map(|_| rng.below(256) as u8)
            .collect();
        let views: Vec<ViewPlacement> = (0..batch)
            .map(|image| ViewPlacement {
                image,
                y: rng.below(stored.height - input.height + 1),
                x: rng.below(stored.width - input.width + 1),
                flip: rng.below(2) == 1,
                // In place of a mean image: values centred as the f32 batch's are.
                shift: [-128.0; 3],
            })
            .collect();
        let stored_batch = StoredBatch::raw(&pixels, stored, input.height, input.width, &views);
        let labels = random_batch(rng, batch, 0, classes).labels;
        time_training_steps(self.seconds, batch, || {
            net.set_input_stored(&stored_batch)?;
            net.forward(Mode::Train);
            let loss = net.backward(&labels)?;
            net.sgd_step(sgd);
            Ok(loss)
        })
    }
}

/// `step` (one training step of `batch` images, returning its loss) repeated
/// for `seconds`: its report, or an error once a loss is not finite.
fn time_training_steps(
    seconds: f64,
    batch: usize,
    mut step: impl FnMut() -> Result<f32>,
) -> Result<serde_json::Value> {
    let per_step = time_steps(seconds, || {
        let loss = step()?;
        if !loss.is_finite() {
            bail!("loss became {loss}");
        }
        Ok(())
    })?;
    Ok(
        json!({"batch": batch, "images_per_s": batch as f64 / per_step, "ms_per_step": per_step * 1e3}),
    )
}

/// Inference at `--infer-batch` (its report) and the seconds of one image.
fn time_inference(
    args: &BenchArgs,
    net: &mut dyn Model,
    rng: &mut Rng,
) -> Result<(serde_json::Value, f64)> {
    let (image_len, classes) = (net.plan().input_shape().len(), net.plan().classes());
    let data = random_batch(rng, args.infer_batch, image_len, classes);
    let per_batch = time_steps(args.seconds, || {
        net.predict(&data.images)?;
        Ok(())
    })?;
    let inference =
        json!({"batch": args.infer_batch, "images_per_s": args.infer_batch as f64 / per_batch});
    let one = random_batch(rng, 1, image_len, classes);
    let latency = time_steps(args.seconds.min(5.0), || {
        net.predict(&one.images)?;
        Ok(())
    })?;
    Ok((inference, latency))
}

/// Each layer's forward and backward time over `--layer-steps` training passes
/// at the first training batch size.
fn layer_breakdown(
    args: &BenchArgs,
    net: &mut dyn Model,
    rng: &mut Rng,
) -> Result<Vec<serde_json::Value>> {
    let plan = net.plan().clone();
    let batch = args.train_batch[0];
    let data = random_batch(rng, batch, plan.input_shape().len(), plan.classes());
    net.record_layer_times(true);
    for _ in 0..args.layer_steps {
        net.set_input(&data.images)?;
        net.forward(Mode::Train);
        net.backward(&data.labels)?;
    }
    let times = net.layer_times().expect("recording is on");
    net.record_layer_times(false);
    let fusions = alexnet::fusion::fusions(&plan);
    let steps = args.layer_steps as f64;
    let mut layers = Vec::new();
    for (index, layer) in plan.layers.iter().enumerate() {
        let macs = match &layer.op {
            Op::Conv { geometry, .. } => geometry.forward_macs(),
            Op::Linear { geometry, .. } => geometry.weight_len(),
            _ => 0,
        } as f64
            * batch as f64;
        let (fwd, bwd) = (times.forward[index] / steps, times.backward[index] / steps);
        // Backward computes the weight gradient and, except for a layer reading the
        // network input, the input gradient: two products of the forward's size.
        let backward_products = if layer.src == 0 { 2.0 } else { 4.0 };
        layers.push(json!({
            "layer": layer.label,
            "output": layer.output.to_string(),
            "forward_ms": fwd * 1e3,
            "backward_ms": bwd * 1e3,
            // 2 flops per multiply-add.
            "forward_gflops": if macs > 0.0 { 2.0 * macs / fwd / 1e9 } else { 0.0 },
            "backward_gflops": if macs > 0.0 && bwd > 0.0 { backward_products * macs / bwd / 1e9 } else { 0.0 },
            // Layers run as one operation: the times are all in one of the rows.
            "fused_with": match fusions[index] {
                Fusion::Alone => None,
                Fusion::LrnIntoPool { pool } => Some(plan.layers[pool].label.clone()),
                Fusion::PoolAfterLrn { lrn } => Some(plan.layers[lrn].label.clone()),
                Fusion::ConvWithRelu { relu } => Some(plan.layers[relu].label.clone()),
                Fusion::ReluAfterConv { conv } => Some(plan.layers[conv].label.clone()),
            },
        }));
    }
    Ok(layers)
}

/// The report as a table.
fn print_report(report: &serde_json::Value, args: &BenchArgs) {
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    println!(
        "alexnet bench: {} on {}",
        report["arch"].as_str().unwrap_or(""),
        report["backend"].as_str().unwrap_or("")
    );
    for t in report["train"].as_array().into_iter().flatten() {
        println!(
            "  training step, batch {:>3}: {:>8.1} images/s ({:.0} ms/step)",
            t["batch"],
            number(&t["images_per_s"]),
            number(&t["ms_per_step"])
        );
    }
    if let Some(t) = report["train_stored"].as_object() {
        println!(
            "  training step, batch {:>3}, from stored bytes: {:>8.1} images/s ({:.0} ms/step)",
            t["batch"],
            number(&t["images_per_s"]),
            number(&t["ms_per_step"])
        );
    }
    println!(
        "  inference,     batch {:>3}: {:>8.1} images/s",
        args.infer_batch,
        number(&report["inference"]["images_per_s"])
    );
    println!(
        "  latency,       batch   1: {:>8.2} ms",
        number(&report["latency_batch1_ms"])
    );
    if let Some(photo) = report["photo"].as_object() {
        println!(
            "  preparing {} at {}: {:.2} ms per image (one thread)",
            photo["file"].as_str().unwrap_or(""),
            photo["size"],
            number(&photo["ms_per_image"])
        );
    }
    if let Some(peak) = report["peak_resident_bytes_training"].as_u64() {
        println!(
            "  peak resident memory after training: {:.2} GiB",
            peak as f64 / (1u64 << 30) as f64
        );
    }
    let layers = report["layers"].as_array().map_or(&[][..], |l| &l[..]);
    if layers.is_empty() {
        return;
    }
    println!(
        "\n  per layer, training batch {} (ms):",
        args.train_batch[0]
    );
    println!(
        "  {:<22} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "layer", "output", "forward", "backward", "fwd GF/s", "bwd GF/s"
    );
    for l in layers {
        println!(
            "  {:<22} {:>12} {:>10.2} {:>10.2} {:>9.0} {:>9.0}",
            l["layer"].as_str().unwrap_or(""),
            l["output"].as_str().unwrap_or(""),
            number(&l["forward_ms"]),
            number(&l["backward_ms"]),
            number(&l["forward_gflops"]),
            number(&l["backward_gflops"]),
        );
    }
    if layers.iter().any(|l| !l["fused_with"].is_null()) {
        println!(
            "  (fused layers: a ReLU's forward pass is in its convolution's row; an LRN and the \
             max pooling after it run as one operation, both forward passes in the LRN's row, \
             both backward passes in the pooling's)"
        );
    }
}
