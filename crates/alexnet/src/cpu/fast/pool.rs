//! Max and average pooling, one image per thread. Max pooling's backward finds
//! each window's first largest input again rather than storing indices.

use rayon::prelude::*;

use super::simd;
use crate::layers::PoolGeometry;

/// Offset within the input plane of the first largest value of a window.
///
/// Written with selects rather than branches, since on real activations the
/// comparisons are unpredictable.
#[inline(always)]
pub(super) fn argmax(g: &PoolGeometry, plane: &[f32], oy: usize, ox: usize) -> usize {
    let origin = oy * g.stride * g.input.width + ox * g.stride;
    let mut best = origin;
    let mut best_value = plane[origin];
    for ky in 0..g.size {
        let row = origin + ky * g.input.width;
        for (pos, &value) in plane[row..row + g.size].iter().enumerate() {
            let larger = value > best_value;
            best = if larger { row + pos } else { best };
            best_value = if larger { value } else { best_value };
        }
    }
    best
}

fn planes(g: &PoolGeometry) -> (usize, usize) {
    (
        g.input.height * g.input.width,
        g.output.height * g.output.width,
    )
}

/// Output rows at most this wide take the row-at-a-time forward kernel.
const MAX_ROW: usize = 512;

/// One output row of max pooling with stride `S` known at compile time: the
/// window positions are visited in the reference's row-major order, each for
/// the whole row of windows at once (loads of stride `S` that the compiler
/// vectorises), keeping the first largest value.
#[inline(always)]
fn max_row<const S: usize>(g: &PoolGeometry, plane: &[f32], oy: usize, best: &mut [f32]) {
    let (iw, ow) = (g.input.width, best.len());
    let top = oy * S * iw;
    for ky in 0..g.size {
        for kx in 0..g.size {
            let start = top + ky * iw + kx;
            let row = &plane[start..start + S * (ow - 1) + 1];
            if ky == 0 && kx == 0 {
                for ox in 0..ow {
                    best[ox] = row[ox * S];
                }
            } else {
                for ox in 0..ow {
                    let value = row[ox * S];
                    best[ox] = if value > best[ox] { value } else { best[ox] };
                }
            }
        }
    }
}

/// Whether the row-at-a-time kernel applies: strides 1 to 3 (compiled separately).
fn rows_apply(g: &PoolGeometry) -> bool {
    (1..=3).contains(&g.stride) && g.output.width <= MAX_ROW
}

pub fn max_forward(g: &PoolGeometry, n: usize, x: &[f32], y: &mut [f32]) {
    let (ip, op) = planes(g);
    let (il, ol) = (g.input.len(), g.output.len());
    x[..n * il]
        .par_chunks_exact(il)
        .zip(y[..n * ol].par_chunks_exact_mut(ol))
        .for_each(|(x, y)| {
            for (xp, yp) in x.chunks_exact(ip).zip(y.chunks_exact_mut(op)) {
                max_plane(g, xp, yp);
            }
        });
}

/// Max pooling of one plane.
pub(super) fn max_plane(g: &PoolGeometry, xp: &[f32], yp: &mut [f32]) {
    let ow = g.output.width;
    for oy in 0..g.output.height {
        let out = &mut yp[oy * ow..][..ow];
        // Compiled for baseline x86-64 (SSE2): the same loops compiled for
        // AVX-512 through `simd::dispatch` measured slower (the paper's
        // three max-pool layers 13 -> 22 ms at batch 64, BENCHMARKS.md).
        match g.stride {
            1 if rows_apply(g) => max_row::<1>(g, xp, oy, out),
            2 if rows_apply(g) => max_row::<2>(g, xp, oy, out),
            3 if rows_apply(g) => max_row::<3>(g, xp, oy, out),
            _ => {
                for (ox, value) in out.iter_mut().enumerate() {
                    *value = xp[argmax(g, xp, oy, ox)];
                }
            }
        }
    }
}

/// Scratch values [`max_plane_separable`] needs for one plane.
pub(super) fn separable_scratch_len(g: &PoolGeometry) -> usize {
    let phase_len = g.input.width.div_ceil(g.stride);
    g.stride * phase_len + g.input.height * g.output.width
}

