//! The paper's training procedure on a prepared dataset, as a value that code
//! drives: [`Trainer::new`] starts a run (fresh, fine-tuned from a checkpoint, or
//! resumed), [`Trainer::run`] trains its epochs, each made of [`Trainer::step`]s
//! and ended by validation, the schedule and checkpoints.
//!
//! Each epoch visits the training images in a new seeded order with the paper's
//! augmentation, updates the weights by the paper's SGD, then measures the
//! validation error (a held-out part of the training split when the dataset has
//! no `val` split), which drives the learning-rate schedule and the choice of the
//! best checkpoint. The test split is never looked at here.
//!
//! Checkpoints hold everything needed to continue exactly: weights, velocities,
//! the dropout generator, the schedule and the position in the data order, so a
//! resumed run produces bit-for-bit the weights of an uninterrupted one (with the
//! same thread count).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alexnet::checkpoint::{self, Checkpoint, SaveOptions};
use alexnet::rng::Rng;
use alexnet::spec::PixelScale;
use alexnet::{BufferMut, Mode, Model, NetSpec, Sgd};
use alexnet_data::{Batch, Dataset, Loader, LoaderConfig, Split, View, holdout};
use serde::{Deserialize, Serialize};

use crate::comm::{Communicator, SingleProcess};
use crate::config::{RunSettings, TrainConfig, fit_spec};
use crate::error::{Error, External, Result, io};
use crate::evaluate::{
    Evaluation, check_compatible, eval_view, evaluate, load_batch, top_k, wants_stored,
};
use crate::hooks::{NetFactory, StepHook, StopRequest};
use crate::observer::{EndLine, EpochLine, EpochStart, Observer, Step, StepLine};
use crate::parallel::{self, GradientBuckets, check_whole_batch};
use crate::preprocess::Preprocess;
use crate::schedule::ScheduleState;

/// The checkpoint a run continues from, rewritten every `checkpoint_every` steps
/// and every epoch.
pub const LAST: &str = "last.safetensors";
/// The weights of the epoch with the lowest validation error so far.
pub const BEST: &str = "best.safetensors";
/// The checkpoint metadata key of the training state.
const STATE_KEY: &str = "train_state";

/// Everything besides tensors that a resumed run needs; stored in checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Completed optimisation steps.
    pub step: u64,
    /// The epoch in progress (from 0) and how many of its batches are done.
    pub epoch: u64,
    pub batch_in_epoch: usize,
    #[serde(flatten)]
    pub schedule: ScheduleState,
    /// The dropout generator.
    pub rng: [u64; 4],
    /// Sums over the epoch so far, for its metrics line.
    pub epoch_loss_sum: f64,
    pub epoch_errors: u64,
    pub epoch_images: u64,
    /// What the run was started with; a resume must match.
    pub settings: RunSettings,
}

/// Why [`Trainer::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every epoch is done.
    Finished,
    /// The configuration's `max_steps` was reached.
    MaxSteps,
    /// A [`StopRequest`] was seen.
    Stopped,
}

/// What a call to [`Trainer::run`] came to; the last checkpoint holds the rest.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ending: Ending,
    /// Completed steps and epochs.
    pub steps: u64,
    pub epochs: u64,
    pub last: PathBuf,
    pub best: PathBuf,
    /// The lowest validation top-1 error of an epoch end.
    pub best_val_top1: Option<f64>,
}

/// Indices into the training split: the images trained on, and those held out
/// for validation.
type Holdout = (Arc<Vec<u32>>, Arc<Vec<u32>>);

/// The dataset of a run, its training and validation subsets and their views.
struct Data {
    dataset: Dataset,
    train: Split,
    /// Where the dataset has no `val` split.
    holdout: Option<Holdout>,
    mean: Arc<Vec<f32>>,
    train_view: View,
    eval_view: View,
}

/// A run's net and state as it starts: fresh, or from its last checkpoint.
struct Start {
    net: Box<dyn Model>,
    state: TrainState,
    /// The preprocessing of the checkpoint the weights came from, if any.
    inherited: Option<Preprocess>,
    notices: Vec<String>,
}

