//! Turns a [`NetSpec`] into a [`Plan`]: every layer's geometry, every parameter
//! tensor with its name, shape and initialisation, and which activation buffer each
//! layer reads and writes. All validation of a description happens here, once;
//! errors name the layer, what was expected and what was found.

use crate::error::{Error, Result};
use crate::layers::{
    ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, PoolGeometry, Shape,
};
use crate::spec::{ConvSpec, DropoutSpec, LayerSpec, LinearSpec, LrnSpec, NetSpec, PoolSpec};

/// How a parameter tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Zero-mean Gaussian with this standard deviation.
    Gaussian(f32),
    Constant(f32),
}

/// One parameter tensor: `conv1.weight`, `conv1.bias`, ...
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// Whether weight decay applies (weights yes, biases no: the paper's rule names weights).
    pub decay: bool,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a planned layer computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `weight` indexes [`Plan::params`]; the bias is `weight + 1`.
    Conv {
        geometry: ConvGeometry,
        weight: usize,
    },
    Linear {
        geometry: LinearGeometry,
        weight: usize,
    },
    Relu {
        len: usize,
    },
    Tanh {
        len: usize,
    },
    Lrn {
        geometry: LrnGeometry,
    },
    MaxPool {
        geometry: PoolGeometry,
    },
    AvgPool {
        geometry: PoolGeometry,
    },
    Dropout {
        geometry: DropoutGeometry,
    },
}

impl Op {
    /// Element-wise activations overwrite their input buffer: their backward needs
    /// only their output, and no layer's backward needs its own output, so nothing
    /// is lost (see `Plan::new` for the one combination that is refused).
    pub fn in_place(&self) -> bool {
        matches!(self, Op::Relu { .. } | Op::Tanh { .. })
    }
}

/// A layer in the plan, with the activation buffers it reads and writes.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedLayer {
    /// "layer 5 (conv2)" or "layer 6 (relu)": how errors and reports name it.
    pub label: String,
    pub op: Op,
    pub input: Shape,
    pub output: Shape,
    /// Index of the activation buffer read (0 is the network input).
    pub src: usize,
    /// Index of the activation buffer written (equal to `src` for in-place layers).
    pub dst: usize,
}

/// A validated network: layers, parameters and activation buffers.
#[derive(Clone, Debug)]
pub struct Plan {
    pub spec: NetSpec,
    pub layers: Vec<PlannedLayer>,
    pub params: Vec<ParamInfo>,
    /// Values per image of each activation buffer; buffer 0 is the input.
    pub activations: Vec<usize>,
}

fn shape_error(label: &str, expected: String, found: String, hint: Option<&str>) -> Error {
    Error::Shape {
        layer: label.to_string(),
        expected,
        found,
        hint: hint.map(str::to_string),
    }
}

impl Plan {
    pub fn new(spec: &NetSpec) -> Result<Plan> {
        Plan::build(spec, &[], 1)
    }

