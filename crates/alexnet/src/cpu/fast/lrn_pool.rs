//! Local response normalisation followed by max pooling in one pass (the
//! paper's conv1 and conv2 blocks), one image per thread (or, with fewer images
//! than threads and nothing to record, each image's channels shared among them).
//!
//! The forward pass normalises one channel plane at a time into a plane of
//! scratch and pools it straight away, so the LRN's output (as large as the
//! convolution's) is never written to memory, nor read back by the pooling.
//! Training passes record each window's winning position (`ky * size + kx`) in
//! a byte of the record (windows of at most 16x16, which [`crate::fusion`] sees to); the backward pass sends the pooled gradient
//! there, in a per-thread image of scratch, and runs the LRN's backward pass on it.

use rayon::prelude::*;

use super::scratch::{with_scratch, with_staging};
use super::{lrn, pool, simd};
use crate::layers::{LrnGeometry, PoolGeometry};

/// Bytes per image of a record: one per pooled output.
pub fn record_len(pool: &PoolGeometry) -> usize {
    pool.output.len()
}

pub fn forward(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[f32],
    y: &mut [f32],
    record: Option<&mut [u8]>,
) {
    let (il, ol) = (lrn.shape.len(), pool.output.len());
    let threads = rayon::current_num_threads();
    if n < threads && record.is_none() {
        // Too few images to keep every thread busy (the batch-1 latency): share
        // each image's channels among the threads instead.
        let out_plane = pool.output.height * pool.output.width;
        let per_task = lrn.shape.channels.div_ceil(threads);
        for (x, y) in x[..n * il]
            .chunks_exact(il)
            .zip(y[..n * ol].chunks_exact_mut(ol))
        {
            y.par_chunks_mut(per_task * out_plane)
                .enumerate()
                .for_each(|(task, y)| {
                    let first = task * per_task;
                    let channels = first..first + y.len() / out_plane;
                    forward_channels(lrn, pool, x, channels, y, None);
                });
        }
        return;
    }
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
    record: Option<&mut [u8]>,
) {
    forward_channels(lrn, pool, a, 0..lrn.shape.channels, y, record);
}

/// The channels `channels` of one image `a`: their pooled outputs into `y` (and
/// their records into `record`), which hold those channels only.
fn forward_channels(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    a: &[f32],
    channels: std::ops::Range<usize>,
    y: &mut [f32],
    mut record: Option<&mut [u8]>,
) {
    let plane = lrn.shape.height * lrn.shape.width;
    let out_plane = pool.output.height * pool.output.width;
    let beta = lrn.beta;
    let first = channels.start;
    with_scratch(plane + pool::separable_scratch_len(pool), |scratch| {
        let (z, pool_scratch) = scratch.split_at_mut(plane);
        for c in channels {
            // z = a_c * s_c^-beta: channel c of the LRN's output.
            lrn::normaliser(lrn, a, c, z);
            let ac = &a[c * plane..][..plane];
            if beta == 0.75 {
                // The paper's beta, as its own loop so that it vectorises (see `pow_neg_beta`).
                simd::dispatch(
                    #[inline(always)]
                    || {
                        z.iter_mut()
                            .zip(ac)
                            .for_each(|(z, &a)| *z = a * lrn::pow_neg_three_quarters(*z))
                    },
                );
            } else {
                z.iter_mut()
                    .zip(ac)
                    .for_each(|(z, &a)| *z = a * z.powf(-beta));
            }
            let yc = &mut y[(c - first) * out_plane..][..out_plane];
            match record.as_deref_mut() {
                None => pool::max_plane_separable(pool, z, yc, pool_scratch),
                Some(record) => {
                    let rc = &mut record[(c - first) * out_plane..][..out_plane];
                    record_plane(pool, z, yc, rc);
                }
            }
        }
    });
}

/// Max pooling of one plane that also records each window's winning position.
fn record_plane(g: &PoolGeometry, z: &[f32], y: &mut [f32], record: &mut [u8]) {
    let (iw, ow) = (g.input.width, g.output.width);
    for oy in 0..g.output.height {
        for ox in 0..ow {
            let best = pool::argmax(g, z, oy, ox);
            let (ky, kx) = (best / iw - oy * g.stride, best % iw - ox * g.stride);
            y[oy * ow + ox] = z[best];
            // Below 256: windows are at most 16x16.
            record[oy * ow + ox] = (ky * g.size + kx) as u8;
        }
    }
}

pub fn backward(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[f32],
    record: &[u8],
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
        .zip(record[..n * record_len(pool)].par_chunks_exact(record_len(pool)))
        .zip(dy[..n * ol].par_chunks_exact(ol))
        .zip(dx[..n * il].par_chunks_exact_mut(il))
        .for_each(|(((a, record), dy), dx)| {
            with_staging(il, |dz| {
                // The gradient of the LRN's output: each window's to its winner.
                dz.fill(0.0);
                for ((dzp, rp), dyp) in dz
                    .chunks_exact_mut(ip)
                    .zip(record[..ol].chunks_exact(op))
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
