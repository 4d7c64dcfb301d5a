//! Data-parallel training under `mpirun` (the `mpi` feature) against one
//! process training the whole batch: the same step, to fp32 rounding, and the
//! same losses over several steps; one process logs and writes checkpoints.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::Command;

use common::{dataset, temp_dir};

/// `mpirun`, or `None` (with a message) where it is not installed; with
/// `ALEXNET_REQUIRE_MPI=1` a missing one fails the test.
fn mpirun() -> Option<Command> {
    let found = Command::new("mpirun").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("ALEXNET_REQUIRE_MPI").as_deref() != Ok("1"),
            "mpirun is missing and ALEXNET_REQUIRE_MPI=1"
        );
        eprintln!("SKIPPED: no mpirun (apt-get install openmpi-bin)");
        return None;
    }
    let mut command = Command::new("mpirun");
    // CI runs as root; two processes may share fewer cores.
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_alexnet")]);
    Some(command)
}

fn train_args<'a>(data: &'a Path, out: &'a Path, steps: &'a str) -> Vec<&'a str> {
    vec![
        "--threads",
        "1",
        "train",
        "--arch",
        "cifar",
        "--batch",
        "16",
        "--holdout",
        "40",
        "--max-steps",
        steps,
        "--log-every",
        "1",
        "--quiet",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view.data().chunks_exact(4);
            (
                name,
                values
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn two_processes_train_as_one_process_does() {
    let Some(mut launch) = mpirun() else { return };
    let root = temp_dir("distributed");
    let data = dataset(&root);
    for steps in ["1", "6"] {
        let (single, shared) = (
            root.join(format!("one-{steps}")),
            root.join(format!("two-{steps}")),
        );
        let args = train_args(&data, &single, steps);
        Command::new(env!("CARGO_BIN_EXE_alexnet"))
            .args(&args)
            .status()
            .unwrap();
        let args = train_args(&data, &shared, steps);
        let output = launch.args(&args).output().unwrap();
        launch = mpirun().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "mpirun: {stderr}");
        // One summary and one report: rank 0 speaks, the other trains silently.
        assert_eq!(stderr.matches("stopped after").count(), 1, "{stderr}");
        let (a, b) = (losses(&single), losses(&shared));
        assert_eq!(a.len(), b.len(), "every step logged once");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "losses {a:?} against {b:?}");
        }
        if steps == "1" {
            // After one step, the velocities (the step's update) agree to fp32
            // rounding: the gradients of two halves, averaged, are the batch's.
            let (a, b) = (
                tensors(&single.join("last.safetensors")),
                tensors(&shared.join("last.safetensors")),
            );
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                let off: f64 = x.iter().zip(y).map(|(p, q)| f64::from(p - q).powi(2)).sum();
                let size: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum();
                let relative = (off / size.max(1e-30)).sqrt();
                assert!(relative < 1e-5, "{name}: {relative:e}");
            }
        }
    }
    // A batch that does not divide among the processes is refused.
    let odd = root.join("odd");
    let args = [
        "--threads",
        "1",
        "train",
        "--arch",
        "cifar",
        "--batch",
        "15",
        "--holdout",
        "40",
        "--data",
        data.to_str().unwrap(),
        "--out",
        odd.to_str().unwrap(),
    ];
    let output = launch.args(args).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not divide among 2"));
    std::fs::remove_dir_all(&root).unwrap();
}