    /// Like [`Plan::new`], except that each layer listed in `gathered` reads the
    /// outputs of `parts` copies of the net laid side by side along channels: its
    /// input has `parts` times the previous layer's channels, in a buffer of its own
    /// that no layer writes (whoever runs the copies fills it). This is one tower's
    /// half of a net split across devices (see [`crate::towers`]).
    pub(crate) fn build(spec: &NetSpec, gathered: &[usize], parts: usize) -> Result<Plan> {
        let input = check_input(spec)?;
        let mut layers = Vec::new();
        let mut params = Vec::new();
        let mut activations = vec![input.len()];
        let mut shape = input;
        let mut previous_was_activation = false;
        let mut classes_layer_seen = false;

        for (index, layer) in spec.layers.iter().enumerate() {
            let label = layer_label(index, layer);
            if classes_layer_seen {
                return Err(shape_error(
                    &label,
                    "nothing after the classifier (the linear layer without `out`)".into(),
                    kind_name(layer).into(),
                    Some("give the earlier linear layer an explicit `out`"),
                ));
            }
            if gathered.contains(&index) {
                shape = Shape::new(shape.channels * parts, shape.height, shape.width);
                activations.push(shape.len());
            }
            let params_before = params.len();
            let (op, output) = match layer {
                LayerSpec::Conv(c) => plan_conv(&label, c, shape, &mut params)?,
                LayerSpec::Linear(l) => {
                    classes_layer_seen = l.out.is_none();
                    plan_linear(&label, l, shape, spec.classes, &mut params)?
                }
                LayerSpec::Relu | LayerSpec::Tanh => {
                    check_activation(&label, previous_was_activation, layers.is_empty())?;
                    let len = shape.len();
                    let op = if matches!(layer, LayerSpec::Relu) {
                        Op::Relu { len }
                    } else {
                        Op::Tanh { len }
                    };
                    (op, shape)
                }
                LayerSpec::Lrn(n) => (
                    Op::Lrn {
                        geometry: plan_lrn(&label, n, shape)?,
                    },
                    shape,
                ),
                LayerSpec::MaxPool(p) => {
                    let geometry = plan_pool(&label, p, shape)?;
                    (Op::MaxPool { geometry }, geometry.output)
                }
                LayerSpec::AvgPool(p) => {
                    let geometry = plan_pool(&label, p, shape)?;
                    (Op::AvgPool { geometry }, geometry.output)
                }
                LayerSpec::Dropout(d) => {
                    let geometry = plan_dropout(&label, d, shape)?;
                    (Op::Dropout { geometry }, shape)
                }
            };
            check_output(&label, output, &params[params_before..])?;
            previous_was_activation = op.in_place();
            let src = activations.len() - 1;
            let dst = if op.in_place() {
                src
            } else {
                activations.push(output.len());
                activations.len() - 1
            };
            layers.push(PlannedLayer {
                label,
                op,
                input: shape,
                output,
                src,
                dst,
            });
            shape = output;
        }

        let expected_out = Shape::new(spec.classes, 1, 1);
        if shape != expected_out {
            return Err(shape_error(
                "output",
                format!("{} class scores from a last linear layer", spec.classes),
                format!("{shape} values"),
                Some("end the net with a linear layer without `out`"),
            ));
        }
        Ok(Plan {
            spec: spec.clone(),
            layers,
            params,
            activations,
        })
    }

    /// Total number of learned values.
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(ParamInfo::len).sum()
    }

    /// The bytes a network's buffers take at `max_batch` images (parameters with
    /// their gradients and velocities, every activation, the two gradient
    /// buffers, dropout masks): an upper bound, checked against the memory
    /// there is before anything is allocated. `None` if it overflows.
    pub fn buffer_bytes(&self, max_batch: usize) -> Option<u128> {
        let batch = max_batch as u128;
        let params: u128 = self.params.iter().map(|p| p.len() as u128).sum();
        let activations: u128 = self.activations.iter().map(|&a| a as u128).sum();
        let largest = self.activations.iter().copied().max().unwrap_or(0) as u128;
        let masks: u128 = self
            .layers
            .iter()
            .map(|l| match &l.op {
                Op::Dropout { geometry } => geometry.len as u128,
                _ => 0,
            })
            .sum();
        let values = 3 * params + batch.checked_mul(activations + 2 * largest + masks)?;
        values.checked_mul(4)
    }

    /// Multiply-adds of one image's forward pass through convolutions and linear layers.
    pub fn forward_macs(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match &l.op {
                Op::Conv { geometry, .. } => geometry.forward_macs(),
                Op::Linear { geometry, .. } => geometry.weight_len(),
                _ => 0,
            })
            .sum()
    }

    pub fn input_shape(&self) -> Shape {
        Shape::new(
            self.spec.input.channels,
            self.spec.input.height,
            self.spec.input.width,
        )
    }

    pub fn classes(&self) -> usize {
        self.spec.classes
    }
}

/// The net's input shape, checked, and a class count of at least 1.
fn check_input(spec: &NetSpec) -> Result<Shape> {
    let input = Shape::new(spec.input.channels, spec.input.height, spec.input.width);
    check_values(
        "input",
        "input",
        &[input.channels, input.height, input.width],
    )?;
    if input.is_empty() {
        return Err(shape_error(
            "input",
            "channels, height and width of at least 1".into(),
            input.to_string(),
            None,
        ));
    }
    if spec.classes == 0 {
        return Err(shape_error(
            "classes",
            "at least 1".into(),
            "0".into(),
            None,
        ));
    }
    Ok(input)
}

