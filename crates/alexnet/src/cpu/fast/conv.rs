//! Convolution as im2col + GEMM, one image per thread.
//!
//! For each image and group, the input patches are unfolded into a matrix `col`
//! of `patch_len x out_plane` (one row per input channel and kernel tap), so that
//! the group's output is `W_g [out_per_group x patch_len] * col`. Backward reuses
//! the same unfolding: `dW_g += dY_g * col^T` and `dcol = W_g^T * dY_g`, folded back
//! into the input gradient (col2im).

use rayon::prelude::*;
use std::ops::Range;

use super::buffers::{ConvBuffers, lock};
use super::elementwise;
use super::gemm::{Layout, matmul};
use super::scratch::with_scratch;
use super::{winograd, winograd_5x5, winograd_strided};
use crate::layers::ConvGeometry;
use crate::precision::{Precision, Products};

/// The output columns `ox` whose tap `kx` lands inside the input row (not in padding).
fn valid_columns(g: &ConvGeometry, kx: usize) -> Range<usize> {
    let (s, p, ow, iw) = (g.stride, g.pad, g.output.width, g.input.width);
    let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 }.min(ow);
    let hi = if iw + p > kx {
        ((iw + p - kx - 1) / s + 1).min(ow)
    } else {
        0
    };
    lo..hi.max(lo)
}

/// The input row that output row `oy` reads for tap `ky`, if it is not padding.
fn input_row(g: &ConvGeometry, oy: usize, ky: usize) -> Option<usize> {
    let row = (oy * g.stride + ky).checked_sub(g.pad)?;
    (row < g.input.height).then_some(row)
}

/// Unfolds one group of one image into `col` (`patch_len` rows, `row_stride` apart,
/// of `out_plane` values each). A stride wider than the plane leaves room for other
/// images' columns beside this one's.
fn im2col(g: &ConvGeometry, image: &[f32], group: usize, col: &mut [f32], row_stride: usize) {
    im2col_rows(g, image, group, 0..g.output.height, col, row_stride);
}

/// Unfolds only the output rows `rows` (`patch_len` rows of `rows.len() * out_width`
/// values, `row_stride` apart).
fn im2col_rows(
    g: &ConvGeometry,
    image: &[f32],
    group: usize,
    rows: Range<usize>,
    col: &mut [f32],
    row_stride: usize,
) {
    let (k, s, ow) = (g.kernel, g.stride, g.output.width);
    let in_plane = g.input.height * g.input.width;
    let ci = g.in_per_group();
    let width = rows.len() * ow;
    if s > 1 && s * phase_len(g) <= MAX_PHASES {
        return im2col_rows_strided(g, image, group, rows, col, row_stride);
    }
    for c in 0..ci {
        let plane = &image[(group * ci + c) * in_plane..][..in_plane];
        for ky in 0..k {
            for kx in 0..k {
                let cols = valid_columns(g, kx);
                let row = &mut col[((c * k + ky) * k + kx) * row_stride..][..width];
                for (r, oy) in rows.clone().enumerate() {
                    let out = &mut row[r * ow..][..ow];
                    let Some(iy) = input_row(g, oy, ky) else {
                        out.fill(0.0);
                        continue;
                    };
                    out[..cols.start].fill(0.0);
                    out[cols.end..].fill(0.0);
                    // Input column of output column `ox` is `ox * s + kx - pad`.
                    let src = &plane[iy * g.input.width..][..g.input.width];
                    if s == 1 {
                        let first = cols.start + kx - g.pad;
                        out[cols.clone()].copy_from_slice(&src[first..first + cols.len()]);
                    } else {
                        for ox in cols.clone() {
                            out[ox] = src[ox * s + kx - g.pad];
                        }
                    }
                }
            }
        }
    }
}

/// Values of one phase of a padded input row (see `im2col_rows_strided`).
fn phase_len(g: &ConvGeometry) -> usize {
    g.output.width + (g.kernel - 1) / g.stride + 1
}

/// Phases of one row kept on the stack: enough for conv1 of the paper (4 x 59).
const MAX_PHASES: usize = 1024;

