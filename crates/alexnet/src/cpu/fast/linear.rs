//! Fully connected layers as three matrix products over the whole batch; the
//! products themselves are spread over the threads.
//!
//! The `gemm` crate is up to twice as fast when the long dimension (the layer's
//! outputs or inputs) is the destination's contiguous one, so the products are
//! computed transposed into scratch memory and transposed back: the transposes
//! move a few MB, the products hundreds of MFLOP.

use rayon::prelude::*;

use super::gemm::{Layout, Products, matmul};
use super::scratch::with_scratch;
use super::simd;
use crate::layers::LinearGeometry;

/// `dst[c][r] = src[r][c]` for a `rows x cols` matrix.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
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

/// `y = x W^T + b` for a few images (fewer than `BF16_MIN_BATCH`: bf16 mode's
/// inference at small batches) with the weights in bf16 (`w_bf16[out][in]`,
/// bf16 bits) and the inputs, sums and outputs in f32. A product at batch 1
/// reads every weight once per image, so it runs at the speed of memory: bf16
/// weights halve the bytes. Each weight row is read once for all the images;
/// the rows are shared among the threads.
pub fn forward_bf16_weights(
    g: &LinearGeometry,
    n: usize,
    x: &[f32],
    w_bf16: &[u16],
    b: &[f32],
    y: &mut [f32],
) {
    let threads = rayon::current_num_threads();
    // Several tasks per thread, so that an uneven split costs little.
    let rows_per_task = g.outputs.div_ceil(4 * threads).max(1);
    let y = &mut y[..n * g.outputs];
    with_scratch(n * g.outputs, |yt| {
        // yt[out][image], transposed into y below.
        yt.par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, yt)| {
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (r, sums) in yt.chunks_exact_mut(n).enumerate() {
                            let row = &w_bf16[(task * rows_per_task + r) * g.inputs..][..g.inputs];
                            for (image, sum) in sums.iter_mut().enumerate() {
                                *sum = dot_bf16_f32(row, &x[image * g.inputs..][..g.inputs]);
                            }
                        }
                    },
                )
            });
        transpose(yt, g.outputs, n, y);
    });
    for row in y.chunks_exact_mut(g.outputs) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

/// `sum w_k x_k` with `w` as bf16 bits, in 16 running sums (so the compiler
/// vectorises it) added at the end.
#[inline(always)]
fn dot_bf16_f32(w: &[u16], x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let widen = |bits: u16| f32::from_bits((bits as u32) << 16);
    let mut sums = [0.0f32; LANES];
    let (w_runs, x_runs) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
    let (w_rest, x_rest) = (w_runs.remainder(), x_runs.remainder());
    for (w, x) in w_runs.zip(x_runs) {
        for lane in 0..LANES {
            sums[lane] += widen(w[lane]) * x[lane];
        }
    }
    let tail: f32 = w_rest.iter().zip(x_rest).map(|(&w, x)| widen(w) * x).sum();
    sums.iter().sum::<f32>() + tail
}
