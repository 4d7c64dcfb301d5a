//! Batches for training and evaluation, with the paper's augmentation (Section 4.1).
//!
//! Each image becomes `f32` values on the paper's scale: the raw 0-255 pixel minus
//! the mean image (cropped and reflected exactly as the image is), plus a colour
//! shift along the principal components of the training pixels. Training views are
//! random crops, reflected with probability one half; evaluation views are the
//! central crop, or the ten patches (four corners and centre, and their reflections).
//!
//! **Determinism.** The order of an epoch is a permutation drawn from `(seed,
//! epoch)`, and every random choice for an image (crop offsets, reflection, colour
//! shift) from its own generator seeded by `(seed, epoch, position in the epoch)`.
//! Worker threads only decide *when* a batch is computed, never *what* it holds:
//! the batches are identical, and arrive in the same order, for any thread count.
//! Resuming at `start_batch` reproduces the rest of the epoch exactly.
//!
//! **Parts of a batch.** In data-parallel training every process asks for its
//! [`Part`] of each batch: the loader reads and augments only those images, with
//! the draws they have in the whole batch, so the parts of all processes put
//! together are the batch a single process would get.
//!
//! **JPEG datasets.** Images stored as JPEG are decoded by whichever thread fills
//! the batch, into that thread's own reusable buffer; decoding is deterministic, so
//! the above holds for them too. A record that fails to decode (a shard damaged
//! after it was verified, or opened unverified) ends the epoch with an error from
//! [`Loader::next_batch`], naming the shard and record; iterating the loader
//! instead panics with that message.

use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use alexnet::input::{StoredBatch, ViewPlacement, cut_view};
use alexnet::layers::Shape;
use alexnet::rng::Rng;

use crate::dataset::{DatasetInfo, Split};
use crate::error::{Result, config_error};
use crate::jpeg::DecodeBuffer;

/// How each image is turned into the network's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    pub crop_height: usize,
    pub crop_width: usize,
    /// Crop at a uniformly random offset (training); otherwise the centre.
    pub random_crop: bool,
    /// Reflect left-right with probability 0.5 (training).
    pub mirror: bool,
    /// Standard deviation of the PCA colour coefficients α; 0 turns the shift off
    /// (the paper: 0.1).
    pub pca_std: f32,
    /// Subtract the mean image; otherwise raw 0-255 values.
    pub subtract_mean: bool,
    /// Each channel is multiplied by this after the mean is subtracted: 1 for the
    /// paper's 0-255 scale; 1/(255·std) gives torchvision's (x/255 - mean)/std when
    /// the mean image holds 255·mean. Grey images use the first entry.
    pub channel_scale: [f32; 3],
    /// Ten views per image (evaluation): the four corner crops and the central
    /// crop, then the same five reflected. Excludes `random_crop`; `mirror` is
    /// ignored.
    pub ten_crop: bool,
}

impl View {
    /// The paper's training view: random crop, reflection, PCA colour (0.1), mean subtracted.
    pub fn paper_train(crop_height: usize, crop_width: usize) -> View {
        View {
            crop_height,
            crop_width,
            random_crop: true,
            mirror: true,
            pca_std: 0.1,
            subtract_mean: true,
            channel_scale: [1.0; 3],
            ten_crop: false,
        }
    }

    /// One central crop, mean subtracted: single-view evaluation.
    pub fn centre(crop_height: usize, crop_width: usize) -> View {
        View {
            crop_height,
            crop_width,
            random_crop: false,
            mirror: false,
            pca_std: 0.0,
            subtract_mean: true,
            channel_scale: [1.0; 3],
            ten_crop: false,
        }
    }

    /// The paper's ten test patches, mean subtracted.
    pub fn ten_crop(crop_height: usize, crop_width: usize) -> View {
        View {
            ten_crop: true,
            ..View::centre(crop_height, crop_width)
        }
    }

    /// Views per image: 10 with `ten_crop`, else 1.
    pub fn views(&self) -> usize {
        if self.ten_crop { 10 } else { 1 }
    }
}

