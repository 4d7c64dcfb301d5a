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

use std::collections::HashSet;

mod prototxt;

use alexnet::plan::Op;
use alexnet::spec::{
    ConvSpec, DropoutSpec, InputSpec, LayerSpec, LinearSpec, LrnSpec, PixelScale, PoolSpec, Recipe,
};
use alexnet::{NetSpec, Plan};

use crate::proto_read::{self as pb, DecodeError, DecodeResult, Field, Reader};
use crate::{Error, Imported, InputConvention, NamedTensor, Result};

/// The input side when nothing in the file gives it (bvlc_alexnet's crop).
const DEFAULT_INPUT: usize = 227;
/// The resize side when no mean file gives it.
const DEFAULT_RESIZE: usize = 256;
/// Caffe's usual per-channel BGR mean (104, 117, 123), as RGB.
const DEFAULT_MEAN_RGB: [f32; 3] = [123.0, 117.0, 104.0];

/// Bounds on sizes read from the file, far above any real net, so that the
/// plan's arithmetic cannot overflow on a hostile value.
const MAX_SIDE: u64 = 1 << 16;
const MAX_CHANNELS: u64 = 1 << 24;

/// Where in the file a problem is, to build errors that name it.
struct Ctx<'f> {
    file: &'f str,
    place: String,
}

impl Ctx<'_> {
    fn format(&self, message: impl std::fmt::Display) -> Error {
        Error::format(self.file, format!("{}: {message}", self.place))
    }
    fn unsupported(&self, message: impl std::fmt::Display) -> Error {
        Error::unsupported(self.file, format!("{}: {message}", self.place))
    }
    fn check<T>(&self, result: DecodeResult<T>) -> Result<T> {
        result.map_err(|e: DecodeError| self.format(e))
    }
    /// Every field of a message, read up front so that decoding errors are
    /// reported in one place.
    fn fields<'a>(&self, reader: &mut Reader<'a>) -> Result<Vec<Field<'a>>> {
        let mut fields = Vec::new();
        while let Some(field) = self.check(reader.next_field())? {
            fields.push(field);
        }
        Ok(fields)
    }
}

/// Field numbers of a layer message, which differ between the current
/// `LayerParameter` and the V1 `V1LayerParameter` while meaning the same.
struct LayerFields {
    v1: bool,
    name: u32,
    kind: u32,
    bottom: u32,
    top: u32,
    blobs: u32,
    transform: u32,
    conv: u32,
    data: u32,
    dropout: u32,
    inner_product: u32,
    lrn: u32,
    pooling: u32,
    relu: u32,
    /// `InputParameter` (current layers only; 0 = none).
    input: u32,
    /// The nested V0 layer (V1 only; 0 = none).
    v0: u32,
}

const CURRENT: LayerFields = LayerFields {
    v1: false,
    name: 1,
    kind: 2,
    bottom: 3,
    top: 4,
    blobs: 7,
    transform: 100,
    conv: 106,
    data: 107,
    dropout: 108,
    inner_product: 117,
    lrn: 118,
    pooling: 121,
    relu: 123,
    input: 143,
    v0: 0,
};

const V1: LayerFields = LayerFields {
    v1: true,
    name: 4,
    kind: 5,
    bottom: 2,
    top: 3,
    blobs: 6,
    transform: 36,
    conv: 10,
    data: 11,
    dropout: 12,
    inner_product: 17,
    lrn: 18,
    pooling: 19,
    relu: 30,
    input: 0,
    v0: 1,
};

/// The current layer type name of a V1 `LayerType`, so both encodings share
/// one translation.
fn v1_type_name(code: u64) -> String {
    let name = match code {
        1 => "Accuracy",
        2 => "BNLL",
        3 => "Concat",
        4 => "Convolution",
        5 => "Data",
        6 => "Dropout",
        7 => "EuclideanLoss",
        8 => "Flatten",
        9 => "HDF5Data",
        10 => "HDF5Output",
        11 => "Im2col",
        12 => "ImageData",
        13 => "InfogainLoss",
        14 => "InnerProduct",
        15 => "LRN",
        16 => "MultinomialLogisticLoss",
        17 => "Pooling",
        18 => "ReLU",
        19 => "Sigmoid",
        20 => "Softmax",
        21 => "SoftmaxWithLoss",
        22 => "Split",
        23 => "TanH",
        24 => "WindowData",
        25 => "Eltwise",
        26 => "Power",
        29 => "MemoryData",
        32 => "DummyData",
        33 => "Slice",
        36 => "Silence",
        39 => "Deconvolution",
        other => return format!("V1 layer type {other}"),
    };
    name.to_string()
}

