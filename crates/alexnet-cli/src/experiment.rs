//! `alexnet experiment`: the paper's ablations, each as one command. Every
//! experiment derives its variants from one base description (the `cifar`
//! preset by default), trains each variant with the same seeds, data order and
//! budget, then reports the final training and test error (mean and spread over
//! the seeds), the epochs and seconds each variant needed to reach a training
//! error threshold fixed by a stated rule, and a figure of training error
//! against epochs.

use std::path::{Path, PathBuf};

use alexnet::spec::{LayerSpec, NetSpec};
use alexnet::towers::TowerLayout;
use alexnet::{Precision, checkpoint};
use alexnet_data::Dataset;
use alexnet_train::{
    MetricsLog, Preprocess, Record, StopRequest, TrainConfig, Trainer, eval_view, evaluate,
};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::chart::{LineChart, Series};
use crate::engine::EngineSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Experiment {
    /// ReLU against tanh (Figure 1: six times faster to 25% training error on CIFAR-10).
    ReluVsTanh,
    /// With and without local response normalisation (CIFAR-10: 13% -> 11% test error).
    Lrn,
    /// Overlapping 3/2 pooling against plain 2/2 (-0.4% top-1 on ImageNet).
    OverlappingPool,
    /// With and without dropout (less overfitting, about twice the iterations).
    Dropout,
    /// Two towers against one tower with half the kernels (-1.7% top-1 on ImageNet).
    Towers,
    /// fp32 against mixed precision (bf16 matrix products): not in the paper; a
    /// check that bf16 training reaches the same error.
    Precision,
}

#[derive(Args)]
pub struct ExperimentArgs {
    #[arg(value_enum)]
    name: Experiment,
    /// A prepared dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// The description the variants are derived from (a preset name or a TOML file).
    #[arg(long, default_value = "cifar")]
    base: String,
    /// Seeds per variant.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Epochs per run (the budget; default: 4).
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Learning rate (default: the base recipe's).
    #[arg(long)]
    lr: Option<f32>,
    /// Batch size (default: the base recipe's).
    #[arg(long)]
    batch: Option<usize>,
    /// Training images held out for validation (as `train --holdout`).
    #[arg(long, default_value_t = 5000)]
    holdout: usize,
    /// Training-error threshold in percent. Default rule, fixed before the runs: the
    /// training error the first variant reaches, on average over the seeds, after a
    /// quarter of its epochs.
    #[arg(long)]
    threshold: Option<f64>,
    /// Stop each run after this many steps (for short checks).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Output directory (runs, results.md, results.json, figure.png).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where every run trains and is evaluated.
    #[command(flatten)]
    pub placement: crate::device::Placement,
}

/// One network of an experiment.
struct Variant {
    name: &'static str,
    spec: NetSpec,
    /// Drawn dashed in the figure (tanh, as in the paper's Figure 1).
    dashed: bool,
    /// Arithmetic of the matrix products, in training and in the test evaluation.
    precision: Precision,
}

/// The paper's claim for each experiment, quoted beside our result.
fn paper_claim(experiment: Experiment) -> &'static str {
    match experiment {
        Experiment::ReluVsTanh => {
            "ReLU reaches 25% training error on CIFAR-10 six times faster than tanh (Figure 1)"
        }
        Experiment::Lrn => {
            "response normalisation: CIFAR-10 test error 13% without, 11% with (Section 3.3)"
        }
        Experiment::OverlappingPool => {
            "overlapping 3/2 pooling: -0.4% top-1, -0.3% top-5 on ImageNet (Section 3.4)"
        }
        Experiment::Dropout => {
            "dropout reduces overfitting, roughly doubling the iterations to converge (Section 4.2)"
        }
        Experiment::Towers => {
            "two towers: -1.7% top-1, -1.2% top-5 against one tower with half the kernels (Section 3.2)"
        }
        Experiment::Precision => {
            "not in the paper (fp32 throughout); mixed precision should end within 0.5 points of fp32"
        }
    }
}

fn map_layers(spec: &NetSpec, f: impl FnMut(&LayerSpec) -> Option<LayerSpec>) -> NetSpec {
    let mut out = spec.clone();
    out.layers = spec.layers.iter().filter_map(f).collect();
    out
}

