//! `alexnet train`: the paper's training procedure on a prepared dataset.
//!
//! Each epoch visits the training images in a new seeded order with the paper's
//! augmentation, updates the weights by the paper's SGD, then measures the
//! validation error (a held-out part of the training split when the dataset has no
//! `val` split), which drives the learning-rate schedule and the choice of the best
//! checkpoint. The test split is never looked at here.
//!
//! Checkpoints hold everything needed to continue exactly: weights, velocities,
//! the dropout generator, the schedule and the position in the data order, so a
//! resumed run produces bit-for-bit the weights of an uninterrupted one (with the
//! same thread count).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use alexnet::checkpoint::{self, SaveOptions};
use alexnet::rng::Rng;
use alexnet::spec::{LayerSpec, PixelScale, Schedule};
use alexnet::{Mode, Model, NetSpec, Sgd};
use alexnet_data::{Dataset, Loader, LoaderConfig, View, holdout};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::evaluate::{eval_view, evaluate};
use crate::preprocess::Preprocess;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Divide the learning rate when validation error stops improving (the paper).
    Plateau,
    /// Divide the learning rate at the epochs given by --lr-steps.
    Steps,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A prepared dataset directory (see `alexnet prepare`).
    #[arg(long)]
    data: PathBuf,
    /// A preset name (alexnet, alexnet-owt, cifar) or a TOML description. The input
    /// size and class count are taken from the dataset where they differ.
    #[arg(long, default_value = "alexnet")]
    arch: String,
    /// Output directory: checkpoints and the metrics log.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Start from the weights of this checkpoint (fine-tuning); a last layer of
    /// another shape starts fresh.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Layers whose parameters stay fixed (comma-separated layer names).
    #[arg(long, value_delimiter = ',')]
    freeze: Vec<String>,
    /// Epochs (default: the recipe's).
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many steps in all (for short runs and tests).
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    momentum: Option<f32>,
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Dropout probability for every dropout layer (default: the description's).
    #[arg(long)]
    dropout: Option<f32>,
    /// When to divide the learning rate (default: the recipe's).
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Plateau schedule: epochs without improvement before the rate is divided
    /// (default: the recipe's).
    #[arg(long)]
    patience: Option<usize>,
    /// Steps schedule: the epochs after which the rate is divided (default: the recipe's).
    #[arg(long, value_delimiter = ',')]
    lr_steps: Vec<usize>,
    /// How many times the rate may be divided (default: the recipe's).
    #[arg(long)]
    max_drops: Option<usize>,
    /// Images of the training split held out for validation when there is no `val` split.
    #[arg(long, default_value_t = 5000)]
    holdout: usize,
    /// Turn off random crops (take the centre).
    #[arg(long)]
    no_crop: bool,
    /// Turn off random horizontal reflections.
    #[arg(long)]
    no_mirror: bool,
    /// Standard deviation of the PCA colour shift (paper: 0.1; 0 turns it off).
    #[arg(long, default_value_t = 0.1)]
    pca_std: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write a checkpoint every this many steps (besides every epoch).
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Write a metrics line every this many steps (besides every epoch).
    #[arg(long, default_value_t = 100)]
    log_every: u64,
    /// Loader worker threads.
    #[arg(long, default_value_t = 1)]
    loader_threads: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    pub placement: crate::device::Placement,
}

/// Everything besides tensors that a resumed run needs; stored in checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct TrainState {
    /// Completed optimisation steps.
    step: u64,
    /// The epoch in progress and how many of its batches are done.
    epoch: u64,
    batch_in_epoch: usize,
    learning_rate: f32,
    best_val_top1: Option<f64>,
    epochs_since_best: usize,
    drops: usize,
    /// The dropout generator.
    rng: [u64; 4],
    /// Sums over the epoch so far, for its metrics line.
    epoch_loss_sum: f64,
    epoch_errors: u64,
    epoch_images: u64,
    /// What the run was started with; a resume must match.
    settings: RunSettings,
}

/// The choices that define a run; resuming with others is refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct RunSettings {
    dataset: String,
    dataset_train_images: usize,
    seed: u64,
    batch: usize,
    epochs: usize,
    momentum: f32,
    weight_decay: f32,
    schedule: ScheduleKind,
    patience: usize,
    lr_steps: Vec<usize>,
    max_drops: usize,
    lr_drop_factor: f32,
    holdout: usize,
    view: ViewSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct ViewSettings {
    random_crop: bool,
    mirror: bool,
    pca_std: f32,
}

