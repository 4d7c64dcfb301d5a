//! Strided convolutions whose kernel spans three strides (conv1 of the paper:
//! 11x11, stride 4) as 3x3 stride-1 convolutions on phase planes, computed by
//! Winograd F(4x4, 3x3) ([`super::winograd_4x4`]).
//!
//! With stride `s`, output `(i, j)` reads padded input `(s i + r, s j + q)` for
//! taps `(r, q)`. Writing `r = s a + py` and `q = s b + px`, it reads phase plane
//! `(py, px)` (every `s`-th value from `(py, px)`) at `(i + a, j + b)`: a
//! stride-1 correlation with a kernel of `ceil(k / s)` = 3 taps a side, whose
//! input channels are the `c * s * s` phase planes. The kernel is zero-padded
//! to `3s x 3s` (12x12 for conv1: 144 taps for 121, paid back by Winograd's
//! 4x fewer multiplies), and the 3x3 "valid" correlation is computed as a
//! padding-1 one on planes two larger, whose border outputs are dropped.
//!
//! For conv1 at 224x224 (padding 2): 48 phase planes of 57x57 per image, 96
//! outputs of 55x55 cropped from 57x57. The phase split and the crop copy each
//! value once; each thread takes an image at a time, so its buffers stay small.
//!
//! In f32 only. The weight gradient goes the same route where no input
//! gradient is wanted (conv1): by F(2x2, 3x3) it was slower than im2col (the
//! transforms of 96 gradient planes and 48 phase planes per image outweighed
//! the multiplies saved), by F(4x4, 3x3) it is about 10% faster
//! (BENCHMARKS.md). An input gradient, and bf16 mode, keep im2col.

use rayon::prelude::*;

use super::buffers::{ConvBuffers, lock};
use super::elementwise;
use super::scratch::with_staging;
use super::winograd_4x4::F4;
use super::winograd_driver::sum_partials;
use crate::layers::{ConvGeometry, Shape};
use crate::precision::Products;

/// Taps a side of the inner convolution.
const INNER_KERNEL: usize = 3;

/// Whether a convolution can take this path: stride above 1 with a kernel
/// spanning three strides (`ceil(k / s) == 3`).
pub fn applies(g: &ConvGeometry) -> bool {
    g.stride > 1 && g.kernel.div_ceil(g.stride) == INNER_KERNEL
}

/// The stride-1, padding-1 3x3 convolution on the phase planes.
fn inner(g: &ConvGeometry) -> ConvGeometry {
    let s = g.stride;
    let side = |out: usize| out + INNER_KERNEL - 1;
    let planes = Shape::new(
        g.input.channels * s * s,
        side(g.output.height),
        side(g.output.width),
    );
    ConvGeometry {
        input: planes,
        output: Shape::new(g.output.channels, planes.height, planes.width),
        kernel: INNER_KERNEL,
        stride: 1,
        pad: 1,
        groups: g.groups,
    }
}

/// Input channel `c` of `g` at phase `(py, px)`: its channel in the phase planes.
fn phase_channel(g: &ConvGeometry, c: usize, py: usize, px: usize) -> usize {
    (c * g.stride + py) * g.stride + px
}

