//! Preparing datasets from their sources: MNIST-style IDX files, CIFAR binary
//! batches, and folders of photographs (`root/<class>/*.jpg`).
//!
//! Every source goes through the same writer. Images are loaded in parallel
//! (rayon), written in source order into shards, and the training split's mean
//! image and colour PCA are accumulated on the way. Everything is written into
//! `<out>.partial/`, which is renamed to `<out>` only when complete, so a finished
//! dataset directory is always whole. Completed shards are recorded in a journal in
//! the partial directory: rerunning the same preparation after an interruption
//! checks them and carries on after the last one.
//!
//! With [`Encoding::Jpeg`] each image is stored as a JPEG stream instead of raw
//! pixels (after the same resizing); the training statistics are then taken from
//! the decoded JPEGs, the pixels the loader will see.

mod cifar;
mod folder;
mod idx;

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use cifar::prepare_cifar;
pub use folder::{FolderOptions, load_photo, photo_from_bytes, prepare_folder};
pub use idx::{IdxNames, prepare_idx};

use crate::error::{Result, config_error, io_error, source_error};
use crate::format::{
    self, ClassInfo, Encoding, FORMAT, FileInfo, LABEL_BYTES, MANIFEST_FILE, MAX_SIDE, MEAN_FILE,
    Manifest, SHARD_HEADER_BYTES, SKIPPED_FILE, ShardHeader, ShardInfo, ShardWriter, SplitManifest,
    VERSION, record_bytes,
};
use crate::jpeg::{self, DecodeBuffer, JpegLayout, JpegShardWriter};
use crate::stats::{ImageMoments, PixelStats};

/// Where and how to write a prepared dataset.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// The dataset directory to create. The work happens in `<out>.partial`, which
    /// this crate owns: a leftover one from different work is deleted.
    pub out: PathBuf,
    /// Replace a finished dataset already at `out`.
    pub force: bool,
    /// The dataset's name (default: the source folder's name).
    pub name: Option<String>,
    /// The largest shard file to write, in bytes (at least one image per shard).
    pub shard_bytes: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Write at most this many new shards, then stop and leave `<out>.partial`
    /// for a later run to continue (for time-boxed jobs).
    pub stop_after_shards: Option<usize>,
    /// How to store each image: raw pixels (the default, fastest to read) or JPEG
    /// (about a tenth of the disk space; the loader decodes it). A JPEG shard holds
    /// as many images as a raw one of `shard_bytes` would, so it is smaller.
    pub encoding: Encoding,
}

impl PrepareOptions {
    pub fn new(out: &Path) -> PrepareOptions {
        PrepareOptions {
            out: out.to_path_buf(),
            force: false,
            name: None,
            shard_bytes: 512 << 20,
            progress: false,
            stop_after_shards: None,
            encoding: Encoding::Raw,
        }
    }
}

/// What a preparation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub out: PathBuf,
    pub name: String,
    /// `[channels, height, width]` of the stored images.
    pub shape: [usize; 3],
    /// How they are stored.
    pub encoding: Encoding,
    pub classes: usize,
    /// Each split's name and image count.
    pub splits: Vec<(String, u64)>,
    /// Source items left out (listed with their reasons in `skipped.txt`).
    pub skipped: u64,
    /// Shards found complete from an interrupted earlier run and kept.
    pub resumed_shards: usize,
    /// Shards written by this run.
    pub written_shards: usize,
    /// False when `stop_after_shards` stopped the run: the dataset is not at `out`
    /// yet, and running the same preparation again continues it.
    pub complete: bool,
    pub seconds: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.complete {
            return write!(
                f,
                "stopped after {} shards, as asked; run the same command again to continue ({:.1} s)",
                self.written_shards, self.seconds
            );
        }
        let splits: Vec<String> = self
            .splits
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        write!(
            f,
            "prepared {} in {}: {} images ({}), {}x{}x{}{}, {} classes; {} skipped",
            self.name,
            self.out.display(),
            self.splits.iter().map(|(_, n)| n).sum::<u64>(),
            splits.join(", "),
            self.shape[0],
            self.shape[1],
            self.shape[2],
            match self.encoding {
                Encoding::Raw => String::new(),
                jpeg => format!(" as {jpeg}"),
            },
            self.classes,
            self.skipped
        )?;
        if self.skipped > 0 {
            write!(f, " (see {SKIPPED_FILE})")?;
        }
        if self.resumed_shards > 0 {
            write!(
                f,
                "; {} shards kept from an earlier run",
                self.resumed_shards
            )?;
        }
        write!(f, "; {:.1} s", self.seconds)
    }
}