/// One training run: its net, data, state and output folder.
pub struct Trainer {
    config: TrainConfig,
    settings: RunSettings,
    data: Data,
    net: Box<dyn Model>,
    state: TrainState,
    preprocess: Preprocess,
    /// Batches go to the net as stored images that its device cuts.
    stored: bool,
    hook: Option<Box<dyn StepHook>>,
    /// The processes sharing the run (data parallelism), or this one alone.
    comm: Box<dyn Communicator>,
    /// The stop request of the run in progress, and whether the processes
    /// agreed at the last step's check-in to stop.
    stop: StopRequest,
    stop_agreed: bool,
    /// The last step's seconds at the check-in and summing gradients.
    times: (f64, f64),
    /// Where gradients are summed during the backward pass (several
    /// processes, a communicator that sums in the background, buckets asked for).
    buckets: Option<GradientBuckets>,
    /// The net's gradients are in a device's memory (a GPU's), where buckets
    /// start each one's sum on its own.
    device_gradients: bool,
    /// Time in the epoch in progress (since this trainer began it or took it up).
    epoch_time: EpochTime,
    notices: Vec<String>,
    started: Instant,
}

impl Trainer {
    /// Starts the run `config` describes, with nets from `factory`: opens the
    /// dataset, fits the net to it, and either resumes the run in `config.out`
    /// or begins one there (refusing to overwrite a run).
    pub fn new(config: TrainConfig, factory: &dyn NetFactory) -> Result<Trainer> {
        Trainer::with_communicator(config, factory, Box::new(SingleProcess))
    }

    /// [`Trainer::new`] for one of the processes `comm` joins (data
    /// parallelism): each reads and trains its part of every batch (the batch
    /// cut into nearly equal parts, one per process), their gradients are summed
    /// before every update, so every process holds the same weights (rank 0's
    /// to begin with), and only rank 0 writes checkpoints. Every process must be
    /// started with the same configuration.
    pub fn with_communicator(
        config: TrainConfig,
        factory: &dyn NetFactory,
        comm: Box<dyn Communicator>,
    ) -> Result<Trainer> {
        let dataset = Dataset::open(&config.data)?;
        let train = dataset.split("train")?;
        std::fs::create_dir_all(&config.out).map_err(io("creating", &config.out))?;
        if comm.rank() == 0 {
            for name in [LAST, BEST] {
                // A write killed before its rename: the real file is the one to trust.
                checkpoint::remove_stale_temporary(&config.out.join(name))?;
            }
        }
        let settings = RunSettings::of(&config, &dataset, train.len());
        check_settings(&config, &settings, train.len())?;
        parallel::check_batch(settings.batch, comm.as_ref())?;
        let share = parallel::largest_part(settings.batch, comm.size());
        let wanted = fit_spec(&config.arch, &dataset, config.dropout);
        let start = if config.resume {
            resume(&config, &settings, &wanted, &dataset, factory, share)?
        } else {
            fresh(&config, &settings, wanted, &dataset, factory, share)?
        };
        let mut net = start.net;
        if comm.shared() {
            // Every batch is whole (the last short one is dropped), so each
            // process's rows of the dropout masks start at the same place.
            let part = parallel::part_of(comm.as_ref());
            net.set_dropout_offset(part.range(settings.batch).start)?;
            parallel::broadcast_weights(net.as_mut(), comm.as_ref())?;
        }
        freeze(net.as_mut(), &config.freeze)?;
        let pixels = config.arch.input.pixels;
        let preprocess = run_preprocess(&dataset, start.inherited, pixels, &net.spec().name)?;
        let data = Data::new(dataset, train, &settings, &preprocess, net.as_ref())?;
        let stored = wants_stored(net.as_ref());
        let overlap = comm.shared() && comm.background_sums().is_some() && config.bucket_bytes > 0;
        let buckets = overlap.then(|| GradientBuckets::new(config.bucket_bytes));
        let device_gradients = gradients_on_device(net.as_mut());
        Ok(Trainer {
            config,
            settings,
            data,
            net,
            state: start.state,
            preprocess,
            stored,
            hook: None,
            comm,
            stop: StopRequest::new(),
            stop_agreed: false,
            times: (0.0, 0.0),
            buckets,
            device_gradients,
            epoch_time: EpochTime::default(),
            notices: start.notices,
            started: Instant::now(),
        })
    }

    /// Work to run in every step between the backward pass and the update.
    pub fn set_step_hook(&mut self, hook: Box<dyn StepHook>) {
        self.hook = Some(hook);
    }

