//! Preparing MNIST-style IDX files and CIFAR batches, and the dataset format:
//! round trips, statistics against direct computation, overwrite protection,
//! corruption detection.

mod common;

use std::path::Path;

use alexnet_data::format::{MANIFEST_FILE, Manifest, SHARD_HEADER_BYTES};
use alexnet_data::{
    Dataset, Error, IdxNames, PrepareOptions, SourceKind, detect_source, prepare_cifar, prepare_idx,
};
use common::*;

#[test]
fn idx_round_trip_raw_and_gzip() {
    for gz in [false, true] {
        let tmp = TempDir::new("idx");
        let (train, test) = write_idx(&tmp.join("mnist"), 50, 20, 7, 5, gz);
        assert_eq!(detect_source(&tmp.join("mnist")).unwrap(), SourceKind::Idx);
        let summary = prepare_idx(
            &tmp.join("mnist"),
            None,
            &PrepareOptions::new(&tmp.join("data")),
        )
        .unwrap();
        assert_eq!(
            summary.splits,
            vec![("train".to_string(), 50), ("test".to_string(), 20)]
        );
        assert_eq!(summary.skipped, 0);
        assert!(!tmp.join("data.partial").exists());

        let ds = Dataset::open(&tmp.join("data")).unwrap();
        let info = ds.info();
        assert_eq!((info.channels, info.height, info.width), (1, 7, 5));
        assert_eq!(info.name, "mnist");
        assert_eq!(info.classes.len(), 10);
        assert_eq!(info.classes[3].id, "3");
        assert_eq!(info.classes[3].name, "3");
        assert_eq!(ds.split_names(), vec!["train", "test"]);
        for (name, set) in [("train", &train), ("test", &test)] {
            let split = ds.split(name).unwrap();
            assert_eq!(split.len(), set.labels.len());
            for i in 0..split.len() {
                let (pixels, label) = split.image(i);
                assert_eq!(pixels, &set.images[i * 35..(i + 1) * 35]);
                assert_eq!(label, set.labels[i] as u32);
            }
        }

        // Mean image and grey variance against direct sums over the training images.
        let mean = direct_mean(train.images.chunks(35), 35);
        for (a, b) in ds.mean().iter().zip(&mean) {
            assert!((*a as f64 - b).abs() < 1e-4, "{a} vs {b}");
        }
        let cov = direct_covariance(train.images.chunks(35), 1);
        let ev = info.pca_eigenvalues;
        assert!(
            (ev[0] as f64 - cov[0][0]).abs() < 1e-3 * cov[0][0],
            "{ev:?} vs {cov:?}"
        );
        assert_eq!(&ev[1..], &[0.0, 0.0]);
        assert_eq!(info.pca_eigenvectors[0], [1.0, 0.0, 0.0]);
    }
}

#[test]
fn fashion_names_from_flag_or_folder_name() {
    let tmp = TempDir::new("fashion");
    write_idx(&tmp.join("Fashion-MNIST"), 4, 2, 3, 3, true);
    prepare_idx(
        &tmp.join("Fashion-MNIST"),
        None,
        &PrepareOptions::new(&tmp.join("a")),
    )
    .unwrap();
    let a = Dataset::open(&tmp.join("a")).unwrap();
    assert_eq!(a.info().classes[0].name, "T-shirt/top");
    assert_eq!(a.info().classes[9].name, "Ankle boot");
    assert_eq!(a.info().classes[9].id, "9");

    let mut opts = PrepareOptions::new(&tmp.join("b"));
    opts.name = Some("digits".into());
    prepare_idx(&tmp.join("Fashion-MNIST"), Some(IdxNames::Digits), &opts).unwrap();
    let b = Dataset::open(&tmp.join("b")).unwrap();
    assert_eq!(b.info().classes[9].name, "9");
    assert_eq!(b.info().name, "digits");

    write_idx(&tmp.join("plain"), 4, 2, 3, 3, false);
    prepare_idx(
        &tmp.join("plain"),
        Some(IdxNames::Fashion),
        &PrepareOptions::new(&tmp.join("c")),
    )
    .unwrap();
    assert_eq!(
        Dataset::open(&tmp.join("c")).unwrap().info().classes[8].name,
        "Bag"
    );
}

