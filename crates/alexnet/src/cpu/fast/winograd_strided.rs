//! Strided convolutions whose kernel spans three strides (conv1 of the paper:
//! 11x11, stride 4) as 3x3 stride-1 convolutions on phase planes, computed by
//! Winograd F(2x2, 3x3) ([`super::winograd`]).
//!
//! With stride `s`, output `(i, j)` reads padded input `(s i + r, s j + q)` for
//! taps `(r, q)`. Writing `r = s a + py` and `q = s b + px`, it reads phase plane
//! `(py, px)` (every `s`-th value from `(py, px)`) at `(i + a, j + b)`: a
//! stride-1 correlation with a kernel of `ceil(k / s)` = 3 taps a side, whose
//! input channels are the `c * s * s` phase planes. The kernel is zero-padded
//! to `3s x 3s` (12x12 for conv1: 144 taps for 121, paid back by Winograd's
//! 2.25x fewer multiplies), and the 3x3 "valid" correlation is computed as a
//! padding-1 one on planes two larger, whose border outputs are dropped.
//!
//! For conv1 at 224x224 (padding 2): 48 phase planes of 57x57 per image, 96
//! outputs of 55x55 cropped from 57x57. The phase split and the crop copy each
//! value once; each thread takes an image at a time, so its buffers stay small.

use std::sync::Mutex;

use rayon::prelude::*;

use super::gemm::Products;
use super::scratch::with_staging;
use super::winograd;
use crate::layers::{ConvGeometry, Shape};

/// Phase-split inputs, the inner convolution's outputs (or output gradients)
/// and input gradients, its kernels and their gradient: kept between calls so
/// that they are allocated once.
static BUFFERS: Mutex<Vec<f32>> = Mutex::new(Vec::new());

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

