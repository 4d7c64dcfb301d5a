//! Local response normalisation followed by max pooling in one pass (the
//! paper's conv1 and conv2 blocks), one image per thread.
//!
//! The forward pass normalises one channel plane at a time into a plane of
//! scratch and pools it straight away, so the LRN's output (as large as the
//! convolution's) is never written to memory, nor read back by the pooling.
//! Training passes record each window's winning position (`ky * size + kx`, as
//! an `f32`); the backward pass sends the pooled gradient there, in a per-thread
//! image of scratch, and runs the LRN's backward pass on it.

use rayon::prelude::*;

use super::scratch::{with_scratch, with_staging};
use super::{lrn, pool, simd};
use crate::layers::{LrnGeometry, PoolGeometry};

pub fn forward(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[f32],
    y: &mut [f32],
    record: Option<&mut [f32]>,
) {
    let (il, ol) = (lrn.shape.len(), pool.output.len());
    let images = x[..n * il]
        .par_chunks_exact(il)
        .zip(y[..n * ol].par_chunks_exact_mut(ol));
    match record {
        Some(record) => images
            .zip(record[..n * ol].par_chunks_exact_mut(ol))
            .for_each(|((x, y), record)| forward_image(lrn, pool, x, y, Some(record))),
        None => images.for_each(|(x, y)| forward_image(lrn, pool, x, y, None)),
    }
}

fn forward_image(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    a: &[f32],
    y: &mut [f32],
    mut record: Option<&mut [f32]>,
) {
    let plane = lrn.shape.height * lrn.shape.width;
    let out_plane = pool.output.height * pool.output.width;
    let beta = lrn.beta;
    with_scratch(plane, |z| {
        for c in 0..lrn.shape.channels {
            // z = a_c * s_c^-beta: channel c of the LRN's output.
            lrn::normaliser(lrn, a, c, z);
            let ac = &a[c * plane..][..plane];
            simd::dispatch(
                #[inline(always)]
                || {
                    z.iter_mut()
                        .zip(ac)
                        .for_each(|(z, &a)| *z = a * lrn::pow_neg_beta(*z, beta))
                },
            );
            let yc = &mut y[c * out_plane..][..out_plane];
            match record.as_deref_mut() {
                None => pool::max_plane(pool, z, yc),
                Some(record) => {
                    let rc = &mut record[c * out_plane..][..out_plane];
                    record_plane(pool, z, yc, rc);
                }
            }
        }
    });
}

/// Max pooling of one plane that also records each window's winning position.
fn record_plane(g: &PoolGeometry, z: &[f32], y: &mut [f32], record: &mut [f32]) {
    let (iw, ow) = (g.input.width, g.output.width);
    for oy in 0..g.output.height {
        for ox in 0..ow {
            let best = pool::argmax(g, z, oy, ox);
            let (ky, kx) = (best / iw - oy * g.stride, best % iw - ox * g.stride);
            y[oy * ow + ox] = z[best];
            record[oy * ow + ox] = (ky * g.size + kx) as f32;
        }
    }
}

pub fn backward(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[f32],
    record: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) {
    let (il, ol) = (lrn.shape.len(), pool.output.len());
    let (ip, op) = (
        pool.input.height * pool.input.width,
        pool.output.height * pool.output.width,
    );
    let (iw, ow) = (pool.input.width, pool.output.width);
    x[..n * il]
        .par_chunks_exact(il)
        .zip(record[..n * ol].par_chunks_exact(ol))
        .zip(dy[..n * ol].par_chunks_exact(ol))
        .zip(dx[..n * il].par_chunks_exact_mut(il))
        .for_each(|(((a, record), dy), dx)| {
            with_staging(il, |dz| {
                // The gradient of the LRN's output: each window's to its winner.
                dz.fill(0.0);
                for ((dzp, rp), dyp) in dz
                    .chunks_exact_mut(ip)
                    .zip(record.chunks_exact(op))
                    .zip(dy.chunks_exact(op))
                {
                    for oy in 0..pool.output.height {
                        for ox in 0..ow {
                            let within = rp[oy * ow + ox] as usize;
                            let (ky, kx) = (within / pool.size, within % pool.size);
                            let pos = (oy * pool.stride + ky) * iw + ox * pool.stride + kx;
                            dzp[pos] += dyp[oy * ow + ox];
                        }
                    }
                }
                lrn::backward_image(lrn, a, dz, dx);
            })
        });
}
