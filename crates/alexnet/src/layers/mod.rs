//! The geometry of each kind of layer: the sizes one forward or backward pass
//! works over, validated once when the net is planned. Kernels (the readable
//! reference in `cpu::reference`, the fast ones in `cpu::fast`) trust these.
//!
//! Conventions shared by every layer:
//! - activations are NCHW `f32`, one contiguous block per image;
//! - `forward` overwrites its output; `backward` overwrites the input gradient `dx`
//!   and *adds* into parameter gradients (`dw += ...`), so gradients of several
//!   batches can be summed and the caller zeroes them once per step.

pub mod conv;
pub mod dropout;
pub mod linear;
pub mod lrn;
pub mod pool;

pub use conv::ConvGeometry;
pub use dropout::DropoutGeometry;
pub use linear::LinearGeometry;
pub use lrn::LrnGeometry;
pub use pool::PoolGeometry;

/// Channels, height and width of one image's activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    pub fn new(channels: usize, height: usize, width: usize) -> Shape {
        Shape {
            channels,
            height,
            width,
        }
    }
    /// Number of values per image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}
