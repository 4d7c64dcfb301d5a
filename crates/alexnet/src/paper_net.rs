//! The paper's network (Section 3 and Figure 2) as straight-line code over the
//! readable layers of [`crate::cpu::reference`]: forward, loss, backward and the
//! SGD update, top to bottom, one call per layer. Nothing else is in the way: no
//! fusion, no devices, no buffers shared between layers, no timing.
//!
//! This is where a reader learns what the net computes. [`crate::Network`]
//! computes the same thing fast, on any backend, for any description; a test
//! (`tests/paper_net.rs`) holds the two equal on the paper's net in miniature.
//!
//! The layer sizes are read off a [`Plan`] of the `alexnet` preset, or of any
//! description with the same sequence of layers (such as
//! [`crate::testing::paper_mini`]), so the geometry is worked out and checked in
//! one place. Buffers hold `n` images back to back, channels, rows, columns.

use crate::cpu::reference as r;
use crate::error::{Error, Result};
use crate::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, PoolGeometry};
use crate::optim::Sgd;
use crate::plan::{Op, Plan};

/// The geometry of every layer, in the paper's order. ReLU follows each
/// convolution and the first two fully connected layers; it needs no geometry.
#[derive(Clone, Debug)]
pub struct PaperGeometry {
    pub conv1: ConvGeometry,
    pub lrn1: LrnGeometry,
    pub pool1: PoolGeometry,
    pub conv2: ConvGeometry,
    pub lrn2: LrnGeometry,
    pub pool2: PoolGeometry,
    pub conv3: ConvGeometry,
    pub conv4: ConvGeometry,
    pub conv5: ConvGeometry,
    pub pool5: PoolGeometry,
    pub fc6: LinearGeometry,
    pub dropout6: DropoutGeometry,
    pub fc7: LinearGeometry,
    pub dropout7: DropoutGeometry,
    pub fc8: LinearGeometry,
}

/// A learned layer's tensors: the weight (`out x in x k x k` or `out x in`) and the bias.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightBias {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The net's parameters; its gradients have the same shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PaperParams {
    pub conv1: WeightBias,
    pub conv2: WeightBias,
    pub conv3: WeightBias,
    pub conv4: WeightBias,
    pub conv5: WeightBias,
    pub fc6: WeightBias,
    pub fc7: WeightBias,
    pub fc8: WeightBias,
}

/// Every layer's output for one batch, which the backward pass reads. ReLU
/// overwrites its input, so `conv1` holds `relu(conv1(x))`, and so on.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    pub conv1: Vec<f32>,
    pub lrn1: Vec<f32>,
    pub pool1: Vec<f32>,
    pub conv2: Vec<f32>,
    pub lrn2: Vec<f32>,
    pub pool2: Vec<f32>,
    pub conv3: Vec<f32>,
    pub conv4: Vec<f32>,
    pub conv5: Vec<f32>,
    pub pool5: Vec<f32>,
    pub fc6: Vec<f32>,
    pub dropout6: Vec<f32>,
    pub fc7: Vec<f32>,
    pub dropout7: Vec<f32>,
    pub fc8: Vec<f32>,
}

/// The two dropout layers' masks for one batch: `n * len` values, each 0 (dropped)
/// or `1 / (1 - p)` (kept and scaled, so that testing needs no rescaling).
#[derive(Clone, Debug, Default)]
pub struct DropoutMasks {
    pub dropout6: Vec<f32>,
    pub dropout7: Vec<f32>,
}

/// The paper's net: its geometry, parameters and momentum.
#[derive(Clone, Debug)]
pub struct PaperNet {
    pub geometry: PaperGeometry,
    pub params: PaperParams,
    /// The SGD velocity of each parameter (starts at zero).
    pub velocity: PaperParams,
}