/// One layer as stored: names, type, and the raw bytes of its blobs and of the
/// parameter messages the translation may need.
struct RawLayer<'a> {
    /// 1-based position among the file's layers.
    index: usize,
    name: String,
    kind: String,
    bottoms: Vec<String>,
    tops: Vec<String>,
    blobs: Vec<&'a [u8]>,
    transform: Option<&'a [u8]>,
    conv: Option<&'a [u8]>,
    data: Option<&'a [u8]>,
    dropout: Option<&'a [u8]>,
    inner_product: Option<&'a [u8]>,
    lrn: Option<&'a [u8]>,
    pooling: Option<&'a [u8]>,
    relu: Option<&'a [u8]>,
    input: Option<&'a [u8]>,
    /// The layer's own reader, parent of its nested messages' readers.
    reader: Reader<'a>,
}

impl<'a> RawLayer<'a> {
    fn label(&self) -> String {
        format!("layer {} ({})", self.index, self.name)
    }

    fn ctx<'f>(&self, file: &'f str) -> Ctx<'f> {
        Ctx {
            file,
            place: self.label(),
        }
    }

    /// The fields of one of the layer's parameter messages (empty when absent:
    /// every parameter then takes Caffe's default).
    fn param(&self, bytes: Option<&'a [u8]>, ctx: &Ctx<'_>) -> Result<Vec<Field<'a>>> {
        match bytes {
            None => Ok(Vec::new()),
            Some(bytes) => ctx.fields(&mut ctx.check(self.reader.nested(bytes))?),
        }
    }
}

/// The parts of a `NetParameter` the import uses.
struct Net<'a> {
    name: String,
    v1: bool,
    inputs: Vec<String>,
    input_dim: Vec<u64>,
    input_shapes: Vec<Vec<u64>>,
    layers: Vec<RawLayer<'a>>,
}

fn read_net<'a>(model: &'a [u8], file: &str) -> Result<Net<'a>> {
    let top = Ctx {
        file,
        place: "the net (NetParameter)".into(),
    };
    let mut reader = Reader::new(model);
    let fields = top.fields(&mut reader).map_err(|e| match e {
        Error::Format { file, message } => Error::Format {
            file,
            message: format!("{message}; is this a binary .caffemodel, complete?"),
        },
        other => other,
    })?;
    let mut net = Net {
        name: String::new(),
        v1: false,
        inputs: Vec::new(),
        input_dim: Vec::new(),
        input_shapes: Vec::new(),
        layers: Vec::new(),
    };
    let (mut current, mut old) = (Vec::new(), Vec::new());
    for field in &fields {
        match field.number {
            1 => net.name = top.check(pb::string(field))?,
            2 => old.push(top.check(pb::bytes(field))?),
            3 => net.inputs.push(top.check(pb::string(field))?),
            4 => top.check(pb::push_varints(&mut net.input_dim, field))?,
            8 => {
                let bytes = top.check(pb::bytes(field))?;
                let shape = read_shape(&mut top.check(reader.nested(bytes))?, &top)?;
                net.input_shapes.push(shape);
            }
            100 => current.push(top.check(pb::bytes(field))?),
            _ => {}
        }
    }
    let (messages, table) = match (current.is_empty(), old.is_empty()) {
        (false, false) => {
            return Err(top.format(
                "both `layer` (current) and `layers` (V1) fields are present; Caffe refuses such nets too",
            ));
        }
        (true, true) => {
            return Err(
                top.format("no layers: not a Caffe NetParameter (a .caffemodel), or an empty one")
            );
        }
        (false, true) => (current, &CURRENT),
        (true, false) => (old, &V1),
    };
    net.v1 = table.v1;
    for (i, bytes) in messages.into_iter().enumerate() {
        let layer_reader = top.check(reader.nested(bytes))?;
        net.layers
            .push(read_layer(layer_reader, i + 1, table, file)?);
    }
    Ok(net)
}