/// Max pooling of one plane as two passes of contiguous maxima, vectorised:
/// along each row (its values first split into the stride's phases, so that
/// tap `kx` of output `ox` is `phase[kx % s][ox + kx / s]`), then down the
/// columns of those row maxima. For a plane already in cache (the fused LRN's
/// output); values equal `max_plane`'s, since a maximum does not depend on the
/// order it is taken in.
pub(super) fn max_plane_separable(
    g: &PoolGeometry,
    xp: &[f32],
    yp: &mut [f32],
    scratch: &mut [f32],
) {
    let (iw, ow, s) = (g.input.width, g.output.width, g.stride);
    let phase_len = iw.div_ceil(s);
    let (phases, rows) = scratch.split_at_mut(s * phase_len);
    let rows = &mut rows[..g.input.height * ow];
    simd::dispatch(
        #[inline(always)]
        || {
            for (row, h) in xp.chunks_exact(iw).zip(rows.chunks_exact_mut(ow)) {
                for (q, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
                    for (j, value) in phase.iter_mut().enumerate() {
                        *value = row.get(j * s + q).copied().unwrap_or(f32::NEG_INFINITY);
                    }
                }
                for kx in 0..g.size {
                    let tap = &phases[(kx % s) * phase_len + kx / s..][..ow];
                    if kx == 0 {
                        h.copy_from_slice(tap);
                    } else {
                        h.iter_mut()
                            .zip(tap)
                            .for_each(|(h, &v)| *h = if v > *h { v } else { *h });
                    }
                }
            }
            for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
                for ky in 0..g.size {
                    let h = &rows[(oy * s + ky) * ow..][..ow];
                    if ky == 0 {
                        out.copy_from_slice(h);
                    } else {
                        out.iter_mut()
                            .zip(h)
                            .for_each(|(o, &v)| *o = if v > *o { v } else { *o });
                    }
                }
            }
        },
    );
}

/// Recomputes each window's first largest input (the reference's choice among
/// ties) and adds the window's gradient there.
pub fn max_backward(g: &PoolGeometry, n: usize, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (ip, op) = planes(g);
    let (il, ol) = (g.input.len(), g.output.len());
    x[..n * il]
        .par_chunks_exact(il)
        .zip(dy[..n * ol].par_chunks_exact(ol))
        .zip(dx[..n * il].par_chunks_exact_mut(il))
        .for_each(|((x, dy), dx)| {
            dx.fill(0.0);
            for ((xp, dyp), dxp) in x
                .chunks_exact(ip)
                .zip(dy.chunks_exact(op))
                .zip(dx.chunks_exact_mut(ip))
            {
                for oy in 0..g.output.height {
                    for ox in 0..g.output.width {
                        dxp[argmax(g, xp, oy, ox)] += dyp[oy * g.output.width + ox];
                    }
                }
            }
        });
}

pub fn avg_forward(g: &PoolGeometry, n: usize, x: &[f32], y: &mut [f32]) {
    let (ip, op) = planes(g);
    let (il, ol) = (g.input.len(), g.output.len());
    let scale = 1.0 / (g.size * g.size) as f32;
    x[..n * il]
        .par_chunks_exact(il)
        .zip(y[..n * ol].par_chunks_exact_mut(ol))
        .for_each(|(x, y)| {
            for (xp, yp) in x.chunks_exact(ip).zip(y.chunks_exact_mut(op)) {
                for oy in 0..g.output.height {
                    for ox in 0..g.output.width {
                        let origin = oy * g.stride * g.input.width + ox * g.stride;
                        let mut sum = 0.0;
                        for ky in 0..g.size {
                            let row = origin + ky * g.input.width;
                            sum += xp[row..row + g.size].iter().sum::<f32>();
                        }
                        yp[oy * g.output.width + ox] = sum * scale;
                    }
                }
            }
        });
}

pub fn avg_backward(g: &PoolGeometry, n: usize, dy: &[f32], dx: &mut [f32]) {
    let (ip, op) = planes(g);
    let (il, ol) = (g.input.len(), g.output.len());
    let scale = 1.0 / (g.size * g.size) as f32;
    dy[..n * ol]
        .par_chunks_exact(ol)
        .zip(dx[..n * il].par_chunks_exact_mut(il))
        .for_each(|(dy, dx)| {
            dx.fill(0.0);
            for (dyp, dxp) in dy.chunks_exact(op).zip(dx.chunks_exact_mut(ip)) {
                for oy in 0..g.output.height {
                    for ox in 0..g.output.width {
                        let share = dyp[oy * g.output.width + ox] * scale;
                        let origin = oy * g.stride * g.input.width + ox * g.stride;
                        for ky in 0..g.size {
                            let row = origin + ky * g.input.width;
                            dxp[row..row + g.size].iter_mut().for_each(|d| *d += share);
                        }
                    }
                }
            }
        });
}
