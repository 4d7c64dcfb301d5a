//! What a training run reports as it goes, delivered to observers: a metrics
//! log (JSON lines, read by `alexnet plot`), a progress bar, an in-memory record
//! for experiments. Observers only watch; they cannot change the run.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{External, io};

/// An epoch about to be trained (or continued, after a resume).
#[derive(Clone, Debug)]
pub struct EpochStart {
    /// Counted from 1.
    pub epoch: u64,
    pub epochs: usize,
    pub batches: usize,
    /// Batches of it already done (a resumed epoch).
    pub done: usize,
}

/// One optimisation step.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub step: u64,
    pub loss: f32,
    /// Images per second since the last [`StepLine`].
    pub images_per_s: f64,
}

/// Every `log_every` steps: the training error and speed since the previous line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepLine {
    pub step: u64,
    /// The epoch in progress, counted from 1.
    pub epoch: u64,
    /// Epochs done, with the fraction of the current one.
    pub epochs_done: f64,
    pub loss: f32,
    pub lr: f32,
    pub images_per_s: f64,
    /// Over the steps since the previous line, with dropout and augmentation on.
    pub train_error: f64,
    pub elapsed_s: f64,
    /// With several processes, seconds per step: waiting for the others at
    /// the check-in (their imbalance), and summing the gradients across them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_s: Option<f64>,
    /// Seconds per step waiting for the loader's batch: above zero, the
    /// device waits for data.
    #[serde(default)]
    pub data_wait_s: f64,
}

/// The end of an epoch: its training figures and the validation error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochLine {
    pub epoch: u64,
    pub step: u64,
    pub train_loss: f64,
    pub train_error: f64,
    pub val_top1_error: f64,
    pub val_top5_error: f64,
    /// The learning rate this epoch trained with, and the one the next will use.
    pub lr: f32,
    pub next_lr: f32,
    pub elapsed_s: f64,
    /// Seconds this epoch's steps took (since the run began or resumed it,
    /// validation apart), and of those, seconds waiting for the loader's batches.
    #[serde(default)]
    pub train_s: f64,
    #[serde(default)]
    pub data_wait_s: f64,
}

/// How a call of `Trainer::run` ended, for its last line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndLine {
    /// "finished", "max_steps" or "stopped".
    pub ending: String,
    pub step: u64,
    pub epochs_done: u64,
}

/// Watches a training run. Every method has a default that ignores the event.
pub trait Observer {
    fn epoch_started(&mut self, _start: &EpochStart) -> Result<(), External> {
        Ok(())
    }
    fn step(&mut self, _step: &Step) -> Result<(), External> {
        Ok(())
    }
    fn step_line(&mut self, _line: &StepLine) -> Result<(), External> {
        Ok(())
    }
    /// The epoch's batches are done; validation begins.
    fn validation_started(&mut self) -> Result<(), External> {
        Ok(())
    }
    fn epoch_finished(&mut self, _line: &EpochLine) -> Result<(), External> {
        Ok(())
    }
    /// `Trainer::run` returned: the run finished, reached its step limit or was
    /// stopped (a resumed run goes on writing after this line).
    fn run_ended(&mut self, _line: &EndLine) -> Result<(), External> {
        Ok(())
    }
}

/// The metrics log: one JSON object per line, `"kind": "step"` or `"epoch"`,
/// appended (a resumed run continues its log), flushed after every line.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// The log's file in a run's output folder.
    pub const FILE: &'static str = "metrics.jsonl";

    /// Opens (or creates) `metrics.jsonl` in `out` for appending.
    pub fn open(out: &Path) -> crate::Result<MetricsLog> {
        let path = out.join(Self::FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("opening the metrics log", &path))?;
        Ok(MetricsLog { path, file })
    }

    /// Opens the log of a run that has reached `state` (a resumed run's last
    /// checkpoint, or a fresh run's start): lines written after that point by a
    /// run killed before its next checkpoint are dropped (and a line torn by the
    /// kill), so every step and epoch appears once.
    pub fn open_at(out: &Path, state: &crate::TrainState) -> crate::Result<MetricsLog> {
        let path = out.join(Self::FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|line| written_before(line, state.step, state.epoch))
                    .collect();
                if kept.len() != text.lines().count() || (!text.is_empty() && !text.ends_with('\n'))
                {
                    let mut rewritten = kept.join("\n");
                    if !rewritten.is_empty() {
                        rewritten.push('\n');
                    }
                    alexnet::checkpoint::write_atomically(&path, rewritten.as_bytes())?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("reading the metrics log", &path)(e)),
        }
        Self::open(out)
    }

    fn write(&mut self, kind: &str, line: &impl Serialize) -> Result<(), External> {
        let mut value = serde_json::to_value(line)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("kind".into(), kind.into());
        }
        writeln!(self.file, "{value}")
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("writing the metrics log {}: {e}", self.path.display()).into())
    }
}

impl Observer for MetricsLog {
    fn step_line(&mut self, line: &StepLine) -> Result<(), External> {
        self.write("step", line)
    }
    fn epoch_finished(&mut self, line: &EpochLine) -> Result<(), External> {
        self.write("epoch", line)
    }
    fn run_ended(&mut self, line: &EndLine) -> Result<(), External> {
        self.write("end", line)
    }
}

/// Whether a log line belongs to the run up to `step` steps and `epochs` whole
/// epochs: step lines up to that step, epoch lines up to that epoch. A line that
/// does not parse (cut short by a kill) does not.
fn written_before(line: &str, step: u64, epochs: u64) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return false;
    };
    let field = |name: &str| value[name].as_u64();
    match value["kind"].as_str() {
        Some("step") => field("step").is_some_and(|s| s <= step),
        Some("epoch") => field("epoch").is_some_and(|e| e <= epochs),
        _ => true,
    }
}

/// Keeps every step and epoch line in memory, for code that wants a run's
/// curves as values (the experiments).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub steps: Vec<StepLine>,
    pub epochs: Vec<EpochLine>,
    /// How each call of `Trainer::run` ended (records written before had none).
    #[serde(default)]
    pub ends: Vec<EndLine>,
}

impl Observer for Record {
    fn step_line(&mut self, line: &StepLine) -> Result<(), External> {
        self.steps.push(line.clone());
        Ok(())
    }
    fn epoch_finished(&mut self, line: &EpochLine) -> Result<(), External> {
        self.epochs.push(line.clone());
        Ok(())
    }
    fn run_ended(&mut self, line: &EndLine) -> Result<(), External> {
        self.ends.push(line.clone());
        Ok(())
    }
}