impl PaperNet {
    /// The net laid out by `plan`, with `values` for each parameter tensor in the
    /// plan's order (`conv1.weight`, `conv1.bias`, ...).
    pub fn new(plan: &Plan, values: Vec<Vec<f32>>) -> Result<PaperNet> {
        let geometry = PaperGeometry::from_plan(plan)?;
        if values.len() != 16 {
            return Err(mismatch(
                "parameters",
                "16 tensors (8 weights and biases)",
                values.len(),
            ));
        }
        for (info, tensor) in plan.params.iter().zip(&values) {
            if info.len() != tensor.len() {
                return Err(mismatch(&info.name, "its shape's values", tensor.len()));
            }
        }
        let params = PaperParams::from_tensors(values);
        let velocity = params.zeros_like();
        Ok(PaperNet {
            geometry,
            params,
            velocity,
        })
    }

    /// One training step on `n` images: forward, loss, backward, update. Returns the loss.
    pub fn train_step(
        &mut self,
        n: usize,
        images: &[f32],
        labels: &[u32],
        masks: &DropoutMasks,
        sgd: &Sgd,
    ) -> f32 {
        let activations = self.forward(n, images, Some(masks));
        let (loss, grads) = self.backward(n, images, &activations, masks, labels);
        self.update(&grads, sgd);
        loss
    }

    /// Runs `n` images through the net. Without masks (testing) dropout passes
    /// its input through unchanged.
    pub fn forward(&self, n: usize, images: &[f32], masks: Option<&DropoutMasks>) -> Activations {
        let (g, p) = (&self.geometry, &self.params);

        let mut conv1 = conv(&g.conv1, n, images, &p.conv1);
        relu(&mut conv1);
        let lrn1 = lrn(&g.lrn1, n, &conv1);
        let pool1 = max_pool(&g.pool1, n, &lrn1);

        let mut conv2 = conv(&g.conv2, n, &pool1, &p.conv2);
        relu(&mut conv2);
        let lrn2 = lrn(&g.lrn2, n, &conv2);
        let pool2 = max_pool(&g.pool2, n, &lrn2);

        let mut conv3 = conv(&g.conv3, n, &pool2, &p.conv3);
        relu(&mut conv3);
        let mut conv4 = conv(&g.conv4, n, &conv3, &p.conv4);
        relu(&mut conv4);
        let mut conv5 = conv(&g.conv5, n, &conv4, &p.conv5);
        relu(&mut conv5);
        let pool5 = max_pool(&g.pool5, n, &conv5);

        let mut fc6 = linear(&g.fc6, n, &pool5, &p.fc6);
        relu(&mut fc6);
        let dropout6 = dropout(&g.dropout6, n, masks.map(|m| &m.dropout6[..]), &fc6);
        let mut fc7 = linear(&g.fc7, n, &dropout6, &p.fc7);
        relu(&mut fc7);
        let dropout7 = dropout(&g.dropout7, n, masks.map(|m| &m.dropout7[..]), &fc7);
        let fc8 = linear(&g.fc8, n, &dropout7, &p.fc8);

        Activations {
            conv1,
            lrn1,
            pool1,
            conv2,
            lrn2,
            pool2,
            conv3,
            conv4,
            conv5,
            pool5,
            fc6,
            dropout6,
            fc7,
            dropout7,
            fc8,
        }
    }

