//! 3x3 convolutions with stride 1 and padding 1 by Winograd's F(4x4, 3x3)
//! (Lavin & Gray, 2016), in f32: the phase-plane convolution of conv1
//! ([`super::winograd_strided`]), forward and weight gradient.
//!
//! As [`super::winograd`]'s F(2x2, 3x3), with 4x4 output blocks from 6x6 input
//! blocks: 36 multiplies per 16 outputs instead of 16 per 4, 4x fewer than a
//! direct sum rather than 2.25x. On conv1's 57x57 phase planes (15x15 blocks)
//! that took its forward pass from 73-80 to 55-60 ms at batch 64. On the 13x13
//! planes of conv3-5, whose 4x4 blocks reach 16x16, its transforms cost more
//! than the products saved (conv3-5 forward 155 -> 229 ms), so they keep
//! F(2x2, 3x3). Its transforms have larger coefficients (up to 8, and 1/24 in
//! the kernels'), so its rounding error is a few times F(2x2, 3x3)'s: fine in
//! f32, not with operands rounded to bf16.
//!
//! Points 0, +-1, +-2 and infinity:
//! `B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
//!         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]`,
//! `G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
//!       [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]]`,
//! `A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]`.

use super::lanes::{lanes, lanewise};
use super::winograd_driver::Tiling;
use crate::layers::Shape;

/// Positions in a 6x6 Winograd-domain block.
const XI: usize = 36;
/// Input values per block side.
const SIDE: usize = 6;
/// Outputs per block side.
const OUT: usize = 4;
/// Blocks transformed side by side by `output_tiles`.
const LANES: usize = 8;

/// `B^T d` for one column (or row) of six input values.
#[inline(always)]
fn input_transform([d0, d1, d2, d3, d4, d5]: [f32; SIDE]) -> [f32; SIDE] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        d3 + d4 - 4.0 * (d1 + d2),
        4.0 * (d1 - d2) - d3 + d4,
        2.0 * (d3 - d1) - d2 + d4,
        2.0 * (d1 - d3) - d2 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `G k` for one column (or row) of three kernel taps.
#[inline(always)]
fn kernel_transform([k0, k1, k2]: [f32; 3]) -> [f32; SIDE] {
    const SIXTH: f32 = 1.0 / 6.0;
    const TWELFTH: f32 = 1.0 / 12.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    [
        0.25 * k0,
        -SIXTH * (k0 + k1 + k2),
        -SIXTH * (k0 - k1 + k2),
        TWENTY_FOURTH * k0 + TWELFTH * k1 + SIXTH * k2,
        TWENTY_FOURTH * k0 - TWELFTH * k1 + SIXTH * k2,
        k2,
    ]
}

/// `A^T m` for one column (or row) of six products.
#[inline(always)]
fn output_transform([m0, m1, m2, m3, m4, m5]: [f32; SIDE]) -> [f32; OUT] {
    let (sum12, diff12, sum34, diff34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + sum12 + sum34,
        diff12 + 2.0 * diff34,
        sum12 + 4.0 * sum34,
        diff12 + 8.0 * diff34 + m5,
    ]
}

/// `A g` for one column (or row) of four output gradients: the adjoint of
/// `output_transform`, which maps a 4x4 block of output gradients to the
/// gradients of its 6x6 products.
#[inline(always)]
fn output_gradient_transform([g0, g1, g2, g3]: [f32; OUT]) -> [f32; SIDE] {
    let (even, odd) = (g0 + g2, g1 + g3);
    let (even4, odd2) = (g0 + 4.0 * g2, 2.0 * g1 + 8.0 * g3);
    [g0, even + odd, even - odd, even4 + odd2, even4 - odd2, g3]
}

/// `G^T u` for one column (or row) of six Winograd-domain kernel gradients: the
/// adjoint of `kernel_transform`.
#[inline(always)]
fn kernel_gradient_transform([u0, u1, u2, u3, u4, u5]: [f32; SIDE]) -> [f32; 3] {
    const SIXTH: f32 = 1.0 / 6.0;
    const TWELFTH: f32 = 1.0 / 12.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    [
        0.25 * u0 - SIXTH * (u1 + u2) + TWENTY_FOURTH * (u3 + u4),
        SIXTH * (u2 - u1) + TWELFTH * (u3 - u4),
        SIXTH * (u3 + u4 - u1 - u2) + u5,
    ]
}

/// F(4x4, 3x3) for the shared skeleton (`winograd_driver`).
pub(super) const F4: Tiling = Tiling {
    out: OUT,
    xi: XI,
    lanes: LANES,
    grad_rows: SIDE + OUT,
    transform_kernel: |k, u| u.copy_from_slice(&transform_kernel(k)),
    kernel_gradient: add_kernel_gradient,
    padded_len,
    input_tiles,
    output_tiles,
    output_grad_tiles,
};

