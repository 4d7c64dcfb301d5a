//! Running the `alexnet` binary from the integration tests.
#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};

use alexnet::rng::Rng;
use alexnet_data::testing::write_bar_idx;
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

pub fn ok(args: &[&str]) -> String {
    let out = alexnet(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "alexnet {args:?} failed:\n{text}");
    text
}

pub fn fails(args: &[&str]) -> String {
    let out = alexnet(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "alexnet {args:?} should have failed:\n{text}"
    );
    text
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alexnet-workflow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A prepared 10-class dataset of 28x28 grey images: 240 training, 60 test.
pub fn dataset(root: &Path) -> PathBuf {
    let source = root.join("source");
    std::fs::create_dir_all(&source).unwrap();
    let mut rng = Rng::new(3);
    write_bar_idx(&source, "train", 240, &mut rng).unwrap();
    write_bar_idx(&source, "t10k", 60, &mut rng).unwrap();
    let data = root.join("data");
    ok(&[
        "prepare",
        source.to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
    ]);
    data
}

/// Starts a long training run and waits until its log has `lines` lines.
/// A training run too long to finish in a test (100,000 epochs of the generated
/// dataset), logging every step: for runs stopped or killed from outside.
pub const LONG_RUN: &[&str] = &[
    "train",
    "--arch",
    "cifar",
    "--batch",
    "16",
    "--holdout",
    "40",
    "--epochs",
    "100000",
    "--quiet",
    "--log-every",
    "1",
];

pub fn start_training(data: &Path, out: &Path, lines: usize, extra: &[&str]) -> Child {
    let mut args = vec!["--threads", "2"];
    args.extend(LONG_RUN);
    args.extend(extra);
    let child = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(&args)
        .args([
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
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
