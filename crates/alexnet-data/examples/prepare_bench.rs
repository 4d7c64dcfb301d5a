//! How fast `prepare` turns ImageNet-sized JPEG photos (500x375) into 256x256
//! stored images: decode, resize the shorter side to 256, centre crop, write
//! shards, on one thread and on all of them.
//!
//! `cargo run --release -p alexnet-data --example prepare_bench [-- images]`
//!
//! The photos are generated (smooth colour fields with noise, JPEG quality 90) so
//! the benchmark needs no data; decoding cost depends mostly on the pixel count.

use std::time::Instant;

use alexnet::rng::Rng;
use alexnet_data::{FolderOptions, PrepareOptions, prepare_folder};
use image::{Rgb, RgbImage};

fn main() {
    let images: usize = std::env::args()
        .nth(1)
        .map_or(400, |a| a.parse().expect("image count"));
    let root = std::env::temp_dir().join(format!("alexnet-prepare-bench-{}", std::process::id()));
    let mut rng = Rng::new(1);
    for i in 0..images {
        let class = root.join("train").join(format!("class{}", i % 10));
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
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let out = root.join(format!("out-{threads}"));
        let mut options = PrepareOptions::new(&out);
        options.progress = false;
        let started = Instant::now();
        let summary = pool
            .install(|| prepare_folder(&FolderOptions::new(&root.join("train")), &options))
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "prepare, {threads} thread(s): {images} JPEGs of 500x375 -> 256x256 in {seconds:.2} s: {:.0} images/s ({:.0} per thread); {} skipped",
            images as f64 / seconds,
            images as f64 / seconds / threads as f64,
            summary.skipped
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
