//! The loader: identical batches whatever the thread count, resuming mid-epoch,
//! subsets, and each augmentation checked against the stored pixels.

mod common;

use std::sync::Arc;

use alexnet_data::{Batch, Dataset, Loader, LoaderConfig, Part, Split, View, holdout};
use common::*;

const CROP: usize = 24;

fn raw(crop: usize) -> View {
    View {
        crop_height: crop,
        crop_width: crop,
        random_crop: false,
        mirror: false,
        pca_std: 0.0,
        subtract_mean: false,
        channel_scale: [1.0; 3],
        ten_crop: false,
    }
}

/// A generated CIFAR-style dataset of `train` training images in a fresh
/// temporary folder (removed when the returned `TempDir` is dropped): the folder,
/// the dataset, its training split and the images written.
fn cifar_train(label: &str, train: usize) -> (TempDir, Dataset, Split, CifarSet) {
    let tmp = TempDir::new(label);
    let (ds, set) = cifar_dataset(&tmp, train);
    let split = ds.split("train").unwrap();
    (tmp, ds, split, set)
}

fn run(ds: &Dataset, split: &Split, config: LoaderConfig) -> Vec<Batch> {
    let mut loader = Loader::new(split.clone(), config, ds.mean_shared(), ds.info()).unwrap();
    let mut batches = Vec::new();
    while let Some(batch) = loader.next_batch().unwrap() {
        batches.push(batch);
    }
    batches
}

/// The crop of stored CHW `pixels` (32x32x3) at (`oy`, `ox`), reflected when `flip`,
/// minus the same crop of `mean` when given.
fn crop_of(pixels: &[u8], mean: Option<&[f32]>, oy: usize, ox: usize, flip: bool) -> Vec<f32> {
    let mut out = Vec::new();
    for c in 0..3 {
        for y in 0..CROP {
            for x in 0..CROP {
                let sx = if flip { ox + CROP - 1 - x } else { ox + x };
                let at = c * 1024 + (oy + y) * 32 + sx;
                out.push(pixels[at] as f32 - mean.map_or(0.0, |m| m[at]));
            }
        }
    }
    out
}

/// Finds the crop offset and reflection that produced `view` from `pixels`
/// (random pixels make the match unique).
fn locate(view: &[f32], pixels: &[u8]) -> (usize, usize, bool) {
    let mut found = Vec::new();
    for oy in 0..=32 - CROP {
        for ox in 0..=32 - CROP {
            for flip in [false, true] {
                if crop_of(pixels, None, oy, ox, flip) == view {
                    found.push((oy, ox, flip));
                }
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found[0]
}

#[test]
fn batches_are_identical_for_every_thread_count() {
    let (_tmp, ds, split, _) = cifar_train("determinism", 37);
    let mut config = LoaderConfig::new(8, View::paper_train(CROP, CROP), 5, 2);
    config.threads = 0;
    let reference = run(&ds, &split, config.clone());
    assert_eq!(reference.len(), 5);
    assert_eq!(reference[4].count, 5, "the last short batch is kept");
    for (threads, queue) in [(1, 1), (2, 4), (3, 2), (7, 16)] {
        config.threads = threads;
        config.queue = queue;
        assert_eq!(
            run(&ds, &split, config.clone()),
            reference,
            "threads {threads}"
        );
    }
    // Every image once per epoch; another epoch, another order and other draws.
    let mut seen: Vec<u32> = reference.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..37).collect::<Vec<u32>>());
    config.epoch = 3;
    let next = run(&ds, &split, config.clone());
    assert_ne!(next[0].indices, reference[0].indices);
    // The labels travel with their images.
    for b in &reference {
        for (i, &index) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[i], split.label(index as usize));
        }
    }
}

#[test]
fn resuming_mid_epoch_gives_the_rest_of_the_same_epoch() {
    let (_tmp, ds, split, _) = cifar_train("resume-loader", 30);
    let mut config = LoaderConfig::new(4, View::paper_train(CROP, CROP), 9, 1);
    let full = run(&ds, &split, config.clone());
    config.start_batch = 3;
    config.threads = 3;
    let rest = run(&ds, &split, config.clone());
    assert_eq!(rest, full[3..].to_vec());
    assert_eq!(rest[0].index, 3);
    config.start_batch = 9;
    assert!(Loader::new(split.clone(), config, ds.mean_shared(), ds.info()).is_err());
}

