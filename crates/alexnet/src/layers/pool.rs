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
    pub fn output_side(input: usize, size: usize, stride: usize) -> Option<usize> {
        if stride == 0 || size == 0 || input < size {
            return None;
        }
        Some((input - size) / stride + 1)
    }
}