/// The kinds of source `prepare` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// MNIST or Fashion-MNIST IDX files.
    Idx,
    /// CIFAR-10 or CIFAR-100 binary batches.
    Cifar,
    /// A folder of class folders of photographs.
    Folder,
}

/// Guesses what kind of source a directory holds from the files in it.
pub fn detect_source(input: &Path) -> Result<SourceKind> {
    if !input.is_dir() {
        return Err(source_error(
            input,
            "expected a directory (of IDX files, CIFAR batches or class folders)",
        ));
    }
    if idx::find(input, "train", "images").is_some() {
        return Ok(SourceKind::Idx);
    }
    if cifar::locate(input).is_some() {
        return Ok(SourceKind::Cifar);
    }
    Ok(SourceKind::Folder)
}

/// A source of one split's images: `len()` items, each loaded (decoded, resized,
/// converted to CHW) into a caller-provided buffer, or refused with a reason.
pub(crate) trait Source: Sync {
    fn len(&self) -> usize;
    /// What to call item `i` in `skipped.txt` (a path, or file and index).
    fn describe(&self, i: usize) -> String;
    /// Writes item `i`'s pixels (CHW) into `out` and returns its label, or says
    /// why the item cannot be used.
    fn load(&self, i: usize, out: &mut [u8]) -> std::result::Result<u32, String>;
    /// Feeds everything that decides the output (item names and labels) to `hash`,
    /// so a resumed run can tell whether it continues the same work.
    fn fingerprint(&self, hash: &mut crc32fast::Hasher);
}

/// Everything the writer needs to know about a dataset to be written.
pub(crate) struct Job<'a> {
    pub name: String,
    pub source: String,
    pub shape: [usize; 3],
    pub classes: Vec<ClassInfo>,
    /// Splits in writing order; the first is the training split whose statistics
    /// go into the mean image and PCA.
    pub splits: Vec<(String, &'a dyn Source)>,
}

/// One skipped item, in the journal and in `skipped.txt`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Skipped {
    item: String,
    reason: String,
}

/// One finished shard in the journal: which split and input range it covers and
/// what it holds (`None` when every item in its range was skipped).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DoneShard {
    split: String,
    index: usize,
    shard: Option<ShardInfo>,
    skipped: Vec<Skipped>,
}

/// The record of progress kept in `<out>.partial/progress.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Journal {
    fingerprint: String,
    done: Vec<DoneShard>,
}

const JOURNAL_FILE: &str = "progress.json";