/// Which images of every batch a loader delivers: the `index`-th of `parts`
/// runs of nearly equal length (one process's share in data-parallel training),
/// or the whole batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub parts: usize,
}

impl Part {
    /// Every image of every batch.
    pub const WHOLE: Part = Part { index: 0, parts: 1 };

    /// This part's images of a batch of `count`: `count * index / parts` up to
    /// `count * (index + 1) / parts`, so parts differ by at most one image and
    /// together cover the batch exactly once.
    pub fn range(&self, count: usize) -> Range<usize> {
        let parts = self.parts.max(1);
        count * self.index / parts..count * (self.index + 1) / parts
    }
}

/// What a loader reads and how.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Images per batch (each image gives `view.views()` rows).
    pub batch: usize,
    pub view: View,
    pub seed: u64,
    /// Which epoch: with `seed`, it decides the order and every augmentation draw.
    pub epoch: u64,
    /// Visit the images in a random order drawn from `(seed, epoch)`; otherwise in
    /// split (or `indices`) order.
    pub shuffle: bool,
    /// Skip this many batches of the epoch (to resume mid-epoch).
    pub start_batch: usize,
    /// Read only these images of the split (e.g. from [`holdout`]).
    pub indices: Option<Arc<Vec<u32>>>,
    /// Worker threads filling batches ahead; 0 fills each batch in the caller's
    /// thread when it is asked for.
    pub threads: usize,
    /// Batches computed ahead of the consumer (at least one per thread).
    pub queue: usize,
    /// Leave out the last batch of the epoch when it would be smaller than `batch`.
    pub drop_last: bool,
    /// Deliver the stored images and where to cut each view ([`Batch::stored`]),
    /// for a device that cuts them itself, instead of finished f32 views.
    pub stored: bool,
    /// Which images of each batch to deliver.
    pub part: Part,
}

impl LoaderConfig {
    /// `batch` images of `view` from a shuffled epoch, two worker threads, four
    /// batches ahead, the last short batch kept.
    pub fn new(batch: usize, view: View, seed: u64, epoch: u64) -> LoaderConfig {
        LoaderConfig {
            batch,
            view,
            seed,
            epoch,
            shuffle: true,
            start_batch: 0,
            indices: None,
            threads: 2,
            queue: 4,
            drop_last: false,
            stored: false,
            part: Part::WHOLE,
        }
    }
}

/// One batch of views, NCHW.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// `count * views` images of channels x crop_height x crop_width, image-major:
    /// image 0's views, then image 1's. Empty for a stored batch.
    pub images: Vec<f32>,
    /// A stored batch's images as stored (`count` of them, `stored_shape` bytes each).
    pub pixels: Vec<u8>,
    /// A stored batch's views, in the order `images` would hold them.
    pub placements: Vec<ViewPlacement>,
    pub stored_shape: Shape,
    /// Crop height and width.
    pub crop: (usize, usize),
    pub subtract_mean: bool,
    pub channel_scale: [f32; 3],
    /// One label per image (not per view).
    pub labels: Vec<u32>,
    /// Each image's index in the split.
    pub indices: Vec<u32>,
    /// Images in the batch (views not counted): the loader's part of it.
    pub count: usize,
    /// The position of the first of them in the whole batch (0 unless the
    /// loader delivers a part).
    pub first: usize,
    /// Images in the whole batch, every part's together.
    pub whole: usize,
    /// Views per image: 1 or 10.
    pub views: usize,
    /// This batch's number within the epoch.
    pub index: usize,
}

impl Batch {
    /// Whether the batch holds stored images rather than finished views.
    pub fn is_stored(&self) -> bool {
        !self.placements.is_empty()
    }

    /// A stored batch as the engine takes it ([`alexnet::Model::set_input_stored`]).
    pub fn stored(&self) -> StoredBatch<'_> {
        StoredBatch {
            pixels: &self.pixels,
            stored: self.stored_shape,
            crop_height: self.crop.0,
            crop_width: self.crop.1,
            views: &self.placements,
            subtract_mean: self.subtract_mean,
            scale: self.channel_scale,
        }
    }
}

