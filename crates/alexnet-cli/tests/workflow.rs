//! The command-line workflow end to end on a small generated dataset: prepare,
//! train, resume (bit for bit), evaluate, classify, features, similar images,
//! figures, and the refusals that protect a run.

mod common;

use std::path::Path;
use std::process::Command;

use alexnet::rng::Rng;
use common::{
    LONG_RUN, TINY_RUN, fails, kill, ok, small_train, start_training, step_losses, temp_dataset,
    temp_dir, tensors_by_name,
};

/// The tensors of a checkpoint, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    tensors_by_name(path, |_, view| view.data().to_vec())
}

/// The short runs of these tests: three epochs, quietly.
const SHORT: &[&str] = &["--epochs", "3", "--quiet"];

/// The arguments of a short run with the flags `extra`, on `data` into `out`.
fn train_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    small_train(&[SHORT, extra].concat(), data, out)
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> String {
    ok(&train_args(data, out, extra))
}

#[test]
fn resuming_gives_the_same_weights_bit_for_bit() {
    let (root, data) = temp_dataset("resume");
    // 200 training images in batches of 16: 12 steps per epoch, so 14 steps cross
    // an epoch end (validation, schedule, best checkpoint) and stop mid-epoch.
    let straight = root.join("straight");
    train(&data, &straight, &["--max-steps", "14"]);
    let resumed = root.join("resumed");
    train(&data, &resumed, &["--max-steps", "5"]);
    train(&data, &resumed, &["--max-steps", "14", "--resume"]);

    let (a, b) = (
        tensors(&straight.join("last.safetensors")),
        tensors(&resumed.join("last.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().any(|(name, _)| name.starts_with("velocity.")),
        "velocities are stored"
    );
    for ((name_a, data_a), (name_b, data_b)) in a.iter().zip(&b) {
        assert_eq!(name_a, name_b);
        assert!(
            data_a == data_b,
            "{name_a} differs between the straight and the resumed run"
        );
    }
    // The epoch line was written once in each run.
    let log = std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"kind\":\"epoch\""))
            .count(),
        1,
        "{log}"
    );

    // A resume with other settings is refused and says why.
    let text = fails(&train_args(&data, &resumed, &["--resume", "--seed", "9"]));
    assert!(
        text.contains("other settings") && text.contains("seed"),
        "{text}"
    );
    // So is a resume with another network.
    let text = fails(&train_args(
        &data,
        &resumed,
        &["--resume", "--dropout", "0.3"],
    ));
    assert!(text.contains("differs from --arch"), "{text}");
    // Starting a new run over an existing one is refused.
    let text = fails(&train_args(&data, &resumed, &[]));
    assert!(text.contains("--resume"), "{text}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly() {
    let (root, data) = temp_dataset("interrupt");
    let out = root.join("run");
    // Many epochs, so the run is still going when the interrupt comes; it is
    // interrupted once training is under way, as Ctrl-C would.
    let child = start_training(&data, &out, 3, &[]);
    kill(&child, "INT");
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "an interrupted run exits cleanly: {text}"
    );
    assert!(text.contains("interrupted: checkpoint written"), "{text}");
    // The checkpoint is whole and the run resumes from it.
    let steps = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    let until = (steps + 5).to_string();
    let resumed = [LONG_RUN, &["--resume", "--max-steps", &until]].concat();
    ok(&small_train(&resumed, &data, &out));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_diverging_run_stops_with_a_clear_message() {
    let (root, data) = temp_dataset("diverge");
    let out = root.join("run");
    let text = fails(&train_args(&data, &out, &["--lr", "1e30"]));
    assert!(text.contains("the loss became"), "{text}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
#[allow(clippy::too_many_lines)] // one trained run through every command in turn: one story
fn trained_checkpoints_serve_every_command() {
    let (root, data) = temp_dataset("commands");
    let run = root.join("run");
    train(&data, &run, &["--lr", "0.002", "--device", "cpu"]);
    let best = run.join("best.safetensors");
    let best = best.to_str().unwrap();
    let d = data.to_str().unwrap();

    let text = ok(&["eval", "--checkpoint", best, "--data", d, "--device", "cpu"]);
    assert!(
        text.contains("60 images of 'test'") && text.contains("top-1 error"),
        "{text}"
    );
    let json = ok(&[
        "eval",
        "--checkpoint",
        best,
        "--data",
        d,
        "--ten-crop",
        "--json",
    ]);
    let value: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(value["views"], 10);
    assert_eq!(value["confusion"].as_array().unwrap().len(), 10);

    // One good image and one broken one: the good one is classified, the exit status fails.
    let good = root.join("bar.png");
    image::GrayImage::from_fn(40, 40, |_, y| {
        image::Luma([if y / 4 == 2 { 220 } else { 30 }])
    })
    .save(&good)
    .unwrap();
    let broken = root.join("broken.jpg");
    std::fs::write(&broken, b"not a picture").unwrap();
    let text = fails(&[
        "classify",
        "--device",
        "cpu",
        "--checkpoint",
        best,
        good.to_str().unwrap(),
        broken.to_str().unwrap(),
    ]);
    assert!(text.contains("bar.png") && text.contains('%'), "{text}");
    assert!(
        text.contains("broken.jpg") && text.contains("1 of 2 images"),
        "{text}"
    );

    let features = root.join("features.safetensors");
    let text = ok(&[
        "features",
        "--device",
        "cpu",
        "--checkpoint",
        best,
        "--data",
        d,
        "--out",
        features.to_str().unwrap(),
    ]);
    assert!(text.contains("60 vectors"), "{text}");
    let grid = root.join("similar.png");
    ok(&[
        "similar",
        "--features",
        features.to_str().unwrap(),
        "--queries",
        "0,1",
        "--k",
        "3",
        "--out",
        grid.to_str().unwrap(),
    ]);
    let image = image::open(&grid).unwrap();
    assert_eq!(image.height(), 2 * (96 + 4));

    // Features of image files, and their neighbours drawn from the files.
    let file_features = root.join("file-features.safetensors");
    let text = ok(&[
        "features",
        "--checkpoint",
        best,
        good.to_str().unwrap(),
        good.to_str().unwrap(),
        "--out",
        file_features.to_str().unwrap(),
    ]);
    assert!(text.contains("2 vectors"), "{text}");
    let text = ok(&[
        "similar",
        "--features",
        file_features.to_str().unwrap(),
        "--queries",
        "0",
        "--k",
        "1",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(
        text.contains("query 0: 1 (0.0)"),
        "identical images are at distance 0: {text}"
    );

    let curves = root.join("curves.png");
    ok(&[
        "plot",
        run.to_str().unwrap(),
        "--threshold",
        "25",
        "--out",
        curves.to_str().unwrap(),
    ]);
    assert!(image::open(&curves).is_ok());
    let kernels = root.join("kernels.png");
    ok(&[
        "kernels",
        "--checkpoint",
        best,
        "--out",
        kernels.to_str().unwrap(),
    ]);
    assert!(image::open(&kernels).is_ok());
    let text = ok(&["info", "--checkpoint", best]);
    assert!(
        text.contains("fc4") && text.contains("training state"),
        "{text}"
    );
    let text = ok(&["info", "--data", d]);
    assert!(text.contains("split train: 240 images"), "{text}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Two classes of generated photos (300x260 PNGs, reddish and bluish with
/// texture), `per_class` each, drawn from `seed`, as an ImageNet-style folder.
fn write_photo_folder(folder: &Path, per_class: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for (class, colour) in [("reddish", [200u8, 60, 40]), ("bluish", [40u8, 80, 210])] {
        let dir = folder.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let shift = rng.below(40) as u32;
            let photo = image::RgbImage::from_fn(300, 260, |x, y| {
                let wobble = ((x * y + shift) % 40) as u8;
                image::Rgb([
                    colour[0] + wobble,
                    colour[1] + (x % 30) as u8,
                    colour[2] + (y % 30) as u8,
                ])
            });
            photo.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// The paper's full net on a prepared photo dataset (256x256 stored, 224x224 crops):
/// with plain gradient descent on one fixed batch, its loss falls at every step.
#[test]
fn the_papers_net_trains_on_photos() {
    let root = temp_dir("photos");
    write_photo_folder(&root.join("photos"), 6, 4);
    let data = root.join("data");
    let text = ok(&[
        "prepare",
        root.join("photos").to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(
        text.contains("12 images") && text.contains("3x256x256"),
        "{text}"
    );
    let run = root.join("run");
    ok(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--arch",
        "alexnet",
        "--out",
        run.to_str().unwrap(),
        "--batch",
        "10",
        "--holdout",
        "2",
        "--epochs",
        "6",
        "--lr",
        "0.00003",
        "--momentum",
        "0",
        "--no-crop",
        "--no-mirror",
        "--pca-std",
        "0",
        "--dropout",
        "0",
        "--log-every",
        "1",
        "--quiet",
    ]);
    let losses = step_losses(&run);
    assert_eq!(losses.len(), 6, "{losses:?}");
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "the loss should fall at every step: {losses:?}"
    );
    assert!(
        losses[5] < 0.85 * losses[0],
        "the loss should fall clearly: {losses:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_experiment_trains_its_variants_and_reports() {
    let (root, data) = temp_dataset("experiment");
    let out = root.join("lrn");
    let args = [
        "experiment",
        "lrn",
        "--data",
        data.to_str().unwrap(),
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--batch",
        "16",
        "--holdout",
        "40",
        "--out",
        out.to_str().unwrap(),
    ];
    let text = ok(&args);
    assert!(
        text.contains("| with LRN |") && text.contains("| without LRN |"),
        "{text}"
    );
    assert!(text.contains("The paper: response normalisation"), "{text}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let variants = results["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for v in variants {
        assert_eq!(v["runs"], 2);
        assert!(v["test_error"]["mean"].as_f64().is_some(), "{v}");
    }
    // The threshold rule: the first variant's mean training error after half its epochs.
    let threshold = results["threshold_train_error"].as_f64().unwrap();
    assert!(threshold > 0.0 && threshold < 1.0, "{threshold}");
    assert!(image::open(out.join("figure.png")).is_ok());
    // Running it again reuses the finished runs.
    let again = ok(&args);
    assert!(again.contains("already done"), "{again}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_jpeg_encoded_dataset_serves_training_evaluation_and_similar_images() {
    let root = temp_dir("jpeg-dataset");
    write_photo_folder(&root.join("photos"), 4, 9);
    let data = root.join("data");
    let d = data.to_str().unwrap();
    let text = ok(&[
        "prepare",
        root.join("photos").to_str().unwrap(),
        "--out",
        d,
        "--encoding",
        "jpeg",
    ]);
    assert!(text.contains("8 images"), "{text}");
    let info = ok(&["info", "--data", d]);
    assert!(info.to_lowercase().contains("jpeg"), "{info}");

    let run = root.join("run");
    let flags: &[&str] = &[
        "train",
        "--data",
        d,
        "--arch",
        "cifar",
        "--out",
        run.to_str().unwrap(),
    ];
    ok(&[flags, TINY_RUN].concat());
    let best = run.join("best.safetensors");
    let best = best.to_str().unwrap();
    let eval = ok(&[
        "eval",
        "--checkpoint",
        best,
        "--data",
        d,
        "--split",
        "train",
    ]);
    assert!(eval.contains("top-1"), "{eval}");
    let features = root.join("features.safetensors");
    ok(&[
        "features",
        "--checkpoint",
        best,
        "--data",
        d,
        "--split",
        "train",
        "--out",
        features.to_str().unwrap(),
    ]);
    let grid = root.join("similar.png");
    ok(&[
        "similar",
        "--features",
        features.to_str().unwrap(),
        "--queries",
        "0",
        "--k",
        "2",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(grid.exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bench_reports_the_precision_and_the_bf16_kernel_it_ran() {
    let quick = [
        "bench",
        "--arch",
        "cifar",
        "--seconds",
        "0.1",
        "--train-batch",
        "4",
        "--infer-batch",
        "4",
        "--layer-steps",
        "0",
    ];
    let fp32 = ok(&quick);
    assert!(fp32.contains("fp32 products"), "{fp32}");
    let portable: Vec<&str> = ["--precision", "bf16", "--bf16-kernel", "portable"]
        .into_iter()
        .chain(quick)
        .collect();
    let text = ok(&portable);
    assert!(text.contains("bf16 products on portable"), "{text}");
    assert!(
        text.contains("note: bf16 products on the portable kernel"),
        "{text}"
    );
    let fast: Vec<&str> = ["--precision", "bf16", "--bf16-kernel", "avx512-bf16"]
        .into_iter()
        .chain(quick)
        .collect();
    if alexnet::Bf16Kernel::Avx512Bf16.is_available() {
        let text = ok(&fast);
        assert!(text.contains("bf16 products on avx512-bf16"), "{text}");
        assert!(!text.contains("note: bf16"), "{text}");
    } else {
        let text = fails(&fast);
        assert!(text.contains("this CPU does not have it"), "{text}");
    }
}

/// `--devices cpu,cpu --parallel towers` trains the same net as one device does
/// (same seed, same batches, same dropout masks), and its checkpoints serve the
/// one-device commands, and the other way round.
#[test]
#[allow(clippy::too_many_lines)] // two runs compared step by step, then every command on both
fn two_towers_train_like_one_device_and_share_checkpoints() {
    let (root, data) = temp_dataset("towers");
    // The paper's layout in miniature, shared with tools/device_workflow.py.
    let arch = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/two-tower-mini.toml");
    let run = |out: &Path, placement: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--arch",
            arch.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch",
            "16",
            "--holdout",
            "40",
            "--epochs",
            "1",
            "--max-steps",
            "8",
            "--log-every",
            "1",
            "--quiet",
        ];
        args.extend(placement);
        ok(&args)
    };
    let one = root.join("one");
    let towers = root.join("towers");
    run(&one, &[]);
    let text = run(&towers, &["--devices", "cpu,cpu", "--parallel", "towers"]);
    let (a, b) = (step_losses(&one), step_losses(&towers));
    assert_eq!(a.len(), 8, "{a:?}");
    assert_eq!(b.len(), 8, "{b:?}");
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "step {step}: one device {x}, two towers {y} ({text})"
        );
    }
    assert!(a[7] != a[0], "the runs did not train: {a:?}");

    // A towers checkpoint on one device and a one-device checkpoint on towers give
    // the same fc4 features (the classifier's input) as where they were trained.
    let features = |run: &Path, placement: &[&str], name: &str| -> Vec<f32> {
        let ckpt = run.join("last.safetensors");
        let out = root.join(name);
        let mut args = vec![
            "features",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(placement);
        ok(&args);
        let (_, bytes) = tensors(&out)
            .into_iter()
            .find(|(name, _)| name == "features")
            .unwrap();
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let towers_flags = ["--devices", "cpu,cpu", "--parallel", "towers"];
    for run in [&one, &towers] {
        let here = features(run, &[], "one.safetensors");
        let there = features(run, &towers_flags, "towers.safetensors");
        assert_eq!(here.len(), 60 * 64);
        let scale = here.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = here
            .iter()
            .zip(&there)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            scale > 0.0 && worst <= 1e-5 * scale,
            "features differ by {worst} (of {scale})"
        );
    }

    // An experiment trains and evaluates every variant as two towers.
    let out = root.join("experiment");
    let text = ok(&[
        "experiment",
        "dropout",
        "--data",
        data.to_str().unwrap(),
        "--base",
        arch.to_str().unwrap(),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--batch",
        "16",
        "--holdout",
        "40",
        "--out",
        out.to_str().unwrap(),
        "--devices",
        "cpu,cpu",
        "--parallel",
        "towers",
    ]);
    assert!(text.contains("on 2 towers: cpu"), "{text}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let variants = results["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for v in variants {
        assert!(v["test_error"]["mean"].as_f64().is_some(), "{v}");
    }

    // An experiment whose variants cannot all be split says so before training any.
    let refused = root.join("refused");
    let text = fails(&[
        "experiment",
        "towers",
        "--data",
        data.to_str().unwrap(),
        "--base",
        arch.to_str().unwrap(),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        refused.to_str().unwrap(),
        "--devices",
        "cpu,cpu",
        "--parallel",
        "towers",
    ]);
    assert!(
        text.contains("the variant 'one tower") && text.contains("within each tower"),
        "{text}"
    );
    assert!(!refused.join("variant0-seed1").exists(), "{text}");

    // bench times the towers, with a row per layer of the whole net.
    let text = ok(&[
        "bench",
        "--arch",
        arch.to_str().unwrap(),
        "--seconds",
        "0.01",
        "--train-batch",
        "4",
        "--infer-batch",
        "4",
        "--layer-steps",
        "1",
        "--json",
        "--devices",
        "cpu,cpu",
        "--parallel",
        "towers",
    ]);
    let report: serde_json::Value =
        serde_json::from_str(text.trim().lines().last().unwrap()).unwrap();
    assert!(
        report["backend"]
            .as_str()
            .unwrap()
            .starts_with("2 towers: cpu"),
        "{report}"
    );
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 14, "{report}");
    assert!(
        layers
            .iter()
            .all(|l| l["forward_ms"].as_f64().unwrap() > 0.0),
        "{report}"
    );

    // A net whose LRN spans both towers cannot be split, and says why.
    let text = fails(&[
        "bench",
        "--arch",
        "cifar",
        "--seconds",
        "0.01",
        "--devices",
        "cpu,cpu",
        "--parallel",
        "towers",
    ]);
    assert!(
        text.contains("--parallel towers") && text.contains("within each tower"),
        "{text}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// The stored-batch path a GPU takes (the loader hands over stored bytes and view
/// placements, the backend cuts the views), forced on the CPU: training,
/// evaluation and features are bit for bit those of finished views, since both
/// cut with the same function.
#[test]
fn stored_batches_give_the_run_of_finished_views() {
    let (root, data) = temp_dataset("stored");
    let run = |stored: bool, name: &str| -> (String, String, Vec<(String, Vec<u8>)>) {
        let out = root.join(name);
        let with = |args: &[&str]| {
            let engine: &[&str] = if stored {
                &["--threads", "2", "--stored-batches"]
            } else {
                &["--threads", "2"]
            };
            let output = Command::new(env!("CARGO_BIN_EXE_alexnet"))
                .args(engine)
                .args(args)
                .env_remove("RUST_BACKTRACE")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{stderr}");
            (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
        };
        let steps = [
            "--epochs",
            "1",
            "--max-steps",
            "6",
            "--log-every",
            "1",
            "--quiet",
        ];
        let (_, log) = with(&small_train(&steps, &data, &out));
        assert_eq!(log.contains("views cut by the backend"), stored, "{log}");
        let ckpt = out.join("last.safetensors");
        let (eval, _) = with(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--ten-crop",
            "--json",
        ]);
        let features = out.join("features.safetensors");
        with(&[
            "features",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            features.to_str().unwrap(),
        ]);
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let losses: Vec<String> = metrics
            .lines()
            .filter(|l| l.contains("\"step\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
            .collect();
        (losses.join(","), eval, tensors(&features))
    };
    let (finished_losses, finished_eval, finished_features) = run(false, "finished");
    let (stored_losses, stored_eval, stored_features) = run(true, "stored");
    assert_eq!(stored_losses, finished_losses);
    assert!(!finished_losses.is_empty());
    let error =
        |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap()["loss"].clone();
    assert_eq!(
        error(&stored_eval),
        error(&finished_eval),
        "ten-crop evaluation"
    );
    assert_eq!(stored_features, finished_features);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Pixels of `image` in rows `rows` close to `colour`.
fn pixels_like(image: &image::RgbImage, rows: std::ops::Range<u32>, colour: [u8; 3]) -> usize {
    image
        .enumerate_pixels()
        .filter(|(_, y, p)| {
            rows.contains(y) && p.0.iter().zip(colour).all(|(a, b)| a.abs_diff(b) < 8)
        })
        .count()
}

#[test]
fn plot_draws_errors_and_loss_of_a_real_run_with_its_learning_rate_drop() {
    let (root, data) = temp_dataset("plot");
    let run = root.join("run");
    train(
        &data,
        &run,
        &["--schedule", "steps", "--lr-steps", "1", "--log-every", "2"],
    );
    let figure = root.join("curves.png");
    let (run_arg, figure_arg) = (run.to_str().unwrap(), figure.to_str().unwrap());
    let metrics = "train-error,val-top1-error,train-loss";
    ok(&[
        "plot",
        run_arg,
        "--metric",
        metrics,
        "--by-step",
        "--out",
        figure_arg,
    ]);
    let image = image::open(&figure).unwrap().to_rgb8();
    // Errors in the upper panel (500 rows), the loss below it (320).
    assert_eq!(image.dimensions(), (800, 820));
    let (blue, red) = ([31, 119, 180], [214, 39, 40]);
    assert!(pixels_like(&image, 0..500, blue) > 50, "the training error");
    assert!(
        pixels_like(&image, 0..500, red) > 50,
        "the validation error"
    );
    assert!(pixels_like(&image, 500..820, blue) > 50, "the loss");
    assert_eq!(pixels_like(&image, 500..820, red), 0, "one curve below");
    // The learning rate drops after epoch 1 of 3: a marked line in both panels.
    let marker = [150, 150, 150];
    assert!(pixels_like(&image, 60..440, marker) > 50, "the drop, above");
    assert!(
        pixels_like(&image, 560..760, marker) > 50,
        "the drop, below"
    );

    // Following a run that has ended draws once and returns; one that has not
    // (its last line is not an end line) is followed for --follow-seconds.
    ok(&["plot", run_arg, "--follow", "--out", figure_arg]);
    let log = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().last().unwrap().contains("\"end\""), "{text}");
    let running: Vec<&str> = text.lines().filter(|l| !l.contains("\"end\"")).collect();
    std::fs::write(&log, running.join("\n") + "\n").unwrap();
    let started = std::time::Instant::now();
    ok(&[
        "plot",
        run_arg,
        "--follow",
        "--follow-seconds",
        "1",
        "--out",
        figure_arg,
    ]);
    let waited = started.elapsed().as_secs_f64();
    assert!((1.0..30.0).contains(&waited), "followed for {waited} s");
    std::fs::remove_dir_all(&root).unwrap();
}