/// The directory a preparation writes into before it is complete.
pub fn partial_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Writes a whole dataset: shards, mean image, manifest, skipped list; then moves
/// the partial directory into place.
pub(crate) fn write_dataset(job: Job<'_>, opts: &PrepareOptions) -> Result<Summary> {
    let started = Instant::now();
    check_shape(&job, opts)?;
    let out = &opts.out;
    check_output(out, opts.force)?;
    let partial = partial_dir(out);
    let [channels, height, width] = job.shape;
    let record = record_bytes(channels, height, width).unwrap();
    let per_shard = ((opts.shard_bytes.saturating_sub(SHARD_HEADER_BYTES as u64)) / record as u64)
        .max(1) as usize;
    let mut journal = open_journal(&partial, fingerprint(&job, opts, per_shard))?;
    let total: usize = job.splits.iter().map(|(_, s)| s.len()).sum();
    let bar = progress_bar(total, opts.progress);
    let mut stats = PixelStats::new(channels, height, width);
    let progress = ShardWork {
        partial: &partial,
        layout: ShardLayout {
            shape: job.shape,
            encoding: opts.encoding,
            classes: job.classes.len(),
        },
        per_shard,
        stop_after: opts.stop_after_shards,
        bar: &bar,
    }
    .write_splits(&job, &mut journal, &mut stats)?;
    bar.finish_and_clear();
    let summary = |splits: Vec<(String, u64)>, skipped: usize, complete: bool| Summary {
        out: out.clone(),
        name: job.name.clone(),
        shape: job.shape,
        encoding: opts.encoding,
        classes: job.classes.len(),
        splits,
        skipped: skipped as u64,
        resumed_shards: progress.resumed,
        written_shards: progress.written,
        complete,
        seconds: started.elapsed().as_secs_f64(),
    };
    if progress.stopped {
        return Ok(summary(Vec::new(), 0, false));
    }

    let skipped = skipped_in_order(&job, &journal);
    if stats.images() == 0 {
        write_skipped(&partial, &skipped)?;
        return Err(source_error(
            Path::new(&job.source),
            format!(
                "no usable images in the {} split ({} skipped; see {})",
                job.splits[0].0,
                skipped.len(),
                partial.join(SKIPPED_FILE).display()
            ),
        ));
    }
    let manifest = finish(&job, opts, &partial, &stats, progress.splits, &skipped)?;
    let splits = manifest
        .splits
        .iter()
        .map(|s| (s.name.clone(), s.images))
        .collect();
    Ok(summary(splits, skipped.len(), true))
}

/// Refuses an image shape or JPEG quality outside what the format holds.
fn check_shape(job: &Job<'_>, opts: &PrepareOptions) -> Result<()> {
    let [channels, height, width] = job.shape;
    if !(channels == 1 || channels == 3)
        || height == 0
        || width == 0
        || height > MAX_SIDE
        || width > MAX_SIDE
    {
        return Err(config_error(
            "image shape",
            format!(
                "expected 1 or 3 channels and sides in 1..={MAX_SIDE}, found {channels}x{height}x{width}"
            ),
        ));
    }
    if let Encoding::Jpeg { quality } = opts.encoding
        && !(1..=100).contains(&quality)
    {
        return Err(config_error(
            "JPEG quality",
            format!("expected 1..=100, found {quality}"),
        ));
    }
    Ok(())
}

/// What identifies a preparation: the inputs and every setting that changes the
/// bytes written, so a journal from different work is never continued. (The
/// encoding is added only when it is not raw, so raw work keeps the fingerprint
/// it had.)
fn fingerprint(job: &Job<'_>, opts: &PrepareOptions, per_shard: usize) -> String {
    let [channels, height, width] = job.shape;
    let mut hash = crc32fast::Hasher::new();
    hash.update(
        format!(
            "{FORMAT} {VERSION} {channels}x{height}x{width} per-shard {per_shard} classes {:?}",
            job.classes
        )
        .as_bytes(),
    );
    if !opts.encoding.is_raw() {
        hash.update(format!(" encoding {:?}", opts.encoding).as_bytes());
    }
    for (name, source) in &job.splits {
        hash.update(format!("split {name} {} items;", source.len()).as_bytes());
        source.fingerprint(&mut hash);
    }
    format!("{:08x}", hash.finalize())
}

/// The journal of the shards already written into `partial`, if it records the
/// same work; otherwise a fresh, empty `partial` directory and journal.
fn open_journal(partial: &Path, fingerprint: String) -> Result<Journal> {
    let journal_path = partial.join(JOURNAL_FILE);
    let mut journal = match std::fs::read_to_string(&journal_path) {
        Ok(text) => match serde_json::from_str::<Journal>(&text) {
            Ok(j) if j.fingerprint == fingerprint => j,
            _ => Journal::default(),
        },
        Err(_) => Journal::default(),
    };
    if journal.done.is_empty() {
        if partial.exists() {
            std::fs::remove_dir_all(partial).map_err(io_error(partial))?;
        }
        std::fs::create_dir_all(partial).map_err(io_error(partial))?;
    }
    journal.fingerprint = fingerprint;
    Ok(journal)
}

