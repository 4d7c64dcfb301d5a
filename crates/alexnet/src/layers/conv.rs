//! 2-D convolution with stride, zero padding and groups.
//!
//! Weights are `[out, in / groups, kernel, kernel]` (PyTorch's layout); output
//! channel `o` belongs to group `o / (out / groups)` and sees only that group's
//! input channels. The paper's two towers are `groups = 2`.

use super::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub input: Shape,
    pub output: Shape,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvGeometry {
    /// The geometry of `out_channels` kernels of `kernel x kernel` over `input`,
    /// its output sides following from stride and padding; `None` when the
    /// kernel does not fit the padded input.
    pub fn new(
        input: Shape,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Option<ConvGeometry> {
        let height = Self::output_side(input.height, kernel, stride, pad)?;
        let width = Self::output_side(input.width, kernel, stride, pad)?;
        Some(ConvGeometry {
            input,
            output: Shape::new(out_channels, height, width),
            kernel,
            stride,
            pad,
            groups,
        })
    }

    /// Output side for an input side, or `None` when the kernel does not fit.
    pub fn output_side(input: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
        let padded = input + 2 * pad;
        if stride == 0 || padded < kernel {
            return None;
        }
        Some((padded - kernel) / stride + 1)
    }
    /// Input channels per group.
    pub fn in_per_group(&self) -> usize {
        self.input.channels / self.groups
    }
    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.output.channels / self.groups
    }
    /// Length of one row of the unfolded input (one group): the GEMM's inner dimension.
    pub fn patch_len(&self) -> usize {
        self.in_per_group() * self.kernel * self.kernel
    }
    /// Output positions per channel.
    pub fn out_plane(&self) -> usize {
        self.output.height * self.output.width
    }
    pub fn weight_len(&self) -> usize {
        self.output.channels * self.patch_len()
    }
    /// Multiply-adds of one image's forward pass.
    pub fn forward_macs(&self) -> usize {
        self.weight_len() * self.out_plane()
    }
}
