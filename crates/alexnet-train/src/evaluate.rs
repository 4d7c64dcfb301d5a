//! Evaluation, for validation each epoch and for `alexnet eval`: top-1 and top-5
//! error over a split, with the centre crop or the paper's ten patches (softmax
//! averaged over the views), optionally per class and as a confusion matrix. And
//! what training and evaluation share: feeding a loader's batch to a net, and
//! checking that a dataset fits a net.

use std::sync::Arc;

use alexnet::{Mode, Model, NetSpec, softmax_rows};
use alexnet_data::{Batch, Dataset, Loader, LoaderConfig, Part, Split, View};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::preprocess::Preprocess;

/// Counts over an evaluated split.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Evaluation {
    pub images: usize,
    pub top1_errors: usize,
    pub top5_errors: usize,
    pub loss_sum: f64,
    /// `confusion[true][predicted]`, when requested.
    pub confusion: Option<Vec<Vec<u64>>>,
}

impl Evaluation {
    /// The fraction of images whose most probable class is not their label.
    pub fn top1_error(&self) -> f64 {
        self.top1_errors as f64 / self.images.max(1) as f64
    }
    /// The fraction of images whose label is not among the five most probable.
    pub fn top5_error(&self) -> f64 {
        self.top5_errors as f64 / self.images.max(1) as f64
    }
    /// The mean cross-entropy of the averaged softmax.
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }
}

/// The evaluation view of a net's input: centre crop, or ten patches.
pub fn eval_view(preprocess: &Preprocess, height: usize, width: usize, ten_crop: bool) -> View {
    View {
        crop_height: height,
        crop_width: width,
        random_crop: false,
        mirror: false,
        pca_std: 0.0,
        subtract_mean: preprocess.subtract_mean,
        channel_scale: preprocess.channel_scale(),
        ten_crop,
    }
}

/// Evaluates `net` on `split` (or the subset `indices` of it): on the `part`
/// of each batch that this process takes (every image with [`Part::WHOLE`];
/// the parts of all processes, summed, are the whole split's evaluation).
pub fn evaluate(
    net: &mut dyn Model,
    split: Split,
    indices: Option<Arc<Vec<u32>>>,
    view: View,
    dataset: &Dataset,
    mean: Arc<Vec<f32>>,
    threads: usize,
    with_confusion: bool,
    part: Part,
) -> Result<Evaluation> {
    let images = indices.as_ref().map_or(split.len(), |i| i.len());
    if images == 0 {
        return Err(Error::Setting(format!(
            "the split '{}' has no images to evaluate",
            split.name()
        )));
    }
    let classes = net.plan().classes();
    let views = if view.ten_crop { 10 } else { 1 };
    let batch = (net.max_batch() / views).max(1);
    if batch * views > net.max_batch() {
        return Err(Error::Setting(format!(
            "the net holds {} images at once, fewer than the {views} views of one image",
            net.max_batch()
        )));
    }
    let config = LoaderConfig {
        // Each part of a batch fits the net.
        batch: batch * part.parts,
        view,
        seed: 0,
        epoch: 0,
        shuffle: false,
        start_batch: 0,
        indices,
        threads,
        queue: 2,
        drop_last: false,
        stored: wants_stored(net),
        part,
    };
    if config.stored {
        net.set_mean_image(&mean)?;
    }
    let mut loader = Loader::new(split, config, mean, dataset.info())?;
    let mut result = Evaluation {
        confusion: with_confusion.then(|| vec![vec![0; classes]; classes]),
        ..Evaluation::default()
    };
    while let Some(batch) = loader.next_batch()? {
        load_batch(net, &batch)?;
        net.forward(Mode::Test);
        let logits = net.logits();
        let probabilities = softmax_rows(&logits, classes);
        for (image, &label) in batch.labels.iter().enumerate().take(batch.count) {
            // Average the softmax over this image's views (one, or the ten patches).
            let mut mean = vec![0.0f32; classes];
            for v in 0..batch.views {
                let row = &probabilities[(image * batch.views + v) * classes..][..classes];
                mean.iter_mut()
                    .zip(row)
                    .for_each(|(m, p)| *m += p / batch.views as f32);
            }
            let ranked = top_k(&mean, 5);
            let label = label as usize;
            result.images += 1;
            if ranked[0] != label {
                result.top1_errors += 1;
            }
            if !ranked.contains(&label) {
                result.top5_errors += 1;
            }
            result.loss_sum -= (mean[label].max(1e-30) as f64).ln();
            if let Some(confusion) = result.confusion.as_mut() {
                confusion[label][ranked[0]] += 1;
            }
        }
    }
    Ok(result)
}

/// Whether the loader should deliver stored batches to `net`: where its device
/// cuts the views itself (a GPU, or a CPU backend asked to, which tests that path).
pub fn wants_stored(net: &dyn Model) -> bool {
    net.cuts_views()
}

/// Loads a loader's batch into `net`: finished views, or stored images for the
/// net's device to cut.
pub fn load_batch(net: &mut dyn Model, batch: &Batch) -> Result<usize> {
    Ok(if batch.is_stored() {
        net.set_input_stored(&batch.stored())?
    } else {
        net.set_input(&batch.images)?
    })
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(k);
    order
}

/// Refuses a dataset whose images do not fit the net.
pub fn check_compatible(dataset: &Dataset, spec: &NetSpec) -> Result<()> {
    let info = dataset.info();
    let mismatch = |message: String| Err(Error::Mismatch(message));
    if info.channels != spec.input.channels {
        return mismatch(format!(
            "the dataset has {} channels but the net expects {}",
            info.channels, spec.input.channels
        ));
    }
    if info.height < spec.input.height || info.width < spec.input.width {
        return mismatch(format!(
            "the dataset's {}x{} images are smaller than the net's {}x{} input",
            info.height, info.width, spec.input.height, spec.input.width
        ));
    }
    if info.classes.len() != spec.classes {
        return mismatch(format!(
            "the dataset has {} classes but the net has {}",
            info.classes.len(),
            spec.classes
        ));
    }
    Ok(())
}
