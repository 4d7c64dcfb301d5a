//! The on-disk format of a prepared dataset: a directory holding
//!
//! - `dataset.json`, the manifest ([`Manifest`]): format name and version, the
//!   dataset's name, the stored image shape, the classes, the mean image file, the
//!   colour PCA of the training pixels, and per split its image count and shards
//!   (file name, images, byte length, CRC-32);
//! - shard files `<split>-<nnnnn>.shard`: a 32-byte header ([`ShardHeader`]) followed
//!   by fixed-size records `[label: u32 LE][pixels: u8, channels x height x width]`;
//!   or, when the manifest's `encoding` says JPEG, one JPEG stream per image and
//!   an index of them (see [`crate::jpeg`]);
//! - `mean.bin`: the per-pixel mean of the training split, `f32` LE, CHW;
//! - `skipped.txt`, when anything was left out: each source item skipped, a tab, the reason.
//!
//! Fixed-size records make image `i` a multiplication away, so a memory map of the
//! shards is the whole loader's storage; the checksums in the manifest let a reader
//! prove a shard whole before trusting its records.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, dataset_error, io_error};

/// The `format` value of every manifest.
pub const FORMAT: &str = "alexnet-dataset";
/// The manifest version of datasets of raw pixels (all this crate wrote before
/// JPEG shards existed, and still writes for raw ones, so they stay readable by
/// older programs).
pub const VERSION: u32 = 1;
/// The manifest version of datasets of JPEG shards. The version is bumped for them
/// alone so that an older program refuses one at once with "expected version 1,
/// found 2" instead of failing later on shard lengths it cannot make sense of;
/// this crate reads both.
pub const JPEG_VERSION: u32 = 2;
/// The manifest's file name inside a dataset directory.
pub const MANIFEST_FILE: &str = "dataset.json";
/// The mean image's file name inside a dataset directory.
pub const MEAN_FILE: &str = "mean.bin";
/// The list of source files left out, inside a dataset directory.
pub const SKIPPED_FILE: &str = "skipped.txt";

/// The first eight bytes of every shard.
pub const SHARD_MAGIC: [u8; 8] = *b"ALXSHARD";
/// The shard layout version this crate writes and reads.
pub const SHARD_VERSION: u32 = 1;
/// Bytes before the first record of a shard.
pub const SHARD_HEADER_BYTES: usize = 32;
/// Bytes of the label in front of each record's pixels.
pub const LABEL_BYTES: usize = 4;

/// Stored images are at most this tall and wide: larger values in a manifest are
/// taken as corruption rather than trusted to size allocations.
pub const MAX_SIDE: usize = 1 << 15;

/// The manifest, `dataset.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for files this crate writes.
    pub version: u32,
    pub name: String,
    /// Where the images came from, in words (for people; never parsed).
    #[serde(default)]
    pub source: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Classes in label order: label `k` is `classes[k]`.
    pub classes: Vec<ClassInfo>,
    pub mean: FileInfo,
    pub pca: Pca,
    /// Splits in the order they were written (`train` first).
    pub splits: Vec<SplitManifest>,
    /// How the shards store each image. Absent (and not written) for raw pixels,
    /// so manifests from before this field existed read as raw.
    #[serde(default, skip_serializing_if = "Encoding::is_raw")]
    pub encoding: Encoding,
}

/// How a dataset's shards store each image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Encoding {
    /// Fixed-size records of raw CHW pixels: read in place, the fastest.
    #[default]
    Raw,
    /// One baseline JPEG per image, at this quality (1-100): about a tenth of the
    /// disk space of raw pixels, decoded by the loader.
    Jpeg { quality: u8 },
}

impl Encoding {
    /// JPEG at the quality `prepare` uses unless told otherwise.
    pub const DEFAULT_JPEG: Encoding = Encoding::Jpeg { quality: 90 };

    pub fn is_raw(&self) -> bool {
        *self == Encoding::Raw
    }