/// `im2col_rows` for strides above 1 (conv1 of the paper: 11x11, stride 4).
///
/// Output column `ox` of tap `kx` reads the padded input row at `ox * s + kx`.
/// Splitting the padded row into its `s` phases (`phase_q[j] = row[j * s + q]`)
/// turns that strided gather into a contiguous copy:
/// `phase_{kx mod s}[ox + kx div s]`, one split per input row and tap row,
/// reused by all `k` taps of the row.
fn im2col_rows_strided(
    g: &ConvGeometry,
    image: &[f32],
    group: usize,
    rows: Range<usize>,
    col: &mut [f32],
    row_stride: usize,
) {
    let (k, s, ow, iw) = (g.kernel, g.stride, g.output.width, g.input.width);
    let in_plane = g.input.height * iw;
    let ci = g.in_per_group();
    let width = rows.len() * ow;
    let plen = phase_len(g);
    let mut phases = [0.0f32; MAX_PHASES];
    for c in 0..ci {
        let plane = &image[(group * ci + c) * in_plane..][..in_plane];
        for ky in 0..k {
            for (r, oy) in rows.clone().enumerate() {
                let tap_rows = |kx: usize| ((c * k + ky) * k + kx) * row_stride + r * ow;
                let Some(iy) = input_row(g, oy, ky) else {
                    for kx in 0..k {
                        col[tap_rows(kx)..][..ow].fill(0.0);
                    }
                    continue;
                };
                let src = &plane[iy * iw..][..iw];
                for q in 0..s {
                    let phase = &mut phases[q * plen..][..plen];
                    for (j, value) in phase.iter_mut().enumerate() {
                        // Padded position j * s + q is input column j * s + q - pad.
                        *value = (j * s + q)
                            .checked_sub(g.pad)
                            .and_then(|x| src.get(x))
                            .copied()
                            .unwrap_or(0.0);
                    }
                }
                for kx in 0..k {
                    let phase = &phases[(kx % s) * plen..][..plen];
                    col[tap_rows(kx)..][..ow].copy_from_slice(&phase[kx / s..][..ow]);
                }
            }
        }
    }
    debug_assert!(width <= row_stride);
}

/// Adds the columns of `col` (rows `row_stride` apart) back into the input-gradient
/// image: the transpose of im2col.
fn col2im(g: &ConvGeometry, col: &[f32], group: usize, image: &mut [f32], row_stride: usize) {
    let (k, s, ow, oh) = (g.kernel, g.stride, g.output.width, g.output.height);
    let in_plane = g.input.height * g.input.width;
    let ci = g.in_per_group();
    for c in 0..ci {
        let plane = &mut image[(group * ci + c) * in_plane..][..in_plane];
        for ky in 0..k {
            for kx in 0..k {
                let cols = valid_columns(g, kx);
                let row = &col[((c * k + ky) * k + kx) * row_stride..][..oh * ow];
                for oy in 0..oh {
                    let Some(iy) = input_row(g, oy, ky) else {
                        continue;
                    };
                    let src = &row[oy * ow..][..ow];
                    let dst = &mut plane[iy * g.input.width..][..g.input.width];
                    if s == 1 {
                        // Contiguous on both sides: a plain vectorisable add.
                        let first = cols.start + kx - g.pad;
                        let dst = &mut dst[first..first + cols.len()];
                        dst.iter_mut()
                            .zip(&src[cols.clone()])
                            .for_each(|(d, v)| *d += v);
                    } else {
                        for ox in cols.clone() {
                            dst[ox * s + kx - g.pad] += src[ox];
                        }
                    }
                }
            }
        }
    }
}

/// Forward pass of one image: unfold and multiply each group, then add the bias.
fn forward_image(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    threads: usize,
    products: Products,
) {
    let (co, kl, plane) = (g.out_per_group(), g.patch_len(), g.out_plane());
    with_scratch(kl * plane, |col| {
        for group in 0..g.groups {
            im2col(g, x, group, col, plane);
            matmul(
                co,
                plane,
                kl,
                &w[group * co * kl..][..co * kl],
                Layout::Normal,
                col,
                Layout::Normal,
                &mut y[group * co * plane..][..co * plane],
                false,
                threads,
                products,
            );
        }
    });
    for (channel, bias) in y.chunks_exact_mut(plane).zip(b) {
        channel.iter_mut().for_each(|v| *v += bias);
    }
}

