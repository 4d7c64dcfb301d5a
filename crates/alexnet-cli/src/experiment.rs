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
use alexnet_data::{Dataset, Part};
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
    #[arg(long, allow_negative_numbers = true)]
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
    #[command(flatten)]
    pub engine: crate::engine::EngineArgs,
}

/// One network of an experiment.
struct Variant {
    name: String,
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

impl Variant {
    /// A variant trained in fp32; `dashed` in the figure.
    fn fp32(name: impl Into<String>, spec: NetSpec, dashed: bool) -> Variant {
        Variant {
            name: name.into(),
            spec,
            dashed,
            precision: Precision::F32,
        }
    }
}

/// The variants of an experiment, the base's own form first.
fn variants(experiment: Experiment, base: &NetSpec) -> Result<Vec<Variant>> {
    let same = |name: &str| Variant::fp32(name, base.clone(), false);
    Ok(match experiment {
        Experiment::ReluVsTanh => {
            require(base, |l| matches!(l, LayerSpec::Relu), "no ReLU to replace")?;
            let tanh = map_layers(base, |l| {
                Some(if *l == LayerSpec::Relu {
                    LayerSpec::Tanh
                } else {
                    l.clone()
                })
            });
            vec![same("relu"), Variant::fp32("tanh", tanh, true)]
        }
        Experiment::Lrn => with_and_without(base, "LRN", |l| matches!(l, LayerSpec::Lrn(_)))?,
        Experiment::OverlappingPool => {
            let overlapping =
                |l: &LayerSpec| matches!(l, LayerSpec::MaxPool(p) if p.size > p.stride);
            require(base, overlapping, "no overlapping max pooling")?;
            let plain = map_layers(base, |l| match l {
                LayerSpec::MaxPool(p) if p.size > p.stride => {
                    Some(LayerSpec::MaxPool(alexnet::spec::PoolSpec {
                        size: p.stride,
                        stride: p.stride,
                    }))
                }
                other => Some(other.clone()),
            });
            vec![
                same("overlapping 3/2"),
                Variant::fp32("plain 2/2", plain, true),
            ]
        }
        Experiment::Dropout => {
            with_and_without(base, "dropout", |l| matches!(l, LayerSpec::Dropout(_)))?
        }
        Experiment::Towers => vec![
            Variant::fp32("two towers", two_towers(base), false),
            Variant::fp32("one tower, half the kernels", one_tower(base), true),
        ],
        Experiment::Precision => vec![
            same("fp32"),
            Variant {
                name: "bf16 products".into(),
                spec: base.clone(),
                dashed: true,
                precision: Precision::Bf16,
            },
        ],
    })
}

/// The base as it is and without its `layer` layers (those `is` picks), named
/// "with `layer`" and "without `layer`"; refused where the base has none.
fn with_and_without(
    base: &NetSpec,
    layer: &str,
    is: impl Fn(&LayerSpec) -> bool,
) -> Result<Vec<Variant>> {
    require(base, &is, &format!("no {layer} layer to remove"))?;
    let without = map_layers(base, |l| (!is(l)).then(|| l.clone()));
    Ok(vec![
        Variant::fp32(format!("with {layer}"), base.clone(), false),
        Variant::fp32(format!("without {layer}"), without, true),
    ])
}

/// Refuses a base description without a layer the experiment changes.
fn require(base: &NetSpec, wanted: impl Fn(&LayerSpec) -> bool, missing: &str) -> Result<()> {
    if !base.layers.iter().any(wanted) {
        bail!("the base description has {missing}");
    }
    Ok(())
}

/// The paper's layout: every convolution after the first and every LRN split in
/// two groups.
fn two_towers(base: &NetSpec) -> NetSpec {
    let mut convolutions = 0;
    map_layers(base, |l| match l {
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
        other => Some(other.clone()),
    })
}

/// The paper's comparison net (Section 3.2): one tower with half the kernels in
/// every convolution but the last, which keeps its count, as do the fully
/// connected layers, so that the two nets have about as many parameters.
fn one_tower(base: &NetSpec) -> NetSpec {
    let last_conv = base
        .layers
        .iter()
        .filter(|l| matches!(l, LayerSpec::Conv(_)))
        .count();
    let mut convolutions = 0;
    map_layers(base, |l| match l {
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
        other => Some(other.clone()),
    })
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
fn step_curve(record: &Record) -> Curve {
    let points = record.steps.iter();
    points
        .map(|l| (l.epochs_done, l.train_error, l.elapsed_s))
        .collect()
}

/// (epoch, training error, elapsed seconds) of each epoch of a run.
fn epoch_curve(record: &Record) -> Curve {
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
    /// Trains every variant with every seed in `out`; runs finished before are
    /// read back, not trained again.
    fn train_all(&self, variants: &[Variant], out: &Path) -> Result<Vec<Vec<Run>>> {
        let mut runs = Vec::new();
        for (index, variant) in variants.iter().enumerate() {
            let spec_path = out.join(format!("variant{index}.toml"));
            crate::output::write_atomically(&spec_path, variant.spec.to_toml().as_bytes())?;
            let mut seeds = Vec::new();
            for seed in 1..=self.args.seeds {
                let dir = out.join(format!("variant{index}-seed{seed}"));
                let record = if dir.join(RECORD).exists() {
                    eprintln!("{} seed {seed}: already done", variant.name);
                    read_record(&dir)?
                } else {
                    let _ = std::fs::remove_dir_all(&dir);
                    eprintln!("{} seed {seed}: training", variant.name);
                    self.train(variant, seed, &dir)?
                };
                seeds.push(Run { dir, record });
            }
            runs.push(seeds);
        }
        Ok(runs)
    }

    /// The top-1 test error of the last weights of the run in `run_dir`.
    fn test_error(
        &self,
        variant: &Variant,
        dataset: &Dataset,
        split: &str,
        run_dir: &Path,
    ) -> Result<f64> {
        let path = run_dir.join("last.safetensors");
        let ckpt = checkpoint::load_weights(&path)?;
        let preprocess = Preprocess::from_checkpoint(&ckpt)?;
        let engine = self.engine.with_precision(variant.precision);
        let mut net = self
            .args
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
            dataset,
            preprocess.mean_for(dataset)?,
            engine.worker_threads(),
            false,
            Part::WHOLE,
        )?;
        Ok(result.top1_error())
    }

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

/// One finished run: where it trained and what it recorded.
struct Run {
    dir: PathBuf,
    record: Record,
}

/// (epochs, training error, seconds) points.
type Curve = Vec<(f64, f64, f64)>;

pub fn run(args: ExperimentArgs, engine: &EngineSettings) -> Result<()> {
    let dataset = Dataset::open(&args.data)
        .with_context(|| format!("opening dataset {}", args.data.display()))?;
    let base = NetSpec::resolve(&args.base)?;
    let variants = variants(args.name, &base)?;
    check_splittable(&args, &variants)?;
    let experiment_name = args
        .name
        .to_possible_value()
        .map_or("experiment".to_string(), |v| v.get_name().to_string());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/experiments").join(&experiment_name));
    std::fs::create_dir_all(&out)?;

    let budget = Budget {
        args: &args,
        engine,
        log_every: log_every(&args, &base, &dataset)?,
    };
    let runs = budget.train_all(&variants, &out)?;
    let threshold = match args.threshold {
        Some(t) => t / 100.0,
        None => default_threshold(&runs[0], args.epochs)?,
    };
    let test_split = dataset
        .split_names()
        .into_iter()
        .find(|s| s == "test" || s == "val");
    let (mut rows, mut series) = (Vec::new(), Vec::new());
    for (index, (variant, seeds)) in variants.iter().zip(&runs).enumerate() {
        let mut test_errors = Vec::new();
        if let Some(split) = &test_split {
            for run in seeds {
                test_errors.push(budget.test_error(variant, &dataset, split, &run.dir)?);
            }
        }
        rows.push(variant_row(variant, seeds, threshold, &test_errors));
        series.extend(seeds.iter().enumerate().map(|(seed, run)| {
            Series {
                label: format!("{} (seed {})", variant.name, seed + 1),
                points: epoch_curve(&run.record)
                    .iter()
                    .map(|(e, err, _)| (*e, err * 100.0))
                    .collect(),
                dashed: variant.dashed,
                colour: index,
            }
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
    let title = format!("{experiment_name} on {}", dataset.info().name);
    write_results(&out, &results, title, series, threshold)
}

/// Under `--parallel towers`, refuses a variant that cannot be split before any
/// other trains for hours.
fn check_splittable(args: &ExperimentArgs, variants: &[Variant]) -> Result<()> {
    if args.placement.parallel.is_some() {
        for variant in variants {
            TowerLayout::new(&variant.spec, args.placement.devices.len()).map_err(|e| {
                anyhow::anyhow!("--parallel towers: the variant '{}': {e}", variant.name)
            })?;
        }
    }
    Ok(())
}

/// Step lines every 100 steps (the train default), or four per epoch on small
/// sets, so that the time to a threshold is resolved within an epoch.
fn log_every(args: &ExperimentArgs, base: &NetSpec, dataset: &Dataset) -> Result<u64> {
    let batch = args.batch.unwrap_or(base.recipe.batch).max(1);
    let train_images = dataset.split("train")?.len().saturating_sub(args.holdout);
    Ok((train_images / batch / 4).clamp(1, 100) as u64)
}

/// The default threshold rule: the first variant's mean training error (over its
/// seeds' step lines) once a quarter of the epochs are done.
fn default_threshold(first: &[Run], epochs: usize) -> Result<f64> {
    let quarter = epochs as f64 / 4.0;
    let at_quarter: Vec<f64> = first
        .iter()
        .filter_map(|run| {
            let curve = step_curve(&run.record);
            curve.iter().find(|(e, _, _)| *e >= quarter).map(|p| p.1)
        })
        .collect();
    if at_quarter.is_empty() {
        bail!(
            "the runs logged no step reaching a quarter of their epochs; the threshold rule needs one"
        );
    }
    Ok(mean_and_spread(&at_quarter).0)
}

/// A variant's line of the results: final training and test error, and the
/// epochs and seconds its seeds took to reach the threshold.
fn variant_row(
    variant: &Variant,
    seeds: &[Run],
    threshold: f64,
    test_errors: &[f64],
) -> serde_json::Value {
    let train_errors: Vec<f64> = seeds
        .iter()
        .filter_map(|run| epoch_curve(&run.record).last().map(|p| p.1))
        .collect();
    let reached: Vec<(f64, f64)> = seeds
        .iter()
        .filter_map(|run| time_to(&step_curve(&run.record), threshold))
        .collect();
    let epochs_to: Vec<f64> = reached.iter().map(|r| r.0).collect();
    let seconds_to: Vec<f64> = reached.iter().map(|r| r.1).collect();
    let (train_mean, train_sd) = mean_and_spread(&train_errors);
    let (test_mean, test_sd) = mean_and_spread(test_errors);
    let all_reached = reached.len() == seeds.len();
    json!({
        "variant": variant.name,
        "runs": seeds.len(),
        "final_train_error": {"mean": train_mean, "sd": train_sd},
        "test_error": if test_errors.is_empty() { json!(null) } else { json!({"mean": test_mean, "sd": test_sd}) },
        "reached_threshold": epochs_to.len(),
        "epochs_to_threshold": if all_reached { json!(mean_and_spread(&epochs_to).0) } else { json!(null) },
        "epochs_to_threshold_per_seed": epochs_to,
        "seconds_to_threshold": if all_reached { json!(mean_and_spread(&seconds_to).0) } else { json!(null) },
    })
}

/// Writes results.json, results.md and figure.png into `out`, and prints the table.
fn write_results(
    out: &Path,
    results: &serde_json::Value,
    title: String,
    series: Vec<Series>,
    threshold: f64,
) -> Result<()> {
    crate::output::write_atomically(
        &out.join("results.json"),
        serde_json::to_string_pretty(results)?.as_bytes(),
    )?;
    let markdown = markdown_table(results);
    crate::output::write_atomically(&out.join("results.md"), markdown.as_bytes())?;
    let chart = LineChart {
        title,
        x_label: "epochs".into(),
        y_label: "training error (%)".into(),
        series,
        markers: Vec::new(),
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
