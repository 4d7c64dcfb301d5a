//! An LRN and the max pooling reading it, as one operation (what the backends
//! fuse): the same values as the two layers in turn.

use num_traits::Float;

use super::cast;
use super::lrn::{lrn_backward, lrn_forward};
use super::pool::window_argmax;
use crate::layers::{LrnGeometry, PoolGeometry};

/// Local response normalisation followed by max pooling, as the backends' fused
/// operation computes it: `y = max_pool(lrn(x))`. Where `record` is given, each
/// output's entry receives the position of its window's first largest value
/// within the window (`ky * size + kx`), which is all the backward pass needs
/// of `lrn(x)`.
pub fn lrn_max_pool_forward<T: Float>(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[T],
    y: &mut [T],
    mut record: Option<&mut [T]>,
) {
    let mut normalised = vec![T::zero(); n * lrn.shape.len()];
    lrn_forward(lrn, n, x, &mut normalised);
    let (ip, op) = (
        pool.input.height * pool.input.width,
        pool.output.height * pool.output.width,
    );
    for plane in 0..n * pool.input.channels {
        let zp = &normalised[plane * ip..][..ip];
        for oy in 0..pool.output.height {
            for ox in 0..pool.output.width {
                let best = window_argmax(pool, zp, oy, ox);
                let out = plane * op + oy * pool.output.width + ox;
                y[out] = zp[best];
                if let Some(record) = record.as_deref_mut() {
                    let (ky, kx) = (
                        best / pool.input.width - oy * pool.stride,
                        best % pool.input.width - ox * pool.stride,
                    );
                    record[out] = cast((ky * pool.size + kx) as f32);
                }
            }
        }
    }
}

/// The gradient of the LRN's input from the pooled output's gradient `dy`:
/// each output's gradient goes to the recorded position of its window, then
/// back through the normalisation.
pub fn lrn_max_pool_backward<T: Float>(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[T],
    record: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    let mut d_normalised = vec![T::zero(); n * lrn.shape.len()];
    let (ip, op) = (
        pool.input.height * pool.input.width,
        pool.output.height * pool.output.width,
    );
    for plane in 0..n * pool.input.channels {
        for oy in 0..pool.output.height {
            for ox in 0..pool.output.width {
                let out = plane * op + oy * pool.output.width + ox;
                let within = record[out].to_usize().expect("a recorded window position");
                let (ky, kx) = (within / pool.size, within % pool.size);
                let pos =
                    plane * ip + (oy * pool.stride + ky) * pool.input.width + ox * pool.stride + kx;
                d_normalised[pos] = d_normalised[pos] + dy[out];
            }
        }
    }
    lrn_backward(lrn, n, x, &d_normalised, dx);
}