fn read_layer<'a>(
    reader: Reader<'a>,
    index: usize,
    table: &LayerFields,
    file: &str,
) -> Result<RawLayer<'a>> {
    let ctx = Ctx {
        file,
        place: format!("layer {index}"),
    };
    let fields = ctx.fields(&mut reader.clone())?;
    let mut layer = RawLayer {
        index,
        name: String::new(),
        kind: String::new(),
        bottoms: Vec::new(),
        tops: Vec::new(),
        blobs: Vec::new(),
        transform: None,
        conv: None,
        data: None,
        dropout: None,
        inner_product: None,
        lrn: None,
        pooling: None,
        relu: None,
        input: None,
        reader,
    };
    for field in &fields {
        let n = field.number;
        let slot = match n {
            _ if n == table.name => {
                layer.name = ctx.check(pb::string(field))?;
                continue;
            }
            _ if n == table.kind => {
                layer.kind = if table.v1 {
                    v1_type_name(ctx.check(pb::varint(field))?)
                } else {
                    ctx.check(pb::string(field))?
                };
                continue;
            }
            _ if n == table.bottom => {
                layer.bottoms.push(ctx.check(pb::string(field))?);
                continue;
            }
            _ if n == table.top => {
                layer.tops.push(ctx.check(pb::string(field))?);
                continue;
            }
            _ if n == table.blobs => {
                layer.blobs.push(ctx.check(pb::bytes(field))?);
                continue;
            }
            _ if n == table.v0 => {
                return Err(ctx.unsupported(
                    "the V0 layer encoding (Caffe before 2014); upgrade the model with Caffe's upgrade_net_proto_binary",
                ));
            }
            _ if n == table.transform => &mut layer.transform,
            _ if n == table.conv => &mut layer.conv,
            _ if n == table.data => &mut layer.data,
            _ if n == table.dropout => &mut layer.dropout,
            _ if n == table.inner_product => &mut layer.inner_product,
            _ if n == table.lrn => &mut layer.lrn,
            _ if n == table.pooling => &mut layer.pooling,
            _ if n == table.relu => &mut layer.relu,
            _ if n == table.input => &mut layer.input,
            _ => continue,
        };
        *slot = Some(ctx.check(pb::bytes(field))?);
    }
    if layer.name.is_empty() {
        layer.name = format!("layer{index}");
    }
    if layer.kind.is_empty() {
        return Err(ctx.format("no layer type"));
    }
    Ok(layer)
}

/// A `BlobShape`'s dims; negative dims are refused.
fn read_shape(reader: &mut Reader<'_>, ctx: &Ctx<'_>) -> Result<Vec<u64>> {
    let mut dims = Vec::new();
    for field in ctx.fields(reader)? {
        if field.number == 1 {
            ctx.check(pb::push_varints(&mut dims, &field))?;
        }
    }
    if let Some(bad) = dims.iter().find(|&&d| (d as i64) < 0) {
        return Err(ctx.format(format!("negative dimension {} in a shape", *bad as i64)));
    }
    Ok(dims)
}

/// A decoded `BlobProto`: its declared dims and its values.
struct Blob {
    dims: Vec<u64>,
    data: Vec<f32>,
}

fn read_blob(reader: &mut Reader<'_>, ctx: &Ctx<'_>) -> Result<Blob> {
    let mut legacy = [0i64; 4];
    let mut shape = None;
    let mut data = Vec::new();
    let mut doubles = Vec::new();
    for field in ctx.fields(reader)? {
        match field.number {
            n @ 1..=4 => legacy[n as usize - 1] = ctx.check(pb::int64(&field))?,
            5 => ctx.check(pb::push_f32(&mut data, &field))?,
            7 => {
                let bytes = ctx.check(pb::bytes(&field))?;
                shape = Some(read_shape(&mut ctx.check(reader.nested(bytes))?, ctx)?);
            }
            8 => ctx.check(pb::push_f64(&mut doubles, &field))?,
            _ => {}
        }
    }
    if !doubles.is_empty() {
        if !data.is_empty() {
            return Err(ctx.format("holds both float and double data"));
        }
        data = doubles.into_iter().map(|v| v as f32).collect();
    }
    let dims = match shape {
        Some(dims) => dims,
        None => {
            if legacy.iter().any(|&d| d < 0) {
                return Err(ctx.format(format!("negative dimension in {legacy:?}")));
            }
            legacy.iter().map(|&d| d as u64).collect()
        }
    };
    let declared = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    match declared {
        Some(n) if n == data.len() as u64 => Ok(Blob { dims, data }),
        Some(n) => Err(ctx.format(format!(
            "declares shape {dims:?} ({n} values) but holds {} values",
            data.len()
        ))),
        None => Err(ctx.format(format!(
            "declares shape {dims:?}, more values than can be counted, but holds {}",
            data.len()
        ))),
    }
}

/// Dims without their leading 1s: old blobs pad every shape to four dims
/// (an fc weight is 1x1xOUTxIN), which does not change the layout.
fn trimmed(dims: &[u64]) -> &[u64] {
    let first = dims.iter().position(|&d| d != 1).unwrap_or(dims.len());
    &dims[first..]
}

fn bounded(value: u64, max: u64, what: &str, ctx: &Ctx<'_>) -> Result<usize> {
    if value > max {
        return Err(ctx.format(format!("{what} {value} is implausibly large (over {max})")));
    }
    Ok(value as usize)
}

