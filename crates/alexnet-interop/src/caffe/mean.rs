//! The input convention: from a `mean.binaryproto`, or Caffe's usual mean.

use alexnet::NetSpec;
use alexnet::spec::PixelScale;

use super::schema::{Ctx, read_blob, trimmed};
use crate::proto_read::Reader;
use crate::{Error, InputConvention, Result};

/// The resize side when no mean file gives it.
const DEFAULT_RESIZE: usize = 256;
/// Caffe's usual per-channel BGR mean (104, 117, 123), as RGB.
const DEFAULT_MEAN_RGB: [f32; 3] = [123.0, 117.0, 104.0];

/// The preprocessing a `mean.binaryproto` implies: its 3xSxS BGR image (0-255
/// scale) becomes our RGB mean image at resize S.
pub(super) fn mean_convention(bytes: &[u8], file: &str, spec: &NetSpec) -> Result<InputConvention> {
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

pub(super) fn default_convention() -> InputConvention {
    InputConvention {
        resize: DEFAULT_RESIZE,
        pixels: PixelScale::RawMinusMean,
        channel_mean: DEFAULT_MEAN_RGB,
        channel_std: [1.0; 3],
        mean_image: None,
    }
}
