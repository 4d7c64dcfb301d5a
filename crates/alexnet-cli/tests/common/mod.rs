//! Running the `alexnet` binary from the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use alexnet::rng::Rng;
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

/// Writes MNIST-style IDX files: each class is a bright bar at its own height plus noise.
pub fn write_idx(dir: &Path, prefix: &str, count: usize, rng: &mut Rng) {
    let mut images = vec![0, 0, 8, 3];
    for v in [count as u32, 28, 28] {
        images.extend(v.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((count as u32).to_be_bytes());
    for _ in 0..count {
        let class = rng.below(10);
        labels.push(class as u8);
        for y in 0..28 {
            for _x in 0..28 {
                let bar = if y / 3 == class { 200.0 } else { 20.0 };
                images.push((bar + rng.uniform() * 50.0) as u8);
            }
        }
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// A prepared 10-class dataset of 28x28 grey images: 240 training, 60 test.
pub fn dataset(root: &Path) -> PathBuf {
    let source = root.join("source");
    std::fs::create_dir_all(&source).unwrap();
    let mut rng = Rng::new(3);
    write_idx(&source, "train", 240, &mut rng);
    write_idx(&source, "t10k", 60, &mut rng);
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
pub fn start_training(data: &Path, out: &Path, lines: usize, extra: &[&str]) -> Child {
    let mut args = vec![
        "--threads",
        "2",
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