#[test]
fn broken_idx_files_are_refused_with_the_file_named() {
    let tmp = TempDir::new("badidx");
    let dir = tmp.join("src");
    write_idx(&dir, 10, 4, 4, 4, false);
    let out = PrepareOptions::new(&tmp.join("out"));

    // Truncated images: the header promises more than the file holds.
    let path = dir.join("train-images-idx3-ubyte");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let err = prepare_idx(&dir, None, &out).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    assert!(err.contains("expected 176 bytes"), "{err}");

    // A header declaring an absurd size is compared with the real length, not trusted.
    let mut huge = good.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(&path, &huge).unwrap();
    let err = prepare_idx(&dir, None, &out).unwrap_err().to_string();
    assert!(
        err.contains("expected") && err.contains("found 176"),
        "{err}"
    );

    // Wrong element type.
    let mut floats = good.clone();
    floats[2] = 0x0D;
    std::fs::write(&path, &floats).unwrap();
    let err = prepare_idx(&dir, None, &out).unwrap_err().to_string();
    assert!(err.contains("element type 0x08"), "{err}");
    std::fs::write(&path, &good).unwrap();

    // Label out of range, count mismatch.
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx_bytes(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 12]),
    )
    .unwrap();
    let err = prepare_idx(&dir, None, &out).unwrap_err().to_string();
    assert!(err.contains("label 9") && err.contains("found 12"), "{err}");
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx_bytes(&[9], &[0; 9]),
    )
    .unwrap();
    let err = prepare_idx(&dir, None, &out).unwrap_err().to_string();
    assert!(err.contains("expected 10 labels"), "{err}");
    write_idx(&dir, 10, 4, 4, 4, false);

    // A missing file is named.
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).unwrap();
    let err = prepare_idx(&dir, None, &out).unwrap_err().to_string();
    assert!(err.contains("t10k-labels-idx1-ubyte"), "{err}");
    assert!(!tmp.join("out").exists());
}