    /// One line on what is about to be trained, where and how.
    pub fn summary(&self) -> String {
        let train_images = self
            .data
            .holdout
            .as_ref()
            .map_or(self.data.train.len(), |(train, _)| train.len());
        let held_out = if self.settings.holdout > 0 {
            format!(", {} held out for validation", self.settings.holdout)
        } else {
            String::new()
        };
        format!(
            "training {} ({} parameters) on {} ({train_images} training images{held_out}), batch {}, \
             {} epochs, on {}{}{}",
            self.net.spec().name,
            self.net.plan().parameter_count(),
            self.settings.dataset,
            self.settings.batch,
            self.settings.epochs,
            self.net.describe(),
            if self.stored {
                ", views cut by the backend from stored images"
            } else {
                ""
            },
            self.sharing(),
        )
    }

    /// With several processes: how many, and how their gradients are summed.
    fn sharing(&self) -> String {
        if !self.comm.shared() {
            return String::new();
        }
        let carried = if self.config.bf16_gradients {
            " as bf16"
        } else {
            ""
        };
        // On a GPU, NCCL means in place: f32 sums of an even split only.
        let device_means = self.device_gradients
            && !self.config.bf16_gradients
            && self.settings.batch.is_multiple_of(self.comm.size());
        let when = match self.buckets {
            Some(_) if device_means => {
                "during the backward pass, each on the device as the pass finishes it".into()
            }
            Some(_) => format!(
                "in buckets of {} MiB during the backward pass",
                self.config.bucket_bytes as f64 / f64::from(1 << 20)
            ),
            None => "after the backward pass".into(),
        };
        format!(
            "; {} processes, gradients summed{carried} {when}",
            self.comm.size()
        )
    }

    /// What starting the run noticed that a user should hear of (parameters of
    /// an `init_from` checkpoint that did not fit and start fresh).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    pub fn net(&self) -> &dyn Model {
        self.net.as_ref()
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    pub fn last_checkpoint(&self) -> PathBuf {
        self.config.out.join(LAST)
    }

    pub fn best_checkpoint(&self) -> PathBuf {
        self.config.out.join(BEST)
    }

    /// Trains the remaining epochs, telling `observers` as it goes, until they
    /// are done, `max_steps` is reached or `stop` is requested; the last two
    /// write the last checkpoint first.
    pub fn run(
        &mut self,
        observers: &mut [&mut dyn Observer],
        stop: &StopRequest,
    ) -> Result<Outcome> {
        // A stop agreed in an earlier call is spent.
        (self.stop, self.stop_agreed) = (stop.clone(), false);
        while (self.state.epoch as usize) < self.settings.epochs {
            if let Some(ending) = self.train_epoch(observers, stop)? {
                self.save_last()?;
                return self.ended(observers, ending);
            }
            self.end_epoch(observers)?;
        }
        self.ended(observers, Ending::Finished)
    }

    /// Tells the observers how the run ended, and returns its outcome.
    fn ended(&self, observers: &mut [&mut dyn Observer], ending: Ending) -> Result<Outcome> {
        let line = EndLine {
            ending: match ending {
                Ending::Finished => "finished",
                Ending::MaxSteps => "max_steps",
                Ending::Stopped => "stopped",
            }
            .into(),
            step: self.state.step,
            epochs_done: self.state.epoch,
        };
        notify(observers, |o| o.run_ended(&line))?;
        Ok(self.outcome(ending))
    }

    fn outcome(&self, ending: Ending) -> Outcome {
        Outcome {
            ending,
            steps: self.state.step,
            epochs: self.state.epoch,
            last: self.last_checkpoint(),
            best: self.best_checkpoint(),
            best_val_top1: self.state.schedule.best_val_top1,
        }
    }

    /// The loader of the epoch in progress, from the batch it stopped at.
    fn loader(&mut self) -> Result<Loader> {
        let config = LoaderConfig {
            batch: self.settings.batch,
            view: self.data.train_view,
            seed: self.settings.seed,
            epoch: self.state.epoch,
            shuffle: true,
            start_batch: self.state.batch_in_epoch,
            indices: self.data.holdout.as_ref().map(|(train, _)| train.clone()),
            threads: self.config.loader_threads,
            queue: 4,
            drop_last: true,
            stored: self.stored,
            part: parallel::part_of(self.comm.as_ref()),
        };
        if self.stored {
            self.net.set_mean_image(&self.data.mean)?;
        }
        let info = self.data.dataset.info();
        Ok(Loader::new(
            self.data.train.clone(),
            config,
            self.data.mean.clone(),
            info,
        )?)
    }

