//! torchvision AlexNet weights through the whole path: `torch.save` files in both
//! layouts (written by tools/torchvision_fixtures.py with PyTorch) are imported,
//! loaded into a network, and must compute PyTorch's logits; a checkpoint of
//! mixed dtypes and views reads back to the values PyTorch saved; and every
//! hostile file of fixtures/pickle-corpus is refused with a message naming the
//! problem.

mod common;

use std::path::Path;

use alexnet::{Model, NetSpec};
use alexnet_interop::torch::{self, DType, Format};
use alexnet_interop::{Error, torchvision};
use common::{fixtures, imported_net, read_fixture, relative_error};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

fn read(name: &str) -> Vec<u8> {
    read_fixture(name, "run python3 tools/torchvision_fixtures.py")
}

/// The reference inputs as the net takes them, their count, and PyTorch's float64 logits.
fn reference() -> (Vec<f32>, usize, Vec<f64>) {
    let bytes = read("torchvision-mini-reference.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let images = st.tensor("images").unwrap();
    assert_eq!(images.dtype(), Dtype::U8);
    let count = images.shape()[0];
    // The fixture's stated mapping, exact in f32.
    let input = images
        .data()
        .iter()
        .map(|&u| (u as f32 - 128.0) / 64.0)
        .collect();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.dtype(), Dtype::F64);
    let logits = logits
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (input, count, logits)
}

#[test]
fn both_layouts_import_and_compute_pytorchs_logits() {
    let (input, count, expected) = reference();
    for (file, format) in [
        ("torchvision-mini.pth", "zip"),
        ("torchvision-mini-legacy.pth", "legacy"),
    ] {
        let imported = torchvision::import(&read(file), file).unwrap();
        assert_eq!(imported.spec.classes, 10);
        assert_eq!(
            (imported.spec.input.height, imported.spec.input.width),
            (224, 224)
        );
        assert!(
            imported.source.contains(file) && imported.source.contains(format),
            "{}",
            imported.source
        );
        let logits = imported_net(&imported, count).predict(&input).unwrap();
        let error = relative_error(&logits, &expected);
        println!("{file}: logits max-norm relative error {error:.2e}");
        assert!(
            error <= 1e-4,
            "{file}: logits differ from PyTorch's by {error:.2e}"
        );
    }
}

#[test]
fn the_two_layouts_hold_the_same_tensors() {
    let zip = torchvision::import(&read("torchvision-mini.pth"), "zip").unwrap();
    let legacy = torchvision::import(&read("torchvision-mini-legacy.pth"), "legacy").unwrap();
    assert_eq!(zip.spec, legacy.spec);
    assert_eq!(zip.tensors, legacy.tensors);
    // The widths are the tensors', the rest is alexnet-owt's.
    let preset = NetSpec::preset("alexnet-owt").unwrap();
    assert_eq!(zip.spec.layers.len(), preset.layers.len());
    assert_eq!(zip.spec.input, preset.input);
    assert_eq!(zip.input, torchvision::input_convention());
}

#[test]
fn import_path_reads_the_file() {
    let imported = torchvision::import_path(&fixtures().join("torchvision-mini.pth")).unwrap();
    assert_eq!(imported.tensors.len(), 16);
    let e = torchvision::import_path(&fixtures().join("no-such.pth")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("no-such.pth"), "{e}");
    // The earlier name does the same.
    let again = torchvision::import_file(&fixtures().join("torchvision-mini.pth")).unwrap();
    assert_eq!(again.tensors, imported.tensors);
}

#[test]
fn reading_the_file_at_offsets_gives_what_reading_its_bytes_gives() {
    // The first two also import as torchvision's AlexNet.
    let importable = ["torchvision-mini.pth", "torchvision-mini-legacy.pth"];
    for file in [
        "torchvision-mini.pth",
        "torchvision-mini-legacy.pth",
        "torchvision-dtypes.pth",
        "torchvision-dtypes-legacy.pth",
        "torchvision-dtypes-p5.pth",
        "torchvision-dtypes-p5-legacy.pth",
    ] {
        let path = fixtures().join(file);
        let name = path.display().to_string();
        let bytes = read(file);
        let from_bytes = torch::read(&bytes, &name).unwrap();
        let from_path = torch::read_file(&path).unwrap();
        assert_eq!(from_path.format, from_bytes.format, "{file}");
        assert_eq!(from_path.tensors, from_bytes.tensors, "{file}");
        if importable.contains(&file) {
            let from_bytes = torchvision::import(&bytes, &name).unwrap();
            let from_path = torchvision::import_path(&path).unwrap();
            assert_eq!(from_path.spec, from_bytes.spec, "{file}");
            assert_eq!(from_path.tensors, from_bytes.tensors, "{file}");
            assert_eq!(from_path.input, from_bytes.input, "{file}");
            assert_eq!(from_path.source, from_bytes.source, "{file}");
        }
    }
}