    /// The mean cross-entropy of the forward pass `a` against `labels`, and the
    /// gradient of every parameter: each layer's backward in reverse order, `d`
    /// being the gradient with respect to the current layer's output.
    pub fn backward(
        &self,
        n: usize,
        images: &[f32],
        a: &Activations,
        masks: &DropoutMasks,
        labels: &[u32],
    ) -> (f32, PaperParams) {
        let (g, p) = (&self.geometry, &self.params);
        let mut grads = p.zeros_like();
        let mut d = vec![0.0; a.fc8.len()];
        let loss = r::softmax_cross_entropy(g.fc8.outputs, n, &a.fc8, labels, &mut d);

        let d = weighted_back(&g.fc8, n, &a.dropout7, &p.fc8, &d, &mut grads.fc8);
        let d = dropout_back(&g.dropout7, n, &masks.dropout7, &d);
        let d = relu_back(&a.fc7, d);
        let d = weighted_back(&g.fc7, n, &a.dropout6, &p.fc7, &d, &mut grads.fc7);
        let d = dropout_back(&g.dropout6, n, &masks.dropout6, &d);
        let d = relu_back(&a.fc6, d);
        let d = weighted_back(&g.fc6, n, &a.pool5, &p.fc6, &d, &mut grads.fc6);

        let d = max_pool_back(&g.pool5, n, &a.conv5, &d);
        let d = relu_back(&a.conv5, d);
        let d = weighted_back(&g.conv5, n, &a.conv4, &p.conv5, &d, &mut grads.conv5);
        let d = relu_back(&a.conv4, d);
        let d = weighted_back(&g.conv4, n, &a.conv3, &p.conv4, &d, &mut grads.conv4);
        let d = relu_back(&a.conv3, d);
        let d = weighted_back(&g.conv3, n, &a.pool2, &p.conv3, &d, &mut grads.conv3);

        let d = max_pool_back(&g.pool2, n, &a.lrn2, &d);
        let d = lrn_back(&g.lrn2, n, &a.conv2, &d);
        let d = relu_back(&a.conv2, d);
        let d = weighted_back(&g.conv2, n, &a.pool1, &p.conv2, &d, &mut grads.conv2);

        let d = max_pool_back(&g.pool1, n, &a.lrn1, &d);
        let d = lrn_back(&g.lrn1, n, &a.conv1, &d);
        let d = relu_back(&a.conv1, d);
        // Nothing needs the gradient with respect to the images.
        r::conv_backward(
            &g.conv1,
            n,
            images,
            &p.conv1.weight,
            &d,
            &mut grads.conv1.weight,
            &mut grads.conv1.bias,
            None,
        );
        (loss, grads)
    }

    /// The paper's SGD update (Section 5) of every tensor; biases are not decayed.
    pub fn update(&mut self, grads: &PaperParams, sgd: &Sgd) {
        let params = self.params.layers_mut();
        let velocity = self.velocity.layers_mut();
        for ((p, v), g) in params.into_iter().zip(velocity).zip(grads.layers()) {
            let (lr, momentum) = (sgd.learning_rate, sgd.momentum);
            r::sgd_update(
                &mut p.weight,
                &g.weight,
                &mut v.weight,
                lr,
                momentum,
                sgd.weight_decay,
            );
            r::sgd_update(&mut p.bias, &g.bias, &mut v.bias, lr, momentum, 0.0);
        }
    }
}

impl PaperParams {
    fn from_tensors(values: Vec<Vec<f32>>) -> PaperParams {
        let mut tensors = values.into_iter();
        let mut next = || WeightBias {
            weight: tensors.next().unwrap_or_default(),
            bias: tensors.next().unwrap_or_default(),
        };
        PaperParams {
            conv1: next(),
            conv2: next(),
            conv3: next(),
            conv4: next(),
            conv5: next(),
            fc6: next(),
            fc7: next(),
            fc8: next(),
        }
    }

    /// The tensors in the plan's order (`conv1.weight`, `conv1.bias`, ...).
    pub fn tensors(&self) -> Vec<&[f32]> {
        self.layers()
            .into_iter()
            .flat_map(|l| [&l.weight[..], &l.bias[..]])
            .collect()
    }

    fn layers(&self) -> [&WeightBias; 8] {
        [
            &self.conv1,
            &self.conv2,
            &self.conv3,
            &self.conv4,
            &self.conv5,
            &self.fc6,
            &self.fc7,
            &self.fc8,
        ]
    }

    fn layers_mut(&mut self) -> [&mut WeightBias; 8] {
        [
            &mut self.conv1,
            &mut self.conv2,
            &mut self.conv3,
            &mut self.conv4,
            &mut self.conv5,
            &mut self.fc6,
            &mut self.fc7,
            &mut self.fc8,
        ]
    }