/// The inverse of `split_phases` for gradients: `dx` (overwritten) from the
/// phase planes' gradient, dropping the values that fell in the padding. Input
/// values past the planes (rows or columns no output reads) get zero.
fn merge_phases(g: &ConvGeometry, inner: &ConvGeometry, planes: &[f32], dx: &mut [f32]) {
    let (s, pad) = (g.stride, g.pad);
    let (h, w) = (g.input.height, g.input.width);
    let (ph, pw) = (inner.input.height, inner.input.width);
    for (image, planes) in dx
        .chunks_exact_mut(g.input.len())
        .zip(planes.chunks_exact(inner.input.len()))
    {
        for c in 0..g.input.channels {
            let channel = &mut image[c * h * w..][..h * w];
            for (y, row) in channel.chunks_exact_mut(w).enumerate() {
                let (i, py) = ((y + pad) / s, (y + pad) % s);
                for (x, value) in row.iter_mut().enumerate() {
                    let (j, px) = ((x + pad) / s, (x + pad) % s);
                    let plane = phase_channel(g, c, py, px);
                    *value = if i < ph && j < pw {
                        planes[(plane * ph + i) * pw + j]
                    } else {
                        0.0
                    };
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

/// `dw += ` the gradient of `g`'s kernels from the inner kernels' gradient: the
/// adjoint of `split_kernels` (the padding taps' gradients are dropped).
fn add_merged_kernel_gradient(g: &ConvGeometry, inner_dw: &[f32], dw: &mut [f32]) {
    let (s, k) = (g.stride, g.kernel);
    let cig = g.in_per_group();
    let inner_cig = cig * s * s;
    for o in 0..g.output.channels {
        for c in 0..cig {
            let kernel = &mut dw[(o * cig + c) * k * k..][..k * k];
            for (tap, value) in kernel.iter_mut().enumerate() {
                let (r, q) = (tap / k, tap % k);
                let phase = phase_channel(g, c, r % s, q % s);
                let inner_tap = (r / s) * 3 + q / s;
                *value += inner_dw[(o * inner_cig + phase) * 9 + inner_tap];
            }
        }
    }
}

/// `buffer` cut into pieces of the given lengths (grown first if needed).
fn pieces<'a, const N: usize>(buffer: &'a mut Vec<f32>, lengths: [usize; N]) -> [&'a mut [f32]; N] {
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

/// The inner convolution's output gradient for one image: `dy` one in from a
/// zero border (the border outputs are not outputs of `g`).
fn pad_gradient(g: &ConvGeometry, inner: &ConvGeometry, dy: &[f32], inner_dy: &mut [f32]) {
    let (oh, ow) = (g.output.height, g.output.width);
    let pw = inner.output.width;
    inner_dy.fill(0.0);
    for (dst, src) in inner_dy
        .chunks_exact_mut(inner.out_plane())
        .zip(dy.chunks_exact(oh * ow))
    {
        for (i, row) in src.chunks_exact(ow).enumerate() {
            dst[(i + 1) * pw + 1..][..ow].copy_from_slice(row);
        }
    }
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
    products: Products,
) {
    assert!(applies(g));
    let inner = inner(g);
    let mut buffer = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    let [inner_w, u] = pieces(
        &mut buffer,
        [inner.weight_len(), winograd::transformed_len(&inner)],
    );
    split_kernels(g, w, inner_w);
    winograd::transform_kernels(&inner, inner_w, u);
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
                winograd::forward_images(&inner, planes, u, b, inner_y, products);
                // The padding-1 outputs one in from the border are the valid ones.
                for (dst, src) in y
                    .chunks_exact_mut(oh * ow)
                    .zip(inner_y.chunks_exact(inner.out_plane()))
                {
                    for (i, row) in dst.chunks_exact_mut(ow).enumerate() {
                        row.copy_from_slice(&src[(i + 1) * pw + 1..][..ow]);
                    }
                }
            });
        });
}

/// Adds the weight gradient of the first `n` images into `dw` (not the
/// bias's), and writes the input gradient into `dx` when asked for. The weight
/// gradient is summed in one partial per thread (contiguous images), added in a
/// fixed order, so results do not depend on scheduling.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &ConvGeometry,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dx: Option<&mut [f32]>,
    products: Products,
) {
    assert!(applies(g));
    let inner = inner(g);
    let (il, ol) = (g.input.len(), g.output.len());
    let parts = rayon::current_num_threads().min(n).max(1);
    let per_part = n.div_ceil(parts);
    let parts = n.div_ceil(per_part);
    let du_len = winograd::transformed_len(&inner);
    let mut buffer = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    let [inner_w, inner_dw, u, partials] = pieces(
        &mut buffer,
        [
            inner.weight_len(),
            inner.weight_len(),
            du_len,
            parts * du_len,
        ],
    );
    let staged = inner.input.len() + 2 * inner.output.len();
    partials
        .par_chunks_exact_mut(du_len)
        .zip(x[..n * il].par_chunks(per_part * il))
        .zip(dy[..n * ol].par_chunks(per_part * ol))
        .for_each(|((du, x), dy)| {
            du.fill(0.0);
            for (x, dy) in x.chunks_exact(il).zip(dy.chunks_exact(ol)) {
                with_staging(staged, |staging| {
                    let (planes, inner_dy) = staging.split_at_mut(inner.input.len());
                    let inner_dy = &mut inner_dy[..inner.output.len()];
                    split_phases(g, &inner, x, planes);
                    pad_gradient(g, &inner, dy, inner_dy);
                    winograd::add_transformed_weight_gradient(
                        &inner, planes, inner_dy, du, products,
                    );
                });
            }
        });
    let (total, rest) = partials.split_at_mut(du_len);
    for partial in rest.chunks_exact(du_len) {
        total.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
    }
    inner_dw.fill(0.0);
    winograd::add_weight_gradient(&inner, total, inner_dw);
    add_merged_kernel_gradient(g, inner_dw, dw);

    let Some(dx) = dx else { return };
    // The input gradient: the inner convolution's (a forward pass with its
    // kernels rotated), merged back from the phase planes.
    split_kernels(g, w, inner_w);
    winograd::with_input_gradient_kernels(&inner, inner_w, |reversed, kernels, zero_bias| {
        winograd::transform_kernels(reversed, kernels, u);
        let u = &*u;
        dy[..n * ol]
            .par_chunks(ol)
            .zip(dx[..n * il].par_chunks_mut(il))
            .for_each(|(dy, dx)| {
                with_staging(staged, |staging| {
                    let (inner_dy, inner_dx) = staging.split_at_mut(inner.output.len());
                    let inner_dx = &mut inner_dx[..inner.input.len()];
                    pad_gradient(g, &inner, dy, inner_dy);
                    winograd::forward_images(reversed, inner_dy, u, zero_bias, inner_dx, products);
                    merge_phases(g, &inner, inner_dx, dx);
                });
            });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv1_like() -> ConvGeometry {
        // 3 channels of 17x19, kernel 7, stride 3, padding 2: ceil(7 / 3) = 3.
        let side = |s| ConvGeometry::output_side(s, 7, 3, 2).unwrap();
        ConvGeometry {
            input: Shape::new(3, 17, 19),
            output: Shape::new(4, side(17), side(19)),
            kernel: 7,
            stride: 3,
            pad: 2,
            groups: 1,
        }
    }

    #[test]
    fn phases_split_and_merge_back() {
        let g = conv1_like();
        let inner = inner(&g);
        let x: Vec<f32> = (0..2 * g.input.len()).map(|i| i as f32 + 1.0).collect();
        let mut planes = vec![f32::NAN; 2 * inner.input.len()];
        split_phases(&g, &inner, &x, &mut planes);
        // Every input value appears once; the rest is padding.
        assert_eq!(planes.iter().filter(|&&v| v != 0.0).count(), x.len());
        let mut back = vec![f32::NAN; x.len()];
        merge_phases(&g, &inner, &planes, &mut back);
        assert_eq!(back, x);
    }

    #[test]
    fn kernels_split_and_gradients_merge_as_adjoints() {
        // <split(w), v> = <w, merge(v)> for any w and v.
        let g = conv1_like();
        let inner = inner(&g);
        let w: Vec<f32> = (0..g.weight_len())
            .map(|i| (i as f32 * 0.3).sin())
            .collect();
        let v: Vec<f32> = (0..inner.weight_len())
            .map(|i| (i as f32 * 0.7).cos())
            .collect();
        let mut split = vec![f32::NAN; inner.weight_len()];
        split_kernels(&g, &w, &mut split);
        let mut merged = vec![0.0f32; g.weight_len()];
        add_merged_kernel_gradient(&g, &v, &mut merged);
        let left: f64 = split.iter().zip(&v).map(|(a, b)| (a * b) as f64).sum();
        let right: f64 = w.iter().zip(&merged).map(|(a, b)| (a * b) as f64).sum();
        assert!((left - right).abs() < 1e-4, "{left} vs {right}");
    }
}
