//! ONNX export: the exported bytes hold the graph we intend (read back with a
//! small protobuf decoder below), bad parameters are refused naming them, and
//! onnxruntime computes our outputs (through tools/onnx_check.py).
//!
//! The onnxruntime tests run tools/onnx_check.py with `ALEXNET_PYTHON` (default
//! `python3`). They skip with a message when that interpreter or onnxruntime is
//! missing, unless ALEXNET_REQUIRE_ONNXRUNTIME=1, which makes that a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use alexnet::Model as _;
use alexnet::rng::Rng;
use alexnet::{Cpu, NetSpec, Network};
use alexnet_interop::Error;
use alexnet_interop::onnx::{self, ExportOptions, Tensors};
use safetensors::tensor::{Dtype, TensorView};

// ---------------------------------------------------------------- test nets

/// The paper's shape in miniature: two towers (groups 2) with per-tower LRN,
/// overlapping max pooling, a layer reading both towers, dropout, linear layers.
/// LRN's alpha is large enough to matter at these activations (see
/// `the_test_nets_are_sensitive_to_the_lrn_conventions`).
const PAPER_MINI: &str = r#"
name = "paper-mini"
classes = 10
[input]
channels = 3
height = 32
width = 32
[[layers]]
type = "conv"
name = "conv1"
out = 8
kernel = 5
stride = 2
pad = 2
[[layers]]
type = "relu"
[[layers]]
type = "lrn"
size = 5
alpha = 0.1
beta = 0.75
k = 1.0
groups = 2
[[layers]]
type = "max-pool"
size = 3
stride = 2
[[layers]]
type = "conv"
name = "conv2"
out = 12
kernel = 3
pad = 1
groups = 2
[[layers]]
type = "relu"
[[layers]]
type = "lrn"
size = 3
alpha = 0.1
beta = 0.75
k = 2.0
groups = 2
[[layers]]
type = "max-pool"
size = 3
stride = 2
[[layers]]
type = "conv"
name = "conv3"
out = 16
kernel = 3
pad = 1
[[layers]]
type = "relu"
[[layers]]
type = "conv"
name = "conv4"
out = 16
kernel = 3
pad = 1
groups = 2
[[layers]]
type = "relu"
[[layers]]
type = "linear"
name = "fc5"
out = 32
[[layers]]
type = "relu"
[[layers]]
type = "dropout"
p = 0.5
[[layers]]
type = "linear"
name = "fc6"
out = 24
[[layers]]
type = "relu"
[[layers]]
type = "dropout"
p = 0.5
[[layers]]
type = "linear"
name = "fc7"
"#;

/// One tower (torchvision's shape), no LRN, dropout right before a linear layer.
const OWT_MINI: &str = r#"
name = "owt-mini"
classes = 6
[input]
channels = 3
height = 40
width = 40
[[layers]]
type = "conv"
name = "conv1"
out = 16
kernel = 7
stride = 3
pad = 2
[[layers]]
type = "relu"
[[layers]]
type = "max-pool"
size = 3
stride = 2
[[layers]]
type = "conv"
name = "conv2"
out = 24
kernel = 3
pad = 1
[[layers]]
type = "relu"
[[layers]]
type = "max-pool"
size = 3
stride = 2
[[layers]]
type = "dropout"
p = 0.5
[[layers]]
type = "linear"
name = "fc3"
out = 32
[[layers]]
type = "relu"
[[layers]]
type = "dropout"
p = 0.5
[[layers]]
type = "linear"
name = "fc4"
"#;

/// tanh, average pooling and LRN across all channels, on grey images.
const TANH_MINI: &str = r#"
name = "tanh-mini"
classes = 7
[input]
channels = 1
height = 28
width = 28
[[layers]]
type = "conv"
name = "conv1"
out = 6
kernel = 5
pad = 2
[[layers]]
type = "tanh"
[[layers]]
type = "avg-pool"
size = 3
stride = 2
[[layers]]
type = "lrn"
size = 3
alpha = 0.5
beta = 0.75
k = 1.0
[[layers]]
type = "conv"
name = "conv2"
out = 10
kernel = 3
stride = 2
[[layers]]
type = "tanh"
[[layers]]
type = "avg-pool"
size = 2
stride = 2
[[layers]]
type = "lrn"
size = 5
alpha = 0.5
beta = 0.75
k = 1.0
[[layers]]
type = "linear"
name = "fc3"
"#;

