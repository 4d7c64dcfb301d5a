//! Element-wise passes (activations, dropout, the SGD update), split into large
//! blocks across threads and vectorised within each block.

use rayon::prelude::*;

use super::simd;

/// Values per parallel block: big enough to amortise scheduling, small enough to balance.
const BLOCK: usize = 1 << 16;

pub fn relu_forward(x: &mut [f32]) {
    x.par_chunks_mut(BLOCK).for_each(|x| {
        simd::dispatch(
            #[inline(always)]
            || x.iter_mut().for_each(|v| *v = v.max(0.0)),
        )
    });
}

/// `max(0, v)` for every value, on this thread: for a convolution's output
/// while it is still in cache (see `conv::forward`).
pub fn rectify(values: &mut [f32]) {
    simd::dispatch(
        #[inline(always)]
        || values.iter_mut().for_each(|v| *v = v.max(0.0)),
    )
}

/// The sum of `values`, on this thread, in 16 interleaved partial sums (so
/// that it vectorises; a plain `sum()` adds one value at a time, in order).
pub fn sum(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    simd::dispatch(
        #[inline(always)]
        || {
            let mut partial = [0.0f32; LANES];
            let mut runs = values.chunks_exact(LANES);
            for run in &mut runs {
                partial.iter_mut().zip(run).for_each(|(p, &v)| *p += v);
            }
            partial.iter().sum::<f32>() + runs.remainder().iter().sum::<f32>()
        },
    )
}

pub fn relu_backward(y: &[f32], d: &mut [f32]) {
    d.par_chunks_mut(BLOCK)
        .zip(y.par_chunks(BLOCK))
        .for_each(|(d, y)| {
            simd::dispatch(
                #[inline(always)]
                || {
                    d.iter_mut().zip(y).for_each(|(d, &y)| {
                        if y <= 0.0 {
                            *d = 0.0
                        }
                    })
                },
            )
        });
}

pub fn tanh_forward(x: &mut [f32]) {
    x.par_chunks_mut(BLOCK)
        .for_each(|x| x.iter_mut().for_each(|v| *v = v.tanh()));
}

pub fn tanh_backward(y: &[f32], d: &mut [f32]) {
    d.par_chunks_mut(BLOCK)
        .zip(y.par_chunks(BLOCK))
        .for_each(|(d, y)| {
            simd::dispatch(
                #[inline(always)]
                || d.iter_mut().zip(y).for_each(|(d, &y)| *d *= 1.0 - y * y),
            )
        });
}

/// `out = a * b`, element by element (dropout forward and backward).
pub fn multiply(a: &[f32], b: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(BLOCK)
        .zip(a.par_chunks(BLOCK).zip(b.par_chunks(BLOCK)))
        .for_each(|(out, (a, b))| {
            simd::dispatch(
                #[inline(always)]
                || {
                    out.iter_mut()
                        .zip(a.iter().zip(b))
                        .for_each(|(o, (&a, &b))| *o = a * b)
                },
            )
        });
}

/// The paper's update: `v <- momentum*v - decay*lr*w - lr*dw; w <- w + v`.
pub fn sgd_update(w: &mut [f32], dw: &[f32], v: &mut [f32], lr: f32, momentum: f32, decay: f32) {
    let decay_lr = decay * lr;
    w.par_chunks_mut(BLOCK)
        .zip(dw.par_chunks(BLOCK).zip(v.par_chunks_mut(BLOCK)))
        .for_each(|(w, (dw, v))| {
            simd::dispatch(
                #[inline(always)]
                || {
                    for i in 0..w.len() {
                        v[i] = momentum * v[i] - decay_lr * w[i] - lr * dw[i];
                        w[i] += v[i];
                    }
                },
            )
        });
}
