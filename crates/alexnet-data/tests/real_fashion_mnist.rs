//! The real Fashion-MNIST (Debian package `dataset-fashion-mnist`, installed by
//! `tools/fetch_fashion_mnist.sh`): prepared, read back against the IDX files, its
//! statistics against the published ones, and one epoch through the loader.
//!
//! Looks in `$ALEXNET_FASHION_MNIST`, else `/usr/share/datasets/fashion-mnist/`.
//! Without the data the test says so and passes, unless `ALEXNET_REQUIRE_REAL_DATA=1`
//! or `ALEXNET_FASHION_MNIST` is set: then missing data is a failure.

mod common;

use std::io::Read;
use std::path::PathBuf;

use alexnet_data::{Dataset, Loader, LoaderConfig, PrepareOptions, View, prepare_idx};
use common::TempDir;

const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn fashion_dir() -> Option<PathBuf> {
    let explicit = std::env::var_os("ALEXNET_FASHION_MNIST").map(PathBuf::from);
    let required = std::env::var("ALEXNET_REQUIRE_REAL_DATA").is_ok_and(|v| v == "1");
    let dir = explicit
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let files = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let message = format!(
        "Fashion-MNIST is not in {} (missing {}); install it with tools/fetch_fashion_mnist.sh",
        dir.display(),
        missing.join(", ")
    );
    if required || explicit.is_some() {
        panic!("{message}");
    }
    eprintln!("skipping the real-data test: {message}");
    None
}

fn gunzip_idx(path: PathBuf, header: usize) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out.split_off(header)
}

#[test]
fn fashion_mnist_prepares_reads_back_and_loads() {
    let Some(dir) = fashion_dir() else {
        return;
    };
    let tmp = TempDir::new("fashion-real");
    let summary = prepare_idx(&dir, None, &PrepareOptions::new(&tmp.join("fashion"))).unwrap();
    assert_eq!(
        summary.splits,
        vec![("train".to_string(), 60_000), ("test".to_string(), 10_000)]
    );
    assert_eq!(summary.skipped, 0);

    let ds = Dataset::open(&tmp.join("fashion")).unwrap();
    let info = ds.info();
    assert_eq!(info.name, "fashion-mnist");
    assert_eq!((info.channels, info.height, info.width), (1, 28, 28));
    let names: Vec<&str> = info.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot"
        ]
    );

    // Every image and label as in the IDX files, in order.
    for (split, set, count) in [("train", "train", 60_000), ("test", "t10k", 10_000)] {
        let images = gunzip_idx(dir.join(format!("{set}-images-idx3-ubyte.gz")), 16);
        let labels = gunzip_idx(dir.join(format!("{set}-labels-idx1-ubyte.gz")), 8);
        let split = ds.split(split).unwrap();
        assert_eq!(split.len(), count);
        let mut per_class = [0usize; 10];
        for i in 0..count {
            let (pixels, label) = split.image(i);
            assert_eq!(pixels, &images[i * 784..(i + 1) * 784]);
            assert_eq!(label, labels[i] as u32);
            per_class[label as usize] += 1;
        }
        assert_eq!(per_class, [count / 10; 10], "balanced classes");
    }
    assert_eq!(
        ds.split("train").unwrap().label(0),
        9,
        "the first is an ankle boot"
    );

    // The published statistics: mean 0.2860 and std 0.3530 on the 0-1 scale.
    let mean = ds.mean().iter().map(|&v| v as f64).sum::<f64>() / 784.0;
    assert!((mean - 72.940).abs() < 0.01, "{mean}");
    let std = (info.pca_eigenvalues[0] as f64).sqrt();
    assert!((std - 90.021).abs() < 0.01, "{std}");

    // One training epoch through the loader, with threads, every image once.
    let split = ds.split("train").unwrap();
    let mut config = LoaderConfig::new(128, View::paper_train(24, 24), 1, 0);
    config.threads = 2;
    let mut loader = Loader::new(split, config, ds.mean_shared(), info).unwrap();
    assert_eq!(loader.batches_per_epoch(), 469);
    let mut seen = vec![false; 60_000];
    let mut batches = 0;
    while let Some(batch) = loader.next_batch().unwrap() {
        assert_eq!(batch.images.len(), batch.count * 24 * 24);
        assert!(
            batch
                .images
                .iter()
                .all(|v| v.is_finite() && v.abs() < 300.0)
        );
        for &i in &batch.indices {
            assert!(!seen[i as usize]);
            seen[i as usize] = true;
        }
        batches += 1;
    }
    assert_eq!(batches, 469);
    assert!(seen.iter().all(|&s| s));
}