    /// The rest of the epoch in progress; `Some` when it ended early.
    fn train_epoch(
        &mut self,
        observers: &mut [&mut dyn Observer],
        stop: &StopRequest,
    ) -> Result<Option<Ending>> {
        let mut loader = self.loader()?;
        let start = EpochStart {
            epoch: self.state.epoch + 1,
            epochs: self.settings.epochs,
            batches: loader.batches_per_epoch(),
            done: self.state.batch_in_epoch,
        };
        notify(observers, |o| o.epoch_started(&start))?;
        let mut window = Window::new();
        loop {
            let asked = Instant::now();
            let Some(batch) = loader.next_batch()? else {
                break;
            };
            let data_wait_s = asked.elapsed().as_secs_f64();
            if self.stop_agreed(stop) {
                return Ok(Some(Ending::Stopped));
            }
            let result = self.step(&batch)?;
            window.add(&result, data_wait_s);
            self.epoch_time.data_wait_s += data_wait_s;
            self.epoch_time.train_s += asked.elapsed().as_secs_f64();
            let step = Step {
                step: self.state.step,
                loss: result.loss,
                images_per_s: window.images_per_s(),
            };
            notify(observers, |o| o.step(&step))?;
            if self.state.step.is_multiple_of(self.config.log_every) {
                let line = self.step_line(result.loss, &window, start.batches);
                notify(observers, |o| o.step_line(&line))?;
                window = Window::new();
            }
            if self.state.step.is_multiple_of(self.config.checkpoint_every) {
                self.save_last()?;
            }
            if self
                .config
                .max_steps
                .is_some_and(|max| self.state.step >= max)
            {
                return Ok(Some(Ending::MaxSteps));
            }
        }
        Ok(None)
    }

    /// One optimisation step on `batch` (with several processes, this
    /// process's part of the batch): forward, backward, the step hook, the
    /// paper's SGD update. A loss that is not a number stops training with an
    /// error naming the last good checkpoint.
    pub fn step(&mut self, batch: &Batch) -> Result<StepResult> {
        let sgd = Sgd {
            learning_rate: self.state.schedule.learning_rate,
            momentum: self.settings.momentum,
            weight_decay: self.settings.weight_decay,
        };
        load_batch(self.net.as_mut(), batch)?;
        self.net.forward(Mode::Train);
        let logits = self.net.logits();
        let errors = top1_errors(&logits, &batch.labels, self.net.plan().classes());
        let reduced = self
            .backward(batch)
            .and_then(|loss| self.reduce(loss, errors, batch.count));
        let (loss, top1_errors, images) = match reduced {
            Ok(reduced) => reduced,
            Err(error) => {
                self.abandon_sums();
                return Err(error);
            }
        };
        if !loss.is_finite() {
            return Err(Error::Diverged {
                loss,
                step: self.state.step + 1,
                epoch: self.state.epoch + 1,
                checkpoint: self.last_checkpoint(),
            });
        }
        if let Some(hook) = self.hook.as_mut() {
            hook.before_update(self.net.as_mut(), self.state.step + 1)
                .map_err(Error::External)?;
        }
        self.net.sgd_step(&sgd);
        let result = StepResult {
            loss,
            top1_errors,
            images,
            wait_s: self.times.0,
            sum_s: self.times.1,
        };
        let state = &mut self.state;
        state.step += 1;
        state.batch_in_epoch += 1;
        state.epoch_loss_sum += loss as f64 * result.images as f64;
        state.epoch_errors += result.top1_errors as u64;
        state.epoch_images += result.images as u64;
        Ok(result)
    }

    /// The backward pass, with the sums of its gradients started as it goes
    /// where buckets are in use.
    fn backward(&mut self, batch: &Batch) -> Result<f32> {
        let (Some(buckets), Some(sums)) = (self.buckets.as_mut(), self.comm.background_sums())
        else {
            return Ok(self.net.backward(&batch.labels)?);
        };
        let params = self.net.plan().params.len();
        let bf16 = self.config.bf16_gradients;
        // Every batch of a shared run is whole (see `with_communicator`).
        buckets.begin(params, batch.count, self.settings.batch, bf16);
        let loss = self.net.backward_each(&batch.labels, &mut |index, grad| {
            buckets.ready(sums, index, grad)
        })?;
        buckets.end_pass(sums);
        Ok(loss)
    }

