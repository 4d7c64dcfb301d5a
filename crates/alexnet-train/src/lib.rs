//! The paper's training procedure as a library unit, driven by values: a
//! [`TrainConfig`] (built from flags or from code) and a [`NetFactory`] (where
//! the nets run) give a [`Trainer`], whose [`run`](Trainer::run) trains, validates,
//! schedules the learning rate and writes checkpoints, telling [`Observer`]s
//! what happens. The command line's `train` and `experiment` both drive it.
//!
//! ```no_run
//! use alexnet::{Cpu, Model, NetSpec, Network};
//! use alexnet_train::{External, MetricsLog, Observer, StopRequest, TrainConfig, Trainer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = TrainConfig::new("data/fashion-mnist", NetSpec::preset("cifar")?, "runs/fashion");
//! let on_cpu = |spec: &NetSpec, batch: usize, seed: Option<u64>| -> Result<Box<dyn Model>, External> {
//!     Ok(match seed {
//!         Some(seed) => Box::new(Network::new(Cpu::new(), spec, batch, seed)?),
//!         None => Box::new(Network::new_zeroed(Cpu::new(), spec, batch)?),
//!     })
//! };
//! let mut trainer = Trainer::new(config, &on_cpu)?;
//! let mut log = MetricsLog::open("runs/fashion".as_ref())?;
//! let outcome = trainer.run(&mut [&mut log as &mut dyn Observer], &StopRequest::new())?;
//! println!("{} steps, best validation error {:?}", outcome.steps, outcome.best_val_top1);
//! # Ok(())
//! # }
//! ```
//!
//! The engine does no file I/O besides checkpoints and the data crate knows
//! nothing of networks, so training, which needs both, lives here.

mod comm;
mod config;
mod error;
mod evaluate;
mod hooks;
mod observer;
mod parallel;
mod preprocess;
mod schedule;
pub mod testing;
mod trainer;

pub use comm::{
    BackgroundSums, Communicator, SingleProcess, round_slice_to_bf16, weighted_sum_on_host,
};
pub use config::{Augmentation, BUCKET_BYTES, RecipeOverrides, RunSettings, TrainConfig, fit_spec};
pub use error::{Error, External, Result};
pub use evaluate::{
    Evaluation, check_compatible, eval_view, evaluate, load_batch, top_k, wants_stored,
};
pub use hooks::{NetFactory, StepHook, StopRequest};
pub use observer::{EndLine, EpochLine, EpochStart, MetricsLog, Observer, Record, Step, StepLine};
pub use parallel::{part_of, reduce_evaluation};
pub use preprocess::Preprocess;
pub use schedule::ScheduleState;
pub use trainer::{BEST, Ending, LAST, Outcome, StepResult, TrainState, Trainer};
