//! Inverted dropout (paper Section 4.2): in training, `y = x * mask` with mask values
//! 0 (probability `p`) or `1 / (1 - p)`; at test time `y = x`. The paper instead
//! halves outputs at test time; the two are equivalent in expectation.
//! Masks are drawn by the network from its seeded generator, so a step is reproducible.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutGeometry {
    /// Values per image.
    pub len: usize,
    pub p: f32,
}

impl DropoutGeometry {
    /// The value a kept element is multiplied by.
    pub fn keep_scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }
}