/// The variants of an experiment, the base's own form first.
fn variants(experiment: Experiment, base: &NetSpec) -> Result<Vec<Variant>> {
    let keep = |l: &LayerSpec| Some(l.clone());
    let base_variant = |name| Variant {
        name,
        spec: base.clone(),
        dashed: false,
        precision: Precision::F32,
    };
    let count = |pred: fn(&LayerSpec) -> bool| base.layers.iter().filter(|l| pred(l)).count();
    let v = match experiment {
        Experiment::ReluVsTanh => {
            if count(|l| matches!(l, LayerSpec::Relu)) == 0 {
                bail!("the base description has no ReLU to replace");
            }
            let tanh = map_layers(base, |l| {
                Some(if *l == LayerSpec::Relu {
                    LayerSpec::Tanh
                } else {
                    l.clone()
                })
            });
            vec![
                base_variant("relu"),
                Variant {
                    name: "tanh",
                    spec: tanh,
                    dashed: true,
                    precision: Precision::F32,
                },
            ]
        }
        Experiment::Lrn => {
            if count(|l| matches!(l, LayerSpec::Lrn(_))) == 0 {
                bail!("the base description has no LRN layer to remove");
            }
            let without = map_layers(base, |l| {
                if matches!(l, LayerSpec::Lrn(_)) {
                    None
                } else {
                    keep(l)
                }
            });
            vec![
                base_variant("with LRN"),
                Variant {
                    name: "without LRN",
                    spec: without,
                    dashed: true,
                    precision: Precision::F32,
                },
            ]
        }
        Experiment::OverlappingPool => {
            if count(|l| matches!(l, LayerSpec::MaxPool(p) if p.size > p.stride)) == 0 {
                bail!("the base description has no overlapping max pooling");
            }
            let plain = map_layers(base, |l| match l {
                LayerSpec::MaxPool(p) if p.size > p.stride => {
                    Some(LayerSpec::MaxPool(alexnet::spec::PoolSpec {
                        size: p.stride,
                        stride: p.stride,
                    }))
                }
                other => keep(other),
            });
            vec![
                base_variant("overlapping 3/2"),
                Variant {
                    name: "plain 2/2",
                    spec: plain,
                    dashed: true,
                    precision: Precision::F32,
                },
            ]
        }
        Experiment::Dropout => {
            if count(|l| matches!(l, LayerSpec::Dropout(_))) == 0 {
                bail!("the base description has no dropout layer to remove");
            }
            let without = map_layers(base, |l| {
                if matches!(l, LayerSpec::Dropout(_)) {
                    None
                } else {
                    keep(l)
                }
            });
            vec![
                base_variant("with dropout"),
                Variant {
                    name: "without dropout",
                    spec: without,
                    dashed: true,
                    precision: Precision::F32,
                },
            ]
        }
        Experiment::Towers => {
            // Two towers: every convolution after the first and every LRN split in
            // two groups (the paper's layout). One tower, as the paper's comparison
            // net (Section 3.2): half the kernels in every convolution but the
            // last, which keeps its count, as do the fully connected layers, so
            // that the two nets have about as many parameters.
            let last_conv = base
                .layers
                .iter()
                .filter(|l| matches!(l, LayerSpec::Conv(_)))
                .count();
            let mut convolutions = 0;
            let two = map_layers(base, |l| match l {
                LayerSpec::Conv(c) => {
                    convolutions += 1;
                    let groups = if convolutions > 1 { 2 } else { c.groups };
                    Some(LayerSpec::Conv(alexnet::spec::ConvSpec {
                        groups,
                        ..c.clone()
                    }))
                }
                LayerSpec::Lrn(n) => Some(LayerSpec::Lrn(alexnet::spec::LrnSpec {
                    groups: 2,
                    ..n.clone()
                })),
                other => keep(other),
            });
            let mut convolutions = 0;
            let one = map_layers(base, |l| match l {
                LayerSpec::Conv(c) => {
                    convolutions += 1;
                    let out = if convolutions == last_conv {
                        c.out
                    } else {
                        c.out / 2
                    };
                    Some(LayerSpec::Conv(alexnet::spec::ConvSpec {
                        out,
                        groups: 1,
                        ..c.clone()
                    }))
                }
                LayerSpec::Lrn(n) => Some(LayerSpec::Lrn(alexnet::spec::LrnSpec {
                    groups: 1,
                    ..n.clone()
                })),
                other => keep(other),
            });
            vec![
                Variant {
                    name: "two towers",
                    spec: two,
                    dashed: false,
                    precision: Precision::F32,
                },
                Variant {
                    name: "one tower, half the kernels",
                    spec: one,
                    dashed: true,
                    precision: Precision::F32,
                },
            ]
        }
        Experiment::Precision => vec![
            base_variant("fp32"),
            Variant {
                name: "bf16 products",
                spec: base.clone(),
                dashed: true,
                precision: Precision::Bf16,
            },
        ],
    };
    Ok(v)
}

