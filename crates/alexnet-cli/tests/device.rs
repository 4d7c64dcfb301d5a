//! `--device` and `--precision` on the command line. A binary built without the
//! `cuda` feature refuses `--device cuda:N` on every command that computes, naming
//! the flag, before it reads any file; `--precision tf32` is refused on the CPU
//! with the values it does take there; a malformed device is a usage error. (The
//! workflow tests run `--device cpu`.)

mod common;

use common::fails;

/// Commands that compute, with arguments naming files that do not exist: a
/// refusal of the device must come before any of them is opened.
const COMMANDS: [&[&str]; 6] = [
    &["train", "--data", "no-such-dataset"],
    &[
        "eval",
        "--checkpoint",
        "no-such.safetensors",
        "--data",
        "no-such-dataset",
    ],
    &[
        "classify",
        "--checkpoint",
        "no-such.safetensors",
        "no-such.png",
    ],
    &[
        "features",
        "--checkpoint",
        "no-such.safetensors",
        "no-such.png",
    ],
    &["bench", "--arch", "cifar", "--seconds", "0.01"],
    &["experiment", "lrn", "--data", "no-such-dataset"],
];

/// Runs every command of COMMANDS between the flags `before` and `after`: each
/// must fail saying all of `said`, before it opens any of its files.
fn refused_by_every_command(before: &[&str], after: &[&str], said: &[&str]) {
    for command in COMMANDS {
        let args = [before, command, after].concat();
        let text = fails(&args);
        assert!(
            said.iter().all(|s| text.contains(s)),
            "alexnet {args:?}: {text}"
        );
        assert!(
            !text.contains("no-such"),
            "alexnet {args:?} looked at its files first: {text}"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_devices_are_refused_by_a_binary_built_without_cuda() {
    for precision in ["fp32", "tf32", "bf16"] {
        refused_by_every_command(
            &["--precision", precision],
            &["--device", "cuda:0"],
            &[
                "--device cuda:0",
                "built without CUDA support",
                "--features cuda",
            ],
        );
    }
}

#[test]
fn tf32_is_refused_on_the_cpu() {
    for device in [&[][..], &["--device", "cpu"]] {
        refused_by_every_command(
            &["--precision", "tf32"],
            device,
            &["--precision tf32", "--device cuda:N", "fp32 or bf16"],
        );
    }
}

#[test]
fn a_malformed_device_is_a_usage_error() {
    for device in ["gpu", "cuda:x", "cuda:-1", ""] {
        let text = fails(&["bench", "--arch", "cifar", "--device", device]);
        assert!(
            text.contains("--device") && text.contains("expected cpu, cuda:N"),
            "--device {device:?}: {text}"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn towers_on_gpus_are_refused_by_a_binary_built_without_cuda() {
    refused_by_every_command(
        &[],
        &["--devices", "cuda:0,cuda:1", "--parallel", "towers"],
        &["--devices cuda:0", "built without CUDA support"],
    );
}

#[test]
fn towers_take_two_devices_of_one_kind() {
    refused_by_every_command(
        &[],
        &["--devices", "cpu", "--parallel", "towers"],
        &["--devices", "two devices", "found 1"],
    );
    // Each of --devices and --parallel needs the other; --device excludes --devices.
    for flags in [
        &["--devices", "cpu,cpu"][..],
        &["--parallel", "towers"],
        &[
            "--device",
            "cpu",
            "--devices",
            "cpu,cpu",
            "--parallel",
            "towers",
        ],
    ] {
        let mut args = vec!["bench", "--arch", "cifar"];
        args.extend(flags);
        let text = fails(&args);
        assert!(text.contains("Usage"), "alexnet {args:?}: {text}");
    }
}
