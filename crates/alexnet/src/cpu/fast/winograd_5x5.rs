//! 5x5 convolutions with stride 1 and padding 2 (conv2 of the paper) by
//! Winograd's F(3x3, 3x3) on four 3x3 pieces of each kernel.
//!
//! The 5x5 kernel, with a zero row and column added to make it 6x6, is four 3x3
//! pieces `k_ab` (a, b in {0, 1}) at offsets (3a, 3b). The 3x3 block of outputs
//! at (3p, 3q) is the sum over the pieces of F(3x3, 3x3) of piece `k_ab` on the
//! 5x5 input block at (3(p + a), 3(q + b)) of the padded plane. So one grid of
//! input blocks, 3 apart, serves every piece: piece `ab` reads the grid shifted
//! by `a` blocks down and `b` across. The output transform is linear, so the
//! pieces' Winograd-domain products add up before it, and each of the 25
//! positions `xi` of the 5x5 domain is a sum of four matrix products
//! `M[xi] (out x blocks) = sum over pieces of U[xi, piece] (out x in) * V[xi] (in x blocks, shifted)`.
//! The products' columns are the input grid itself (one per input block, the
//! grid's last row and column not being outputs), so a piece's shift is only
//! an offset into `V`: nothing is copied, at the price of computing
//! (h/3 + 1)(w/3 + 1) columns for (h/3)(w/3) output blocks.
//! That is 4 * 25 = 100 multiplies per 9 outputs instead of 225 (2.25x fewer;
//! 1.8x with the grid's extra row and column on the paper's 27x27 planes).
//! F(2x2, 5x5) would need only 36 per 4 outputs, but its 6x6 transforms cost
//! more than the products saved (tried; see BENCHMARKS.md).
//!
//! The transforms are those of the points 0, 1, -1, 2 and infinity
//! (`tools/winograd_matrices.py` derives and checks them exactly):
//! `A^T = [[1, 1, 1, 1, 0], [0, 1, -1, 2, 0], [0, 1, 1, 4, 1]]`,
//! `G = [[1/2, 0, 0], [-1/2, -1/2, -1/2], [-1/6, 1/6, -1/6], [1/6, 1/3, 2/3], [0, 0, 1]]`,
//! `B^T = [[2, -1, -2, 1, 0], [0, -2, -1, 1, 0], [0, 2, -3, 1, 0], [0, -1, 0, 1, 0], [0, 2, -1, -2, 1]]`.
//! Their entries are small, so the results stay within a few f32 roundings of
//! a direct sum (checked against the reference in the layer tests).
//!
//! The input gradient is the same kind of convolution of the output gradient
//! (kernels rotated, channel roles swapped); the weight gradient is
//! `dU[xi] = dM[xi] V[xi]^T` with `dM = A dY A^T` per block, then
//! `dk_ab = G^T dU_ab G`, whose entries inside the 5x5 kernel are its gradient.
//!
//! f32 products only: with the transformed blocks rounded to bf16 the results
//! were 6 to 9 times a direct bf16 convolution's error (the transforms'
//! coefficients reach 4 and 1/6), so bf16 mode keeps the direct convolution.

use std::ops::Range;

use rayon::prelude::*;

use super::buffers::{ConvBuffers, lock};
use super::elementwise;
use super::gemm::{Strided, matmul_f32_strided};
use super::lanes::{lanes, lanewise};
use super::scratch::with_scratch;
use super::simd;
use super::winograd_driver::{sized, sum_partials, with_input_gradient_kernels};
use crate::layers::{ConvGeometry, Shape};

/// Positions in a 5x5 Winograd-domain block.
const XI: usize = 25;
/// Inputs per block side.
const SIDE: usize = 5;
/// Outputs per block side.
const OUT: usize = 3;
/// 3x3 pieces of a 5x5 kernel.
const PIECES: usize = 4;
/// Aim for this many product columns side by side (two of the paper's 27x27
/// planes; 100 and 400 measured the same): long enough for the products to run
/// at full speed, short enough for their operands to stay in cache.
const TARGET_TILES: usize = 200;

