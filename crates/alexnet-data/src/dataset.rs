//! Reading a prepared dataset: the manifest and mean image when the dataset is
//! opened, each split's shards (memory-mapped, headers, lengths and checksums
//! checked) when the split is first asked for.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{Result, config_error, dataset_error, io_error};
pub use crate::format::ClassInfo;
use crate::format::{
    FORMAT, LABEL_BYTES, MANIFEST_FILE, MAX_SIDE, Manifest, SHARD_HEADER_BYTES, ShardHeader,
    ShardInfo, VERSION, record_bytes, shard_bytes,
};

/// What a dataset holds, from its manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetInfo {
    pub name: String,
    /// Where the images came from, in words.
    pub source: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Classes in label order.
    pub classes: Vec<ClassInfo>,
    /// Variances along the colour principal components (0-255 scale), largest first.
    pub pca_eigenvalues: [f32; 3],
    /// `pca_eigenvectors[i]` is the unit vector of component `i`, indexed by channel.
    pub pca_eigenvectors: [[f32; 3]; 3],
    /// Each split's name and image count, in manifest order.
    pub splits: Vec<(String, usize)>,
}

/// An opened dataset directory.
pub struct Dataset {
    dir: PathBuf,
    info: DatasetInfo,
    manifest: Manifest,
    mean: Arc<Vec<f32>>,
    opened: Mutex<HashMap<String, Split>>,
}