fn mean_and_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// (epochs done, training error, elapsed seconds) of each step line of a run:
/// the error over the steps since the previous line, so the time to a
/// threshold is resolved to a fraction of an epoch.
fn step_curve(record: &Record) -> Vec<(f64, f64, f64)> {
    let points = record.steps.iter();
    points
        .map(|l| (l.epochs_done, l.train_error, l.elapsed_s))
        .collect()
}

/// (epoch, training error, elapsed seconds) of each epoch of a run.
fn epoch_curve(record: &Record) -> Vec<(f64, f64, f64)> {
    let points = record.epochs.iter();
    points
        .map(|l| (l.epoch as f64, l.train_error, l.elapsed_s))
        .collect()
}

/// Where a finished run keeps its curves; present only once it is done.
const RECORD: &str = "record.json";

/// The curves of the finished run in `run_dir`.
fn read_record(run_dir: &Path) -> Result<Record> {
    let path = run_dir.join(RECORD);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run's record", path.display()))
}

/// What every run of an experiment shares.
struct Budget<'a> {
    args: &'a ExperimentArgs,
    engine: &'a EngineSettings,
    log_every: u64,
}

impl Budget<'_> {
    /// Trains `variant` with `seed` in `run_dir` and keeps its curves there.
    fn train(&self, variant: &Variant, seed: u64, run_dir: &Path) -> Result<Record> {
        let args = self.args;
        let mut config = TrainConfig::new(&args.data, variant.spec.clone(), run_dir);
        config.recipe.epochs = Some(args.epochs);
        config.recipe.batch = args.batch;
        config.recipe.learning_rate = args.lr;
        config.max_steps = args.max_steps;
        config.seed = seed;
        config.holdout = args.holdout;
        config.log_every = self.log_every;
        let engine = self.engine.with_precision(variant.precision);
        let mut trainer = Trainer::new(config, &args.placement.nets(&engine))?;
        eprintln!("{}", trainer.summary());
        let mut log = MetricsLog::open(run_dir)?;
        let mut record = Record::default();
        trainer.run(&mut [&mut log, &mut record], &StopRequest::new())?;
        let text = serde_json::to_string(&record)?;
        crate::output::write_atomically(&run_dir.join(RECORD), text.as_bytes())?;
        Ok(record)
    }
}

/// The first epoch (and its elapsed time) at which the training error is at or below `threshold`.
fn time_to(curve: &[(f64, f64, f64)], threshold: f64) -> Option<(f64, f64)> {
    curve
        .iter()
        .find(|(_, e, _)| *e <= threshold)
        .map(|(ep, _, s)| (*ep, *s))
}