/// `G` of F(3, 3) on the points 0, 1, -1, 2, infinity.
const G: [[f32; 3]; SIDE] = [
    [0.5, 0.0, 0.0],
    [-0.5, -0.5, -0.5],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
    [0.0, 0.0, 1.0],
];

/// Whether a convolution can take this path: 5x5, stride 1, padding 2.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 5 && g.stride == 1 && g.pad == 2
}

/// `B^T d` for one column (or row) of 5 inputs.
#[inline(always)]
fn input_points(d: [f32; SIDE]) -> [f32; SIDE] {
    let [d0, d1, d2, d3, d4] = d;
    [
        2.0 * (d0 - d2) + d3 - d1,
        d3 - d2 - 2.0 * d1,
        2.0 * d1 - 3.0 * d2 + d3,
        d3 - d1,
        2.0 * (d1 - d3) - d2 + d4,
    ]
}

/// `A^T m` for one column (or row) of 5 products.
#[inline(always)]
fn output_points(m: [f32; SIDE]) -> [f32; OUT] {
    let [m0, m1, m2, m3, m4] = m;
    [
        m0 + m1 + m2 + m3,
        m1 - m2 + 2.0 * m3,
        m1 + m2 + 4.0 * m3 + m4,
    ]
}

/// `A dy` for one column (or row) of 3 output gradients: the adjoint of `output_points`.
#[inline(always)]
fn output_gradient_points(dy: [f32; OUT]) -> [f32; SIDE] {
    let [g0, g1, g2] = dy;
    [g0, g0 + g1 + g2, g0 - g1 + g2, g0 + 2.0 * g1 + 4.0 * g2, g2]
}

/// `V = B^T d B` for one 5x5 input block: the readable form of what
/// `input_tiles` computes for rows of blocks at once (and its test oracle).
#[cfg(test)]
fn transform_input(d: &[f32; XI]) -> [f32; XI] {
    let mut t = [0.0f32; XI];
    for c in 0..SIDE {
        let column = input_points(std::array::from_fn(|r| d[r * SIDE + c]));
        for (j, value) in column.into_iter().enumerate() {
            t[j * SIDE + c] = value;
        }
    }
    let mut v = [0.0f32; XI];
    for j in 0..SIDE {
        let row = input_points(t[j * SIDE..][..SIDE].try_into().expect("5"));
        v[j * SIDE..][..SIDE].copy_from_slice(&row);
    }
    v
}

/// `Y = A^T m A` for one 5x5 product block (the readable form of `output_tiles`).
#[cfg(test)]
fn transform_output(m: &[f32; XI]) -> [f32; OUT * OUT] {
    let mut t = [0.0f32; OUT * SIDE];
    for c in 0..SIDE {
        let column = output_points(std::array::from_fn(|j| m[j * SIDE + c]));
        for (r, value) in column.into_iter().enumerate() {
            t[r * SIDE + c] = value;
        }
    }
    let mut y = [0.0f32; OUT * OUT];
    for r in 0..OUT {
        let row = output_points(t[r * SIDE..][..SIDE].try_into().expect("5"));
        y[r * OUT..][..OUT].copy_from_slice(&row);
    }
    y
}

/// `dM = A dY A^T` for one 3x3 block of output gradients (the readable form of
/// `output_gradient_tiles`).
#[cfg(test)]
fn transform_output_gradient(dy: &[f32; OUT * OUT]) -> [f32; XI] {
    let mut t = [0.0f32; SIDE * OUT];
    for c in 0..OUT {
        let column = output_gradient_points(std::array::from_fn(|r| dy[r * OUT + c]));
        for (j, value) in column.into_iter().enumerate() {
            t[j * OUT + c] = value;
        }
    }
    let mut dm = [0.0f32; XI];
    for j in 0..SIDE {
        let row = output_gradient_points(t[j * OUT..][..OUT].try_into().expect("3"));
        dm[j * SIDE..][..SIDE].copy_from_slice(&row);
    }
    dm
}

