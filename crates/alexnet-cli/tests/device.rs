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

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_devices_are_refused_by_a_binary_built_without_cuda() {
    for command in COMMANDS {
        for precision in ["fp32", "tf32", "bf16"] {
            let mut args = vec!["--precision", precision];
            args.extend(command);
            args.extend(["--device", "cuda:0"]);
            let text = fails(&args);
            assert!(
                text.contains("--device cuda:0")
                    && text.contains("built without CUDA support")
                    && text.contains("--features cuda"),
                "alexnet {args:?}: {text}"
            );
            assert!(
                !text.contains("no-such"),
                "alexnet {args:?} looked at its files first: {text}"
            );
        }
    }
}

#[test]
fn tf32_is_refused_on_the_cpu() {
    for command in COMMANDS {
        for device in [None, Some("cpu")] {
            let mut args = vec!["--precision", "tf32"];
            args.extend(command);
            if let Some(device) = device {
                args.extend(["--device", device]);
            }
            let text = fails(&args);
            assert!(
                text.contains("--precision tf32")
                    && text.contains("--device cuda:N")
                    && text.contains("fp32 or bf16"),
                "alexnet {args:?}: {text}"
            );
        }
    }
}

#[test]
fn a_malformed_device_is_a_usage_error() {
    for device in ["gpu", "cuda:x", "cuda:-1", ""] {
        let text = fails(&["bench", "--arch", "cifar", "--device", device]);
        assert!(
            text.contains("--device") && text.contains("expected cpu or cuda:N"),
            "--device {device:?}: {text}"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn towers_on_gpus_are_refused_by_a_binary_built_without_cuda() {
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.extend(["--devices", "cuda:0,cuda:1", "--parallel", "towers"]);
        let text = fails(&args);
        assert!(
            text.contains("--devices cuda:0") && text.contains("built without CUDA support"),
            "alexnet {args:?}: {text}"
        );
        assert!(!text.contains("no-such"), "alexnet {args:?}: {text}");
    }
}

#[test]
fn towers_take_two_devices_of_one_kind() {
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.extend(["--devices", "cpu", "--parallel", "towers"]);
        let text = fails(&args);
        assert!(
            text.contains("--devices") && text.contains("two devices") && text.contains("found 1"),
            "alexnet {args:?}: {text}"
        );
        assert!(!text.contains("no-such"), "alexnet {args:?}: {text}");
    }
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