const STATE_KEY: &str = "train_state";
const LAST: &str = "last.safetensors";
const BEST: &str = "best.safetensors";

/// Refuses a dataset whose images do not fit the net.
pub fn check_compatible(dataset: &Dataset, spec: &NetSpec) -> Result<()> {
    let info = dataset.info();
    if info.channels != spec.input.channels {
        bail!(
            "the dataset has {} channels but the net expects {}",
            info.channels,
            spec.input.channels
        );
    }
    if info.height < spec.input.height || info.width < spec.input.width {
        bail!(
            "the dataset's {}x{} images are smaller than the net's {}x{} input",
            info.height,
            info.width,
            spec.input.height,
            spec.input.width
        );
    }
    if info.classes.len() != spec.classes {
        bail!(
            "the dataset has {} classes but the net has {}",
            info.classes.len(),
            spec.classes
        );
    }
    Ok(())
}

/// The description fitted to the dataset: its channels, its class count, and an
/// input no larger than its images (28x28 images give a 28x28 net, 256x256 photos
/// keep the description's 224x224 crops).
fn fit_spec(mut spec: NetSpec, dataset: &Dataset, dropout: Option<f32>) -> NetSpec {
    let info = dataset.info();
    let (height, width) = (
        spec.input.height.min(info.height),
        spec.input.width.min(info.width),
    );
    spec = spec
        .with_input(info.channels, height, width)
        .with_classes(info.classes.len());
    if let Some(p) = dropout {
        for layer in &mut spec.layers {
            if let LayerSpec::Dropout(d) = layer {
                d.p = p;
            }
        }
    }
    spec
}

struct Run {
    out: PathBuf,
    net: Box<dyn Model>,
    state: TrainState,
    preprocess: Preprocess,
    metrics: std::fs::File,
    started: Instant,
}

impl Run {
    /// Writes a checkpoint; velocities only where training may resume from it.
    fn save(&self, path: &Path, with_velocity: bool) -> Result<()> {
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::new();
        self.preprocess.store(&mut metadata, &mut tensors);
        metadata.insert(STATE_KEY.into(), serde_json::to_string(&self.state)?);
        let options = SaveOptions {
            step: self.state.step,
            with_velocity,
            metadata,
            tensors,
        };
        checkpoint::save(self.net.as_ref(), path, &options)?;
        Ok(())
    }

    fn log(&mut self, line: serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{line}").context("writing the metrics log")?;
        self.metrics.flush()?;
        Ok(())
    }
}

