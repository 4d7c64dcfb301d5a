//! Inverted dropout (paper Section 4.2): in training, `y = x * mask` with mask values
//! 0 (probability `p`) or `1 / (1 - p)`; at test time `y = x`. The paper instead
//! halves outputs at test time; the two are equivalent in expectation.
//! Masks are drawn by the network from its seeded generator, so a step is reproducible:
//! one draw seeds each mask, and [`fill_mask`] decides each value from that seed
//! and the value's index alone, so any backend (a GPU's kernel too) and any number
//! of threads give the same mask.

use rayon::prelude::*;

use super::Rows;
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
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, values)| fill_run(g, seed, (chunk * CHUNK) as u64, values));
}

/// Fills `mask` (packed, `rows.count * rows.len` values) with the values of the
/// mask [`fill_mask`] would draw that `rows` picks out: one tower's share of each
/// image's values.
pub fn fill_mask_rows(g: &DropoutGeometry, seed: u64, rows: Rows, mask: &mut [f32]) {
    if rows.len == 0 {
        return;
    }
    if rows.offset == 0 && rows.stride == rows.len {
        // One run from the start (a whole network's mask): chunks of any size.
        return fill_mask(g, seed, &mut mask[..rows.count * rows.len]);
    }
    mask[..rows.count * rows.len]
        .par_chunks_mut(rows.len)
        .zip(rows.starts().collect::<Vec<_>>())
        .for_each(|(row, start)| {
            row.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(chunk, values)| {
                    fill_run(g, seed, (start + chunk * CHUNK) as u64, values)
                })
        });
}

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// Values `first..first + values.len()` of the mask seeded by `seed`.
fn fill_run(g: &DropoutGeometry, seed: u64, first: u64, values: &mut [f32]) {
    let threshold = g.keep_threshold();
    let keep = g.keep_scale();
    for (offset, v) in values.iter_mut().enumerate() {
        let kept = stream_value(seed, first + offset as u64) >> 11 >= threshold;
        *v = keep * f32::from(u8::from(kept));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_values_are_each_their_own_draw_and_drop_about_p() {
        let geometry = DropoutGeometry { len: 4096, p: 0.5 };
        let seed = 0x5eed;
        let mut mask = vec![f32::NAN; 128 * 4096];
        fill_mask(&geometry, seed, &mut mask);
        // Value i is decided by value i of the stream from the seed, whichever
        // core drew it: check both sides of chunk boundaries and the ends.
        for i in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 300_000, mask.len() - 1] {
            let kept = (stream_value(seed, i as u64) >> 11) as f64 >= 0.5 * (1u64 << 53) as f64;
            assert_eq!(mask[i], if kept { 2.0 } else { 0.0 }, "value {i}");
        }
        let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / mask.len() as f64;
        assert!((dropped - 0.5).abs() < 0.005, "dropped {dropped}");
        assert!(mask.iter().all(|&v| v == 0.0 || v == 2.0));
        let mut again = vec![0.0; mask.len()];
        fill_mask(&geometry, seed, &mut again);
        assert_eq!(mask, again);
    }

    /// A tower's share of a mask is the whole mask's values it picks, across
    /// chunk boundaries within its rows too.
    #[test]
    fn rows_of_a_mask_are_the_whole_masks_values() {
        let geometry = DropoutGeometry { len: 3, p: 0.3 };
        let (images, per_image) = (5, 2 * CHUNK + 10);
        let mut whole = vec![0.0; images * per_image];
        fill_mask(&geometry, 99, &mut whole);
        for (offset, len) in [(0, CHUNK + 5), (CHUNK + 5, CHUNK + 5), (0, per_image)] {
            let rows = Rows {
                count: images,
                len,
                offset,
                stride: per_image,
            };
            let mut share = vec![f32::NAN; images * len + 1];
            fill_mask_rows(&geometry, 99, rows, &mut share);
            let expected: Vec<f32> = rows
                .starts()
                .flat_map(|start| whole[start..start + len].to_vec())
                .collect();
            assert_eq!(
                share[..images * len],
                expected[..],
                "rows at {offset}, {len} wide"
            );
            assert!(share[images * len].is_nan(), "written past the rows");
        }
    }
}
