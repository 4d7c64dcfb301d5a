//! How fast the loader turns stored 256x256 RGB images into the paper's 224x224
//! training inputs (random crop, reflection, PCA colour shift, mean subtraction),
//! on one thread, on synthetic data; then how fast it delivers the stored images
//! themselves (decoded, for JPEG), as for a GPU that cuts the views, on one
//! worker thread and on one per core.
//!
//! `cargo run -p alexnet-data --example loader_bench [-- images seconds]
//! [--encoding raw|jpeg] [--quality Q] [--photos DIR]`
//!
//! Raw: the dataset is written straight from the format's public pieces
//! (manifest, shard header, records) into a temporary directory, so this also
//! shows the format at work without any source files. JPEG (or `--photos`): the
//! generated photos of `prepare_bench` (or the files of DIR) are prepared with
//! that encoding first, since decoding speed depends on the pictures.

use std::io::Write;
use std::time::Instant;

use alexnet_data::format::{
    self, FileInfo, Manifest, Pca, ShardHeader, ShardInfo, SplitManifest, record_bytes,
};
use alexnet_data::{
    ClassInfo, Dataset, FolderOptions, Loader, LoaderConfig, PrepareOptions, View, prepare_folder,
};

#[path = "common/photos.rs"]
mod photos;

/// The process's own memory (`RssAnon`: buffers, queue) and the pages of mapped
/// files it has touched (`RssFile`: the shards, which the kernel can drop and
/// re-read), from /proc (Linux only).
fn resident_memory() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return "unknown (no /proc/self/status)".into();
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "own {} + mapped shard pages {}",
        field("RssAnon:"),
        field("RssFile:")
    )
}

/// Writes a dataset of `images` random 3x256x256 images into `dir`, by hand.
fn synthetic_dataset(dir: &std::path::Path, images: usize) {
    let (c, h, w) = (3usize, 256usize, 256usize);
    // Synthetic images: a cheap generator's bytes, labels cycling over 1000 classes.
    let record = record_bytes(c, h, w).unwrap();
    let shard_path = dir.join(format::shard_file_name("train", 0));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&shard_path).unwrap());
    let header = ShardHeader {
        channels: c as u32,
        height: h as u32,
        width: w as u32,
        count: images as u64,
    };
    let mut crc = crc32fast::Hasher::new();
    let mut put = |bytes: &[u8]| {
        crc.update(bytes);
        file.write_all(bytes).unwrap();
    };
    put(&header.to_bytes());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut pixels = vec![0u8; record - 4];
    for i in 0..images {
        put(&((i % 1000) as u32).to_le_bytes());
        for p in pixels.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *p = (state >> 56) as u8;
        }
        put(&pixels);
    }
    file.flush().unwrap();
    drop(file);
    let mean = vec![127.5f32; c * h * w];
    let mean_bytes: Vec<u8> = mean.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join(format::MEAN_FILE), &mean_bytes).unwrap();
    let manifest = Manifest {
        format: format::FORMAT.into(),
        version: format::VERSION,
        name: "synthetic".into(),
        source: "loader_bench".into(),
        channels: c,
        height: h,
        width: w,
        classes: (0..1000)
            .map(|k| ClassInfo {
                id: format!("c{k}"),
                name: format!("class {k}"),
            })
            .collect(),
        mean: FileInfo {
            file: format::MEAN_FILE.into(),
            bytes: mean_bytes.len() as u64,
            crc32: crc32fast::hash(&mean_bytes),
        },
        // ImageNet-like colour statistics (variances on the 0-255 scale).
        pca: Pca {
            eigenvalues: [14_140.0, 1_220.0, 293.0],
            eigenvectors: [
                [0.5675, 0.5808, 0.5836],
                [-0.7192, -0.0045, 0.6948],
                [0.4009, -0.8140, 0.4203],
            ],
        },
        splits: vec![SplitManifest {
            name: "train".into(),
            images: images as u64,
            shards: vec![ShardInfo {
                file: format::shard_file_name("train", 0),
                images: images as u64,
                bytes: std::fs::metadata(&shard_path).unwrap().len(),
                crc32: crc.finalize(),
            }],
        }],
        encoding: format::Encoding::Raw,
    };
    std::fs::write(
        dir.join(format::MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

fn main() {
    let options = photos::options();
    let mut args = options.positional.iter();
    let images: usize = args.next().map_or(512, |a| a.parse().expect("image count"));
    let seconds: f64 = args.next().map_or(3.0, |a| a.parse().expect("seconds"));
    let dir = std::env::temp_dir().join(format!("alexnet-loader-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    if options.encoding.is_raw() && options.photos.is_none() {
        std::fs::create_dir_all(&data).unwrap();
        synthetic_dataset(&data, images);
    } else {
        let train = match &options.photos {
            Some(photos) => photos::copied_photos(&dir, photos),
            None => photos::generated_photos(&dir, images),
        };
        let mut prepare = PrepareOptions::new(&data);
        prepare.encoding = options.encoding;
        prepare_folder(&FolderOptions::new(&train), &prepare).unwrap();
    }

    let ds = Dataset::open(&data).unwrap();
    let split = ds.split("train").unwrap();
    let (bytes, stored) = photos::stored_bytes(&data);
    println!(
        "loader: {stored} stored images of 3x256x256 ({}, {:.0} bytes each, {:.1} MB) -> 224x224 f32, \
         random crop + mirror + PCA colour + mean, batch 128",
        options.encoding,
        bytes as f64 / stored as f64,
        bytes as f64 / 1e6
    );
    // A long epoch (the stored images visited many times over through `indices`)
    // so that the few batch buffers allocated at the start are amortised, as in a
    // real epoch of thousands of batches.
    let stored = stored as usize;
    let indices: Vec<u32> = (0..stored.max(512) * 64)
        .map(|i| (i % stored) as u32)
        .collect();
    let indices = std::sync::Arc::new(indices);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_cores = format!("{cores} worker threads");
    let runs = [
        (false, 0, "in the caller's thread"),
        (false, 1, "one worker thread"),
        // As a GPU trainer asks: the stored images, whose views the GPU cuts.
        (true, 1, "stored, one worker"),
        (true, cores, all_cores.as_str()),
    ];
    for (stored, threads, label) in runs {
        let mut config = LoaderConfig::new(128, View::paper_train(224, 224), 1, 0);
        config.threads = threads;
        config.stored = stored;
        config.queue = config.queue.max(threads);
        config.indices = Some(indices.clone());
        let mut loader = Loader::new(split.clone(), config, ds.mean_shared(), ds.info()).unwrap();
        // One batch first, so page faults of the first touch are not timed.
        let first = loader.next_batch().unwrap().unwrap();
        loader.recycle(first);
        let started = Instant::now();
        let mut done = 0usize;
        while started.elapsed().as_secs_f64() < seconds {
            let Some(batch) = loader.next_batch().unwrap() else {
                break;
            };
            done += batch.count;
            loader.recycle(batch);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed;
        let written = if stored {
            format!(
                "{:.2} GB/s of stored bytes",
                rate * (3 * 256 * 256) as f64 / 1e9
            )
        } else {
            format!(
                "{:.2} GB/s of f32 written",
                rate * (3 * 224 * 224 * 4) as f64 / 1e9
            )
        };
        println!(
            "{label:>23}: {rate:>6.0} images/s ({:.0} µs per image per thread, {written}); \
             resident: {}",
            1e6 * threads.max(1) as f64 / rate,
            resident_memory()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
