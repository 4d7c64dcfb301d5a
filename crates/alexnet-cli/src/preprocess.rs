//! What a trained net expects of its input, carried inside its checkpoint so that
//! `eval` and `classify` apply it by themselves: the stored image size, the mean
//! image subtracted from every pixel, and the class ids and names.

use std::collections::BTreeMap;

use alexnet::checkpoint::Checkpoint;
use alexnet_data::Dataset;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Metadata key and tensor name under which a checkpoint stores these.
const META_KEY: &str = "preprocess";
const MEAN_TENSOR: &str = "preprocess.mean";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preprocess {
    /// Channels, height and width the images were stored at before cropping.
    pub stored: [usize; 3],
    /// Subtract the training set's mean image (the paper's pixel scale).
    pub subtract_mean: bool,
    /// Class ids (WordNet ids or folder names) and readable names, in label order.
    pub class_ids: Vec<String>,
    pub class_names: Vec<String>,
    /// The dataset the net was trained on.
    pub dataset: String,
    /// The mean image, CHW at the stored size (kept as a tensor, not in the JSON).
    #[serde(skip)]
    pub mean: Vec<f32>,
}

impl Preprocess {
    pub fn from_dataset(dataset: &Dataset) -> Preprocess {
        let info = dataset.info();
        Preprocess {
            stored: [info.channels, info.height, info.width],
            subtract_mean: true,
            class_ids: info.classes.iter().map(|c| c.id.clone()).collect(),
            class_names: info.classes.iter().map(|c| c.name.clone()).collect(),
            dataset: info.name.clone(),
            mean: dataset.mean().to_vec(),
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

    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Preprocess> {
        let text = ckpt.metadata.get(META_KEY).context(
            "the checkpoint has no preprocessing settings (it was not written by `alexnet train`)",
        )?;
        let mut preprocess: Preprocess = serde_json::from_str(text)
            .context("the checkpoint's preprocessing settings are unreadable")?;
        let (shape, values) = ckpt
            .tensors
            .get(MEAN_TENSOR)
            .context("the checkpoint has no mean image")?;
        if shape.as_slice() != preprocess.stored {
            bail!(
                "the checkpoint's mean image has shape {shape:?}, expected {:?}",
                preprocess.stored
            );
        }
        preprocess.mean = values.clone();
        Ok(preprocess)
    }

    /// The readable name of class `index`.
    pub fn class_name(&self, index: usize) -> String {
        self.class_names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("class {index}"))
    }
}