fn progress_bar(total: usize, shown: bool) -> ProgressBar {
    let bar = if shown {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>6} [{bar:32}] {human_pos}/{human_len} images, {per_sec}, ETA {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar
}

/// What writing the splits' shards did.
struct Written {
    splits: Vec<SplitManifest>,
    resumed: usize,
    written: usize,
    /// `stop_after_shards` was reached before the end.
    stopped: bool,
}

/// Where and how shards are written.
struct ShardWork<'a> {
    partial: &'a Path,
    layout: ShardLayout,
    per_shard: usize,
    stop_after: Option<usize>,
    bar: &'a ProgressBar,
}

impl ShardWork<'_> {
    /// Writes every split's shards in order, keeping those the journal records as
    /// done (and still whole), and records each new one in the journal.
    fn write_splits(
        &self,
        job: &Job<'_>,
        journal: &mut Journal,
        stats: &mut PixelStats,
    ) -> Result<Written> {
        let journal_path = self.partial.join(JOURNAL_FILE);
        let (partial, layout, bar, per_shard) =
            (self.partial, &self.layout, self.bar, self.per_shard);
        let mut manifest_splits = Vec::new();
        let mut resumed = 0;
        let mut written = 0;
        let mut stopped = false;
        'splits: for (split_index, (split_name, source)) in job.splits.iter().enumerate() {
            bar.set_prefix(split_name.clone());
            let train = split_index == 0;
            let mut shards = Vec::new();
            let mut images = 0u64;
            for (index, first) in (0..source.len()).step_by(per_shard).enumerate() {
                let range = first..(first + per_shard).min(source.len());
                let done = journal
                    .done
                    .iter()
                    .find(|d| d.split == *split_name && d.index == index)
                    .cloned();
                let done = match done {
                    Some(done) if resume_shard(partial, &done, layout, train, stats)? => {
                        resumed += 1;
                        bar.inc(range.len() as u64);
                        done
                    }
                    _ => {
                        if self.stop_after.is_some_and(|n| written >= n) {
                            stopped = true;
                            break 'splits;
                        }
                        written += 1;
                        let done = write_shard(
                            partial,
                            split_name,
                            index,
                            *source,
                            range,
                            layout,
                            train.then_some(&mut *stats),
                            bar,
                        )?;
                        journal
                            .done
                            .retain(|d| !(d.split == *split_name && d.index == index));
                        journal.done.push(done.clone());
                        let text = serde_json::to_string(&journal).unwrap();
                        format::write_atomically(&journal_path, text.as_bytes())?;
                        done
                    }
                };
                if let Some(shard) = done.shard {
                    images += shard.images;
                    shards.push(shard);
                }
            }
            manifest_splits.push(SplitManifest {
                name: split_name.clone(),
                images,
                shards,
            });
        }
        Ok(Written {
            splits: manifest_splits,
            resumed,
            written,
            stopped,
        })
    }
}

/// Every skipped file, split by split, shard by shard.
fn skipped_in_order(job: &Job<'_>, journal: &Journal) -> Vec<Skipped> {
    job.splits
        .iter()
        .flat_map(|(name, _)| {
            let mut done: Vec<&DoneShard> =
                journal.done.iter().filter(|d| d.split == *name).collect();
            done.sort_by_key(|d| d.index);
            done.into_iter().flat_map(|d| d.skipped.iter().cloned())
        })
        .collect()
}

