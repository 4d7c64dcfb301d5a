//! ONNX export: a net and its weights become a `ModelProto` (IR version 8, opset 17
//! of the default domain) that runtimes such as onnxruntime execute with our
//! inference outputs.
//!
//! The graph reads `input` `[batch, C, H, W]` (float) and produces `logits`
//! `[batch, classes]` and `probabilities` (their softmax). Layers map one to one
//! (Conv, Relu, Tanh, MaxPool, AveragePool, Gemm with a Flatten before the first
//! linear layer) except two:
//! - dropout is the identity at inference and is left out;
//! - LRN: ONNX divides alpha by the window size (we do not, as the paper), so the
//!   exported alpha is ours times the size; and ONNX normalises across all
//!   channels, so a per-tower LRN (`groups > 1`) becomes Split, one LRN per
//!   block, Concat.
//!
//! Parameters are stored as initializers under our names (`conv1.weight`), raw
//! little-endian float32, in our layouts, which are ONNX's: conv weights
//! `[out, in/groups, k, k]`, linear weights `[out, in]` (Gemm with `transB = 1`).

use std::collections::{HashMap, HashSet};

use alexnet::plan::{Op, ParamInfo, Plan};
use alexnet::spec::{LayerSpec, NetSpec};
use alexnet::{Backend, Model, Network};

use crate::proto_write::Writer;
use crate::{Error, Result};

pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
pub const PRODUCER: &str = "alexnet";
/// Names of the graph's input and outputs, and of the symbolic batch dimension.
pub const INPUT: &str = "input";
pub const LOGITS: &str = "logits";
pub const PROBABILITIES: &str = "probabilities";
pub const BATCH: &str = "batch";
/// The metadata key under which the model carries our description (TOML).
pub const SPEC_METADATA_KEY: &str = "alexnet.spec";

/// Parameter tensors by our name: shape and values (what
/// `alexnet::checkpoint::load_weights(path)?.tensors` holds). Entries the net does
/// not use (a checkpoint's mean image, say) are ignored.
pub type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Choices that do not follow from the net.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// A fixed batch size for the input and outputs; `None` leaves the first
    /// dimension symbolic (`batch`), so any batch runs.
    pub batch: Option<usize>,
    /// Free text stored as the model's `doc_string` (where the weights came from).
    pub doc: Option<String>,
}

/// Writes `spec` with the parameters in `tensors` as an ONNX model. Errors name a
/// missing or misshapen parameter, or the layer ONNX cannot express.
pub fn export(spec: &NetSpec, tensors: &Tensors, options: &ExportOptions) -> Result<Vec<u8>> {
    let origin = format!("ONNX export of '{}'", spec.name);
    check_lrn_windows(spec, &origin)?;
    if options.batch == Some(0) {
        return Err(Error::format(
            &origin,
            "a fixed batch size must be at least 1",
        ));
    }
    let plan = Plan::new(spec)?;
    let params = gather_params(&plan, tensors, &origin)?;
    let graph = build_graph(&plan, &origin)?;
    Ok(encode_model(&plan, &graph, &params, options))
}

/// Exports a network as it is now (its current parameter values).
pub fn export_network<B: Backend>(net: &Network<B>, options: &ExportOptions) -> Result<Vec<u8>> {
    let tensors = (0..net.params().len())
        .map(|i| {
            let info = &net.params()[i].info;
            (info.name.clone(), (info.shape.clone(), net.param_values(i)))
        })
        .collect();
    export(net.spec(), &tensors, options)
}

/// ONNX sums the squares of channels `c - floor((size-1)/2) ..= c + ceil((size-1)/2)`;
/// ours are centred, `c - size/2 ..= c + size/2`. The two agree exactly when the
/// size is odd, so an even size (which the engine refuses too) cannot be exported.
fn check_lrn_windows(spec: &NetSpec, origin: &str) -> Result<()> {
    for (index, layer) in spec.layers.iter().enumerate() {
        let LayerSpec::Lrn(n) = layer else { continue };
        if n.size % 2 == 0 {
            return Err(Error::unsupported(
                origin,
                format!(
                    "layer {} (lrn): window size {} is even; ONNX's LRN window is then not \
                     centred on the channel (it reaches one channel further up than down), \
                     so only odd sizes export with the same results",
                    index + 1,
                    n.size
                ),
            ));
        }
    }
    Ok(())
}

