//! Hostile checkpoints and careless flags, signals and pipes: each gets an error
//! that says what is wrong (or an orderly stop), never a panic, an abort or a
//! result computed from nonsense.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{LONG_RUN, fails, kill, ok, small_train, start_training, step_values, temp_dataset};

/// A short run's checkpoint on the generated dataset.
fn trained(root: &Path, data: &Path) -> PathBuf {
    let out = root.join("run");
    ok(&small_train(&["--max-steps", "2", "--quiet"], data, &out));
    out.join("last.safetensors")
}

/// A 28x28 image of one grey `level` in `root`, the generated dataset's size.
fn grey_image(root: &Path, level: u8) -> PathBuf {
    let image = root.join("image.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([level]))
        .save(&image)
        .unwrap();
    image
}

/// A checkpoint's metadata and tensors (name -> shape, f32 values).
struct Contents {
    metadata: HashMap<String, String>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

fn read(path: &Path) -> Contents {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    Contents { metadata, tensors }
}

fn write(contents: &Contents, path: &Path) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = contents
        .tensors
        .iter()
        .map(|(name, shape, values)| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), shape.clone(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, &Some(contents.metadata.clone()), path).unwrap();
}

/// Runs `alexnet` and checks that it failed with a message containing every one
/// of `expected`, and did not panic.
fn refused(args: &[&str], expected: &[&str]) {
    let text = fails(args);
    assert!(
        !text.contains("panicked"),
        "alexnet {args:?} panicked:\n{text}"
    );
    for part in expected {
        assert!(
            text.contains(part),
            "alexnet {args:?}: expected the message to say '{part}':\n{text}"
        );
    }
}

/// [`refused`] for owned arguments.
fn refused_owned(args: &[String], expected: &[&str]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, expected);
}

/// `contents` with `value` at index 3 of `tensor`.
fn with_value(mut contents: Contents, tensor: &str, value: f32) -> Contents {
    let entry = contents.tensors.iter_mut().find(|t| t.0 == tensor).unwrap();
    entry.2[3] = value;
    contents
}

/// `contents` with the preprocessing metadata changed by `change`.
fn with_preprocess(
    mut contents: Contents,
    change: impl FnOnce(&mut serde_json::Value),
) -> Contents {
    let mut preprocess: serde_json::Value =
        serde_json::from_str(&contents.metadata["preprocess"]).unwrap();
    change(&mut preprocess);
    contents
        .metadata
        .insert("preprocess".into(), preprocess.to_string());
    contents
}

/// `contents` with `from` replaced by `to` in its network description.
fn with_spec(mut contents: Contents, from: &str, to: &str) -> Contents {
    let spec = contents.metadata["spec"].replace(from, to);
    assert_ne!(
        spec, contents.metadata["spec"],
        "the description has '{from}'"
    );
    contents.metadata.insert("spec".into(), spec);
    contents
}