pub fn run(args: ExperimentArgs, engine: &EngineSettings) -> Result<()> {
    let dataset = Dataset::open(&args.data)
        .with_context(|| format!("opening dataset {}", args.data.display()))?;
    let base = NetSpec::resolve(&args.base)?;
    let variants = variants(args.name, &base)?;
    if args.placement.parallel.is_some() {
        // Refuse a variant that cannot be split before any other trains for hours.
        for variant in &variants {
            TowerLayout::new(&variant.spec, args.placement.devices.len()).map_err(|e| {
                anyhow::anyhow!("--parallel towers: the variant '{}': {e}", variant.name)
            })?;
        }
    }
    let experiment_name = args
        .name
        .to_possible_value()
        .map_or("experiment".to_string(), |v| v.get_name().to_string());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/experiments").join(&experiment_name));
    std::fs::create_dir_all(&out)?;

    // Step lines every 100 steps (the train default), or four per epoch on small
    // sets, so that the time to a threshold is resolved within an epoch.
    let batch = args.batch.unwrap_or(base.recipe.batch).max(1);
    let train_images = dataset.split("train")?.len().saturating_sub(args.holdout);
    let log_every = (train_images / batch / 4).clamp(1, 100);

    // Train every variant with every seed (runs already finished are kept).
    let budget = Budget {
        args: &args,
        engine,
        log_every: log_every as u64,
    };
    let mut runs: Vec<Vec<PathBuf>> = Vec::new();
    let mut records: Vec<Vec<Record>> = Vec::new();
    for (index, variant) in variants.iter().enumerate() {
        let spec_path = out.join(format!("variant{index}.toml"));
        crate::output::write_atomically(&spec_path, variant.spec.to_toml().as_bytes())?;
        let (mut seeds, mut curves) = (Vec::new(), Vec::new());
        for seed in 1..=args.seeds {
            let run_dir = out.join(format!("variant{index}-seed{seed}"));
            let record = if run_dir.join(RECORD).exists() {
                eprintln!("{} seed {seed}: already done", variant.name);
                read_record(&run_dir)?
            } else {
                let _ = std::fs::remove_dir_all(&run_dir);
                eprintln!("{} seed {seed}: training", variant.name);
                budget.train(variant, seed, &run_dir)?
            };
            seeds.push(run_dir);
            curves.push(record);
        }
        runs.push(seeds);
        records.push(curves);
    }

    // The threshold rule: given, or the first variant's mean training error after a
    // quarter of its epochs. Times to the threshold come from the step lines.
    let curves: Vec<Vec<Vec<(f64, f64, f64)>>> = records
        .iter()
        .map(|seeds| seeds.iter().map(epoch_curve).collect())
        .collect();
    let step_curves: Vec<Vec<Vec<(f64, f64, f64)>>> = records
        .iter()
        .map(|seeds| seeds.iter().map(step_curve).collect())
        .collect();
    let threshold = match args.threshold {
        Some(t) => t / 100.0,
        None => {
            let quarter = args.epochs as f64 / 4.0;
            let at_quarter: Vec<f64> = step_curves[0]
                .iter()
                .filter_map(|c| c.iter().find(|(e, _, _)| *e >= quarter).map(|p| p.1))
                .collect();
            if at_quarter.is_empty() {
                bail!(
                    "the runs logged no step reaching a quarter of their epochs; the threshold rule needs one"
                );
            }
            mean_and_spread(&at_quarter).0
        }
    };

    // Test error of each run's last weights.
    let test_split = dataset
        .split_names()
        .into_iter()
        .find(|s| s == "test" || s == "val");
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for (index, (variant, seeds)) in variants.iter().zip(&runs).enumerate() {
        let mut train_errors = Vec::new();
        let mut test_errors = Vec::new();
        let mut epochs_to = Vec::new();
        let mut seconds_to = Vec::new();
        for (seed, run_dir) in seeds.iter().enumerate() {
            let curve = &curves[index][seed];
            if let Some(last) = curve.last() {
                train_errors.push(last.1);
            }
            if let Some((e, s)) = time_to(&step_curves[index][seed], threshold) {
                epochs_to.push(e);
                seconds_to.push(s);
            }
            if let Some(split) = &test_split {
                let path = run_dir.join("last.safetensors");
                let ckpt = checkpoint::load_weights(&path)?;
                let preprocess = Preprocess::from_checkpoint(&ckpt)?;
                let engine = engine.with_precision(variant.precision);
                let mut net = args
                    .placement
                    .nets(&engine)
                    .network_zeroed(&ckpt.spec, 100)?;
                ckpt.apply(net.as_mut(), &path, false)?;
                let shape = net.plan().input_shape();
                let view = eval_view(&preprocess, shape.height, shape.width, false);
                let result = evaluate(
                    net.as_mut(),
                    dataset.split(split)?,
                    None,
                    view,
                    &dataset,
                    preprocess.mean_for(&dataset)?,
                    engine.worker_threads(),
                    false,
                )?;
                test_errors.push(result.top1_error());
            }
            series.push(Series {
                label: format!("{} (seed {})", variant.name, seed + 1),
                points: curve.iter().map(|(e, err, _)| (*e, err * 100.0)).collect(),
                dashed: variant.dashed,
                colour: index,
            });
        }
        let (train_mean, train_sd) = mean_and_spread(&train_errors);
        let (test_mean, test_sd) = mean_and_spread(&test_errors);
        let (epochs_mean, _) = mean_and_spread(&epochs_to);
        let (seconds_mean, _) = mean_and_spread(&seconds_to);
        rows.push(json!({
            "variant": variant.name,
            "runs": seeds.len(),
            "final_train_error": {"mean": train_mean, "sd": train_sd},
            "test_error": if test_errors.is_empty() { json!(null) } else { json!({"mean": test_mean, "sd": test_sd}) },
            "reached_threshold": epochs_to.len(),
            "epochs_to_threshold": if epochs_to.len() == seeds.len() { json!(epochs_mean) } else { json!(null) },
            "epochs_to_threshold_per_seed": epochs_to,
            "seconds_to_threshold": if seconds_to.len() == seeds.len() { json!(seconds_mean) } else { json!(null) },
        }));
    }

    let results = json!({
        "experiment": experiment_name,
        "data": args.data.display().to_string(),
        "base": base.name,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "threshold_train_error": threshold,
        "threshold_rule": if args.threshold.is_some() { "given" } else { "first variant's mean training error after a quarter of its epochs" },
        "paper": paper_claim(args.name),
        "variants": rows,
    });
    crate::output::write_atomically(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    let markdown = markdown_table(&results);
    crate::output::write_atomically(&out.join("results.md"), markdown.as_bytes())?;
    let chart = LineChart {
        title: format!("{experiment_name} on {}", dataset.info().name),
        x_label: "epochs".into(),
        y_label: "training error (%)".into(),
        series,
        reference: Some((
            threshold * 100.0,
            format!("threshold {:.1}%", threshold * 100.0),
        )),
    };
    crate::output::save_png(&chart.render(900, 540), &out.join("figure.png"))?;
    print!("{markdown}");
    println!("\n{} (results.json, results.md, figure.png)", out.display());
    Ok(())
}

fn percent(value: &serde_json::Value) -> String {
    match (value["mean"].as_f64(), value["sd"].as_f64()) {
        (Some(m), Some(s)) => format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s),
        _ => "–".into(),
    }
}