/// Forward pass of several images side by side in one product per group, the
/// results then moved to each image's place and the bias added.
fn forward_images(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    products: Products,
) {
    let (co, kl, plane) = (g.out_per_group(), g.patch_len(), g.out_plane());
    let (il, ol) = (g.input.len(), g.output.len());
    let count = x.len() / il;
    if count == 1 {
        return forward_image(g, x, w, b, y, 1, products);
    }
    let width = count * plane;
    with_scratch(kl * width + co * width, |scratch| {
        let (col, out) = scratch.split_at_mut(kl * width);
        for group in 0..g.groups {
            for i in 0..count {
                im2col(g, &x[i * il..][..il], group, &mut col[i * plane..], width);
            }
            matmul(
                co,
                width,
                kl,
                &w[group * co * kl..][..co * kl],
                Layout::Normal,
                col,
                Layout::Normal,
                out,
                false,
                1,
                products,
            );
            for i in 0..count {
                for o in 0..co {
                    let channel = group * co + o;
                    let bias = b[channel];
                    let dst = &mut y[i * ol + channel * plane..][..plane];
                    dst.iter_mut()
                        .zip(&out[o * width + i * plane..][..plane])
                        .for_each(|(d, v)| *d = v + bias);
                }
            }
        }
    });
}

/// `y = conv(x, w) + b` for the first `n` images, rectified (`max(0, .)`, a
/// ReLU after the convolution) where `rectify` is set: each thread rectifies
/// its part of `y` as soon as it is written, while it is still in cache.
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
    let (il, ol) = (g.input.len(), g.output.len());
    let threads = rayon::current_num_threads();
    if uses_winograd(g, n, products) {
        return if winograd::applies(g) {
            winograd::forward(g, n, x, w, b, y, products, buffers, rectify)
        } else if winograd_strided::applies(g) {
            winograd_strided::forward(g, n, x, w, b, y, buffers, rectify)
        } else {
            winograd_5x5::forward(g, n, x, w, b, y, buffers, rectify)
        };
    }
    if n >= threads {
        // Runs of images side by side, but never so long that a thread is left idle.
        let per_product = images_per_product(g).min(n / threads).max(1);
        x[..n * il]
            .par_chunks(per_product * il)
            .zip(y[..n * ol].par_chunks_mut(per_product * ol))
            .for_each(|(x, y)| {
                forward_images(g, x, w, b, y, products);
                if rectify {
                    elementwise::rectify(y);
                }
            });
    } else {
        // Too few images to keep every thread busy: split each image's output rows.
        for (x, y) in x[..n * il]
            .chunks_exact(il)
            .zip(y[..n * ol].chunks_exact_mut(ol))
        {
            forward_image_split(g, x, w, b, y, threads, products, rectify);
        }
    }
}

/// A pointer that may be shared between threads that write disjoint parts of its target.
#[derive(Clone, Copy)]
struct DisjointWrites(*mut f32);
// SAFETY: used only where every thread writes a part of the buffer no other thread touches.
unsafe impl Send for DisjointWrites {}
unsafe impl Sync for DisjointWrites {}

impl DisjointWrites {
    /// Through a method, so closures capture the whole wrapper (which is `Sync`)
    /// rather than its raw-pointer field (which is not).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Forward pass of one image with its output rows shared among `threads`: each
/// thread unfolds and multiplies its own band of rows for every group.
fn forward_image_split(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    threads: usize,
    products: Products,
    rectify: bool,
) {
    let (co, kl, plane, ow, oh) = (
        g.out_per_group(),
        g.patch_len(),
        g.out_plane(),
        g.output.width,
        g.output.height,
    );
    assert!(y.len() >= g.output.len());
    let band = oh.div_ceil(threads.max(1));
    let target = DisjointWrites(y.as_mut_ptr());
    (0..oh.div_ceil(band)).into_par_iter().for_each(|index| {
        let rows = index * band..((index + 1) * band).min(oh);
        let width = rows.len() * ow;
        with_scratch((kl + g.output.channels) * width, |scratch| {
            let (col, out) = scratch.split_at_mut(kl * width);
            for group in 0..g.groups {
                im2col_rows(g, x, group, rows.clone(), col, width);
                matmul(
                    co,
                    width,
                    kl,
                    &w[group * co * kl..][..co * kl],
                    Layout::Normal,
                    col,
                    Layout::Normal,
                    &mut out[group * co * width..][..co * width],
                    false,
                    1,
                    products,
                );
            }
            for (channel, bias) in b.iter().enumerate() {
                // SAFETY: this band owns output rows `rows` of every channel: the
                // range below lies inside `y` (checked above) and no other band
                // writes it.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        target.ptr().add(channel * plane + rows.start * ow),
                        width,
                    )
                };
                dst.iter_mut()
                    .zip(&out[channel * width..][..width])
                    .for_each(|(d, v)| *d = v + bias);
                if rectify {
                    elementwise::rectify(dst);
                }
            }
        });
    });
}

