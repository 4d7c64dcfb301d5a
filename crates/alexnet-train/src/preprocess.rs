//! What a trained net expects of its input, carried inside its checkpoint so that
//! `eval` and `classify` apply it by themselves: the stored image size, the mean
//! image subtracted from every pixel, the scale applied after it, and the class
//! ids and names.
//!
//! Both pixel conventions are one formula, `(pixel - mean_image) * channel_scale`
//! on 0-255 pixels: the paper's has the training set's mean image and scale 1;
//! torchvision's `(pixel/255 - m) / s` has a mean image of constant 255·m and
//! scale 1/(255·s).

use std::collections::BTreeMap;
use std::sync::Arc;

use alexnet::checkpoint::Checkpoint;
use alexnet::spec::{NetSpec, PixelScale};
use alexnet_data::Dataset;
use alexnet_data::format::MAX_SIDE;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Metadata key and tensor name under which a checkpoint stores these.
const META_KEY: &str = "preprocess";
const MEAN_TENSOR: &str = "preprocess.mean";

fn mismatch(message: impl Into<String>) -> Error {
    Error::Mismatch(message.into())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preprocess {
    /// Channels, height and width the images were stored at before cropping.
    pub stored: [usize; 3],
    /// Subtract the mean image (always, except for nets trained on raw pixels).
    pub subtract_mean: bool,
    /// The convention the weights expect (checkpoints without it: the paper's).
    #[serde(default)]
    pub pixels: PixelScale,
    /// Per-channel standard deviation on the [0, 1] scale (`unit-mean-std` only).
    #[serde(default)]
    pub channel_std: Option<[f32; 3]>,
    /// Class ids (WordNet ids or folder names) and readable names, in label order.
    pub class_ids: Vec<String>,
    pub class_names: Vec<String>,
    /// The dataset the net was trained on.
    pub dataset: String,
    /// The mean image, CHW at the stored size (kept as a tensor, not in the JSON).
    #[serde(skip)]
    pub mean: Vec<f32>,
}

/// Checks a checkpoint's preprocessing against its own net before anything is
/// sized from it: the stored images must have the net's channels, hold its input
/// crop and fit the dataset format's sides, and the class lists must name the
/// net's classes (or be empty).
fn check_against_net(preprocess: &Preprocess, spec: &NetSpec) -> Result<()> {
    let [channels, height, width] = preprocess.stored;
    let input = &spec.input;
    if channels != input.channels
        || height < input.height
        || width < input.width
        || height > MAX_SIDE
        || width > MAX_SIDE
    {
        return Err(mismatch(format!(
            "the checkpoint's preprocessing stores images at {channels}x{height}x{width}; its net \
             needs {} channels, at least {}x{} (its input crop) and sides of at most {MAX_SIDE}",
            input.channels, input.height, input.width
        )));
    }
    for (what, list) in [
        ("class ids", &preprocess.class_ids),
        ("class names", &preprocess.class_names),
    ] {
        if !list.is_empty() && list.len() != spec.classes {
            return Err(mismatch(format!(
                "the checkpoint's preprocessing has {} {what} for a net of {} classes",
                list.len(),
                spec.classes
            )));
        }
    }
    Ok(())
}

impl Preprocess {
    /// The paper's convention for a net trained on `dataset`: its mean image.
    pub fn from_dataset(dataset: &Dataset) -> Preprocess {
        let info = dataset.info();
        Preprocess {
            stored: [info.channels, info.height, info.width],
            subtract_mean: true,
            pixels: PixelScale::RawMinusMean,
            channel_std: None,
            class_ids: info.classes.iter().map(|c| c.id.clone()).collect(),
            class_names: info.classes.iter().map(|c| c.name.clone()).collect(),
            dataset: info.name.clone(),
            mean: dataset.mean().to_vec(),
        }
    }

    /// These settings (mean, scale) for training on `dataset`: its classes and name.
    pub fn for_dataset(mut self, dataset: &Dataset) -> Result<Preprocess> {
        self.mean_for(dataset)?;
        let info = dataset.info();
        self.class_ids = info.classes.iter().map(|c| c.id.clone()).collect();
        self.class_names = info.classes.iter().map(|c| c.name.clone()).collect();
        self.dataset = info.name.clone();
        Ok(self)
    }

    /// What each channel is multiplied by after the mean image is subtracted.
    pub fn channel_scale(&self) -> [f32; 3] {
        match (self.pixels, self.channel_std) {
            (PixelScale::UnitMeanStd, Some(std)) => std.map(|s| 1.0 / (255.0 * s)),
            _ => [1.0; 3],
        }
    }

    /// Adds these settings to a checkpoint's metadata and tensors.
    pub fn store(
        &self,
        metadata: &mut BTreeMap<String, String>,
        tensors: &mut Vec<(String, Vec<usize>, Vec<f32>)>,
    ) {
        metadata.insert(
            META_KEY.into(),
            serde_json::to_string(self).expect("serialisable"),
        );
        tensors.push((MEAN_TENSOR.into(), self.stored.to_vec(), self.mean.clone()));
    }

    /// The settings a checkpoint carries, checked against its mean image.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Preprocess> {
        let text = ckpt.metadata.get(META_KEY).ok_or_else(|| {
            mismatch("the checkpoint has no preprocessing settings (it was not written by `alexnet train`)")
        })?;
        let mut preprocess: Preprocess = serde_json::from_str(text).map_err(|e| {
            mismatch(format!(
                "the checkpoint's preprocessing settings are unreadable: {e}"
            ))
        })?;
        let (shape, values) = ckpt
            .tensors
            .get(MEAN_TENSOR)
            .ok_or_else(|| mismatch("the checkpoint has no mean image"))?;
        if shape.as_slice() != preprocess.stored {
            return Err(mismatch(format!(
                "the checkpoint's mean image has shape {shape:?}, expected {:?}",
                preprocess.stored
            )));
        }
        check_against_net(&preprocess, &ckpt.spec)?;
        if preprocess.pixels == PixelScale::UnitMeanStd
            && !preprocess
                .channel_std
                .is_some_and(|s| s.iter().all(|v| v.is_finite() && *v > 0.0))
        {
            return Err(mismatch(
                "the checkpoint's preprocessing says unit-mean-std but has no valid channel_std",
            ));
        }
        preprocess.mean = values.clone();
        Ok(preprocess)
    }

    /// The mean image to subtract from `dataset`'s images: the checkpoint's own
    /// (the net was trained or imported with it), which must be at the dataset's
    /// stored size.
    pub fn mean_for(&self, dataset: &Dataset) -> Result<Arc<Vec<f32>>> {
        let info = dataset.info();
        let stored = [info.channels, info.height, info.width];
        if stored != self.stored {
            return Err(mismatch(format!(
                "the dataset stores images at {}x{}x{} but the net's preprocessing expects {}x{}x{} \
                 (prepare the images at that size)",
                stored[0], stored[1], stored[2], self.stored[0], self.stored[1], self.stored[2]
            )));
        }
        Ok(Arc::new(self.mean.clone()))
    }

    /// The readable name of class `index`.
    pub fn class_name(&self, index: usize) -> String {
        self.class_names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("class {index}"))
    }
}
