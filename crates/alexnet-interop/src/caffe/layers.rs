//! Layer parameters to our layer descriptions, and the net's input size.

use alexnet::spec::{DropoutSpec, LayerSpec, LrnSpec, PoolSpec};

use super::schema::{Ctx, Net, RawLayer, bounded, read_shape};
use crate::Result;
use crate::proto_read as pb;

/// The input side when nothing in the file gives it (bvlc_alexnet's crop).
const DEFAULT_INPUT: usize = 227;

/// Bounds on sizes read from the file, far above any real net, so that the
/// plan's arithmetic cannot overflow on a hostile value.
const MAX_SIDE: u64 = 1 << 16;
const MAX_CHANNELS: u64 = 1 << 24;

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

pub(super) struct ConvParam {
    pub(super) out: usize,
    pub(super) bias: bool,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) groups: usize,
}

pub(super) fn conv_param(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<ConvParam> {
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

pub(super) struct InnerProductParam {
    pub(super) out: usize,
    pub(super) bias: bool,
    pub(super) transpose: bool,
}

pub(super) fn inner_product_param(
    layer: &RawLayer<'_>,
    ctx: &Ctx<'_>,
) -> Result<InnerProductParam> {
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

pub(super) fn lrn_spec(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<LrnSpec> {
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

pub(super) fn pooling_spec(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<LayerSpec> {
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

pub(super) fn dropout_spec(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<DropoutSpec> {
    let mut p = 0.5f32;
    for field in layer.param(layer.dropout, ctx)? {
        if field.number == 1 {
            p = ctx.check(pb::float(&field))?;
        }
    }
    Ok(DropoutSpec { p })
}

pub(super) fn check_relu(layer: &RawLayer<'_>, ctx: &Ctx<'_>) -> Result<()> {
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

pub(super) fn is_source(kind: &str) -> bool {
    matches!(
        kind,
        "Data" | "Input" | "ImageData" | "MemoryData" | "HDF5Data" | "DummyData" | "WindowData"
    )
}

/// Layers that compute nothing our net needs: they end a chain (loss, accuracy,
/// softmax) or do nothing at test time.
pub(super) fn is_left_out(kind: &str) -> bool {
    matches!(
        kind,
        "Softmax" | "SoftmaxWithLoss" | "Accuracy" | "Silence" | "MultinomialLogisticLoss"
    )
}

/// Channels, height and width of the input: from the net's declared inputs,
/// an Input layer, a data layer's crop, or bvlc_alexnet's 227.
pub(super) fn input_geometry(net: &Net<'_>, file: &str) -> Result<(usize, usize, usize)> {
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
        } else if is_source(&layer.kind)
            && let Some(crop) = data_crop(layer, file)?
        {
            shape = Some(vec![1, 3, crop, crop]);
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