/// Everything a batch is computed from; shared, read-only, by the workers.
struct Plan {
    split: Split,
    /// The epoch's order: split indices.
    order: Vec<u32>,
    view: View,
    mean: Arc<Vec<f32>>,
    /// Per component `i`: eigenvector `i` times the component's standard deviation
    /// (the square root of its eigenvalue) times `pca_std`.
    colour: [[f32; 3]; 3],
    seed: u64,
    epoch: u64,
    batch: usize,
    stored: bool,
    part: Part,
}

/// Iterates one epoch's batches, in order, computed ahead by worker threads.
pub struct Loader {
    plan: Arc<Plan>,
    start: usize,
    next: usize,
    end: usize,
    per_epoch: usize,
    workers: Vec<Worker>,
    pool: Arc<Mutex<Vec<Batch>>>,
    /// Decoding scratch for batches filled in the caller's thread (no workers).
    scratch: DecodeBuffer,
}

struct Worker {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

// Tags keep the generators for different purposes apart even when a caller uses
// the same seed for everything.
const ORDER_TAG: u64 = 0x6f72_6465_7200_0001;
const IMAGE_TAG: u64 = 0x696d_6167_6500_0002;
const HOLDOUT_TAG: u64 = 0x686f_6c64_6f75_0003;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seed from a sequence of values (order matters).
fn derive_seed(values: &[u64]) -> u64 {
    values.iter().fold(0x9E37_79B9_7F4A_7C15, |acc, &v| {
        mix64(acc ^ mix64(v.wrapping_add(0x9E37_79B9_7F4A_7C15)))
    })
}

/// Fisher-Yates with the crate's generator.
fn shuffle(values: &mut [u32], rng: &mut Rng) {
    for i in (1..values.len()).rev() {
        let j = rng.below(i + 1);
        values.swap(i, j);
    }
}

/// A fixed split of `0..len` into training indices and `count` held-out indices
/// (e.g. for validation), both sorted; the same `seed` gives the same split.
/// `count` is capped at `len`.
pub fn holdout(len: usize, count: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    assert!(
        len <= u32::MAX as usize,
        "holdout: {len} items do not fit u32 indices"
    );
    let count = count.min(len);
    let mut order: Vec<u32> = (0..len as u32).collect();
    shuffle(&mut order, &mut Rng::new(derive_seed(&[seed, HOLDOUT_TAG])));
    let mut held = order[..count].to_vec();
    let mut train = order[count..].to_vec();
    held.sort_unstable();
    train.sort_unstable();
    (train, held)
}

/// Refuses settings that do not fit the split, naming the field.
fn check_config(
    split: &Split,
    config: &LoaderConfig,
    mean: &[f32],
    info: &DatasetInfo,
) -> Result<()> {
    let [channels, height, width] = split.shape();
    let view = config.view;
    let what = |field: &str| format!("loader {field}");
    if [info.channels, info.height, info.width] != split.shape() {
        return Err(config_error(
            what("dataset info"),
            format!(
                "expected the split's shape {channels}x{height}x{width}, found {}x{}x{}",
                info.channels, info.height, info.width
            ),
        ));
    }
    if mean.len() != channels * height * width {
        return Err(config_error(
            what("mean"),
            format!(
                "expected {} values ({channels}x{height}x{width}), found {}",
                channels * height * width,
                mean.len()
            ),
        ));
    }
    if view.crop_height == 0
        || view.crop_width == 0
        || view.crop_height > height
        || view.crop_width > width
    {
        return Err(config_error(
            what("crop"),
            format!(
                "expected a crop within the stored {height}x{width}, found {}x{}",
                view.crop_height, view.crop_width
            ),
        ));
    }
    if view.ten_crop && view.random_crop {
        return Err(config_error(
            what("view"),
            "ten_crop takes fixed corner and centre crops; turn random_crop off",
        ));
    }
    if !(view.pca_std.is_finite() && view.pca_std >= 0.0) {
        return Err(config_error(
            what("pca_std"),
            format!("expected a finite value >= 0, found {}", view.pca_std),
        ));
    }
    if !view.channel_scale.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(config_error(
            what("channel_scale"),
            format!("expected finite values > 0, found {:?}", view.channel_scale),
        ));
    }
    if config.batch == 0 {
        return Err(config_error(what("batch"), "expected at least 1 image"));
    }
    let part = config.part;
    if part.parts == 0 || part.index >= part.parts {
        return Err(config_error(
            what("part"),
            format!(
                "expected a part index below the number of parts, found {} of {}",
                part.index, part.parts
            ),
        ));
    }
    if config.threads > 0 && config.queue == 0 {
        return Err(config_error(
            what("queue"),
            "expected at least 1 batch ahead with worker threads",
        ));
    }
    if split.len() > u32::MAX as usize {
        return Err(config_error(
            what("split"),
            format!("{} images do not fit u32 indices", split.len()),
        ));
    }
    Ok(())
}

