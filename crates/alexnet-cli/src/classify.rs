//! `alexnet classify`: the most probable classes of image files under a trained
//! checkpoint, which carries its own preprocessing (stored size, mean image,
//! class names). An unreadable image is reported and skipped; the others are
//! still classified, and the exit status says that something failed.

use std::path::{Path, PathBuf};

use alexnet::{checkpoint, softmax_rows};
use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use alexnet_train::{Preprocess, top_k};

use crate::engine::EngineSettings;

/// Decoded images larger than this many pixels are refused (decompression bombs).
pub const MAX_PIXELS: u64 = 100_000_000;

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    weights: crate::weights::CheckpointArg,
    /// Image files (JPEG, PNG, ...).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// How many classes to list per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// One JSON object per image instead of text.
    #[arg(long)]
    json: bool,
    /// With --json, also give the net's raw scores (logits) for every class.
    #[arg(long, requires = "json")]
    logits: bool,
    #[command(flatten)]
    pub placement: crate::device::Placement,
    #[command(flatten)]
    pub engine: crate::engine::EngineArgs,
}

/// An image file turned into the net's input: decoded, resized and cropped to the
/// stored size as `prepare` does, the mean image subtracted, then the centre
/// `height x width` patch taken (the evaluation view).
pub fn load_input(
    path: &Path,
    preprocess: &Preprocess,
    height: usize,
    width: usize,
) -> Result<Vec<f32>> {
    let side = stored_side(preprocess)?;
    let rgb = alexnet_data::load_photo(path, side, MAX_PIXELS)?;
    photo_input(&rgb, preprocess, height, width)
}

/// The side of the square images the net was trained on, which photos are
/// resized and cropped to.
pub fn stored_side(preprocess: &Preprocess) -> Result<u32> {
    let [_, stored_h, stored_w] = preprocess.stored;
    if stored_h != stored_w {
        bail!(
            "the net was trained on {stored_h}x{stored_w} images; only square stored sizes are supported"
        );
    }
    Ok(stored_h as u32)
}

/// A photo at the stored size (RGB bytes, CHW) turned into the net's input: the
/// mean image subtracted, the channels scaled, the centre `height x width` patch.
pub fn photo_input(
    rgb: &[u8],
    preprocess: &Preprocess,
    height: usize,
    width: usize,
) -> Result<Vec<f32>> {
    let [channels, stored_h, stored_w] = preprocess.stored;
    let plane = stored_h * stored_w;
    // Grey nets (MNIST-like) see the luminance of the photo.
    let pixels: Vec<f32> = match channels {
        3 => rgb.iter().map(|&v| v as f32).collect(),
        1 => (0..plane)
            .map(|p| {
                0.299 * rgb[p] as f32
                    + 0.587 * rgb[plane + p] as f32
                    + 0.114 * rgb[2 * plane + p] as f32
            })
            .collect(),
        c => bail!("cannot make {c}-channel input from a photo"),
    };
    let (top, left) = ((stored_h - height) / 2, (stored_w - width) / 2);
    let scale = preprocess.channel_scale();
    let mut input = Vec::with_capacity(channels * height * width);
    for c in 0..channels {
        for y in 0..height {
            let row = (c * stored_h + top + y) * stored_w + left;
            for x in 0..width {
                let mean = if preprocess.subtract_mean {
                    preprocess.mean[row + x]
                } else {
                    0.0
                };
                input.push((pixels[row + x] - mean) * scale[c]);
            }
        }
    }
    Ok(input)
}

/// The classes `ranked` as JSON, each with its id, name and probability: the
/// top classes as `classify --json` prints them and `serve` answers them.
pub fn ranked_json(
    preprocess: &Preprocess,
    probabilities: &[f32],
    ranked: &[usize],
) -> Vec<serde_json::Value> {
    ranked
        .iter()
        .map(|&c| {
            json!({
                "class": c,
                "id": preprocess.class_ids.get(c),
                "name": preprocess.class_name(c),
                "probability": probabilities[c],
            })
        })
        .collect()
}

pub fn run(args: ClassifyArgs, engine: &EngineSettings) -> Result<()> {
    let path = args.weights.path()?;
    let ckpt = checkpoint::load_weights(&path)?;
    let preprocess = Preprocess::from_checkpoint(&ckpt)?;
    let mut net = args.placement.nets(engine).network_zeroed(&ckpt.spec, 1)?;
    ckpt.apply(net.as_mut(), &path, false)?;
    let shape = net.plan().input_shape();
    let classes = net.plan().classes();
    let mut failures = 0;
    for path in &args.images {
        let input = match load_input(path, &preprocess, shape.height, shape.width) {
            Ok(input) => input,
            Err(e) => {
                failures += 1;
                if args.json {
                    println!(
                        "{}",
                        json!({"image": path.display().to_string(), "error": format!("{e:#}")})
                    );
                } else {
                    eprintln!("{}: {e:#}", path.display());
                }
                continue;
            }
        };
        let logits = net.predict(&input)?;
        let probabilities = softmax_rows(&logits, classes);
        let ranked = top_k(&probabilities, args.top.min(classes));
        if args.json {
            let top = ranked_json(&preprocess, &probabilities, &ranked);
            let mut line = json!({"image": path.display().to_string(), "top": top});
            if args.logits {
                line["logits"] = json!(logits);
            }
            println!("{line}");
        } else {
            println!("{}", path.display());
            for &c in &ranked {
                println!(
                    "  {:>6.2}%  {}",
                    100.0 * probabilities[c],
                    preprocess.class_name(c)
                );
            }
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be classified",
            args.images.len()
        );
    }
    Ok(())
}