#[test]
fn subsets_holdout_and_drop_last() {
    let (_tmp, ds, split, _) = cifar_train("subset", 40);
    let (train, held) = holdout(split.len(), 10, 1);
    let mut config = LoaderConfig::new(4, View::centre(CROP, CROP), 1, 0);
    config.indices = Some(Arc::new(held.clone()));
    config.shuffle = false;
    let batches = run(&ds, &split, config.clone());
    let order: Vec<u32> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(order, held, "unshuffled subsets keep their order");

    config.indices = Some(Arc::new(train.clone()));
    config.shuffle = true;
    config.drop_last = true;
    let mut loader =
        Loader::new(split.clone(), config.clone(), ds.mean_shared(), ds.info()).unwrap();
    assert_eq!(loader.batches_per_epoch(), 30 / 4);
    assert_eq!(loader.len(), 7);
    let mut batches: Vec<Batch> = Vec::new();
    while let Some(batch) = loader.next_batch().unwrap() {
        batches.push(batch);
    }
    assert!(batches.iter().all(|b| b.count == 4));
    let mut seen: Vec<u32> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort_unstable();
    assert!(seen.iter().all(|i| train.binary_search(i).is_ok()));
    assert!(seen.iter().all(|i| held.binary_search(i).is_err()));

    config.indices = Some(Arc::new(vec![0, 40]));
    let err = Loader::new(split, config, ds.mean_shared(), ds.info())
        .err()
        .unwrap();
    assert!(err.to_string().contains("found 40"), "{err}");
}

#[test]
fn ten_crop_geometry_and_order() {
    let (_tmp, ds, split, set) = cifar_train("tencrop", 6);
    let mut config = LoaderConfig::new(4, View::ten_crop(CROP, CROP), 0, 0);
    config.shuffle = false;
    let batches = run(&ds, &split, config);
    let per_view = 3 * CROP * CROP;
    let mean = ds.mean();
    let corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)];
    for b in &batches {
        assert_eq!(b.views, 10);
        assert_eq!(b.images.len(), b.count * 10 * per_view);
        for (j, &index) in b.indices.iter().enumerate() {
            let pixels = &set.train[index as usize].1;
            for v in 0..10 {
                let (oy, ox) = corners[v % 5];
                let want = crop_of(pixels, Some(mean), oy, ox, v >= 5);
                let got = &b.images[(j * 10 + v) * per_view..(j * 10 + v + 1) * per_view];
                let worst = want
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-4, "image {index} view {v}: {worst}");
            }
        }
    }
}

#[test]
fn centre_crop_and_mirror_are_exact() {
    let (_tmp, ds, split, set) = cifar_train("mirror", 64);
    let mut config = LoaderConfig::new(64, raw(CROP), 3, 0);
    config.view.mirror = true;
    let batch = run(&ds, &split, config).remove(0);
    let per_view = 3 * CROP * CROP;
    let mut flipped = 0;
    for (j, &index) in batch.indices.iter().enumerate() {
        let view = &batch.images[j * per_view..(j + 1) * per_view];
        let (oy, ox, flip) = locate(view, &set.train[index as usize].1);
        assert_eq!((oy, ox), (4, 4), "centre crop");
        flipped += flip as usize;
    }
    // Reflection with probability one half: 64 draws land in 20..=44 with
    // probability above 0.998.
    assert!((20..=44).contains(&flipped), "{flipped} of 64 reflected");
}

#[test]
fn random_crops_subtract_the_mean_at_the_same_offset() {
    let (_tmp, ds, split, set) = cifar_train("meancrop", 48);
    let mut view = raw(CROP);
    view.random_crop = true;
    view.mirror = true;
    let raw_batch = run(&ds, &split, LoaderConfig::new(48, view, 8, 0)).remove(0);
    view.subtract_mean = true;
    let mean_batch = run(&ds, &split, LoaderConfig::new(48, view, 8, 0)).remove(0);
    assert_eq!(raw_batch.indices, mean_batch.indices);
    let per_view = 3 * CROP * CROP;
    let mut offsets = std::collections::HashSet::new();
    for (j, &index) in raw_batch.indices.iter().enumerate() {
        let pixels = &set.train[index as usize].1;
        let (oy, ox, flip) = locate(&raw_batch.images[j * per_view..(j + 1) * per_view], pixels);
        offsets.insert((oy, ox));
        // Turning mean subtraction on changes no draw: the same crop, minus the
        // mean cropped and reflected the same way.
        let want = crop_of(pixels, Some(ds.mean()), oy, ox, flip);
        let got = &mean_batch.images[j * per_view..(j + 1) * per_view];
        for (a, b) in want.iter().zip(got) {
            assert!((a - b).abs() < 1e-4);
        }
    }
    assert!(offsets.len() > 20, "offsets vary: {}", offsets.len());
}

