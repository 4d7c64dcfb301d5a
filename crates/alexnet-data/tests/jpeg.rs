//! Datasets of JPEG shards (`PrepareOptions::encoding`, `alexnet prepare --encoding
//! jpeg`): close to the raw dataset of the same photos, statistics from the pixels
//! the loader sees, deterministic loading, resuming, damage recognised and named;
//! and raw datasets written before the encoding existed still open.

mod common;

use std::path::{Path, PathBuf};

use alexnet_data::format::{MANIFEST_FILE, Manifest, SHARD_HEADER_BYTES};
use alexnet_data::jpeg::{INDEX_ENTRY_BYTES, IndexEntry};
use alexnet_data::{
    Batch, Dataset, DecodeBuffer, Encoding, FolderOptions, Loader, LoaderConfig, PrepareOptions,
    Split, View, prepare_folder,
};
use common::*;
use image::{Rgb, RgbImage};

/// Real photographs (tests/photos, CC0 / public domain) and the class they go in.
const PHOTOS: &[(&str, &str)] = &[
    ("cat", "chelsea.png"),
    ("cat", "chelsea-small.png"),
    ("cat", "chelsea-cmyk.jpg"),
    ("coffee", "coffee.png"),
    ("coins", "coins.png"),
    ("rocket", "rocket.jpg"),
];

/// A photo-like 500x375 image: smooth colour gradients, a few edges and mild noise
/// (ImageNet's typical size; pure noise would be unlike any photograph).
fn generated_photo(seed: u64) -> RgbImage {
    let mut rng = Lcg::new(seed);
    let (a, b, c) = (rng.byte() as f32, rng.byte() as f32, rng.byte() as f32);
    RgbImage::from_fn(500, 375, |x, y| {
        let noise = (rng.next() % 16) as f32;
        let edge = if (x / 60 + y / 45) % 3 == 0 {
            60.0
        } else {
            0.0
        };
        let r = a * x as f32 / 500.0 + noise + edge;
        let g = b * y as f32 / 375.0 + noise;
        let bl = c * (x + y) as f32 / 875.0 + 255.0 - c - edge;
        Rgb([
            r.min(255.0) as u8,
            g.min(255.0) as u8,
            bl.clamp(0.0, 255.0) as u8,
        ])
    })
}

/// A training folder of the real photos and `generated` generated ones (PNG, so
/// the only lossy step is the dataset's own encoding).
fn photo_folder(root: &Path, generated: usize) {
    for (class, file) in PHOTOS {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(photo(file), dir.join(file)).unwrap();
    }
    let dir = root.join("generated");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..generated {
        generated_photo(k as u64)
            .save(dir.join(format!("g{k}.png")))
            .unwrap();
    }
}

fn prepare(root: &Path, out: &Path, encoding: Encoding, shard_bytes: u64) -> Dataset {
    let mut opts = PrepareOptions::new(out);
    opts.encoding = encoding;
    opts.shard_bytes = shard_bytes;
    let summary = prepare_folder(&FolderOptions::new(root), &opts).unwrap();
    assert_eq!(summary.skipped, 0, "{summary}");
    Dataset::open(out).unwrap()
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, m: &Manifest) {
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(m).unwrap(),
    )
    .unwrap();
}

/// Bytes of every shard of a dataset.
fn shard_bytes(dir: &Path) -> u64 {
    manifest(dir)
        .splits
        .iter()
        .flat_map(|s| &s.shards)
        .map(|s| s.bytes)
        .sum()
}

fn mean_abs_diff<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x.into() - y.into()).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Every image of a split, decoded.
fn all_images(split: &Split) -> Vec<(Vec<u8>, u32)> {
    let mut buf = DecodeBuffer::default();
    (0..split.len())
        .map(|i| {
            let (pixels, label) = split.read(i, &mut buf).unwrap();
            (pixels.to_vec(), label)
        })
        .collect()
}