    fn zeros_like(&self) -> PaperParams {
        let zeros = |l: &WeightBias| WeightBias {
            weight: vec![0.0; l.weight.len()],
            bias: vec![0.0; l.bias.len()],
        };
        let [conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8] = self.layers().map(zeros);
        PaperParams {
            conv1,
            conv2,
            conv3,
            conv4,
            conv5,
            fc6,
            fc7,
            fc8,
        }
    }
}

// One layer each: allocate the output, call the reference.

fn conv(g: &ConvGeometry, n: usize, x: &[f32], p: &WeightBias) -> Vec<f32> {
    let mut y = vec![0.0; n * g.output.len()];
    r::conv_forward(g, n, x, &p.weight, &p.bias, &mut y);
    y
}

fn linear(g: &LinearGeometry, n: usize, x: &[f32], p: &WeightBias) -> Vec<f32> {
    let mut y = vec![0.0; n * g.outputs];
    r::linear_forward(g, n, x, &p.weight, &p.bias, &mut y);
    y
}

fn relu(x: &mut [f32]) {
    r::relu_forward(x);
}

fn lrn(g: &LrnGeometry, n: usize, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; n * g.shape.len()];
    r::lrn_forward(g, n, x, &mut y);
    y
}

fn max_pool(g: &PoolGeometry, n: usize, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; n * g.output.len()];
    r::max_pool_forward(g, n, x, &mut y);
    y
}

fn dropout(g: &DropoutGeometry, n: usize, mask: Option<&[f32]>, x: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    if let Some(mask) = mask {
        r::dropout_forward(g, n, mask, x, &mut y);
    }
    y
}

/// The reference backward pass of a weighted layer: `r::conv_backward` or
/// `r::linear_backward`.
type WeightedBackward<G> =
    fn(&G, usize, &[f32], &[f32], &[f32], &mut [f32], &mut [f32], Option<&mut [f32]>);

/// The two weighted layers (convolution, fully connected), so that one function
/// runs the backward pass of either.
trait Weighted: Sized {
    const BACKWARD: WeightedBackward<Self>;
    /// The length of one image's input.
    fn input_len(&self) -> usize;
}

impl Weighted for ConvGeometry {
    const BACKWARD: WeightedBackward<Self> = r::conv_backward;
    fn input_len(&self) -> usize {
        self.input.len()
    }
}

impl Weighted for LinearGeometry {
    const BACKWARD: WeightedBackward<Self> = r::linear_backward;
    fn input_len(&self) -> usize {
        self.inputs
    }
}

/// Adds the layer's weight and bias gradients to `grads`; returns the gradient
/// with respect to its input `x`.
fn weighted_back<G: Weighted>(
    g: &G,
    n: usize,
    x: &[f32],
    p: &WeightBias,
    dy: &[f32],
    grads: &mut WeightBias,
) -> Vec<f32> {
    let mut dx = vec![0.0; n * g.input_len()];
    let (dw, db) = (&mut grads.weight, &mut grads.bias);
    G::BACKWARD(g, n, x, &p.weight, dy, dw, db, Some(&mut dx));
    dx
}

/// `y` is the ReLU's output, which is all its backward needs.
fn relu_back(y: &[f32], mut d: Vec<f32>) -> Vec<f32> {
    r::relu_backward(y, &mut d);
    d
}

fn lrn_back(g: &LrnGeometry, n: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; dy.len()];
    r::lrn_backward(g, n, x, dy, &mut dx);
    dx
}

fn max_pool_back(g: &PoolGeometry, n: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; n * g.input.len()];
    r::max_pool_backward(g, n, x, dy, &mut dx);
    dx
}

fn dropout_back(g: &DropoutGeometry, n: usize, mask: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; dy.len()];
    r::dropout_backward(g, n, mask, dy, &mut dx);
    dx
}

