//! 3x3 convolutions with stride 1 and padding 1 (conv3-5 of the paper) by
//! Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of outputs comes from a 4x4 block of inputs. Both the input
//! block and the 3x3 kernel are transformed into 4x4 "Winograd domain" blocks,
//! where the convolution becomes 16 element-wise products; summed over input
//! channels these are 16 independent matrix products
//! `M[xi] (out x tiles) = U[xi] (out x in) * V[xi] (in x tiles)`. That is 16
//! multiplies per 2x2 outputs instead of 36: 2.25x fewer (1.94x on 13x13 planes,
//! whose last row and column of tiles are half outside). The transforms use only
//! 0, +-1 and +-1/2, so f32 rounding stays that of a direct sum to within a few units.
//!
//! The input gradient of such a convolution is itself one (on the output
//! gradient, with the kernels rotated by 180 degrees and the channel roles
//! swapped), so it goes through the same code. Used for f32 products only: bf16
//! operands after a transform would lose more than bf16 arithmetic gains.

use std::sync::Mutex;

use rayon::prelude::*;

use super::gemm::{Layout, Products, matmul};
use super::scratch::with_scratch;
use crate::layers::{ConvGeometry, Shape};

/// Positions in a 4x4 Winograd-domain block.
const XI: usize = 16;
/// Outputs per tile side.
const OUT: usize = 2;
/// Aim for this many tiles side by side in one product (several images' worth on
/// 13x13 planes), so that each product is long enough to run at full speed.
const TARGET_TILES: usize = 384;

/// Transformed kernels, and the rotated kernels of the input gradient: kept
/// between calls so that they are allocated once. (Not the per-thread scratch,
/// which the tiles of each thread use inside.)
static TRANSFORMED: Mutex<Vec<f32>> = Mutex::new(Vec::new());
static ROTATED: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// `buffer` grown to at least `len` values, the first `len` returned.
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// Whether a convolution can take this path: 3x3, stride 1, padding 1.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.pad == 1
}

/// `U = G k G^T` for one 3x3 kernel `k`, with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
fn transform_kernel(k: &[f32; 9]) -> [f32; XI] {
    // Columns first: t = G k (4x3).
    let mut t = [[0.0f32; 3]; 4];
    for c in 0..3 {
        let (k0, k1, k2) = (k[c], k[3 + c], k[6 + c]);
        t[0][c] = k0;
        t[1][c] = 0.5 * (k0 + k1 + k2);
        t[2][c] = 0.5 * (k0 - k1 + k2);
        t[3][c] = k2;
    }
    // Then rows: U = t G^T (4x4).
    let mut u = [0.0f32; XI];
    for r in 0..4 {
        let (t0, t1, t2) = (t[r][0], t[r][1], t[r][2]);
        u[r * 4] = t0;
        u[r * 4 + 1] = 0.5 * (t0 + t1 + t2);
        u[r * 4 + 2] = 0.5 * (t0 - t1 + t2);
        u[r * 4 + 3] = t2;
    }
    u
}

/// `V = B^T d B` for one 4x4 input block `d`, with
/// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
#[inline(always)]
fn transform_input(d: &[f32; XI]) -> [f32; XI] {
    let mut t = [0.0f32; XI];
    for c in 0..4 {
        let (d0, d1, d2, d3) = (d[c], d[4 + c], d[8 + c], d[12 + c]);
        t[c] = d0 - d2;
        t[4 + c] = d1 + d2;
        t[8 + c] = d2 - d1;
        t[12 + c] = d1 - d3;
    }
    let mut v = [0.0f32; XI];
    for r in 0..4 {
        let (t0, t1, t2, t3) = (t[r * 4], t[r * 4 + 1], t[r * 4 + 2], t[r * 4 + 3]);
        v[r * 4] = t0 - t2;
        v[r * 4 + 1] = t1 + t2;
        v[r * 4 + 2] = t2 - t1;
        v[r * 4 + 3] = t1 - t3;
    }
    v
}

/// `Y = A^T m A` for one 4x4 product block `m`, with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
#[inline(always)]
fn transform_output(m: &[f32; XI]) -> [f32; OUT * OUT] {
    let mut t = [0.0f32; 8];
    for c in 0..4 {
        let (m0, m1, m2, m3) = (m[c], m[4 + c], m[8 + c], m[12 + c]);
        t[c] = m0 + m1 + m2;
        t[4 + c] = m1 - m2 - m3;
    }
    let mut y = [0.0f32; 4];
    for r in 0..2 {
        let (t0, t1, t2, t3) = (t[r * 4], t[r * 4 + 1], t[r * 4 + 2], t[r * 4 + 3]);
        y[r * 2] = t0 + t1 + t2;
        y[r * 2 + 1] = t1 - t2 - t3;
    }
    y
}

/// Tiles per image: 2x2 output blocks covering the plane.
fn tiles(shape: &Shape) -> (usize, usize) {
    (shape.height.div_ceil(OUT), shape.width.div_ceil(OUT))
}

