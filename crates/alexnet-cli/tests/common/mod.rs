//! Running the `alexnet` binary from the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

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
