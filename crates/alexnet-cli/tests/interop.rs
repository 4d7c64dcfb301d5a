//! Weights in and out through the command line: a torchvision-layout net and
//! Caffe nets imported from the committed fixtures (tools/torchvision_fixtures.py,
//! tools/caffe_fixtures.py), used by `classify` and `info`, and exported to ONNX.

mod common;

use std::path::{Path, PathBuf};

use common::{TINY_RUN, fails, ok, temp_dir, tensors_by_name};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A file of the repository as a command-line argument.
fn repo_arg(path: &str) -> String {
    repo(path).display().to_string()
}

fn photo(name: &str) -> String {
    repo("crates/alexnet-data/tests/photos")
        .join(name)
        .display()
        .to_string()
}

/// The tensors of `reference` whose names start with `prefix`.
fn named_from(reference: &[(String, Vec<f64>)], prefix: &str) -> Vec<(String, Vec<f64>)> {
    reference
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .cloned()
        .collect()
}

/// The f64 tensors of a safetensors file, by name.
fn reference_logits(path: &Path) -> Vec<(String, Vec<f64>)> {
    tensors_by_name(path, |name, view| {
        assert_eq!(view.dtype(), safetensors::Dtype::F64, "{name}");
        view.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    })
}

/// `alexnet classify --json --logits` on the photos named in `reference` gives
/// their reference logits within 1e-4 (max-norm relative error per photo).
fn classify_matches(checkpoint: &str, reference: &[(String, Vec<f64>)]) {
    let photos: Vec<String> = reference
        .iter()
        .map(|(name, _)| photo(name.rsplit('/').next().unwrap()))
        .collect();
    let mut args = vec!["classify", "--checkpoint", checkpoint, "--json", "--logits"];
    args.extend(photos.iter().map(String::as_str));
    let lines = ok(&args);
    let results: Vec<serde_json::Value> = lines
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), reference.len());
    for ((name, expected), result) in reference.iter().zip(&results) {
        let file = name.rsplit('/').next().unwrap();
        assert!(result["image"].as_str().unwrap().ends_with(file));
        let ours: Vec<f64> = result["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ours.len(), expected.len());
        let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let error = ours
            .iter()
            .zip(expected)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(error <= 1e-4, "{name}: max-norm relative error {error:.2e}");
    }
}

