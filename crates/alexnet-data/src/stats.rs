//! Statistics of the training pixels: the per-pixel mean image and the principal
//! components of colour (Section 4.1 of the paper).
//!
//! Sums are kept in integers, so the result is exact and does not depend on the
//! order images arrive in or on how many threads computed the per-image parts.

use crate::format::Pca;

/// The per-image part of the colour statistics: sums of each channel and of each
/// product of two channels, over the image's pixels. Computed where the image is
/// decoded (in parallel), added up where it is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImageMoments {
    sums: [u64; 3],
    cross: [[u64; 3]; 3],
}

impl ImageMoments {
    /// Moments of one CHW image of `channels` channels.
    pub fn of(pixels: &[u8], channels: usize) -> ImageMoments {
        let plane = pixels.len() / channels;
        let mut m = ImageMoments::default();
        match channels {
            1 => {
                let (mut s, mut ss) = (0u64, 0u64);
                for &v in pixels {
                    let v = v as u64;
                    s += v;
                    ss += v * v;
                }
                m.sums[0] = s;
                m.cross[0][0] = ss;
            }
            _ => {
                let (r, rest) = pixels.split_at(plane);
                let (g, b) = rest.split_at(plane);
                // A product of two bytes is below 2^16, so a u32 sum of 4,096 of them
                // cannot overflow: summing per chunk in u32 and widening once keeps
                // the loop narrow enough to vectorise.
                for ((r, g), b) in r.chunks(4096).zip(g.chunks(4096)).zip(b.chunks(4096)) {
                    let mut acc = [0u32; 9];
                    for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
                        let (r, g, b) = (r as u32, g as u32, b as u32);
                        acc[0] += r;
                        acc[1] += g;
                        acc[2] += b;
                        acc[3] += r * r;
                        acc[4] += r * g;
                        acc[5] += r * b;
                        acc[6] += g * g;
                        acc[7] += g * b;
                        acc[8] += b * b;
                    }
                    m.sums[0] += acc[0] as u64;
                    m.sums[1] += acc[1] as u64;
                    m.sums[2] += acc[2] as u64;
                    m.cross[0][0] += acc[3] as u64;
                    m.cross[0][1] += acc[4] as u64;
                    m.cross[0][2] += acc[5] as u64;
                    m.cross[1][1] += acc[6] as u64;
                    m.cross[1][2] += acc[7] as u64;
                    m.cross[2][2] += acc[8] as u64;
                }
                m.cross[1][0] = m.cross[0][1];
                m.cross[2][0] = m.cross[0][2];
                m.cross[2][1] = m.cross[1][2];
            }
        }
        m
    }
}

/// Running statistics of a split's images.
#[derive(Clone, Debug)]
pub(crate) struct PixelStats {
    channels: usize,
    pixel_sums: Vec<u64>,
    sums: [u128; 3],
    cross: [[u128; 3]; 3],
    images: u64,
}

impl PixelStats {
    pub fn new(channels: usize, height: usize, width: usize) -> PixelStats {
        PixelStats {
            channels,
            pixel_sums: vec![0; channels * height * width],
            sums: [0; 3],
            cross: [[0; 3]; 3],
            images: 0,
        }
    }

    pub fn images(&self) -> u64 {
        self.images
    }

    /// Adds one CHW image whose moments were computed already.
    pub fn add(&mut self, pixels: &[u8], moments: &ImageMoments) {
        for (s, &v) in self.pixel_sums.iter_mut().zip(pixels) {
            *s += v as u64;
        }
        for a in 0..3 {
            self.sums[a] += moments.sums[a] as u128;
            for b in 0..3 {
                self.cross[a][b] += moments.cross[a][b] as u128;
            }
        }
        self.images += 1;
    }

    /// The mean image, CHW, on the 0-255 scale.
    pub fn mean_image(&self) -> Vec<f32> {
        let n = self.images.max(1) as f64;
        self.pixel_sums
            .iter()
            .map(|&s| (s as f64 / n) as f32)
            .collect()
    }