/// What tools/torchvision_fixtures.py stores in its dtype checkpoint: base is
/// arange(12) / 4 - 1 as 3x4.
fn base(i: usize) -> f32 {
    i as f32 / 4.0 - 1.0
}

#[test]
fn dtypes_views_and_checkpoint_wrappers_read_back_exactly() {
    let base_values: Vec<f32> = (0..12).map(base).collect();
    let transposed: Vec<f32> = (0..12).map(|i| base((i % 3) * 4 + i / 3)).collect();
    let expected: Vec<(&str, DType, Vec<usize>, Vec<f32>)> = vec![
        ("f32", DType::F32, vec![3, 4], base_values.clone()),
        ("f16", DType::F16, vec![3, 4], base_values.clone()),
        ("bf16", DType::BF16, vec![3, 4], base_values.clone()),
        ("f64", DType::F64, vec![3, 4], base_values.clone()),
        (
            "i64",
            DType::I64,
            vec![3, 4],
            (0..12).map(|i| i as f32 - 5.0).collect(),
        ),
        ("transposed", DType::F32, vec![4, 3], transposed),
        ("shared", DType::F32, vec![3, 4], base_values.clone()),
        ("slice", DType::F32, vec![4], base_values[3..7].to_vec()),
        ("param", DType::F32, vec![3, 4], base_values.clone()),
        ("scalar", DType::F32, vec![], vec![2.5]),
    ];
    for (file, format) in [
        ("torchvision-dtypes.pth", Format::Zip),
        ("torchvision-dtypes-legacy.pth", Format::Legacy),
        ("torchvision-dtypes-p5.pth", Format::Zip),
        ("torchvision-dtypes-p5-legacy.pth", Format::Legacy),
    ] {
        let state = torch::read(&read(file), file).unwrap();
        assert_eq!(state.format, format);
        let found: Vec<_> = state
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.dtype, t.shape.clone(), t.values.clone()))
            .collect();
        assert_eq!(found, expected, "{file}");
    }
}

/// Each hostile file of the corpus and words its error must contain.
const HOSTILE: &[(&str, &[&str])] = &[
    ("os-system.pkl", &["os.system", "refusing to load"]),
    ("os-system.pth", &["os.system", "refusing to load"]),
    ("builtins-eval.pkl", &["builtins.eval", "refusing to load"]),
    ("whole-model.pth", &["__main__.AlexNet", "state_dict()"]),
    ("deep-marks.pkl", &["deeper than 64"]),
    ("deep-tuples.pkl", &["deeper than 64"]),
    ("memo-bomb.pkl", &["far larger than the pickle"]),
    (
        "huge-length.pkl",
        &["BINUNICODE", "4294967280 bytes", "remain"],
    ),
    ("huge-length-unicode8.pkl", &["BINUNICODE8", "remain"]),
    ("truncated.pth", &["end-of-central-directory", "truncated"]),
    (
        "truncated-legacy.pth",
        &["storage", "past the end", "truncated"],
    ),
    (
        "entry-sizes.pth",
        &["data/0", "2147483632 bytes", "past the end"],
    ),
    ("deflated.pth", &["unsupported", "compressed (deflate)"]),
    (
        "extent-past-storage.pth",
        &["tensor w", "[1000]", "past its storage of 4"],
    ),
    ("old-tar-format.pth", &["unsupported", "tar layout"]),
];

#[test]
fn hostile_files_are_refused_with_the_problem_named() {
    for (name, words) in HOSTILE {
        let path = format!("pickle-corpus/{name}");
        let bytes = read(&path);
        let message = match torchvision::import(&bytes, name) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e.to_string(),
        };
        println!("{message}");
        assert!(message.starts_with(name), "{name}: {message}");
        for word in *words {
            assert!(message.contains(word), "{name}: {message:?} lacks {word:?}");
        }
    }
}