/// One parameter tensor as it will be stored.
struct Param<'a> {
    name: &'a str,
    shape: &'a [usize],
    values: &'a [f32],
}

/// The net's parameters in plan order, each checked against the plan's shape.
fn gather_params<'a>(plan: &'a Plan, tensors: &'a Tensors, origin: &str) -> Result<Vec<Param<'a>>> {
    check_unique_names(plan, origin)?;
    let mut missing = Vec::new();
    let mut params = Vec::with_capacity(plan.params.len());
    for info in &plan.params {
        let Some((shape, values)) = tensors.get(&info.name) else {
            missing.push(format!("'{}' {:?}", info.name, info.shape));
            continue;
        };
        check_param(info, shape, values, origin)?;
        params.push(Param {
            name: &info.name,
            shape,
            values,
        });
    }
    if !missing.is_empty() {
        // All of them at once: a checkpoint of another net usually lacks several.
        let noun = if missing.len() == 1 {
            "parameter"
        } else {
            "parameters"
        };
        return Err(Error::format(
            origin,
            format!("missing {noun} {}", missing.join(", ")),
        ));
    }
    Ok(params)
}

/// Initializer names must be unique; the engine does not require layer names to be.
fn check_unique_names(plan: &Plan, origin: &str) -> Result<()> {
    let mut seen = HashSet::new();
    for info in &plan.params {
        if !seen.insert(info.name.as_str()) {
            return Err(Error::unsupported(
                origin,
                format!(
                    "two parameters are named '{}': ONNX needs unique layer names",
                    info.name
                ),
            ));
        }
    }
    Ok(())
}

fn check_param(info: &ParamInfo, shape: &[usize], values: &[f32], origin: &str) -> Result<()> {
    if shape != info.shape {
        return Err(Error::format(
            origin,
            format!(
                "parameter '{}' has shape {shape:?}, the net needs {:?}",
                info.name, info.shape
            ),
        ));
    }
    if values.len() != info.len() {
        return Err(Error::format(
            origin,
            format!(
                "parameter '{}' has {} values, its shape {shape:?} holds {}",
                info.name,
                values.len(),
                info.len()
            ),
        ));
    }
    Ok(())
}

/// An attribute value of the kinds our nodes use.
#[derive(Clone, Debug, PartialEq)]
enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

#[derive(Clone, Debug)]
struct Node {
    op_type: &'static str,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: Vec<(&'static str, Attr)>,
}

/// The graph's nodes plus the int64 constants they read (Split's sizes); the
/// float initializers are the parameters.
#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    int64_constants: Vec<(String, Vec<i64>)>,
}

impl Graph {
    fn node(
        &mut self,
        op_type: &'static str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<(&'static str, Attr)>,
    ) {
        self.nodes.push(Node {
            op_type,
            name: name.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attributes,
        });
    }
}

fn int(value: usize) -> i64 {
    i64::try_from(value).expect("sizes of a planned net fit in i64")
}

fn square(value: usize) -> Attr {
    Attr::Ints(vec![int(value), int(value)])
}

