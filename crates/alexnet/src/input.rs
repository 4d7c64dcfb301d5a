//! Cutting the network's input out of stored images (Section 4.1): a crop at an
//! offset, reflected left-right or not, minus the mean image, plus the image's PCA
//! colour shift, times a per-channel scale. [`cut_view`] is the definition; the
//! data loader uses it on the host, and a backend may do the same work where its
//! buffers live ([`crate::Backend::cut_views`]), so that a GPU receives the stored
//! bytes instead of finished crops: for the paper's 224 crops of 256x256 images,
//! a third of one crop's f32 values, a thirtieth of the ten test patches'.

use crate::error::{Error, Result};
use crate::layers::Shape;

/// Where and how one view is cut from its stored image.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ViewPlacement {
    /// Which stored image of the batch.
    pub image: usize,
    /// Top-left corner of the crop in the stored image.
    pub y: usize,
    pub x: usize,
    /// Reflect the crop left-right.
    pub flip: bool,
    /// Added to every value of each channel (the PCA colour shift).
    pub shift: [f32; 3],
}

/// Stored images and the views to cut from them: one view per network input.
#[derive(Clone, Copy, Debug)]
pub struct StoredBatch<'a> {
    /// The stored images back to back, each `stored` (channels x height x width) bytes.
    pub pixels: &'a [u8],
    pub stored: Shape,
    pub crop_height: usize,
    pub crop_width: usize,
    pub views: &'a [ViewPlacement],
    /// Subtract the mean image (one value per stored byte); otherwise raw values.
    pub subtract_mean: bool,
    /// Each channel is multiplied by this after the mean and shift; grey images use
    /// the first entry.
    pub scale: [f32; 3],
}

fn batch_error(expected: String, found: String) -> Error {
    Error::Input {
        what: "stored batch".into(),
        expected,
        found,
    }
}

impl<'a> StoredBatch<'a> {
    /// A batch of `views` cut `crop_height x crop_width` from `pixels`, with the
    /// values as stored: no mean subtracted, every channel scaled by 1.
    pub fn raw(
        pixels: &'a [u8],
        stored: Shape,
        crop_height: usize,
        crop_width: usize,
        views: &'a [ViewPlacement],
    ) -> StoredBatch<'a> {
        StoredBatch {
            pixels,
            stored,
            crop_height,
            crop_width,
            views,
            subtract_mean: false,
            scale: [1.0; 3],
        }
    }

    /// The shape of each view: the stored channels, cropped.
    pub fn view_shape(&self) -> Shape {
        Shape::new(self.stored.channels, self.crop_height, self.crop_width)
    }

    /// Stored images in the batch.
    pub fn images(&self) -> usize {
        self.pixels.len() / self.stored.len().max(1)
    }

    /// Checks that every view lies inside an image of the batch.
    pub fn validate(&self) -> Result<()> {
        let s = self.stored;
        if s.is_empty() || s.channels > 3 || self.crop_height == 0 || self.crop_width == 0 {
            return Err(batch_error(
                "1 to 3 channels, a non-empty image and crop".into(),
                format!("{s}, crop {}x{}", self.crop_height, self.crop_width),
            ));
        }
        if self.crop_height > s.height || self.crop_width > s.width {
            return Err(batch_error(
                format!("a crop within the stored {}x{}", s.height, s.width),
                format!("{}x{}", self.crop_height, self.crop_width),
            ));
        }
        if !self.pixels.len().is_multiple_of(s.len()) {
            return Err(batch_error(
                format!("whole images of {} bytes", s.len()),
                format!("{} bytes", self.pixels.len()),
            ));
        }
        let images = self.images();
        if let Some(bad) = self.views.iter().find(|v| {
            v.image >= images
                || v.y > s.height - self.crop_height
                || v.x > s.width - self.crop_width
        }) {
            return Err(batch_error(
                format!(
                    "views inside the {images} images (offsets up to {}, {})",
                    s.height - self.crop_height,
                    s.width - self.crop_width
                ),
                format!("image {} at ({}, {})", bad.image, bad.y, bad.x),
            ));
        }
        Ok(())
    }
}