/// `U = G k G^T` for one 3x3 kernel piece (once per call, so written plainly).
fn transform_kernel(k: &[f32; 9]) -> [f32; XI] {
    let mut t = [[0.0f32; 3]; SIDE];
    for (j, row) in t.iter_mut().enumerate() {
        for (c, value) in row.iter_mut().enumerate() {
            *value = (0..3).map(|r| G[j][r] * k[r * 3 + c]).sum();
        }
    }
    std::array::from_fn(|xi| {
        let (j, i) = (xi / SIDE, xi % SIDE);
        (0..3).map(|c| t[j][c] * G[i][c]).sum()
    })
}

/// Piece `(a, b)` of a 5x5 kernel: rows `3a..3a + 3`, columns `3b..3b + 3`,
/// zero past the kernel's edge.
fn kernel_piece(k: &[f32], a: usize, b: usize) -> [f32; 9] {
    std::array::from_fn(|tap| {
        let (r, c) = (3 * a + tap / 3, 3 * b + tap % 3);
        if r < 5 && c < 5 { k[r * 5 + c] } else { 0.0 }
    })
}

/// `dk += G^T du G` for piece `(a, b)`, added into the 5x5 kernel gradient `dk`
/// (the piece's entries past the kernel's edge are padding and are dropped).
fn add_piece_gradient(du: &[f32; XI], a: usize, b: usize, dk: &mut [f32]) {
    // t = G^T du (3x5).
    let mut t = [[0.0f32; SIDE]; 3];
    for (r, row) in t.iter_mut().enumerate() {
        for (i, value) in row.iter_mut().enumerate() {
            *value = (0..SIDE).map(|j| G[j][r] * du[j * SIDE + i]).sum();
        }
    }
    for (r, row) in t.iter().enumerate() {
        for c in 0..3 {
            let (kr, kc) = (3 * a + r, 3 * b + c);
            if kr < 5 && kc < 5 {
                dk[kr * 5 + kc] += (0..SIDE).map(|i| row[i] * G[i][c]).sum::<f32>();
            }
        }
    }
}

/// Values handled side by side by the vectorised transforms.
const LANES: usize = 16;

/// How a plane is cut into blocks, and how the blocks' columns are laid out
/// in the products.
#[derive(Clone, Copy)]
struct Blocks {
    /// Output blocks down and across: 3x3 blocks covering the plane.
    ty: usize,
    tx: usize,
    /// Input blocks down and across: one more each way, for the pieces' shifts.
    gy: usize,
    gx: usize,
    /// Values per phase in a phase-split row (see `input_tiles`).
    phase: usize,
}

impl Blocks {
    fn new(shape: &Shape) -> Blocks {
        let (ty, tx) = (shape.height.div_ceil(OUT), shape.width.div_ceil(OUT));
        let gx = tx + 1;
        Blocks {
            ty,
            tx,
            gy: ty + 1,
            gx,
            // Room for a whole vector read one further on from the last block.
            phase: gx.div_ceil(LANES) * LANES + LANES,
        }
    }

    /// Product columns per image: one per input block, `gy * gx`. Column
    /// `(p, q)` holds output block `(p, q)` where `p < ty` and `q < tx`; the
    /// last row and column of each image's columns are not outputs.
    fn per_image(&self) -> usize {
        self.gy * self.gx
    }

    /// Row stride of the `V`, `M` and `dM` matrices for `width` columns: room
    /// past the end for the pieces' shifted reads (up to `gx + 1` columns on)
    /// and for a whole vector stored at the last block.
    fn stride(&self, width: usize) -> usize {
        width + self.gx + 1 + LANES
    }

    /// How far piece `(a, b)` reads from the output block's own column.
    fn shift(&self, piece: usize) -> usize {
        (piece / 2) * self.gx + piece % 2
    }

    /// Scratch values `input_tiles` needs: the padded, phase-split plane (rows
    /// `0..3 gy + 2`), then five rows of column transforms.
    fn input_scratch_len(&self) -> usize {
        (OUT * self.gy + 2 + SIDE) * OUT * self.phase
    }