/// Walks the plan and emits the nodes. `current` names the value the next layer
/// reads; `flat` says whether it is already `[batch, features]`.
fn build_graph(plan: &Plan, origin: &str) -> Result<Graph> {
    let mut graph = Graph::default();
    let mut current = INPUT.to_string();
    let mut flat = false;
    let last = plan.layers.len() - 1;
    for (index, layer) in plan.layers.iter().enumerate() {
        let name = value_name(index, &plan.spec.layers[index]);
        let out = if index == last { LOGITS } else { name.as_str() };
        let spatial = matches!(
            layer.op,
            Op::Conv { .. } | Op::Lrn { .. } | Op::MaxPool { .. } | Op::AvgPool { .. }
        );
        if spatial && flat {
            return Err(Error::unsupported(
                origin,
                format!(
                    "{}: a convolution, LRN or pooling layer after a linear layer",
                    layer.label
                ),
            ));
        }
        match &layer.op {
            Op::Conv {
                geometry: g,
                weight,
            } => {
                let (w, b) = (&plan.params[*weight].name, &plan.params[*weight + 1].name);
                let pad = int(g.pad);
                let attributes = vec![
                    ("group", Attr::Int(int(g.groups))),
                    ("kernel_shape", square(g.kernel)),
                    ("pads", Attr::Ints(vec![pad; 4])),
                    ("strides", square(g.stride)),
                ];
                graph.node("Conv", out, &[&current, w, b], &[out], attributes);
            }
            Op::Linear { weight, .. } => {
                if !flat {
                    // Flatten keeps the batch axis and lays each image out CHW,
                    // the order our linear weights expect.
                    let flattened = format!("{name}_flatten");
                    let attributes = vec![("axis", Attr::Int(1))];
                    graph.node(
                        "Flatten",
                        &flattened,
                        &[&current],
                        &[&flattened],
                        attributes,
                    );
                    current = flattened;
                    flat = true;
                }
                let (w, b) = (&plan.params[*weight].name, &plan.params[*weight + 1].name);
                let attributes = vec![("transB", Attr::Int(1))];
                graph.node("Gemm", out, &[&current, w, b], &[out], attributes);
            }
            Op::Relu { .. } => graph.node("Relu", out, &[&current], &[out], vec![]),
            Op::Tanh { .. } => graph.node("Tanh", out, &[&current], &[out], vec![]),
            Op::Lrn { geometry: g } => lrn_nodes(&mut graph, &current, out, g),
            Op::MaxPool { geometry: g } => {
                let attributes = pool_attributes(g.size, g.stride);
                graph.node("MaxPool", out, &[&current], &[out], attributes);
            }
            Op::AvgPool { geometry: g } => {
                let mut attributes = pool_attributes(g.size, g.stride);
                // Without padding every window is full; stated for readers of the model.
                attributes.push(("count_include_pad", Attr::Int(0)));
                graph.node("AveragePool", out, &[&current], &[out], attributes);
            }
            // The identity at inference: the next layer reads the same value.
            Op::Dropout { .. } => continue,
        }
        current = out.to_string();
    }
    graph.node(
        "Softmax",
        PROBABILITIES,
        &[LOGITS],
        &[PROBABILITIES],
        vec![("axis", Attr::Int(1))],
    );
    Ok(graph)
}

/// Value (and node) names: `layer5_conv2`, `layer6_relu`, unique by position
/// whatever the layers are called.
fn value_name(index: usize, layer: &LayerSpec) -> String {
    let kind = match layer {
        LayerSpec::Conv(c) => c.name.as_str(),
        LayerSpec::Linear(l) => l.name.as_str(),
        LayerSpec::Relu => "relu",
        LayerSpec::Tanh => "tanh",
        LayerSpec::Lrn(_) => "lrn",
        LayerSpec::MaxPool(_) => "max_pool",
        LayerSpec::AvgPool(_) => "avg_pool",
        LayerSpec::Dropout(_) => "dropout",
    };
    format!("layer{}_{kind}", index + 1)
}

/// Our pooling: square windows, no padding, output sides rounded down.
fn pool_attributes(size: usize, stride: usize) -> Vec<(&'static str, Attr)> {
    vec![
        ("ceil_mode", Attr::Int(0)),
        ("kernel_shape", square(size)),
        ("pads", Attr::Ints(vec![0; 4])),
        ("strides", square(stride)),
    ]
}

