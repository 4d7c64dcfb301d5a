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
//! swapped), so it goes through the same code. The weight gradient follows from
//! `y = A^T (U . V) A` being linear in `U`: `dU = sum over tiles of (A dY A^T) . V`
//! (16 products `dU[xi] (out x in) = dM[xi] (out x tiles) * V[xi]^T`), then
//! `dW = G^T dU G`.
//!
//! In bf16 mode the 16 products take the *transformed* blocks rounded to bf16
//! (the transforms themselves run in f32). Their entries are sums of up to
//! 9 (kernels) or 16 (inputs) terms, so their rounding is relative to those
//! sums: results differ from a direct bf16 convolution by a few bf16 roundings
//! rather than one (checked against the reference in the layer tests, and by
//! the `precision` experiment).

use rayon::prelude::*;

use super::buffers::{ConvBuffers, lock};
use super::elementwise;
use super::lanes::{lanes, lanewise};
use super::winograd_driver::{Tiling, sized, sum_partials, with_input_gradient_kernels};
use crate::layers::{ConvGeometry, Shape};
use crate::precision::Products;

/// Positions in a 4x4 Winograd-domain block.
const XI: usize = 16;
/// Outputs per tile side.
const OUT: usize = 2;
/// Aim for this many tiles side by side in one product: two images' worth on
/// 13x13 planes (98 tiles). Long enough for the products to run at full speed,
/// short enough for their operands to stay in cache: conv3-5's forward pass
/// measured about 7% faster than with 384 (8 images); one image was slower.
const TARGET_TILES: usize = 96;

/// F(2x2, 3x3) for the shared skeleton (`winograd_driver`).
pub(super) const F2: Tiling = Tiling {
    out: OUT,
    xi: XI,
    lanes: LANES,
    grad_rows: 4,
    transform_kernel: |k, u| u.copy_from_slice(&transform_kernel(k)),
    kernel_gradient: |du, dw| add_kernel_gradient(du.try_into().expect("16 values"), dw),
    padded_len,
    input_tiles,
    output_tiles,
    output_grad_tiles,
};

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
/// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`: the
/// readable form of what `input_tiles` computes for whole rows of blocks at once.
#[cfg(test)]
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

/// `Y = A^T m A` for one 4x4 product block `m`, with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`:
/// the readable form of what `output_tiles` computes for runs of blocks (and its test oracle).
#[cfg(test)]
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

/// Forward pass: `y = conv(x, w) + b` for the first `n` images. `n` should be at
/// least the thread count (the images are shared among threads).
pub fn forward(
    g: &ConvGeometry,
    n: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    products: Products,
    buffers: &ConvBuffers,
    rectify: bool,
) {
    assert!(applies(g) && g.input.height == g.output.height && g.input.width == g.output.width);
    // The transformed kernels; the tiles use per-thread scratch inside.
    let mut transformed = lock(&buffers.winograd_kernels);
    let u = sized(&mut transformed, F2.transformed_len(g));
    F2.transform_kernels(g, w, u);
    let u = &*u;
    let (il, ol) = (g.input.len(), g.output.len());
    let threads = rayon::current_num_threads();
    let per_chunk = images_per_product(g).min(n.div_ceil(threads)).max(1);
    x[..n * il]
        .par_chunks(per_chunk * il)
        .zip(y[..n * ol].par_chunks_mut(per_chunk * ol))
        .for_each(|(x, y)| {
            F2.forward_images(g, x, u, b, y, products);
            if rectify {
                elementwise::rectify(y);
            }
        });
}

/// How many images side by side make a product of about `TARGET_TILES` columns.
fn images_per_product(g: &ConvGeometry) -> usize {
    let (ty, tx) = F2.tiles(&g.input);
    TARGET_TILES.div_ceil(ty * tx)
}

/// Scratch values `input_tiles` needs for a plane of this shape.
fn padded_len(shape: &Shape) -> usize {
    let (ty, tx) = F2.tiles(shape);
    // The padded plane, then four rows of column sums.
    (2 * ty + 2) * (2 * tx + 2) + 4 * (2 * tx + 2)
}

