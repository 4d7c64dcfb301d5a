//! How fast `prepare` turns ImageNet-sized JPEG photos (500x375) into 256x256
//! stored images: decode, resize the shorter side to 256, centre crop, (encode as
//! JPEG,) write shards, on one thread and on all of them; and the bytes each
//! image takes on disk.
//!
//! `cargo run --release -p alexnet-data --example prepare_bench [-- images]
//! [--encoding raw|jpeg] [--quality Q] [--photos DIR]`
//!
//! The photos are generated (smooth colour fields with noise, JPEG quality 90) so
//! the benchmark needs no data; decoding cost depends mostly on the pixel count.
//! `--photos DIR` prepares the files of DIR instead (each its own class), e.g.
//! `crates/alexnet-data/tests/photos`.

use std::time::Instant;

use alexnet_data::{FolderOptions, PrepareOptions, prepare_folder};

#[path = "common/photos.rs"]
mod photos;

fn main() {
    let options = photos::options();
    let images: usize = options
        .positional
        .first()
        .map_or(400, |a| a.parse().expect("image count"));
    let root = std::env::temp_dir().join(format!("alexnet-prepare-bench-{}", std::process::id()));
    let (train, what) = match &options.photos {
        Some(dir) => (
            photos::copied_photos(&root, dir),
            format!("the photos of {}", dir.display()),
        ),
        None => (
            photos::generated_photos(&root, images),
            format!("{images} JPEGs of 500x375"),
        ),
    };
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let out = root.join(format!("out-{threads}"));
        let mut prepare = PrepareOptions::new(&out);
        prepare.progress = false;
        prepare.encoding = options.encoding;
        let started = Instant::now();
        let summary = pool
            .install(|| prepare_folder(&FolderOptions::new(&train), &prepare))
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let (bytes, stored) = photos::stored_bytes(&out);
        println!(
            "prepare ({}), {threads} thread(s): {what} -> 256x256 in {seconds:.2} s: {:.0} images/s ({:.0} per thread); \
             {} skipped; {:.0} bytes per image on disk",
            options.encoding,
            stored as f64 / seconds,
            stored as f64 / seconds / threads as f64,
            summary.skipped,
            bytes as f64 / stored as f64
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
