//! Max and average pooling over square windows, without padding. Windows overlap
//! when `stride < size` (the paper's 3/2 pooling, Section 3.4).
//!
//! Max pooling sends each output's gradient to the first largest input of its
//! window in row-major order (as PyTorch does), so ties (zeros after a ReLU) are
//! broken the same way everywhere.

use super::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub input: Shape,
    pub output: Shape,
    pub size: usize,
    pub stride: usize,
}

impl PoolGeometry {
    /// The geometry of `size x size` windows `stride` apart over `input`; `None`
    /// when a window does not fit or size or stride is 0.
    pub fn new(input: Shape, size: usize, stride: usize) -> Option<PoolGeometry> {
        let side = |s| Self::output_side(s, size, stride);
        Some(PoolGeometry {
            input,
            output: Shape::new(input.channels, side(input.height)?, side(input.width)?),
            size,
            stride,
        })
    }

    pub fn output_side(input: usize, size: usize, stride: usize) -> Option<usize> {
        if stride == 0 || size == 0 || input < size {
            return None;
        }
        Some((input - size) / stride + 1)
    }
}
