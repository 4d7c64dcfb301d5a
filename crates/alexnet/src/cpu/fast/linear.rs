//! Fully connected layers as three matrix products over the whole batch; the
//! products themselves are spread over the threads.
//!
//! The `gemm` crate is up to twice as fast when the long dimension (the layer's
//! outputs or inputs) is the destination's contiguous one, so the products are
//! computed transposed into scratch memory and transposed back: the transposes
//! move a few MB, the products hundreds of MFLOP.

use super::gemm::{Layout, matmul};
use super::scratch::with_scratch;
use crate::layers::LinearGeometry;
use crate::precision::Products;

/// `dst[c][r] = src[r][c]` for a `rows x cols` matrix.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

pub fn forward(
    g: &LinearGeometry,
    n: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    products: Products,
) {
    let products = products.for_linear_batch(n);
    let threads = rayon::current_num_threads();
    let y = &mut y[..n * g.outputs];
    with_scratch(n * g.outputs, |yt| {
        // y^T[out x n] = W[out x in] * x^T, x stored [n x in].
        matmul(
            g.outputs,
            n,
            g.inputs,
            w,
            Layout::Normal,
            x,
            Layout::Transposed,
            yt,
            false,
            threads,
            products,
        );
        transpose(yt, g.outputs, n, y);
    });
    for row in y.chunks_exact_mut(g.outputs) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

pub fn backward(
    g: &LinearGeometry,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    products: Products,
) {
    let products = products.for_linear_batch(n);
    let threads = rayon::current_num_threads();
    let dy = &dy[..n * g.outputs];
    for row in dy.chunks_exact(g.outputs) {
        db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
    with_scratch(n * (g.outputs + g.inputs), |scratch| {
        let (dyt, dxt) = scratch.split_at_mut(n * g.outputs);
        transpose(dy, n, g.outputs, dyt);
        // dW[out x in] += dY^T[out x n] * x[n x in].
        matmul(
            g.outputs,
            g.inputs,
            n,
            dyt,
            Layout::Normal,
            x,
            Layout::Normal,
            dw,
            true,
            threads,
            products,
        );
        if let Some(dx) = dx {
            // dX^T[in x n] = W^T[in x out] * dY^T[out x n], W stored [out x in].
            matmul(
                g.inputs,
                n,
                g.outputs,
                w,
                Layout::Transposed,
                dyt,
                Layout::Normal,
                dxt,
                false,
                threads,
                products,
            );
            transpose(dxt, g.inputs, n, &mut dx[..n * g.inputs]);
        }
    });
}