/// One square size from the forms Caffe allows: a repeated field (one value, or
/// one per spatial axis) and separate `_h` / `_w` fields. All given values must
/// agree, since our kernels, strides and pads are square.
fn square(
    values: &[u64],
    h: Option<u64>,
    w: Option<u64>,
    default: Option<u64>,
    what: &str,
    ctx: &Ctx<'_>,
) -> Result<usize> {
    let given: Vec<u64> = values.iter().copied().chain(h).chain(w).collect();
    let Some(&first) = given.first().or(default.as_ref()) else {
        return Err(ctx.format(format!("no {what} given")));
    };
    if given.iter().any(|&v| v != first) {
        return Err(ctx.unsupported(format!(
            "a non-square {what} {given:?} (only square ones are supported)"
        )));
    }
    bounded(first, MAX_SIDE, what, ctx)
}

struct ConvParam {
    out: usize,
    bias: bool,
    kernel: usize,
    stride: usize,
    pad: usize,
    groups: usize,
}

fn conv_param(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<ConvParam> {
    let (mut out, mut bias, mut group) = (None, true, 1u64);
    let (mut kernel, mut stride, mut pad, mut dilation) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut hw = [None::<u64>; 6]; // pad_h, pad_w, kernel_h, kernel_w, stride_h, stride_w
    for field in layer.param(layer.conv, ctx)? {
        match field.number {
            1 => out = Some(ctx.check(pb::varint(&field))?),
            2 => bias = ctx.check(pb::boolean(&field))?,
            3 => ctx.check(pb::push_varints(&mut pad, &field))?,
            4 => ctx.check(pb::push_varints(&mut kernel, &field))?,
            5 => group = ctx.check(pb::varint(&field))?,
            6 => ctx.check(pb::push_varints(&mut stride, &field))?,
            n @ 9..=14 => hw[n as usize - 9] = Some(ctx.check(pb::varint(&field))?),
            18 => ctx.check(pb::push_varints(&mut dilation, &field))?,
            _ => {}
        }
    }
    if dilation.iter().any(|&d| d != 1) {
        return Err(ctx.unsupported(format!("dilated convolution (dilation {dilation:?})")));
    }
    let out = out.ok_or_else(|| ctx.format("no num_output"))?;
    Ok(ConvParam {
        out: bounded(out, MAX_CHANNELS, "num_output", ctx)?,
        bias,
        kernel: square(&kernel, hw[2], hw[3], None, "kernel size", ctx)?,
        stride: square(&stride, hw[4], hw[5], Some(1), "stride", ctx)?,
        pad: square(&pad, hw[0], hw[1], Some(0), "padding", ctx)?,
        groups: bounded(group, MAX_CHANNELS, "group", ctx)?,
    })
}

struct InnerProductParam {
    out: usize,
    bias: bool,
    transpose: bool,
}

fn inner_product_param(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<InnerProductParam> {
    let (mut out, mut bias, mut transpose) = (None, true, false);
    for field in layer.param(layer.inner_product, ctx)? {
        match field.number {
            1 => out = Some(ctx.check(pb::varint(&field))?),
            2 => bias = ctx.check(pb::boolean(&field))?,
            5 => {
                let axis = ctx.check(pb::int64(&field))?;
                if axis != 1 {
                    return Err(ctx.unsupported(format!(
                        "an inner product over axis {axis} (only axis 1, everything after the batch)"
                    )));
                }
            }
            6 => transpose = ctx.check(pb::boolean(&field))?,
            _ => {}
        }
    }
    let out = out.ok_or_else(|| ctx.format("no num_output"))?;
    Ok(InnerProductParam {
        out: bounded(out, MAX_CHANNELS, "num_output", ctx)?,
        bias,
        transpose,
    })
}

fn lrn_spec(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<LrnSpec> {
    // Caffe's defaults.
    let (mut size, mut alpha, mut beta, mut k) = (5u64, 1.0f32, 0.75f32, 1.0f32);
    for field in layer.param(layer.lrn, ctx)? {
        match field.number {
            1 => size = ctx.check(pb::varint(&field))?,
            2 => alpha = ctx.check(pb::float(&field))?,
            3 => beta = ctx.check(pb::float(&field))?,
            4 => {
                let region = ctx.check(pb::varint(&field))?;
                if region != 0 {
                    let region = match region {
                        1 => "WITHIN_CHANNEL (a spatial window in each channel)".to_string(),
                        other => other.to_string(),
                    };
                    return Err(ctx.unsupported(format!(
                        "LRN norm_region {region}; only ACROSS_CHANNELS is supported"
                    )));
                }
            }
            5 => k = ctx.check(pb::float(&field))?,
            _ => {}
        }
    }
    let size = bounded(size, MAX_CHANNELS, "local_size", ctx)?;
    if size == 0 {
        return Err(ctx.format("LRN local_size 0"));
    }
    Ok(LrnSpec {
        size,
        // Caffe divides alpha by the window size; ours is the paper's, undivided.
        alpha: alpha / size as f32,
        beta,
        k,
        // Caffe runs the net as one tower: every channel is in one window range.
        groups: 1,
    })
}

fn pooling_spec(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<LayerSpec> {
    let mut method = 0u64;
    let (mut kernel, mut stride, mut pad) = (Vec::new(), Vec::new(), Vec::new());
    let mut hw = [None::<u64>; 6]; // kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w
    for field in layer.param(layer.pooling, ctx)? {
        match field.number {
            1 => method = ctx.check(pb::varint(&field))?,
            2 => ctx.check(pb::push_varints(&mut kernel, &field))?,
            3 => ctx.check(pb::push_varints(&mut stride, &field))?,
            4 => ctx.check(pb::push_varints(&mut pad, &field))?,
            n @ 5..=10 => hw[n as usize - 5] = Some(ctx.check(pb::varint(&field))?),
            12 if ctx.check(pb::boolean(&field))? => {
                return Err(ctx.unsupported("global pooling"));
            }
            _ => {}
        }
    }
    let pad = square(&pad, hw[4], hw[5], Some(0), "padding", ctx)?;
    if pad != 0 {
        return Err(ctx.unsupported(format!(
            "padded pooling (pad {pad}); our pooling has no padding"
        )));
    }
    let spec = PoolSpec {
        size: square(&kernel, hw[0], hw[1], None, "kernel size", ctx)?,
        stride: square(&stride, hw[2], hw[3], Some(1), "stride", ctx)?,
    };
    match method {
        0 => Ok(LayerSpec::MaxPool(spec)),
        1 => Ok(LayerSpec::AvgPool(spec)),
        2 => Err(ctx.unsupported("stochastic pooling")),
        other => Err(ctx.format(format!("unknown pooling method {other}"))),
    }
}

fn dropout_spec(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<DropoutSpec> {
    let mut p = 0.5f32;
    for field in layer.param(layer.dropout, ctx)? {
        if field.number == 1 {
            p = ctx.check(pb::float(&field))?;
        }
    }
    Ok(DropoutSpec { p })
}

fn check_relu(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<()> {
    for field in layer.param(layer.relu, ctx)? {
        if field.number == 1 {
            let slope = ctx.check(pb::float(&field))?;
            if slope != 0.0 {
                return Err(ctx.unsupported(format!("leaky ReLU (negative_slope {slope})")));
            }
        }
    }
    Ok(())
}

/// The input's side from a data layer's crop (the transformation's crop_size,
/// or the deprecated DataParameter's).
fn data_crop(layer: &RawLayer<'_>, file: &str) -> Result<Option<u64>> {
    let ctx = layer.ctx(file);
    let mut crop = None;
    for field in layer.param(layer.transform, &ctx)? {
        if field.number == 3 {
            crop = Some(ctx.check(pb::varint(&field))?);
        }
    }
    for field in layer.param(layer.data, &ctx)? {
        if field.number == 5 && crop.is_none() {
            crop = Some(ctx.check(pb::varint(&field))?);
        }
    }
    Ok(crop.filter(|&c| c != 0))
}

/// The shape an `Input` layer declares (its first).
fn input_layer_shape(layer: &RawLayer<'_>, file: &str) -> Result<Option<Vec<u64>>> {
    let ctx = layer.ctx(file);
    for field in layer.param(layer.input, &ctx)? {
        if field.number == 1 {
            let bytes = ctx.check(pb::bytes(&field))?;
            let mut reader = ctx.check(layer.reader.nested(bytes))?;
            return Ok(Some(read_shape(&mut reader, &ctx)?));
        }
    }
    Ok(None)
}

fn is_source(kind: &str) -> bool {
    matches!(
        kind,
        "Data" | "Input" | "ImageData" | "MemoryData" | "HDF5Data" | "DummyData" | "WindowData"
    )
}

/// Layers that compute nothing our net needs: they end a chain (loss, accuracy,
/// softmax) or do nothing at test time.
fn is_left_out(kind: &str) -> bool {
    matches!(
        kind,
        "Softmax" | "SoftmaxWithLoss" | "Accuracy" | "Silence" | "MultinomialLogisticLoss"
    )
}

/// Channels, height and width of the input: from the net's declared inputs,
/// an Input layer, a data layer's crop, or bvlc_alexnet's 227.
fn input_geometry(net: &Net<'_>, file: &str) -> Result<(usize, usize, usize)> {
    let ctx = Ctx {
        file,
        place: "the net's input".into(),
    };
    let mut shape = net.input_shapes.first().cloned();
    if shape.is_none() && net.input_dim.len() >= 4 {
        shape = Some(net.input_dim[..4].to_vec());
    }
    for layer in &net.layers {
        if shape.is_some() {
            break;
        }
        if layer.kind == "Input" {
            shape = input_layer_shape(layer, file)?;
        } else if is_source(&layer.kind) {
            if let Some(crop) = data_crop(layer, file)? {
                shape = Some(vec![1, 3, crop, crop]);
            }
        }
    }
    let shape = shape.unwrap_or(vec![1, 3, DEFAULT_INPUT as u64, DEFAULT_INPUT as u64]);
    let [_, c, h, w] = shape[..] else {
        return Err(ctx.unsupported(format!(
            "an input of shape {shape:?} (expected batch, channels, height, width)"
        )));
    };
    if c != 3 {
        return Err(ctx.unsupported(format!(
            "{c} input channels (expected 3, BGR, as Caffe's ImageNet nets)"
        )));
    }
    let side = |v| bounded(v, MAX_SIDE, "input side", &ctx);
    Ok((3, side(h)?, side(w)?))
}

/// A layer with weights, and where its blobs are.
struct Weighted {
    name: String,
    raw: usize,
    bias: bool,
    transpose: bool,
}

/// The net translated: our layers (each with the index of the Caffe layer it
/// came from), the layers with weights, and the number of classes.
struct Chain {
    layers: Vec<LayerSpec>,
    origins: Vec<usize>,
    weighted: Vec<Weighted>,
    classes: usize,
}

/// Checks that `layer` continues the chain (reads what the previous computing
/// layer wrote) and returns the blob it writes.
fn follow(layer: &RawLayer<'_>, current: &Option<String>, file: &str) -> Result<String> {
    let ctx = layer.ctx(file);
    if layer.bottoms.len() != 1 || layer.tops.len() != 1 {
        return Err(ctx.unsupported(format!(
            "{} inputs and {} outputs (only nets that are one chain of layers are supported)",
            layer.bottoms.len(),
            layer.tops.len()
        )));
    }
    if let Some(current) = current {
        if &layer.bottoms[0] != current {
            return Err(ctx.unsupported(format!(
                "reads blob '{}' but the chain so far ends in '{current}' (only nets that are one chain of layers are supported)",
                layer.bottoms[0]
            )));
        }
    }
    Ok(layer.tops[0].clone())
}

fn translate(net: &Net<'_>, file: &str) -> Result<Chain> {
    let last_fc = net
        .layers
        .iter()
        .rposition(|l| l.kind == "InnerProduct")
        .ok_or_else(|| {
            Error::unsupported(file, "no InnerProduct layer to produce the class scores")
        })?;
    if net.inputs.len() > 1 {
        return Err(Error::unsupported(
            file,
            format!(
                "{} inputs {:?} (expected one image input)",
                net.inputs.len(),
                net.inputs
            ),
        ));
    }
    let mut chain = Chain {
        layers: Vec::new(),
        origins: Vec::new(),
        weighted: Vec::new(),
        classes: 0,
    };
    let mut current = net.inputs.first().cloned();
    let mut names = HashSet::new();
    for (raw, layer) in net.layers.iter().enumerate() {
        let ctx = layer.ctx(file);
        if is_left_out(&layer.kind) {
            continue;
        }
        if is_source(&layer.kind) {
            if !chain.layers.is_empty() {
                return Err(ctx.unsupported("a data layer after the first computing layer"));
            }
            current = layer.tops.first().cloned();
            continue;
        }
        let top = follow(layer, &current, file)?;
        current = Some(top);
        let spec = match layer.kind.as_str() {
            "Flatten" => continue,
            "Convolution" => {
                let p = conv_param(layer, &ctx)?;
                chain.weighted.push(Weighted {
                    name: layer.name.clone(),
                    raw,
                    bias: p.bias,
                    transpose: false,
                });
                LayerSpec::Conv(ConvSpec {
                    name: layer.name.clone(),
                    out: p.out,
                    kernel: p.kernel,
                    stride: p.stride,
                    pad: p.pad,
                    groups: p.groups,
                    init_std: 0.01,
                    bias_init: 0.0,
                })
            }
            "InnerProduct" => {
                let p = inner_product_param(layer, &ctx)?;
                chain.weighted.push(Weighted {
                    name: layer.name.clone(),
                    raw,
                    bias: p.bias,
                    transpose: p.transpose,
                });
                // The last inner product gives the class scores.
                let out = if raw == last_fc {
                    chain.classes = p.out;
                    None
                } else {
                    Some(p.out)
                };
                LayerSpec::Linear(LinearSpec {
                    name: layer.name.clone(),
                    out,
                    init_std: 0.01,
                    bias_init: 0.0,
                })
            }
            "ReLU" => {
                check_relu(layer, &ctx)?;
                LayerSpec::Relu
            }
            "TanH" => LayerSpec::Tanh,
            "LRN" => LayerSpec::Lrn(lrn_spec(layer, &ctx)?),
            "Pooling" => pooling_spec(layer, &ctx)?,
            "Dropout" => LayerSpec::Dropout(dropout_spec(layer, &ctx)?),
            other => {
                return Err(ctx.unsupported(format!("layer type '{other}'")));
            }
        };
        if matches!(spec, LayerSpec::Conv(_) | LayerSpec::Linear(_))
            && !names.insert(layer.name.clone())
        {
            return Err(ctx.format(format!("a second layer named '{}'", layer.name)));
        }
        chain.layers.push(spec);
        chain.origins.push(raw);
    }
    Ok(chain)
}

/// Refuses pooling layers whose output Caffe (rounding up) and we (rounding
/// down) would size differently at this input size: the weights after them
/// would see a different grid.
fn check_pooling(plan: &Plan, chain: &Chain, net: &Net<'_>, file: &str) -> Result<()> {
    for (planned, &raw) in plan.layers.iter().zip(&chain.origins) {
        let (Op::MaxPool { geometry } | Op::AvgPool { geometry }) = &planned.op else {
            continue;
        };
        let (k, s) = (geometry.size, geometry.stride);
        let ceil = |side: usize| (side - k).div_ceil(s) + 1;
        let (h, w) = (geometry.input.height, geometry.input.width);
        if ceil(h) != geometry.output.height || ceil(w) != geometry.output.width {
            return Err(net.layers[raw].ctx(file).unsupported(format!(
                "at this input size ({}x{}) the {k}x{k} stride {s} windows do not fit its {h}x{w} input exactly: \
                 Caffe rounds the output up to {}x{}, our pooling rounds down to {}x{}",
                plan.spec.input.height,
                plan.spec.input.width,
                ceil(h),
                ceil(w),
                geometry.output.height,
                geometry.output.width
            )));
        }
    }
    Ok(())
}

/// The blob at `index` of a weighted layer, checked against the shape our plan
/// gives the tensor.
fn blob_values(
    layer: &RawLayer<'_>,
    index: usize,
    what: &str,
    expected: &[usize],
    input: &str,
    file: &str,
) -> Result<Vec<f32>> {
    let ctx = Ctx {
        file,
        place: format!("{}, blob {index} ({what})", layer.label()),
    };
    let mut reader = ctx.check(layer.reader.nested(layer.blobs[index]))?;
    let blob = read_blob(&mut reader, &ctx)?;
    let expected_dims: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
    if trimmed(&blob.dims) != trimmed(&expected_dims) {
        return Err(ctx.format(format!(
            "has shape {:?}, expected {:?} from the layer's parameters and its input \
             (the net's input taken as {input})",
            blob.dims, expected
        )));
    }
    Ok(blob.data)
}

/// `[in, out]` values as `[out, in]`.
fn transposed(values: &[f32], out: usize, inputs: usize) -> Vec<f32> {
    let mut t = vec![0.0; values.len()];
    for i in 0..inputs {
        for o in 0..out {
            t[o * inputs + i] = values[i * out + o];
        }
    }
    t
}

/// Reverses the input-channel axis of a `[out, 3, k, k]` weight: BGR to RGB.
fn reverse_input_channels(values: &mut [f32], shape: &[usize]) {
    let plane = shape[2] * shape[3];
    for filter in values.chunks_exact_mut(shape[1] * plane) {
        let (blue, rest) = filter.split_at_mut(plane);
        blue.swap_with_slice(&mut rest[plane..2 * plane]);
    }
}

fn collect_tensors(
    plan: &Plan,
    chain: &Chain,
    net: &Net<'_>,
    file: &str,
) -> Result<Vec<NamedTensor>> {
    let mut tensors = Vec::new();
    let input = format!("{}x{}", plan.spec.input.height, plan.spec.input.width);
    for (position, weighted) in chain.weighted.iter().enumerate() {
        let layer = &net.layers[weighted.raw];
        let expected = 1 + usize::from(weighted.bias);
        if layer.blobs.len() != expected {
            return Err(layer.ctx(file).format(format!(
                "{} blob{}, expected {expected} (weights{}){}",
                layer.blobs.len(),
                if layer.blobs.len() == 1 { "" } else { "s" },
                if weighted.bias { " and biases" } else { "" },
                if layer.blobs.is_empty() {
                    "; is this a prototxt's net without trained weights?"
                } else {
                    ""
                }
            )));
        }
        let find = |suffix: &str| {
            let name = format!("{}.{suffix}", weighted.name);
            let info = plan
                .params
                .iter()
                .find(|p| p.name == name)
                .expect("the plan has a tensor for every weighted layer");
            (name, info.shape.clone())
        };
        let (name, shape) = find("weight");
        let mut values = if weighted.transpose {
            let stored = [shape[1], shape[0]];
            let values = blob_values(layer, 0, "weights, transposed", &stored, &input, file)?;
            transposed(&values, shape[0], shape[1])
        } else {
            blob_values(layer, 0, "weights", &shape, &input, file)?
        };
        if position == 0 {
            to_rgb_input(&mut values, &shape, plan, layer, file)?;
        }
        tensors.push((name, shape, values));
        let (name, shape) = find("bias");
        let values = if weighted.bias {
            blob_values(layer, 1, "biases", &shape, &input, file)?
        } else {
            // A layer without a bias term is ours with a zero bias.
            vec![0.0; shape[0]]
        };
        tensors.push((name, shape, values));
    }
    Ok(tensors)
}

/// Makes the first layer take RGB: Caffe's nets read BGR.
fn to_rgb_input(
    values: &mut [f32],
    shape: &[usize],
    plan: &Plan,
    layer: &RawLayer<'_>,
    file: &str,
) -> Result<()> {
    let first_is_this_conv = matches!(&plan.layers[0].op, Op::Conv { weight: 0, .. });
    if !first_is_this_conv || shape.len() != 4 || shape[1] != 3 {
        return Err(layer.ctx(file).unsupported(
            "a net whose first layer is not a convolution over all 3 input channels \
             (its weights are reordered from BGR to RGB input)",
        ));
    }
    reverse_input_channels(values, shape);
    Ok(())
}

/// The preprocessing a `mean.binaryproto` implies: its 3xSxS BGR image (0-255
/// scale) becomes our RGB mean image at resize S.
fn mean_convention(bytes: &[u8], file: &str, spec: &NetSpec) -> Result<InputConvention> {
    let ctx = Ctx {
        file,
        place: "the mean (BlobProto)".into(),
    };
    let mut reader = Reader::new(bytes);
    let blob = read_blob(&mut reader, &ctx).map_err(|e| match e {
        Error::Format { file, message } => Error::Format {
            file,
            message: format!("{message}; is this a mean.binaryproto, complete?"),
        },
        other => other,
    })?;
    let [3, h, w] = *trimmed(&blob.dims) else {
        return Err(ctx.unsupported(format!(
            "a mean of shape {:?} (expected 3 channels, height, width)",
            blob.dims
        )));
    };
    if h != w {
        return Err(ctx.unsupported(format!("a non-square mean image ({h}x{w})")));
    }
    let side = h as usize;
    if side < spec.input.height || side < spec.input.width {
        return Err(ctx.format(format!(
            "a {side}x{side} mean image, smaller than the net's {}x{} input",
            spec.input.height, spec.input.width
        )));
    }
    let plane = side * side;
    let mut rgb = Vec::with_capacity(blob.data.len());
    for channel in blob.data.chunks_exact(plane).rev() {
        rgb.extend_from_slice(channel);
    }
    let mut channel_mean = [0f32; 3];
    for (c, channel) in rgb.chunks_exact(plane).enumerate() {
        channel_mean[c] =
            (channel.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64) as f32;
    }
    Ok(InputConvention {
        resize: side,
        pixels: PixelScale::RawMinusMean,
        channel_mean,
        channel_std: [1.0; 3],
        mean_image: Some(rgb),
    })
}

fn default_convention() -> InputConvention {
    InputConvention {
        resize: DEFAULT_RESIZE,
        pixels: PixelScale::RawMinusMean,
        channel_mean: DEFAULT_MEAN_RGB,
        channel_std: [1.0; 3],
        mean_image: None,
    }
}

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
    Ok(Imported {
        spec,
        tensors,
        input,
        source,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_inner_product_weights_become_out_by_in() {
        // Stored [in = 3, out = 2]: row i holds input i's weight to each output.
        let stored = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(transposed(&stored, 2, 3), [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn input_channels_are_reversed_per_filter() {
        // Two filters of 3 channels of 1x2 values.
        let mut w: Vec<f32> = (0..12).map(|v| v as f32).collect();
        reverse_input_channels(&mut w, &[2, 3, 1, 2]);
        assert_eq!(
            w,
            [4.0, 5.0, 2.0, 3.0, 0.0, 1.0, 10.0, 11.0, 8.0, 9.0, 6.0, 7.0]
        );
    }

    #[test]
    fn leading_ones_do_not_change_a_shape() {
        assert_eq!(trimmed(&[1, 1, 10, 32]), &[10, 32]);
        assert_eq!(trimmed(&[1, 1, 1, 1]), &[] as &[u64]);
        assert_eq!(trimmed(&[8, 1, 3]), &[8, 1, 3]);
    }
}