fn spec(toml: &str) -> NetSpec {
    NetSpec::from_toml(toml, "test net").unwrap()
}

/// A net with seeded parameters sized to keep activations near 1 (so LRN and
/// tanh are far from their linear regimes) and non-constant biases (so a bias
/// stored in the wrong order shows).
fn network(spec: &NetSpec, batch: usize, seed: u64) -> Network<Cpu> {
    let mut net = Network::new_zeroed(Cpu::new(), spec, batch).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..net.params().len() {
        let shape = net.params()[i].info.shape.clone();
        let len: usize = shape.iter().product();
        let values: Vec<f32> = if shape.len() == 1 {
            (0..len).map(|_| (rng.uniform() - 0.5) as f32).collect()
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let std = (2.0 / fan_in as f64).sqrt();
            (0..len).map(|_| (rng.normal() * std) as f32).collect()
        };
        net.set_param_values(i, &values).unwrap();
    }
    net
}

fn tensors_of(net: &Network<Cpu>) -> Tensors {
    (0..net.params().len())
        .map(|i| {
            let info = &net.params()[i].info;
            (info.name.clone(), (info.shape.clone(), net.param_values(i)))
        })
        .collect()
}

fn images(spec: &NetSpec, batch: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let len = batch * spec.input.channels * spec.input.height * spec.input.width;
    (0..len).map(|_| rng.normal() as f32).collect()
}

fn max_relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

// ---------------------------------------------------------------- a tiny protobuf reader

#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Varint(u64),
    Fixed32(u32),
    /// No field we write uses it (doubles); only skipped over.
    Fixed64,
    Bytes(&'a [u8]),
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*pos];
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 10 bytes");
}

/// One message's fields in the order written.
struct Msg<'a>(Vec<(u32, Wire<'a>)>);

impl<'a> Msg<'a> {
    fn parse(bytes: &'a [u8]) -> Msg<'a> {
        let mut fields = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let key = read_varint(bytes, &mut pos);
            let field = u32::try_from(key >> 3).unwrap();
            let value = match key & 7 {
                0 => Wire::Varint(read_varint(bytes, &mut pos)),
                1 => {
                    pos += 8;
                    Wire::Fixed64
                }
                2 => {
                    let len = read_varint(bytes, &mut pos) as usize;
                    pos += len;
                    Wire::Bytes(&bytes[pos - len..pos])
                }
                5 => {
                    pos += 4;
                    Wire::Fixed32(u32::from_le_bytes(bytes[pos - 4..pos].try_into().unwrap()))
                }
                other => panic!("wire type {other} in field {field}"),
            };
            fields.push((field, value));
        }
        assert_eq!(pos, bytes.len(), "a field runs past the message");
        Msg(fields)
    }

    fn all(&self, field: u32) -> Vec<Wire<'a>> {
        self.0
            .iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| *v)
            .collect()
    }

    fn one(&self, field: u32) -> Wire<'a> {
        let values = self.all(field);
        assert_eq!(
            values.len(),
            1,
            "field {field} appears {} times",
            values.len()
        );
        values[0]
    }

    fn has(&self, field: u32) -> bool {
        !self.all(field).is_empty()
    }

    fn int(&self, field: u32) -> i64 {
        match self.one(field) {
            Wire::Varint(v) => v as i64,
            other => panic!("field {field}: {other:?} is not a varint"),
        }
    }

    fn float(&self, field: u32) -> f32 {
        match self.one(field) {
            Wire::Fixed32(bits) => f32::from_bits(bits),
            other => panic!("field {field}: {other:?} is not a float"),
        }
    }

    fn bytes(&self, field: u32) -> &'a [u8] {
        bytes_of(self.one(field))
    }

    fn string(&self, field: u32) -> &'a str {
        std::str::from_utf8(self.bytes(field)).unwrap()
    }

    fn strings(&self, field: u32) -> Vec<&'a str> {
        self.all(field)
            .into_iter()
            .map(|v| std::str::from_utf8(bytes_of(v)).unwrap())
            .collect()
    }

    fn message(&self, field: u32) -> Msg<'a> {
        Msg::parse(self.bytes(field))
    }

    fn messages(&self, field: u32) -> Vec<Msg<'a>> {
        self.all(field)
            .into_iter()
            .map(|v| Msg::parse(bytes_of(v)))
            .collect()
    }

    /// A repeated int64, packed or not (readers must accept both).
    fn ints(&self, field: u32) -> Vec<i64> {
        let mut out = Vec::new();
        for value in self.all(field) {
            match value {
                Wire::Varint(v) => out.push(v as i64),
                Wire::Bytes(b) => {
                    let mut pos = 0;
                    while pos < b.len() {
                        out.push(read_varint(b, &mut pos) as i64);
                    }
                }
                other => panic!("field {field}: {other:?} is not an integer"),
            }
        }
        out
    }
}