/// Transforms every 4x4 input block (2 apart, starting one row and column
/// before the plane: the padding) of the images in `x` into
/// `v[xi][channel][tile]`, tiles of image `i` at columns `i * tiles..`, `width`
/// columns in all. `pad` is scratch of `padded_len(shape)` values.
///
/// Each plane is first copied into a zero-bordered one, so that no block needs a
/// bounds check; then, per row of blocks, `B^T d` runs along whole rows (every
/// block of the row at once) and `(.) B` per block, writing each `xi`'s values
/// for consecutive blocks next to each other.
fn input_tiles(shape: &Shape, x: &[f32], v: &mut [f32], width: usize, pad: &mut [f32]) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = F2.tiles(shape);
    let pw = 2 * tx + 2;
    let (padded, sums) = pad.split_at_mut((2 * ty + 2) * pw);
    let (t0, rest) = sums.split_at_mut(pw);
    let (t1, rest) = rest.split_at_mut(pw);
    let (t2, t3) = rest.split_at_mut(pw);
    let t3 = &mut t3[..pw];
    padded.fill(0.0);
    let count = x.len() / (shape.channels * plane);
    for i in 0..count {
        for c in 0..shape.channels {
            let src = &x[(i * shape.channels + c) * plane..][..plane];
            for (r, row) in src.chunks_exact(wd).enumerate() {
                padded[(r + 1) * pw + 1..][..wd].copy_from_slice(row);
            }
            for by in 0..ty {
                let rows = &padded[2 * by * pw..][..4 * pw];
                let (d0, d1, d2, d3) = (
                    &rows[..pw],
                    &rows[pw..2 * pw],
                    &rows[2 * pw..3 * pw],
                    &rows[3 * pw..],
                );
                for j in 0..pw {
                    t0[j] = d0[j] - d2[j];
                    t1[j] = d1[j] + d2[j];
                    t2[j] = d2[j] - d1[j];
                    t3[j] = d1[j] - d3[j];
                }
                let first = i * ty * tx + by * tx;
                for (r, t) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                    let at = |xi: usize| (xi * shape.channels + c) * width + first;
                    let v0 = &mut v[at(r * 4)..][..tx];
                    for bx in 0..tx {
                        v0[bx] = t[2 * bx] - t[2 * bx + 2];
                    }
                    let v1 = &mut v[at(r * 4 + 1)..][..tx];
                    for bx in 0..tx {
                        v1[bx] = t[2 * bx + 1] + t[2 * bx + 2];
                    }
                    let v2 = &mut v[at(r * 4 + 2)..][..tx];
                    for bx in 0..tx {
                        v2[bx] = t[2 * bx + 2] - t[2 * bx + 1];
                    }
                    let v3 = &mut v[at(r * 4 + 3)..][..tx];
                    for bx in 0..tx {
                        v3[bx] = t[2 * bx + 1] - t[2 * bx + 3];
                    }
                }
            }
        }
    }
}

/// Blocks transformed side by side by `output_tiles`: 8 suits the 7 blocks a
/// row of the paper's 13x13 planes has.
const LANES: usize = 8;