#[test]
fn hostile_checkpoints_are_refused_naming_what_is_wrong() {
    let (root, data) = temp_dataset("hostile");
    let good = trained(&root, &data);
    let image = grey_image(&root, 128);
    let classify = |ckpt: &Path| -> Vec<String> {
        let mut args: Vec<String> = vec!["classify".into(), "--checkpoint".into()];
        args.extend([ckpt.display().to_string(), image.display().to_string()]);
        args
    };
    let eval = |ckpt: &Path| -> Vec<String> {
        let mut args: Vec<String> = vec!["eval".into(), "--checkpoint".into()];
        args.extend([ckpt.display().to_string(), "--data".into()]);
        args.push(data.display().to_string());
        args
    };
    let save = |contents: Contents, name: &str| -> PathBuf {
        let path = root.join(name);
        write(&contents, &path);
        path
    };
    let classified = classify(&good);
    ok(&classified.iter().map(String::as_str).collect::<Vec<_>>());

    // Non-finite weights and means, for inference and as a start for training.
    let nan = save(
        with_value(read(&good), "conv1.weight", f32::NAN),
        "nan.safetensors",
    );
    refused_owned(&eval(&nan), &["conv1.weight", "NaN", "finite"]);
    refused_owned(&classify(&nan), &["conv1.weight", "NaN", "finite"]);
    let mut init = vec!["train".to_string(), "--arch".into(), "cifar".into()];
    init.extend(
        [
            "--max-steps",
            "1",
            "--holdout",
            "40",
            "--quiet",
            "--init-from",
        ]
        .map(String::from),
    );
    init.push(nan.display().to_string());
    init.extend(["--data".into(), data.display().to_string(), "--out".into()]);
    init.push(root.join("from-nan").display().to_string());
    refused_owned(&init, &["conv1.weight", "finite"]);
    let mean = with_value(read(&good), "preprocess.mean", f32::NEG_INFINITY);
    refused_owned(
        &eval(&save(mean, "mean.safetensors")),
        &["preprocess.mean", "-inf", "finite"],
    );
    // An infinite velocity stops a resume.
    let run = good.parent().unwrap();
    write(
        &with_value(read(&good), "velocity.fc3.bias", f32::INFINITY),
        &run.join("last.safetensors"),
    );
    let mut resume = vec!["train".to_string(), "--arch".into(), "cifar".into()];
    resume.extend(
        [
            "--batch",
            "16",
            "--holdout",
            "40",
            "--max-steps",
            "4",
            "--quiet",
            "--resume",
        ]
        .map(String::from),
    );
    resume.extend(["--data".into(), data.display().to_string(), "--out".into()]);
    resume.push(run.display().to_string());
    refused_owned(&resume, &["velocity.fc3.bias", "inf", "finite"]);

    // Preprocessing that does not fit the net: images stored smaller than the
    // net's input crop (with a mean image of that size), and class names for
    // another number of classes.
    let mut small = with_preprocess(read(&good), |p| p["stored"] = serde_json::json!([1, 4, 4]));
    let mean = small
        .tensors
        .iter_mut()
        .find(|t| t.0 == "preprocess.mean")
        .unwrap();
    (mean.1, mean.2) = (vec![1, 4, 4], vec![0.0; 16]);
    let small = save(small, "small.safetensors");
    refused_owned(&classify(&small), &["1x4x4", "at least 28x28"]);
    let names = with_preprocess(read(&good), |p| {
        p["class_names"] = serde_json::json!(["a", "b"])
    });
    let names = save(names, "names.safetensors");
    refused_owned(&classify(&names), &["2 class names", "10 classes"]);

    // A description that does not match the tensors, and one too large to build.
    let shapes = save(
        with_spec(read(&good), "out = 64", "out = 65"),
        "shapes.safetensors",
    );
    refused_owned(
        &classify(&shapes),
        &["conv2.weight", "its network description says shape"],
    );
    let huge = with_spec(read(&good), "out = 64", "out = 64000000000");
    let huge = save(huge, "huge.safetensors");
    refused_owned(
        &classify(&huge),
        &["network description is invalid", "at most"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn careless_flags_are_refused_before_any_work() {
    let (root, data) = temp_dataset("careless");
    let data = data.to_str().unwrap();
    let out = root.join("run");
    let out = out.to_str().unwrap();
    let train = |extra: &[&str], expected: &[&str]| {
        let mut args = vec![
            "train",
            "--arch",
            "cifar",
            "--quiet",
            "--holdout",
            "40",
            "--data",
            data,
            "--out",
            out,
        ];
        args.extend(extra);
        refused(&args, expected);
        assert!(
            !Path::new(out).join("last.safetensors").exists(),
            "a refused run writes no checkpoint"
        );
    };
    // 240 training images, 40 of them held out.
    train(&["--batch", "201"], &["--batch 201", "200 training images"]);
    train(&["--batch", "100000000"], &["--batch 100000000"]);
    train(&["--max-steps", "0"], &["--max-steps 0"]);
    train(&["--lr", "-0.01"], &["--lr -0.01"]);
    train(&["--lr", "NaN"], &["--lr NaN"]);
    train(&["--momentum", "-0.5"], &["--momentum -0.5"]);
    train(&["--momentum", "1.5"], &["--momentum 1.5"]);
    train(&["--weight-decay", "-1"], &["--weight-decay -1"]);
    for threads in ["0", "100000"] {
        // Without the helper's own --threads.
        let output = Command::new(env!("CARGO_BIN_EXE_alexnet"))
            .args(["--threads", threads, "info"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--threads {threads} accepted");
        assert!(text.contains(&format!("--threads {threads}")), "{text}");
    }
    // A batch whose buffers cannot fit in memory says how much it would need.
    let ckpt = trained(&root, Path::new(data));
    refused(
        &[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data,
            "--batch",
            "4000000000000",
        ],
        &["would need", "memory"],
    );
    // A batch that fits the planner's count but not this machine: the same.
    refused(
        &[
            "bench",
            "--arch",
            "alexnet",
            "--train-batch",
            "100000",
            "--seconds",
            "1",
        ],
        &["100000 images", "would need", "of memory here"],
    );
    // A description with a layer too large to allocate, from a TOML file.
    let toml = root.join("huge.toml");
    let cifar = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../alexnet/presets/cifar.toml"),
    )
    .unwrap();
    std::fs::write(&toml, cifar.replace("out = 256", "out = 4000000000")).unwrap();
    refused(
        &["info", "--arch", toml.to_str().unwrap()],
        &["fc3", "at most"],
    );
    // A stored side far beyond the paper's 256.
    refused(
        &[
            "prepare", data, "--format", "folder", "--size", "100000", "--out", out,
        ],
        &["size", "4096"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn classify_into_a_closed_pipe_ends_quietly() {
    let (root, data) = temp_dataset("pipe");
    let ckpt = trained(&root, &data);
    let image = grey_image(&root, 90);
    let image = image.to_str().unwrap();
    let mut args = vec![
        "--threads",
        "2",
        "classify",
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ];
    args.extend([image; 50]);
    // As `alexnet classify ... | head -0`: the reader is gone before anything is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        output.status.signal(),
        Some(libc_sigpipe()),
        "ends by the pipe's signal, as other tools do: {:?} {stderr}",
        output.status
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn a_batch_schedulers_signals_stop_training_with_a_checkpoint() {
    let (root, data) = temp_dataset("signals");
    for signal in ["TERM", "HUP"] {
        let out = root.join(format!("run-{signal}"));
        let child = start_training(&data, &out, 3, &[]);
        kill(&child, signal);
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "SIG{signal}: {text}");
        assert!(
            text.contains("interrupted: checkpoint written"),
            "SIG{signal}: {text}"
        );
        assert!(out.join("last.safetensors").exists(), "SIG{signal}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// The `step` of every step line of a run's log.
fn logged_steps(out: &Path) -> Vec<u64> {
    step_values(out, "step")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn a_killed_run_resumes_with_each_step_logged_once_and_no_stale_files() {
    let (root, data) = temp_dataset("killed");
    let out = root.join("run");
    // Checkpoints every 4 steps; killed after at least 7 logged steps, so some
    // logged steps come after the last checkpoint.
    let mut child = start_training(&data, &out, 7, &["--checkpoint-every", "4"]);
    kill(&child, "KILL");
    child.wait().unwrap();
    let before = logged_steps(&out);
    assert!(before.len() >= 7);
    // What a write killed before its rename leaves behind.
    let stale = out.join(".last.safetensors.tmp");
    std::fs::write(&stale, b"half a checkpoint").unwrap();

    let until = (before.len() + 6).to_string();
    let resumed = [
        LONG_RUN,
        &["--checkpoint-every", "4", "--resume", "--max-steps", &until],
    ]
    .concat();
    ok(&small_train(&resumed, &data, &out));
    let after = logged_steps(&out);
    let expected: Vec<u64> = (1..=after.len() as u64).collect();
    assert_eq!(after, expected, "every step logged once, in order");
    assert_eq!(*after.last().unwrap(), before.len() as u64 + 6);
    assert!(!stale.exists(), "the stale temporary checkpoint is removed");
    std::fs::remove_dir_all(&root).unwrap();
}