fn bytes_of(value: Wire<'_>) -> &[u8] {
    match value {
        Wire::Bytes(b) => b,
        other => panic!("{other:?} is not length-delimited"),
    }
}

// ---------------------------------------------------------------- the model, decoded

#[derive(Debug, PartialEq)]
enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

#[derive(Debug)]
struct Node {
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: HashMap<String, Attr>,
}

#[derive(Debug)]
struct Tensor<'a> {
    dims: Vec<i64>,
    data_type: i64,
    raw: &'a [u8],
}

#[derive(Debug, PartialEq)]
enum Dim {
    Value(i64),
    Param(String),
}

struct Model<'a> {
    ir_version: i64,
    producer: String,
    opsets: Vec<(String, i64)>,
    metadata: HashMap<String, String>,
    doc: Option<String>,
    graph_name: String,
    nodes: Vec<Node>,
    initializers: HashMap<String, Tensor<'a>>,
    inputs: Vec<(String, Vec<Dim>)>,
    outputs: Vec<(String, Vec<Dim>)>,
}

impl Model<'_> {
    fn ops(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.op.as_str()).collect()
    }
    fn nodes_of(&self, op: &str) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.op == op).collect()
    }
}

fn decode_attr(a: &Msg) -> (String, Attr) {
    let value = match a.int(20) {
        1 => Attr::Float(a.float(2)),
        2 => Attr::Int(a.int(3)),
        7 => Attr::Ints(a.ints(8)),
        other => panic!("attribute type {other}"),
    };
    (a.string(1).to_string(), value)
}

fn decode_node(n: &Msg) -> Node {
    assert!(!n.has(7), "nodes are in the default domain");
    Node {
        op: n.string(4).to_string(),
        inputs: n.strings(1).into_iter().map(String::from).collect(),
        outputs: n.strings(2).into_iter().map(String::from).collect(),
        attrs: n.messages(5).iter().map(decode_attr).collect(),
    }
}

fn decode_tensor<'a>(t: &Msg<'a>) -> (String, Tensor<'a>) {
    let tensor = Tensor {
        dims: t.ints(1),
        data_type: t.int(2),
        raw: t.bytes(9),
    };
    (t.string(8).to_string(), tensor)
}

/// A float tensor's name and shape, from ValueInfoProto > TypeProto > Tensor.
fn decode_value_info(v: &Msg) -> (String, Vec<Dim>) {
    let tensor = v.message(2).message(1);
    assert_eq!(tensor.int(1), 1, "float elements");
    let dims = tensor
        .message(2)
        .messages(1)
        .iter()
        .map(|d| {
            if d.has(1) {
                Dim::Value(d.int(1))
            } else {
                Dim::Param(d.string(2).to_string())
            }
        })
        .collect();
    (v.string(1).to_string(), dims)
}

fn decode_model(bytes: &[u8]) -> Model<'_> {
    let m = Msg::parse(bytes);
    let graph = m.message(7);
    Model {
        ir_version: m.int(1),
        producer: m.string(2).to_string(),
        opsets: m
            .messages(8)
            .iter()
            .map(|o| {
                let domain = if o.has(1) { o.string(1) } else { "" };
                (domain.to_string(), o.int(2))
            })
            .collect(),
        metadata: m
            .messages(14)
            .iter()
            .map(|e| (e.string(1).to_string(), e.string(2).to_string()))
            .collect(),
        doc: m.has(6).then(|| m.string(6).to_string()),
        graph_name: graph.string(2).to_string(),
        nodes: graph.messages(1).iter().map(decode_node).collect(),
        initializers: graph.messages(5).iter().map(decode_tensor).collect(),
        inputs: graph.messages(11).iter().map(decode_value_info).collect(),
        outputs: graph.messages(12).iter().map(decode_value_info).collect(),
    }
}

