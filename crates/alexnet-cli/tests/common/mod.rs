//! Running the `alexnet` binary from the integration tests.
#![allow(dead_code)]

pub mod http;
pub mod served;

use std::path::{Path, PathBuf};

use alexnet_data::testing::write_bar_source;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary on two threads and returns what it did.
pub fn alexnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["--threads", "2"])
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the alexnet binary runs")
}

/// Runs the binary; returns whether it succeeded and what it printed (stdout,
/// then stderr).
fn run_text(args: &[&str]) -> (bool, String) {
    let out = alexnet(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What the binary printed; panics unless it succeeded.
pub fn ok(args: &[&str]) -> String {
    let (success, text) = run_text(args);
    assert!(success, "alexnet {args:?} failed:\n{text}");
    text
}

/// What the binary printed; panics unless it failed.
pub fn fails(args: &[&str]) -> String {
    let (success, text) = run_text(args);
    assert!(!success, "alexnet {args:?} should have failed:\n{text}");
    text
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alexnet-workflow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh temporary folder (see [`temp_dir`]) with the generated dataset
/// prepared in it (see [`dataset`]): the folder and the dataset.
pub fn temp_dataset(name: &str) -> (PathBuf, PathBuf) {
    let root = temp_dir(name);
    let data = dataset(&root);
    (root, data)
}

/// A prepared 10-class dataset of 28x28 grey images: 240 training, 60 test.
pub fn dataset(root: &Path) -> PathBuf {
    let source = write_bar_source(root).unwrap();
    let data = root.join("data");
    ok(&[
        "prepare",
        source.to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
    ]);
    data
}

/// The start of every small training run of these tests: the CIFAR-sized net
/// in batches of 16, with 40 of the generated dataset's images held out.
pub const SMALL_TRAIN: &[&str] = &[
    "train",
    "--arch",
    "cifar",
    "--batch",
    "16",
    "--holdout",
    "40",
];

/// Flags that make a small run too long to finish in a test (100,000 epochs of
/// the generated dataset), logging every step: for runs stopped or killed from
/// outside.
pub const LONG_RUN: &[&str] = &["--epochs", "100000", "--quiet", "--log-every", "1"];

/// A run of one epoch in batches of 2 with 2 images held out, quietly: enough
/// for the few images of a folder of photos.
pub const TINY_RUN: &[&str] = &["--epochs", "1", "--batch", "2", "--holdout", "2", "--quiet"];

/// The arguments of a small training run with the flags `extra`, on `data`
/// into `out`.
pub fn small_train<'a>(extra: &[&'a str], data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let mut args = SMALL_TRAIN.to_vec();
    args.extend(extra);
    args.extend([
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    args
}

/// The tensors of a safetensors file, sorted by name, each read by `values`
/// (given its name and view).
pub fn tensors_by_name<T>(
    path: &Path,
    values: impl Fn(&str, &safetensors::tensor::TensorView) -> T,
) -> Vec<(String, T)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, T)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let read = values(&name, &view);
            (name, read)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The values of `field` on the step lines of a run's log, in order.
pub fn step_values(run: &Path, field: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v[field].clone())
        .collect()
}

/// Losses of the logged steps of a run.
pub fn step_losses(run: &Path) -> Vec<f64> {
    step_values(run, "loss")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Starts a long training run with the flags `extra` and waits until its log
/// has `lines` lines.
pub fn start_training(data: &Path, out: &Path, lines: usize, extra: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["--threads", "2"])
        .args(small_train(&[LONG_RUN, extra].concat(), data, out))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = out.join("metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |t| t.lines().count() < lines) {
        assert!(started.elapsed().as_secs() < 60, "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

pub fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
