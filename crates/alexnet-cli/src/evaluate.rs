//! `alexnet eval`: top-1 and top-5 error of a checkpoint on a dataset split.

use std::path::PathBuf;

use alexnet::checkpoint;
use alexnet_data::Dataset;
use alexnet_train::{
    Preprocess, check_compatible, eval_view, evaluate, part_of, reduce_evaluation,
};
use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::engine::EngineSettings;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    weights: crate::weights::CheckpointArg,
    /// A prepared dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// The split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Average the softmax over the paper's ten patches (corners, centre, reflections).
    #[arg(long)]
    ten_crop: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Print JSON, with per-class accuracy and the confusion matrix.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub dist: crate::dist::DistArgs,
    #[command(flatten)]
    pub placement: crate::device::Placement,
    #[command(flatten)]
    pub engine: crate::engine::EngineArgs,
}

/// Evaluates as the flags say; under mpirun every process evaluates its part
/// of each batch, and rank 0 prints the sums.
pub fn run(args: EvalArgs, engine: &EngineSettings) -> Result<()> {
    let comm = crate::dist::communicator(&args.dist, args.placement.main_device())?;
    let path = args.weights.path()?;
    let ckpt = checkpoint::load_weights(&path)?;
    let preprocess = Preprocess::from_checkpoint(&ckpt)?;
    let dataset = Dataset::open(&args.data)
        .with_context(|| format!("opening dataset {}", args.data.display()))?;
    let split = dataset.split(&args.split)?;
    let views = if args.ten_crop { 10 } else { 1 };
    let mut net = args
        .placement
        .nets(engine)
        .network_zeroed(&ckpt.spec, args.batch.max(1) * views)?;
    ckpt.apply(net.as_mut(), &path, false)?;
    let shape = net.plan().input_shape();
    check_compatible(&dataset, &ckpt.spec)?;
    let view = eval_view(&preprocess, shape.height, shape.width, args.ten_crop);
    let started = std::time::Instant::now();
    let mean = preprocess.mean_for(&dataset)?;
    let result = evaluate(
        net.as_mut(),
        split,
        None,
        view,
        &dataset,
        mean,
        engine.worker_threads(),
        args.json,
        part_of(comm.as_ref()),
    )?;
    let result = reduce_evaluation(comm.as_ref(), result)?;
    let seconds = started.elapsed().as_secs_f64();
    if comm.rank() != 0 {
        return Ok(());
    }
    if args.json {
        let confusion = result.confusion.clone().unwrap_or_default();
        let per_class: Vec<_> = confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                json!({
                    "class": dataset.info().classes.get(c).map(|k| k.name.clone()),
                    "images": total,
                    "accuracy": if total > 0 { row[c] as f64 / total as f64 } else { 0.0 },
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "checkpoint": path.display().to_string(),
                "data": args.data.display().to_string(),
                "split": args.split,
                "views": views,
                "images": result.images,
                "top1_error": result.top1_error(),
                "top5_error": result.top5_error(),
                "loss": result.mean_loss(),
                "seconds": seconds,
                "per_class": per_class,
                "confusion": confusion,
            })
        );
    } else {
        println!(
            "{} images of '{}', {}: top-1 error {:.2}%, top-5 error {:.2}% ({:.1} s)",
            result.images,
            args.split,
            if args.ten_crop {
                "ten patches"
            } else {
                "centre crop"
            },
            100.0 * result.top1_error(),
            100.0 * result.top5_error(),
            seconds
        );
    }
    Ok(())
}