    /// Scratch values `output_gradient_tiles` needs: three phase-split rows.
    fn gradient_scratch_len(&self) -> usize {
        OUT * OUT * self.phase
    }
}

/// Transforms the input blocks of channels `channels` (one group) of the
/// images in `x` into `v[xi][channel of the group][column]` (rows `stride`
/// apart): the block at grid `(by, bx)` of image `i` goes to column
/// `i * per_image + by * gx + bx`. Every column up to the row's end is written
/// (past `width` with zeros), so the pieces' shifted reads see only finite values.
///
/// Each plane is copied into a zero-bordered one (2 before, at least 3 after)
/// whose rows are split into their 3 phases (`row[3j + f]` at `phase f, j`):
/// then `B^T d` runs down whole rows at once, and `(.) B` reads values 3 apart
/// as consecutive ones, so both passes run on vectors of `LANES` blocks.
#[inline(always)]
fn input_tiles(
    shape: &Shape,
    blocks: &Blocks,
    channels: Range<usize>,
    x: &[f32],
    v: &mut [f32],
    width: usize,
    scratch: &mut [f32],
) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let Blocks { gy, gx, phase, .. } = *blocks;
    let row_len = OUT * phase;
    let stride = blocks.stride(width);
    let (padded, columns) = scratch.split_at_mut((OUT * gy + 2) * row_len);
    padded.fill(0.0);
    let group_channels = channels.len();
    let count = x.len() / (shape.channels * plane);
    for i in 0..count {
        for (c, channel) in channels.clone().enumerate() {
            let src = &x[(i * shape.channels + channel) * plane..][..plane];
            for (r, row) in src.chunks_exact(wd).enumerate() {
                let dst = &mut padded[(r + 2) * row_len..][..row_len];
                for (col, value) in row.iter().enumerate() {
                    let at = col + 2;
                    dst[(at % OUT) * phase + at / OUT] = *value;
                }
            }
            for by in 0..gy {
                // Column pass: t_j = sum_q B^T[j][q] d_q over the block row's 5 rows.
                let rows = &padded[OUT * by * row_len..][..SIDE * row_len];
                for at in (0..row_len).step_by(LANES) {
                    let d: [&[f32; LANES]; SIDE] =
                        std::array::from_fn(|q| lanes(rows, q * row_len + at));
                    let t = lanewise(d, input_points);
                    for (j, values) in t.iter().enumerate() {
                        columns[j * row_len + at..][..LANES].copy_from_slice(values);
                    }
                }
                // Row pass on each t_j: value q of block bx is t_j[3 bx + q], that
                // is phase q % 3 at bx + q / 3.
                for j in 0..SIDE {
                    let t = &columns[j * row_len..][..row_len];
                    for first in (0..gx).step_by(LANES) {
                        let d: [&[f32; LANES]; SIDE] =
                            std::array::from_fn(|q| lanes(t, (q % OUT) * phase + first + q / OUT));
                        let out = lanewise(d, input_points);
                        let column = i * blocks.per_image() + by * gx + first;
                        for (k, values) in out.iter().enumerate() {
                            let row = (j * SIDE + k) * group_channels + c;
                            // A whole vector: lanes past the block row land on the
                            // next row's columns, which are written after this.
                            v[row * stride + column..][..LANES].copy_from_slice(values);
                        }
                    }
                }
            }
        }
    }
    for row in v.chunks_exact_mut(stride).take(XI * group_channels) {
        row[width..].fill(0.0);
    }
}

