//! Reading a prepared dataset: the manifest and mean image when the dataset is
//! opened, each split's shards (memory-mapped, headers, lengths and checksums
//! checked) when the split is first asked for. Raw records are read in place;
//! JPEG records are decoded into the caller's [`DecodeBuffer`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{Result, config_error, dataset_error, io_error};
pub use crate::format::ClassInfo;
use crate::format::{
    Encoding, FORMAT, JPEG_VERSION, LABEL_BYTES, MANIFEST_FILE, MAX_SIDE, Manifest,
    SHARD_HEADER_BYTES, ShardHeader, ShardInfo, VERSION, record_bytes, shard_bytes,
};
use crate::jpeg::{self, DecodeBuffer, INDEX_ENTRY_BYTES, JpegLayout};

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
    /// How the shards store the images.
    pub encoding: Encoding,
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
            encoding: manifest.encoding,
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
        let encoding = self.info.encoding;
        let shards = entry
            .shards
            .par_iter()
            .map(|shard| open_shard(&self.dir, shard, shape, classes, encoding, verify))
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
                encoding,
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
    if m.version != VERSION && m.version != JPEG_VERSION {
        return fail(format!(
            "expected version {VERSION} (raw pixels) or {JPEG_VERSION} (JPEG shards), found {} \
             (written by another version of this program?)",
            m.version
        ));
    }
    if m.version != m.encoding.manifest_version() {
        return fail(format!(
            "version {} does not go with encoding {}, which is written as version {}",
            m.version,
            m.encoding,
            m.encoding.manifest_version()
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
            if !m.encoding.is_raw() {
                check_jpeg_shard_size(&split.name, shard).map_err(|e| dataset_error(path, e))?;
            } else if shard_bytes(record, shard.images) != Some(shard.bytes) {
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

/// A JPEG shard's length leaves room for its header and index (the streams'
/// lengths are only known from the index, checked when the shard is opened).
fn check_jpeg_shard_size(split: &str, shard: &ShardInfo) -> std::result::Result<(), String> {
    let least = shard
        .images
        .checked_mul(INDEX_ENTRY_BYTES as u64)
        .and_then(|index| index.checked_add(SHARD_HEADER_BYTES as u64));
    match least {
        Some(least) if shard.bytes >= least => Ok(()),
        _ => Err(format!(
            "split '{split}', shard {}: {} JPEG images need more than the {} bytes the manifest gives",
            shard.file, shard.images, shard.bytes
        )),
    }
}

/// True for a name that stays inside the dataset directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

struct Shard {
    map: Mmap,
    count: usize,
    /// For error messages about its records.
    path: PathBuf,
    /// Where a JPEG shard's records are (None for raw records).
    jpeg: Option<JpegLayout>,
}

fn open_shard(
    dir: &Path,
    info: &ShardInfo,
    shape: [usize; 3],
    classes: usize,
    encoding: Encoding,
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
    if !encoding.is_raw() {
        return open_jpeg_shard(map, path, info, shape, classes, verify);
    }
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
        check_crc(&map, &path, info)?;
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
        path,
        jpeg: None,
    })
}

/// The JPEG part of [`open_shard`]: the layout (every offset, length and label) is
/// always checked, the checksum and the streams' markers when `verify`.
fn open_jpeg_shard(
    map: Mmap,
    path: PathBuf,
    info: &ShardInfo,
    shape: [usize; 3],
    classes: usize,
    verify: bool,
) -> Result<Shard> {
    let layout = JpegLayout::check(&map, &path, shape, info.images, classes)?;
    if verify {
        check_crc(&map, &path, info)?;
        layout.check_streams(&map, &path, info.images as usize)?;
    }
    Ok(Shard {
        map,
        count: info.images as usize,
        path,
        jpeg: Some(layout),
    })
}

fn check_crc(map: &[u8], path: &Path, info: &ShardInfo) -> Result<()> {
    let crc = crc32fast::hash(map);
    if crc != info.crc32 {
        return Err(dataset_error(
            path,
            format!(
                "checksum mismatch: expected crc32 {:08x} (from {MANIFEST_FILE}), found {crc:08x}; the file is corrupted",
                info.crc32
            ),
        ));
    }
    Ok(())
}

struct SplitInner {
    name: String,
    shape: [usize; 3],
    /// Bytes of a raw record (unused for JPEG shards).
    record: usize,
    encoding: Encoding,
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

    /// How the split's shards store the images.
    pub fn encoding(&self) -> Encoding {
        self.inner.encoding
    }

    /// Image `i`'s pixels (CHW, 0-255) and label, borrowed from the raw shards.
    /// Panics when `i >= len()`, as slice indexing does, and for a split of JPEG
    /// shards, whose images must be decoded: use [`Split::read`] for those.
    pub fn image(&self, i: usize) -> (&[u8], u32) {
        let (shard, k) = self.locate(i);
        assert!(
            shard.jpeg.is_none(),
            "split '{}' stores JPEG images; read them with Split::read",
            self.inner.name
        );
        self.raw_record(shard, k)
    }

    /// Image `i`'s pixels (CHW, 0-255) and label, whatever the encoding: raw
    /// pixels are borrowed from the shard, JPEG ones decoded into `buf` (reused
    /// from call to call). A record that does not decode into an image of the
    /// split's shape is an error naming the shard and record. Panics when
    /// `i >= len()`.
    pub fn read<'a>(&'a self, i: usize, buf: &'a mut DecodeBuffer) -> Result<(&'a [u8], u32)> {
        let (shard, k) = self.locate(i);
        let Some(layout) = &shard.jpeg else {
            return Ok(self.raw_record(shard, k));
        };
        let (bytes, label) = layout.record(&shard.map, k);
        let pixels = jpeg::decode(bytes, self.inner.shape, buf)
            .map_err(|reason| self.record_error(shard, k, i, reason))?;
        Ok((pixels, label))
    }

    /// [`Split::read`], the CHW pixels written to `out` (one image's bytes)
    /// rather than returned: for a JPEG split, decoded straight into `out`
    /// (a batch) without passing through `buf`'s planes. Returns the label.
    pub fn read_into(&self, i: usize, buf: &mut DecodeBuffer, out: &mut [u8]) -> Result<u32> {
        let (shard, k) = self.locate(i);
        let Some(layout) = &shard.jpeg else {
            let (pixels, label) = self.raw_record(shard, k);
            out.copy_from_slice(pixels);
            return Ok(label);
        };
        let (bytes, label) = layout.record(&shard.map, k);
        jpeg::decode_into(bytes, self.inner.shape, buf, out)
            .map_err(|reason| self.record_error(shard, k, i, reason))?;
        Ok(label)
    }

    /// The error for record `k` of `shard` (image `i` of the split) that did not
    /// decode, naming the file, the record and why.
    fn record_error(&self, shard: &Shard, k: usize, i: usize, reason: String) -> crate::Error {
        dataset_error(
            &shard.path,
            format!(
                "record {k} (image {i} of split '{}'): {reason}",
                self.inner.name
            ),
        )
    }

    /// Image `i`'s label alone (nothing is decoded).
    pub fn label(&self, i: usize) -> u32 {
        let (shard, k) = self.locate(i);
        match &shard.jpeg {
            None => self.raw_record(shard, k).1,
            Some(layout) => layout.entry(&shard.map, k).label,
        }
    }

    /// The shard holding image `i` and the image's place in it.
    fn locate(&self, i: usize) -> (&Shard, usize) {
        let inner = &*self.inner;
        assert!(
            i < self.len(),
            "image index {i} is out of range for split '{}' of {} images",
            inner.name,
            self.len()
        );
        // The shard holding image i: the last one starting at or before i.
        let shard = inner.starts.partition_point(|&s| s <= i) - 1;
        (&inner.shards[shard], i - inner.starts[shard])
    }

    /// Record `k` of a raw shard: pixels and label.
    fn raw_record<'a>(&self, shard: &'a Shard, k: usize) -> (&'a [u8], u32) {
        let record = self.inner.record;
        let at = SHARD_HEADER_BYTES + k * record;
        let rec = &shard.map[at..at + record];
        let label = u32::from_le_bytes(rec[..LABEL_BYTES].try_into().unwrap());
        (&rec[LABEL_BYTES..], label)
    }
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("name", &self.inner.name)
            .field("len", &self.len())
            .field("shape", &self.inner.shape)
            .field("encoding", &self.inner.encoding)
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