    /// On a step's way out with an error: waits for the sums still running on
    /// the net's own buffers (a GPU's, on the communicator's stream), so that
    /// none writes a buffer after the net is gone.
    fn abandon_sums(&mut self) {
        if let (Some(buckets), Some(sums)) = (self.buckets.as_ref(), self.comm.background_sums()) {
            buckets.abandon(sums);
        }
    }

    /// With several processes: the loss, errors and images of the whole batch,
    /// and every parameter's gradient replaced by the whole batch's. Alone: the
    /// values as they are.
    fn reduce(&mut self, loss: f32, errors: usize, images: usize) -> Result<(f32, usize, usize)> {
        self.times = (0.0, 0.0);
        if !self.comm.shared() {
            return Ok((loss, errors, images));
        }
        let started = Instant::now();
        self.check_in()?;
        let checked_in = Instant::now();
        let comm = self.comm.as_ref();
        let (loss, errors, all) = parallel::reduce_step(comm, loss, errors, images)?;
        let bf16 = self.config.bf16_gradients;
        match (self.buckets.as_mut(), comm.background_sums()) {
            (Some(buckets), Some(sums)) => {
                check_whole_batch(all, self.settings.batch)?;
                buckets.finish(self.net.as_mut(), comm, sums)?;
            }
            _ => parallel::reduce_gradients(self.net.as_mut(), comm, images, all, bf16)?,
        }
        self.times = (
            (checked_in - started).as_secs_f64(),
            checked_in.elapsed().as_secs_f64(),
        );
        Ok((loss, errors, all))
    }

    /// Whether to stop before the next step: as asked, alone; with several
    /// processes, as agreed at the last step's check-in (a signal may reach
    /// them at different steps; all stop at the same one).
    fn stop_agreed(&self, stop: &StopRequest) -> bool {
        if !self.comm.shared() {
            stop.is_requested()
        } else {
            self.stop_agreed
        }
    }

    /// The check-in after a step's or a validation's computation, before the
    /// sums that follow it.
    fn check_in(&mut self) -> Result<()> {
        let asked = self.stop.is_requested();
        let step = self.state.step + 1;
        self.stop_agreed = self.comm.check_in(step, asked).map_err(Error::External)?;
        Ok(())
    }

    /// The step line after the step just taken, over the steps of `window`.
    fn step_line(&self, loss: f32, window: &Window, batches: usize) -> StepLine {
        StepLine {
            step: self.state.step,
            epoch: self.state.epoch + 1,
            epochs_done: self.state.epoch as f64
                + self.state.batch_in_epoch as f64 / batches.max(1) as f64,
            loss,
            lr: self.state.schedule.learning_rate,
            images_per_s: window.images_per_s(),
            train_error: window.errors as f64 / window.images.max(1) as f64,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            wait_s: self.comm.shared().then(|| window.per_step(window.wait_s)),
            sum_s: self.comm.shared().then(|| window.per_step(window.sum_s)),
            data_wait_s: window.per_step(window.data_wait_s),
        }
    }

    /// The validation error: on the held-out images, or the `val` split.
    pub fn validate(&mut self) -> Result<Evaluation> {
        let (split, indices) = match &self.data.holdout {
            Some((_, val)) => (self.data.train.clone(), Some(val.clone())),
            None => (self.data.dataset.split("val")?, None),
        };
        let data = &self.data;
        let threads = self.config.loader_threads;
        let part = evaluate(
            self.net.as_mut(),
            split,
            indices,
            data.eval_view,
            &data.dataset,
            data.mean.clone(),
            threads,
            false,
            parallel::part_of(self.comm.as_ref()),
        )?;
        if self.comm.shared() {
            self.check_in()?;
        }
        parallel::reduce_evaluation(self.comm.as_ref(), part)
    }