/// The colour shift's basis: each principal component's direction times its
/// spread and `pca_std`.
fn colour_shift_basis(info: &DatasetInfo, pca_std: f32) -> [[f32; 3]; 3] {
    // The paper's shift is sum_i p_i α_i λ_i. With λ the eigenvalues of the
    // covariance of 0-255 pixels (variances in the thousands) that would move
    // pixels by hundreds of levels; the authors' own code (cuda-convnet2's
    // ImageNet provider) scales by the standard deviations sqrt(λ_i), which is
    // what is done here: α ~ N(0, pca_std) of each component's spread.
    let mut colour = [[0.0f32; 3]; 3];
    for i in 0..3 {
        let spread = info.pca_eigenvalues[i].max(0.0).sqrt() * pca_std;
        for c in 0..3 {
            colour[i][c] = info.pca_eigenvectors[i][c] * spread;
        }
    }
    colour
}

/// Starts the worker threads that prepare batches `start..end`, each its share in turn.
fn start_workers(
    plan: &Arc<Plan>,
    pool: &Arc<Mutex<Vec<Batch>>>,
    start: usize,
    end: usize,
    config: &LoaderConfig,
) -> Result<Vec<Worker>> {
    let what = |field: &str| format!("loader {field}");
    let mut workers = Vec::new();
    if start < end {
        let threads = config.threads.min(end - start);
        let depth = config.queue.div_ceil(threads.max(1)).max(1);
        for w in 0..threads {
            let (tx, rx) = sync_channel(depth);
            let plan = plan.clone();
            let pool = pool.clone();
            let handle = std::thread::Builder::new()
                .name(format!("loader-{w}"))
                .spawn(move || work(&plan, &pool, start + w, end, threads, tx))
                .map_err(|e| config_error(what("threads"), format!("cannot start: {e}")))?;
            workers.push(Worker {
                rx: Some(rx),
                handle: Some(handle),
            });
        }
    }
    Ok(workers)
}

impl Loader {
    /// Checks the settings against the split and starts the workers.
    pub fn new(
        split: Split,
        config: LoaderConfig,
        mean: Arc<Vec<f32>>,
        info: &DatasetInfo,
    ) -> Result<Loader> {
        check_config(&split, &config, &mean, info)?;
        let view = config.view;
        let what = |field: &str| format!("loader {field}");
        let mut order: Vec<u32> = match &config.indices {
            Some(indices) => {
                if let Some(bad) = indices.iter().find(|&&i| i as usize >= split.len()) {
                    return Err(config_error(
                        what("indices"),
                        format!(
                            "expected indices below the split's {} images, found {bad}",
                            split.len()
                        ),
                    ));
                }
                indices.to_vec()
            }
            None => (0..split.len() as u32).collect(),
        };
        if config.shuffle {
            let mut rng = Rng::new(derive_seed(&[config.seed, ORDER_TAG, config.epoch]));
            shuffle(&mut order, &mut rng);
        }
        let per_epoch = if config.drop_last {
            order.len() / config.batch
        } else {
            order.len().div_ceil(config.batch)
        };
        if config.start_batch > per_epoch {
            return Err(config_error(
                what("start_batch"),
                format!(
                    "expected at most {per_epoch} (the batches in an epoch), found {}",
                    config.start_batch
                ),
            ));
        }

        let colour = colour_shift_basis(info, view.pca_std);
        let plan = Arc::new(Plan {
            split,
            order,
            view,
            mean,
            colour,
            seed: config.seed,
            epoch: config.epoch,
            batch: config.batch,
            stored: config.stored,
            part: config.part,
        });
        let (start, end) = (config.start_batch, per_epoch);
        let pool = Arc::new(Mutex::new(Vec::new()));
        let workers = start_workers(&plan, &pool, start, end, &config)?;
        Ok(Loader {
            plan,
            start,
            next: start,
            end,
            per_epoch,
            workers,
            pool,
            scratch: DecodeBuffer::default(),
        })
    }

