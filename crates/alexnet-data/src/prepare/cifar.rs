//! CIFAR-10 and CIFAR-100 binary batches, at their native 32x32 colour.
//!
//! CIFAR-10: `data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`, records
//! of `[label][3072 pixels]`. CIFAR-100: `train.bin` and `test.bin`, records of
//! `[coarse label][fine label][3072 pixels]`; the fine (100-class) label is used.
//! Pixels are stored as the red plane, then green, then blue: already CHW.

use std::path::{Path, PathBuf};

use super::{Job, PrepareOptions, Source, Summary, folder_name, read_limited, write_dataset};
use crate::error::{Result, source_error};
use crate::format::ClassInfo;

const PIXELS: usize = 3 * 32 * 32;
const MAX_BATCH_BYTES: u64 = 1 << 30;

const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const CIFAR100_NAMES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Which CIFAR a directory holds, and where its files are.
pub(crate) struct Layout {
    dir: PathBuf,
    hundred: bool,
    train: Vec<PathBuf>,
    test: PathBuf,
}

/// Finds CIFAR batches in `input` or in the folder the archives unpack to.
pub(crate) fn locate(input: &Path) -> Option<Layout> {
    for dir in [
        input.to_path_buf(),
        input.join("cifar-10-batches-bin"),
        input.join("cifar-100-binary"),
    ] {
        if dir.join("train.bin").is_file() && dir.join("test.bin").is_file() {
            return Some(Layout {
                train: vec![dir.join("train.bin")],
                test: dir.join("test.bin"),
                dir,
                hundred: true,
            });
        }
        if dir.join("test_batch.bin").is_file() {
            let mut train: Vec<PathBuf> = (1..=5)
                .map(|k| dir.join(format!("data_batch_{k}.bin")))
                .filter(|p| p.is_file())
                .collect();
            train.sort();
            if !train.is_empty() {
                return Some(Layout {
                    test: dir.join("test_batch.bin"),
                    dir,
                    hundred: false,
                    train,
                });
            }
        }
    }
    None
}

struct CifarSplit {
    files: Vec<(String, usize)>,
    records: Vec<u8>,
    record: usize,
    label_at: usize,
}

impl Source for CifarSplit {
    fn len(&self) -> usize {
        self.records.len() / self.record
    }

    fn describe(&self, i: usize) -> String {
        let mut i = i;
        for (file, n) in &self.files {
            if i < *n {
                return format!("{file} #{i}");
            }
            i -= n;
        }
        format!("#{i}")
    }

    fn load(&self, i: usize, out: &mut [u8]) -> std::result::Result<u32, String> {
        let rec = &self.records[i * self.record..(i + 1) * self.record];
        out.copy_from_slice(&rec[self.record - PIXELS..]);
        Ok(rec[self.label_at] as u32)
    }

    fn fingerprint(&self, hash: &mut crc32fast::Hasher) {
        for (file, n) in &self.files {
            hash.update(format!("{file} {n};").as_bytes());
        }
        hash.update(&self.records);
    }
}

fn read_batches(paths: &[PathBuf], hundred: bool, classes: usize) -> Result<CifarSplit> {
    let record = if hundred { 2 + PIXELS } else { 1 + PIXELS };
    let label_at = if hundred { 1 } else { 0 };
    let mut records = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        let bytes = read_limited(path, MAX_BATCH_BYTES)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(source_error(
                path,
                format!(
                    "expected a whole number of {record}-byte records ({}), found {} bytes",
                    if hundred {
                        "coarse label, fine label, 3072 pixels"
                    } else {
                        "label, 3072 pixels"
                    },
                    bytes.len()
                ),
            ));
        }
        for (index, rec) in bytes.chunks_exact(record).enumerate() {
            if rec[label_at] as usize >= classes {
                return Err(source_error(
                    path,
                    format!(
                        "record {index}: expected a label below {classes}, found {}",
                        rec[label_at]
                    ),
                ));
            }
        }
        files.push((
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes.len() / record,
        ));
        records.extend_from_slice(&bytes);
    }
    Ok(CifarSplit {
        files,
        records,
        record,
        label_at,
    })
}

/// The class names: from the names file shipped beside the batches when present,
/// else the published lists.
fn class_names(layout: &Layout) -> Result<Vec<String>> {
    let (file, builtin): (&str, &[&str]) = if layout.hundred {
        ("fine_label_names.txt", &CIFAR100_NAMES)
    } else {
        ("batches.meta.txt", &CIFAR10_NAMES)
    };
    let path = layout.dir.join(file);
    if !path.is_file() {
        return Ok(builtin.iter().map(|s| s.to_string()).collect());
    }
    let text = String::from_utf8(read_limited(&path, 1 << 20)?)
        .map_err(|_| source_error(&path, "expected UTF-8 text"))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != builtin.len() {
        return Err(source_error(
            &path,
            format!(
                "expected {} class names, one a line, found {}",
                builtin.len(),
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// Prepares CIFAR-10 or CIFAR-100 (found in `input` or in the folder its archive
/// unpacks to): splits `train` and `test`, 32x32 colour.
pub fn prepare_cifar(input: &Path, opts: &PrepareOptions) -> Result<Summary> {
    let layout = locate(input).ok_or_else(|| {
        source_error(
            input,
            "expected CIFAR-10 batches (data_batch_N.bin, test_batch.bin) or CIFAR-100 \
             (train.bin, test.bin), here or in cifar-10-batches-bin/ or cifar-100-binary/",
        )
    })?;
    let names = class_names(&layout)?;
    let classes: Vec<ClassInfo> = names
        .iter()
        .map(|n| ClassInfo {
            id: n.clone(),
            name: n.clone(),
        })
        .collect();
    let train = read_batches(&layout.train, layout.hundred, classes.len())?;
    let test = read_batches(
        std::slice::from_ref(&layout.test),
        layout.hundred,
        classes.len(),
    )?;
    let kind = if layout.hundred {
        "CIFAR-100"
    } else {
        "CIFAR-10"
    };
    let job = Job {
        name: opts.name.clone().unwrap_or_else(|| {
            let name = folder_name(input);
            if name == "cifar-10-batches-bin" || name == "cifar-100-binary" || name == "dataset" {
                kind.to_lowercase()
            } else {
                name
            }
        }),
        source: format!("{kind} binary batches in {}", layout.dir.display()),
        shape: [3, 32, 32],
        classes,
        splits: vec![("train".into(), &train), ("test".into(), &test)],
    };
    write_dataset(job, opts)
}