#[test]
fn pca_colour_shift_is_per_image_and_along_the_components() {
    let (_tmp, ds, split, set) = cifar_train("pca", 400);
    let mut view = raw(32);
    let plain = run(&ds, &split, LoaderConfig::new(400, view, 4, 0)).remove(0);
    view.pca_std = 0.5;
    let shifted = run(&ds, &split, LoaderConfig::new(400, view, 4, 0)).remove(0);
    let info = ds.info();
    let plane = 32 * 32;
    let mut along = [Vec::new(), Vec::new(), Vec::new()];
    for j in 0..400 {
        // Without the shift, the full-size raw view is the stored image.
        let stored: Vec<f32> = set.train[plain.indices[j] as usize]
            .1
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_eq!(
            &plain.images[j * 3 * plane..(j + 1) * 3 * plane],
            &stored[..]
        );
        // One shift per channel, the same at every pixel of the image.
        let mut shift = [0f64; 3];
        for c in 0..3 {
            let base = (j * 3 + c) * plane;
            let d0 = shifted.images[base] - plain.images[base];
            for p in 0..plane {
                let d = shifted.images[base + p] - plain.images[base + p];
                assert!((d - d0).abs() < 1e-3, "image {j} channel {c}: {d} vs {d0}");
            }
            shift[c] = d0 as f64;
        }
        // Its coordinates along the principal components are α_i sqrt(λ_i).
        for i in 0..3 {
            let coord: f64 = (0..3)
                .map(|c| shift[c] * info.pca_eigenvectors[i][c] as f64)
                .sum();
            along[i].push(coord);
        }
    }
    for i in 0..3 {
        let n = along[i].len() as f64;
        let var = along[i].iter().map(|a| a * a).sum::<f64>() / n;
        let want = 0.25 * info.pca_eigenvalues[i] as f64;
        assert!(
            (var / want - 1.0).abs() < 0.25,
            "component {i}: variance {var}, expected {want}"
        );
    }
}