    /// Batches in a whole epoch (whatever `start_batch` is).
    pub fn batches_per_epoch(&self) -> usize {
        self.per_epoch
    }

    /// Images in the epoch (the split, or the `indices` given).
    pub fn images_per_epoch(&self) -> usize {
        self.plan.order.len()
    }

    /// Hands a consumed batch's buffers back for reuse, so a steady-state epoch
    /// allocates nothing.
    pub fn recycle(&self, batch: Batch) {
        let mut pool = self.pool.lock().unwrap();
        if pool.len() < self.workers.len() * 2 + 2 {
            pool.push(batch);
        }
    }
}

/// A worker's loop: every `stride`-th batch from `first`, until the epoch ends,
/// a batch fails (its error is sent, then the worker stops), or the loader is
/// dropped (the send fails).
fn work(
    plan: &Plan,
    pool: &Mutex<Vec<Batch>>,
    first: usize,
    end: usize,
    stride: usize,
    tx: SyncSender<Result<Batch>>,
) {
    let mut scratch = DecodeBuffer::default();
    let mut b = first;
    while b < end {
        let mut batch = pool.lock().unwrap().pop().unwrap_or_default();
        let filled = plan.fill(b, &mut batch, &mut scratch).map(|()| batch);
        let failed = filled.is_err();
        if tx.send(filled).is_err() || failed {
            return;
        }
        b += stride;
    }
}

impl Loader {
    /// The next batch of the epoch, `Ok(None)` at its end, or the error that
    /// stopped it (an image that cannot be decoded); after an error the epoch is
    /// over. The batches are those the iterator gives.
    /// Batches left in this epoch.
    pub fn len(&self) -> usize {
        self.end - self.next
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let b = self.next;
        self.next += 1;
        let result = self.compute(b);
        if result.is_err() {
            self.next = self.end;
        }
        result.map(Some)
    }

