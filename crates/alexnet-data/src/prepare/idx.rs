//! MNIST and Fashion-MNIST: IDX files (`train-images-idx3-ubyte`, `-labels-idx1-`,
//! and the `t10k-` pair for the test split), raw or gzip-compressed, at their
//! native 28x28 grey.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Job, PrepareOptions, Source, Summary, folder_name, read_limited, write_dataset};
use crate::error::{Result, config_error, source_error};
use crate::format::ClassInfo;

/// Which names the ten classes get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxNames {
    /// The digits 0-9 (MNIST).
    Digits,
    /// Fashion-MNIST's ten kinds of clothing.
    Fashion,
}

const FASHION_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// IDX files larger than this (after decompression) are refused: the biggest
/// MNIST-style set (EMNIST) is well under it, and the cap keeps a corrupt or
/// hostile gzip stream from filling memory.
const MAX_IDX_BYTES: u64 = 2 << 30;

/// The path of `<set>-<kind>-idx?-ubyte` in `dir` under the names it is
/// distributed with: `-idx3-` or `.idx3-`, raw or `.gz`.
pub(crate) fn find(dir: &Path, set: &str, kind: &str) -> Option<PathBuf> {
    let dims = if kind == "images" { 3 } else { 1 };
    for sep in ["-", "."] {
        let stem = format!("{set}-{kind}{sep}idx{dims}-ubyte");
        for ext in ["", ".gz"] {
            let path = dir.join(format!("{stem}{ext}"));
            if path.is_file() {
                return Some(path);
            }
        }
    }
    None
}

/// An IDX file of unsigned bytes: its dimensions and data.
pub(crate) struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, raw or gzip (recognised by its magic
/// bytes, not its name), checking that its length matches its dimensions.
pub(crate) fn read_idx(path: &Path) -> Result<Idx> {
    let raw = read_limited(path, MAX_IDX_BYTES)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| source_error(path, format!("not a readable gzip stream: {e}")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(source_error(
                path,
                format!("decompresses to more than {MAX_IDX_BYTES} bytes"),
            ));
        }
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(source_error(
            path,
            "expected an IDX file (magic 00 00 <type> <dims>), found other content",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(source_error(
            path,
            format!(
                "expected IDX element type 0x08 (unsigned byte), found 0x{:02x}",
                bytes[2]
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(source_error(
            path,
            format!(
                "expected a {header}-byte header for {ndims} dimensions, found {} bytes in all",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(header));
    if expected != Some(bytes.len()) {
        return Err(source_error(
            path,
            format!(
                "expected {} bytes for dimensions {dims:?}, found {}",
                expected.map_or("more than can be addressed".into(), |n| n.to_string()),
                bytes.len()
            ),
        ));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

struct IdxSplit {
    file: String,
    images: Vec<u8>,
    labels: Vec<u8>,
    pixels: usize,
}

impl Source for IdxSplit {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn describe(&self, i: usize) -> String {
        format!("{} #{i}", self.file)
    }

    fn load(&self, i: usize, out: &mut [u8]) -> std::result::Result<u32, String> {
        out.copy_from_slice(&self.images[i * self.pixels..(i + 1) * self.pixels]);
        Ok(self.labels[i] as u32)
    }

    fn fingerprint(&self, hash: &mut crc32fast::Hasher) {
        hash.update(self.file.as_bytes());
        hash.update(&self.labels);
        hash.update(&self.images);
    }
}

fn read_pair(dir: &Path, set: &str) -> Result<(IdxSplit, [usize; 2])> {
    let missing = |kind: &str| {
        source_error(
            dir,
            format!(
                "expected {set}-{kind}-idx{}-ubyte (or .gz) here, found none",
                if kind == "images" { 3 } else { 1 }
            ),
        )
    };
    let images_path = find(dir, set, "images").ok_or_else(|| missing("images"))?;
    let labels_path = find(dir, set, "labels").ok_or_else(|| missing("labels"))?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    if images.dims.len() != 3 {
        return Err(source_error(
            &images_path,
            format!(
                "expected 3 dimensions (images, rows, columns), found {:?}",
                images.dims
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(source_error(
            &labels_path,
            format!("expected 1 dimension (labels), found {:?}", labels.dims),
        ));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(source_error(
            &labels_path,
            format!(
                "expected {} labels (one per image in {}), found {}",
                images.dims[0],
                images_path.display(),
                labels.dims[0]
            ),
        ));
    }
    if let Some(at) = labels.data.iter().position(|&l| l >= 10) {
        return Err(source_error(
            &labels_path,
            format!(
                "label {at}: expected a class in 0..=9, found {}",
                labels.data[at]
            ),
        ));
    }
    let (rows, cols) = (images.dims[1], images.dims[2]);
    let file = images_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((
        IdxSplit {
            file,
            images: images.data,
            labels: labels.data,
            pixels: rows * cols,
        },
        [rows, cols],
    ))
}

/// Prepares MNIST or Fashion-MNIST from a directory of IDX files: splits `train`
/// and `test`, classes 0-9, 28x28 grey. Without `names`, Fashion-MNIST's names
/// are used when the directory's path mentions "fashion", the digits otherwise.
pub fn prepare_idx(
    input: &Path,
    names: Option<IdxNames>,
    opts: &PrepareOptions,
) -> Result<Summary> {
    let (train, train_shape) = read_pair(input, "train")?;
    let (test, test_shape) = read_pair(input, "t10k")?;
    if train_shape != test_shape {
        return Err(config_error(
            format!("IDX files in {}", input.display()),
            format!(
                "expected train and test images of one size, found {}x{} and {}x{}",
                train_shape[0], train_shape[1], test_shape[0], test_shape[1]
            ),
        ));
    }
    let canonical = input.canonicalize().unwrap_or_else(|_| input.to_path_buf());
    let names = names.unwrap_or_else(|| {
        if canonical
            .to_string_lossy()
            .to_lowercase()
            .contains("fashion")
        {
            IdxNames::Fashion
        } else {
            IdxNames::Digits
        }
    });
    let classes = (0..10)
        .map(|k| ClassInfo {
            id: k.to_string(),
            name: match names {
                IdxNames::Digits => k.to_string(),
                IdxNames::Fashion => FASHION_NAMES[k].to_string(),
            },
        })
        .collect();
    let job = Job {
        name: opts.name.clone().unwrap_or_else(|| folder_name(input)),
        source: format!(
            "{} IDX files in {}",
            match names {
                IdxNames::Digits => "MNIST",
                IdxNames::Fashion => "Fashion-MNIST",
            },
            canonical.display()
        ),
        shape: [1, train_shape[0], train_shape[1]],
        classes,
        splits: vec![("train".into(), &train), ("test".into(), &test)],
    };
    write_dataset(job, opts)
}
