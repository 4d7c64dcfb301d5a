//! What the Winograd convolutions share. F(2x2, 3x3) (`winograd`, conv3-5) and
//! F(4x4, 3x3) (`winograd_4x4`, conv1's phase planes) are one skeleton with
//! other block sizes and transforms, a `Tiling` each: kernels transformed into
//! the Winograd domain, a chunk of images' input blocks transformed, one product
//! per domain point, the results transformed back (with the bias); and the
//! weight gradient's way back through the same products. F(3x3, 3x3) on conv2's
//! 5x5 kernels (`winograd_5x5`) lays its blocks out otherwise and shares the
//! products' and buffers' helpers below.

use super::buffers::{ConvBuffers, lock};
use super::gemm::{Layout, matmul};
use super::scratch::with_scratch;
use crate::layers::{ConvGeometry, Shape};
use crate::precision::Products;

/// The most points a domain block has (F(4x4, 3x3)'s 6x6).
const MAX_XI: usize = 36;

/// One Winograd algorithm F(m x m, 3 x 3): its sizes and its transforms, each
/// over a whole chunk of planes (or one kernel) so that a call through these
/// pointers costs nothing beside the work.
pub(super) struct Tiling {
    /// Outputs per block side (m).
    pub out: usize,
    /// Points per domain block ((m + 2)^2).
    pub xi: usize,
    /// Values past the products' output that `output_tiles` may read.
    pub lanes: usize,
    /// Rows of scratch per row of blocks `output_grad_tiles` needs, times `out`.
    pub grad_rows: usize,
    /// `U = G k G^T` of one kernel into `xi` values.
    pub transform_kernel: fn(&[f32; 9], &mut [f32]),
    /// `dk += G^T dU G` from one kernel's `xi` domain values.
    pub kernel_gradient: fn(&[f32], &mut [f32]),
    /// Scratch values `input_tiles` needs for a plane of this shape.
    pub padded_len: fn(&Shape) -> usize,
    /// Every input block of the images in `x` into `v[xi][channel][tile]`.
    pub input_tiles: fn(&Shape, &[f32], &mut [f32], usize, &mut [f32]),
    /// The products `m` back into output planes, plus the bias.
    pub output_tiles: fn(&Shape, &[f32], &[f32], &mut [f32], usize),
    /// Output gradients into the domain: `dm[xi][channel][tile]`.
    pub output_grad_tiles: fn(&Shape, &[f32], &mut [f32], usize, &mut [f32]),
}

impl Tiling {
    /// Blocks per image: output blocks covering the plane.
    pub(super) fn tiles(&self, shape: &Shape) -> (usize, usize) {
        (
            shape.height.div_ceil(self.out),
            shape.width.div_ceil(self.out),
        )
    }

    /// Values of `g`'s transformed kernels (see [`Tiling::transform_kernels`]).
    pub(super) fn transformed_len(&self, g: &ConvGeometry) -> usize {
        self.xi * g.output.channels * g.in_per_group()
    }

    /// `u[xi][out channel][in channel of its group]`: every kernel of `w` transformed.
    pub(super) fn transform_kernels(&self, g: &ConvGeometry, w: &[f32], u: &mut [f32]) {
        let (cig, co) = (g.in_per_group(), g.output.channels);
        let mut block = [0.0f32; MAX_XI];
        for o in 0..co {
            for c in 0..cig {
                let k: &[f32; 9] = w[(o * cig + c) * 9..][..9].try_into().expect("3x3");
                (self.transform_kernel)(k, &mut block[..self.xi]);
                for (xi, value) in block[..self.xi].iter().enumerate() {
                    u[(xi * co + o) * cig + c] = *value;
                }
            }
        }
    }

    /// The forward pass of the whole images in `x` on this thread, with the
    /// transformed kernels `u` (`transform_kernels`), in one run of products.
    pub(super) fn forward_images(
        &self,
        g: &ConvGeometry,
        x: &[f32],
        u: &[f32],
        b: &[f32],
        y: &mut [f32],
        products: Products,
    ) {
        let (ci, co, xi) = (g.input.channels, g.output.channels, self.xi);
        let (ty, tx) = self.tiles(&g.input);
        let width = x.len() / g.input.len() * ty * tx;
        let pad_len = (self.padded_len)(&g.input);
        with_scratch(xi * (ci + co) * width + self.lanes + pad_len, |scratch| {
            let (v, rest) = scratch.split_at_mut(xi * ci * width);
            let (m, pad) = rest.split_at_mut(xi * co * width + self.lanes);
            (self.input_tiles)(&g.input, x, v, width, pad);
            domain_products(g, xi, u, v, m, width, products);
            (self.output_tiles)(&g.output, m, b, y, width);
        });
    }