#[test]
fn torchvision_weights_classify_real_photos_as_pytorch_does() {
    let dir = temp_dir("import-torchvision");
    let ckpt = dir.join("imported.safetensors");
    let ckpt_s = ckpt.display().to_string();
    let pth = repo_arg("fixtures/torchvision-mini.pth");
    let said = ok(&["import", "torchvision", &pth, "--out", &ckpt_s]);
    assert!(said.contains("UnitMeanStd"), "{said}");
    let info = ok(&["info", "--checkpoint", &ckpt_s]);
    assert!(info.contains("torchvision"), "{info}");

    // PyTorch's logits for the same photos: our resize, then torchvision's crop
    // and normalisation done independently in Python (tools/torchvision_photo_reference.py).
    let reference = reference_logits(&repo("fixtures/torchvision-mini-photos.safetensors"));
    classify_matches(&ckpt_s, &reference);

    // And out again, as ONNX.
    let onnx = dir.join("model.onnx");
    ok(&[
        "export",
        "onnx",
        &ckpt_s,
        "--out",
        &onnx.display().to_string(),
    ]);
    let bytes = std::fs::read(&onnx).unwrap();
    assert!(bytes.len() > 100_000, "{} bytes", bytes.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The arguments of `import caffe MODEL OPTIONS... --out OUT`.
fn import_caffe<'a>(model: &'a str, options: &[&'a str], out: &'a str) -> Vec<&'a str> {
    [&["import", "caffe", model][..], options, &["--out", out]].concat()
}

#[test]
fn caffe_weights_import_with_their_mean_and_definition() {
    let dir = temp_dir("import-caffe");
    let ckpt = dir.join("caffenet.safetensors").display().to_string();
    let model = repo_arg("fixtures/caffe-mini-caffenet.caffemodel");
    let mean = repo_arg("fixtures/caffe-mini-mean.binaryproto");
    let prototxt = repo_arg("fixtures/caffe-mini-caffenet.prototxt");
    let said = ok(&import_caffe(
        &model,
        &["--mean", &mean, "--prototxt", &prototxt],
        &ckpt,
    ));
    assert!(said.contains("RawMinusMean"), "{said}");
    // PyTorch's logits following Caffe's conventions (BGR, mean image, LRN α/n,
    // round-up pooling) from our resized photos (tools/caffe_photo_reference.py).
    let reference = reference_logits(&repo("fixtures/caffe-mini-photos.safetensors"));
    let caffenet = named_from(&reference, "caffenet/");
    assert_eq!(caffenet.len(), 4);
    classify_matches(&ckpt, &caffenet);
    // The paper's layout (normalise, then pool), from the old V1 layer format.
    let v1 = dir.join("alexnet-v1.safetensors").display().to_string();
    let v1_model = repo_arg("fixtures/caffe-mini-alexnet-v1.caffemodel");
    ok(&import_caffe(&v1_model, &["--mean", &mean], &v1));
    let alexnet = named_from(&reference, "alexnet/");
    classify_matches(&v1, &alexnet);

    // A definition of another net is refused, naming the difference.
    let other = repo_arg("fixtures/caffe-bvlc-alexnet-deploy.prototxt");
    let said = fails(&import_caffe(&model, &["--prototxt", &other], &ckpt));
    assert!(
        said.contains("caffe-bvlc-alexnet-deploy.prototxt"),
        "{said}"
    );
    // A file that is not a caffemodel is refused, naming it.
    let said = fails(&import_caffe(&prototxt, &[], &ckpt));
    assert!(said.contains("caffe-mini-caffenet.prototxt"), "{said}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The network description a checkpoint carries (its `spec` metadata).
fn spec_of(checkpoint: &Path) -> String {
    let bytes = std::fs::read(checkpoint).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().as_ref().unwrap()["spec"].clone()
}

#[test]
fn imported_torchvision_weights_fine_tune_with_their_own_normalisation() {
    let dir = temp_dir("finetune-torchvision");
    // Real photos as a two-class dataset, stored at torchvision's 256.
    for (class, files) in [
        ("animal", ["chelsea.png", "coffee.png"]),
        ("object", ["coins.png", "rocket.jpg"]),
    ] {
        let folder = dir.join("photos").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for file in files {
            std::fs::copy(photo(file), folder.join(file)).unwrap();
        }
    }
    let data = dir.join("data").display().to_string();
    ok(&[
        "prepare",
        &dir.join("photos").display().to_string(),
        "--out",
        &data,
    ]);
    let imported = dir.join("imported.safetensors");
    let pth = repo_arg("fixtures/torchvision-mini.pth");
    ok(&[
        "import",
        "torchvision",
        &pth,
        "--out",
        &imported.display().to_string(),
    ]);
    let arch = dir.join("mini.toml");
    std::fs::write(&arch, spec_of(&imported)).unwrap();
    let arch = arch.display().to_string();
    let run = dir.join("run");
    let train = |extra: &[&str]| {
        let head: &[&str] = &["train", "--data", &data, "--arch", &arch];
        let args = [head, TINY_RUN, extra].concat();
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // Without the imported weights the normalisation is unknown: refused, saying why.
    let run_fresh = dir.join("fresh").display().to_string();
    let args = train(&["--out", &run_fresh]);
    let said = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(said.contains("--init-from"), "{said}");

    let run_s = run.display().to_string();
    let imported_s = imported.display().to_string();
    let args = train(&["--out", &run_s, "--init-from", &imported_s]);
    let said = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Only the classifier changed shape (10 classes -> 2).
    assert!(
        said.contains("fc8.weight") && !said.contains("conv1.weight"),
        "{said}"
    );
    let last = run.join("last.safetensors").display().to_string();
    let info = ok(&["info", "--checkpoint", &last]);
    assert!(info.contains("divided by std"), "{info}");
    // The fine-tuned net evaluates on the dataset with the same normalisation.
    let eval = ok(&[
        "eval",
        "--checkpoint",
        &last,
        "--data",
        &data,
        "--split",
        "train",
    ]);
    assert!(eval.contains("top-1"), "{eval}");
    std::fs::remove_dir_all(&dir).unwrap();
}