/// Forward pass: `y = conv(x, w) + b` for the first `n` images. `n` should be at
/// least the thread count (the images are shared among threads).
pub fn forward(g: &ConvGeometry, n: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    assert!(applies(g) && g.input.height == g.output.height && g.input.width == g.output.width);
    let (cig, cog) = (g.in_per_group(), g.out_per_group());
    let co = g.output.channels;
    // Transformed kernels, [xi][out channel][in channel of its group].
    let mut transformed = TRANSFORMED.lock().unwrap_or_else(|e| e.into_inner());
    let u = sized(&mut transformed, XI * co * cig);
    {
        for o in 0..co {
            for c in 0..cig {
                let k: &[f32; 9] = w[(o * cig + c) * 9..][..9].try_into().expect("3x3");
                for (xi, value) in transform_kernel(k).into_iter().enumerate() {
                    u[(xi * co + o) * cig + c] = value;
                }
            }
        }
        let u = &*u;
        let (il, ol) = (g.input.len(), g.output.len());
        let (ty, tx) = tiles(&g.input);
        let per_image = ty * tx;
        let threads = rayon::current_num_threads();
        let per_chunk = TARGET_TILES
            .div_ceil(per_image)
            .min(n.div_ceil(threads))
            .max(1);
        x[..n * il]
            .par_chunks(per_chunk * il)
            .zip(y[..n * ol].par_chunks_mut(per_chunk * ol))
            .for_each(|(x, y)| {
                let count = x.len() / il;
                let width = count * per_image;
                let (ci, cog_all) = (g.input.channels, co);
                with_scratch(XI * (ci + cog_all) * width, |scratch| {
                    let (v, m) = scratch.split_at_mut(XI * ci * width);
                    input_tiles(&g.input, x, v, width);
                    for group in 0..g.groups {
                        for xi in 0..XI {
                            matmul(
                                cog,
                                width,
                                cig,
                                &u[(xi * co + group * cog) * cig..][..cog * cig],
                                Layout::Normal,
                                &v[(xi * ci + group * cig) * width..][..cig * width],
                                Layout::Normal,
                                &mut m[(xi * co + group * cog) * width..][..cog * width],
                                false,
                                1,
                                Products::default(),
                            );
                        }
                    }
                    output_tiles(&g.output, m, b, y, width);
                });
            });
    }
}

/// Transforms every 4x4 input block (2 apart, starting one row and column
/// before the plane: the padding) of `count` images into `v[xi][channel][tile]`,
/// tiles of image `i` at columns `i * tiles..`, `width` columns in all.
fn input_tiles(shape: &Shape, x: &[f32], v: &mut [f32], width: usize) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = tiles(shape);
    let count = x.len() / (shape.channels * plane);
    for i in 0..count {
        for c in 0..shape.channels {
            let src = &x[(i * shape.channels + c) * plane..][..plane];
            for by in 0..ty {
                for bx in 0..tx {
                    let mut d = [0.0f32; XI];
                    for r in 0..4 {
                        let Some(row) = (by * OUT + r).checked_sub(1).filter(|&r| r < h) else {
                            continue;
                        };
                        for s in 0..4 {
                            if let Some(col) = (bx * OUT + s).checked_sub(1).filter(|&s| s < wd) {
                                d[r * 4 + s] = src[row * wd + col];
                            }
                        }
                    }
                    let tile = i * ty * tx + by * tx + bx;
                    for (xi, value) in transform_input(&d).into_iter().enumerate() {
                        v[(xi * shape.channels + c) * width + tile] = value;
                    }
                }
            }
        }
    }
}

/// Transforms the products back into 2x2 output blocks, adds the bias, and writes
/// the blocks' parts inside the plane into `y` (`count` images).
fn output_tiles(shape: &Shape, m: &[f32], bias: &[f32], y: &mut [f32], width: usize) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = tiles(shape);
    let count = y.len() / (shape.channels * plane);
    for i in 0..count {
        for o in 0..shape.channels {
            let dst = &mut y[(i * shape.channels + o) * plane..][..plane];
            for by in 0..ty {
                for bx in 0..tx {
                    let tile = i * ty * tx + by * tx + bx;
                    let block: [f32; XI] =
                        std::array::from_fn(|xi| m[(xi * shape.channels + o) * width + tile]);
                    let out = transform_output(&block);
                    for r in 0..OUT {
                        let row = by * OUT + r;
                        if row >= h {
                            continue;
                        }
                        for s in 0..OUT {
                            let col = bx * OUT + s;
                            if col < wd {
                                dst[row * wd + col] = out[r * OUT + s] + bias[o];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Input gradient `dx` (overwritten) from the output gradient `dy`: the same
/// convolution run backwards is a 3x3, stride-1, padding-1 convolution of `dy`
/// with each kernel rotated by 180 degrees and the in/out channels swapped.
pub fn backward_data(g: &ConvGeometry, n: usize, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (cig, cog) = (g.in_per_group(), g.out_per_group());
    let reversed = ConvGeometry {
        input: g.output,
        output: g.input,
        ..*g
    };
    let mut buffer = ROTATED.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = sized(&mut buffer, w.len() + g.input.channels);
    {
        let (rotated, zero_bias) = scratch.split_at_mut(w.len());
        zero_bias.fill(0.0);
        for group in 0..g.groups {
            for o in 0..cog {
                for c in 0..cig {
                    let src = &w[((group * cog + o) * cig + c) * 9..][..9];
                    // Output channel `c` of the reversed net reads input channel `o`.
                    let dst = &mut rotated[((group * cig + c) * cog + o) * 9..][..9];
                    for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                        *d = *s;
                    }
                }
            }
        }
        forward(&reversed, n, dy, rotated, zero_bias, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tile_equals_the_direct_sums() {
        // A 4x4 input block and a 3x3 kernel: the 2x2 valid correlation, directly.
        let d: [f32; XI] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        let k: [f32; 9] = std::array::from_fn(|i| (i as f32 * 0.91).cos());
        let (v, u) = (transform_input(&d), transform_kernel(&k));
        let m: [f32; XI] = std::array::from_fn(|i| v[i] * u[i]);
        let y = transform_output(&m);
        for r in 0..2 {
            for s in 0..2 {
                let mut direct = 0.0;
                for a in 0..3 {
                    for b in 0..3 {
                        direct += d[(r + a) * 4 + s + b] * k[a * 3 + b];
                    }
                }
                assert!((y[r * 2 + s] - direct).abs() < 1e-5, "{r},{s}");
            }
        }
    }
}