/// Writes one view of the stored image `pixels` (`stored` bytes) into `dst`
/// (`channels x crop_height x crop_width`) as `(pixel - mean + shift) * scale`.
pub fn cut_view(
    dst: &mut [f32],
    pixels: &[u8],
    mean: Option<&[f32]>,
    stored: Shape,
    crop: (usize, usize),
    view: &ViewPlacement,
    scale: &[f32; 3],
) {
    let (ch, cw) = crop;
    let plane = stored.height * stored.width;
    for c in 0..stored.channels {
        let (shift, s) = (view.shift[c], scale[c]);
        for y in 0..ch {
            let at = c * plane + (view.y + y) * stored.width + view.x;
            let src = &pixels[at..at + cw];
            let out = &mut dst[(c * ch + y) * cw..][..cw];
            match (mean, view.flip) {
                (Some(mean), false) => {
                    let m = &mean[at..at + cw];
                    for ((o, &p), &m) in out.iter_mut().zip(src).zip(m) {
                        *o = (p as f32 - m + shift) * s;
                    }
                }
                (Some(mean), true) => {
                    let m = &mean[at..at + cw];
                    for ((o, &p), &m) in out.iter_mut().zip(src.iter().rev()).zip(m.iter().rev()) {
                        *o = (p as f32 - m + shift) * s;
                    }
                }
                (None, false) => {
                    for (o, &p) in out.iter_mut().zip(src) {
                        *o = (p as f32 + shift) * s;
                    }
                }
                (None, true) => {
                    for (o, &p) in out.iter_mut().zip(src.iter().rev()) {
                        *o = (p as f32 + shift) * s;
                    }
                }
            }
        }
    }
}

/// Cuts every view of a (validated) batch into `out`, view after view.
pub fn cut_views(batch: &StoredBatch, mean: Option<&[f32]>, out: &mut [f32]) {
    let per_view = batch.view_shape().len();
    let per_image = batch.stored.len();
    let mean = if batch.subtract_mean { mean } else { None };
    for (view, dst) in batch.views.iter().zip(out.chunks_exact_mut(per_view)) {
        cut_view(
            dst,
            &batch.pixels[view.image * per_image..][..per_image],
            mean,
            batch.stored,
            (batch.crop_height, batch.crop_width),
            view,
            &batch.scale,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_the_crop_reflected_minus_the_mean_plus_the_shift_scaled() {
        // Two 2x3x4 images: byte = 100 * image + 10 * row + column (+ 50 in channel 1).
        let stored = Shape::new(2, 3, 4);
        let pixels: Vec<u8> = (0..2)
            .flat_map(|i| {
                (0..2).flat_map(move |c| {
                    (0..3).flat_map(move |y| {
                        (0..4).map(move |x| (100 * i + 50 * c + 10 * y + x) as u8)
                    })
                })
            })
            .collect();
        let mean = vec![1.0; stored.len()];
        let view = ViewPlacement {
            image: 1,
            y: 1,
            x: 1,
            flip: true,
            shift: [0.5, -0.5, 9.0],
        };
        let batch = StoredBatch {
            pixels: &pixels,
            stored,
            crop_height: 2,
            crop_width: 3,
            views: &[view],
            subtract_mean: true,
            scale: [2.0, 1.0, 7.0],
        };
        batch.validate().unwrap();
        let mut out = vec![0.0; 12];
        cut_views(&batch, Some(&mean), &mut out);
        // Channel 0, rows 1-2, columns 3, 2, 1 (reflected): (p - 1 + 0.5) * 2.
        let row = |c: i32, y: i32| -> Vec<f32> {
            [3, 2, 1]
                .iter()
                .map(|x| (100 + 50 * c + 10 * y + x) as f32)
                .collect()
        };
        let mut expected = Vec::new();
        for y in [1, 2] {
            expected.extend(row(0, y).iter().map(|p| (p - 1.0 + 0.5) * 2.0));
        }
        for y in [1, 2] {
            expected.extend(row(1, y).iter().map(|p| p - 1.0 - 0.5));
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn views_outside_their_images_are_refused() {
        let pixels = vec![0u8; 2 * 12];
        let mut view = ViewPlacement {
            x: 2,
            ..Default::default()
        };
        let batch = |views: &[ViewPlacement]| {
            StoredBatch::raw(&pixels, Shape::new(1, 3, 4), 2, 3, views).validate()
        };
        assert!(
            batch(&[view])
                .unwrap_err()
                .to_string()
                .contains("at (0, 2)")
        );
        view.x = 1;
        view.image = 2;
        assert!(batch(&[view]).unwrap_err().to_string().contains("image 2"));
        view.image = 1;
        batch(&[view]).unwrap();
    }
}
