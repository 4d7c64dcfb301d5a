//! Inverted dropout (paper Section 4.2): in training, `y = x * mask` with mask values
//! 0 (probability `p`) or `1 / (1 - p)`; at test time `y = x`. The paper instead
//! halves outputs at test time; the two are equivalent in expectation.
//! Masks are drawn by the network from its seeded generator, so a step is reproducible:
//! one draw seeds each mask, and [`fill_mask`] decides each value from that seed
//! and the value's index alone, so any backend (a GPU's kernel too) and any number
//! of threads give the same mask.

use rayon::prelude::*;

use crate::rng::stream_value;

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

    /// Value i of a mask is kept when the top 53 bits of its draw are at least
    /// this: `uniform >= p` for uniform = those bits * 2^-53, in integers
    /// (p * 2^53 is exact, and an integer is at least it when at least its
    /// ceiling).
    pub fn keep_threshold(&self) -> u64 {
        (f64::from(self.p) * (1u64 << 53) as f64).ceil() as u64
    }
}

/// Fills `mask` with the dropout mask seeded by `seed`: value i is the keep scale
/// if the top 53 bits of value i of the SplitMix64 stream from `seed`
/// ([`stream_value`]) reach [`DropoutGeometry::keep_threshold`], else 0. Drawn on
/// all cores; without a branch, which would mispredict half the time.
pub fn fill_mask(g: &DropoutGeometry, seed: u64, mask: &mut [f32]) {
    /// Values per parallel task.
    const CHUNK: usize = 1 << 14;
    let threshold = g.keep_threshold();
    let keep = g.keep_scale();
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, values)| {
            let first = (chunk * CHUNK) as u64;
            for (offset, v) in values.iter_mut().enumerate() {
                let kept = stream_value(seed, first + offset as u64) >> 11 >= threshold;
                *v = keep * f32::from(u8::from(kept));
            }
        });
}
