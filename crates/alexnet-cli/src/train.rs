//! `alexnet train`: the flags of a training run, turned into the training crate's
//! [`TrainConfig`] and run by its [`Trainer`]; the progress bar and the console's
//! epoch lines are this command's observer, the metrics log another.

use std::path::PathBuf;

use alexnet::NetSpec;
use alexnet::spec::Schedule;
use alexnet_train::{
    Augmentation, Ending, EpochLine, EpochStart, External, MetricsLog, Observer, Outcome,
    RecipeOverrides, Step, StopRequest, TrainConfig, Trainer,
};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::device::Device;
use crate::engine::EngineSettings;
use crate::progress::Progress;

/// When to divide the learning rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// Divide the learning rate when validation error stops improving (the paper).
    Plateau,
    /// Divide the learning rate at the epochs given by --lr-steps.
    Steps,
}

#[derive(Args, Clone)]
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
    /// Start from published ImageNet weights (torchvision's or Caffe's), fetched
    /// on first use as `alexnet weights fetch` does.
    #[arg(long, value_enum, conflicts_with = "init_from")]
    pretrained: Option<crate::weights::Pretrained>,
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
    // Negative numbers reach the trainer's checks, which say what is expected.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f32>,
    /// Dropout probability for every dropout layer (default: the description's).
    #[arg(long)]
    dropout: Option<f32>,
    /// When to divide the learning rate (default: the recipe's).
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
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
    /// Loader worker threads (decoding, cropping, colour). Default: on a GPU,
    /// the machine's cores (divided among the processes on it), as the CPU has
    /// nothing else to do and a GPU consumes JPEG decodes of several cores; on
    /// the CPU, 1 (the net's threads take the cores).
    #[arg(long)]
    loader_threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Under mpirun: sum the processes' gradients carried as bf16 (half the
    /// bytes of f32; each partial sum rounded to bf16).
    #[arg(long, help_heading = "Several processes")]
    bf16_gradients: bool,
    /// Under mpirun: sum the gradients in buckets of this many MiB, each
    /// started on a thread of its own as soon as the backward pass has
    /// finished its gradients, while the pass goes on; on GPUs (mpirun or
    /// torchrun) any size but 0 starts each gradient's NCCL sum on the GPU as
    /// soon as the pass has finished it. 0 sums them after the pass, one
    /// tensor at a time. Default: 25 on GPUs and when CPU processes span
    /// several machines, 0 when CPU processes share one (where the sums take
    /// the cores the pass computes on, and buckets measured 2% slower).
    #[arg(long, value_name = "MIB", help_heading = "Several processes")]
    bucket_mb: Option<u32>,
    #[command(flatten)]
    pub dist: crate::dist::DistArgs,
    #[command(flatten)]
    pub placement: crate::device::Placement,
    #[command(flatten)]
    pub engine: crate::engine::EngineArgs,
}

impl TrainArgs {
    /// The training configuration these flags describe.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut config = TrainConfig::new(&self.data, NetSpec::resolve(&self.arch)?, &self.out);
        config.resume = self.resume;
        config.init_from = match self.pretrained {
            Some(source) => Some(crate::weights::obtain(source)?),
            None => self.init_from.clone(),
        };
        config.freeze = self.freeze.clone();
        config.recipe = RecipeOverrides {
            epochs: self.epochs,
            batch: self.batch,
            learning_rate: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule: self.schedule.map(|s| match s {
                ScheduleArg::Plateau => Schedule::Plateau,
                ScheduleArg::Steps => Schedule::Steps,
            }),
            patience: self.patience,
            lr_steps: (!self.lr_steps.is_empty()).then(|| self.lr_steps.clone()),
            max_drops: self.max_drops,
        };
        config.dropout = self.dropout;
        config.max_steps = self.max_steps;
        config.holdout = self.holdout;
        config.augment = Augmentation {
            random_crop: !self.no_crop,
            mirror: !self.no_mirror,
            pca_std: self.pca_std,
        };
        config.seed = self.seed;
        config.checkpoint_every = self.checkpoint_every;
        config.log_every = self.log_every;
        config.loader_threads = self
            .loader_threads
            .unwrap_or_else(|| default_loader_threads(self.placement.main_device()));
        config.bf16_gradients = self.bf16_gradients;
        let bucket_mb = self
            .bucket_mb
            .unwrap_or_else(|| crate::dist::default_bucket_mb(self.placement.main_device()));
        config.bucket_bytes = (bucket_mb as usize) << 20;
        Ok(config)
    }
}

