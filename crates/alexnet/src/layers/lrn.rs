//! Local response normalisation across channels (paper Section 3.3):
//! `b_c = a_c * s_c^-beta` with `s_c = k + alpha * sum_{j in window(c)} a_j^2`, the window
//! the `size` channels centred on `c`, clipped to the channel group `c` belongs to.
//! alpha is the paper's (not divided by `size`).

use super::Shape;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnGeometry {
    pub shape: Shape,
    /// Window length in channels (odd, so the window is centred).
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    /// Channels are normalised within `groups` equal blocks (2: the paper's towers).
    pub groups: usize,
}

impl LrnGeometry {
    pub fn channels_per_group(&self) -> usize {
        self.shape.channels / self.groups
    }
    /// The channels whose squares enter channel `c`'s sum, as a half-open range.
    pub fn window(&self, c: usize) -> std::ops::Range<usize> {
        let per_group = self.channels_per_group();
        let group_start = c / per_group * per_group;
        let group_end = group_start + per_group;
        let half = self.size / 2;
        c.saturating_sub(half).max(group_start)..(c + half + 1).min(group_end)
    }
}
