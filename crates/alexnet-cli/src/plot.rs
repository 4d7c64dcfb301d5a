//! `alexnet plot`: training curves from metrics logs, like the paper's Figure 1
//! (training error against epochs), and as people read a run: several metrics
//! on one figure (errors in percent above, the training loss in a panel of its
//! own below), against epochs or steps, with the learning-rate drops marked, and
//! redrawn while the run trains (`--follow`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use image::RgbImage;

use crate::chart::{LineChart, Series};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Metric {
    TrainError,
    TrainLoss,
    ValTop1Error,
    ValTop5Error,
}

impl Metric {
    /// Its field in epoch lines.
    fn key(self) -> &'static str {
        match self {
            Metric::TrainError => "train_error",
            Metric::TrainLoss => "train_loss",
            Metric::ValTop1Error => "val_top1_error",
            Metric::ValTop5Error => "val_top5_error",
        }
    }

    /// Its field in step lines, for the metrics those carry.
    fn step_key(self) -> Option<&'static str> {
        match self {
            Metric::TrainError => Some("train_error"),
            Metric::TrainLoss => Some("loss"),
            Metric::ValTop1Error | Metric::ValTop5Error => None,
        }
    }

    fn is_error(self) -> bool {
        !matches!(self, Metric::TrainLoss)
    }
}

#[derive(Args)]
pub struct PlotArgs {
    /// Metrics logs (`metrics.jsonl` of `alexnet train`), or run directories holding one.
    #[arg(required = true)]
    logs: Vec<PathBuf>,
    /// What to draw (comma-separated): errors share the upper panel, in percent;
    /// the training loss gets a panel of its own below.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "train-error")]
    metric: Vec<Metric>,
    /// Against optimisation steps (the training curves at every logged step,
    /// epoch ends marked) instead of epochs.
    #[arg(long)]
    by_step: bool,
    /// Legend labels, one per log (default: the run directory names).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Draw these runs (1-based, comma-separated) dashed, as the paper draws tanh.
    #[arg(long, value_delimiter = ',')]
    dashed: Vec<usize>,
    /// A horizontal reference line, in percent (the paper's Figure 1 uses 25).
    #[arg(long)]
    threshold: Option<f64>,
    #[arg(long, default_value = "")]
    title: String,
    #[arg(long, default_value = "curves.png")]
    out: PathBuf,
    /// Redraw every two seconds while the runs train, until every log's last
    /// line says its run ended (or Ctrl-C).
    #[arg(long)]
    follow: bool,
    /// With --follow: stop after this many seconds at the most.
    #[arg(long, requires = "follow")]
    follow_seconds: Option<f64>,
}

/// The lines of one metrics log, by kind.
struct Log {
    label: String,
    steps: Vec<serde_json::Value>,
    epochs: Vec<serde_json::Value>,
    /// The last line says the run ended.
    ended: bool,
}

/// Reads a metrics log (or the one in a run directory). A line cut short at the
/// end (a run writing it now) is left for the next read.
fn read_log(path: &Path, label: String) -> Result<Log> {
    let path = if path.is_dir() {
        path.join("metrics.jsonl")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut log = Log {
        label,
        steps: Vec::new(),
        epochs: Vec::new(),
        ended: false,
    };
    let complete = text.lines().count() - usize::from(!text.is_empty() && !text.ends_with('\n'));
    for (number, line) in text.lines().take(complete).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), number + 1))?;
        log.ended = value["kind"] == "end";
        match value["kind"].as_str() {
            Some("step") => log.steps.push(value),
            Some("epoch") => log.epochs.push(value),
            _ => {}
        }
    }
    Ok(log)
}

impl PlotArgs {
    fn logs(&self) -> Result<Vec<Log>> {
        self.logs
            .iter()
            .enumerate()
            .map(|(index, path)| {
                let label = self.labels.get(index).cloned().unwrap_or_else(|| {
                    let run = if path.is_dir() {
                        Some(path.as_path())
                    } else {
                        path.parent()
                    };
                    run.and_then(|p| p.file_name())
                        .map_or(format!("run {}", index + 1), |n| n.to_string_lossy().into())
                });
                read_log(path, label)
            })
            .collect()
    }