/// Transforms the products back into 2x2 output blocks, adds the bias, and writes
/// the blocks' parts inside the plane into `y` (`count` images). Per row of
/// blocks, `LANES` blocks at a time: the 16 rows of products are read as runs
/// of consecutive blocks and transformed lane by lane. `m` holds `LANES` values
/// past its `16 * channels * width` products (read, never used).
fn output_tiles(shape: &Shape, m: &[f32], bias: &[f32], y: &mut [f32], width: usize) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = F2.tiles(shape);
    let count = y.len() / (shape.channels * plane);
    for i in 0..count {
        for o in 0..shape.channels {
            let dst = &mut y[(i * shape.channels + o) * plane..][..plane];
            let bias = bias[o];
            for by in 0..ty {
                for first in (0..tx).step_by(LANES) {
                    let column = i * ty * tx + by * tx + first;
                    let block: [&[f32; LANES]; XI] = std::array::from_fn(|xi| {
                        lanes(m, (xi * shape.channels + o) * width + column)
                    });
                    // Columns: t[r][c] = (A^T m)[r][c]; then rows: y[r] = t[r] A.
                    let mut t = [[[0.0f32; LANES]; 4]; OUT];
                    for c in 0..4 {
                        let column = [block[c], block[4 + c], block[8 + c], block[12 + c]];
                        let [t0, t1] =
                            lanewise(column, |[m0, m1, m2, m3]| [m0 + m1 + m2, m1 - m2 - m3]);
                        t[0][c] = t0;
                        t[1][c] = t1;
                    }
                    let blocks = LANES.min(tx - first);
                    for (r, t_row) in t.iter().enumerate() {
                        let y_row = by * OUT + r;
                        if y_row >= h {
                            break;
                        }
                        let [left, right] =
                            lanewise(std::array::from_fn(|c| &t_row[c]), |[t0, t1, t2, t3]| {
                                [t0 + t1 + t2, t1 - t2 - t3]
                            });
                        let dst_row = &mut dst[y_row * wd..][..wd];
                        for lane in 0..blocks {
                            let col = (first + lane) * OUT;
                            dst_row[col] = left[lane] + bias;
                            if col + 1 < wd {
                                dst_row[col + 1] = right[lane] + bias;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dM = A dY A^T` for every 2x2 block of output gradients (zero outside the
/// plane) of the images in `dy`, into `dm[xi][channel][tile]` as `input_tiles`
/// lays out its blocks; `rows` is scratch of `4 * (2 * tx)` values. With
/// `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`.
fn output_grad_tiles(shape: &Shape, dy: &[f32], dm: &mut [f32], width: usize, rows: &mut [f32]) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = F2.tiles(shape);
    let pw = 2 * tx;
    let (t0, rest) = rows.split_at_mut(pw);
    let (t1, rest) = rest.split_at_mut(pw);
    let (t2, t3) = rest.split_at_mut(pw);
    let t3 = &mut t3[..pw];
    let count = dy.len() / (shape.channels * plane);
    for i in 0..count {
        for o in 0..shape.channels {
            let src = &dy[(i * shape.channels + o) * plane..][..plane];
            for by in 0..ty {
                // The block row's two gradient rows, zero past the plane's edges.
                let row = |r: usize, j: usize| {
                    let (y, x) = (2 * by + r, j);
                    if y < h && x < wd {
                        src[y * wd + x]
                    } else {
                        0.0
                    }
                };
                for j in 0..pw {
                    let (g0, g1) = (row(0, j), row(1, j));
                    t0[j] = g0;
                    t1[j] = g0 + g1;
                    t2[j] = g0 - g1;
                    t3[j] = -g1;
                }
                let first = i * ty * tx + by * tx;
                for (r, t) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                    let at = |xi: usize| (xi * shape.channels + o) * width + first;
                    let m0 = &mut dm[at(r * 4)..][..tx];
                    for bx in 0..tx {
                        m0[bx] = t[2 * bx];
                    }
                    let m1 = &mut dm[at(r * 4 + 1)..][..tx];
                    for bx in 0..tx {
                        m1[bx] = t[2 * bx] + t[2 * bx + 1];
                    }
                    let m2 = &mut dm[at(r * 4 + 2)..][..tx];
                    for bx in 0..tx {
                        m2[bx] = t[2 * bx] - t[2 * bx + 1];
                    }
                    let m3 = &mut dm[at(r * 4 + 3)..][..tx];
                    for bx in 0..tx {
                        m3[bx] = -t[2 * bx + 1];
                    }
                }
            }
        }
    }
}

/// `dW += G^T dU G` for one 4x4 Winograd-domain gradient `du`: the adjoint of
/// `transform_kernel`.
fn add_kernel_gradient(du: &[f32; XI], dw: &mut [f32]) {
    // s = G^T dU (3x4), column by column.
    let mut s = [[0.0f32; 4]; 3];
    for c in 0..4 {
        let (u0, u1, u2, u3) = (du[c], du[4 + c], du[8 + c], du[12 + c]);
        s[0][c] = u0 + 0.5 * (u1 + u2);
        s[1][c] = 0.5 * (u1 - u2);
        s[2][c] = 0.5 * (u1 + u2) + u3;
    }
    // dW = s G (3x3).
    for r in 0..3 {
        let [s0, s1, s2, s3] = s[r];
        dw[r * 3] += s0 + 0.5 * (s1 + s2);
        dw[r * 3 + 1] += 0.5 * (s1 - s2);
        dw[r * 3 + 2] += 0.5 * (s1 + s2) + s3;
    }
}

/// Adds the weight gradient of the first `n` images into `dw` (not the bias's).
/// The batch is split into one contiguous part per thread, each summing its
/// Winograd-domain gradients into its own partial; the partials are added in a
/// fixed order, so results do not depend on scheduling.
pub fn backward_weights(
    g: &ConvGeometry,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    products: Products,
    buffers: &ConvBuffers,
) {
    assert!(applies(g) && g.input.height == g.output.height && g.input.width == g.output.width);
    let (il, ol) = (g.input.len(), g.output.len());
    let parts = rayon::current_num_threads().min(n).max(1);
    let per_part = n.div_ceil(parts);
    let parts = n.div_ceil(per_part);
    let du_len = F2.transformed_len(g);
    let mut buffer = lock(&buffers.winograd_weight_partials);
    let partials = sized(&mut buffer, parts * du_len);
    let per_chunk = images_per_product(g);
    partials
        .par_chunks_exact_mut(du_len)
        .zip(x[..n * il].par_chunks(per_part * il))
        .zip(dy[..n * ol].par_chunks(per_part * ol))
        .for_each(|((du, x), dy)| {
            du.fill(0.0);
            for (x, dy) in x.chunks(per_chunk * il).zip(dy.chunks(per_chunk * ol)) {
                F2.add_transformed_weight_gradient(g, x, dy, du, products);
            }
        });
    F2.add_weight_gradient(g, sum_partials(partials, du_len), dw);
}

/// Input gradient `dx` (overwritten) from the output gradient `dy`: the same
/// convolution run backwards is a 3x3, stride-1, padding-1 convolution of `dy`
/// with each kernel rotated by 180 degrees and the in/out channels swapped.
pub fn backward_data(
    g: &ConvGeometry,
    n: usize,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    products: Products,
    buffers: &ConvBuffers,
) {
    with_input_gradient_kernels(g, w, buffers, |reversed, kernels, zero_bias| {
        forward(
            reversed, n, dy, kernels, zero_bias, dx, products, buffers, false,
        );
    });
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

    #[test]
    fn input_tiles_transform_every_padded_block() {
        // Two images of three 5x7 channels: odd sides leave the last blocks half outside.
        let shape = Shape::new(3, 5, 7);
        let (ty, tx) = F2.tiles(&shape);
        let x: Vec<f32> = (0..2 * shape.len())
            .map(|i| (i as f32 * 0.13).sin())
            .collect();
        let width = 2 * ty * tx;
        let mut v = vec![f32::NAN; XI * shape.channels * width];
        let mut pad = vec![f32::NAN; padded_len(&shape)];
        input_tiles(&shape, &x, &mut v, width, &mut pad);
        let plane = shape.height * shape.width;
        for i in 0..2 {
            for c in 0..shape.channels {
                for by in 0..ty {
                    for bx in 0..tx {
                        let d: [f32; XI] = std::array::from_fn(|k| {
                            let (r, s) =
                                ((by * 2 + k / 4) as isize - 1, (bx * 2 + k % 4) as isize - 1);
                            let inside = (0..shape.height as isize).contains(&r)
                                && (0..shape.width as isize).contains(&s);
                            if inside {
                                x[(i * 3 + c) * plane + r as usize * shape.width + s as usize]
                            } else {
                                0.0
                            }
                        });
                        let expected = transform_input(&d);
                        let tile = i * ty * tx + by * tx + bx;
                        for xi in 0..XI {
                            let got = v[(xi * shape.channels + c) * width + tile];
                            assert!(
                                (got - expected[xi]).abs() < 1e-6,
                                "image {i} channel {c} block {by},{bx} xi {xi}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn one_tile_weight_gradient_equals_the_direct_sums() {
        // Gradient of sum(dy . y) for one 4x4 block d: dW[a][b] = sum dy[r][s] d[r + a][s + b].
        let d: [f32; XI] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        let dy = [0.3f32, -1.1, 0.7, 0.2];
        let v = transform_input(&d);
        // dM = A dy A^T, as output_grad_tiles computes it.
        let shape = Shape::new(1, 2, 2);
        let mut dm = vec![0.0f32; XI];
        let mut rows = vec![0.0f32; 8];
        output_grad_tiles(&shape, &dy, &mut dm, 1, &mut rows);
        let du: [f32; XI] = std::array::from_fn(|i| dm[i] * v[i]);
        let mut dw = [0.0f32; 9];
        add_kernel_gradient(&du, &mut dw);
        for a in 0..3 {
            for b in 0..3 {
                let mut direct = 0.0;
                for r in 0..2 {
                    for s in 0..2 {
                        direct += dy[r * 2 + s] * d[(r + a) * 4 + s + b];
                    }
                }
                assert!(
                    (dw[a * 3 + b] - direct).abs() < 1e-5,
                    "{a},{b}: {} vs {direct}",
                    dw[a * 3 + b]
                );
            }
        }
    }
}