/// How errors and reports name a layer: "layer 5 (conv2)", "layer 6 (relu)".
fn layer_label(index: usize, layer: &LayerSpec) -> String {
    match layer {
        LayerSpec::Conv(c) => format!("layer {} ({})", index + 1, c.name),
        LayerSpec::Linear(l) => format!("layer {} ({})", index + 1, l.name),
        other => format!("layer {} ({})", index + 1, kind_name(other)),
    }
}

/// A layer's output must hold something, and it and the layer's parameter
/// tensors no more than [`MAX_VALUES`].
fn check_output(label: &str, output: Shape, params: &[ParamInfo]) -> Result<()> {
    if output.is_empty() {
        return Err(shape_error(
            label,
            "a non-empty output".into(),
            output.to_string(),
            None,
        ));
    }
    check_values(
        label,
        "output",
        &[output.channels, output.height, output.width],
    )?;
    for param in params {
        check_values(label, &param.name, &param.shape)?;
    }
    Ok(())
}

/// A convolution reading `shape`: its geometry, and its two tensors appended to `params`.
fn plan_conv(
    label: &str,
    c: &ConvSpec,
    shape: Shape,
    params: &mut Vec<ParamInfo>,
) -> Result<(Op, Shape)> {
    if c.out == 0 || c.kernel == 0 || c.stride == 0 || c.groups == 0 {
        return Err(shape_error(
            label,
            "out, kernel, stride and groups of at least 1".into(),
            format!(
                "out {} kernel {} stride {} groups {}",
                c.out, c.kernel, c.stride, c.groups
            ),
            None,
        ));
    }
    if !shape.channels.is_multiple_of(c.groups) || !c.out.is_multiple_of(c.groups) {
        return Err(shape_error(
            label,
            format!(
                "input and output channels divisible by groups = {}",
                c.groups
            ),
            format!("{} input and {} output channels", shape.channels, c.out),
            None,
        ));
    }
    let side = |s| ConvGeometry::output_side(s, c.kernel, c.stride, c.pad);
    let (Some(h), Some(w)) = (side(shape.height), side(shape.width)) else {
        return Err(shape_error(
            label,
            format!(
                "an input of at least {k}x{k} after padding {p}",
                k = c.kernel,
                p = c.pad
            ),
            format!("{shape}"),
            Some("use a smaller kernel, more padding or a larger input"),
        ));
    };
    let output = Shape::new(c.out, h, w);
    let geometry = ConvGeometry {
        input: shape,
        output,
        kernel: c.kernel,
        stride: c.stride,
        pad: c.pad,
        groups: c.groups,
    };
    let weight = params.len();
    params.push(ParamInfo {
        name: format!("{}.weight", c.name),
        shape: vec![c.out, shape.channels / c.groups, c.kernel, c.kernel],
        init: Init::Gaussian(c.init_std),
        decay: true,
    });
    params.push(ParamInfo {
        name: format!("{}.bias", c.name),
        shape: vec![c.out],
        init: Init::Constant(c.bias_init),
        decay: false,
    });
    Ok((Op::Conv { geometry, weight }, output))
}

/// A fully connected layer reading `shape` (the classifier, with `classes`
/// outputs, when it has no `out`), its two tensors appended to `params`.
fn plan_linear(
    label: &str,
    l: &LinearSpec,
    shape: Shape,
    classes: usize,
    params: &mut Vec<ParamInfo>,
) -> Result<(Op, Shape)> {
    let outputs = match l.out {
        Some(0) => {
            return Err(shape_error(
                label,
                "out of at least 1".into(),
                "0".into(),
                None,
            ));
        }
        Some(n) => n,
        None => classes,
    };
    let geometry = LinearGeometry {
        inputs: shape.len(),
        outputs,
    };
    let weight = params.len();
    params.push(ParamInfo {
        name: format!("{}.weight", l.name),
        shape: vec![outputs, shape.len()],
        init: Init::Gaussian(l.init_std),
        decay: true,
    });
    params.push(ParamInfo {
        name: format!("{}.bias", l.name),
        shape: vec![outputs],
        init: Init::Constant(l.bias_init),
        decay: false,
    });
    Ok((Op::Linear { geometry, weight }, Shape::new(outputs, 1, 1)))
}

