//! Reading Caffe's protobuf messages: the net, its layers, shapes and blobs.

use crate::proto_read::{self as pb, DecodeError, DecodeResult, Field, Reader};
use crate::{Error, Result};

/// Where in the file a problem is, to build errors that name it.
pub(super) struct Ctx<'f> {
    pub(super) file: &'f str,
    pub(super) place: String,
}

impl Ctx<'_> {
    pub(super) fn format(&self, message: impl std::fmt::Display) -> Error {
        Error::format(self.file, format!("{}: {message}", self.place))
    }
    pub(super) fn unsupported(&self, message: impl std::fmt::Display) -> Error {
        Error::unsupported(self.file, format!("{}: {message}", self.place))
    }
    pub(super) fn check<T>(&self, result: DecodeResult<T>) -> Result<T> {
        result.map_err(|e: DecodeError| self.format(e))
    }
    /// Every field of a message, read up front so that decoding errors are
    /// reported in one place.
    pub(super) fn fields<'a>(&self, reader: &mut Reader<'a>) -> Result<Vec<Field<'a>>> {
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
pub(super) struct RawLayer<'a> {
    /// 1-based position among the file's layers.
    index: usize,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) bottoms: Vec<String>,
    pub(super) tops: Vec<String>,
    pub(super) blobs: Vec<&'a [u8]>,
    pub(super) transform: Option<&'a [u8]>,
    pub(super) conv: Option<&'a [u8]>,
    pub(super) data: Option<&'a [u8]>,
    pub(super) dropout: Option<&'a [u8]>,
    pub(super) inner_product: Option<&'a [u8]>,
    pub(super) lrn: Option<&'a [u8]>,
    pub(super) pooling: Option<&'a [u8]>,
    pub(super) relu: Option<&'a [u8]>,
    pub(super) input: Option<&'a [u8]>,
    /// The layer's own reader, parent of its nested messages' readers.
    pub(super) reader: Reader<'a>,
}

impl<'a> RawLayer<'a> {
    pub(super) fn label(&self) -> String {
        format!("layer {} ({})", self.index, self.name)
    }

    pub(super) fn ctx<'f>(&self, file: &'f str) -> Ctx<'f> {
        Ctx {
            file,
            place: self.label(),
        }
    }

    /// The fields of one of the layer's parameter messages (empty when absent:
    /// every parameter then takes Caffe's default).
    pub(super) fn param(&self, bytes: Option<&'a [u8]>, ctx: &Ctx<'_>) -> Result<Vec<Field<'a>>> {
        match bytes {
            None => Ok(Vec::new()),
            Some(bytes) => ctx.fields(&mut ctx.check(self.reader.nested(bytes))?),
        }
    }
}

/// The parts of a `NetParameter` the import uses.
pub(super) struct Net<'a> {
    pub(super) name: String,
    pub(super) v1: bool,
    pub(super) inputs: Vec<String>,
    pub(super) input_dim: Vec<u64>,
    pub(super) input_shapes: Vec<Vec<u64>>,
    pub(super) layers: Vec<RawLayer<'a>>,
}

pub(super) fn read_net<'a>(model: &'a [u8], file: &str) -> Result<Net<'a>> {
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
pub(super) fn read_shape(reader: &mut Reader<'_>, ctx: &Ctx<'_>) -> Result<Vec<u64>> {
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
pub(super) struct Blob {
    pub(super) dims: Vec<u64>,
    pub(super) data: Vec<f32>,
}

pub(super) fn read_blob(reader: &mut Reader<'_>, ctx: &Ctx<'_>) -> Result<Blob> {
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
pub(super) fn trimmed(dims: &[u64]) -> &[u64] {
    let first = dims.iter().position(|&d| d != 1).unwrap_or(dims.len());
    &dims[first..]
}

pub(super) fn bounded(value: u64, max: u64, what: &str, ctx: &Ctx<'_>) -> Result<usize> {
    if value > max {
        return Err(ctx.format(format!("{what} {value} is implausibly large (over {max})")));
    }
    Ok(value as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_ones_do_not_change_a_shape() {
        assert_eq!(trimmed(&[1, 1, 10, 32]), &[10, 32]);
        assert_eq!(trimmed(&[1, 1, 1, 1]), &[] as &[u64]);
        assert_eq!(trimmed(&[8, 1, 3]), &[8, 1, 3]);
    }
}