/// A test net with seeded parameters, and its export (decode with `decode_model`).
fn export_net(toml: &str, options: &ExportOptions) -> (NetSpec, Tensors, Vec<u8>) {
    let spec = spec(toml);
    let tensors = tensors_of(&network(&spec, 1, 3));
    let bytes = onnx::export(&spec, &tensors, options).unwrap();
    (spec, tensors, bytes)
}

// ---------------------------------------------------------------- structure

#[test]
fn the_model_header_names_ir_8_opset_17_and_the_producer() {
    let options = ExportOptions {
        doc: Some("from runs/x/best.safetensors".into()),
        ..ExportOptions::default()
    };
    let (spec, _, bytes) = export_net(OWT_MINI, &options);
    let model = decode_model(&bytes);
    assert_eq!(model.ir_version, 8);
    assert_eq!(model.producer, "alexnet");
    assert_eq!(model.opsets, [(String::new(), 17)]);
    assert_eq!(model.graph_name, "owt-mini");
    assert_eq!(model.doc.as_deref(), Some("from runs/x/best.safetensors"));
    let carried = &model.metadata[onnx::SPEC_METADATA_KEY];
    assert_eq!(NetSpec::from_toml(carried, "metadata").unwrap(), spec);
}

#[test]
fn the_paper_net_becomes_its_layers_with_towers_split_for_lrn_and_no_dropout() {
    let (_, _, bytes) = export_net(PAPER_MINI, &ExportOptions::default());
    let model = decode_model(&bytes);
    let tower_lrn = ["Split", "LRN", "LRN", "Concat"];
    let mut expected = vec!["Conv", "Relu"];
    expected.extend(tower_lrn);
    expected.extend(["MaxPool", "Conv", "Relu"]);
    expected.extend(tower_lrn);
    expected.extend(["MaxPool", "Conv", "Relu", "Conv", "Relu"]);
    expected.extend(["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax"]);
    assert_eq!(model.ops(), expected);

    // Every node reads what an earlier one wrote (or the input or an initializer).
    let mut known: Vec<&str> = vec!["input"];
    known.extend(model.initializers.keys().map(String::as_str));
    for node in &model.nodes {
        for input in &node.inputs {
            assert!(
                known.contains(&input.as_str()),
                "{} reads unknown {input}",
                node.op
            );
        }
        known.extend(node.outputs.iter().map(String::as_str));
    }
    let last_gemm = model.nodes_of("Gemm").pop().unwrap();
    assert_eq!(last_gemm.outputs, ["logits"]);
    let softmax = &model.nodes.last().unwrap();
    assert_eq!(softmax.inputs, ["logits"]);
    assert_eq!(softmax.outputs, ["probabilities"]);
    assert_eq!(softmax.attrs["axis"], Attr::Int(1));
}

#[test]
fn conv_pool_and_gemm_attributes_follow_the_description() {
    let (_, _, bytes) = export_net(PAPER_MINI, &ExportOptions::default());
    let model = decode_model(&bytes);
    let convs = model.nodes_of("Conv");
    let conv1 = &convs[0];
    assert_eq!(conv1.inputs[1..], ["conv1.weight", "conv1.bias"]);
    assert_eq!(conv1.attrs["group"], Attr::Int(1));
    assert_eq!(conv1.attrs["kernel_shape"], Attr::Ints(vec![5, 5]));
    assert_eq!(conv1.attrs["strides"], Attr::Ints(vec![2, 2]));
    assert_eq!(conv1.attrs["pads"], Attr::Ints(vec![2, 2, 2, 2]));
    assert_eq!(convs[1].attrs["group"], Attr::Int(2));
    assert_eq!(convs[3].attrs["group"], Attr::Int(2));

    for pool in model.nodes_of("MaxPool") {
        assert_eq!(pool.attrs["kernel_shape"], Attr::Ints(vec![3, 3]));
        assert_eq!(pool.attrs["strides"], Attr::Ints(vec![2, 2]));
        assert_eq!(pool.attrs["pads"], Attr::Ints(vec![0; 4]));
        assert_eq!(pool.attrs["ceil_mode"], Attr::Int(0));
    }
    for gemm in model.nodes_of("Gemm") {
        assert_eq!(gemm.attrs["transB"], Attr::Int(1));
    }
    assert_eq!(model.nodes_of("Flatten")[0].attrs["axis"], Attr::Int(1));
}