impl PaperGeometry {
    /// Reads the geometry off a plan with the paper's sequence of layers, or
    /// says which layer differs.
    pub fn from_plan(plan: &Plan) -> Result<PaperGeometry> {
        let mut layers = Layers { plan, next: 0 };
        let geometry = PaperGeometry {
            conv1: layers.conv_relu()?,
            lrn1: layers.lrn()?,
            pool1: layers.max_pool()?,
            conv2: layers.conv_relu()?,
            lrn2: layers.lrn()?,
            pool2: layers.max_pool()?,
            conv3: layers.conv_relu()?,
            conv4: layers.conv_relu()?,
            conv5: layers.conv_relu()?,
            pool5: layers.max_pool()?,
            fc6: layers.linear_relu()?,
            dropout6: layers.dropout()?,
            fc7: layers.linear_relu()?,
            dropout7: layers.dropout()?,
            fc8: layers.linear()?,
        };
        layers.end()?;
        Ok(geometry)
    }
}

/// Walks a plan's layers, expecting the paper's sequence.
struct Layers<'a> {
    plan: &'a Plan,
    next: usize,
}

impl<'a> Layers<'a> {
    fn take(&mut self, expected: &str) -> Result<&'a Op> {
        let Some(layer) = self.plan.layers.get(self.next) else {
            return Err(mismatch(
                &format!("layer {}", self.next + 1),
                expected,
                "the end of the net",
            ));
        };
        self.next += 1;
        Ok(&layer.op)
    }

    fn unexpected(&self, expected: &str) -> Error {
        let layer = &self.plan.layers[self.next - 1];
        mismatch(&layer.label, expected, format!("{:?}", layer.op))
    }

    fn conv_relu(&mut self) -> Result<ConvGeometry> {
        let Op::Conv { geometry, .. } = self.take("conv")? else {
            return Err(self.unexpected("conv (the paper's layer sequence)"));
        };
        let geometry = *geometry;
        self.relu()?;
        Ok(geometry)
    }

    fn linear(&mut self) -> Result<LinearGeometry> {
        match self.take("linear")? {
            Op::Linear { geometry, .. } => Ok(*geometry),
            _ => Err(self.unexpected("linear (the paper's layer sequence)")),
        }
    }

    fn linear_relu(&mut self) -> Result<LinearGeometry> {
        let geometry = self.linear()?;
        self.relu()?;
        Ok(geometry)
    }

    fn relu(&mut self) -> Result<()> {
        match self.take("relu")? {
            Op::Relu { .. } => Ok(()),
            _ => Err(self.unexpected("relu (the paper's layer sequence)")),
        }
    }

    fn lrn(&mut self) -> Result<LrnGeometry> {
        match self.take("lrn")? {
            Op::Lrn { geometry } => Ok(*geometry),
            _ => Err(self.unexpected("lrn (the paper's layer sequence)")),
        }
    }

    fn max_pool(&mut self) -> Result<PoolGeometry> {
        match self.take("max-pool")? {
            Op::MaxPool { geometry } => Ok(*geometry),
            _ => Err(self.unexpected("max-pool (the paper's layer sequence)")),
        }
    }

    fn dropout(&mut self) -> Result<DropoutGeometry> {
        match self.take("dropout")? {
            Op::Dropout { geometry } => Ok(*geometry),
            _ => Err(self.unexpected("dropout (the paper's layer sequence)")),
        }
    }

    fn end(&self) -> Result<()> {
        match self.plan.layers.get(self.next) {
            None => Ok(()),
            Some(layer) => Err(mismatch(
                &layer.label,
                "the end of the net after fc8",
                format!("{:?}", layer.op),
            )),
        }
    }
}

fn mismatch(what: &str, expected: &str, found: impl ToString) -> Error {
    Error::Shape {
        layer: what.to_string(),
        expected: expected.to_string(),
        found: found.to_string(),
        hint: None,
    }
}