fn batches(ds: &Dataset, split: &Split, view: View, threads: usize) -> Vec<Batch> {
    let mut config = LoaderConfig::new(4, view, 7, 1);
    config.threads = threads;
    let mut loader = Loader::new(split.clone(), config, ds.mean_shared(), ds.info()).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = loader.next_batch().unwrap() {
        out.push(batch);
    }
    out
}

/// The bound on the mean absolute difference (0-255 scale) between an image
/// stored as JPEG at quality 90 and the same image stored raw. Measured: 1.3 to
/// 2.2 on the real photos, 1.8 on the generated ones (their fine noise is what
/// JPEG loses first), 1.6 to 1.9 over the loader's batches; another image of the
/// set is more than 50 away.
const CLOSE: f64 = 3.0;

#[test]
fn jpeg_photos_are_close_to_raw_and_load_deterministically() {
    let tmp = TempDir::new("jpeg-photos");
    let root = tmp.join("photos/train");
    photo_folder(&root, 6);
    let raw = prepare(&root, &tmp.join("raw"), Encoding::Raw, 512 << 20);
    // Small shards, so a split spans several.
    let record = 4 + 3 * 256 * 256;
    let jpeg = prepare(
        &root,
        &tmp.join("jpeg"),
        Encoding::DEFAULT_JPEG,
        32 + 5 * record,
    );
    assert_eq!(jpeg.info().encoding, Encoding::Jpeg { quality: 90 });
    assert_eq!(raw.info().encoding, Encoding::Raw);
    let m = manifest(&tmp.join("jpeg"));
    assert_eq!((m.version, m.splits[0].shards.len()), (2, 3));
    let (raw_bytes, jpeg_bytes) = (
        shard_bytes(&tmp.join("raw")),
        shard_bytes(&tmp.join("jpeg")),
    );
    assert!(
        jpeg_bytes * 4 < raw_bytes,
        "JPEG shards {jpeg_bytes} bytes, raw {raw_bytes}"
    );

    // Image by image: the same labels, and pixels within the bound, while a
    // different image is far outside it (so the bound can fail).
    let (raw_split, jpeg_split) = (raw.split("train").unwrap(), jpeg.split("train").unwrap());
    assert_eq!(jpeg_split.len(), PHOTOS.len() + 6);
    let raw_images = all_images(&raw_split);
    let jpeg_images = all_images(&jpeg_split);
    for (i, ((r, rl), (j, jl))) in raw_images.iter().zip(&jpeg_images).enumerate() {
        assert_eq!(rl, jl);
        assert_eq!(jpeg_split.label(i), *jl);
        let close = mean_abs_diff(r, j);
        assert!(
            close < CLOSE,
            "image {i}: mean absolute difference {close:.2}"
        );
        // (Half the set on: the photos of one class are next to each other.)
        let other = &raw_images[(i + raw_images.len() / 2) % raw_images.len()].0;
        let far = mean_abs_diff(other, j);
        assert!(far > 4.0 * CLOSE, "image {i}: {far:.2} from another image");
    }

    // The mean image is that of the decoded pixels, the ones the loader sees.
    let plane = 3 * 256 * 256;
    let mean = direct_mean(jpeg_images.iter().map(|(p, _)| &p[..]), plane);
    for (a, b) in jpeg.mean().iter().zip(&mean) {
        assert!((*a as f64 - b).abs() < 1e-3);
    }
    assert!(mean_abs_diff(jpeg.mean(), raw.mean()) < CLOSE);
    for (a, b) in jpeg
        .info()
        .pca_eigenvalues
        .iter()
        .zip(&raw.info().pca_eigenvalues)
    {
        assert!((a - b).abs() <= 0.05 * b, "PCA eigenvalues {a} and {b}");
    }

    // The paper's training view (random crop, reflection, PCA colour, mean) on
    // both datasets: the same crops of nearly the same pixels.
    let view = View::paper_train(224, 224);
    let from_raw = batches(&raw, &raw_split, view, 0);
    let from_jpeg = batches(&jpeg, &jpeg_split, view, 0);
    assert_eq!(from_raw.len(), 3);
    for (r, j) in from_raw.iter().zip(&from_jpeg) {
        assert_eq!((&r.labels, &r.indices), (&j.labels, &j.indices));
        let close = mean_abs_diff(&r.images, &j.images);
        assert!(close < CLOSE, "batch {}: {close:.2}", r.index);
    }
    // Decoding in worker threads gives the same batches as in the caller's.
    for threads in [1, 3] {
        assert_eq!(batches(&jpeg, &jpeg_split, view, threads), from_jpeg);
    }
    // Stored batches (as a GPU takes them, decoded straight into the batch)
    // hold each image exactly as `read` decodes it, in the caller's thread and
    // in workers, with the batches' buffers reused.
    for threads in [0, 2] {
        let mut config = LoaderConfig::new(4, view, 7, 1);
        config.threads = threads;
        config.stored = true;
        let mut loader =
            Loader::new(jpeg_split.clone(), config, jpeg.mean_shared(), jpeg.info()).unwrap();
        let mut seen = 0;
        while let Some(batch) = loader.next_batch().unwrap() {
            for (j, &index) in batch.indices.iter().enumerate() {
                let (pixels, label) = &jpeg_images[index as usize];
                assert_eq!(
                    &batch.pixels[j * plane..][..plane],
                    &pixels[..],
                    "image {index}"
                );
                assert_eq!(batch.labels[j], *label);
            }
            seen += batch.count;
            loader.recycle(batch);
        }
        assert_eq!(seen, jpeg_split.len());
    }
    // Raw pixels of a JPEG split cannot be borrowed: `image` says to use `read`.
    let panic = std::panic::catch_unwind(|| jpeg_split.image(0).1).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("Split::read"), "{message}");
}

