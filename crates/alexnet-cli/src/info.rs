//! `alexnet info`: a net's layers, output shapes and parameters; a checkpoint's
//! network, training state and preprocessing; a dataset's classes, splits, image
//! size, mean and colour principal components.

use std::path::PathBuf;

use alexnet::plan::Op;
use alexnet::{NetSpec, Plan, checkpoint};
use alexnet_data::Dataset;
use anyhow::Result;
use clap::Args;

use alexnet_train::Preprocess;

#[derive(Args)]
pub struct InfoArgs {
    /// A preset name (alexnet, alexnet-owt, cifar) or the path of a TOML description.
    #[arg(long, default_value = "alexnet")]
    arch: String,
    /// Override the number of classes.
    #[arg(long)]
    classes: Option<usize>,
    /// Describe this checkpoint instead (its own network).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Describe this prepared dataset instead.
    #[arg(long)]
    data: Option<PathBuf>,
}

fn print_plan(plan: &Plan) {
    let spec = &plan.spec;
    println!(
        "{}: input {} ({:?} pixels), {} classes",
        spec.name,
        plan.input_shape(),
        spec.input.pixels,
        plan.classes()
    );
    println!("{:<22} {:>14} {:>12}", "layer", "output", "parameters");
    for layer in &plan.layers {
        let params = match &layer.op {
            Op::Conv { weight, .. } | Op::Linear { weight, .. } => {
                plan.params[*weight].len() + plan.params[weight + 1].len()
            }
            _ => 0,
        };
        println!(
            "{:<22} {:>14} {:>12}",
            layer.label,
            layer.output.to_string(),
            params
        );
    }
    println!(
        "total {} parameters, {:.3} G multiply-adds per image forward",
        plan.parameter_count(),
        plan.forward_macs() as f64 / 1e9
    );
}

pub fn run(args: InfoArgs) -> Result<()> {
    if let Some(path) = &args.data {
        let dataset = Dataset::open(path)?;
        let info = dataset.info();
        println!(
            "dataset {} ({}): {}x{}x{} images",
            info.name, info.source, info.channels, info.height, info.width
        );
        for (split, count) in &info.splits {
            println!("  split {split}: {count} images");
        }
        let shown: Vec<String> = info
            .classes
            .iter()
            .take(10)
            .map(|c| format!("{} ({})", c.name, c.id))
            .collect();
        println!(
            "  {} classes: {}{}",
            info.classes.len(),
            shown.join(", "),
            if info.classes.len() > 10 { ", ..." } else { "" }
        );
        let mean = dataset.mean();
        let plane = info.height * info.width;
        for c in 0..info.channels {
            let m = mean[c * plane..][..plane]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / plane as f64;
            println!("  mean of channel {c}: {m:.2}");
        }
        println!("  colour PCA eigenvalues: {:?}", info.pca_eigenvalues);
        return Ok(());
    }
    if let Some(path) = &args.checkpoint {
        let ckpt = checkpoint::load_weights(path)?;
        println!("checkpoint {} at step {}", path.display(), ckpt.step);
        if let Some(state) = ckpt.metadata.get("train_state") {
            println!("training state: {state}");
        }
        if let Some(source) = ckpt.metadata.get("imported_from") {
            println!("imported from: {source}");
        }
        if let Ok(pre) = Preprocess::from_checkpoint(&ckpt) {
            let scale = match pre.channel_std {
                Some(std) => format!("[0, 1] scale, minus the mean, divided by std {std:?}"),
                None => "0-255 scale minus the mean image".into(),
            };
            println!(
                "preprocessing: stored {:?}, {scale}; weights from {} ({} classes)",
                pre.stored,
                pre.dataset,
                pre.class_names.len()
            );
        }
        print_plan(&Plan::new(&ckpt.spec)?);
        return Ok(());
    }
    let mut spec = NetSpec::resolve(&args.arch)?;
    if let Some(classes) = args.classes {
        spec = spec.with_classes(classes);
    }
    print_plan(&Plan::new(&spec)?);
    Ok(())
}
