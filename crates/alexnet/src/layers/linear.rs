//! Fully connected layer: `y = x W^T + b`, weights `[outputs, inputs]` (PyTorch's layout).
//! The input is whatever the previous layer produced, flattened per image in NCHW order.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearGeometry {
    pub inputs: usize,
    pub outputs: usize,
}

impl LinearGeometry {
    pub fn weight_len(&self) -> usize {
        self.inputs * self.outputs
    }
}