#[test]
fn bad_settings_are_refused_by_name() {
    let (_tmp, ds, split, _) = cifar_train("badcfg", 4);
    let try_new = |config: LoaderConfig| {
        Loader::new(split.clone(), config, ds.mean_shared(), ds.info())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let err = try_new(LoaderConfig::new(2, View::centre(33, 24), 0, 0));
    assert!(err.contains("crop") && err.contains("33x24"), "{err}");
    let mut view = View::ten_crop(CROP, CROP);
    view.random_crop = true;
    let err = try_new(LoaderConfig::new(2, view, 0, 0));
    assert!(err.contains("ten_crop"), "{err}");
    let err = try_new(LoaderConfig::new(0, View::centre(CROP, CROP), 0, 0));
    assert!(err.contains("batch"), "{err}");
    let err = Loader::new(
        split.clone(),
        LoaderConfig::new(2, View::centre(CROP, CROP), 0, 0),
        Arc::new(vec![0.0; 5]),
        ds.info(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("mean") && err.contains("3072"), "{err}");
}

#[test]
fn recycled_buffers_give_the_same_batches() {
    let (_tmp, ds, split, _) = cifar_train("recycle", 20);
    let config = LoaderConfig::new(3, View::paper_train(CROP, CROP), 2, 0);
    let reference = run(&ds, &split, config.clone());
    let mut loader = Loader::new(split, config, ds.mean_shared(), ds.info()).unwrap();
    let mut got = Vec::new();
    while let Some(batch) = loader.next_batch().unwrap() {
        got.push(batch.clone());
        loader.recycle(batch);
    }
    assert_eq!(got, reference);
}

#[test]
fn dropping_a_loader_mid_epoch_stops_its_workers() {
    let (_tmp, ds, split, _) = cifar_train("drop", 50);
    let mut config = LoaderConfig::new(2, View::paper_train(CROP, CROP), 2, 0);
    config.threads = 4;
    config.queue = 1;
    let mut loader = Loader::new(split, config, ds.mean_shared(), ds.info()).unwrap();
    loader.next_batch().unwrap().unwrap();
    drop(loader); // must return: workers blocked on full queues give up
}

/// A stored batch (the images as stored, and where to cut each view) cut on the
/// host gives exactly the batch of finished views: for the paper's training view
/// and for the ten test patches, with the mean subtracted and a channel scale.
#[test]
fn stored_batches_cut_to_the_same_views() {
    let (_tmp, ds, split, _) = cifar_train("stored", 21);
    let mean = ds.mean_shared();
    let scaled = View {
        channel_scale: [0.5, 0.25, 2.0],
        ..View::paper_train(CROP, CROP)
    };
    for view in [
        View::paper_train(CROP, CROP),
        View::ten_crop(CROP, CROP),
        scaled,
    ] {
        let config = LoaderConfig::new(8, view, 5, 1);
        let finished = run(&ds, &split, config.clone());
        let stored = run(
            &ds,
            &split,
            LoaderConfig {
                stored: true,
                ..config
            },
        );
        assert_eq!(finished.len(), stored.len());
        for (f, s) in finished.iter().zip(&stored) {
            assert!(s.images.is_empty() && f.pixels.is_empty());
            assert_eq!(
                (s.labels.clone(), s.indices.clone()),
                (f.labels.clone(), f.indices.clone())
            );
            assert_eq!(s.placements.len(), f.count * view.views());
            assert_eq!(s.pixels.len(), f.count * 3 * 32 * 32);
            let batch = s.stored();
            batch.validate().unwrap();
            let mut cut = vec![0.0; f.images.len()];
            alexnet::input::cut_views(&batch, Some(&mean), &mut cut);
            assert_eq!(cut, f.images, "{view:?}");
        }
    }
}

/// One process's part of each batch (data-parallel training): the parts of
/// every process, put together in rank order, are the whole batch, views and
/// draws included, also when the batch does not divide evenly and for the last
/// short batch; stored batches too. A part beyond the number of parts is refused.
#[test]
fn parts_of_a_batch_put_together_are_the_whole_batch() {
    let (_tmp, ds, split, _) = cifar_train("parts", 23);
    for stored in [false, true] {
        let whole_config = LoaderConfig {
            stored,
            ..LoaderConfig::new(8, View::paper_train(CROP, CROP), 9, 2)
        };
        let whole = run(&ds, &split, whole_config.clone());
        assert_eq!(whole.last().unwrap().count, 23 % 8, "a short last batch");
        for parts in [2, 3] {
            let runs: Vec<Vec<Batch>> = (0..parts)
                .map(|index| {
                    let part = Part { index, parts };
                    run(
                        &ds,
                        &split,
                        LoaderConfig {
                            part,
                            ..whole_config.clone()
                        },
                    )
                })
                .collect();
            for (b, batch) in whole.iter().enumerate() {
                let pieces: Vec<&Batch> = runs.iter().map(|r| &r[b]).collect();
                let counts: Vec<usize> = pieces.iter().map(|p| p.count).collect();
                assert_eq!(counts.iter().sum::<usize>(), batch.count, "{counts:?}");
                assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
                let mut first = 0;
                for piece in &pieces {
                    assert_eq!((piece.first, piece.whole), (first, batch.count));
                    first += piece.count;
                }
                let joined = |f: fn(&Batch) -> Vec<f32>| -> Vec<f32> {
                    pieces.iter().flat_map(|p| f(p)).collect()
                };
                assert_eq!(joined(|p| p.images.clone()), batch.images);
                let bytes: Vec<u8> = pieces.iter().flat_map(|p| p.pixels.clone()).collect();
                assert_eq!(bytes, batch.pixels);
                let labels: Vec<u32> = pieces.iter().flat_map(|p| p.labels.clone()).collect();
                assert_eq!(labels, batch.labels);
                // Stored views are numbered within the part; their cuts are the batch's.
                let placements: Vec<_> = pieces
                    .iter()
                    .flat_map(|p| {
                        p.placements
                            .iter()
                            .map(move |v| (v.image + p.first, v.y, v.x, v.flip))
                    })
                    .collect();
                let expected: Vec<_> = batch
                    .placements
                    .iter()
                    .map(|v| (v.image, v.y, v.x, v.flip))
                    .collect();
                assert_eq!(placements, expected);
            }
        }
    }
    let config = LoaderConfig {
        part: Part { index: 2, parts: 2 },
        ..LoaderConfig::new(8, raw(CROP), 1, 0)
    };
    let err = Loader::new(split, config, ds.mean_shared(), ds.info())
        .err()
        .unwrap();
    assert!(err.to_string().contains("loader part"), "{err}");
}
