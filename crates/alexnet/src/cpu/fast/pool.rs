//! Max and average pooling, one image per thread. Max pooling's backward finds
//! each window's first largest input again rather than storing indices.

use rayon::prelude::*;

use crate::layers::PoolGeometry;

/// Offset within the input plane of the first largest value of a window.
#[inline]
fn argmax(g: &PoolGeometry, plane: &[f32], oy: usize, ox: usize) -> usize {
    let origin = oy * g.stride * g.input.width + ox * g.stride;
    let mut best = origin;
    let mut best_value = plane[origin];
    for ky in 0..g.size {
        let row = origin + ky * g.input.width;
        for pos in row..row + g.size {
            if plane[pos] > best_value {
                best = pos;
                best_value = plane[pos];
            }
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

pub fn max_forward(g: &PoolGeometry, n: usize, x: &[f32], y: &mut [f32]) {
    let (ip, op) = planes(g);
    let (il, ol) = (g.input.len(), g.output.len());
    x[..n * il]
        .par_chunks_exact(il)
        .zip(y[..n * ol].par_chunks_exact_mut(ol))
        .for_each(|(x, y)| {
            for (xp, yp) in x.chunks_exact(ip).zip(y.chunks_exact_mut(op)) {
                for oy in 0..g.output.height {
                    for ox in 0..g.output.width {
                        yp[oy * g.output.width + ox] = xp[argmax(g, xp, oy, ox)];
                    }
                }
            }
        });
}

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