#[test]
fn hostile_files_are_refused_alike_when_read_from_their_path() {
    for (name, words) in HOSTILE {
        let path = fixtures().join("pickle-corpus").join(name);
        let shown = path.display().to_string();
        let from_path = match torchvision::import_path(&path) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e,
        };
        let message = from_path.to_string();
        assert!(message.starts_with(&shown), "{name}: {message}");
        for word in *words {
            assert!(message.contains(word), "{name}: {message:?} lacks {word:?}");
        }
        // The same error, of the same kind, as from the file's bytes.
        let from_bytes = torchvision::import(&read(&format!("pickle-corpus/{name}")), &shown)
            .err()
            .unwrap();
        assert_eq!(
            std::mem::discriminant(&from_path),
            std::mem::discriminant(&from_bytes),
            "{name}"
        );
        assert_eq!(message, from_bytes.to_string(), "{name}");
    }
}

/// Both readings of every corpus file agree: the same tensors, or the same error.
#[test]
fn every_corpus_file_reads_alike_from_bytes_and_from_its_path() {
    for entry in std::fs::read_dir(fixtures().join("pickle-corpus")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.display().to_string();
        let from_bytes = torch::read(&std::fs::read(&path).unwrap(), &name);
        let from_path = torch::read_file(&path);
        match (from_bytes, from_path) {
            (Ok(a), Ok(b)) => assert_eq!(a.tensors, b.tensors, "{name}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
            (a, b) => panic!("{name}: from bytes {a:?}, from the path {b:?}"),
        }
    }
}

#[test]
fn every_truncation_of_both_layouts_is_an_error_when_read_from_the_path() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for file in ["torchvision-dtypes.pth", "torchvision-dtypes-legacy.pth"] {
        let bytes = read(file);
        let cut = dir.join(format!("truncated-{}-{file}", std::process::id()));
        std::fs::write(&cut, &bytes).unwrap();
        let handle = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
        for len in (0..bytes.len()).rev() {
            handle.set_len(len as u64).unwrap();
            let from_path = torch::read_file(&cut);
            let from_bytes = torch::read(&bytes[..len], &cut.display().to_string());
            match (from_path, from_bytes) {
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{file} cut to {len}"),
                _ => panic!("{file} cut to {len} bytes was accepted"),
            }
        }
        std::fs::remove_file(&cut).unwrap();
    }
}

#[test]
fn every_corpus_file_is_refused_without_panicking() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures().join("pickle-corpus")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        // A corpus file may be any mutant; what matters is an answer, not a panic.
        let _ = torch::read(&bytes, &name);
        let _ = torchvision::import(&bytes, &name);
        seen += 1;
    }
    assert!(seen >= HOSTILE.len());
}

#[test]
fn every_truncation_of_both_layouts_is_an_error() {
    for file in ["torchvision-dtypes.pth", "torchvision-dtypes-legacy.pth"] {
        let bytes = read(file);
        for len in 0..bytes.len() {
            assert!(
                torch::read(&bytes[..len], file).is_err(),
                "{file} cut to {len} bytes was accepted"
            );
        }
    }
}

/// The real torchvision file, when given: `ALEXNET_TORCHVISION_PTH=alexnet-owt-7be5be79.pth
/// cargo test -p alexnet-interop --test torchvision -- --ignored`.
#[test]
#[ignore = "needs torchvision's alexnet-owt-7be5be79.pth (233 MB) named by ALEXNET_TORCHVISION_PTH"]
fn real_torchvision_weights_import_quickly() {
    let path = std::env::var("ALEXNET_TORCHVISION_PTH").expect("ALEXNET_TORCHVISION_PTH");
    let started = std::time::Instant::now();
    let imported = torchvision::import_path(Path::new(&path)).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!("imported {path} in {seconds:.2} s");
    assert_eq!(imported.spec, NetSpec::preset("alexnet-owt").unwrap());
    let count: usize = imported.tensors.iter().map(|t| t.2.len()).sum();
    assert_eq!(count, 61_100_840);
    assert!(seconds < 2.0, "{seconds:.2} s");
}