/// Writes `count` small PNGs in each of three class folders.
fn small_folder(root: &Path, count: usize) {
    for k in 0..3 {
        let dir = root.join(format!("c{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        for j in 0..count {
            let mut rng = Lcg::new((k * 100 + j) as u64);
            let (a, b) = (rng.byte() as u32, rng.byte() as u32);
            RgbImage::from_fn(40, 30, |x, y| {
                Rgb([(a + 4 * x) as u8, (b + 5 * y) as u8, rng.byte() / 8])
            })
            .save(dir.join(format!("{j}.png")))
            .unwrap();
        }
    }
}

#[test]
fn an_interrupted_jpeg_preparation_resumes_to_the_same_dataset() {
    let tmp = TempDir::new("jpeg-resume");
    let root = tmp.join("src");
    small_folder(&root, 5);
    std::fs::write(root.join("c1/bad.png"), b"nope").unwrap();
    let mut folder = FolderOptions::new(&root);
    folder.size = 16;
    let options = |out: &str| {
        let mut opts = PrepareOptions::new(&tmp.join(out));
        opts.encoding = Encoding::Jpeg { quality: 80 };
        opts.shard_bytes = 32 + 4 * (4 + 3 * 16 * 16);
        opts
    };
    prepare_folder(&folder, &options("once")).unwrap();

    let mut opts = options("data");
    opts.stop_after_shards = Some(2);
    let first = prepare_folder(&folder, &opts).unwrap();
    assert!(!first.complete);
    // A shard damaged while the run was stopped is written again, not trusted.
    let partial = tmp.join("data.partial/train-00001.shard");
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[SHARD_HEADER_BYTES + 10] ^= 0x40;
    std::fs::write(&partial, bytes).unwrap();
    opts.stop_after_shards = None;
    let second = prepare_folder(&folder, &opts).unwrap();
    assert!(second.complete, "{second}");
    assert!(second.to_string().contains("jpeg (quality 80)"), "{second}");
    assert_eq!((second.resumed_shards, second.written_shards), (1, 3));
    assert_eq!(second.skipped, 1);
    let (a, b) = (manifest(&tmp.join("once")), manifest(&tmp.join("data")));
    assert_eq!(a.splits, b.splits, "the same shards, byte for byte");
    assert_eq!((a.mean, a.pca), (b.mean, b.pca));

    // Raw work left unfinished is not continued as JPEG (nor the reverse).
    let mut raw = PrepareOptions::new(&tmp.join("other"));
    raw.shard_bytes = opts.shard_bytes;
    raw.stop_after_shards = Some(1);
    prepare_folder(&folder, &raw).unwrap();
    let mut jpeg = raw.clone();
    jpeg.encoding = Encoding::DEFAULT_JPEG;
    jpeg.stop_after_shards = None;
    let summary = prepare_folder(&folder, &jpeg).unwrap();
    assert_eq!(summary.resumed_shards, 0);
    assert_eq!(
        Dataset::open(&tmp.join("other")).unwrap().info().encoding,
        Encoding::DEFAULT_JPEG
    );

    // A quality outside 1..=100 is refused before anything is written.
    let mut bad = options("bad");
    bad.encoding = Encoding::Jpeg { quality: 0 };
    let err = prepare_folder(&folder, &bad).unwrap_err().to_string();
    assert!(
        err.contains("JPEG quality") && err.contains("found 0"),
        "{err}"
    );
}

/// A JPEG dataset of 12 images of 16x16 in one shard, its shard's bytes and path.
fn jpeg_dataset(tmp: &TempDir) -> (PathBuf, PathBuf, Vec<u8>) {
    small_folder(&tmp.join("src"), 4);
    let mut folder = FolderOptions::new(&tmp.join("src"));
    folder.size = 16;
    let mut opts = PrepareOptions::new(&tmp.join("data"));
    opts.encoding = Encoding::DEFAULT_JPEG;
    prepare_folder(&folder, &opts).unwrap();
    let data = tmp.join("data");
    let shard = data.join("train-00000.shard");
    let bytes = std::fs::read(&shard).unwrap();
    (data, shard, bytes)
}

fn index_entry(bytes: &[u8], k: usize) -> IndexEntry {
    let at = bytes.len() - 12 * INDEX_ENTRY_BYTES + k * INDEX_ENTRY_BYTES;
    IndexEntry::from_bytes(bytes[at..at + INDEX_ENTRY_BYTES].try_into().unwrap())
}

fn set_index_entry(bytes: &mut [u8], k: usize, e: IndexEntry) {
    let at = bytes.len() - 12 * INDEX_ENTRY_BYTES + k * INDEX_ENTRY_BYTES;
    bytes[at..at + INDEX_ENTRY_BYTES].copy_from_slice(&e.to_bytes());
}

/// Opening the split fails naming the shard, with `words` in the message.
fn refused(data: &Path, verify: bool, words: &[&str]) {
    let ds = Dataset::open(data).unwrap();
    let err = if verify {
        ds.split("train").unwrap_err()
    } else {
        ds.split_unverified("train").unwrap_err()
    }
    .to_string();
    assert!(err.contains("train-00000.shard"), "{err}");
    for word in words {
        assert!(err.contains(word), "{word:?} not in: {err}");
    }
}

/// Rewrites the manifest's checksum of the shard to match `bytes`, as a foreign
/// tool writing a consistent but wrong dataset would.
fn reseal(data: &Path, bytes: &[u8]) {
    let mut m = manifest(data);
    m.splits[0].shards[0].crc32 = crc32fast::hash(bytes);
    write_manifest(data, &m);
}

#[test]
fn a_damaged_jpeg_shard_is_recognised_and_named() {
    let tmp = TempDir::new("jpeg-damage");
    let (data, shard, good) = jpeg_dataset(&tmp);
    let ds = Dataset::open(&data).unwrap();
    assert_eq!(ds.split("train").unwrap().len(), 12);
    drop(ds);

    // A flipped bit in an image: the checksum catches it.
    let mut bad = good.clone();
    bad[SHARD_HEADER_BYTES + 300] ^= 0x10;
    std::fs::write(&shard, &bad).unwrap();
    refused(&data, true, &["checksum mismatch"]);

    // A cut file: the length is compared with the manifest first.
    std::fs::write(&shard, &good[..good.len() - 1]).unwrap();
    refused(&data, false, &["bytes", "truncated"]);

    // Index entries that do not tile the file, even with a matching checksum.
    let damaged = |k: usize, damage: fn(&mut IndexEntry)| {
        let mut bad = good.clone();
        let mut e = index_entry(&bad, k);
        damage(&mut e);
        set_index_entry(&mut bad, k, e);
        std::fs::write(&shard, &bad).unwrap();
    };
    damaged(3, |e| e.offset += 1);
    refused(&data, false, &["record 3", "the index is damaged"]);
    damaged(11, |e| e.length += 1);
    refused(&data, false, &["record 11", "run past"]);
    damaged(0, |e| e.label = 3);
    refused(&data, false, &["record 0", "label below 3, found 3"]);

    // A record that is not a JPEG stream, in a shard whose checksum matches.
    let mut bad = good.clone();
    let at = index_entry(&bad, 1).offset as usize;
    bad[at] = 0;
    std::fs::write(&shard, &bad).unwrap();
    reseal(&data, &bad);
    refused(&data, true, &["record 1", "FF D8"]);

    // A raw shard where the manifest says JPEG, and the reverse.
    let mut bad = good.clone();
    bad[..8].copy_from_slice(b"ALXSHARD");
    std::fs::write(&shard, &bad).unwrap();
    refused(
        &data,
        false,
        &["expected shard magic \"ALXJPEGS\"", "ALXSHARD"],
    );
    std::fs::write(&shard, &good).unwrap();
    reseal(&data, &good);
    let mut m = manifest(&data);
    m.encoding = Encoding::Raw;
    m.version = 1;
    m.splits[0].shards[0].bytes = 32 + 12 * (4 + 3 * 16 * 16);
    write_manifest(&data, &m);
    let err = Dataset::open(&data).unwrap().split("train").unwrap_err();
    assert!(err.to_string().contains("bytes"), "{err}");
    // A version that does not go with the encoding.
    let mut m = manifest(&data);
    m.encoding = Encoding::DEFAULT_JPEG;
    write_manifest(&data, &m);
    let err = Dataset::open(&data).unwrap_err().to_string();
    assert!(
        err.contains("version 1 does not go with encoding jpeg"),
        "{err}"
    );
}

#[test]
fn an_image_that_does_not_decode_stops_the_epoch_with_an_error() {
    let tmp = TempDir::new("jpeg-decode");
    let (data, shard, good) = jpeg_dataset(&tmp);
    // Record 6's frame header says it has no colour components: the decoder
    // refuses it. The shard is opened without its checksum (as a large dataset
    // verified once would be), so only decoding can notice.
    let mut bad = good.clone();
    let e = index_entry(&bad, 6);
    let record = &mut bad[e.offset as usize..(e.offset + e.length as u64) as usize];
    let sof = record.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    record[sof + 9] = 0;
    std::fs::write(&shard, &bad).unwrap();
    let ds = Dataset::open(&data).unwrap();
    let split = ds.split_unverified("train").unwrap();
    let mut buf = DecodeBuffer::default();
    let err = split.read(6, &mut buf).unwrap_err().to_string();
    assert!(
        err.contains("train-00000.shard")
            && err.contains("record 6")
            && err.contains("JPEG header"),
        "{err}"
    );
    assert!(
        split.read(5, &mut buf).is_ok(),
        "the other records still decode"
    );

    // In split order, batches of 4: batches 0 and 2 are whole, batch 1 fails, in
    // the caller's thread and with workers alike, and for stored batches too.
    for (threads, stored) in [(0, false), (2, false), (0, true), (2, true)] {
        let mut config = LoaderConfig::new(4, View::centre(12, 12), 1, 0);
        config.shuffle = false;
        config.threads = threads;
        config.stored = stored;
        let mut loader = Loader::new(split.clone(), config, ds.mean_shared(), ds.info()).unwrap();
        assert_eq!(loader.next_batch().unwrap().unwrap().index, 0);
        let err = loader.next_batch().unwrap_err().to_string();
        assert!(err.contains("record 6 (image 6 of split 'train')"), "{err}");
        assert!(loader.next_batch().unwrap().is_none(), "the epoch is over");
    }
}

#[test]
fn raw_datasets_keep_their_format_and_old_ones_still_open() {
    // A raw dataset written now has exactly the manifest fields of version 1 (no
    // "encoding"), so programs from before JPEG shards read it too.
    let tmp = TempDir::new("jpeg-old-raw");
    let (ds, _) = cifar_dataset(&tmp, 5);
    assert_eq!(ds.info().encoding, Encoding::Raw);
    let text = std::fs::read_to_string(tmp.join("data").join(MANIFEST_FILE)).unwrap();
    assert!(text.contains("\"version\": 1") && !text.contains("encoding"));

    // A dataset as the first version of this crate wrote it, by hand: a manifest
    // without the field, one raw shard of two 1x2x2 images.
    let old = tmp.join("old");
    std::fs::create_dir_all(&old).unwrap();
    let mut shard = b"ALXSHARD".to_vec();
    for v in [1u32, 1, 2, 2] {
        shard.extend_from_slice(&v.to_le_bytes());
    }
    shard.extend_from_slice(&2u64.to_le_bytes());
    shard.extend_from_slice(&[1, 0, 0, 0, 10, 20, 30, 40, 0, 0, 0, 0, 50, 60, 70, 80]);
    std::fs::write(old.join("train-00000.shard"), &shard).unwrap();
    let mean: Vec<u8> = [30f32, 40.0, 50.0, 60.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(old.join("mean.bin"), &mean).unwrap();
    let manifest = format!(
        r#"{{
  "format": "alexnet-dataset", "version": 1, "name": "old", "source": "by hand",
  "channels": 1, "height": 2, "width": 2,
  "classes": [{{"id": "a", "name": "a"}}, {{"id": "b", "name": "b"}}],
  "mean": {{"file": "mean.bin", "bytes": 16, "crc32": {}}},
  "pca": {{"eigenvalues": [400.0, 0.0, 0.0], "eigenvectors": [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]}},
  "splits": [{{"name": "train", "images": 2, "shards": [
    {{"file": "train-00000.shard", "images": 2, "bytes": {}, "crc32": {}}}]}}]
}}"#,
        crc32fast::hash(&mean),
        shard.len(),
        crc32fast::hash(&shard)
    );
    std::fs::write(old.join(MANIFEST_FILE), manifest).unwrap();
    let ds = Dataset::open(&old).unwrap();
    assert_eq!(ds.info().encoding, Encoding::Raw);
    let split = ds.split("train").unwrap();
    assert_eq!(split.image(1), (&[50u8, 60, 70, 80][..], 0));
    let mut buf = DecodeBuffer::default();
    assert_eq!(
        split.read(0, &mut buf).unwrap(),
        (&[10u8, 20, 30, 40][..], 1)
    );
    let mut config = LoaderConfig::new(2, View::centre(2, 2), 1, 0);
    config.shuffle = false;
    let batch = Loader::new(split, config, ds.mean_shared(), ds.info())
        .unwrap()
        .next_batch()
        .unwrap()
        .unwrap();
    assert_eq!(
        batch.images,
        [-20.0, -20.0, -20.0, -20.0, 20.0, 20.0, 20.0, 20.0]
    );
}
