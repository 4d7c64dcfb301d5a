//! What a training run is: the configuration a caller gives (from flags or from
//! code), and the settings that identify a run, stored in its checkpoints so that
//! a resume with other settings is refused.

use std::path::PathBuf;

use alexnet::NetSpec;
use alexnet::spec::{LayerSpec, Recipe, Schedule};
use alexnet_data::Dataset;
use serde::{Deserialize, Serialize};

/// A training run as asked for. Settings left `None` take the description's
/// recipe. Built once, by the command line or by code, and handed to
/// [`Trainer::new`](crate::Trainer::new).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// A prepared dataset directory.
    pub data: PathBuf,
    /// The network; its input size and class count are fitted to the dataset.
    pub arch: NetSpec,
    /// Where checkpoints go (`last.safetensors`, `best.safetensors`).
    pub out: PathBuf,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Start from the weights of this checkpoint (fine-tuning); a parameter of
    /// another shape (a last layer for other classes) starts fresh.
    pub init_from: Option<PathBuf>,
    /// Layers whose parameters stay fixed.
    pub freeze: Vec<String>,
    /// The recipe's settings, where given.
    pub recipe: RecipeOverrides,
    /// Dropout probability for every dropout layer (default: the description's).
    pub dropout: Option<f32>,
    /// Stop after this many steps in all.
    pub max_steps: Option<u64>,
    /// Images of the training split held out for validation when the dataset
    /// has no `val` split.
    pub holdout: usize,
    /// The paper's augmentation of training images.
    pub augment: Augmentation,
    /// Seeds the initialisation, the data order, the augmentation and dropout.
    pub seed: u64,
    /// A checkpoint every this many steps (besides every epoch).
    pub checkpoint_every: u64,
    /// A step line to the observers every this many steps (besides every epoch).
    pub log_every: u64,
    /// Loader worker threads.
    pub loader_threads: usize,
    /// With several processes: sum their gradients carried as bf16 (half the
    /// bytes) instead of f32.
    pub bf16_gradients: bool,
    /// With several processes: gradients are summed in buckets of this many
    /// bytes, each started as soon as the backward pass has finished its
    /// gradients, where the communicator sums in the background; 0 sums them
    /// one tensor at a time after the backward pass.
    pub bucket_bytes: usize,
}

/// The default size of a bucket of gradients summed during the backward pass
/// (as PyTorch's DDP): large enough that a sum is not dominated by its
/// latency, small enough that the first starts early.
pub const BUCKET_BYTES: usize = 25 << 20;

impl TrainConfig {
    /// The paper's recipe for `arch` on `data`, writing into `out`, with the
    /// command line's defaults for everything else.
    pub fn new(data: impl Into<PathBuf>, arch: NetSpec, out: impl Into<PathBuf>) -> TrainConfig {
        TrainConfig {
            data: data.into(),
            arch,
            out: out.into(),
            resume: false,
            init_from: None,
            freeze: Vec::new(),
            recipe: RecipeOverrides::default(),
            dropout: None,
            max_steps: None,
            holdout: 5000,
            augment: Augmentation::default(),
            seed: 1,
            checkpoint_every: 1000,
            log_every: 100,
            loader_threads: 1,
            bf16_gradients: false,
            bucket_bytes: BUCKET_BYTES,
        }
    }
}

/// Settings of the description's recipe that a run replaces; `None` keeps the recipe's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipeOverrides {
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub learning_rate: Option<f32>,
    pub momentum: Option<f32>,
    pub weight_decay: Option<f32>,
    pub schedule: Option<Schedule>,
    /// Plateau schedule: epochs without improvement before the rate is divided.
    pub patience: Option<usize>,
    /// Steps schedule: the epochs after which the rate is divided.
    pub lr_steps: Option<Vec<usize>>,
    /// How many times the rate may be divided.
    pub max_drops: Option<usize>,
}

/// The paper's augmentation (Section 4.1): random crops, horizontal reflections
/// and the PCA colour shift.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    pub random_crop: bool,
    pub mirror: bool,
    /// Standard deviation of the PCA colour shift (paper: 0.1; 0 turns it off).
    pub pca_std: f32,
}

impl Default for Augmentation {
    fn default() -> Self {
        Augmentation {
            random_crop: true,
            mirror: true,
            pca_std: 0.1,
        }
    }
}

/// The choices that define a run; resuming with others is refused. Stored in
/// every checkpoint's training state (the field names are its JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSettings {
    pub dataset: String,
    pub dataset_train_images: usize,
    pub seed: u64,
    pub batch: usize,
    pub epochs: usize,
    pub momentum: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    pub patience: usize,
    pub lr_steps: Vec<usize>,
    pub max_drops: usize,
    pub lr_drop_factor: f32,
    /// Held-out images (0 where the dataset has a `val` split).
    pub holdout: usize,
    pub view: Augmentation,
}

impl RunSettings {
    /// The settings of `config` on `dataset`: the recipe with its overrides.
    pub fn of(config: &TrainConfig, dataset: &Dataset, train_images: usize) -> RunSettings {
        let recipe: &Recipe = &config.arch.recipe;
        let given = &config.recipe;
        let has_val = dataset.split_names().iter().any(|s| s == "val");
        RunSettings {
            dataset: dataset.info().name.clone(),
            dataset_train_images: train_images,
            seed: config.seed,
            batch: given.batch.unwrap_or(recipe.batch),
            epochs: given.epochs.unwrap_or(recipe.epochs),
            momentum: given.momentum.unwrap_or(recipe.momentum),
            weight_decay: given.weight_decay.unwrap_or(recipe.weight_decay),
            schedule: given.schedule.unwrap_or(recipe.schedule),
            patience: given.patience.unwrap_or(recipe.patience),
            lr_steps: given
                .lr_steps
                .clone()
                .unwrap_or_else(|| recipe.lr_steps.clone()),
            max_drops: given.max_drops.unwrap_or(recipe.lr_drops),
            lr_drop_factor: recipe.lr_drop_factor,
            holdout: if has_val { 0 } else { config.holdout },
            view: config.augment,
        }
    }
}

/// The description fitted to the dataset: its channels, its class count, and an
/// input no larger than its images (28x28 images give a 28x28 net, 256x256 photos
/// keep the description's 224x224 crops); dropout as `dropout` says.
pub fn fit_spec(spec: &NetSpec, dataset: &Dataset, dropout: Option<f32>) -> NetSpec {
    let info = dataset.info();
    let (height, width) = (
        spec.input.height.min(info.height),
        spec.input.width.min(info.width),
    );
    let mut spec = spec
        .clone()
        .with_input(info.channels, height, width)
        .with_classes(info.classes.len());
    if let Some(p) = dropout {
        for layer in &mut spec.layers {
            if let LayerSpec::Dropout(d) = layer {
                d.p = p;
            }
        }
    }
    spec
}