    /// The end of an epoch: validation, the schedule, the epoch line, the last
    /// checkpoint and, when validation improved, the best.
    fn end_epoch(&mut self, observers: &mut [&mut dyn Observer]) -> Result<()> {
        notify(observers, |o| o.validation_started())?;
        let val = self.validate()?;
        let epoch_done = self.state.epoch + 1;
        let lr_used = self.state.schedule.learning_rate;
        let improved = self
            .state
            .schedule
            .end_epoch(&self.settings, epoch_done, val.top1_error());
        let images = self.state.epoch_images.max(1) as f64;
        let line = EpochLine {
            epoch: epoch_done,
            step: self.state.step,
            train_loss: self.state.epoch_loss_sum / images,
            train_error: self.state.epoch_errors as f64 / images,
            val_top1_error: val.top1_error(),
            val_top5_error: val.top5_error(),
            lr: lr_used,
            next_lr: self.state.schedule.learning_rate,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            train_s: self.epoch_time.train_s,
            data_wait_s: self.epoch_time.data_wait_s,
        };
        self.epoch_time = EpochTime::default();
        notify(observers, |o| o.epoch_finished(&line))?;
        let state = &mut self.state;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_errors = 0;
        state.epoch_images = 0;
        self.save_last()?;
        if improved {
            self.save(&self.best_checkpoint(), false)?;
        }
        Ok(())
    }

    /// Writes the last checkpoint, from which the run continues exactly.
    pub fn save_last(&mut self) -> Result<()> {
        self.state.rng = self.net.rng().state();
        self.save(&self.last_checkpoint(), true)
    }

