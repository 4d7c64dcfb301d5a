//! Photo folders for the data benchmarks (included by `loader_bench` and
//! `prepare_bench`), and their command-line options.

use std::path::{Path, PathBuf};

use alexnet::rng::Rng;
use alexnet_data::Encoding;
use alexnet_data::format::{MANIFEST_FILE, Manifest};
use image::{Rgb, RgbImage};

/// Writes `images` generated ImageNet-sized photos (500x375 JPEG, quality 90:
/// smooth colour fields with noise) in ten class folders under `train`, and
/// returns `train`. Decoding cost depends mostly on the pixel count; the noise
/// makes them harder to compress than most photographs.
pub fn generated_photos(root: &Path, images: usize) -> PathBuf {
    let train = root.join("train");
    let mut rng = Rng::new(1);
    for i in 0..images {
        let class = train.join(format!("class{}", i % 10));
        std::fs::create_dir_all(&class).unwrap();
        let (a, b) = (rng.uniform() * 255.0, rng.uniform() * 255.0);
        let photo = RgbImage::from_fn(500, 375, |x, y| {
            let noise = rng.uniform() * 40.0;
            let r = (a * x as f64 / 500.0 + noise).min(255.0) as u8;
            let g = (b * y as f64 / 375.0 + noise).min(255.0) as u8;
            Rgb([r, g, ((x + y) % 256) as u8])
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&photo)
            .unwrap();
        std::fs::write(class.join(format!("{i}.jpg")), bytes).unwrap();
    }
    train
}

/// Copies every file of `photos` into a class folder of its own under
/// `root/train`, and returns that folder.
pub fn copied_photos(root: &Path, photos: &Path) -> PathBuf {
    let train = root.join("train");
    for entry in std::fs::read_dir(photos).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !path.is_file() || name.starts_with('.') || name.ends_with(".md") {
            continue;
        }
        let class = train.join(name.replace('.', "_"));
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(&path, class.join(&name)).unwrap();
    }
    train
}

/// Bytes of a prepared dataset's shards, and its image count.
pub fn stored_bytes(dataset: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(dataset.join(MANIFEST_FILE)).unwrap();
    let manifest: Manifest = serde_json::from_str(&text).unwrap();
    let shards = manifest.splits.iter().flat_map(|s| &s.shards);
    shards.fold((0, 0), |(b, n), s| (b + s.bytes, n + s.images))
}

/// The options the benchmarks share: `--encoding raw|jpeg`, `--quality Q` (JPEG,
/// default 90) and `--photos DIR` (a folder of photos instead of generated ones),
/// after the positional arguments.
pub struct Options {
    pub positional: Vec<String>,
    pub encoding: Encoding,
    pub photos: Option<PathBuf>,
}

pub fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let (mut jpeg, mut quality, mut photos) = (false, 90u8, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--encoding" => {
                jpeg = match value().as_str() {
                    "raw" => false,
                    "jpeg" => true,
                    other => panic!("--encoding: expected raw or jpeg, found {other}"),
                }
            }
            "--quality" => quality = value().parse().expect("--quality: 1-100"),
            "--photos" => photos = Some(PathBuf::from(value())),
            _ => positional.push(arg),
        }
    }
    Options {
        positional,
        encoding: if jpeg {
            Encoding::Jpeg { quality }
        } else {
            Encoding::Raw
        },
        photos,
    }
}
