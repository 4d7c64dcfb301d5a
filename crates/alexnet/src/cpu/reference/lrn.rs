//! Local response normalisation across channels (Section 3.3).

use num_traits::Float;

use super::cast;
use crate::layers::LrnGeometry;

/// The normaliser `s_c = k + alpha * sum over window(c) of a_j^2` at one pixel.
pub(super) fn lrn_scale<T: Float>(g: &LrnGeometry, a: &[T], plane: usize, c: usize, p: usize) -> T {
    let mut sum = T::zero();
    for j in g.window(c) {
        let v = a[j * plane + p];
        sum = sum + v * v;
    }
    cast::<T>(g.k) + cast::<T>(g.alpha) * sum
}

pub fn lrn_forward<T: Float>(g: &LrnGeometry, n: usize, x: &[T], y: &mut [T]) {
    let plane = g.shape.height * g.shape.width;
    let beta = cast::<T>(g.beta);
    for img in 0..n {
        let a = &x[img * g.shape.len()..][..g.shape.len()];
        let b = &mut y[img * g.shape.len()..][..g.shape.len()];
        for c in 0..g.shape.channels {
            for p in 0..plane {
                b[c * plane + p] = a[c * plane + p] * lrn_scale(g, a, plane, c, p).powf(-beta);
            }
        }
    }
}

/// `da_m = dy_m s_m^-beta - 2 alpha beta a_m sum_{i : m in window(i)} dy_i a_i s_i^(-beta-1)`.
/// Windows are symmetric, so `m in window(i)` exactly when `i in window(m)`.
pub fn lrn_backward<T: Float>(g: &LrnGeometry, n: usize, x: &[T], dy: &[T], dx: &mut [T]) {
    let plane = g.shape.height * g.shape.width;
    let beta = cast::<T>(g.beta);
    let two_alpha_beta = cast::<T>(2.0) * cast::<T>(g.alpha) * beta;
    for img in 0..n {
        let a = &x[img * g.shape.len()..][..g.shape.len()];
        let dy = &dy[img * g.shape.len()..][..g.shape.len()];
        let dx = &mut dx[img * g.shape.len()..][..g.shape.len()];
        for m in 0..g.shape.channels {
            for p in 0..plane {
                let s_m = lrn_scale(g, a, plane, m, p);
                let mut cross = T::zero();
                for i in g.window(m) {
                    let s_i = lrn_scale(g, a, plane, i, p);
                    cross =
                        cross + dy[i * plane + p] * a[i * plane + p] * s_i.powf(-beta - T::one());
                }
                dx[m * plane + p] =
                    dy[m * plane + p] * s_m.powf(-beta) - two_alpha_beta * a[m * plane + p] * cross;
            }
        }
    }
}