/// LRN in ONNX's terms: alpha times the size (ONNX divides it again), bias = k;
/// per-tower normalisation splits the channels into `groups` blocks first.
fn lrn_nodes(graph: &mut Graph, input: &str, out: &str, g: &alexnet::layers::LrnGeometry) {
    let attributes = || {
        vec![
            ("alpha", Attr::Float(g.alpha * g.size as f32)),
            ("beta", Attr::Float(g.beta)),
            ("bias", Attr::Float(g.k)),
            ("size", Attr::Int(int(g.size))),
        ]
    };
    if g.groups == 1 {
        graph.node("LRN", out, &[input], &[out], attributes());
        return;
    }
    let sizes = format!("{out}_split_sizes");
    let per_group = int(g.channels_per_group());
    graph
        .int64_constants
        .push((sizes.clone(), vec![per_group; g.groups]));
    let blocks: Vec<String> = (1..=g.groups).map(|t| format!("{out}_block{t}")).collect();
    let normalised: Vec<String> = blocks.iter().map(|b| format!("{b}_lrn")).collect();
    let block_refs: Vec<&str> = blocks.iter().map(String::as_str).collect();
    let normalised_refs: Vec<&str> = normalised.iter().map(String::as_str).collect();
    let axis = || vec![("axis", Attr::Int(1))];
    graph.node(
        "Split",
        &format!("{out}_split"),
        &[input, &sizes],
        &block_refs,
        axis(),
    );
    for (block, result) in blocks.iter().zip(&normalised) {
        graph.node("LRN", result, &[block], &[result], attributes());
    }
    graph.node("Concat", out, &normalised_refs, &[out], axis());
}

/// Field numbers of onnx.proto, by message.
mod field {
    pub mod model {
        pub const IR_VERSION: u32 = 1;
        pub const PRODUCER_NAME: u32 = 2;
        pub const PRODUCER_VERSION: u32 = 3;
        pub const DOC_STRING: u32 = 6;
        pub const GRAPH: u32 = 7;
        pub const OPSET_IMPORT: u32 = 8;
        pub const METADATA_PROPS: u32 = 14;
    }
    pub mod opset {
        pub const DOMAIN: u32 = 1;
        pub const VERSION: u32 = 2;
    }
    pub mod entry {
        pub const KEY: u32 = 1;
        pub const VALUE: u32 = 2;
    }
    pub mod graph {
        pub const NODE: u32 = 1;
        pub const NAME: u32 = 2;
        pub const INITIALIZER: u32 = 5;
        pub const INPUT: u32 = 11;
        pub const OUTPUT: u32 = 12;
    }
    pub mod node {
        pub const INPUT: u32 = 1;
        pub const OUTPUT: u32 = 2;
        pub const NAME: u32 = 3;
        pub const OP_TYPE: u32 = 4;
        pub const ATTRIBUTE: u32 = 5;
    }
    pub mod attribute {
        pub const NAME: u32 = 1;
        pub const F: u32 = 2;
        pub const I: u32 = 3;
        pub const INTS: u32 = 8;
        pub const TYPE: u32 = 20;
        /// AttributeType values.
        pub const FLOAT: u64 = 1;
        pub const INT: u64 = 2;
        pub const INTS_TYPE: u64 = 7;
    }
    pub mod tensor {
        pub const DIMS: u32 = 1;
        pub const DATA_TYPE: u32 = 2;
        pub const NAME: u32 = 8;
        pub const RAW_DATA: u32 = 9;
        /// TensorProto.DataType values.
        pub const FLOAT: u64 = 1;
        pub const INT64: u64 = 7;
    }
    pub mod value_info {
        pub const NAME: u32 = 1;
        pub const TYPE: u32 = 2;
    }
    pub mod type_proto {
        pub const TENSOR_TYPE: u32 = 1;
        pub const ELEM_TYPE: u32 = 1;
        pub const SHAPE: u32 = 2;
        pub const DIM: u32 = 1;
        pub const DIM_VALUE: u32 = 1;
        pub const DIM_PARAM: u32 = 2;
    }
}

fn encode_model(plan: &Plan, graph: &Graph, params: &[Param], options: &ExportOptions) -> Vec<u8> {
    use field::model;
    // Reserving the weights' size up front saves re-allocating (and copying)
    // a buffer that can reach hundreds of megabytes.
    let weight_bytes: usize = params.iter().map(|p| 4 * p.values.len()).sum();
    let mut w = Writer::with_capacity(weight_bytes + 64 * 1024);
    w.int64(model::IR_VERSION, IR_VERSION)
        .string(model::PRODUCER_NAME, PRODUCER)
        .string(model::PRODUCER_VERSION, env!("CARGO_PKG_VERSION"));
    if let Some(doc) = &options.doc {
        w.string(model::DOC_STRING, doc);
    }
    w.message(model::GRAPH, |g| {
        encode_graph(g, plan, graph, params, options)
    });
    w.message(model::OPSET_IMPORT, |o| {
        o.string(field::opset::DOMAIN, "")
            .int64(field::opset::VERSION, OPSET);
    });
    w.message(model::METADATA_PROPS, |m| {
        m.string(field::entry::KEY, SPEC_METADATA_KEY)
            .string(field::entry::VALUE, &plan.spec.to_toml());
    });
    w.finish()
}