impl Dataset {
    /// Reads and checks the manifest and the mean image. Shards are checked when
    /// their split is first opened with [`Dataset::split`].
    pub fn open(dir: &Path) -> Result<Dataset> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(io_error(&manifest_path))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| dataset_error(&manifest_path, format!("not a readable manifest: {e}")))?;
        check_manifest(&manifest, &manifest_path)?;

        let mean_path = dir.join(&manifest.mean.file);
        let bytes = std::fs::read(&mean_path).map_err(io_error(&mean_path))?;
        let want = (manifest.channels * manifest.height * manifest.width * 4) as u64;
        if bytes.len() as u64 != want || manifest.mean.bytes != want {
            return Err(dataset_error(
                &mean_path,
                format!(
                    "expected {want} bytes (f32 x {}x{}x{}), found {} on disk and {} in {MANIFEST_FILE}",
                    manifest.channels,
                    manifest.height,
                    manifest.width,
                    bytes.len(),
                    manifest.mean.bytes
                ),
            ));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != manifest.mean.crc32 {
            return Err(dataset_error(
                &mean_path,
                format!(
                    "checksum mismatch: expected crc32 {:08x} (from {MANIFEST_FILE}), found {crc:08x}; the file is corrupted",
                    manifest.mean.crc32
                ),
            ));
        }
        let mean: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(at) = mean
            .iter()
            .position(|v| !v.is_finite() || *v < 0.0 || *v > 255.0)
        {
            return Err(dataset_error(
                &mean_path,
                format!(
                    "expected mean values in 0..=255, found {} at index {at}",
                    mean[at]
                ),
            ));
        }

        let info = DatasetInfo {
            name: manifest.name.clone(),
            source: manifest.source.clone(),
            channels: manifest.channels,
            height: manifest.height,
            width: manifest.width,
            classes: manifest.classes.clone(),
            pca_eigenvalues: manifest.pca.eigenvalues,
            pca_eigenvectors: manifest.pca.eigenvectors,
            splits: manifest
                .splits
                .iter()
                .map(|s| (s.name.clone(), s.images as usize))
                .collect(),
        };
        Ok(Dataset {
            dir: dir.to_path_buf(),
            info,
            manifest,
            mean: Arc::new(mean),
            opened: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// The split names, in manifest order (`train` first).
    pub fn split_names(&self) -> Vec<String> {
        self.manifest
            .splits
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// The mean image of the training split, CHW at the stored size, 0-255 scale.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The mean image as a shared buffer, for [`crate::Loader::new`].
    pub fn mean_shared(&self) -> Arc<Vec<f32>> {
        self.mean.clone()
    }

    /// Opens a split: maps its shards and checks each one's header, length,
    /// checksum and labels the first time (later calls return the same split).
    pub fn split(&self, name: &str) -> Result<Split> {
        if let Some(split) = self.opened.lock().unwrap().get(name) {
            return Ok(split.clone());
        }
        let split = self.open_split(name, true)?;
        self.opened
            .lock()
            .unwrap()
            .insert(name.to_string(), split.clone());
        Ok(split)
    }

    /// Opens a split checking headers and lengths but not checksums or labels: for
    /// a large dataset verified before (with [`Dataset::verify`]) whose shards
    /// would otherwise all be read once more at every start.
    pub fn split_unverified(&self, name: &str) -> Result<Split> {
        if let Some(split) = self.opened.lock().unwrap().get(name) {
            return Ok(split.clone());
        }
        self.open_split(name, false)
    }

    /// Opens every split, checking every shard whole.
    pub fn verify(&self) -> Result<()> {
        for name in self.split_names() {
            self.split(&name)?;
        }
        Ok(())
    }

    fn open_split(&self, name: &str, verify: bool) -> Result<Split> {
        let entry = self
            .manifest
            .splits
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                config_error(
                    format!("split '{name}'"),
                    format!(
                        "dataset {} has no such split; it has: {}",
                        self.dir.display(),
                        self.split_names().join(", ")
                    ),
                )
            })?;
        let shape = [self.info.channels, self.info.height, self.info.width];
        let classes = self.info.classes.len();
        let shards = entry
            .shards
            .par_iter()
            .map(|shard| open_shard(&self.dir, shard, shape, classes, verify))
            .collect::<Result<Vec<_>>>()?;
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0usize;
        for shard in &shards {
            starts.push(total);
            total += shard.count;
        }
        starts.push(total);
        Ok(Split {
            inner: Arc::new(SplitInner {
                name: name.to_string(),
                shape,
                record: record_bytes(shape[0], shape[1], shape[2]).unwrap(),
                shards,
                starts,
            }),
        })
    }
}

/// Checks everything in the manifest that can be checked without the shards.
fn check_manifest(m: &Manifest, path: &Path) -> Result<()> {
    let fail = |message: String| Err(dataset_error(path, message));
    if m.format != FORMAT {
        return fail(format!(
            "expected format \"{FORMAT}\", found \"{}\"",
            m.format
        ));
    }
    if m.version != VERSION {
        return fail(format!(
            "expected version {VERSION}, found {} (written by another version of this program?)",
            m.version
        ));
    }
    if m.channels != 1 && m.channels != 3 {
        return fail(format!("expected 1 or 3 channels, found {}", m.channels));
    }
    if m.height == 0 || m.width == 0 || m.height > MAX_SIDE || m.width > MAX_SIDE {
        return fail(format!(
            "expected height and width in 1..={MAX_SIDE}, found {}x{}",
            m.height, m.width
        ));
    }
    if m.classes.is_empty() {
        return fail("expected at least one class, found none".into());
    }
    if m.classes.len() > u32::MAX as usize {
        return fail(format!("too many classes: {}", m.classes.len()));
    }
    let values_ok = m.pca.eigenvalues.iter().all(|v| v.is_finite() && *v >= 0.0)
        && m.pca.eigenvectors.iter().flatten().all(|v| v.is_finite());
    if !values_ok {
        return fail(format!(
            "expected finite PCA eigenvalues >= 0 and finite eigenvectors, found {:?} and {:?}",
            m.pca.eigenvalues, m.pca.eigenvectors
        ));
    }
    if !is_plain_file_name(&m.mean.file) {
        return fail(format!(
            "mean file \"{}\" is not a plain file name inside the dataset",
            m.mean.file
        ));
    }
    let record = record_bytes(m.channels, m.height, m.width).unwrap();
    let mut names = std::collections::HashSet::new();
    for split in &m.splits {
        if !names.insert(&split.name) {
            return fail(format!("split '{}' is listed twice", split.name));
        }
        let mut total = 0u64;
        for shard in &split.shards {
            if !is_plain_file_name(&shard.file) {
                return fail(format!(
                    "split '{}': shard \"{}\" is not a plain file name inside the dataset",
                    split.name, shard.file
                ));
            }
            if shard_bytes(record, shard.images) != Some(shard.bytes) {
                return fail(format!(
                    "split '{}', shard {}: {} images of {record} bytes need {} bytes, but the manifest says {}",
                    split.name,
                    shard.file,
                    shard.images,
                    shard_bytes(record, shard.images).map_or("too many".into(), |b| b.to_string()),
                    shard.bytes
                ));
            }
            total += shard.images;
        }
        if total != split.images {
            return fail(format!(
                "split '{}': expected {} images (its count), found {total} in its shards",
                split.name, split.images
            ));
        }
    }
    Ok(())
}

/// True for a name that stays inside the dataset directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

struct Shard {
    map: Mmap,
    count: usize,
}

fn open_shard(
    dir: &Path,
    info: &ShardInfo,
    shape: [usize; 3],
    classes: usize,
    verify: bool,
) -> Result<Shard> {
    let path = dir.join(&info.file);
    let file = File::open(&path).map_err(io_error(&path))?;
    let len = file.metadata().map_err(io_error(&path))?.len();
    if len != info.bytes {
        return Err(dataset_error(
            &path,
            format!(
                "expected {} bytes ({} images; from {MANIFEST_FILE}), found {len}; the file is truncated or was replaced",
                info.bytes, info.images
            ),
        ));
    }
    // SAFETY: the map is only read. Dataset files are written once, into a separate
    // directory renamed into place when complete, and never modified afterwards;
    // changing or truncating them under a running reader is outside this
    // contract (as for every memory-mapped file format).
    let map = unsafe { Mmap::map(&file) }.map_err(io_error(&path))?;
    let header = ShardHeader::parse(&map, &path)?;
    let found = [
        header.channels as usize,
        header.height as usize,
        header.width as usize,
    ];
    if found != shape || header.count != info.images {
        return Err(dataset_error(
            &path,
            format!(
                "expected header shape {}x{}x{} and {} records, found {}x{}x{} and {} records",
                shape[0],
                shape[1],
                shape[2],
                info.images,
                found[0],
                found[1],
                found[2],
                header.count
            ),
        ));
    }
    let record = record_bytes(shape[0], shape[1], shape[2]).unwrap();
    if verify {
        let crc = crc32fast::hash(&map);
        if crc != info.crc32 {
            return Err(dataset_error(
                &path,
                format!(
                    "checksum mismatch: expected crc32 {:08x} (from {MANIFEST_FILE}), found {crc:08x}; the file is corrupted",
                    info.crc32
                ),
            ));
        }
        for (index, rec) in map[SHARD_HEADER_BYTES..].chunks_exact(record).enumerate() {
            let label = u32::from_le_bytes(rec[..LABEL_BYTES].try_into().unwrap());
            if label as usize >= classes {
                return Err(dataset_error(
                    &path,
                    format!("record {index}: expected a label below {classes}, found {label}"),
                ));
            }
        }
    }
    Ok(Shard {
        map,
        count: info.images as usize,
    })
}

struct SplitInner {
    name: String,
    shape: [usize; 3],
    record: usize,
    shards: Vec<Shard>,
    /// `starts[k]` is the index of shard `k`'s first image; the last entry is the length.
    starts: Vec<usize>,
}

/// One split of a dataset: its images in order, read straight from the mapped
/// shards. Cloning is cheap (the maps are shared).
#[derive(Clone)]
pub struct Split {
    inner: Arc<SplitInner>,
}

impl Split {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn len(&self) -> usize {
        *self.inner.starts.last().unwrap()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[channels, height, width]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        self.inner.shape
    }

    /// Image `i`'s pixels (CHW, 0-255) and label. Panics when `i >= len()`, as
    /// slice indexing does.
    pub fn image(&self, i: usize) -> (&[u8], u32) {
        let inner = &*self.inner;
        assert!(
            i < self.len(),
            "image index {i} is out of range for split '{}' of {} images",
            inner.name,
            self.len()
        );
        // The shard holding image i: the last one starting at or before i.
        let shard = inner.starts.partition_point(|&s| s <= i) - 1;
        let at = SHARD_HEADER_BYTES + (i - inner.starts[shard]) * inner.record;
        let rec = &inner.shards[shard].map[at..at + inner.record];
        let label = u32::from_le_bytes(rec[..LABEL_BYTES].try_into().unwrap());
        (&rec[LABEL_BYTES..], label)
    }

    /// Image `i`'s label alone.
    pub fn label(&self, i: usize) -> u32 {
        self.image(i).1
    }
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("name", &self.inner.name)
            .field("len", &self.len())
            .field("shape", &self.inner.shape)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("dir", &self.dir)
            .field("info", &self.info)
            .finish()
    }
}
