//! Fully connected layers as three matrix products over the whole batch; the
//! products themselves are spread over the threads.

use super::gemm::{Layout, matmul};
use crate::layers::LinearGeometry;

pub fn forward(g: &LinearGeometry, n: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let threads = rayon::current_num_threads();
    let y = &mut y[..n * g.outputs];
    // y[n x out] = x[n x in] * W^T, W stored [out x in].
    matmul(
        n,
        g.outputs,
        g.inputs,
        x,
        Layout::Normal,
        w,
        Layout::Transposed,
        y,
        false,
        threads,
    );
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
) {
    let threads = rayon::current_num_threads();
    let dy = &dy[..n * g.outputs];
    // dW[out x in] += dY^T * x, dY stored [n x out].
    matmul(
        g.outputs,
        g.inputs,
        n,
        dy,
        Layout::Transposed,
        x,
        Layout::Normal,
        dw,
        true,
        threads,
    );
    for row in dy.chunks_exact(g.outputs) {
        db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
    if let Some(dx) = dx {
        // dX[n x in] = dY * W.
        matmul(
            n,
            g.inputs,
            g.outputs,
            dy,
            Layout::Normal,
            w,
            Layout::Normal,
            dx,
            false,
            threads,
        );
    }
}