fn encode_graph(
    w: &mut Writer,
    plan: &Plan,
    graph: &Graph,
    params: &[Param],
    options: &ExportOptions,
) {
    use field::graph as f;
    for node in &graph.nodes {
        w.message(f::NODE, |n| encode_node(n, node));
    }
    w.string(f::NAME, &plan.spec.name);
    for p in params {
        w.message(f::INITIALIZER, |t| encode_float_tensor(t, p));
    }
    for (name, values) in &graph.int64_constants {
        w.message(f::INITIALIZER, |t| encode_int64_tensor(t, name, values));
    }
    let input = plan.input_shape();
    let input_dims = [input.channels, input.height, input.width];
    let classes = [plan.classes()];
    w.message(f::INPUT, |v| {
        encode_value_info(v, INPUT, options.batch, &input_dims)
    });
    for output in [LOGITS, PROBABILITIES] {
        w.message(f::OUTPUT, |v| {
            encode_value_info(v, output, options.batch, &classes)
        });
    }
}

fn encode_node(w: &mut Writer, node: &Node) {
    use field::node as f;
    for input in &node.inputs {
        w.string(f::INPUT, input);
    }
    for output in &node.outputs {
        w.string(f::OUTPUT, output);
    }
    w.string(f::NAME, &node.name)
        .string(f::OP_TYPE, node.op_type);
    for (name, value) in &node.attributes {
        w.message(f::ATTRIBUTE, |a| encode_attribute(a, name, value));
    }
}

fn encode_attribute(w: &mut Writer, name: &str, value: &Attr) {
    use field::attribute as f;
    w.string(f::NAME, name);
    match value {
        Attr::Int(i) => w.int64(f::I, *i).uint64(f::TYPE, f::INT),
        Attr::Float(x) => w.float(f::F, *x).uint64(f::TYPE, f::FLOAT),
        Attr::Ints(v) => w.packed_int64(f::INTS, v).uint64(f::TYPE, f::INTS_TYPE),
    };
}

fn encode_float_tensor(w: &mut Writer, p: &Param) {
    use field::tensor as f;
    let dims: Vec<i64> = p.shape.iter().map(|&d| int(d)).collect();
    w.packed_int64(f::DIMS, &dims)
        .uint64(f::DATA_TYPE, f::FLOAT)
        .string(f::NAME, p.name)
        .message(f::RAW_DATA, |raw| {
            for v in p.values {
                raw.raw(&v.to_le_bytes());
            }
        });
}

fn encode_int64_tensor(w: &mut Writer, name: &str, values: &[i64]) {
    use field::tensor as f;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.packed_int64(f::DIMS, &[int(values.len())])
        .uint64(f::DATA_TYPE, f::INT64)
        .string(f::NAME, name)
        .bytes(f::RAW_DATA, &bytes);
}

/// A float tensor's name, type and shape: the batch dimension (fixed or
/// symbolic) followed by `dims`.
fn encode_value_info(w: &mut Writer, name: &str, batch: Option<usize>, dims: &[usize]) {
    use field::type_proto as t;
    w.string(field::value_info::NAME, name);
    w.message(field::value_info::TYPE, |ty| {
        ty.message(t::TENSOR_TYPE, |tensor| {
            tensor.uint64(t::ELEM_TYPE, field::tensor::FLOAT);
            tensor.message(t::SHAPE, |shape| {
                shape.message(t::DIM, |d| match batch {
                    Some(n) => {
                        d.int64(t::DIM_VALUE, int(n));
                    }
                    None => {
                        d.string(t::DIM_PARAM, BATCH);
                    }
                });
                for &size in dims {
                    shape.message(t::DIM, |d| {
                        d.int64(t::DIM_VALUE, int(size));
                    });
                }
            });
        });
    });
}