/// Loader threads when `--loader-threads` is not given (see its help).
fn default_loader_threads(device: Device) -> usize {
    match device {
        Device::Cuda(_) => crate::dist::cores_per_process(),
        Device::Cpu | Device::Reference => 1,
    }
}

/// Trains as the flags say until done, `--max-steps`, or `stop` (Ctrl-C, SIGTERM, SIGHUP).
pub fn run(args: TrainArgs, engine: &EngineSettings, stop: &StopRequest) -> Result<()> {
    let comm = crate::dist::communicator(&args.dist, args.placement.main_device())?;
    if comm.shared() && args.placement.parallel.is_some() {
        bail!(
            "--parallel towers splits one net over devices; data-parallel training ({} processes) \
             takes a whole net per process: use one or the other",
            comm.size()
        );
    }
    let writer = comm.rank() == 0;
    let nets = args.placement.nets(engine);
    let mut trainer = Trainer::with_communicator(args.config()?, &nets, comm)?;
    if !writer {
        // The other processes train their shares silently; rank 0 logs and writes.
        let outcome = trainer.run(&mut [], stop)?;
        drop(outcome);
        return Ok(());
    }
    for notice in trainer.notices() {
        eprintln!("{notice}");
    }
    eprintln!("{}", trainer.summary());
    let mut log = MetricsLog::open_at(&args.out, trainer.state())?;
    let mut console = Console::new(!args.quiet);
    let outcome = trainer.run(&mut [&mut log, &mut console], stop);
    console.progress.finish();
    report(&outcome?);
    Ok(())
}

/// The last line of a run: how it ended and where its checkpoints are.
fn report(outcome: &Outcome) {
    let last = outcome.last.display();
    match outcome.ending {
        Ending::Stopped => {
            eprintln!("interrupted: checkpoint written to {last} (continue with --resume)")
        }
        Ending::MaxSteps => eprintln!(
            "stopped after {} steps (--max-steps); checkpoint {last}",
            outcome.steps
        ),
        Ending::Finished => eprintln!(
            "done: {last} (last), {} (best validation)",
            outcome.best.display()
        ),
    }
}

/// The terminal's view of a run: a progress bar per epoch (unless `--quiet`)
/// and a line at each epoch's end.
struct Console {
    enabled: bool,
    progress: Progress,
}

impl Console {
    fn new(enabled: bool) -> Console {
        Console {
            enabled,
            progress: Progress::new(false, 0, 0, String::new()),
        }
    }
}

impl Observer for Console {
    fn epoch_started(&mut self, start: &EpochStart) -> Result<(), External> {
        self.progress = Progress::new(
            self.enabled,
            start.batches as u64,
            start.done as u64,
            format!("epoch {}/{}", start.epoch, start.epochs),
        );
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), External> {
        self.progress.step(step.loss, step.images_per_s);
        Ok(())
    }

    fn validation_started(&mut self) -> Result<(), External> {
        self.progress.finish();
        Ok(())
    }

    fn epoch_finished(&mut self, line: &EpochLine) -> Result<(), External> {
        let lr_change = if line.next_lr != line.lr {
            format!(", learning rate now {}", line.next_lr)
        } else {
            String::new()
        };
        eprintln!(
            "epoch {}: train loss {:.4}, train error {:.2}%, validation top-1 {:.2}% top-5 {:.2}%, \
             waited {:.1} s of {:.1} s for data{lr_change}",
            line.epoch,
            line.train_loss,
            100.0 * line.train_error,
            100.0 * line.val_top1_error,
            100.0 * line.val_top5_error,
            line.data_wait_s,
            line.train_s,
        );
        Ok(())
    }
}
