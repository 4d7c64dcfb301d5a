//! Local response normalisation, one image per thread, vectorised across the
//! pixels of a channel plane. The backward pass recomputes the normaliser from
//! the input instead of storing it, which saves a buffer as large as the layer.

use rayon::prelude::*;

use super::scratch::with_scratch;
use super::simd;
use crate::layers::LrnGeometry;

/// `s^-beta`, with a fast exact form for the paper's beta = 0.75: s^-3/4 = r * sqrt(r), r = 1/sqrt(s).
#[inline(always)]
pub(super) fn pow_neg_beta(s: f32, beta: f32) -> f32 {
    if beta == 0.75 {
        pow_neg_three_quarters(s)
    } else {
        s.powf(-beta)
    }
}

/// `s^-3/4` for the paper's beta.
#[inline(always)]
pub(super) fn pow_neg_three_quarters(s: f32) -> f32 {
    let r = 1.0 / s.sqrt();
    r * r.sqrt()
}

/// Writes `s_c = k + alpha * sum over window(c) of a^2` for every channel of one image.
fn normalisers(g: &LrnGeometry, a: &[f32], s: &mut [f32]) {
    let plane = g.shape.height * g.shape.width;
    for c in 0..g.shape.channels {
        normaliser(g, a, c, &mut s[c * plane..][..plane]);
    }
}

/// Writes `s_c` of channel `c` of one image into `sc` (one plane).
pub(super) fn normaliser(g: &LrnGeometry, a: &[f32], c: usize, sc: &mut [f32]) {
    let plane = sc.len();
    sc.fill(0.0);
    for j in g.window(c) {
        let aj = &a[j * plane..][..plane];
        simd::dispatch(
            #[inline(always)]
            || sc.iter_mut().zip(aj).for_each(|(s, &v)| *s += v * v),
        );
    }
    let (k, alpha) = (g.k, g.alpha);
    simd::dispatch(
        #[inline(always)]
        || sc.iter_mut().for_each(|s| *s = k + alpha * *s),
    );
}

pub fn forward(g: &LrnGeometry, n: usize, x: &[f32], y: &mut [f32]) {
    let len = g.shape.len();
    x[..n * len]
        .par_chunks_exact(len)
        .zip(y[..n * len].par_chunks_exact_mut(len))
        .for_each(|(a, b)| {
            with_scratch(len, |s| {
                normalisers(g, a, s);
                let beta = g.beta;
                simd::dispatch(
                    #[inline(always)]
                    || {
                        b.iter_mut()
                            .zip(a.iter().zip(s.iter()))
                            .for_each(|(b, (&a, &s))| *b = a * pow_neg_beta(s, beta))
                    },
                );
            })
        });
}

/// `da_m = dy_m s_m^-beta - 2 alpha beta a_m sum_{i in window(m)} dy_i a_i s_i^(-beta-1)`.
pub fn backward(g: &LrnGeometry, n: usize, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let len = g.shape.len();
    x[..n * len]
        .par_chunks_exact(len)
        .zip(dy[..n * len].par_chunks_exact(len))
        .zip(dx[..n * len].par_chunks_exact_mut(len))
        .for_each(|((a, dy), dx)| backward_image(g, a, dy, dx));
}

/// The backward pass of one image.
pub(super) fn backward_image(g: &LrnGeometry, a: &[f32], dy: &[f32], dx: &mut [f32]) {
    let len = g.shape.len();
    let plane = g.shape.height * g.shape.width;
    let beta = g.beta;
    let two_alpha_beta = 2.0 * g.alpha * g.beta;
    with_scratch(2 * len, |scratch| {
        let (s, u) = scratch.split_at_mut(len);
        normalisers(g, a, s);
        // u_i = dy_i a_i s_i^(-beta-1); s becomes s^-beta, which the first term needs.
        simd::dispatch(
            #[inline(always)]
            || {
                for i in 0..len {
                    let p = pow_neg_beta(s[i], beta);
                    u[i] = dy[i] * a[i] * p / s[i];
                    s[i] = p;
                }
            },
        );
        for m in 0..g.shape.channels {
            let dxm = &mut dx[m * plane..][..plane];
            let (am, dym, sm) = (
                &a[m * plane..][..plane],
                &dy[m * plane..][..plane],
                &s[m * plane..][..plane],
            );
            dxm.fill(0.0);
            for i in g.window(m) {
                let ui = &u[i * plane..][..plane];
                simd::dispatch(
                    #[inline(always)]
                    || dxm.iter_mut().zip(ui).for_each(|(d, &u)| *d += u),
                );
            }
            simd::dispatch(
                #[inline(always)]
                || {
                    for p in 0..plane {
                        dxm[p] = dym[p] * sm[p] - two_alpha_beta * am[p] * dxm[p];
                    }
                },
            );
        }
    })
}