/// Activations work in place on the previous layer's output, so one must not
/// come first or straight after another.
fn check_activation(label: &str, after_activation: bool, first: bool) -> Result<()> {
    if after_activation || first {
        return Err(shape_error(
            label,
            "an activation after a convolution, linear, pooling, LRN or dropout layer".into(),
            if first {
                "it first".into()
            } else {
                "another activation right before it".into()
            },
            Some(
                "activations work in place on the previous layer's output; two in a row would lose what the first one's backward needs",
            ),
        ));
    }
    Ok(())
}

fn plan_dropout(label: &str, d: &DropoutSpec, shape: Shape) -> Result<DropoutGeometry> {
    if !(0.0..1.0).contains(&d.p) {
        return Err(shape_error(
            label,
            "p in [0, 1)".into(),
            d.p.to_string(),
            None,
        ));
    }
    Ok(DropoutGeometry {
        len: shape.len(),
        p: d.p,
    })
}

fn plan_lrn(label: &str, n: &LrnSpec, shape: Shape) -> Result<LrnGeometry> {
    if n.size == 0 || n.size.is_multiple_of(2) {
        return Err(shape_error(
            label,
            "an odd window size (the window is centred on each channel)".into(),
            n.size.to_string(),
            None,
        ));
    }
    if n.groups == 0 || !shape.channels.is_multiple_of(n.groups) {
        return Err(shape_error(
            label,
            format!("channels divisible by groups = {}", n.groups),
            format!("{} channels", shape.channels),
            None,
        ));
    }
    if n.k <= 0.0 || n.alpha < 0.0 || n.beta < 0.0 {
        return Err(shape_error(
            label,
            "k > 0, alpha >= 0 and beta >= 0".into(),
            format!("k {} alpha {} beta {}", n.k, n.alpha, n.beta),
            None,
        ));
    }
    Ok(LrnGeometry {
        shape,
        size: n.size,
        alpha: n.alpha,
        beta: n.beta,
        k: n.k,
        groups: n.groups,
    })
}

fn plan_pool(label: &str, p: &PoolSpec, shape: Shape) -> Result<PoolGeometry> {
    PoolGeometry::new(shape, p.size, p.stride).ok_or_else(|| {
        shape_error(
            label,
            format!(
                "an input of at least {s}x{s} and size, stride of at least 1",
                s = p.size
            ),
            format!("{shape}, size {} stride {}", p.size, p.stride),
            None,
        )
    })
}

/// The most values one activation or parameter tensor may hold (4 TiB of f32):
/// beyond any machine's memory, so larger descriptions are mistakes, and low
/// enough that no size computed from a plan overflows.
pub const MAX_VALUES: usize = 1 << 40;

/// Refuses a tensor of more than [`MAX_VALUES`] values (or whose size overflows).
fn check_values(label: &str, what: &str, dims: &[usize]) -> Result<()> {
    let len = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match len {
        Some(len) if len <= MAX_VALUES => Ok(()),
        _ => Err(shape_error(
            label,
            format!("a {what} of at most {MAX_VALUES} values (4 TiB)"),
            format!("{dims:?}"),
            Some("a layer this large cannot be allocated; check its sizes"),
        )),
    }
}