/// Writes the mean image, the skipped list and the manifest, then moves the
/// finished directory to `--out`.
fn finish(
    job: &Job<'_>,
    opts: &PrepareOptions,
    partial: &Path,
    stats: &PixelStats,
    splits: Vec<SplitManifest>,
    skipped: &[Skipped],
) -> Result<Manifest> {
    let [channels, height, width] = job.shape;
    let out = &opts.out;
    let journal_path = partial.join(JOURNAL_FILE);
    let mean = stats.mean_image();
    let mean_bytes = format::f32_bytes(&mean);
    let mean_path = partial.join(MEAN_FILE);
    format::write_atomically(&mean_path, &mean_bytes)?;
    write_skipped(partial, skipped)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: opts.encoding.manifest_version(),
        name: job.name.clone(),
        source: job.source.clone(),
        channels,
        height,
        width,
        classes: job.classes.clone(),
        mean: FileInfo {
            file: MEAN_FILE.into(),
            bytes: mean_bytes.len() as u64,
            crc32: crc32fast::hash(&mean_bytes),
        },
        pca: stats.pca(),
        splits,
        encoding: opts.encoding,
    };
    let text = serde_json::to_string_pretty(&manifest).unwrap() + "\n";
    format::write_atomically(&partial.join(MANIFEST_FILE), text.as_bytes())?;
    std::fs::remove_file(&journal_path).map_err(io_error(&journal_path))?;

    if out.exists() {
        // check_output allowed this: an empty directory, or a finished dataset with --force.
        std::fs::remove_dir_all(out).map_err(io_error(out))?;
    }
    std::fs::rename(partial, out).map_err(io_error(out))?;

    Ok(manifest)
}

/// Refuses to write over anything but nothing, an empty directory, or (with
/// `force`) a finished dataset: a mistyped `--out` must never delete unrelated files.
fn check_output(out: &Path, force: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let what = format!("output {}", out.display());
    if !out.is_dir() {
        return Err(config_error(what, "exists and is not a directory"));
    }
    if out.join(MANIFEST_FILE).exists() {
        if force {
            return Ok(());
        }
        return Err(config_error(
            what,
            "a prepared dataset is already there; pass --force to replace it",
        ));
    }
    let empty = std::fs::read_dir(out)
        .map_err(io_error(out))?
        .next()
        .is_none();
    if empty {
        Ok(())
    } else {
        Err(config_error(
            what,
            "exists, is not empty and holds no dataset; choose another directory",
        ))
    }
}

/// Lists the skipped items in `skipped.txt`; writes nothing when there are none.
fn write_skipped(dir: &Path, skipped: &[Skipped]) -> Result<()> {
    if skipped.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for s in skipped {
        // One line per item: the item, a tab, the reason (tabs and newlines in
        // either are flattened so the file stays one item per line).
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        text.push_str(&format!("{}\t{}\n", clean(&s.item), clean(&s.reason)));
    }
    format::write_atomically(&dir.join(SKIPPED_FILE), text.as_bytes())
}

/// Items decoded per parallel round: enough to keep every thread busy, few enough
/// that the images waiting to be written stay a small amount of memory.
fn chunk_items(image_bytes: usize) -> usize {
    let threads = rayon::current_num_threads();
    let by_memory = (256 << 20) / image_bytes.max(1);
    (threads * 16).clamp(threads, by_memory.max(threads))
}

/// What decides a shard's bytes besides its items.
struct ShardLayout {
    shape: [usize; 3],
    encoding: Encoding,
    classes: usize,
}

/// One source item ready to be written: its record (raw pixels or a JPEG stream)
/// and, when statistics are wanted, the moments of the pixels the loader will see.
struct Ready {
    label: u32,
    record: Vec<u8>,
    /// The decoded JPEG (for the statistics); raw records are their own pixels.
    decoded: Option<Vec<u8>>,
    moments: Option<ImageMoments>,
}

impl Ready {
    /// The pixels the loader will see.
    fn pixels(&self) -> &[u8] {
        self.decoded.as_deref().unwrap_or(&self.record)
    }
}

thread_local! {
    /// Each preparing thread's scratch for decoding the JPEGs it has just encoded.
    static DECODE: RefCell<DecodeBuffer> = RefCell::new(DecodeBuffer::default());
}

