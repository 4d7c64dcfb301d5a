//! The readable specification of every layer: plain loops that follow the
//! formulas, generic over `f32` and `f64` (gradient checks run in `f64`). Every
//! fast kernel is tested against these. Nothing here is tuned for speed.
//!
//! Buffers hold `n` images back to back in NCHW order. Conventions (see
//! [`crate::layers`]): forward overwrites `y`; backward overwrites `dx` and adds
//! into parameter gradients.
//!
//! One file per layer, named as the layer is everywhere else (its geometry in
//! `crate::layers`, its fast kernels in `cpu::fast`, its CUDA C in the CUDA
//! backend's `cuda/`).

mod conv;
mod dropout;
mod elementwise;
mod linear;
mod loss;
mod lrn;
mod lrn_pool;
mod pool;
mod sgd;

pub use conv::{conv_backward, conv_forward};
pub use dropout::{dropout_backward, dropout_forward};
pub use elementwise::{relu_backward, relu_forward, tanh_backward, tanh_forward};
pub use linear::{linear_backward, linear_forward};
pub use loss::softmax_cross_entropy;
pub use lrn::{lrn_backward, lrn_forward};
pub use lrn_pool::{lrn_max_pool_backward, lrn_max_pool_forward};
pub use pool::{avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward};
pub use sgd::sgd_update;

use num_traits::Float;

pub(super) fn cast<T: Float>(v: f32) -> T {
    T::from(v).expect("f32 converts to any float")
}

/// Index of `x[c][h][w]` within one image of `channels x height x width`.
pub(super) fn at(height: usize, width: usize, c: usize, h: usize, w: usize) -> usize {
    (c * height + h) * width + w
}

/// The input position a kernel tap reads, or `None` where it falls into the zero padding.
pub(super) fn input_pos(
    out: usize,
    tap: usize,
    stride: usize,
    pad: usize,
    side: usize,
) -> Option<usize> {
    let pos = (out * stride + tap).checked_sub(pad)?;
    (pos < side).then_some(pos)
}
