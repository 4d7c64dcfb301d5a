//! # alexnet-data
//!
//! Datasets for the `alexnet` engine: sources (photo folders in ImageNet's layout,
//! MNIST/Fashion-MNIST IDX files, CIFAR binary batches) prepared once into a
//! dataset directory of fixed-size records (or, to save disk, JPEG streams), then
//! read through memory maps and fed
//! to training with the paper's augmentation (Section 4.1): random crops and
//! reflections, PCA colour shifts, mean-image subtraction, and the ten test patches.
//!
//! ```no_run
//! use std::path::Path;
//! use alexnet_data::{Dataset, Loader, LoaderConfig, View};
//!
//! let dataset = Dataset::open(Path::new("data/imagenet")).unwrap();
//! let split = dataset.split("train").unwrap();
//! let config = LoaderConfig::new(128, View::paper_train(224, 224), 42, 0);
//! let mut loader = Loader::new(split, config, dataset.mean_shared(), dataset.info()).unwrap();
//! while let Some(batch) = loader.next_batch().unwrap() {
//!     // batch.images: 128 x 3 x 224 x 224 f32, NCHW; batch.labels: 128 labels.
//!     loader.recycle(batch);
//! }
//! ```
//!
//! Modules: [`format`](mod@format) (the files on disk), [`jpeg`] (JPEG shards, the
//! compressed option), [`dataset`] (opening and checking a dataset), [`prepare`]
//! (writing one from a source), [`loader`] (batches).

pub mod dataset;
pub mod error;
pub mod format;
pub mod jpeg;
pub mod loader;
mod pixels;
pub mod prepare;
mod stats;
pub mod testing;

pub use dataset::{Dataset, DatasetInfo, Split};
pub use error::{Error, Result};
pub use format::{ClassInfo, Encoding};
pub use jpeg::DecodeBuffer;
pub use loader::{Batch, Loader, LoaderConfig, Part, View, holdout};
pub use prepare::{
    FolderOptions, IdxNames, PrepareOptions, SourceKind, Summary, detect_source, load_photo,
    photo_from_bytes, prepare_cifar, prepare_folder, prepare_idx,
};