    /// The points of `metric` in `log`: step lines where they carry it and
    /// `--by-step`, else epoch lines.
    fn points(&self, log: &Log, metric: Metric) -> Vec<(f64, f64)> {
        let scale = if metric.is_error() { 100.0 } else { 1.0 };
        let (lines, x, key) = match (self.by_step, metric.step_key()) {
            (true, Some(key)) => (&log.steps, "step", key),
            (true, None) => (&log.epochs, "step", metric.key()),
            (false, _) => (&log.epochs, "epoch", metric.key()),
        };
        lines
            .iter()
            .filter_map(|l| Some((l[x].as_f64()?, l[key].as_f64()? * scale)))
            .collect()
    }

    /// The series of `metrics` of every log, one colour each.
    fn series(&self, logs: &[Log], metrics: &[Metric]) -> Vec<Series> {
        let mut series = Vec::new();
        for (index, log) in logs.iter().enumerate() {
            for &metric in metrics {
                let label = if metrics.len() > 1 {
                    format!("{}: {}", log.label, metric.key())
                } else {
                    log.label.clone()
                };
                series.push(Series {
                    label,
                    points: self.points(log, metric),
                    dashed: self.dashed.contains(&(index + 1)),
                    colour: series.len(),
                });
            }
        }
        series
    }

    /// Learning-rate drops of the first run and, by step, its epoch ends.
    fn markers(&self, logs: &[Log]) -> Vec<(f64, String)> {
        let Some(first) = logs.first() else {
            return Vec::new();
        };
        let x = if self.by_step { "step" } else { "epoch" };
        let mut markers = Vec::new();
        for line in &first.epochs {
            let (Some(at), Some(lr), Some(next)) = (
                line[x].as_f64(),
                line["lr"].as_f64(),
                line["next_lr"].as_f64(),
            ) else {
                continue;
            };
            if next < lr {
                markers.push((at, format!("lr {next:.0e}")));
            } else if self.by_step {
                markers.push((at, String::new()));
            }
        }
        markers
    }

    /// The figure: errors above, the loss below (either alone when only it is asked for).
    fn render(&self, logs: &[Log]) -> Result<RgbImage> {
        let errors: Vec<Metric> = self
            .metric
            .iter()
            .copied()
            .filter(|m| m.is_error())
            .collect();
        let losses: Vec<Metric> = self
            .metric
            .iter()
            .copied()
            .filter(|m| !m.is_error())
            .collect();
        let x_label = if self.by_step { "steps" } else { "epochs" };
        let markers = self.markers(logs);
        let mut panels = Vec::new();
        for (metrics, y_label) in [(errors, "error (%)"), (losses, "training loss")] {
            if metrics.is_empty() {
                continue;
            }
            let series = self.series(logs, &metrics);
            if let Some(empty) = series.iter().find(|s| s.points.is_empty()) {
                bail!("{}: nothing logged yet", empty.label);
            }
            panels.push(LineChart {
                title: if panels.is_empty() {
                    self.title.clone()
                } else {
                    String::new()
                },
                x_label: x_label.into(),
                y_label: y_label.into(),
                series,
                reference: (y_label == "error (%)")
                    .then_some(self.threshold)
                    .flatten()
                    .map(|t| (t, format!("{t}%"))),
                markers: markers.clone(),
            });
        }
        let heights: Vec<u32> = (0..panels.len())
            .map(|i| if i == 0 { 500 } else { 320 })
            .collect();
        let mut figure = RgbImage::new(800, heights.iter().sum());
        let mut top = 0;
        for (panel, height) in panels.iter().zip(&heights) {
            image::imageops::replace(&mut figure, &panel.render(800, *height), 0, top);
            top += i64::from(*height);
        }
        Ok(figure)
    }
}

pub fn run(args: PlotArgs) -> Result<()> {
    let started = Instant::now();
    loop {
        let logs = args.logs()?;
        crate::output::save_png(&args.render(&logs)?, &args.out)?;
        let out_of_time = args
            .follow_seconds
            .is_some_and(|s| started.elapsed().as_secs_f64() >= s);
        if !args.follow || out_of_time || logs.iter().all(|l| l.ended) {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    println!("{}", args.out.display());
    Ok(())
}