    /// Writes a checkpoint: weights, the preprocessing, the training state, and
    /// the velocities where training may resume from it.
    fn save(&self, path: &Path, with_velocity: bool) -> Result<()> {
        if self.comm.rank() != 0 {
            // Every process holds the same weights and state; one writes them.
            return Ok(());
        }
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::new();
        self.preprocess.store(&mut metadata, &mut tensors);
        let state = serde_json::to_string(&self.state).expect("the training state serialises");
        metadata.insert(STATE_KEY.into(), state);
        let options = SaveOptions {
            step: self.state.step,
            with_velocity,
            metadata,
            tensors,
        };
        checkpoint::save(self.net.as_ref(), path, &options)?;
        Ok(())
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepResult {
    /// The batch's mean cross-entropy.
    pub loss: f32,
    /// Images whose most probable class (before the update) was not their label.
    pub top1_errors: usize,
    pub images: usize,
    /// With several processes: seconds waiting for the others at the check-in,
    /// and summing the gradients across them.
    pub wait_s: f64,
    pub sum_s: f64,
}

/// Seconds of an epoch's steps, and of those, waiting for the loader's
/// batches (an input-bound run waits long).
#[derive(Clone, Copy, Debug, Default)]
struct EpochTime {
    train_s: f64,
    data_wait_s: f64,
}

/// The steps since the last step line: their images, errors and time.
struct Window {
    started: Instant,
    steps: usize,
    images: usize,
    errors: usize,
    wait_s: f64,
    sum_s: f64,
    data_wait_s: f64,
}

impl Window {
    fn new() -> Window {
        Window {
            started: Instant::now(),
            steps: 0,
            images: 0,
            errors: 0,
            wait_s: 0.0,
            sum_s: 0.0,
            data_wait_s: 0.0,
        }
    }

    /// A step taken, after `data_wait_s` seconds waiting for its batch.
    fn add(&mut self, step: &StepResult, data_wait_s: f64) {
        self.data_wait_s += data_wait_s;
        self.steps += 1;
        self.images += step.images;
        self.errors += step.top1_errors;
        self.wait_s += step.wait_s;
        self.sum_s += step.sum_s;
    }

    fn per_step(&self, seconds: f64) -> f64 {
        seconds / self.steps.max(1) as f64
    }

    fn images_per_s(&self) -> f64 {
        self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Tells every observer of an event; the first failure stops training.
fn notify(
    observers: &mut [&mut dyn Observer],
    mut event: impl FnMut(&mut dyn Observer) -> Result<(), External>,
) -> Result<()> {
    for observer in observers.iter_mut() {
        event(&mut **observer).map_err(Error::External)?;
    }
    Ok(())
}

/// Rows of `logits` whose largest value is not at their label.
fn top1_errors(logits: &[f32], labels: &[u32], classes: usize) -> usize {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, label)| top_k(row, 1)[0] != **label as usize)
        .count()
}

/// Refuses settings no run can train with, naming the setting: sizes that
/// train nothing, and rates outside the paper's rule's sense.
fn check_settings(config: &TrainConfig, settings: &RunSettings, train_images: usize) -> Result<()> {
    let setting = |message: String| Err(Error::Setting(message));
    if settings.batch == 0 || settings.epochs == 0 {
        return setting("--batch and --epochs must be at least 1".into());
    }
    if settings.holdout > 0 && settings.holdout >= train_images {
        return setting(format!(
            "--holdout {} leaves no training images of {train_images}",
            settings.holdout
        ));
    }
    let trained = train_images - settings.holdout;
    if settings.batch > trained {
        return setting(format!(
            "--batch {} is larger than the {trained} training images: an epoch keeps only whole \
             batches, so no step would run",
            settings.batch
        ));
    }
    if config.max_steps == Some(0) {
        return setting("--max-steps 0 would train nothing: give at least 1".into());
    }
    if config.log_every == 0 || config.checkpoint_every == 0 {
        return setting("--log-every and --checkpoint-every must be at least 1 step".into());
    }
    let learning_rate = config
        .recipe
        .learning_rate
        .unwrap_or(config.arch.recipe.learning_rate);
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return setting(format!("--lr {learning_rate}: expected a number above 0"));
    }
    if !(settings.momentum.is_finite() && (0.0..1.0).contains(&settings.momentum)) {
        return setting(format!(
            "--momentum {}: expected a number in [0, 1)",
            settings.momentum
        ));
    }
    if !(settings.weight_decay.is_finite() && settings.weight_decay >= 0.0) {
        return setting(format!(
            "--weight-decay {}: expected a number of at least 0",
            settings.weight_decay
        ));
    }
    if !(settings.lr_drop_factor > 0.0 && settings.lr_drop_factor <= 1.0) {
        return setting(format!(
            "the recipe's lr_drop_factor {}: expected a number in (0, 1]",
            settings.lr_drop_factor
        ));
    }
    Ok(())
}

impl Data {
    fn new(
        dataset: Dataset,
        train: Split,
        settings: &RunSettings,
        preprocess: &Preprocess,
        net: &dyn Model,
    ) -> Result<Data> {
        let holdout = (settings.holdout > 0).then(|| {
            let (train, val) = holdout(train.len(), settings.holdout, settings.seed);
            (Arc::new(train), Arc::new(val))
        });
        let shape = net.plan().input_shape();
        let train_view = View {
            crop_height: shape.height,
            crop_width: shape.width,
            random_crop: settings.view.random_crop,
            mirror: settings.view.mirror,
            pca_std: settings.view.pca_std,
            subtract_mean: true,
            channel_scale: preprocess.channel_scale(),
            ten_crop: false,
        };
        Ok(Data {
            mean: preprocess.mean_for(&dataset)?,
            eval_view: eval_view(preprocess, shape.height, shape.width, false),
            train_view,
            dataset,
            train,
            holdout,
        })
    }
}

/// The run in `config.out`, continued from its last checkpoint, which must have
/// been started with the same settings and net.
fn resume(
    config: &TrainConfig,
    settings: &RunSettings,
    wanted: &NetSpec,
    dataset: &Dataset,
    factory: &dyn NetFactory,
    net_batch: usize,
) -> Result<Start> {
    let last = config.out.join(LAST);
    let ckpt = checkpoint::load(&last).map_err(|e| {
        Error::Run(format!(
            "--resume: no checkpoint to resume in {}: {e}",
            config.out.display()
        ))
    })?;
    let state = training_state(&ckpt, &last)?;
    if state.settings != *settings {
        return Err(Error::Run(format!(
            "--resume: this run was started with other settings\n  checkpoint: {:?}\n  now:        {:?}",
            state.settings, settings
        )));
    }
    if ckpt.spec != *wanted {
        return Err(Error::Run(format!(
            "--resume: the run in {} trains the network '{}', which differs from --arch '{}' (as fitted \
             to this dataset); resume with the --arch the run was started with",
            config.out.display(),
            ckpt.spec.name,
            config.arch.name
        )));
    }
    check_compatible(dataset, &ckpt.spec)?;
    let mut net = factory
        .build(&ckpt.spec, net_batch, None)
        .map_err(Error::External)?;
    ckpt.apply(net.as_mut(), &last, true)?;
    net.set_rng(Rng::from_state(state.rng));
    Ok(Start {
        net,
        state,
        inherited: Preprocess::from_checkpoint(&ckpt).ok(),
        notices: Vec::new(),
    })
}

/// A checkpoint's training state.
fn training_state(ckpt: &Checkpoint, path: &Path) -> Result<TrainState> {
    let text = ckpt.metadata.get(STATE_KEY).ok_or_else(|| {
        Error::Run(format!(
            "{}: the checkpoint has no training state",
            path.display()
        ))
    })?;
    serde_json::from_str(text).map_err(|e| {
        Error::Run(format!(
            "{}: the training state is unreadable: {e}",
            path.display()
        ))
    })
}

/// A new run in `config.out` (which must not hold one), its net initialised
/// from the seed and, with `init_from`, from a checkpoint's weights.
fn fresh(
    config: &TrainConfig,
    settings: &RunSettings,
    spec: NetSpec,
    dataset: &Dataset,
    factory: &dyn NetFactory,
    net_batch: usize,
) -> Result<Start> {
    if config.out.join(LAST).exists() {
        return Err(Error::Run(format!(
            "{} already holds a run: add --resume to continue it, or choose another --out",
            config.out.display()
        )));
    }
    check_compatible(dataset, &spec)?;
    let mut net = factory
        .build(&spec, net_batch, Some(settings.seed))
        .map_err(Error::External)?;
    let (inherited, notices) = match &config.init_from {
        Some(path) => load_initial_weights(net.as_mut(), path)?,
        None => (None, Vec::new()),
    };
    let learning_rate = config
        .recipe
        .learning_rate
        .unwrap_or(config.arch.recipe.learning_rate);
    let state = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        schedule: ScheduleState::start(learning_rate),
        rng: net.rng().state(),
        epoch_loss_sum: 0.0,
        epoch_errors: 0,
        epoch_images: 0,
        settings: settings.clone(),
    };
    Ok(Start {
        net,
        state,
        inherited,
        notices,
    })
}