#[test]
fn cifar10_and_cifar100_round_trip_with_colour_statistics() {
    for hundred in [false, true] {
        let tmp = TempDir::new("cifar");
        let src = tmp.join(if hundred {
            "x/cifar-100-binary"
        } else {
            "x/cifar-10-batches-bin"
        });
        let set = write_cifar(&src, hundred, 2, 15);
        // The folder the archive unpacks into is found from its parent.
        assert_eq!(detect_source(&tmp.join("x")).unwrap(), SourceKind::Cifar);
        let summary =
            prepare_cifar(&tmp.join("x"), &PrepareOptions::new(&tmp.join("data"))).unwrap();
        assert_eq!(summary.splits[0].1, 30);
        assert_eq!(summary.splits[1].1, 15);
        let ds = Dataset::open(&tmp.join("data")).unwrap();
        let info = ds.info();
        assert_eq!((info.channels, info.height, info.width), (3, 32, 32));
        assert_eq!(info.classes.len(), if hundred { 100 } else { 10 });
        if hundred {
            assert_eq!(info.classes[0].name, "apple");
            assert_eq!(info.classes[99].name, "worm");
        } else {
            assert_eq!(info.classes[0].name, "airplane");
        }
        for (name, items) in [("train", &set.train), ("test", &set.test)] {
            let split = ds.split(name).unwrap();
            assert_eq!(split.len(), items.len());
            for (i, (label, pixels)) in items.iter().enumerate() {
                assert_eq!(split.image(i), (&pixels[..], *label));
            }
        }

        let mean = direct_mean(set.train.iter().map(|(_, p)| &p[..]), 3072);
        for (a, b) in ds.mean().iter().zip(&mean) {
            assert!((*a as f64 - b).abs() < 1e-4);
        }
        // The PCA must diagonalise the directly computed covariance: C p_i = λ_i p_i.
        let cov = direct_covariance(set.train.iter().map(|(_, p)| &p[..]), 3);
        let (values, vectors) = (info.pca_eigenvalues, info.pca_eigenvectors);
        assert!(values[0] >= values[1] && values[1] >= values[2]);
        for i in 0..3 {
            for a in 0..3 {
                let cp: f64 = (0..3).map(|b| cov[a][b] * vectors[i][b] as f64).sum();
                let lp = values[i] as f64 * vectors[i][a] as f64;
                assert!(
                    (cp - lp).abs() < 1e-3 * values[0] as f64,
                    "{i} {a}: {cp} vs {lp}"
                );
            }
            let norm: f32 = vectors[i].iter().map(|v| v * v).sum();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        let trace: f64 = (0..3).map(|a| cov[a][a]).sum();
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        assert!((trace - sum).abs() < 1e-3 * trace);
    }
}

#[test]
fn cifar_names_come_from_the_meta_file_when_present() {
    let tmp = TempDir::new("cifarmeta");
    write_cifar(&tmp.join("c"), false, 1, 3);
    let names: Vec<String> = (0..10).map(|k| format!("thing{k}")).collect();
    std::fs::write(tmp.join("c/batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    prepare_cifar(&tmp.join("c"), &PrepareOptions::new(&tmp.join("d"))).unwrap();
    let ds = Dataset::open(&tmp.join("d")).unwrap();
    assert_eq!(ds.info().classes[7].name, "thing7");

    // Why preparing the source now fails.
    let refusal = || {
        prepare_cifar(&tmp.join("c"), &PrepareOptions::new(&tmp.join("e")))
            .unwrap_err()
            .to_string()
    };
    std::fs::write(tmp.join("c/batches.meta.txt"), "a\nb\n").unwrap();
    let err = refusal();
    assert!(
        err.contains("batches.meta.txt") && err.contains("expected 10 class names"),
        "{err}"
    );
    std::fs::remove_file(tmp.join("c/batches.meta.txt")).unwrap();

    std::fs::write(tmp.join("c/test_batch.bin"), vec![0u8; 3000]).unwrap();
    let err = refusal();
    assert!(
        err.contains("test_batch.bin") && err.contains("3073-byte records"),
        "{err}"
    );
}

#[test]
fn a_finished_dataset_is_not_overwritten_without_force() {
    let tmp = TempDir::new("force");
    write_idx(&tmp.join("src"), 6, 3, 2, 2, false);
    let mut opts = PrepareOptions::new(&tmp.join("data"));
    prepare_idx(&tmp.join("src"), None, &opts).unwrap();
    let err = prepare_idx(&tmp.join("src"), None, &opts).unwrap_err();
    assert!(matches!(err, Error::Config { .. }));
    assert!(err.to_string().contains("--force"), "{err}");
    opts.force = true;
    opts.name = Some("again".into());
    prepare_idx(&tmp.join("src"), None, &opts).unwrap();
    assert_eq!(
        Dataset::open(&tmp.join("data")).unwrap().info().name,
        "again"
    );

    // A directory with other things in it is never replaced, force or not.
    std::fs::create_dir_all(tmp.join("busy")).unwrap();
    std::fs::write(tmp.join("busy/notes.txt"), "mine").unwrap();
    let mut opts = PrepareOptions::new(&tmp.join("busy"));
    opts.force = true;
    let err = prepare_idx(&tmp.join("src"), None, &opts).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(tmp.join("busy/notes.txt").exists());
}

#[test]
fn small_shards_split_the_data_and_read_back_in_order() {
    let tmp = TempDir::new("shards");
    let (train, _) = write_idx(&tmp.join("src"), 23, 5, 4, 4, false);
    let mut opts = PrepareOptions::new(&tmp.join("data"));
    opts.shard_bytes = (SHARD_HEADER_BYTES + 5 * 20) as u64; // five 4x4 records a shard
    prepare_idx(&tmp.join("src"), None, &opts).unwrap();
    let manifest: Manifest = serde_json::from_str(
        &std::fs::read_to_string(tmp.join("data").join(MANIFEST_FILE)).unwrap(),
    )
    .unwrap();
    let shards: Vec<u64> = manifest.splits[0].shards.iter().map(|s| s.images).collect();
    assert_eq!(shards, vec![5, 5, 5, 5, 3]);
    assert_eq!(manifest.splits[0].shards[1].file, "train-00001.shard");
    let ds = Dataset::open(&tmp.join("data")).unwrap();
    let split = ds.split("train").unwrap();
    for i in 0..23 {
        assert_eq!(split.image(i).0, &train.images[i * 16..(i + 1) * 16]);
    }
}

#[test]
fn corruption_is_detected_and_named() {
    let tmp = TempDir::new("corrupt");
    write_idx(&tmp.join("src"), 12, 4, 3, 3, false);
    let data = tmp.join("data");
    prepare_idx(&tmp.join("src"), None, &PrepareOptions::new(&data)).unwrap();
    let shard = data.join("train-00000.shard");
    let good = std::fs::read(&shard).unwrap();

    // One flipped pixel bit: the checksum catches it when the split is opened.
    let mut bad = good.clone();
    bad[SHARD_HEADER_BYTES + 4 + 2] ^= 0x10;
    std::fs::write(&shard, &bad).unwrap();
    let ds = Dataset::open(&data).unwrap();
    let err = ds.split("train").unwrap_err().to_string();
    assert!(
        err.contains("train-00000.shard") && err.contains("checksum mismatch"),
        "{err}"
    );
    // The other split is unaffected.
    assert_eq!(ds.split("test").unwrap().len(), 4);
    // Skipping the checksum (for a dataset verified before) still opens it.
    assert_eq!(ds.split_unverified("train").unwrap().len(), 12);

    // Truncation: the length is compared with the manifest before anything is read.
    std::fs::write(&shard, &good[..good.len() - 1]).unwrap();
    let err = split_error(&data, "train");
    assert!(
        err.contains("expected 188 bytes") && err.contains("found 187"),
        "{err}"
    );

    // A damaged header.
    let mut bad = good.clone();
    bad[0] = b'X';
    std::fs::write(&shard, &bad).unwrap();
    let err = Dataset::open(&data)
        .unwrap()
        .verify()
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard magic"), "{err}");
    std::fs::write(&shard, &good).unwrap();
    Dataset::open(&data).unwrap().verify().unwrap();

    // A corrupted mean image, and a manifest that does not add up.
    let mean = std::fs::read(data.join("mean.bin")).unwrap();
    std::fs::write(data.join("mean.bin"), &mean[..8]).unwrap();
    let err = Dataset::open(&data).unwrap_err().to_string();
    assert!(
        err.contains("mean.bin") && err.contains("expected 36 bytes"),
        "{err}"
    );
    std::fs::write(data.join("mean.bin"), &mean).unwrap();
    let text = std::fs::read_to_string(data.join(MANIFEST_FILE)).unwrap();
    // The error opening the dataset once `from` in its manifest reads `to`.
    let opened_with = |from: &str, to: &str| {
        std::fs::write(data.join(MANIFEST_FILE), text.replacen(from, to, 1)).unwrap();
        Dataset::open(&data).unwrap_err().to_string()
    };
    let err = opened_with("\"images\": 12", "\"images\": 13");
    assert!(
        err.contains("dataset.json") && err.contains("split 'train'"),
        "{err}"
    );
    let err = opened_with("\"version\": 1", "\"version\": 7");
    assert!(
        err.contains("expected version 1 (raw pixels) or 2 (JPEG shards), found 7"),
        "{err}"
    );
    let err = opened_with("train-00000.shard", "../elsewhere.shard");
    assert!(err.contains("not a plain file name"), "{err}");
}

/// Why the dataset at `data` cannot open its split `split`.
fn split_error(data: &Path, split: &str) -> String {
    Dataset::open(data)
        .unwrap()
        .split(split)
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_split_names_the_ones_there_are() {
    let tmp = TempDir::new("splitname");
    write_idx(&tmp.join("src"), 3, 2, 2, 2, false);
    prepare_idx(&tmp.join("src"), None, &PrepareOptions::new(&tmp.join("d"))).unwrap();
    let err = split_error(&tmp.join("d"), "val");
    assert!(
        err.contains("'val'") && err.contains("train, test"),
        "{err}"
    );
}