/// A size in bytes as people read it: "1.5 GiB".
pub fn bytes_text(bytes: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn kind_name(layer: &LayerSpec) -> &'static str {
    match layer {
        LayerSpec::Conv(_) => "conv",
        LayerSpec::Linear(_) => "linear",
        LayerSpec::Relu => "relu",
        LayerSpec::Tanh => "tanh",
        LayerSpec::Lrn(_) => "lrn",
        LayerSpec::MaxPool(_) => "max-pool",
        LayerSpec::AvgPool(_) => "avg-pool",
        LayerSpec::Dropout(_) => "dropout",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alexnet_has_the_papers_shapes_and_parameter_count() {
        let plan = Plan::new(&NetSpec::preset("alexnet").unwrap()).unwrap();
        assert_eq!(plan.parameter_count(), 60_965_224);
        let conv_outputs: Vec<Shape> = plan
            .layers
            .iter()
            .filter(|l| matches!(l.op, Op::Conv { .. }))
            .map(|l| l.output)
            .collect();
        assert_eq!(
            conv_outputs,
            vec![
                Shape::new(96, 55, 55),
                Shape::new(256, 27, 27),
                Shape::new(384, 13, 13),
                Shape::new(384, 13, 13),
                Shape::new(256, 13, 13),
            ]
        );
        let names: Vec<&str> = plan.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names[0], "conv1.weight");
        assert_eq!(plan.params[2].shape, vec![256, 48, 5, 5]);
        assert_eq!(plan.params[14].shape, vec![1000, 4096]);
        // Biases start at 1 in conv2, conv4, conv5, fc6 and fc7, at 0 elsewhere.
        let ones: Vec<&str> = plan
            .params
            .iter()
            .filter(|p| p.init == Init::Constant(1.0))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            ones,
            [
                "conv2.bias",
                "conv4.bias",
                "conv5.bias",
                "fc6.bias",
                "fc7.bias"
            ]
        );
        // About 0.72 G multiply-adds per image (paper-scale figure quoted in PAPER.md).
        let gmacs = plan.forward_macs() as f64 / 1e9;
        assert!((0.70..0.74).contains(&gmacs), "{gmacs}");
    }

    #[test]
    fn owt_matches_torchvision_parameter_count() {
        let plan = Plan::new(&NetSpec::preset("alexnet-owt").unwrap()).unwrap();
        assert_eq!(plan.parameter_count(), 61_100_840);
    }

    #[test]
    fn cifar_preset_fits_28_and_32_pixel_inputs() {
        for (c, s) in [(1, 28), (3, 32), (1, 32), (3, 28)] {
            let spec = NetSpec::preset("cifar").unwrap().with_input(c, s, s);
            Plan::new(&spec).unwrap();
        }
    }

    /// Asserts that planning `spec` fails with an error saying each of `words`.
    fn refused_saying(spec: &NetSpec, words: &[&str]) {
        let err = Plan::new(spec).unwrap_err().to_string();
        for word in words {
            assert!(err.contains(word), "{err}");
        }
    }

    #[test]
    fn groups_that_do_not_divide_are_rejected_naming_the_layer() {
        let mut spec = NetSpec::preset("alexnet").unwrap();
        if let LayerSpec::Conv(c) = &mut spec.layers[4] {
            c.out = 255;
        }
        refused_saying(
            &spec,
            &["layer 5 (conv2)", "divisible by groups = 2", "255 output"],
        );
    }

    #[test]
    fn too_small_an_input_is_rejected_naming_the_layer() {
        let spec = NetSpec::preset("alexnet").unwrap().with_input(3, 32, 32);
        let err = Plan::new(&spec).unwrap_err().to_string();
        assert!(err.contains("max-pool") || err.contains("conv"), "{err}");
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn mismatched_channels_between_description_and_input_are_caught() {
        let mut spec = NetSpec::preset("alexnet").unwrap();
        if let LayerSpec::Lrn(n) = &mut spec.layers[2] {
            n.size = 4;
        }
        refused_saying(&spec, &["layer 3 (lrn)", "odd"]);
    }

    #[test]
    fn two_activations_in_a_row_are_refused() {
        let mut spec = NetSpec::preset("cifar").unwrap();
        // The preset's second layer is conv1's ReLU.
        assert_eq!(spec.layers[1], LayerSpec::Relu);
        spec.layers.insert(2, LayerSpec::Tanh);
        refused_saying(&spec, &["layer 3 (tanh)"]);
    }

    #[test]
    fn a_net_without_a_classifier_is_refused() {
        let mut spec = NetSpec::preset("cifar").unwrap();
        spec.layers.pop();
        refused_saying(&spec, &["output", "10 class scores"]);
    }

    #[test]
    fn in_place_layers_share_their_input_buffer() {
        let plan = Plan::new(&NetSpec::preset("alexnet").unwrap()).unwrap();
        for l in &plan.layers {
            assert_eq!(l.op.in_place(), l.src == l.dst, "{}", l.label);
        }
    }
}