/// Fixes the parameters of the layers named.
fn freeze(net: &mut dyn Model, layers: &[String]) -> Result<()> {
    for name in layers {
        let mut found = false;
        for suffix in ["weight", "bias"] {
            if let Some(index) = net.param_index(&format!("{name}.{suffix}")) {
                net.set_frozen(index, true);
                found = true;
            }
        }
        if !found {
            return Err(Error::Setting(format!(
                "--freeze: the net has no layer named '{name}'"
            )));
        }
    }
    Ok(())
}

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
        None if base_pixels == PixelScale::UnitMeanStd => Err(Error::Setting(format!(
            "{net_name} expects torchvision's pixel normalisation, whose mean and std come with \
             imported weights: start from them with --init-from (see `alexnet import torchvision`)"
        ))),
        None => Ok(Preprocess::from_dataset(dataset)),
    }
}

/// Copies the parameters `path` has in the net's shapes into `net` (others, such
/// as a last layer for another number of classes, keep their fresh values) and
/// returns the preprocessing the checkpoint carries, if any, and a notice
/// naming the parameters kept fresh.
fn load_initial_weights(
    net: &mut dyn Model,
    path: &Path,
) -> Result<(Option<Preprocess>, Vec<String>)> {
    let ckpt = checkpoint::load_weights(path)?;
    let mut kept_fresh = Vec::new();
    for index in 0..net.plan().params.len() {
        let info = net.plan().params[index].clone();
        match ckpt.tensors.get(&info.name) {
            Some((shape, values)) if *shape == info.shape => net.set_param_values(index, values)?,
            _ => kept_fresh.push(info.name),
        }
    }
    let notices = if kept_fresh.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "--init-from {}: freshly initialised (absent or another shape): {}",
            path.display(),
            kept_fresh.join(", ")
        )]
    };
    Ok((Preprocess::from_checkpoint(&ckpt).ok(), notices))
}

/// Whether the net keeps its gradients in a device's memory (its first
/// parameter's, as all of a net's are on one backend).
fn gradients_on_device(net: &mut dyn Model) -> bool {
    matches!(net.param_grad_mut(0), Some(BufferMut::Device { .. }))
}