/// Loads item `i`, encodes it as the layout says and, with `stats`, computes the
/// moments of what the loader will see: for JPEG, the stored stream decoded (the
/// same decoder the loader uses), so mean and PCA match the loader's pixels and a
/// resumed run, which can only decode, gets the same statistics.
fn load_item(
    source: &dyn Source,
    i: usize,
    layout: &ShardLayout,
    stats: bool,
) -> std::result::Result<Ready, String> {
    let shape = layout.shape;
    let mut pixels = vec![0u8; shape.iter().product()];
    let label = source.load(i, &mut pixels)?;
    let (record, decoded) = match layout.encoding {
        Encoding::Raw => (pixels, None),
        Encoding::Jpeg { quality } => {
            let stream = jpeg::encode(&pixels, shape, quality)?;
            if stats {
                DECODE.with(|buf| -> std::result::Result<(), String> {
                    let mut buf = buf.borrow_mut();
                    let seen = jpeg::decode(&stream, shape, &mut buf)
                        .map_err(|e| format!("the JPEG written for it does not decode: {e}"))?;
                    pixels.copy_from_slice(seen);
                    Ok(())
                })?;
            }
            (stream, stats.then_some(pixels))
        }
    };
    let mut ready = Ready {
        label,
        record,
        decoded,
        moments: None,
    };
    if stats {
        ready.moments = Some(ImageMoments::of(ready.pixels(), shape[0]));
    }
    Ok(ready)
}

/// A shard being written, raw or JPEG.
enum AnyShardWriter {
    Raw(ShardWriter),
    Jpeg(JpegShardWriter),
}

impl AnyShardWriter {
    fn create(path: &Path, layout: &ShardLayout) -> Result<AnyShardWriter> {
        Ok(match layout.encoding {
            Encoding::Raw => AnyShardWriter::Raw(ShardWriter::create(path, layout.shape)?),
            Encoding::Jpeg { .. } => {
                AnyShardWriter::Jpeg(JpegShardWriter::create(path, layout.shape)?)
            }
        })
    }

    fn push(&mut self, label: u32, record: &[u8]) -> Result<()> {
        match self {
            AnyShardWriter::Raw(w) => w.push(label, record),
            AnyShardWriter::Jpeg(w) => w.push(label, record),
        }
    }

    fn count(&self) -> u64 {
        match self {
            AnyShardWriter::Raw(w) => w.count(),
            AnyShardWriter::Jpeg(w) => w.count(),
        }
    }

    fn finish(self) -> Result<ShardInfo> {
        match self {
            AnyShardWriter::Raw(w) => w.finish(),
            AnyShardWriter::Jpeg(w) => w.finish(),
        }
    }
}

/// Loads one shard's range of items in parallel and writes the usable ones in order.
fn write_shard(
    dir: &Path,
    split: &str,
    index: usize,
    source: &dyn Source,
    range: std::ops::Range<usize>,
    layout: &ShardLayout,
    mut stats: Option<&mut PixelStats>,
    bar: &ProgressBar,
) -> Result<DoneShard> {
    let image_bytes = layout.shape.iter().product::<usize>();
    let path = dir.join(format::shard_file_name(split, index));
    let mut writer = AnyShardWriter::create(&path, layout)?;
    let mut skipped = Vec::new();
    let items: Vec<usize> = range.collect();
    let want_stats = stats.is_some();
    for chunk in items.chunks(chunk_items(image_bytes)) {
        let loaded: Vec<_> = chunk
            .par_iter()
            .map(|&i| {
                load_item(source, i, layout, want_stats).map_err(|reason| Skipped {
                    item: source.describe(i),
                    reason,
                })
            })
            .collect();
        for item in loaded {
            match item {
                Ok(ready) => {
                    writer.push(ready.label, &ready.record)?;
                    if let (Some(stats), Some(moments)) = (stats.as_deref_mut(), &ready.moments) {
                        stats.add(ready.pixels(), moments);
                    }
                }
                Err(s) => skipped.push(s),
            }
        }
        bar.inc(chunk.len() as u64);
    }
    let shard = if writer.count() == 0 {
        drop(writer);
        std::fs::remove_file(&path).map_err(io_error(&path))?;
        None
    } else {
        Some(writer.finish()?)
    };
    Ok(DoneShard {
        split: split.to_string(),
        index,
        shard,
        skipped,
    })
}

