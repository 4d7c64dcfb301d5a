//! Dropout with a given mask (Section 4.2).

use num_traits::Float;

use crate::layers::DropoutGeometry;

/// `y = x * mask`; the mask already holds 0 or `1 / (1 - p)`.
pub fn dropout_forward<T: Float>(g: &DropoutGeometry, n: usize, mask: &[T], x: &[T], y: &mut [T]) {
    for i in 0..n * g.len {
        y[i] = x[i] * mask[i];
    }
}

pub fn dropout_backward<T: Float>(
    g: &DropoutGeometry,
    n: usize,
    mask: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    for i in 0..n * g.len {
        dx[i] = dy[i] * mask[i];
    }
}