    /// Batch `b`: filled here, or received from the worker computing it.
    fn compute(&mut self, b: usize) -> Result<Batch> {
        if self.workers.is_empty() {
            let mut batch = self.pool.lock().unwrap().pop().unwrap_or_default();
            self.plan.fill(b, &mut batch, &mut self.scratch)?;
            return Ok(batch);
        }
        // Worker w computes batches start + w, start + w + threads, ...
        let w = (b - self.start) % self.workers.len();
        let worker = &mut self.workers[w];
        match worker.rx.as_ref().unwrap().recv() {
            Ok(batch) => batch,
            Err(_) => {
                // The worker dropped its sender without finishing: it panicked.
                let message = match worker.handle.take().map(JoinHandle::join) {
                    Some(Err(payload)) => payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into()),
                    _ => "stopped early".into(),
                };
                panic!("loader worker {w} failed: {message}");
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing each channel first makes a worker blocked on a full queue give up.
        for worker in &mut self.workers {
            worker.rx.take();
        }
        for worker in &mut self.workers {
            if let Some(handle) = worker.handle.take() {
                let _ = handle.join();
            }
        }
    }
}

impl Plan {
    /// Computes batch `b` of the epoch into `out`, reusing its buffers (and
    /// `scratch` for decoding JPEG images).
    fn fill(&self, b: usize, out: &mut Batch, scratch: &mut DecodeBuffer) -> Result<()> {
        let [channels, height, width] = self.split.shape();
        let stored = Shape::new(channels, height, width);
        let view = &self.view;
        let (ch, cw) = (view.crop_height, view.crop_width);
        let views = view.views();
        let per_view = channels * ch * cw;
        let whole = self.batch.min(self.order.len() - b * self.batch);
        let rows = self.part.range(whole);
        let first = b * self.batch + rows.start;
        let count = rows.len();
        if self.stored {
            out.images.clear();
            out.pixels.resize(count * stored.len(), 0);
        } else {
            out.images.resize(count * views * per_view, 0.0);
            out.pixels.clear();
        }
        out.placements.clear();
        out.stored_shape = stored;
        out.crop = (ch, cw);
        out.subtract_mean = view.subtract_mean;
        out.channel_scale = view.channel_scale;
        out.labels.clear();
        out.indices.clear();
        out.count = count;
        out.first = rows.start;
        out.whole = whole;
        out.views = views;
        out.index = b;
        let centre = ((height - ch) / 2, (width - cw) / 2);
        let corners = [
            (0, 0),
            (0, width - cw),
            (height - ch, 0),
            (height - ch, width - cw),
            centre,
        ];
        let mean = view.subtract_mean.then_some(&self.mean[..]);
        let mut placements = Vec::with_capacity(views);
        for j in 0..count {
            let position = first + j;
            let index = self.order[position];
            // Every draw is made whether or not the view uses it, so turning one
            // augmentation on or off leaves the others' draws unchanged.
            let mut rng = Rng::new(derive_seed(&[
                self.seed,
                IMAGE_TAG,
                self.epoch,
                position as u64,
            ]));
            let oy = rng.below(height - ch + 1);
            let ox = rng.below(width - cw + 1);
            let flip = rng.next_u64() >> 63 == 1;
            let alpha = [rng.normal(), rng.normal(), rng.normal()].map(|a| a as f32);
            let mut shift = [0.0f32; 3];
            for (c, s) in shift.iter_mut().enumerate() {
                *s = (0..3).map(|i| self.colour[i][c] * alpha[i]).sum();
            }
            let place = |(y, x): (usize, usize), flip: bool| ViewPlacement {
                image: j,
                y,
                x,
                flip,
                shift,
            };
            placements.clear();
            if view.ten_crop {
                placements.extend((0..10).map(|v| place(corners[v % 5], v >= 5)));
            } else {
                let at = if view.random_crop { (oy, ox) } else { centre };
                placements.push(place(at, view.mirror && flip));
            }
            let label = if self.stored {
                // Straight into the batch: no copy through the decode buffer.
                let dst = &mut out.pixels[j * stored.len()..][..stored.len()];
                let label = self.split.read_into(index as usize, scratch, dst)?;
                out.placements.extend_from_slice(&placements);
                label
            } else {
                let (pixels, label) = self.split.read(index as usize, scratch)?;
                let dst = &mut out.images[j * views * per_view..][..views * per_view];
                for (placement, dst) in placements.iter().zip(dst.chunks_exact_mut(per_view)) {
                    cut_view(
                        dst,
                        pixels,
                        mean,
                        stored,
                        (ch, cw),
                        placement,
                        &view.channel_scale,
                    );
                }
                label
            };
            out.labels.push(label);
            out.indices.push(index);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_a_fixed_partition() {
        let (train, held) = holdout(100, 10, 3);
        assert_eq!(held.len(), 10);
        assert_eq!(train.len(), 90);
        let mut all: Vec<u32> = train.iter().chain(&held).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<u32>>());
        assert_eq!(holdout(100, 10, 3), (train, held.clone()));
        assert_ne!(holdout(100, 10, 4).1, held);
        assert_eq!(holdout(5, 9, 1).1.len(), 5);
    }

    #[test]
    fn derived_seeds_differ_by_position_and_order() {
        assert_ne!(derive_seed(&[1, 2, 3]), derive_seed(&[1, 3, 2]));
        assert_ne!(derive_seed(&[0, 0]), derive_seed(&[0]));
    }
}