/// Checks a shard an earlier run finished (length, header, checksum, and a JPEG
/// shard's index) and adds its images to the statistics. Returns false when it
/// must be written again.
fn resume_shard(
    dir: &Path,
    done: &DoneShard,
    layout: &ShardLayout,
    train: bool,
    stats: &mut PixelStats,
) -> Result<bool> {
    let Some(info) = &done.shard else {
        return Ok(true);
    };
    let path = dir.join(&info.file);
    let Ok(file) = std::fs::File::open(&path) else {
        return Ok(false);
    };
    if file.metadata().map(|m| m.len()).ok() != Some(info.bytes) {
        return Ok(false);
    }
    // SAFETY: the file is ours, in the partial directory, and only read here.
    let map = unsafe { Mmap::map(&file) }.map_err(io_error(&path))?;
    if crc32fast::hash(&map) != info.crc32 {
        return Ok(false);
    }
    let shape = layout.shape;
    if layout.encoding.is_raw() {
        let header_ok = ShardHeader::parse(&map, &path)
            .is_ok_and(|h| h.shape() == shape && h.count == info.images);
        if header_ok && train {
            add_raw_shard(&map, shape, stats);
        }
        return Ok(header_ok);
    }
    let Ok(jpeg) = JpegLayout::check(&map, &path, shape, info.images, layout.classes) else {
        return Ok(false);
    };
    Ok(!train || add_jpeg_shard(&map, &jpeg, info.images as usize, shape, stats))
}

/// Adds a raw shard's images to the statistics.
fn add_raw_shard(map: &[u8], shape: [usize; 3], stats: &mut PixelStats) {
    let record = record_bytes(shape[0], shape[1], shape[2]).unwrap();
    let per_image: Vec<(&[u8], ImageMoments)> = map[SHARD_HEADER_BYTES..]
        .par_chunks_exact(record)
        .map(|rec| {
            let pixels = &rec[LABEL_BYTES..];
            (pixels, ImageMoments::of(pixels, shape[0]))
        })
        .collect();
    for (pixels, moments) in per_image {
        stats.add(pixels, &moments);
    }
}

/// Decodes a JPEG shard's images, a round at a time (bounded memory), and adds them
/// to the statistics. False when a record does not decode (the shard is rewritten).
fn add_jpeg_shard(
    map: &[u8],
    layout: &JpegLayout,
    count: usize,
    shape: [usize; 3],
    stats: &mut PixelStats,
) -> bool {
    let records: Vec<usize> = (0..count).collect();
    for chunk in records.chunks(chunk_items(shape.iter().product())) {
        let decoded: Option<Vec<(Vec<u8>, ImageMoments)>> = chunk
            .par_iter()
            .map(|&k| {
                DECODE.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    let pixels = jpeg::decode(layout.record(map, k).0, shape, &mut buf).ok()?;
                    Some((pixels.to_vec(), ImageMoments::of(pixels, shape[0])))
                })
            })
            .collect();
        let Some(decoded) = decoded else {
            return false;
        };
        for (pixels, moments) in &decoded {
            stats.add(pixels, moments);
        }
    }
    true
}

/// Reads a whole file, refusing one longer than `limit` bytes before reading it.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).map_err(io_error(path))?.len();
    if len > limit {
        return Err(source_error(
            path,
            format!("expected at most {limit} bytes, found {len}"),
        ));
    }
    std::fs::read(path).map_err(io_error(path))
}

/// The last path component, for default dataset names.
pub(crate) fn folder_name(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}
