//! `alexnet plot`: training curves from metrics logs, one line per run, like the
//! paper's Figure 1 (training error against epochs).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::chart::{LineChart, Series};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Metric {
    TrainError,
    TrainLoss,
    ValTop1Error,
    ValTop5Error,
}

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::TrainError => "train_error",
            Metric::TrainLoss => "train_loss",
            Metric::ValTop1Error => "val_top1_error",
            Metric::ValTop5Error => "val_top5_error",
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
    /// What to draw against epochs.
    #[arg(long, value_enum, default_value = "train-error")]
    metric: Metric,
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
}

/// The (epoch, value) points of one metric in a metrics log.
pub fn read_curve(path: &std::path::Path, key: &str) -> Result<Vec<(f64, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut points = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), number + 1))?;
        if value["kind"] != "epoch" {
            continue;
        }
        if let (Some(epoch), Some(v)) = (value["epoch"].as_f64(), value[key].as_f64()) {
            points.push((epoch, v));
        }
    }
    Ok(points)
}

pub fn run(args: PlotArgs) -> Result<()> {
    let mut series = Vec::new();
    for (index, log) in args.logs.iter().enumerate() {
        let path = if log.is_dir() {
            log.join("metrics.jsonl")
        } else {
            log.clone()
        };
        let scale = if args.metric.is_error() { 100.0 } else { 1.0 };
        let points: Vec<(f64, f64)> = read_curve(&path, args.metric.key())?
            .into_iter()
            .map(|(e, v)| (e, v * scale))
            .collect();
        if points.is_empty() {
            bail!(
                "{}: no epoch lines with {}",
                path.display(),
                args.metric.key()
            );
        }
        let label = args.labels.get(index).cloned().unwrap_or_else(|| {
            path.parent()
                .and_then(|p| p.file_name())
                .map_or(format!("run {}", index + 1), |n| n.to_string_lossy().into())
        });
        series.push(Series {
            label,
            points,
            dashed: args.dashed.contains(&(index + 1)),
            colour: index,
        });
    }
    let chart = LineChart {
        title: args.title.clone(),
        x_label: "epochs".into(),
        y_label: if args.metric.is_error() {
            format!("{} (%)", args.metric.key())
        } else {
            args.metric.key().into()
        },
        series,
        reference: args.threshold.map(|t| (t, format!("{t}%"))),
    };
    crate::output::save_png(&chart.render(800, 500), &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}
