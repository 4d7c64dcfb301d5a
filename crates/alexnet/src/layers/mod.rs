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

/// Where a block of rows lies in a buffer: `count` rows of `len` values each, row
/// `r` starting at value `offset + r * stride`. Used to move one tower's share of
/// every image's values (a run of channels) between towers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub count: usize,
    pub len: usize,
    pub offset: usize,
    pub stride: usize,
}

impl Rows {
    /// `count` rows of `len` values one after another from the start.
    pub fn packed(count: usize, len: usize) -> Rows {
        Rows {
            count,
            len,
            offset: 0,
            stride: len,
        }
    }

    /// One past the last value the rows touch (0 when there are none).
    pub fn end(&self) -> usize {
        if self.count == 0 || self.len == 0 {
            0
        } else {
            self.offset + (self.count - 1) * self.stride + self.len
        }
    }

    /// The index of each row's first value.
    pub fn starts(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.count).map(|r| self.offset + r * self.stride)
    }

    /// The first values of each row of `self` and of the matching row of `other`,
    /// which must have the same number of rows of the same length (a copy or sum
    /// of one block into another); `what` names the operation in the panic.
    pub fn paired_starts<'a>(
        &'a self,
        other: &'a Rows,
        what: &str,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        assert_eq!(
            (self.count, self.len),
            (other.count, other.len),
            "rows {what} between blocks of different shapes"
        );
        self.starts().zip(other.starts())
    }
}