/// Backward pass over a run of images, adding into `dw`/`db` and writing `dx`.
/// Images are taken `images_per_product(g)` at a time, side by side in the
/// unfolded matrix, so that small output planes still make long products.
fn backward_images(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    mut dx: Option<&mut [f32]>,
    threads: usize,
    products: Products,
) {
    let (co, kl, plane) = (g.out_per_group(), g.patch_len(), g.out_plane());
    let (il, ol) = (g.input.len(), g.output.len());
    let images = dy.len() / ol;
    let per_product = images_per_product(g).min(images).max(1);
    let widest = per_product * plane;
    with_scratch(2 * kl * widest + co * widest, |scratch| {
        let (col, rest) = scratch.split_at_mut(kl * widest);
        let (dcol, dy_side_by_side) = rest.split_at_mut(kl * widest);
        for first in (0..images).step_by(per_product) {
            let count = per_product.min(images - first);
            let width = count * plane;
            if let Some(dx) = dx.as_deref_mut() {
                dx[first * il..(first + count) * il].fill(0.0);
            }
            for group in 0..g.groups {
                // Output gradients of the run, side by side: [out_per_group x width]
                // (one image's are already in that layout).
                for i in 0..count {
                    if count > 1 {
                        let dy_g = &dy[(first + i) * ol + group * co * plane..][..co * plane];
                        for o in 0..co {
                            dy_side_by_side[o * width + i * plane..][..plane]
                                .copy_from_slice(&dy_g[o * plane..][..plane]);
                        }
                    }
                    im2col(
                        g,
                        &x[(first + i) * il..][..il],
                        group,
                        &mut col[i * plane..],
                        width,
                    );
                }
                let dy_g = if count > 1 {
                    &dy_side_by_side[..co * width]
                } else {
                    &dy[first * ol + group * co * plane..][..co * plane]
                };
                matmul(
                    co,
                    kl,
                    width,
                    dy_g,
                    Layout::Normal,
                    &col[..kl * width],
                    Layout::Transposed,
                    &mut dw[group * co * kl..][..co * kl],
                    true,
                    threads,
                    products,
                );
                if let Some(dx) = dx.as_deref_mut() {
                    matmul(
                        kl,
                        width,
                        co,
                        &w[group * co * kl..][..co * kl],
                        Layout::Transposed,
                        dy_g,
                        Layout::Normal,
                        &mut dcol[..kl * width],
                        false,
                        threads,
                        products,
                    );
                    for i in 0..count {
                        col2im(
                            g,
                            &dcol[i * plane..],
                            group,
                            &mut dx[(first + i) * il..][..il],
                            width,
                        );
                    }
                }
            }
        }
    });
    add_bias_gradient(g, dy, db);
}

/// `db += ` the sum of each output channel's gradient over the images of `dy`,
/// the channels shared among threads (each summed in a fixed order).
fn add_bias_gradient(g: &ConvGeometry, dy: &[f32], db: &mut [f32]) {
    let (plane, ol) = (g.out_plane(), g.output.len());
    db.par_iter_mut()
        .enumerate()
        .for_each(|(channel, bias_grad)| {
            let total: f32 = dy
                .chunks_exact(ol)
                .map(|image| elementwise::sum(&image[channel * plane..][..plane]))
                .sum();
            *bias_grad += total;
        });
}

