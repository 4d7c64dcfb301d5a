//! Weights in and out: nets trained elsewhere become an [`Imported`] (our network
//! description, parameters under our names, and the input convention the weights
//! expect), and our nets become ONNX models.
//!
//! Every reader here treats its file as hostile: it executes nothing, follows no
//! declared size without checking it against the bytes actually present, bounds
//! nesting, and reports problems as an [`Error`] naming the file and the part.
//!
//! - [`zip`], [`pickle`], [`torch`]: PyTorch's `torch.save` files (zip and legacy);
//!   [`torchvision`] maps torchvision's `alexnet` state_dict onto `alexnet-owt`.
//! - [`proto_read`], [`caffe`]: Caffe's `.caffemodel` (protobuf, V1 and current layers).
//! - [`proto_write`], [`onnx`]: ONNX export.
//! - [`classes`]: the ImageNet-1k class list attached to imported ImageNet models.

pub mod caffe;
pub mod classes;
pub mod error;
pub mod onnx;
pub mod pickle;
pub mod proto_read;
pub mod proto_write;
pub mod torch;
pub mod torchvision;
pub mod zip;

pub use error::{Error, Result};

use alexnet::NetSpec;
use alexnet::spec::PixelScale;

/// One parameter tensor under our name (`conv1.weight`), its shape and values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A net brought in from another framework, ready to become a checkpoint.
#[derive(Clone, Debug)]
pub struct Imported {
    /// Our description of the net (layers, input size, classes).
    pub spec: NetSpec,
    /// Every parameter the description has, under our names and layouts.
    pub tensors: Vec<NamedTensor>,
    /// How an image must be turned into the net's input.
    pub input: InputConvention,
    /// Where the weights came from, in words (shown by `alexnet info`).
    pub source: String,
}

impl Imported {
    /// Refuses NaN and infinite weights and means, naming the tensor: they would
    /// flow silently into every result (and every checkpoint) after import.
    pub fn checked_finite(self, file: &str) -> Result<Imported> {
        for (name, _, values) in &self.tensors {
            alexnet::checkpoint::check_finite(values)
                .map_err(|e| Error::format(file, format!("tensor {name}: {e}")))?;
        }
        if let Some(mean) = &self.input.mean_image {
            alexnet::checkpoint::check_finite(mean)
                .map_err(|e| Error::format(file, format!("the mean image: {e}")))?;
        }
        let finite = self
            .input
            .channel_mean
            .iter()
            .chain(&self.input.channel_std);
        if let Some(bad) = finite.into_iter().find(|v| !v.is_finite()) {
            return Err(Error::format(
                file,
                format!("a per-channel mean or deviation is {bad}; expected finite numbers"),
            ));
        }
        Ok(self)
    }
}

/// The preprocessing imported weights expect, in our terms: the image's shorter
/// side is resized to `resize` and the centre `resize x resize` square kept, then
/// the centre `spec.input` patch is taken. Pixels are RGB (importers reorder
/// weights trained on BGR), scaled as `pixels` says.
#[derive(Clone, Debug, PartialEq)]
pub struct InputConvention {
    pub resize: usize,
    pub pixels: PixelScale,
    /// Per-channel mean, RGB. `RawMinusMean`: on the 0-255 scale, used when
    /// `mean_image` is absent. `UnitMeanStd`: on the [0, 1] scale.
    pub channel_mean: [f32; 3],
    /// Per-channel standard deviation on the [0, 1] scale (`UnitMeanStd` only).
    pub channel_std: [f32; 3],
    /// A per-pixel mean image, RGB, CHW at `resize x resize`, 0-255 scale
    /// (`RawMinusMean` only; Caffe's mean.binaryproto).
    pub mean_image: Option<Vec<f32>>,
}
