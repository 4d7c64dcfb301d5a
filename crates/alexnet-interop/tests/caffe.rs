//! The Caffe import against Caffe's conventions. `tools/caffe_fixtures.py` writes
//! small AlexNet-shaped `.caffemodel`s in both layouts (bvlc_alexnet's
//! conv -> relu -> lrn -> pool and caffenet's pool before norm), one in the V1
//! format, a mean.binaryproto, and the logits PyTorch computes from them the way
//! Caffe would (BGR input minus the mean, LRN with alpha / n, ceil-mode pooling,
//! float64). Each net is imported, run by our engine on the same images brought
//! to our convention (RGB minus the imported RGB mean image, centre crop), and
//! must agree. The hostile files of `fixtures/caffe-corpus` must each be refused
//! for their own reason, and no corruption of a good file may panic.

mod common;

use alexnet::spec::{LayerSpec, LrnSpec, PixelScale};
use alexnet::{Model, NetSpec, Plan};
use alexnet_interop::{Error, Imported, caffe};
use common::{imported_net, read_fixture, relative_error};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

const MEAN: &str = "caffe-mini-mean.binaryproto";

fn read(name: &str) -> Vec<u8> {
    read_fixture(name, "written by tools/caffe_fixtures.py")
}

fn import(model: &str) -> Imported {
    let mean = read(MEAN);
    caffe::import(&read(model), model, Some((&mean, MEAN)))
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// The reference tensors: images (u8, BGR), mean (f32, BGR), logits (f64).
struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn load() -> Reference {
        Reference {
            bytes: read("caffe-mini-reference.safetensors"),
        }
    }

    fn tensor(&self, key: &str, dtype: Dtype) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("reference fixture parses");
        let view = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("tensor {key}: {e}"));
        assert_eq!(view.dtype(), dtype, "tensor {key}");
        (view.shape().to_vec(), view.data().to_vec())
    }

    fn images(&self) -> (Vec<usize>, Vec<u8>) {
        self.tensor("images", Dtype::U8)
    }

    fn mean(&self) -> Vec<f32> {
        let (_, data) = self.tensor("mean", Dtype::F32);
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn logits(&self, net: &str) -> Vec<f64> {
        let (_, data) = self.tensor(&format!("{net}.logits"), Dtype::F64);
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// BGR u8 images (N x 3 x S x S) in our convention: RGB, minus the imported RGB
/// mean image, centre crop to the net's input (Caffe's offset, rounded down).
fn to_our_input(imported: &Imported, shape: &[usize], bgr: &[u8]) -> Vec<f32> {
    let (n, stored) = (shape[0], shape[2]);
    assert_eq!(shape[3], stored);
    assert_eq!(imported.input.resize, stored, "resize from the mean image");
    let mean = imported.input.mean_image.as_ref().expect("a mean image");
    let (h, w) = (imported.spec.input.height, imported.spec.input.width);
    let (top, left) = ((stored - h) / 2, (stored - w) / 2);
    let plane = stored * stored;
    let mut out = Vec::with_capacity(n * 3 * h * w);
    for image in bgr.chunks_exact(3 * plane) {
        for rgb in 0..3 {
            let channel = &image[(2 - rgb) * plane..(3 - rgb) * plane];
            let mean = &mean[rgb * plane..(rgb + 1) * plane];
            for y in top..top + h {
                for x in left..left + w {
                    let at = y * stored + x;
                    out.push(f32::from(channel[at]) - mean[at]);
                }
            }
        }
    }
    out
}

/// Our logits for the imported net on the reference images.
fn run(imported: &Imported, reference: &Reference) -> Vec<f32> {
    let (shape, images) = reference.images();
    imported_net(imported, shape[0])
        .predict(&to_our_input(imported, &shape, &images))
        .unwrap()
}

/// The kinds of our layers in order, as short words.
fn kinds(spec: &NetSpec) -> Vec<&'static str> {
    spec.layers
        .iter()
        .map(|l| match l {
            LayerSpec::Conv(_) => "conv",
            LayerSpec::Linear(_) => "fc",
            LayerSpec::Relu => "relu",
            LayerSpec::Tanh => "tanh",
            LayerSpec::Lrn(_) => "lrn",
            LayerSpec::MaxPool(_) => "max",
            LayerSpec::AvgPool(_) => "avg",
            LayerSpec::Dropout(_) => "drop",
        })
        .collect()
}

fn lrns(spec: &NetSpec) -> Vec<LrnSpec> {
    spec.layers
        .iter()
        .filter_map(|l| match l {
            LayerSpec::Lrn(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// float32 arithmetic through eight layers lands near 1e-6 of float64; a wrong
/// convention (alpha not divided, BGR read as RGB) moves the logits by 0.2 to
/// 0.6 relative (printed by the fixture script), so 1e-4 separates them.
const TOLERANCE: f64 = 1e-4;

#[test]
fn mini_nets_match_caffe_conventions() {
    let reference = Reference::load();
    for (file, net) in [
        ("caffe-mini-alexnet.caffemodel", "alexnet"),
        ("caffe-mini-alexnet-v1.caffemodel", "alexnet"),
        ("caffe-mini-caffenet.caffemodel", "caffenet"),
    ] {
        let imported = import(file);
        let ours = run(&imported, &reference);
        let error = relative_error(&ours, &reference.logits(net));
        eprintln!("{file}: logits within {error:.2e} of Caffe's (relative)");
        assert!(error <= TOLERANCE, "{file}: logits off by {error:.3e}");
    }
}

#[test]
fn both_layer_orders_are_translated() {
    let paper = [
        "conv", "relu", "lrn", "max", "conv", "relu", "lrn", "max", "conv", "relu", "conv", "relu",
        "conv", "relu", "max", "fc", "relu", "drop", "fc", "relu", "drop", "fc",
    ];
    let alexnet = import("caffe-mini-alexnet.caffemodel");
    assert_eq!(kinds(&alexnet.spec), paper);
    let mut pool_first = paper;
    pool_first.swap(2, 3);
    pool_first.swap(6, 7);
    let caffenet = import("caffe-mini-caffenet.caffemodel");
    assert_eq!(kinds(&caffenet.spec), pool_first);

    for imported in [&alexnet, &caffenet] {
        let spec = &imported.spec;
        assert_eq!(
            (spec.input.channels, spec.input.height, spec.input.width),
            (3, 99, 99)
        );
        assert_eq!(spec.input.pixels, PixelScale::RawMinusMean);
        assert_eq!(spec.classes, 10);
        let LayerSpec::Conv(conv2) = &spec.layers[4] else {
            panic!("conv2")
        };
        assert_eq!(
            (conv2.name.as_str(), conv2.groups, conv2.pad),
            ("conv2", 2, 2)
        );
        assert!(matches!(spec.layers.last(), Some(LayerSpec::Linear(l)) if l.out.is_none()));
        Plan::new(spec).unwrap();
    }
    assert_eq!(alexnet.spec.name, "AlexNet");
    assert_eq!(caffenet.spec.name, "CaffeNet");
}

#[test]
fn lrn_takes_our_alpha_and_normalises_across_all_channels() {
    // Caffe's alpha is divided by the window size; ours is not.
    let alexnet = lrns(&import("caffe-mini-alexnet.caffemodel").spec);
    let expected = LrnSpec {
        size: 5,
        alpha: 1e-4 / 5.0,
        beta: 0.75,
        k: 1.0,
        groups: 1,
    };
    assert_eq!(alexnet, [expected.clone(), expected]);
    let caffenet = lrns(&import("caffe-mini-caffenet.caffemodel").spec);
    assert!(
        caffenet
            .iter()
            .all(|n| n.k == 2.0 && n.alpha == 5e-4 / 5.0 && n.groups == 1)
    );
}

#[test]
fn the_v1_format_gives_the_same_net_and_weights() {
    let current = import("caffe-mini-alexnet.caffemodel");
    let v1 = import("caffe-mini-alexnet-v1.caffemodel");
    assert_eq!(current.spec, v1.spec);
    assert_eq!(current.tensors, v1.tensors);
    assert!(v1.source.contains("V1"), "{}", v1.source);
}

#[test]
fn conv1_is_reordered_from_bgr_to_rgb() {
    let reference = Reference::load();
    let (shape, data) = reference.tensor("caffenet.conv1.weight", Dtype::F32);
    let stored: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let imported = import("caffe-mini-caffenet.caffemodel");
    let (name, ours_shape, ours) = &imported.tensors[0];
    assert_eq!((name.as_str(), ours_shape), ("conv1.weight", &shape));
    let plane = shape[2] * shape[3];
    for (o, (ours, stored)) in ours
        .chunks_exact(3 * plane)
        .zip(stored.chunks_exact(3 * plane))
        .enumerate()
    {
        for rgb in 0..3 {
            assert_eq!(
                &ours[rgb * plane..(rgb + 1) * plane],
                &stored[(2 - rgb) * plane..(3 - rgb) * plane],
                "filter {o}, channel {rgb}"
            );
        }
    }
    // Only conv1 is reordered: conv2 reads feature maps, not colours.
    let no_mean = caffe::import(&read("caffe-mini-caffenet.caffemodel"), "m", None).unwrap();
    assert_eq!(imported.tensors, no_mean.tensors);
}

#[test]
fn the_mean_image_becomes_rgb_at_its_size() {
    let reference = Reference::load();
    let bgr = reference.mean();
    let imported = import("caffe-mini-alexnet.caffemodel");
    let input = &imported.input;
    assert_eq!(input.resize, 112);
    assert_eq!(input.pixels, PixelScale::RawMinusMean);
    let rgb = input.mean_image.as_ref().unwrap();
    let plane = 112 * 112;
    for c in 0..3 {
        assert_eq!(
            &rgb[c * plane..(c + 1) * plane],
            &bgr[(2 - c) * plane..(3 - c) * plane],
            "channel {c}"
        );
        let average = bgr[(2 - c) * plane..(3 - c) * plane]
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / plane as f64;
        assert!((f64::from(input.channel_mean[c]) - average).abs() < 1e-3);
    }
    // Red's mean is near Caffe's 123 and blue's near 104 (the fixture's BGR means).
    assert!(
        (input.channel_mean[0] - 123.0).abs() < 2.0,
        "{:?}",
        input.channel_mean
    );
    assert!(
        (input.channel_mean[2] - 104.0).abs() < 2.0,
        "{:?}",
        input.channel_mean
    );
}

#[test]
fn without_a_mean_file_caffes_channel_mean_is_used() {
    let imported = caffe::import(
        &read("caffe-mini-alexnet.caffemodel"),
        "caffe-mini-alexnet.caffemodel",
        None,
    )
    .unwrap();
    assert_eq!(imported.input.resize, 256);
    assert_eq!(imported.input.channel_mean, [123.0, 117.0, 104.0]);
    assert_eq!(imported.input.mean_image, None);
    assert_eq!(imported.input.pixels, PixelScale::RawMinusMean);
}

/// What each hostile or unsupported file must be refused for: whether the
/// error is `Unsupported` (a well-formed file we cannot represent) and words
/// its message must contain.
const CORPUS: &[(&str, bool, &[&str])] = &[
    (
        "truncated.caffemodel",
        false,
        &["declares", "remain", "caffemodel"],
    ),
    (
        "huge-blob-shape.caffemodel",
        false,
        &["conv1", "blob 0", "1099511627776 values", "holds 16"],
    ),
    (
        "huge-blob-length.caffemodel",
        false,
        &["conv2", "blob 0", "1099511627776 bytes", "remain"],
    ),
    (
        "deep-nesting.caffemodel",
        false,
        &["layer 1", "no layer type"],
    ),
    (
        "wrong-blob-shape.caffemodel",
        false,
        &["conv2", "[12, 8, 5, 5]", "expected [12, 4, 5, 5]"],
    ),
    (
        "missing-bias.caffemodel",
        false,
        &["fc7", "1 blob, expected 2"],
    ),
    (
        "within-channel-lrn.caffemodel",
        true,
        &["norm1", "WITHIN_CHANNEL"],
    ),
    ("padded-pool.caffemodel", true, &["pool2", "padded pooling"]),
    (
        "ceil-pool.caffemodel",
        true,
        &["pool1", "103x103", "24x24", "up to 12x12", "down to 11x11"],
    ),
    (
        "prototxt-text.caffemodel",
        false,
        &["wire type", "binary .caffemodel"],
    ),
];

fn check_refusal(name: &str, err: &Error, unsupported: bool, words: &[&str]) {
    let message = err.to_string();
    eprintln!("{name}: {message}");
    assert!(
        message.contains(name),
        "{name}: the error names the file: {message}"
    );
    for word in words {
        assert!(
            message.contains(word),
            "{name}: '{word}' missing from: {message}"
        );
    }
    assert_eq!(
        matches!(err, Error::Unsupported { .. }),
        unsupported,
        "{name}: {err:?}"
    );
}

#[test]
fn hostile_and_unsupported_files_are_refused_for_their_reason() {
    for &(name, unsupported, words) in CORPUS {
        let bytes = read(&format!("caffe-corpus/{name}"));
        let err = caffe::import(&bytes, name, None).expect_err(name);
        check_refusal(name, &err, unsupported, words);
    }
    let name = "truncated-mean.binaryproto";
    let mean = read(&format!("caffe-corpus/{name}"));
    let err = caffe::import(
        &read("caffe-mini-alexnet.caffemodel"),
        "caffe-mini-alexnet.caffemodel",
        Some((&mean, name)),
    )
    .expect_err(name);
    check_refusal(name, &err, false, &["the mean", "remain", "binaryproto"]);
}

/// A BlobProto with the old dims 1 x 3 x side x side and its packed floats.
fn small_mean(side: u8) -> Vec<u8> {
    let values = 3 * usize::from(side) * usize::from(side);
    let mut bytes = vec![0x08, 1, 0x10, 3, 0x18, side, 0x20, side, 0x2a];
    let mut len = values * 4;
    while len >= 0x80 {
        bytes.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    bytes.push(len as u8);
    bytes.extend((0..values).flat_map(|i| (i as f32).to_le_bytes()));
    bytes
}

#[test]
fn a_mean_smaller_than_the_input_or_not_a_mean_is_refused() {
    let model = read("caffe-mini-alexnet.caffemodel");
    let err = caffe::import(&model, "m", Some((&small_mean(64), "small.binaryproto"))).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("small.binaryproto"), "{message}");
    assert!(
        message.contains("64x64 mean image, smaller than the net's 99x99"),
        "{message}"
    );
    // The same encoding at the input's size is accepted.
    let ok = caffe::import(&model, "m", Some((&small_mean(99), "fits.binaryproto"))).unwrap();
    assert_eq!(ok.input.resize, 99);
    // A model is not a mean.
    let err = caffe::import(&model, "m", Some((&model, "not-a-mean"))).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("not-a-mean") && message.contains("the mean"),
        "{message}"
    );
}

/// Imports `model` and, when it succeeds, checks that the result is whole:
/// a valid plan with every tensor at its planned shape.
fn import_is_consistent(model: &[u8], mean: Option<(&[u8], &str)>) {
    if let Ok(imported) = caffe::import(model, "mutant", mean) {
        let plan = Plan::new(&imported.spec).unwrap();
        assert_eq!(plan.params.len(), imported.tensors.len());
        for (info, (name, shape, values)) in plan.params.iter().zip(&imported.tensors) {
            assert_eq!(&info.name, name);
            assert_eq!(&info.shape, shape);
            assert_eq!(info.len(), values.len());
        }
    }
}

#[test]
fn truncations_and_corruptions_never_panic() {
    let model = read("caffe-mini-caffenet.caffemodel");
    let mean = read(MEAN);
    for cut in (0..model.len()).step_by(7) {
        import_is_consistent(&model[..cut], None);
    }
    for at in (0..model.len()).step_by(11) {
        for flip in [0xff, 0x80, 0x01] {
            let mut mutant = model.clone();
            mutant[at] ^= flip;
            import_is_consistent(&mutant, None);
        }
    }
    for cut in (0..mean.len()).step_by(997) {
        import_is_consistent(&model, Some((&mean[..cut], "mean")));
    }
    for at in (0..200).chain((200..mean.len()).step_by(4999)) {
        let mut mutant = mean.clone();
        mutant[at] ^= 0xff;
        import_is_consistent(&model, Some((&mutant, "mean")));
    }
}

fn read_text(name: &str) -> String {
    String::from_utf8(read(name)).unwrap()
}

#[test]
fn a_prototxt_describes_the_same_net_as_its_caffemodel() {
    let file = "caffe-mini-caffenet.prototxt";
    let spec = caffe::parse_prototxt(&read_text(file), file).unwrap();
    assert_eq!(spec, import("caffe-mini-caffenet.caffemodel").spec);
}

#[test]
fn bvlc_deploy_prototxts_give_alexnet_at_full_size() {
    let preset = Plan::new(&NetSpec::preset("alexnet").unwrap()).unwrap();
    for (file, pool_first) in [
        ("caffe-bvlc-alexnet-deploy.prototxt", false),
        ("caffe-bvlc-caffenet-deploy-v1.prototxt", true),
    ] {
        let spec = caffe::parse_prototxt(&read_text(file), file).unwrap();
        assert_eq!(
            (spec.input.height, spec.input.width, spec.classes),
            (227, 227, 1000)
        );
        let plan = Plan::new(&spec).unwrap();
        // The paper's parameter count: Caffe's 227 input without padding gives
        // conv1 the same 55x55 output as the preset's 224 with padding 2.
        assert_eq!(plan.parameter_count(), 60_965_224, "{file}");
        let shapes = |p: &Plan| {
            p.params
                .iter()
                .map(|i| (i.name.clone(), i.shape.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shapes(&plan), shapes(&preset), "{file}");
        let order = kinds(&spec);
        assert_eq!(
            &order[..4],
            if pool_first {
                ["conv", "relu", "max", "lrn"]
            } else {
                ["conv", "relu", "lrn", "max"]
            },
            "{file}"
        );
        for lrn in lrns(&spec) {
            assert_eq!((lrn.size, lrn.alpha, lrn.k, lrn.groups), (5, 2e-5, 1.0, 1));
        }
    }
}

#[test]
fn prototxt_truncations_and_edits_never_panic() {
    let file = "caffe-bvlc-caffenet-deploy-v1.prototxt";
    let text = read_text(file);
    let cuts: Vec<usize> = (0..text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect();
    for &cut in &cuts {
        let _ = caffe::parse_prototxt(&text[..cut], file);
    }
    let replacements = [
        "{", "}", "\"", "'", "#", ":", "[", "]", "-", "9", "x", "\\", "é", "",
    ];
    for (n, &at) in cuts.iter().step_by(5).enumerate() {
        let end = cuts
            .iter()
            .find(|&&c| c > at)
            .copied()
            .unwrap_or(text.len());
        let edited = format!(
            "{}{}{}",
            &text[..at],
            replacements[n % replacements.len()],
            &text[end..]
        );
        if let Ok(spec) = caffe::parse_prototxt(&edited, file) {
            Plan::new(&spec).unwrap();
        }
    }
}

/// A real model zoo file, when one is at hand:
/// `ALEXNET_CAFFE_MODEL=bvlc_alexnet.caffemodel [ALEXNET_CAFFE_MEAN=imagenet_mean.binaryproto]
/// cargo test -p alexnet-interop --test caffe -- --ignored`.
#[test]
#[ignore = "needs ALEXNET_CAFFE_MODEL (bvlc_alexnet or bvlc_reference_caffenet)"]
fn a_model_zoo_file_imports() {
    let path = std::env::var("ALEXNET_CAFFE_MODEL").expect("ALEXNET_CAFFE_MODEL");
    let model = std::fs::read(&path).unwrap();
    let mean_path = std::env::var("ALEXNET_CAFFE_MEAN").ok();
    let mean = mean_path.as_ref().map(|p| std::fs::read(p).unwrap());
    let start = std::time::Instant::now();
    let imported = caffe::import(&model, &path, mean.as_deref().zip(mean_path.as_deref())).unwrap();
    eprintln!("{} in {:.2?}", imported.source, start.elapsed());
    let plan = Plan::new(&imported.spec).unwrap();
    assert_eq!(plan.parameter_count(), 60_965_224);
    assert_eq!(
        (imported.spec.input.height, imported.spec.classes),
        (227, 1000)
    );
    if mean.is_some() {
        assert_eq!(imported.input.resize, 256);
    }
}