/// `dk += G^T dU G` for one kernel from its 6x6 domain block `du`: `s = G^T dU`
/// (3x6) column by column, then `s G` (3x3) row by row.
fn add_kernel_gradient(du: &[f32], dk: &mut [f32]) {
    let mut s = [[0.0f32; SIDE]; 3];
    for col in 0..SIDE {
        let column = std::array::from_fn(|r| du[r * SIDE + col]);
        for (r, value) in kernel_gradient_transform(column).into_iter().enumerate() {
            s[r][col] = value;
        }
    }
    for (r, row) in s.into_iter().enumerate() {
        for (q, value) in kernel_gradient_transform(row).into_iter().enumerate() {
            dk[r * 3 + q] += value;
        }
    }
}

/// `U = G k G^T` for one 3x3 kernel.
fn transform_kernel(k: &[f32; 9]) -> [f32; XI] {
    // Columns first: t = G k (6x3).
    let mut t = [[0.0f32; 3]; SIDE];
    for c in 0..3 {
        for (r, value) in kernel_transform([k[c], k[3 + c], k[6 + c]])
            .into_iter()
            .enumerate()
        {
            t[r][c] = value;
        }
    }
    // Then rows: U = t G^T (6x6).
    let mut u = [0.0f32; XI];
    for (r, row) in t.iter().enumerate() {
        u[r * SIDE..][..SIDE].copy_from_slice(&kernel_transform(*row));
    }
    u
}

/// Scratch values `input_tiles` needs for a plane of this shape: the padded
/// plane, then six rows of column transforms.
fn padded_len(shape: &Shape) -> usize {
    let (ty, tx) = F4.tiles(shape);
    let pw = OUT * tx + 2;
    (OUT * ty + 2) * pw + SIDE * pw
}

/// Transforms every 6x6 input block (4 apart, starting one row and column
/// before the plane: the padding) of the images in `x` into
/// `v[xi][channel][tile]`, tiles of image `i` at columns `i * tiles..`, `width`
/// columns in all. As `winograd::input_tiles`: each plane is copied into a
/// zero-bordered one, then per row of blocks `B^T d` runs along whole rows and
/// `(.) B` per block.
fn input_tiles(shape: &Shape, x: &[f32], v: &mut [f32], width: usize, pad: &mut [f32]) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = F4.tiles(shape);
    let pw = OUT * tx + 2;
    let (padded, rows) = pad.split_at_mut((OUT * ty + 2) * pw);
    let rows = &mut rows[..SIDE * pw];
    padded.fill(0.0);
    let count = x.len() / (shape.channels * plane);
    for i in 0..count {
        for c in 0..shape.channels {
            let src = &x[(i * shape.channels + c) * plane..][..plane];
            for (r, row) in src.chunks_exact(wd).enumerate() {
                padded[(r + 1) * pw + 1..][..wd].copy_from_slice(row);
            }
            for by in 0..ty {
                let d = &padded[OUT * by * pw..][..SIDE * pw];
                for j in 0..pw {
                    let column = input_transform(std::array::from_fn(|r| d[r * pw + j]));
                    for (r, value) in column.into_iter().enumerate() {
                        rows[r * pw + j] = value;
                    }
                }
                let first = i * ty * tx + by * tx;
                for (r, t) in rows.chunks_exact(pw).enumerate() {
                    for bx in 0..tx {
                        let block = input_transform(t[OUT * bx..][..SIDE].try_into().expect("6"));
                        for (q, value) in block.into_iter().enumerate() {
                            v[((r * SIDE + q) * shape.channels + c) * width + first + bx] = value;
                        }
                    }
                }
            }
        }
    }
}

