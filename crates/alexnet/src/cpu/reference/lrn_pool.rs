//! An LRN and the max pooling reading it, as one operation (what the backends
//! fuse): the same values as the two layers in turn.

use num_traits::Float;

use super::cast;
use super::lrn::{lrn_backward, lrn_forward};
use super::pool::{for_each_output, window_argmax, window_pos};
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
    let ip = pool.input.height * pool.input.width;
    for_each_output(pool, n, |plane, oy, ox, out| {
        let zp = &normalised[plane * ip..][..ip];
        let best = window_argmax(pool, zp, oy, ox);
        y[out] = zp[best];
        if let Some(record) = record.as_deref_mut() {
            let (ky, kx) = (
                best / pool.input.width - oy * pool.stride,
                best % pool.input.width - ox * pool.stride,
            );
            record[out] = cast((ky * pool.size + kx) as f32);
        }
    });
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
    let ip = pool.input.height * pool.input.width;
    for_each_output(pool, n, |plane, oy, ox, out| {
        let within = record[out].to_usize().expect("a recorded window position");
        let (ky, kx) = (within / pool.size, within % pool.size);
        let pos = plane * ip + window_pos(pool, oy, ox, ky, kx);
        d_normalised[pos] = d_normalised[pos] + dy[out];
    });
    lrn_backward(lrn, n, x, &d_normalised, dx);
}
