//! `alexnet import` and `alexnet export`: weights trained elsewhere become a
//! checkpoint that `classify`, `eval`, `features` and `train --init-from` use as
//! they are (the preprocessing the weights expect travels inside it), and our
//! checkpoints become ONNX models.

use std::path::{Path, PathBuf};

use alexnet::checkpoint::{self, SaveOptions};
use alexnet_interop::Imported;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::output::write_atomically;

#[derive(Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    source: ImportSource,
}

#[derive(Subcommand)]
enum ImportSource {
    /// torchvision's `alexnet` weights: a PyTorch state_dict (.pth, zip or legacy format).
    Torchvision {
        /// The .pth file.
        file: PathBuf,
        /// The checkpoint to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Caffe's `bvlc_alexnet` or `bvlc_reference_caffenet` (.caffemodel).
    Caffe {
        /// The .caffemodel file.
        file: PathBuf,
        /// The mean image (Caffe's mean.binaryproto); without it, Caffe's
        /// per-channel ImageNet mean is subtracted.
        #[arg(long)]
        mean: Option<PathBuf>,
        /// The net's definition (deploy .prototxt). The caffemodel carries its
        /// own layers; when given, the two must describe the same net.
        #[arg(long)]
        prototxt: Option<PathBuf>,
        /// The checkpoint to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    format: ExportFormat,
}

#[derive(Subcommand)]
enum ExportFormat {
    /// An ONNX model (opset 17): logits and softmax probabilities, dropout left out.
    Onnx {
        /// A checkpoint written by `alexnet train` or `alexnet import`.
        checkpoint: PathBuf,
        /// The .onnx file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Maps a whole file read-only (weights files run to hundreds of megabytes; the
/// readers only look at the bytes they need).
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the map is only read while this command runs; another process
    // truncating the file meanwhile is outside what a command-line tool can guard.
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))
}

pub fn run_import(args: ImportArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let (imported, out) = match args.source {
        // Read at offsets, not mapped: the tensors' values are read straight
        // into their f32 memory, so the import peaks near the file's size.
        ImportSource::Torchvision { file, out } => {
            (alexnet_interop::torchvision::import_path(&file)?, out)
        }
        ImportSource::Caffe {
            file,
            mean,
            prototxt,
            out,
        } => {
            let bytes = map_file(&file)?;
            let name = file.display().to_string();
            let mean_bytes = match &mean {
                Some(path) => Some(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let mean_name = mean.as_ref().map(|p| p.display().to_string());
            let mean_arg = mean_bytes.as_deref().zip(mean_name.as_deref());
            let imported = alexnet_interop::caffe::import(&bytes, &name, mean_arg)?;
            if let Some(path) = &prototxt {
                check_against_prototxt(&imported, path)?;
            }
            (imported, out)
        }
    };
    save_imported(&imported, &out)?;
    let preprocess = crate::preprocess::from_imported(&imported);
    eprintln!(
        "imported {} ({} classes, {}x{} input) into {} in {:.2} s; preprocessing: resize {}, {:?}",
        imported.spec.name,
        imported.spec.classes,
        imported.spec.input.height,
        imported.spec.input.width,
        out.display(),
        started.elapsed().as_secs_f64(),
        imported.input.resize,
        preprocess.pixels,
    );
    Ok(())
}

/// A deploy .prototxt given beside a caffemodel must describe the same net (the
/// weights were trained for the model's own layers; a mismatch means the wrong file).
fn check_against_prototxt(imported: &Imported, path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let declared = alexnet_interop::caffe::parse_prototxt(&text, &path.display().to_string())?;
    let model = &imported.spec;
    if declared.input != model.input {
        bail!(
            "{}: the input is {}x{}x{}, but the caffemodel's net takes {}x{}x{}",
            path.display(),
            declared.input.channels,
            declared.input.height,
            declared.input.width,
            model.input.channels,
            model.input.height,
            model.input.width
        );
    }
    if declared.classes != model.classes {
        bail!(
            "{}: {} classes, but the caffemodel has {}",
            path.display(),
            declared.classes,
            model.classes
        );
    }
    if declared.layers.len() != model.layers.len() {
        bail!(
            "{}: {} layers, but the caffemodel has {}",
            path.display(),
            declared.layers.len(),
            model.layers.len()
        );
    }
    for (index, (a, b)) in declared.layers.iter().zip(&model.layers).enumerate() {
        if a != b {
            bail!(
                "{}: layer {} is {a:?} in the prototxt but {b:?} in the caffemodel",
                path.display(),
                index + 1
            );
        }
    }
    Ok(())
}

/// Writes an imported net as a checkpoint straight from its tensors (no network
/// is built: that would hold the weights twice more), each checked against the
/// description.
pub fn save_imported(imported: &Imported, out: &Path) -> Result<()> {
    let params: Vec<(&str, &[usize], &[f32])> = imported
        .tensors
        .iter()
        .map(|(name, shape, values)| (name.as_str(), shape.as_slice(), values.as_slice()))
        .collect();
    let preprocess = crate::preprocess::from_imported(imported);
    let mut options = SaveOptions::default();
    preprocess.store(&mut options.metadata, &mut options.tensors);
    options
        .metadata
        .insert("imported_from".into(), imported.source.clone());
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    checkpoint::save_tensors(&imported.spec, &params, out, &options)?;
    Ok(())
}

pub fn run_export(args: ExportArgs) -> Result<()> {
    match args.format {
        ExportFormat::Onnx { checkpoint, out } => {
            let ckpt = checkpoint::load_weights(&checkpoint)?;
            let options = alexnet_interop::onnx::ExportOptions {
                batch: None,
                doc: Some(format!("exported from {}", checkpoint.display())),
            };
            let bytes = alexnet_interop::onnx::export(&ckpt.spec, &ckpt.tensors, &options)
                .with_context(|| format!("exporting {}", checkpoint.display()))?;
            write_atomically(&out, &bytes)?;
            eprintln!(
                "wrote {} ({} bytes): input `input` [batch, {}, {}, {}], outputs `logits` and `probabilities`",
                out.display(),
                bytes.len(),
                ckpt.spec.input.channels,
                ckpt.spec.input.height,
                ckpt.spec.input.width
            );
            Ok(())
        }
    }
}
