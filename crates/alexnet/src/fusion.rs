//! Which layers the network runs as one operation, and how large its two
//! gradient buffers must be.
//!
//! A ReLU right after a convolution runs inside it
//! ([`crate::Backend::conv_relu_forward`]): the convolution's output buffer then
//! holds the rectified values, as it would after the in-place ReLU, so only the
//! forward pass changes.
//!
//! A max-pooling layer that reads an LRN's output directly (the paper's conv1
//! and conv2 blocks: conv, ReLU, LRN, pool) runs together with that LRN as
//! [`crate::Backend::lrn_max_pool_forward`]: the LRN's output, as large as the
//! convolution's, is neither kept nor written, and its gradient never exists.
//! The pool's backward pass instead gives the gradient of the LRN's input.

use crate::plan::{Op, Plan};

/// How a layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// On its own.
    Alone,
    /// A convolution whose forward pass also applies ReLU layer `relu` (the next one).
    ConvWithRelu { relu: usize },
    /// A ReLU applied by convolution `conv`'s forward pass; its backward pass is its own.
    ReluAfterConv { conv: usize },
    /// An LRN whose forward pass also computes max-pooling layer `pool` (the
    /// next one); its backward pass is done by that layer's.
    LrnIntoPool { pool: usize },
    /// A max-pooling layer computed by LRN layer `lrn`'s forward pass; its
    /// backward pass gives the gradient of the LRN's input.
    PoolAfterLrn { lrn: usize },
}

/// The fusion of every layer of `plan`.
pub fn fusions(plan: &Plan) -> Vec<Fusion> {
    let mut fusions = vec![Fusion::Alone; plan.layers.len()];
    for (index, pair) in plan.layers.windows(2).enumerate() {
        let (conv, relu) = (&pair[0], &pair[1]);
        if matches!(conv.op, Op::Conv { .. })
            && matches!(relu.op, Op::Relu { .. })
            && relu.src == conv.dst
        {
            fusions[index] = Fusion::ConvWithRelu { relu: index + 1 };
            fusions[index + 1] = Fusion::ReluAfterConv { conv: index };
        }
    }
    for (index, pair) in plan.layers.windows(2).enumerate() {
        let (lrn, pool) = (&pair[0], &pair[1]);
        // The pool must read the LRN's own buffer: a gathered pool reads a
        // buffer of its own, and an in-place layer between them would need
        // the LRN's output in its backward pass.
        // Windows of at most 16x16: the fast CPU backend records a window
        // position in a byte. Larger ones run as two layers.
        let small_window = matches!(pool.op, Op::MaxPool { geometry } if geometry.size <= 16);
        if matches!(lrn.op, Op::Lrn { .. }) && small_window && pool.src == lrn.dst {
            fusions[index] = Fusion::LrnIntoPool { pool: index + 1 };
            fusions[index + 1] = Fusion::PoolAfterLrn { lrn: index };
        }
    }
    fusions
}

/// What a layer's backward pass does with the two gradient buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientStep {
    /// Works in place on the current buffer, or does nothing.
    Stays,
    /// Writes this many values per image of its input's gradient into the other
    /// buffer (0 where that gradient is not needed), which becomes current.
    Moves(usize),
}

/// What layer `index`'s backward pass does with the gradient buffers.
pub fn gradient_step(plan: &Plan, fusions: &[Fusion], index: usize) -> GradientStep {
    let layer = &plan.layers[index];
    // The network input needs no gradient.
    let needed = |src: usize, len: usize| if src == 0 { 0 } else { len };
    match fusions[index] {
        Fusion::LrnIntoPool { .. } => GradientStep::Stays,
        Fusion::PoolAfterLrn { lrn } => {
            let lrn = &plan.layers[lrn];
            if lrn.src == 0 {
                GradientStep::Stays
            } else {
                GradientStep::Moves(lrn.input.len())
            }
        }
        Fusion::Alone | Fusion::ConvWithRelu { .. } | Fusion::ReluAfterConv { .. } => {
            match layer.op {
                Op::Relu { .. } | Op::Tanh { .. } => GradientStep::Stays,
                // The parameter gradients are needed even where the input's is not.
                Op::Conv { .. } | Op::Linear { .. } => {
                    GradientStep::Moves(needed(layer.src, layer.input.len()))
                }
                _ if layer.src == 0 => GradientStep::Stays,
                _ => GradientStep::Moves(layer.input.len()),
            }
        }
    }
}

/// Values per image each gradient buffer must hold: the backward pass starts
/// with the logits' gradient in buffer 0 and alternates as [`gradient_step`] says.
pub fn gradient_lens(plan: &Plan, fusions: &[Fusion]) -> [usize; 2] {
    let mut lens = [plan.classes(), 0];
    let mut current = 0;
    for index in (0..plan.layers.len()).rev() {
        if let GradientStep::Moves(len) = gradient_step(plan, fusions, index) {
            current = 1 - current;
            lens[current] = lens[current].max(len);
        }
    }
    lens
}
