//! Caffe's `.caffemodel` (a binary `NetParameter`) and `mean.binaryproto` (a
//! `BlobProto`), as trained for `bvlc_alexnet` and `bvlc_reference_caffenet`.
//!
//! The layers are read in file order and must form one chain (each computing
//! layer reads what the previous one wrote); they become our [`NetSpec`]:
//! Convolution, InnerProduct, ReLU, TanH, LRN, Pooling (max, average) and
//! Dropout. Data and input layers only tell the input size; Softmax, loss and
//! accuracy layers are left out (our net ends at the class scores); Flatten is
//! implicit in our linear layers. Both the current `layer` and the V1 `layers`
//! encodings are read; the V0 encoding (before 2014) is not. [`parse_prototxt`]
//! reads the same nets from Caffe's text format (a `.prototxt`, no weights).
//!
//! The input size is the net's declared input (`input_dim`, `input_shape`, an
//! Input layer) or its data layer's crop, else bvlc_alexnet's 227.
//!
//! Conventions converted:
//! - Caffe's input is BGR: conv1's input-channel axis is reversed so the net
//!   takes RGB, and the mean image is reordered the same way.
//! - Caffe's LRN divides alpha by the window size and normalises across all
//!   channels (not per tower): `LrnSpec { size: n, alpha: alpha / n, groups: 1 }`.
//!   WITHIN_CHANNEL normalisation is refused.
//! - Caffe rounds pooling output sizes up, ours rounds down: a layer where the
//!   two differ at the net's input size is refused, as is padded pooling.
//! - Weights keep their layouts (conv `[out, in/groups, k, k]`, inner product
//!   `[out, in]`, the same as ours); blobs stored with the old
//!   num/channels/height/width dims (an fc weight as 1x1xOUTxIN) are accepted
//!   when they equal the expected shape up to leading 1s.
//!
//! Field numbers used, from Caffe's `src/caffe/proto/caffe.proto`:
//! ```text
//! NetParameter      name=1  layers=2 (V1LayerParameter)  input=3  input_dim=4
//!                   input_shape=8 (BlobShape)  layer=100 (LayerParameter)
//! LayerParameter    name=1 type=2 (string) bottom=3 top=4 blobs=7
//!                   transform_param=100 convolution_param=106 data_param=107
//!                   dropout_param=108 inner_product_param=117 lrn_param=118
//!                   pooling_param=121 relu_param=123 input_param=143
//! V1LayerParameter  layer=1 (V0, refused) bottom=2 top=3 name=4 type=5 (enum)
//!                   blobs=6 convolution_param=10 data_param=11 dropout_param=12
//!                   inner_product_param=17 lrn_param=18 pooling_param=19
//!                   relu_param=30 transform_param=36
//! V1 LayerType      ACCURACY=1 CONVOLUTION=4 DATA=5 DROPOUT=6 FLATTEN=8
//!                   HDF5_DATA=9 IMAGE_DATA=12 INNER_PRODUCT=14 LRN=15
//!                   MEMORY_DATA=29 POOLING=17 RELU=18 SOFTMAX=20 SOFTMAX_LOSS=21
//!                   TANH=23 WINDOW_DATA=24 DUMMY_DATA=32 SILENCE=36 (others refused)
//! BlobProto         num=1 channels=2 height=3 width=4 (int64, legacy dims)
//!                   data=5 (packed float) shape=7 (BlobShape) double_data=8
//! BlobShape         dim=1 (packed int64)
//! ConvolutionParameter  num_output=1 bias_term=2 pad=3 kernel_size=4 group=5
//!                   stride=6 pad_h=9 pad_w=10 kernel_h=11 kernel_w=12
//!                   stride_h=13 stride_w=14 dilation=18
//! InnerProductParameter num_output=1 bias_term=2 axis=5 transpose=6
//! LRNParameter      local_size=1 alpha=2 beta=3 norm_region=4 (ACROSS_CHANNELS=0,
//!                   WITHIN_CHANNEL=1) k=5
//! PoolingParameter  pool=1 (MAX=0 AVE=1 STOCHASTIC=2) kernel_size=2 stride=3
//!                   pad=4 kernel_h=5 kernel_w=6 stride_h=7 stride_w=8 pad_h=9
//!                   pad_w=10 global_pooling=12
//! DropoutParameter  dropout_ratio=1
//! ReLUParameter     negative_slope=1
//! TransformationParameter crop_size=3;  DataParameter crop_size=5
//! InputParameter    shape=1 (BlobShape)
//! ```

mod chain;
mod layers;
mod mean;
mod prototxt;
mod schema;
mod weights;

use alexnet::spec::{InputSpec, PixelScale, Recipe};
use alexnet::{NetSpec, Plan};

use self::chain::{Chain, check_pooling, translate};
use self::layers::input_geometry;
use self::mean::{default_convention, mean_convention};
use self::schema::{Net, read_net};
use self::weights::collect_tensors;
use crate::{Error, Imported, Result};

/// Our description of a net read from either encoding, validated by
/// [`Plan::new`] and refused where Caffe's pooling would size differently.
fn describe(net: &Net<'_>, file: &str) -> Result<(NetSpec, Chain, Plan)> {
    let (channels, height, width) = input_geometry(net, file)?;
    let chain = translate(net, file)?;
    let spec = NetSpec {
        name: if net.name.is_empty() {
            "caffe".to_string()
        } else {
            net.name.clone()
        },
        classes: chain.classes,
        input: InputSpec {
            channels,
            height,
            width,
            pixels: PixelScale::RawMinusMean,
        },
        recipe: Recipe::default(),
        layers: chain.layers.clone(),
    };
    let plan = Plan::new(&spec)
        .map_err(|e| Error::format(file, format!("the layers do not fit together: {e}")))?;
    check_pooling(&plan, &chain, net, file)?;
    Ok((spec, chain, plan))
}

/// Imports a Caffe net: `model` is a `.caffemodel`'s bytes, `file` its name for
/// errors, and `mean` optionally a `mean.binaryproto`'s bytes and name (without
/// it, the input convention uses Caffe's usual per-channel mean).
///
/// The result takes RGB images on the 0-255 scale minus the mean; its
/// description is validated by [`Plan::new`] and every tensor has the plan's
/// shape.
pub fn import(model: &[u8], file: &str, mean: Option<(&[u8], &str)>) -> Result<Imported> {
    let net = read_net(model, file)?;
    let (spec, chain, plan) = describe(&net, file)?;
    let tensors = collect_tensors(&plan, &chain, &net, file)?;
    let (input, mean_note) = match mean {
        Some((bytes, mean_file)) => (
            mean_convention(bytes, mean_file, &spec)?,
            format!(", mean image from {mean_file}"),
        ),
        None => (
            default_convention(),
            ", Caffe's per-channel mean".to_string(),
        ),
    };
    let source = format!(
        "Caffe model {file} (net '{}', {} layer format{mean_note}), BGR input reordered to RGB",
        spec.name,
        if net.v1 { "V1" } else { "current" },
    );
    Imported {
        spec,
        tensors,
        input,
        source,
    }
    .checked_finite(file)
}

/// Our description of the net a `.prototxt` (Caffe's text format, current or
/// V1 layers) defines: the same translation as [`import`], without weights.
/// The input size comes from `input_dim` / `input_shape`, an Input layer or a
/// data layer's crop, else 227.
pub fn parse_prototxt(text: &str, file: &str) -> Result<NetSpec> {
    let binary = prototxt::to_binary(text, file)?;
    let net = read_net(&binary, file)?;
    Ok(describe(&net, file)?.0)
}