/// Whether a Winograd path computes this convolution (and its gradients, but
/// for the strided one), with at least one image per thread (they share images
/// among threads; a single image keeps the row-split path):
/// - 3x3 stride-1 padding-1 kernels by F(2x2, 3x3), in both modes (in bf16 mode
///   the products take the transformed blocks rounded to bf16);
/// - strided kernels spanning three strides (conv1: 11x11, stride 4) as 3x3
///   convolutions on phase planes by F(4x4, 3x3), in f32 only: the forward
///   pass, and the weight gradient where no input gradient is wanted (an input
///   gradient keeps im2col);
/// - 5x5 stride-1 padding-2 kernels by F(3x3, 3x3) on four 3x3 pieces, in f32
///   only: rounding its transformed blocks to bf16 was 6-9 times a direct bf16
///   convolution's error (its transforms have larger coefficients).
pub fn uses_winograd(g: &ConvGeometry, n: usize, products: Products) -> bool {
    let applies = winograd::applies(g)
        || ((winograd_strided::applies(g) || winograd_5x5::applies(g))
            && products.precision == Precision::F32);
    applies && n >= rayon::current_num_threads()
}

/// Products shorter than this many columns waste the GEMM kernel's set-up.
const MIN_PRODUCT_COLUMNS: usize = 512;

/// How many images to place side by side in one product: one for large output
/// planes (conv1, conv2 of the paper), several for small ones (13x13 and below).
fn images_per_product(g: &ConvGeometry) -> usize {
    MIN_PRODUCT_COLUMNS.div_ceil(g.out_plane()).max(1)
}

/// Parameter gradients `dw`, `db` (added to) and the input gradient `dx`
/// (overwritten, where asked for) of the first `n` images.
pub fn backward(
    g: &ConvGeometry,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    products: Products,
    buffers: &ConvBuffers,
) {
    let (il, ol) = (g.input.len(), g.output.len());
    let (x, dy) = (&x[..n * il], &dy[..n * ol]);
    if uses_winograd(g, n, products) && winograd_strided::applies(g) && dx.is_none() {
        // The paper's conv1: only the weight gradient is needed.
        winograd_strided::backward_weights(g, n, x, dy, dw, buffers);
        add_bias_gradient(g, dy, db);
        return;
    }
    if uses_winograd(g, n, products) && !winograd_strided::applies(g) {
        let dx = dx.map(|dx| &mut dx[..n * il]);
        if winograd::applies(g) {
            winograd::backward_weights(g, n, x, dy, dw, products, buffers);
            if let Some(dx) = dx {
                winograd::backward_data(g, n, w, dy, dx, products, buffers);
            }
        } else {
            winograd_5x5::backward_weights(g, n, x, dy, dw, buffers);
            if let Some(dx) = dx {
                winograd_5x5::backward_data(g, n, w, dy, dx, buffers);
            }
        }
        add_bias_gradient(g, dy, db);
        return;
    }
    let threads = rayon::current_num_threads();
    if threads.min(n) <= 1 {
        let dx = dx.map(|dx| &mut dx[..n * il]);
        backward_images(g, x, w, dy, dw, db, dx, threads, products);
        return;
    }
    // The batch is split into one contiguous chunk per thread; each chunk sums its
    // parameter gradients into its own zeroed partial, and the partials are added
    // into `dw`/`db` in a fixed order, so results do not depend on scheduling.
    let per_chunk = n.div_ceil(threads);
    let chunks = n.div_ceil(per_chunk);
    let param_len = dw.len() + db.len();
    let mut partials = lock(&buffers.gemm_weight_partials);
    if partials.len() < chunks * param_len {
        partials.resize(chunks * param_len, 0.0);
    }
    let partials = &mut partials[..chunks * param_len];
    partials.fill(0.0);
    let weight_len = dw.len();
    let work = partials
        .par_chunks_exact_mut(param_len)
        .zip(x.par_chunks(per_chunk * il))
        .zip(dy.par_chunks(per_chunk * ol));
    match dx {
        Some(dx) => work
            .zip(dx[..n * il].par_chunks_mut(per_chunk * il))
            .for_each(|(((partial, x), dy), dx)| {
                let (pw, pb) = partial.split_at_mut(weight_len);
                backward_images(g, x, w, dy, pw, pb, Some(dx), 1, products);
            }),
        None => work.for_each(|((partial, x), dy)| {
            let (pw, pb) = partial.split_at_mut(weight_len);
            backward_images(g, x, w, dy, pw, pb, None, 1, products);
        }),
    }
    for partial in partials.chunks_exact(param_len) {
        let (pw, pb) = partial.split_at(weight_len);
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
}