#[test]
fn lrn_alpha_is_multiplied_by_the_size_and_towers_split_evenly() {
    let (_, _, bytes) = export_net(PAPER_MINI, &ExportOptions::default());
    let model = decode_model(&bytes);
    let lrns = model.nodes_of("LRN");
    assert_eq!(lrns.len(), 4);
    // conv1's LRN: size 5, alpha 0.1, k 1; conv2's: size 3, alpha 0.1, k 2.
    for (lrn, (size, k)) in lrns.iter().zip([(5, 1.0), (5, 1.0), (3, 2.0), (3, 2.0)]) {
        assert_eq!(lrn.attrs["size"], Attr::Int(size));
        assert_eq!(lrn.attrs["alpha"], Attr::Float(0.1 * size as f32));
        assert_eq!(lrn.attrs["beta"], Attr::Float(0.75));
        assert_eq!(lrn.attrs["bias"], Attr::Float(k));
    }
    let splits = model.nodes_of("Split");
    for (split, per_tower) in splits.iter().zip([4i64, 6]) {
        assert_eq!(split.attrs["axis"], Attr::Int(1));
        assert_eq!(split.outputs.len(), 2);
        let sizes = &model.initializers[&split.inputs[1]];
        assert_eq!(sizes.data_type, 7, "int64");
        assert_eq!(sizes.dims, [2]);
        let values: Vec<i64> = sizes
            .raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, [per_tower, per_tower]);
    }
    for concat in model.nodes_of("Concat") {
        assert_eq!(concat.attrs["axis"], Attr::Int(1));
        assert_eq!(concat.inputs.len(), 2);
    }
}

#[test]
fn cross_channel_lrn_is_one_node_and_avg_pool_has_no_padding() {
    let (_, _, bytes) = export_net(TANH_MINI, &ExportOptions::default());
    let model = decode_model(&bytes);
    assert_eq!(
        model.ops(),
        [
            "Conv",
            "Tanh",
            "AveragePool",
            "LRN",
            "Conv",
            "Tanh",
            "AveragePool",
            "LRN",
            "Flatten",
            "Gemm",
            "Softmax"
        ]
    );
    let pools = model.nodes_of("AveragePool");
    assert_eq!(pools[1].attrs["kernel_shape"], Attr::Ints(vec![2, 2]));
    assert_eq!(pools[1].attrs["pads"], Attr::Ints(vec![0; 4]));
    assert_eq!(model.nodes_of("LRN")[1].attrs["alpha"], Attr::Float(2.5));
}

#[test]
fn initializers_hold_every_parameter_as_little_endian_float32() {
    let (_, tensors, bytes) = export_net(PAPER_MINI, &ExportOptions::default());
    let model = decode_model(&bytes);
    let float_initializers = model
        .initializers
        .values()
        .filter(|t| t.data_type == 1)
        .count();
    assert_eq!(float_initializers, tensors.len());
    for (name, (shape, values)) in &tensors {
        let t = &model.initializers[name];
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        assert_eq!(t.dims, dims, "{name}");
        let stored: Vec<f32> = t
            .raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&stored, values, "{name}");
    }
}

#[test]
fn the_batch_dimension_is_symbolic_unless_fixed() {
    let (_, _, bytes) = export_net(OWT_MINI, &ExportOptions::default());
    let model = decode_model(&bytes);
    let batch = || Dim::Param("batch".into());
    assert_eq!(
        model.inputs,
        [(
            "input".to_string(),
            vec![batch(), Dim::Value(3), Dim::Value(40), Dim::Value(40)]
        )]
    );
    let outputs = |b: fn() -> Dim| {
        vec![
            ("logits".to_string(), vec![b(), Dim::Value(6)]),
            ("probabilities".to_string(), vec![b(), Dim::Value(6)]),
        ]
    };
    assert_eq!(model.outputs, outputs(|| Dim::Param("batch".into())));

    let fixed = ExportOptions {
        batch: Some(5),
        ..ExportOptions::default()
    };
    let (_, _, bytes) = export_net(OWT_MINI, &fixed);
    let model = decode_model(&bytes);
    assert_eq!(model.inputs[0].1[0], Dim::Value(5));
    assert_eq!(model.outputs, outputs(|| Dim::Value(5)));
}