pub fn run(args: TrainArgs, interrupted: Arc<AtomicBool>) -> Result<()> {
    let args = &args;
    let dataset = Dataset::open(&args.data)
        .with_context(|| format!("opening dataset {}", args.data.display()))?;
    let train_split = dataset.split("train")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let last_path = args.out.join(LAST);

    let base = NetSpec::resolve(&args.arch)?;
    let base_pixels = base.input.pixels;
    let recipe = base.recipe.clone();
    let settings = RunSettings {
        dataset: dataset.info().name.clone(),
        dataset_train_images: train_split.len(),
        seed: args.seed,
        batch: args.batch.unwrap_or(recipe.batch),
        epochs: args.epochs.unwrap_or(recipe.epochs),
        momentum: args.momentum.unwrap_or(recipe.momentum),
        weight_decay: args.weight_decay.unwrap_or(recipe.weight_decay),
        schedule: args.schedule.unwrap_or(match recipe.schedule {
            Schedule::Plateau => ScheduleKind::Plateau,
            Schedule::Steps => ScheduleKind::Steps,
        }),
        patience: args.patience.unwrap_or(recipe.patience),
        lr_steps: if args.lr_steps.is_empty() {
            recipe.lr_steps.clone()
        } else {
            args.lr_steps.clone()
        },
        max_drops: args.max_drops.unwrap_or(recipe.lr_drops),
        lr_drop_factor: recipe.lr_drop_factor,
        holdout: if dataset.split_names().iter().any(|s| s == "val") {
            0
        } else {
            args.holdout
        },
        view: ViewSettings {
            random_crop: !args.no_crop,
            mirror: !args.no_mirror,
            pca_std: args.pca_std,
        },
    };
    if settings.batch == 0 || settings.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }

    let wanted_spec = fit_spec(base, &dataset, args.dropout);
    // Build the net: from the last checkpoint when resuming, else fresh (or from --init-from).
    // A run fine-tuning imported weights may inherit their pixel convention.
    let mut inherited: Option<Preprocess> = None;
    let (net, state) = if args.resume {
        let ckpt = checkpoint::load(&last_path).with_context(|| {
            format!(
                "--resume: no checkpoint to resume in {}",
                args.out.display()
            )
        })?;
        let state: TrainState = serde_json::from_str(
            ckpt.metadata
                .get(STATE_KEY)
                .context("the checkpoint has no training state")?,
        )?;
        if state.settings != settings {
            bail!(
                "--resume: this run was started with other settings\n  checkpoint: {:?}\n  now:        {:?}",
                state.settings,
                settings
            );
        }
        if ckpt.spec != wanted_spec {
            bail!(
                "--resume: the run in {} trains the network '{}', which differs from --arch {} (as fitted to this \
                 dataset); resume with the --arch the run was started with",
                args.out.display(),
                ckpt.spec.name,
                args.arch
            );
        }
        check_compatible(&dataset, &ckpt.spec)?;
        let mut net = args.placement.network_zeroed(&ckpt.spec, settings.batch)?;
        ckpt.apply(net.as_mut(), &last_path, true)?;
        net.set_rng(Rng::from_state(state.rng));
        inherited = Preprocess::from_checkpoint(&ckpt).ok();
        (net, state)
    } else {
        if last_path.exists() {
            bail!(
                "{} already holds a run: add --resume to continue it, or choose another --out",
                args.out.display()
            );
        }
        let spec = wanted_spec;
        check_compatible(&dataset, &spec)?;
        let mut net = args
            .placement
            .network(&spec, settings.batch, settings.seed)?;
        if let Some(init) = &args.init_from {
            inherited = load_initial_weights(net.as_mut(), init)?;
        }
        let state = TrainState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            learning_rate: args.lr.unwrap_or(recipe.learning_rate),
            best_val_top1: None,
            epochs_since_best: 0,
            drops: 0,
            rng: net.rng().state(),
            epoch_loss_sum: 0.0,
            epoch_errors: 0,
            epoch_images: 0,
            settings: settings.clone(),
        };
        (net, state)
    };
    let mut net = net;
    for name in &args.freeze {
        let mut found = false;
        for suffix in ["weight", "bias"] {
            if let Some(index) = net.param_index(&format!("{name}.{suffix}")) {
                net.set_frozen(index, true);
                found = true;
            }
        }
        if !found {
            bail!("--freeze: the net has no layer named '{name}'");
        }
    }

    let spec = net.spec().clone();
    let shape = net.plan().input_shape();
    let preprocess = run_preprocess(&dataset, inherited, base_pixels, &spec.name)?;
    let mean = preprocess.mean_for(&dataset)?;
    let (train_indices, val_indices) = if settings.holdout > 0 {
        if settings.holdout >= train_split.len() {
            bail!(
                "--holdout {} leaves no training images of {}",
                settings.holdout,
                train_split.len()
            );
        }
        let (train, val) = holdout(train_split.len(), settings.holdout, settings.seed);
        (Some(Arc::new(train)), Some(Arc::new(val)))
    } else {
        (None, None)
    };
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.out.join("metrics.jsonl"))
        .context("opening the metrics log")?;
    let preprocess_scale = preprocess.channel_scale();
    let mut run = Run {
        out: args.out.clone(),
        net,
        state,
        preprocess,
        metrics,
        started: Instant::now(),
    };
    let sgd_base = Sgd {
        learning_rate: run.state.learning_rate,
        momentum: settings.momentum,
        weight_decay: settings.weight_decay,
    };
    let train_view = View {
        crop_height: shape.height,
        crop_width: shape.width,
        random_crop: settings.view.random_crop,
        mirror: settings.view.mirror,
        pca_std: settings.view.pca_std,
        subtract_mean: true,
        channel_scale: preprocess_scale,
        ten_crop: false,
    };
    let eval_net_view = eval_view(&run.preprocess, shape.height, shape.width, false);

    let stored = crate::evaluate::wants_stored(run.net.as_ref());
    eprintln!(
        "training {} ({} parameters) on {} ({} training images{}), batch {}, {} epochs, on {}{}",
        spec.name,
        run.net.plan().parameter_count(),
        settings.dataset,
        train_indices
            .as_ref()
            .map_or(train_split.len(), |t| t.len()),
        if settings.holdout > 0 {
            format!(", {} held out for validation", settings.holdout)
        } else {
            String::new()
        },
        settings.batch,
        settings.epochs,
        run.net.describe(),
        if stored {
            ", views cut by the backend from stored images"
        } else {
            ""
        },
    );

    while (run.state.epoch as usize) < settings.epochs {
        let config = LoaderConfig {
            batch: settings.batch,
            view: train_view,
            seed: settings.seed,
            epoch: run.state.epoch,
            shuffle: true,
            start_batch: run.state.batch_in_epoch,
            indices: train_indices.clone(),
            threads: args.loader_threads,
            queue: 4,
            drop_last: true,
            stored,
        };
        if config.stored {
            run.net.set_mean_image(&mean)?;
        }
        let mut loader = Loader::new(train_split.clone(), config, mean.clone(), dataset.info())?;
        let batches = loader.batches_per_epoch();
        let progress = crate::progress::Progress::new(
            !args.quiet,
            batches as u64,
            run.state.batch_in_epoch as u64,
            format!("epoch {}/{}", run.state.epoch + 1, settings.epochs),
        );
        let mut window_started = Instant::now();
        let mut window_images = 0usize;
        let mut window_errors = 0usize;
        while let Some(batch) = loader.next_batch()? {
            if interrupted.load(Ordering::SeqCst) {
                progress.finish();
                run.state.rng = run.net.rng().state();
                run.save(&last_path, true)?;
                eprintln!(
                    "interrupted: checkpoint written to {} (continue with --resume)",
                    last_path.display()
                );
                return Ok(());
            }
            let sgd = Sgd {
                learning_rate: run.state.learning_rate,
                ..sgd_base
            };
            crate::evaluate::load_batch(run.net.as_mut(), &batch)?;
            run.net.forward(Mode::Train);
            let logits = run.net.logits();
            let loss = run.net.backward(&batch.labels)?;
            if !loss.is_finite() {
                progress.finish();
                bail!(
                    "the loss became {loss} at step {} (epoch {}): training stopped; the last good checkpoint is {} \
                     (try a smaller --lr)",
                    run.state.step + 1,
                    run.state.epoch + 1,
                    last_path.display()
                );
            }
            run.net.sgd_step(&sgd);
            let classes = spec.classes;
            let errors = logits
                .chunks_exact(classes)
                .zip(&batch.labels)
                .filter(|(row, label)| crate::evaluate::top_k(row, 1)[0] != **label as usize)
                .count();
            run.state.step += 1;
            run.state.batch_in_epoch += 1;
            run.state.epoch_loss_sum += loss as f64 * batch.count as f64;
            run.state.epoch_errors += errors as u64;
            run.state.epoch_images += batch.count as u64;
            window_images += batch.count;
            window_errors += errors;
            let rate = window_images as f64 / window_started.elapsed().as_secs_f64().max(1e-9);
            progress.step(loss, rate);
            if run.state.step.is_multiple_of(args.log_every) {
                let line = json!({
                    "kind": "step", "step": run.state.step, "epoch": run.state.epoch + 1,
                    "epochs_done": run.state.epoch as f64 + run.state.batch_in_epoch as f64 / batches as f64,
                    "loss": loss, "lr": run.state.learning_rate, "images_per_s": rate,
                    // Training error over the steps since the previous line (dropout and augmentation on).
                    "train_error": window_errors as f64 / window_images.max(1) as f64,
                    "elapsed_s": run.started.elapsed().as_secs_f64(),
                });
                run.log(line)?;
                window_started = Instant::now();
                window_images = 0;
                window_errors = 0;
            }
            if run.state.step.is_multiple_of(args.checkpoint_every) {
                run.state.rng = run.net.rng().state();
                run.save(&last_path, true)?;
            }
            if args.max_steps.is_some_and(|max| run.state.step >= max) {
                progress.finish();
                run.state.rng = run.net.rng().state();
                run.save(&last_path, true)?;
                eprintln!(
                    "stopped after {} steps (--max-steps); checkpoint {}",
                    run.state.step,
                    last_path.display()
                );
                return Ok(());
            }
        }
        progress.finish();

        // End of the epoch: validation, schedule, metrics, checkpoints.
        let val_split = match &val_indices {
            Some(_) => train_split.clone(),
            None => dataset.split("val")?,
        };
        let val = evaluate(
            run.net.as_mut(),
            val_split,
            val_indices.clone(),
            eval_net_view,
            &dataset,
            mean.clone(),
            args.loader_threads,
            false,
        )?;
        let improved = run
            .state
            .best_val_top1
            .is_none_or(|best| val.top1_error() < best);
        if improved {
            run.state.best_val_top1 = Some(val.top1_error());
            run.state.epochs_since_best = 0;
        } else {
            run.state.epochs_since_best += 1;
        }
        let epoch_done = run.state.epoch + 1;
        let drop = match settings.schedule {
            ScheduleKind::Plateau => run.state.epochs_since_best >= settings.patience,
            ScheduleKind::Steps => settings.lr_steps.contains(&(epoch_done as usize)),
        };
        let lr_used = run.state.learning_rate;
        if drop && run.state.drops < settings.max_drops {
            run.state.learning_rate *= settings.lr_drop_factor;
            run.state.drops += 1;
            run.state.epochs_since_best = 0;
        }
        let images = run.state.epoch_images.max(1) as f64;
        let line = json!({
            "kind": "epoch", "epoch": epoch_done, "step": run.state.step,
            "train_loss": run.state.epoch_loss_sum / images,
            "train_error": run.state.epoch_errors as f64 / images,
            "val_top1_error": val.top1_error(), "val_top5_error": val.top5_error(),
            "lr": lr_used, "next_lr": run.state.learning_rate,
            "elapsed_s": run.started.elapsed().as_secs_f64(),
        });
        eprintln!(
            "epoch {epoch_done}: train loss {:.4}, train error {:.2}%, validation top-1 {:.2}% top-5 {:.2}%{}",
            run.state.epoch_loss_sum / images,
            100.0 * run.state.epoch_errors as f64 / images,
            100.0 * val.top1_error(),
            100.0 * val.top5_error(),
            if run.state.learning_rate != lr_used {
                format!(", learning rate now {}", run.state.learning_rate)
            } else {
                String::new()
            }
        );
        run.log(line)?;
        run.state.epoch += 1;
        run.state.batch_in_epoch = 0;
        run.state.epoch_loss_sum = 0.0;
        run.state.epoch_errors = 0;
        run.state.epoch_images = 0;
        run.state.rng = run.net.rng().state();
        run.save(&last_path, true)?;
        if improved {
            run.save(&run.out.join(BEST), false)?;
        }
    }
    eprintln!(
        "done: {} (last), {} (best validation)",
        last_path.display(),
        run.out.join(BEST).display()
    );
    Ok(())
}

