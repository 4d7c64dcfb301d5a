//! Writes a folder of photographs big enough to time training from disk on a
//! machine without network: every image is an augmented view of one of the
//! repository's real photographs (a random square crop of 60-100% of the
//! shorter side, a reflection, a colour shift), 256x256, saved as JPEG at
//! quality 90 as the ImageNet recipe stores them. Each source photo is a class.
//! Prints the images written and their mean JPEG size; then
//! `alexnet prepare OUT --encoding jpeg --out DATA` makes the dataset.
//!
//! `cargo run --release -p alexnet-data --example photo_dataset -- OUT [IMAGES] [--photos DIR]`
//! (default 20000 images, from crates/alexnet-data/tests/photos).

use std::path::{Path, PathBuf};
use std::time::Instant;

use alexnet::rng::Rng;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rayon::prelude::*;

/// The stored side, as `prepare` stores ImageNet.
const SIDE: u32 = 256;
const QUALITY: u8 = 90;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let photos = take_option(&mut args, "--photos").map_or_else(default_photos, PathBuf::from);
    let [out, rest @ ..] = &args[..] else {
        eprintln!("usage: photo_dataset OUT [IMAGES] [--photos DIR]");
        std::process::exit(2);
    };
    let images: usize = match rest.first().map(|n| n.parse()) {
        None => 20_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("IMAGES: expected a number of images above 0, got {rest:?}");
            std::process::exit(2);
        }
    };
    let sources = read_photos(&photos);
    if sources.is_empty() {
        eprintln!("no photograph could be read in {}", photos.display());
        std::process::exit(1);
    }
    let started = Instant::now();
    let bytes = write_views(Path::new(out), &sources, images);
    println!(
        "{images} images of {SIDE}x{SIDE} from {} photographs in {}: mean JPEG {:.1} KB (quality {QUALITY}), \
         {:.1} s",
        sources.len(),
        out,
        bytes as f64 / images as f64 / 1000.0,
        started.elapsed().as_secs_f64()
    );
}

/// Removes `--name VALUE` from `args`, returning VALUE.
fn take_option(args: &mut Vec<String>, name: &str) -> Option<String> {
    let at = args.iter().position(|a| a == name)?;
    let value = args.get(at + 1).cloned();
    args.drain(at..(at + 2).min(args.len()));
    value
}

fn default_photos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/photos")
}

/// Every photograph of `dir` that decodes, as RGB, with its file stem.
fn read_photos(dir: &Path) -> Vec<(String, RgbImage)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e != "md"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| match image::open(&path) {
            Ok(photo) => {
                let stem = path.file_stem()?.to_string_lossy().into_owned();
                Some((stem, photo.to_rgb8()))
            }
            Err(e) => {
                eprintln!("skipped {}: {e}", path.display());
                None
            }
        })
        .collect()
}

/// Writes `images` views into `out/<photo>/<i>.jpg` on every core; returns
/// their JPEG bytes.
fn write_views(out: &Path, sources: &[(String, RgbImage)], images: usize) -> u64 {
    for (name, _) in sources {
        let class = out.join(name);
        std::fs::create_dir_all(&class)
            .unwrap_or_else(|e| panic!("creating {}: {e}", class.display()));
    }
    (0..images)
        .into_par_iter()
        .map(|i| {
            // One generator per image: the same folder whatever the thread count.
            let mut rng = Rng::new(0x5eed ^ i as u64);
            let (name, photo) = &sources[i % sources.len()];
            let view = augmented(photo, &mut rng);
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
                .encode_image(&view)
                .expect("encoding an RGB image as JPEG");
            let path = out.join(name).join(format!("{i:07}.jpg"));
            std::fs::write(&path, &jpeg)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            jpeg.len() as u64
        })
        .sum()
}

/// A random square crop (60-100% of the shorter side) resized to the stored
/// side, reflected half of the time, each channel scaled by 0.8-1.2 and
/// shifted by up to 20 levels.
fn augmented(photo: &RgbImage, rng: &mut Rng) -> RgbImage {
    let short = photo.width().min(photo.height());
    let side = ((0.6 + 0.4 * rng.uniform()) * f64::from(short)) as u32;
    let x = rng.below((photo.width() - side + 1) as usize) as u32;
    let y = rng.below((photo.height() - side + 1) as usize) as u32;
    let crop = imageops::crop_imm(photo, x, y, side, side).to_image();
    let mut view = imageops::resize(&crop, SIDE, SIDE, FilterType::CatmullRom);
    if rng.below(2) == 1 {
        imageops::flip_horizontal_in_place(&mut view);
    }
    let shift: [(f64, f64); 3] =
        std::array::from_fn(|_| (0.8 + 0.4 * rng.uniform(), 40.0 * rng.uniform() - 20.0));
    for Rgb(pixel) in view.pixels_mut() {
        for (value, (gain, offset)) in pixel.iter_mut().zip(shift) {
            *value = (f64::from(*value) * gain + offset).clamp(0.0, 255.0) as u8;
        }
    }
    view
}