#[test]
fn the_full_alexnet_exports_with_all_its_parameters() {
    let spec = NetSpec::preset("alexnet").unwrap();
    let plan = alexnet::Plan::new(&spec).unwrap();
    // Zeros: the values do not matter here, only that 61 M of them are written.
    let tensors: Tensors = plan
        .params
        .iter()
        .map(|p| (p.name.clone(), (p.shape.clone(), vec![0.0; p.len()])))
        .collect();
    let bytes = onnx::export(&spec, &tensors, &ExportOptions::default()).unwrap();
    assert!(bytes.len() > 4 * plan.parameter_count());
    let model = decode_model(&bytes);
    assert_eq!(
        model.nodes_of("Split").len(),
        2,
        "per-tower LRN after conv1 and conv2"
    );
    assert_eq!(model.nodes_of("Conv").len(), 5);
    assert_eq!(model.nodes_of("Gemm").len(), 3);
    assert_eq!(model.initializers["fc6.weight"].dims, [4096, 9216]);
}

// ---------------------------------------------------------------- refusals

fn export_error(toml: &str, change: impl FnOnce(&mut Tensors)) -> Error {
    let spec = spec(toml);
    let mut tensors = tensors_of(&network(&spec, 1, 3));
    change(&mut tensors);
    onnx::export(&spec, &tensors, &ExportOptions::default()).unwrap_err()
}

#[test]
fn missing_parameters_are_named() {
    let err = export_error(PAPER_MINI, |t| {
        t.remove("conv2.bias");
    })
    .to_string();
    assert!(err.contains("missing parameter 'conv2.bias' [12]"), "{err}");
    assert!(err.contains("paper-mini"), "{err}");

    let err = export_error(PAPER_MINI, |t| {
        t.remove("conv1.weight");
        t.remove("fc7.bias");
    })
    .to_string();
    assert!(err.contains("missing parameters"), "{err}");
    assert!(err.contains("'conv1.weight' [8, 3, 5, 5]"), "{err}");
    assert!(err.contains("'fc7.bias' [10]"), "{err}");
}

#[test]
fn misshapen_parameters_are_named_with_both_shapes() {
    let err = export_error(PAPER_MINI, |t| {
        // conv2 as if it read all channels (groups 1) instead of its tower.
        t.insert(
            "conv2.weight".into(),
            (vec![12, 8, 3, 3], vec![0.0; 12 * 8 * 9]),
        );
    })
    .to_string();
    assert!(err.contains("'conv2.weight'"), "{err}");
    assert!(
        err.contains("[12, 8, 3, 3]") && err.contains("[12, 4, 3, 3]"),
        "{err}"
    );

    let err = export_error(PAPER_MINI, |t| {
        t.get_mut("fc5.bias").unwrap().1.pop();
    })
    .to_string();
    assert!(err.contains("'fc5.bias' has 31 values"), "{err}");
}

#[test]
fn tensors_the_net_does_not_use_are_ignored() {
    let spec = spec(OWT_MINI);
    let mut tensors = tensors_of(&network(&spec, 1, 3));
    tensors.insert("preprocess.mean".into(), (vec![3, 40, 40], vec![0.0; 4800]));
    let bytes = onnx::export(&spec, &tensors, &ExportOptions::default()).unwrap();
    let model = decode_model(&bytes);
    assert!(!model.initializers.contains_key("preprocess.mean"));
}

#[test]
fn even_lrn_sizes_are_refused_as_unsupported() {
    let mut spec = spec(TANH_MINI);
    for layer in &mut spec.layers {
        if let alexnet::spec::LayerSpec::Lrn(n) = layer {
            n.size = 4;
        }
    }
    let err = onnx::export(&spec, &Tensors::new(), &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("layer 4 (lrn)") && text.contains("even"),
        "{text}"
    );
}