/// Transforms the products back into 4x4 output blocks, adds the bias, and
/// writes the blocks' parts inside the plane into `y`, `LANES` blocks of a row
/// at a time. `m` holds `LANES` values past its `36 * channels * width`
/// products (read, never used).
fn output_tiles(shape: &Shape, m: &[f32], bias: &[f32], y: &mut [f32], width: usize) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = F4.tiles(shape);
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
                    let mut t = [[[0.0f32; LANES]; SIDE]; OUT];
                    for c in 0..SIDE {
                        let column: [&[f32; LANES]; SIDE] =
                            std::array::from_fn(|r| block[r * SIDE + c]);
                        let out = lanewise(column, output_transform);
                        for r in 0..OUT {
                            t[r][c] = out[r];
                        }
                    }
                    let blocks = LANES.min(tx - first);
                    for (r, t_row) in t.iter().enumerate() {
                        let y_row = by * OUT + r;
                        if y_row >= h {
                            break;
                        }
                        let values = lanewise(std::array::from_fn(|c| &t_row[c]), output_transform);
                        let dst_row = &mut dst[y_row * wd..][..wd];
                        for lane in 0..blocks {
                            let col = (first + lane) * OUT;
                            for (k, value) in values.iter().enumerate() {
                                if col + k < wd {
                                    dst_row[col + k] = value[lane] + bias;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dm[xi][channel][tile]` = `A dY A^T` for every 4x4 block of output
/// gradients (zero outside the plane) of the images in `dy`, laid out as
/// `input_tiles` lays out its blocks. `rows` is scratch of `(6 + 4) * 4 * tx` values.
fn output_grad_tiles(shape: &Shape, dy: &[f32], dm: &mut [f32], width: usize, rows: &mut [f32]) {
    let (h, wd) = (shape.height, shape.width);
    let plane = h * wd;
    let (ty, tx) = F4.tiles(shape);
    let pw = OUT * tx;
    let (rows, band) = rows[..(SIDE + OUT) * pw].split_at_mut(SIDE * pw);
    // The block row's four gradient rows, zero past the plane's right edge
    // (written once) and bottom edge.
    band.fill(0.0);
    let count = dy.len() / (shape.channels * plane);
    for i in 0..count {
        for o in 0..shape.channels {
            let src = &dy[(i * shape.channels + o) * plane..][..plane];
            for by in 0..ty {
                for (r, row) in band.chunks_exact_mut(pw).enumerate() {
                    let y = OUT * by + r;
                    if y < h {
                        row[..wd].copy_from_slice(&src[y * wd..][..wd]);
                    } else {
                        row[..wd].fill(0.0);
                    }
                }
                // Columns first, along whole rows.
                for j in 0..pw {
                    let column =
                        output_gradient_transform(std::array::from_fn(|r| band[r * pw + j]));
                    for (r, v) in column.into_iter().enumerate() {
                        rows[r * pw + j] = v;
                    }
                }
                let first = i * ty * tx + by * tx;
                for (r, t) in rows.chunks_exact(pw).enumerate() {
                    for bx in 0..tx {
                        let block =
                            output_gradient_transform(t[OUT * bx..][..OUT].try_into().expect("4"));
                        for (q, v) in block.into_iter().enumerate() {
                            dm[((r * SIDE + q) * shape.channels + o) * width + first + bx] = v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::ConvGeometry;

    /// `B^T d B` for one 6x6 block, by columns then rows.
    fn transform_block(d: &[f32; XI]) -> [f32; XI] {
        let mut t = [0.0f32; XI];
        for c in 0..SIDE {
            let column = input_transform(std::array::from_fn(|r| d[r * SIDE + c]));
            for r in 0..SIDE {
                t[r * SIDE + c] = column[r];
            }
        }
        let mut v = [0.0f32; XI];
        for r in 0..SIDE {
            v[r * SIDE..][..SIDE]
                .copy_from_slice(&input_transform(t[r * SIDE..][..SIDE].try_into().unwrap()));
        }
        v
    }

    #[test]
    fn one_block_gives_the_direct_weight_gradient() {
        // dW[ky][kx] = sum over the 4x4 outputs of dY[r][q] d[r + ky][q + kx].
        let d: [f32; XI] = std::array::from_fn(|i| (i as f32 * 0.53).cos());
        let dy: [f32; 16] = std::array::from_fn(|i| (i as f32 * 0.29).sin());
        let v = transform_block(&d);
        // dM = A dY A^T, by columns then rows.
        let mut t = [[0.0f32; OUT]; SIDE];
        for c in 0..OUT {
            let column = output_gradient_transform(std::array::from_fn(|r| dy[r * OUT + c]));
            for r in 0..SIDE {
                t[r][c] = column[r];
            }
        }
        let dm: Vec<f32> = t
            .iter()
            .flat_map(|row| output_gradient_transform(*row))
            .collect();
        let du: Vec<f32> = dm.iter().zip(&v).map(|(m, v)| m * v).collect();
        let g = ConvGeometry::new(Shape::new(1, 4, 4), 1, 3, 1, 1, 1).expect("3x3");
        let mut dw = [0.5f32; 9];
        F4.add_weight_gradient(&g, &du, &mut dw);
        for ky in 0..3 {
            for kx in 0..3 {
                let mut direct = 0.5f32;
                for r in 0..OUT {
                    for q in 0..OUT {
                        direct += dy[r * OUT + q] * d[(r + ky) * SIDE + q + kx];
                    }
                }
                let ours = dw[ky * 3 + kx];
                assert!(
                    (ours - direct).abs() < 1e-5,
                    "tap {ky},{kx}: {ours} against {direct}"
                );
            }
        }
    }

    #[test]
    fn one_block_equals_the_direct_sums() {
        // A 6x6 input block and a 3x3 kernel: the 4x4 valid correlation, directly.
        let d: [f32; XI] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        let k: [f32; 9] = std::array::from_fn(|i| (i as f32 * 0.91).cos());
        let u = transform_kernel(&k);
        let v = transform_block(&d);
        let m: [f32; XI] = std::array::from_fn(|i| v[i] * u[i]);
        // Y = A^T m A.
        let mut s = [[0.0f32; SIDE]; OUT];
        for c in 0..SIDE {
            let column = output_transform(std::array::from_fn(|r| m[r * SIDE + c]));
            for r in 0..OUT {
                s[r][c] = column[r];
            }
        }
        for r in 0..OUT {
            let row = output_transform(s[r]);
            for q in 0..OUT {
                let mut direct = 0.0f32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        direct += d[(r + ky) * SIDE + q + kx] * k[ky * 3 + kx];
                    }
                }
                assert!(
                    (row[q] - direct).abs() < 1e-5,
                    "output {r},{q}: {} against {direct}",
                    row[q]
                );
            }
        }
    }
}