fn markdown_table(results: &serde_json::Value) -> String {
    let mut text = format!(
        "### {} ({} seeds, {} epochs each)\n\nThreshold: {:.2}% training error ({}).\n\n\
         | variant | final training error (%) | test error (%) | epochs to threshold | seconds to threshold |\n\
         |---|---|---|---|---|\n",
        results["experiment"].as_str().unwrap_or(""),
        results["seeds"],
        results["epochs"],
        100.0 * results["threshold_train_error"].as_f64().unwrap_or(0.0),
        results["threshold_rule"].as_str().unwrap_or(""),
    );
    let rows = results["variants"].as_array().cloned().unwrap_or_default();
    for row in &rows {
        let reached = row["reached_threshold"].as_u64().unwrap_or(0);
        let runs = row["runs"].as_u64().unwrap_or(0);
        let time = |key: &str, digits: usize| match row[key].as_f64() {
            Some(v) => format!("{v:.digits$}"),
            None => format!("not reached by {} of {runs}", runs - reached),
        };
        text += &format!(
            "| {} | {} | {} | {} | {} |\n",
            row["variant"].as_str().unwrap_or(""),
            percent(&row["final_train_error"]),
            percent(&row["test_error"]),
            time("epochs_to_threshold", 1),
            time("seconds_to_threshold", 0),
        );
    }
    // Whether the first two variants differ by more than their spread.
    if let [a, b, ..] = rows.as_slice() {
        let (am, asd) = (
            a["final_train_error"]["mean"].as_f64().unwrap_or(0.0),
            a["final_train_error"]["sd"].as_f64().unwrap_or(0.0),
        );
        let (bm, bsd) = (
            b["final_train_error"]["mean"].as_f64().unwrap_or(0.0),
            b["final_train_error"]["sd"].as_f64().unwrap_or(0.0),
        );
        let within = (am - bm).abs() <= asd + bsd;
        text += &format!(
            "\nFinal training errors {} the seeds' spread.\n",
            if within {
                "differ by no more than"
            } else {
                "differ by more than"
            }
        );
    }
    text += &format!(
        "\nThe paper: {}.\n",
        results["paper"].as_str().unwrap_or("")
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_experiment_derives_valid_variants_from_the_cifar_preset() {
        let base = NetSpec::preset("cifar").unwrap().with_input(1, 28, 28);
        for experiment in Experiment::value_variants() {
            let variants = variants(*experiment, &base).unwrap();
            assert_eq!(variants.len(), 2);
            for v in &variants {
                alexnet::Plan::new(&v.spec)
                    .unwrap_or_else(|e| panic!("{experiment:?} {}: {e}", v.name));
            }
            // The variants differ in the net, or (precision) in the arithmetic only.
            assert!(
                variants[0].spec != variants[1].spec
                    || variants[0].precision != variants[1].precision,
                "{experiment:?}"
            );
        }
        let tanh = &variants(Experiment::ReluVsTanh, &base).unwrap()[1].spec;
        assert!(!tanh.layers.contains(&LayerSpec::Relu) && tanh.layers.contains(&LayerSpec::Tanh));
    }

    #[test]
    fn threshold_times_come_from_the_first_epoch_at_or_below() {
        let curve = [(1.0, 0.5, 10.0), (2.0, 0.3, 20.0), (3.0, 0.2, 30.0)];
        assert_eq!(time_to(&curve, 0.3), Some((2.0, 20.0)));
        assert_eq!(time_to(&curve, 0.1), None);
    }
}