/// Splits images `x` of `g` into the phase planes `planes` of `inner`:
/// `planes[phase (c, py, px)][i][j] = x[c][s i + py - pad][s j + px - pad]`,
/// zero where that is outside the image.
fn split_phases(g: &ConvGeometry, inner: &ConvGeometry, x: &[f32], planes: &mut [f32]) {
    let (s, pad) = (g.stride, g.pad);
    let (h, w) = (g.input.height, g.input.width);
    let (ph, pw) = (inner.input.height, inner.input.width);
    for (image, planes) in x
        .chunks_exact(g.input.len())
        .zip(planes.chunks_exact_mut(inner.input.len()))
    {
        for c in 0..g.input.channels {
            let channel = &image[c * h * w..][..h * w];
            for py in 0..s {
                for px in 0..s {
                    let plane = &mut planes[phase_channel(g, c, py, px) * ph * pw..][..ph * pw];
                    for (i, row) in plane.chunks_exact_mut(pw).enumerate() {
                        let y = (s * i + py).wrapping_sub(pad);
                        if y >= h {
                            row.fill(0.0);
                            continue;
                        }
                        let src = &channel[y * w..][..w];
                        for (j, value) in row.iter_mut().enumerate() {
                            let x = (s * j + px).wrapping_sub(pad);
                            *value = if x < w { src[x] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// The inner convolution's kernels from `g`'s: tap `(a, b)` of phase
/// `(c, py, px)` is tap `(s a + py, s b + px)` of channel `c`, zero past the kernel.
fn split_kernels(g: &ConvGeometry, w: &[f32], inner_w: &mut [f32]) {
    let (s, k) = (g.stride, g.kernel);
    let cig = g.in_per_group();
    let inner_cig = cig * s * s;
    for o in 0..g.output.channels {
        for c in 0..cig {
            let kernel = &w[(o * cig + c) * k * k..][..k * k];
            for py in 0..s {
                for px in 0..s {
                    let at = (o * inner_cig + phase_channel(g, c, py, px)) * 9;
                    for (tap, value) in inner_w[at..][..9].iter_mut().enumerate() {
                        let (r, q) = (s * (tap / 3) + py, s * (tap % 3) + px);
                        *value = if r < k && q < k {
                            kernel[r * k + q]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// `buffer` cut into pieces of the given lengths (grown first if needed).
fn pieces<const N: usize>(buffer: &mut Vec<f32>, lengths: [usize; N]) -> [&mut [f32]; N] {
    let total: usize = lengths.iter().sum();
    if buffer.len() < total {
        buffer.resize(total, 0.0);
    }
    let mut rest = &mut buffer[..total];
    lengths.map(|len| {
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        piece
    })
}

/// Forward pass: `y = conv(x, w) + b` for the first `n` images, an image at a
/// time on each thread.
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
    assert!(applies(g));
    let inner = inner(g);
    // The inner convolution's kernels and their transforms.
    let mut buffer = lock(&buffers.strided);
    let [inner_w, u] = pieces(
        &mut buffer,
        [inner.weight_len(), F4.transformed_len(&inner)],
    );
    split_kernels(g, w, inner_w);
    F4.transform_kernels(&inner, inner_w, u);
    let u = &*u;
    let (il, ol) = (g.input.len(), g.output.len());
    let (oh, ow) = (g.output.height, g.output.width);
    let pw = inner.output.width;
    x[..n * il]
        .par_chunks(il)
        .zip(y[..n * ol].par_chunks_mut(ol))
        .for_each(|(x, y)| {
            with_staging(inner.input.len() + inner.output.len(), |staging| {
                let (planes, inner_y) = staging.split_at_mut(inner.input.len());
                split_phases(g, &inner, x, planes);
                // f32 products (the default).
                F4.forward_images(&inner, planes, u, b, inner_y, Products::default());
                // The padding-1 outputs one in from the border are the valid ones.
                for (dst, src) in y
                    .chunks_exact_mut(oh * ow)
                    .zip(inner_y.chunks_exact(inner.out_plane()))
                {
                    for (i, row) in dst.chunks_exact_mut(ow).enumerate() {
                        row.copy_from_slice(&src[(i + 1) * pw + 1..][..ow]);
                    }
                }
                if rectify {
                    elementwise::rectify(y);
                }
            });
        });
}

/// Adds the weight gradient of the first `n` images into `dw` (not the bias's):
/// the inner convolution's, by F(4x4, 3x3) on the phase planes, folded back
/// onto the strided kernels. Each thread sums the Winograd-domain gradients of
/// its contiguous part of the batch, an image at a time, into its own partial;
/// the partials are added in a fixed order, so results do not depend on
/// scheduling.
pub fn backward_weights(
    g: &ConvGeometry,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    buffers: &ConvBuffers,
) {
    assert!(applies(g));
    let inner = inner(g);
    let (il, ol) = (g.input.len(), g.output.len());
    let (oh, ow) = (g.output.height, g.output.width);
    let pw = inner.output.width;
    let parts = rayon::current_num_threads().min(n).max(1);
    let per_part = n.div_ceil(parts);
    let parts = n.div_ceil(per_part);
    let du_len = F4.transformed_len(&inner);
    let mut buffer = lock(&buffers.strided);
    let [partials, inner_dw] = pieces(&mut buffer, [parts * du_len, inner.weight_len()]);
    partials
        .par_chunks_exact_mut(du_len)
        .zip(x[..n * il].par_chunks(per_part * il))
        .zip(dy[..n * ol].par_chunks(per_part * ol))
        .for_each(|((du, x), dy)| {
            du.fill(0.0);
            for (x, dy) in x.chunks_exact(il).zip(dy.chunks_exact(ol)) {
                with_staging(inner.input.len() + inner.output.len(), |staging| {
                    let (planes, inner_dy) = staging.split_at_mut(inner.input.len());
                    split_phases(g, &inner, x, planes);
                    // The gradient of the inner outputs: `dy` one in from the
                    // border, zero on the cropped border.
                    inner_dy.fill(0.0);
                    for (dst, src) in inner_dy
                        .chunks_exact_mut(inner.out_plane())
                        .zip(dy.chunks_exact(oh * ow))
                    {
                        for (i, row) in src.chunks_exact(ow).enumerate() {
                            dst[(i + 1) * pw + 1..][..ow].copy_from_slice(row);
                        }
                    }
                    F4.add_transformed_weight_gradient(
                        &inner,
                        planes,
                        inner_dy,
                        du,
                        Products::default(),
                    );
                });
            }
        });
    inner_dw.fill(0.0);
    F4.add_weight_gradient(&inner, sum_partials(partials, du_len), inner_dw);
    merge_kernels(g, inner_dw, dw);
}

/// Adds the inner convolution's kernel gradients into `g`'s: the adjoint of
/// `split_kernels` (taps past the kernel are dropped).
fn merge_kernels(g: &ConvGeometry, inner_dw: &[f32], dw: &mut [f32]) {
    let (s, k) = (g.stride, g.kernel);
    let cig = g.in_per_group();
    let inner_cig = cig * s * s;
    for o in 0..g.output.channels {
        for c in 0..cig {
            let kernel = &mut dw[(o * cig + c) * k * k..][..k * k];
            for py in 0..s {
                for px in 0..s {
                    let at = (o * inner_cig + phase_channel(g, c, py, px)) * 9;
                    for (tap, value) in inner_dw[at..][..9].iter().enumerate() {
                        let (r, q) = (s * (tap / 3) + py, s * (tap % 3) + px);
                        if r < k && q < k {
                            kernel[r * k + q] += value;
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

    fn conv1_like() -> ConvGeometry {
        // 3 channels of 17x19, kernel 7, stride 3, padding 2: ceil(7 / 3) = 3.
        ConvGeometry::new(Shape::new(3, 17, 19), 4, 7, 3, 2, 1).expect("the kernel fits")
    }

    #[test]
    fn every_input_value_lands_in_its_phase_plane() {
        let g = conv1_like();
        let inner = inner(&g);
        let x: Vec<f32> = (0..2 * g.input.len()).map(|i| i as f32 + 1.0).collect();
        let mut planes = vec![f32::NAN; 2 * inner.input.len()];
        split_phases(&g, &inner, &x, &mut planes);
        let (ph, pw) = (inner.input.height, inner.input.width);
        for (image, planes) in x
            .chunks_exact(g.input.len())
            .zip(planes.chunks_exact(inner.input.len()))
        {
            for c in 0..g.input.channels {
                for y in 0..g.input.height {
                    for x_ in 0..g.input.width {
                        let (r, q) = (y + g.pad, x_ + g.pad);
                        let plane = phase_channel(&g, c, r % g.stride, q % g.stride);
                        let at = (plane * ph + r / g.stride) * pw + q / g.stride;
                        let want = image[(c * g.input.height + y) * g.input.width + x_];
                        assert_eq!(planes[at], want, "channel {c} at {y},{x_}");
                    }
                }
            }
        }
        // Nothing else: every other value is padding.
        let nonzero = planes.iter().filter(|&&v| v != 0.0).count();
        assert_eq!(nonzero, x.len());
    }
}