    /// `du += ` the Winograd-domain weight gradient (`[xi][out][in of group]`, as
    /// `transform_kernels` lays out kernels) of the whole images in `x` with
    /// output gradients `dy`, on this thread, in one run of products:
    /// `dU[xi] (out x in) += dM[xi] (out x tiles) * V[xi]^T`.
    pub(super) fn add_transformed_weight_gradient(
        &self,
        g: &ConvGeometry,
        x: &[f32],
        dy: &[f32],
        du: &mut [f32],
        products: Products,
    ) {
        let (ci, co, xi) = (g.input.channels, g.output.channels, self.xi);
        let (ty, tx) = self.tiles(&g.input);
        let width = x.len() / g.input.len() * ty * tx;
        let extra = (self.padded_len)(&g.input).max(self.grad_rows * self.out * tx);
        with_scratch(xi * (ci + co) * width + extra, |scratch| {
            let (v, rest) = scratch.split_at_mut(xi * ci * width);
            let (dm, pad) = rest.split_at_mut(xi * co * width);
            (self.input_tiles)(&g.input, x, v, width, pad);
            (self.output_grad_tiles)(&g.output, dy, dm, width, pad);
            domain_weight_products(g, xi, dm, v, du, width, products);
        });
    }

    /// `dw += G^T dU G` for every kernel: the weight gradient from its
    /// Winograd-domain form `du` (`add_transformed_weight_gradient`'s sums).
    pub(super) fn add_weight_gradient(&self, g: &ConvGeometry, du: &[f32], dw: &mut [f32]) {
        let (cig, co) = (g.in_per_group(), g.output.channels);
        let mut block = [0.0f32; MAX_XI];
        for o in 0..co {
            for c in 0..cig {
                for (xi, value) in block[..self.xi].iter_mut().enumerate() {
                    *value = du[(xi * co + o) * cig + c];
                }
                (self.kernel_gradient)(&block[..self.xi], &mut dw[(o * cig + c) * 9..][..9]);
            }
        }
    }
}

/// `buffer` grown to at least `len` values, the first `len` returned.
pub(super) fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// The products of a forward pass in a Winograd domain of `positions` values
/// per block, for every group: `m[xi] (out x width) = u[xi] (out x in) * v[xi]
/// (in x width)`, with `u` laid out `[xi][out][in of group]` and `v`, `m`
/// `[xi][channel][column]`.
pub(super) fn domain_products(
    g: &ConvGeometry,
    positions: usize,
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    width: usize,
    products: Products,
) {
    let (cig, cog) = (g.in_per_group(), g.out_per_group());
    let (ci, co) = (g.input.channels, g.output.channels);
    for group in 0..g.groups {
        for xi in 0..positions {
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
                products,
            );
        }
    }
}

/// The products of a weight gradient in a Winograd domain, laid out as in
/// [`domain_products`]: `du[xi] (out x in) += dm[xi] (out x width) * v[xi]^T`.
pub(super) fn domain_weight_products(
    g: &ConvGeometry,
    positions: usize,
    dm: &[f32],
    v: &[f32],
    du: &mut [f32],
    width: usize,
    products: Products,
) {
    let (cig, cog) = (g.in_per_group(), g.out_per_group());
    let (ci, co) = (g.input.channels, g.output.channels);
    for group in 0..g.groups {
        for xi in 0..positions {
            matmul(
                cog,
                cig,
                width,
                &dm[(xi * co + group * cog) * width..][..cog * width],
                Layout::Normal,
                &v[(xi * ci + group * cig) * width..][..cig * width],
                Layout::Transposed,
                &mut du[(xi * co + group * cog) * cig..][..cog * cig],
                true,
                1,
                products,
            );
        }
    }
}

/// Adds every `len`-value partial sum of `partials` after the first into the
/// first, in order (so results do not depend on which thread made which), and
/// returns it.
pub(super) fn sum_partials(partials: &mut [f32], len: usize) -> &mut [f32] {
    let (total, rest) = partials.split_at_mut(len);
    for partial in rest.chunks_exact(len) {
        total.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
    }
    total
}

/// Runs `f` with the convolution whose forward pass is the input gradient of
/// `g` (stride 1, padding `kernel - 1 - pad` equal to `pad`: same-size planes),
/// its kernels (each of `w`'s rotated by 180 degrees, in/out channels swapped
/// within each group) and a zero bias.
pub(super) fn with_input_gradient_kernels(
    g: &ConvGeometry,
    w: &[f32],
    buffers: &ConvBuffers,
    f: impl FnOnce(&ConvGeometry, &[f32], &[f32]),
) {
    let (cig, cog) = (g.in_per_group(), g.out_per_group());
    let taps = g.kernel * g.kernel;
    let reversed = ConvGeometry {
        input: g.output,
        output: g.input,
        ..*g
    };
    let mut buffer = lock(&buffers.rotated_kernels);
    let scratch = sized(&mut buffer, w.len() + g.input.channels);
    let (rotated, zero_bias) = scratch.split_at_mut(w.len());
    zero_bias.fill(0.0);
    for group in 0..g.groups {
        for o in 0..cog {
            for c in 0..cig {
                let src = &w[((group * cog + o) * cig + c) * taps..][..taps];
                // Output channel `c` of the reversed convolution reads input channel `o`;
                // reversing a kernel's row-major taps rotates it by 180 degrees.
                let dst = &mut rotated[((group * cig + c) * cog + o) * taps..][..taps];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        }
    }
    f(&reversed, rotated, zero_bias);
}
