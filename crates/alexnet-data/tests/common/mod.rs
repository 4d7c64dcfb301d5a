//! Helpers shared by the data tests: temporary directories and writers of small
//! source files (IDX, CIFAR) with known contents.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use alexnet_data::{Dataset, PrepareOptions};

/// A real photograph of tests/photos (CC0 / public domain, see photos/README.md).
pub fn photo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/photos")
        .join(name)
}

/// A directory under the system's temporary folder, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "alexnet-data-test-{label}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic generator for test data (not the crate's: tests should
/// not depend on what they test).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    pub fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    pub fn byte(&mut self) -> u8 {
        (self.next() >> 8) as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The bytes of an IDX file of unsigned bytes.
pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Images and labels of one generated IDX split.
pub struct IdxSet {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

/// Writes train and t10k IDX pairs of `rows` x `cols` random images into `dir`,
/// gzipped or raw, and returns what was written.
pub fn write_idx(
    dir: &Path,
    train: usize,
    test: usize,
    rows: u32,
    cols: u32,
    gz: bool,
) -> (IdxSet, IdxSet) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Lcg::new(11);
    let mut one = |set: &str, n: usize| {
        let images = rng.bytes(n * (rows * cols) as usize);
        let labels: Vec<u8> = (0..n).map(|_| (rng.next() % 10) as u8).collect();
        let files = [
            (
                format!("{set}-images-idx3-ubyte"),
                idx_bytes(&[n as u32, rows, cols], &images),
            ),
            (
                format!("{set}-labels-idx1-ubyte"),
                idx_bytes(&[n as u32], &labels),
            ),
        ];
        for (name, bytes) in files {
            if gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
        IdxSet { images, labels }
    };
    let train = one("train", train);
    let test = one("t10k", test);
    (train, test)
}

/// CIFAR records written to a directory: (label, CHW pixels) per split.
pub struct CifarSet {
    pub train: Vec<(u32, Vec<u8>)>,
    pub test: Vec<(u32, Vec<u8>)>,
}

/// Writes CIFAR-10 batches (`batches` training files of `per_batch` records) or a
/// CIFAR-100 pair, with random pixels and labels.
pub fn write_cifar(dir: &Path, hundred: bool, batches: usize, per_batch: usize) -> CifarSet {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Lcg::new(if hundred { 100 } else { 10 });
    let mut records = |n: usize| -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
        let mut bytes = Vec::new();
        let mut items = Vec::new();
        for _ in 0..n {
            let pixels = rng.bytes(3072);
            if hundred {
                let fine = rng.next() % 100;
                bytes.push((fine / 5) as u8);
                bytes.push(fine as u8);
                items.push((fine, pixels.clone()));
            } else {
                let label = rng.next() % 10;
                bytes.push(label as u8);
                items.push((label, pixels.clone()));
            }
            bytes.extend_from_slice(&pixels);
        }
        (bytes, items)
    };
    let mut train = Vec::new();
    if hundred {
        let (bytes, items) = records(batches * per_batch);
        std::fs::write(dir.join("train.bin"), bytes).unwrap();
        train = items;
    } else {
        for k in 1..=batches {
            let (bytes, items) = records(per_batch);
            std::fs::write(dir.join(format!("data_batch_{k}.bin")), bytes).unwrap();
            train.extend(items);
        }
    }
    let (bytes, test) = records(per_batch);
    let name = if hundred {
        "test.bin"
    } else {
        "test_batch.bin"
    };
    std::fs::write(dir.join(name), bytes).unwrap();
    CifarSet { train, test }
}

/// Prepares a small CIFAR-10 dataset into `tmp/data` and opens it.
pub fn cifar_dataset(tmp: &TempDir, train: usize) -> (Dataset, CifarSet) {
    let set = write_cifar(&tmp.join("cifar"), false, 1, train);
    alexnet_data::prepare_cifar(&tmp.join("cifar"), &PrepareOptions::new(&tmp.join("data")))
        .unwrap();
    (Dataset::open(&tmp.join("data")).unwrap(), set)
}

/// Direct per-pixel mean of CHW images.
pub fn direct_mean<'a>(images: impl Iterator<Item = &'a [u8]>, len: usize) -> Vec<f64> {
    let mut sums = vec![0f64; len];
    let mut n = 0;
    for image in images {
        for (s, &v) in sums.iter_mut().zip(image) {
            *s += v as f64;
        }
        n += 1;
    }
    sums.iter().map(|s| s / n as f64).collect()
}

/// Direct channel covariance (population) of CHW images with `channels` channels.
pub fn direct_covariance<'a>(
    images: impl Iterator<Item = &'a [u8]>,
    channels: usize,
) -> Vec<Vec<f64>> {
    let mut samples: Vec<Vec<f64>> = Vec::new();
    for image in images {
        let plane = image.len() / channels;
        for p in 0..plane {
            samples.push((0..channels).map(|c| image[c * plane + p] as f64).collect());
        }
    }
    let n = samples.len() as f64;
    let mean: Vec<f64> = (0..channels)
        .map(|c| samples.iter().map(|s| s[c]).sum::<f64>() / n)
        .collect();
    (0..channels)
        .map(|a| {
            (0..channels)
                .map(|b| {
                    samples
                        .iter()
                        .map(|s| (s[a] - mean[a]) * (s[b] - mean[b]))
                        .sum::<f64>()
                        / n
                })
                .collect()
        })
        .collect()
}