/// Copies every parameter of `path` whose name and shape match the net; others
/// (a last layer for another number of classes) keep their fresh initialisation.
/// The pixel convention of a run. Weights imported from torchvision expect its
/// normalisation (their filters were learnt on it), so a run starting from them
/// keeps it, with the same mean and std; every other run uses the paper's, with
/// this dataset's mean image.
fn run_preprocess(
    dataset: &Dataset,
    inherited: Option<Preprocess>,
    base_pixels: PixelScale,
    net_name: &str,
) -> Result<Preprocess> {
    match inherited.filter(|p| p.pixels == PixelScale::UnitMeanStd) {
        Some(from_weights) => from_weights.for_dataset(dataset),
        None if base_pixels == PixelScale::UnitMeanStd => bail!(
            "{net_name} expects torchvision's pixel normalisation, whose mean and std come with imported \
             weights: start from them with --init-from (see `alexnet import torchvision`)"
        ),
        None => Ok(Preprocess::from_dataset(dataset)),
    }
}

/// Copies the parameters `path` has in the net's shapes into `net` and returns
/// the preprocessing the checkpoint carries, if any.
fn load_initial_weights(net: &mut dyn Model, path: &Path) -> Result<Option<Preprocess>> {
    let ckpt = checkpoint::load_weights(path)?;
    let mut kept_fresh = Vec::new();
    for index in 0..net.plan().params.len() {
        let info = net.plan().params[index].clone();
        match ckpt.tensors.get(&info.name) {
            Some((shape, values)) if *shape == info.shape => net.set_param_values(index, values)?,
            _ => kept_fresh.push(info.name),
        }
    }
    if !kept_fresh.is_empty() {
        eprintln!(
            "--init-from {}: freshly initialised (absent or another shape): {}",
            path.display(),
            kept_fresh.join(", ")
        );
    }
    Ok(Preprocess::from_checkpoint(&ckpt).ok())
}