    /// The manifest version a dataset of this encoding is written with.
    pub fn manifest_version(&self) -> u32 {
        match self {
            Encoding::Raw => VERSION,
            Encoding::Jpeg { .. } => JPEG_VERSION,
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encoding::Raw => write!(f, "raw"),
            Encoding::Jpeg { quality } => write!(f, "jpeg (quality {quality})"),
        }
    }
}

/// One class: a stable identifier (a folder name, a WordNet id, a digit) and a
/// human-readable name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub id: String,
    pub name: String,
}

/// A file of the dataset with its length and checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// The principal components of the training pixels' colour, on the 0-255 scale.
///
/// `eigenvalues` are the variances along each component, largest first;
/// `eigenvectors[i]` is the unit vector of component `i` (a row, indexed by
/// channel). For grey images only component 0 is used: its eigenvalue is the grey
/// variance and its vector `[1, 0, 0]`; the others are zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    pub eigenvalues: [f32; 3],
    pub eigenvectors: [[f32; 3]; 3],
}

/// One split in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitManifest {
    pub name: String,
    pub images: u64,
    pub shards: Vec<ShardInfo>,
}

/// One shard in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub images: u64,
    /// The whole file's length, header included.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole file, header included.
    pub crc32: u32,
}

/// Bytes of one record: the label and the pixels. `None` when the product overflows.
pub fn record_bytes(channels: usize, height: usize, width: usize) -> Option<usize> {
    channels
        .checked_mul(height)?
        .checked_mul(width)?
        .checked_add(LABEL_BYTES)
}

/// Bytes of a shard of `images` records. `None` when the product overflows.
pub fn shard_bytes(record: usize, images: u64) -> Option<u64> {
    (record as u64)
        .checked_mul(images)?
        .checked_add(SHARD_HEADER_BYTES as u64)
}

/// A shard's header: magic, layout version, image shape and record count, little-endian.
///
/// | bytes | field |
/// |---|---|
/// | 0..8 | magic `ALXSHARD` |
/// | 8..12 | version (u32) |
/// | 12..16 | channels (u32) |
/// | 16..20 | height (u32) |
/// | 20..24 | width (u32) |
/// | 24..32 | record count (u64) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub count: u64,
}

impl ShardHeader {
    pub fn to_bytes(&self) -> [u8; SHARD_HEADER_BYTES] {
        self.to_bytes_as(&SHARD_MAGIC, SHARD_VERSION)
    }

    /// Reads a header from the start of `bytes`, checking magic and version.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<ShardHeader> {
        ShardHeader::parse_as(bytes, path, &SHARD_MAGIC, SHARD_VERSION)
    }

    /// The header laid out as above with another magic and version (JPEG shards
    /// share the layout, not the magic).
    pub(crate) fn to_bytes_as(self, magic: &[u8; 8], version: u32) -> [u8; SHARD_HEADER_BYTES] {
        let mut out = [0u8; SHARD_HEADER_BYTES];
        out[0..8].copy_from_slice(magic);
        out[8..12].copy_from_slice(&version.to_le_bytes());
        out[12..16].copy_from_slice(&self.channels.to_le_bytes());
        out[16..20].copy_from_slice(&self.height.to_le_bytes());
        out[20..24].copy_from_slice(&self.width.to_le_bytes());
        out[24..32].copy_from_slice(&self.count.to_le_bytes());
        out
    }

    pub(crate) fn parse_as(
        bytes: &[u8],
        path: &Path,
        magic: &[u8; 8],
        expected_version: u32,
    ) -> Result<ShardHeader> {
        if bytes.len() < SHARD_HEADER_BYTES {
            return Err(dataset_error(
                path,
                format!(
                    "expected a {SHARD_HEADER_BYTES}-byte shard header, found a file of {} bytes",
                    bytes.len()
                ),
            ));
        }
        if bytes[0..8] != *magic {
            return Err(dataset_error(
                path,
                format!(
                    "expected shard magic {:?}, found {:?}",
                    String::from_utf8_lossy(magic),
                    String::from_utf8_lossy(&bytes[0..8])
                ),
            ));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != expected_version {
            return Err(dataset_error(
                path,
                format!("expected shard version {expected_version}, found {version}"),
            ));
        }
        Ok(ShardHeader {
            channels: u32_at(12),
            height: u32_at(16),
            width: u32_at(20),
            count: u64::from_le_bytes(bytes[24..32].try_into().unwrap()),
        })
    }

    /// `[channels, height, width]` as sizes.
    pub fn shape(&self) -> [usize; 3] {
        [
            self.channels as usize,
            self.height as usize,
            self.width as usize,
        ]
    }
}