    /// The covariance of the channels over every pixel of every image (the
    /// population covariance: divided by the pixel count).
    pub fn covariance(&self) -> [[f64; 3]; 3] {
        let pixels = self.images as f64 * (self.pixel_sums.len() / self.channels) as f64;
        let mut cov = [[0.0; 3]; 3];
        if pixels == 0.0 {
            return cov;
        }
        let mean: Vec<f64> = (0..3).map(|a| self.sums[a] as f64 / pixels).collect();
        for a in 0..self.channels {
            for b in 0..self.channels {
                cov[a][b] = self.cross[a][b] as f64 / pixels - mean[a] * mean[b];
            }
        }
        cov
    }

    /// The principal components of the pixels' colour.
    pub fn pca(&self) -> Pca {
        let cov = self.covariance();
        if self.channels == 1 {
            return Pca {
                eigenvalues: [cov[0][0].max(0.0) as f32, 0.0, 0.0],
                eigenvectors: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            };
        }
        let (values, vectors) = symmetric_eigen3(cov);
        Pca {
            eigenvalues: values.map(|v| v.max(0.0) as f32),
            eigenvectors: vectors.map(|row| row.map(|v| v as f32)),
        }
    }
}

/// Eigenvalues (largest first) and unit eigenvectors (rows) of a symmetric 3x3
/// matrix, by cyclic Jacobi rotations. Each vector's sign is chosen so that its
/// largest component is positive, which makes the result reproducible.
pub fn symmetric_eigen3(matrix: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = matrix;
    // Columns of v collect the rotations: at the end they are the eigenvectors.
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..64 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        let scale = a[0][0].powi(2) + a[1][1].powi(2) + a[2][2].powi(2);
        if off <= 1e-30 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            // The smaller root of t^2 + 2 theta t - 1 = 0 (a rotation of at most 45 degrees).
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // a <- Jᵀ a J for the rotation J in the (p, q) plane.
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for k in 0..3 {
                let (vkp, vkq) = (v[k][p], v[k][q]);
                v[k][p] = c * vkp - s * vkq;
                v[k][q] = s * vkp + c * vkq;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let values = order.map(|i| a[i][i]);
    let vectors = order.map(|i| {
        let mut e = [v[0][i], v[1][i], v[2][i]];
        let largest = e
            .iter()
            .copied()
            .max_by(|x, y| x.abs().total_cmp(&y.abs()))
            .unwrap();
        if largest < 0.0 {
            e = e.map(|x| -x);
        }
        e
    });
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let m = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.25], [0.5, 0.25, 2.0]];
        let (values, vectors) = symmetric_eigen3(m);
        assert!(values[0] >= values[1] && values[1] >= values[2]);
        for i in 0..3 {
            for j in 0..3 {
                let rebuilt: f64 = (0..3)
                    .map(|k| vectors[k][i] * values[k] * vectors[k][j])
                    .sum();
                assert!((rebuilt - m[i][j]).abs() < 1e-12, "{i},{j}: {rebuilt}");
                let dot: f64 = (0..3).map(|k| vectors[i][k] * vectors[j][k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn diagonal_and_repeated_eigenvalues() {
        let (values, vectors) =
            symmetric_eigen3([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0]]);
        assert_eq!(values, [3.0, 2.0, 1.0]);
        assert_eq!(vectors, [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]);
        let (values, _) = symmetric_eigen3([[2.0; 3]; 3]);
        assert!((values[0] - 6.0).abs() < 1e-12 && values[1].abs() < 1e-12);
    }

    #[test]
    fn moments_match_direct_sums() {
        let pixels: Vec<u8> = (0..3 * 50).map(|i| (i * 37 % 256) as u8).collect();
        let m = ImageMoments::of(&pixels, 3);
        let plane = 50;
        for a in 0..3 {
            let s: u64 = pixels[a * plane..(a + 1) * plane]
                .iter()
                .map(|&v| v as u64)
                .sum();
            assert_eq!(m.sums[a], s);
            for b in 0..3 {
                let c: u64 = (0..plane)
                    .map(|i| pixels[a * plane + i] as u64 * pixels[b * plane + i] as u64)
                    .sum();
                assert_eq!(m.cross[a][b], c);
            }
        }
    }
}