#[test]
fn a_convolution_after_a_linear_layer_is_refused() {
    let toml = OWT_MINI.replace(
        "name = \"fc3\"\nout = 32\n",
        "name = \"fc3\"\nout = 32\n[[layers]]\ntype = \"conv\"\nname = \"conv9\"\nout = 32\nkernel = 1\n",
    );
    let err = export_error(&toml, |_| {});
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("(conv9)"), "{err}");
}

#[test]
fn layers_sharing_a_name_are_refused() {
    let toml = OWT_MINI.replace("name = \"conv2\"", "name = \"conv1\"");
    let err = export_error(&toml, |_| {});
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("'conv1.weight'"), "{err}");
}

#[test]
fn a_fixed_batch_of_zero_is_refused() {
    let spec = spec(OWT_MINI);
    let tensors = tensors_of(&network(&spec, 1, 3));
    let options = ExportOptions {
        batch: Some(0),
        ..ExportOptions::default()
    };
    let err = onnx::export(&spec, &tensors, &options).unwrap_err();
    assert!(err.to_string().contains("batch"), "{err}");
}

// ---------------------------------------------------------------- onnxruntime

/// The LRN settings of the test nets change the outputs far beyond the 1e-4
/// tolerance: an export that ignored the towers or ONNX's alpha convention would
/// fail the onnxruntime comparison rather than slip through.
#[test]
fn the_test_nets_are_sensitive_to_the_lrn_conventions() {
    let base = spec(PAPER_MINI);
    let x = images(&base, 4, 11);
    let logits_with = |change: &dyn Fn(&mut alexnet::spec::LrnSpec)| {
        let mut spec = base.clone();
        for layer in &mut spec.layers {
            if let alexnet::spec::LayerSpec::Lrn(n) = layer {
                change(n);
            }
        }
        network(&spec, 4, 3).predict(&x).unwrap()
    };
    let ours = logits_with(&|_| {});
    let across_towers = logits_with(&|n| n.groups = 1);
    let alpha_over_size = logits_with(&|n| n.alpha /= n.size as f32);
    let d_towers = max_relative_difference(&across_towers, &ours);
    let d_alpha = max_relative_difference(&alpha_over_size, &ours);
    assert!(d_towers > 1e-2, "{d_towers}");
    assert!(d_alpha > 1e-2, "{d_alpha}");
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alexnet-onnx-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.to_string(), data, shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// A version 1.0 .npy file of float32 (the format is a magic string, a header
/// dict padded to 64 bytes, then the raw values).
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

/// The interpreter that runs tools/onnx_check.py: `ALEXNET_PYTHON` (as `.ci/run`
/// sets it, to the environment of tools/ci/python_env.sh), else `python3`.
fn python() -> String {
    std::env::var("ALEXNET_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// What running tools/onnx_check.py came to.
enum Check {
    Passed(String),
    Failed(String),
    /// python3 or onnxruntime is not installed.
    Unavailable(String),
}

fn run_onnx_check(model: &Path, inputs: &Path, expected: &Path) -> Check {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/onnx_check.py");
    let python = python();
    let output = match Command::new(&python)
        .arg(&script)
        .args([model, inputs, expected])
        .output()
    {
        Ok(output) => output,
        Err(e) => return Check::Unavailable(format!("{python} could not be run: {e}")),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.code() {
        Some(0) => Check::Passed(text),
        Some(3) => Check::Unavailable(text),
        _ => Check::Failed(text),
    }
}

/// Whether onnxruntime could run; a skip is a failure when it is required.
fn available(check: &Check) -> bool {
    let Check::Unavailable(why) = check else {
        return true;
    };
    if std::env::var("ALEXNET_REQUIRE_ONNXRUNTIME").as_deref() == Ok("1") {
        panic!(
            "ALEXNET_REQUIRE_ONNXRUNTIME=1 but onnxruntime cannot run: {why}\n\
             make its environment with: export ALEXNET_PYTHON=\"$(bash tools/ci/python_env.sh)\""
        );
    }
    eprintln!(
        "skipped: onnxruntime cannot run ({why}); \
         export ALEXNET_PYTHON=\"$(bash tools/ci/python_env.sh)\" to run it"
    );
    false
}

/// Exports `spec` with seeded weights, runs our `predict` on a seeded batch, and
/// has onnxruntime run the model on the same batch.
fn check_against_onnxruntime(name: &str, spec: &NetSpec) {
    let batch = 3;
    let mut net = network(spec, batch, 5);
    let model = onnx::export_network(&net, &ExportOptions::default()).unwrap();
    let x = images(spec, batch, 6);
    let logits = net.predict(&x).unwrap();
    let probabilities = alexnet::softmax_rows(&logits, spec.classes);

    let dir = scratch_dir(name);
    let (model_path, inputs, expected) = (
        dir.join("model.onnx"),
        dir.join("inputs.safetensors"),
        dir.join("expected.safetensors"),
    );
    std::fs::write(&model_path, model).unwrap();
    let i = &spec.input;
    write_safetensors(
        &inputs,
        &[("input", vec![batch, i.channels, i.height, i.width], &x)],
    );
    let out_shape = vec![batch, spec.classes];
    write_safetensors(
        &expected,
        &[
            ("logits", out_shape.clone(), &logits),
            ("probabilities", out_shape, &probabilities),
        ],
    );
    let check = run_onnx_check(&model_path, &inputs, &expected);
    if !available(&check) {
        return;
    }
    match check {
        Check::Passed(text) => println!("{name}:\n{text}"),
        Check::Failed(text) => panic!("{name}: onnxruntime disagrees or failed:\n{text}"),
        Check::Unavailable(_) => unreachable!(),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn onnxruntime_matches_the_paper_like_net_with_towers() {
    check_against_onnxruntime("paper-mini", &spec(PAPER_MINI));
}

#[test]
fn onnxruntime_matches_a_one_tower_net_without_lrn() {
    check_against_onnxruntime("owt-mini", &spec(OWT_MINI));
}

#[test]
fn onnxruntime_matches_a_tanh_net_with_average_pooling_and_cross_channel_lrn() {
    check_against_onnxruntime("tanh-mini", &spec(TANH_MINI));
}

#[test]
fn onnxruntime_matches_the_cifar_preset() {
    let spec = NetSpec::preset("cifar").unwrap().with_input(1, 28, 28);
    check_against_onnxruntime("cifar", &spec);
}

/// The full paper net: 61 M parameters in a 244 MB model, per-tower LRN over 96
/// and 256 channels (about 10 s and 0.8 GB).
#[test]
fn onnxruntime_matches_the_full_alexnet() {
    check_against_onnxruntime("alexnet", &NetSpec::preset("alexnet").unwrap());
}

/// The checker is not vacuous: it fails outputs 1e-3 off, and reads .npy files
/// (logits only, probabilities then from their softmax).
#[test]
fn the_check_script_fails_wrong_outputs_and_reads_npy() {
    let spec = spec(OWT_MINI);
    let batch = 2;
    let mut net = network(&spec, batch, 5);
    let model = onnx::export_network(&net, &ExportOptions::default()).unwrap();
    let x = images(&spec, batch, 6);
    let logits = net.predict(&x).unwrap();

    let dir = scratch_dir("npy");
    let model_path = dir.join("model.onnx");
    std::fs::write(&model_path, model).unwrap();
    let i = &spec.input;
    let inputs = dir.join("inputs.npy");
    write_npy(&inputs, &[batch, i.channels, i.height, i.width], &x);
    let right = dir.join("right.npy");
    write_npy(&right, &[batch, spec.classes], &logits);
    let scale = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut off = logits.clone();
    off[3] += 1e-3 * scale;
    let wrong = dir.join("wrong.npy");
    write_npy(&wrong, &[batch, spec.classes], &off);

    let check = run_onnx_check(&model_path, &inputs, &right);
    if !available(&check) {
        return;
    }
    match check {
        Check::Passed(text) => assert!(text.contains("probabilities"), "{text}"),
        Check::Failed(text) | Check::Unavailable(text) => panic!("{text}"),
    }
    match run_onnx_check(&model_path, &inputs, &wrong) {
        Check::Failed(text) => assert!(text.contains("ABOVE the tolerance"), "{text}"),
        Check::Passed(text) | Check::Unavailable(text) => panic!("accepted wrong logits:\n{text}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