/// Writes one shard: a placeholder header, the records as they come, then the real
/// header once the count is known.
pub(crate) struct ShardWriter {
    shard: ShardFile,
}

impl ShardWriter {
    pub fn create(path: &Path, shape: [usize; 3]) -> Result<ShardWriter> {
        Ok(ShardWriter {
            shard: ShardFile::create(path, shape)?,
        })
    }

    /// Appends one record; `pixels` must hold exactly one image in CHW order.
    pub fn push(&mut self, label: u32, pixels: &[u8]) -> Result<()> {
        debug_assert_eq!(pixels.len(), self.shard.shape.iter().product::<usize>());
        self.shard.write(&label.to_le_bytes())?;
        self.shard.write(pixels)?;
        self.shard.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.shard.count
    }

    /// Writes the real header, syncs the file, and returns its manifest entry.
    pub fn finish(self) -> Result<ShardInfo> {
        let ([channels, height, width], count) = (self.shard.shape, self.shard.count);
        let header = self.shard.header().to_bytes();
        let info = self.shard.finish(&header)?;
        let record = record_bytes(channels, height, width).expect("shape checked by caller");
        debug_assert_eq!(Some(info.bytes), shard_bytes(record, count));
        Ok(info)
    }
}

/// A shard file being written, raw or JPEG: a placeholder header of zeros, the
/// bytes after it as they come, then the real header once the count of images is
/// known. The CRC-32 of the bytes after the header is kept as they stream past,
/// so finishing never reads the file back.
pub(crate) struct ShardFile {
    pub path: PathBuf,
    file: BufWriter<File>,
    body: crc32fast::Hasher,
    /// The images written so far.
    pub count: u64,
    pub shape: [usize; 3],
}

impl ShardFile {
    pub fn create(path: &Path, shape: [usize; 3]) -> Result<ShardFile> {
        let file = File::create(path).map_err(io_error(path))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&[0u8; SHARD_HEADER_BYTES])
            .map_err(io_error(path))?;
        Ok(ShardFile {
            path: path.to_path_buf(),
            file,
            body: crc32fast::Hasher::new(),
            count: 0,
            shape,
        })
    }

    /// Appends `bytes` to what follows the header.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.body.update(bytes);
        self.file.write_all(bytes).map_err(io_error(&self.path))
    }

    /// The real header's fields: the shape and the images written.
    pub fn header(&self) -> ShardHeader {
        ShardHeader {
            channels: self.shape[0] as u32,
            height: self.shape[1] as u32,
            width: self.shape[2] as u32,
            count: self.count,
        }
    }

    /// Flushes the file, writes the real `header` at the start, syncs, and returns
    /// its manifest entry.
    pub fn finish(self, header: &[u8; SHARD_HEADER_BYTES]) -> Result<ShardInfo> {
        let path = &self.path;
        let mut file = self
            .file
            .into_inner()
            .map_err(|e| io_error(path)(e.into_error()))?;
        let written = (|| {
            file.seek(SeekFrom::Start(0))?;
            file.write_all(header)?;
            file.sync_all()?;
            file.metadata()
        })()
        .map_err(io_error(path))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(header);
        crc.combine(&self.body);
        Ok(ShardInfo {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            images: self.count,
            bytes: written.len(),
            crc32: crc.finalize(),
        })
    }
}

/// The shard file name for shard `index` of `split`.
pub fn shard_file_name(split: &str, index: usize) -> String {
    format!("{split}-{index:05}.shard")
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never
/// sees half a file under the real name.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let io = io_error(path);
    (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })()
    .map_err(io)
}

/// Little-endian bytes of `values`.
pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