/// Transforms the products `m[xi][channel of the group][column]` (rows `stride`
/// apart) back into 3x3 output blocks of channels `channels`, adds the bias,
/// and writes the blocks' parts inside the plane into `y` (whole images).
#[inline(always)]
fn output_tiles(
    shape: &Shape,
    blocks: &Blocks,
    channels: Range<usize>,
    m: &[f32],
    bias: &[f32],
    y: &mut [f32],
    width: usize,
) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let Blocks { ty, tx, gx, .. } = *blocks;
    let stride = blocks.stride(width);
    let group_channels = channels.len();
    let count = y.len() / (shape.channels * plane);
    for i in 0..count {
        for (o, channel) in channels.clone().enumerate() {
            let dst = &mut y[(i * shape.channels + channel) * plane..][..plane];
            let rows = &m[o * stride..];
            for by in 0..ty {
                for first in (0..tx).step_by(LANES) {
                    let column = i * blocks.per_image() + by * gx + first;
                    let block: [&[f32; LANES]; XI] = std::array::from_fn(|xi| {
                        lanes(rows, xi * group_channels * stride + column)
                    });
                    // Column pass, then row pass, as in `transform_output`.
                    let mut t = [[[0.0f32; LANES]; SIDE]; OUT];
                    for c in 0..SIDE {
                        let column: [&[f32; LANES]; SIDE] =
                            std::array::from_fn(|j| block[j * SIDE + c]);
                        let out = lanewise(column, output_points);
                        for r in 0..OUT {
                            t[r][c] = out[r];
                        }
                    }
                    for (r, t_row) in t.iter().enumerate() {
                        let y_row = by * OUT + r;
                        if y_row >= h {
                            break;
                        }
                        let out = lanewise(std::array::from_fn(|c| &t_row[c]), output_points);
                        let dst_row = &mut dst[y_row * wd..][..wd];
                        for lane in 0..LANES.min(tx - first) {
                            for (s, values) in out.iter().enumerate() {
                                let col = (first + lane) * OUT + s;
                                if col < wd {
                                    dst_row[col] = values[lane] + bias[channel];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dM = A dY A^T` for every 3x3 block of output gradients of channels
/// `channels` of the images in `dy`, into `dm[xi][channel of the group][column]`
/// (rows `stride` apart) as `output_tiles` reads its products: zero in the
/// columns that are not output blocks, so they add nothing to the weight gradient.
#[inline(always)]
fn output_gradient_tiles(
    shape: &Shape,
    blocks: &Blocks,
    channels: Range<usize>,
    dy: &[f32],
    dm: &mut [f32],
    width: usize,
    scratch: &mut [f32],
) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let Blocks { gy, gx, phase, .. } = *blocks;
    let stride = blocks.stride(width);
    let group_channels = channels.len();
    let count = dy.len() / (shape.channels * plane);
    let split = &mut scratch[..OUT * OUT * phase];
    for i in 0..count {
        for (o, channel) in channels.clone().enumerate() {
            let src = &dy[(i * shape.channels + channel) * plane..][..plane];
            for by in 0..gy {
                // The block row's three gradient rows, split into phases, zero
                // past the plane's edges.
                split.fill(0.0);
                for r in 0..OUT {
                    let y_row = by * OUT + r;
                    if y_row >= h {
                        break;
                    }
                    for (col, value) in src[y_row * wd..][..wd].iter().enumerate() {
                        split[(r * OUT + col % OUT) * phase + col / OUT] = *value;
                    }
                }
                for first in (0..gx).step_by(LANES) {
                    let mut t = [[[0.0f32; LANES]; OUT]; SIDE];
                    for s in 0..OUT {
                        let column: [&[f32; LANES]; OUT] =
                            std::array::from_fn(|r| lanes(split, (r * OUT + s) * phase + first));
                        let out = lanewise(column, output_gradient_points);
                        for j in 0..SIDE {
                            t[j][s] = out[j];
                        }
                    }
                    let column = i * blocks.per_image() + by * gx + first;
                    for (j, t_row) in t.iter().enumerate() {
                        let out =
                            lanewise(std::array::from_fn(|s| &t_row[s]), output_gradient_points);
                        for (k, values) in out.iter().enumerate() {
                            let row = (j * SIDE + k) * group_channels + o;
                            dm[row * stride + column..][..LANES].copy_from_slice(values);
                        }
                    }
                }
            }
        }
    }
}

/// The operand of piece `piece`'s products: `V[xi]` read from `shift` columns on.
fn shifted(v: &[f32], xi: usize, rows: usize, stride: usize, shift: usize) -> &[f32] {
    &v[xi * rows * stride + shift..][..rows * stride - shift]
}

/// Forward pass: `y = conv(x, w) + b` for the first `n` images. `n` should be at
/// least the thread count (the images are shared among threads). f32 products
/// only (see `conv::uses_winograd`).
pub fn forward(
    g: &ConvGeometry,
    n: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    buffers: &ConvBuffers,
    rectify: bool,
) {
    assert!(applies(g) && g.input.height == g.output.height && g.input.width == g.output.width);
    let (cig, cog) = (g.in_per_group(), g.out_per_group());
    let co = g.output.channels;
    // Transformed kernels, [xi][out channel][piece][in channel of its group].
    let inner = PIECES * cig;
    let mut transformed = lock(&buffers.pieces_kernels);
    let u = sized(&mut transformed, XI * co * inner);
    for o in 0..co {
        for c in 0..cig {
            let kernel = &w[(o * cig + c) * 25..][..25];
            for piece in 0..PIECES {
                let transformed = transform_kernel(&kernel_piece(kernel, piece / 2, piece % 2));
                for (xi, value) in transformed.into_iter().enumerate() {
                    u[(xi * co + o) * inner + piece * cig + c] = value;
                }
            }
        }
    }
    let u = &*u;
    let (il, ol) = (g.input.len(), g.output.len());
    let blocks = Blocks::new(&g.input);
    let threads = rayon::current_num_threads();
    let per_chunk = TARGET_TILES
        .div_ceil(blocks.per_image())
        .min(n.div_ceil(threads))
        .max(1);
    x[..n * il]
        .par_chunks(per_chunk * il)
        .zip(y[..n * ol].par_chunks_mut(per_chunk * ol))
        .for_each(|(x, y)| {
            let width = x.len() / il * blocks.per_image();
            let stride = blocks.stride(width);
            let len = XI * (cig + cog) * stride + blocks.input_scratch_len();
            with_scratch(len, |scratch| {
                let (v, rest) = scratch.split_at_mut(XI * cig * stride);
                let (m, rest) = rest.split_at_mut(XI * cog * stride);
                for group in 0..g.groups {
                    let inputs = group * cig..(group + 1) * cig;
                    // The transforms are compiled for the CPU's widest vectors
                    // (`simd`); the rest of the crate targets baseline x86-64.
                    simd::dispatch(
                        #[inline(always)]
                        || input_tiles(&g.input, &blocks, inputs, x, v, width, rest),
                    );
                    for xi in 0..XI {
                        // M[xi] = sum over pieces of U[xi, piece] V[xi] shifted.
                        for piece in 0..PIECES {
                            let a = &u[(xi * co + group * cog) * inner + piece * cig..];
                            let shift = blocks.shift(piece);
                            matmul_f32_strided(
                                cog,
                                width,
                                cig,
                                Strided {
                                    data: a,
                                    row_stride: inner,
                                    column_stride: 1,
                                },
                                Strided {
                                    data: shifted(v, xi, cig, stride, shift),
                                    row_stride: stride,
                                    column_stride: 1,
                                },
                                &mut m[xi * cog * stride..][..cog * stride],
                                stride,
                                piece > 0,
                            );
                        }
                    }
                    let outputs = group * cog..(group + 1) * cog;
                    simd::dispatch(
                        #[inline(always)]
                        || output_tiles(&g.output, &blocks, outputs, m, b, y, width),
                    );
                }
            });
            if rectify {
                elementwise::rectify(y);
            }
        });
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
    buffers: &ConvBuffers,
) {
    assert!(applies(g) && g.input.height == g.output.height && g.input.width == g.output.width);
    let (cig, cog) = (g.in_per_group(), g.out_per_group());
    let co = g.output.channels;
    let inner = PIECES * cig;
    let (il, ol) = (g.input.len(), g.output.len());
    let blocks = Blocks::new(&g.input);
    let parts = rayon::current_num_threads().min(n).max(1);
    let per_part = n.div_ceil(parts);
    let parts = n.div_ceil(per_part);
    let du_len = XI * co * inner;
    let mut buffer = lock(&buffers.pieces_weight_partials);
    let partials = sized(&mut buffer, parts * du_len);
    partials
        .par_chunks_exact_mut(du_len)
        .zip(x[..n * il].par_chunks(per_part * il))
        .zip(dy[..n * ol].par_chunks(per_part * ol))
        .for_each(|((du, x), dy)| {
            du.fill(0.0);
            let images = x.len() / il;
            let per_chunk = TARGET_TILES.div_ceil(blocks.per_image()).min(images).max(1);
            for first in (0..images).step_by(per_chunk) {
                let count = per_chunk.min(images - first);
                let width = count * blocks.per_image();
                let stride = blocks.stride(width);
                let (x, dy) = (
                    &x[first * il..][..count * il],
                    &dy[first * ol..][..count * ol],
                );
                let extra = blocks
                    .input_scratch_len()
                    .max(blocks.gradient_scratch_len());
                with_scratch(XI * (cig + cog) * stride + extra, |scratch| {
                    let (v, rest) = scratch.split_at_mut(XI * cig * stride);
                    let (dm, rest) = rest.split_at_mut(XI * cog * stride);
                    for group in 0..g.groups {
                        let inputs = group * cig..(group + 1) * cig;
                        let outputs = group * cog..(group + 1) * cog;
                        simd::dispatch(
                            #[inline(always)]
                            || {
                                input_tiles(&g.input, &blocks, inputs, x, v, width, rest);
                                output_gradient_tiles(
                                    &g.output, &blocks, outputs, dy, dm, width, rest,
                                );
                            },
                        );
                        for xi in 0..XI {
                            // dU[xi, piece] (out x in) += dM[xi] (out x columns) *
                            // (V[xi] shifted)^T.
                            for piece in 0..PIECES {
                                let shift = blocks.shift(piece);
                                let at = (xi * co + group * cog) * inner + piece * cig;
                                matmul_f32_strided(
                                    cog,
                                    cig,
                                    width,
                                    Strided {
                                        data: &dm[xi * cog * stride..][..cog * stride],
                                        row_stride: stride,
                                        column_stride: 1,
                                    },
                                    Strided {
                                        data: shifted(v, xi, cig, stride, shift),
                                        row_stride: 1,
                                        column_stride: stride,
                                    },
                                    &mut du[at..],
                                    inner,
                                    true,
                                );
                            }
                        }
                    }
                });
            }
        });
    let total = sum_partials(partials, du_len);
    for o in 0..co {
        for c in 0..cig {
            let dk = &mut dw[(o * cig + c) * 25..][..25];
            for piece in 0..PIECES {
                let at = |xi: usize| total[(xi * co + o) * inner + piece * cig + c];
                let block: [f32; XI] = std::array::from_fn(at);
                add_piece_gradient(&block, piece / 2, piece % 2, dk);
            }
        }
    }
}

/// Input gradient `dx` (overwritten) from the output gradient `dy`: a 5x5,
/// stride-1, padding-2 convolution of `dy` with each kernel rotated by 180
/// degrees and the in/out channels swapped.
pub fn backward_data(
    g: &ConvGeometry,
    n: usize,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    buffers: &ConvBuffers,
) {
    with_input_gradient_kernels(g, w, buffers, |reversed, kernels, zero_bias| {
        forward(reversed, n, dy, kernels, zero_bias, dx, buffers, false);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 3x3 valid correlation of a 5x5 block with a 3x3 kernel, directly.
    fn direct(d: &[f32; XI], k: &[f32; 9]) -> [f32; 9] {
        std::array::from_fn(|o| {
            let (r, s) = (o / 3, o % 3);
            (0..9)
                .map(|t| d[(r + t / 3) * SIDE + s + t % 3] * k[t])
                .sum()
        })
    }

    #[test]
    fn one_block_equals_the_direct_sums() {
        let d: [f32; XI] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        let k: [f32; 9] = std::array::from_fn(|i| (i as f32 * 0.91).cos());
        let (v, u) = (transform_input(&d), transform_kernel(&k));
        let m: [f32; XI] = std::array::from_fn(|i| v[i] * u[i]);
        let y = transform_output(&m);
        for (got, want) in y.iter().zip(direct(&d, &k)) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn the_pieces_make_up_the_kernel() {
        let k: Vec<f32> = (0..25).map(|i| i as f32 + 1.0).collect();
        let mut seen = vec![0.0f32; 25];
        for piece in 0..PIECES {
            let p = kernel_piece(&k, piece / 2, piece % 2);
            for (tap, value) in p.iter().enumerate() {
                let (r, c) = (3 * (piece / 2) + tap / 3, 3 * (piece % 2) + tap % 3);
                if r < 5 && c < 5 {
                    seen[r * 5 + c] += value;
                } else {
                    assert_eq!(*value, 0.0);
                }
            }
        }
        assert_eq!(seen, k);
    }

    #[test]
    fn input_tiles_transform_every_block_of_the_grid() {
        // Two images of three 4x7 channels, group of channels 1..3: sides that
        // are not multiples of 3 leave the last blocks partly outside.
        let shape = Shape::new(3, 4, 7);
        let blocks = Blocks::new(&shape);
        let x: Vec<f32> = (0..2 * shape.len())
            .map(|i| (i as f32 * 0.13).sin())
            .collect();
        let width = 2 * blocks.per_image();
        let stride = blocks.stride(width);
        let channels = 1..3;
        let mut v = vec![f32::NAN; XI * channels.len() * stride];
        let mut scratch = vec![f32::NAN; blocks.input_scratch_len()];
        input_tiles(
            &shape,
            &blocks,
            channels.clone(),
            &x,
            &mut v,
            width,
            &mut scratch,
        );
        let plane = shape.height * shape.width;
        for i in 0..2 {
            for (c, channel) in channels.clone().enumerate() {
                for by in 0..blocks.gy {
                    for bx in 0..blocks.gx {
                        let d: [f32; XI] = std::array::from_fn(|k| {
                            let r = (3 * by + k / SIDE) as isize - 2;
                            let s = (3 * bx + k % SIDE) as isize - 2;
                            let inside = (0..shape.height as isize).contains(&r)
                                && (0..shape.width as isize).contains(&s);
                            if inside {
                                x[(i * 3 + channel) * plane + r as usize * shape.width + s as usize]
                            } else {
                                0.0
                            }
                        });
                        let column = i * blocks.per_image() + by * blocks.gx + bx;
                        for (xi, want) in transform_input(&d).iter().enumerate() {
                            let got = v[(xi * channels.len() + c) * stride + column];
                            assert!(
                                (got - want).abs() < 1e-6,
                                "image {i} channel {channel} block {by},{bx} xi {xi}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        for row in v.chunks_exact(stride) {
            assert!(row[width..].iter().all(|&value| value == 0.0));
        }
    }

    #[test]
    fn one_block_weight_gradient_equals_the_direct_sums() {
        // Gradient of sum(dy . y) for one 5x5 block d and piece (1, 0) of a 5x5
        // kernel: dk[3 + a][b] = sum dy[r][s] d[r + a][s + b] for rows 3 + a < 5.
        let d: [f32; XI] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        let dy: [f32; 9] = std::array::from_fn(|i| (i as f32 * 0.71).cos());
        let v = transform_input(&d);
        let dm = transform_output_gradient(&dy);
        let du: [f32; XI] = std::array::from_fn(|i| dm[i] * v[i]);
        let mut dk = [0.0f32; 25];
        add_piece_gradient(&du, 1, 0, &mut dk);
        for r in 0..5 {
            for c in 0..5 {
                let want = if (3..5).contains(&r) && c < 3 {
                    let (a, b) = (r - 3, c);
                    (0..9)
                        .map(|o| dy[o] * d[(o / 3 + a) * SIDE + o % 3 + b])
                        .sum()
                } else {
                    0.0
                };
                let got = dk[r * 5 + c];
                assert!((got - want).abs() < 1e-5, "{r},{c}: {got} vs {want}");
            }
        }
    }
}
