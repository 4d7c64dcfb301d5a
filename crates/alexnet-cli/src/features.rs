//! `alexnet features` and `alexnet similar`: the activations of the last hidden
//! layer (fc7, 4096 values after its ReLU) for every image of a dataset split, and
//! the images whose vectors lie nearest to a query's in Euclidean distance, drawn
//! as a grid: the paper's Figure 4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alexnet::{Mode, Model, checkpoint};
use alexnet_data::{Dataset, Loader, LoaderConfig, Part};
use anyhow::{Context, Result, bail};
use clap::Args;
use image::{Rgb, RgbImage};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use alexnet_train::{Preprocess, check_compatible, eval_view, load_batch, wants_stored};

use crate::engine::EngineSettings;

#[derive(Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    weights: crate::weights::CheckpointArg,
    /// A prepared dataset directory (or give image files instead).
    #[arg(long, required_unless_present = "images")]
    data: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    split: String,
    /// Image files, instead of a dataset.
    #[arg(conflicts_with = "data")]
    images: Vec<PathBuf>,
    /// The layer whose outputs are the features (default: the last hidden linear layer).
    #[arg(long)]
    layer: Option<String>,
    /// At most this many images (from the start of the split).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Output file (safetensors: `features` [N, D] and `labels` [N]).
    #[arg(long, default_value = "features.safetensors")]
    out: PathBuf,
    #[command(flatten)]
    pub placement: crate::device::Placement,
    #[command(flatten)]
    pub engine: crate::engine::EngineArgs,
}

/// Index (in the plan) of the layer called `name`, or by default of the layer
/// whose output the classifier reads: the paper's fc7 activations (after ReLU;
/// dropout is the identity at test time) for `alexnet`.
pub fn feature_layer(net: &dyn Model, name: Option<&str>) -> Result<usize> {
    let layers = &net.plan().layers;
    match name {
        Some(name) => layers
            .iter()
            .position(|l| l.label.ends_with(&format!("({name})")))
            .with_context(|| format!("the net has no layer named '{name}'")),
        None => {
            let classifier = layers.last().context("the net has no layers")?;
            layers
                .iter()
                .rposition(|l| l.dst == classifier.src)
                .context("the classifier reads the input image directly; name a layer with --layer")
        }
    }
}

pub fn run_features(args: FeaturesArgs, engine: &EngineSettings) -> Result<()> {
    let path = args.weights.path()?;
    let ckpt = checkpoint::load_weights(&path)?;
    let preprocess = Preprocess::from_checkpoint(&ckpt)?;
    let mut net = args
        .placement
        .nets(engine)
        .network_zeroed(&ckpt.spec, args.batch.max(1))?;
    ckpt.apply(net.as_mut(), &path, false)?;
    let layer = feature_layer(net.as_ref(), args.layer.as_deref())?;
    let dim = net.plan().layers[layer].output.len();
    let shape = net.plan().input_shape();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut metadata = HashMap::from([
        ("layer".to_string(), net.plan().layers[layer].label.clone()),
        ("checkpoint".to_string(), path.display().to_string()),
        (
            "checkpoint_sha256".to_string(),
            crate::digest::file_sha256(&path)?,
        ),
    ]);
    if let Some(data) = &args.data {
        let dataset = Dataset::open(data)?;
        let split = dataset.split(&args.split)?;
        check_compatible(&dataset, &ckpt.spec)?;
        let count = args.limit.unwrap_or(split.len()).min(split.len());
        let config = LoaderConfig {
            batch: args.batch.max(1),
            view: eval_view(&preprocess, shape.height, shape.width, false),
            seed: 0,
            epoch: 0,
            shuffle: false,
            start_batch: 0,
            indices: Some(Arc::new((0..count as u32).collect())),
            threads: engine.worker_threads(),
            queue: 2,
            drop_last: false,
            stored: wants_stored(net.as_ref()),
            part: Part::WHOLE,
        };
        let mean = preprocess.mean_for(&dataset)?;
        if config.stored {
            net.set_mean_image(&mean)?;
        }
        let mut loader = Loader::new(split, config, mean, dataset.info())?;
        while let Some(batch) = loader.next_batch()? {
            load_batch(net.as_mut(), &batch)?;
            net.forward(Mode::Test);
            features.extend(net.layer_output(layer));
            labels.extend(batch.labels.iter().map(|&l| l as f32));
        }
        metadata.insert("data".to_string(), data.display().to_string());
        metadata.insert("split".to_string(), args.split.clone());
    } else {
        // Image files: each prepared as `classify` does; labels are unknown (-1).
        for path in &args.images {
            let input = crate::classify::load_input(path, &preprocess, shape.height, shape.width)
                .with_context(|| format!("reading {}", path.display()))?;
            net.set_input(&input)?;
            net.forward(Mode::Test);
            features.extend(net.layer_output(layer));
            labels.push(-1.0);
        }
        let names: Vec<String> = args
            .images
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        metadata.insert("images".to_string(), serde_json::to_string(&names)?);
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (fb, lb) = (bytes(&features), bytes(&labels));
    let tensors = vec![
        (
            "features".to_string(),
            TensorView::new(Dtype::F32, vec![labels.len(), dim], &fb)?,
        ),
        (
            "labels".to_string(),
            TensorView::new(Dtype::F32, vec![labels.len()], &lb)?,
        ),
    ];
    let file = safetensors::serialize(tensors, &Some(metadata))?;
    crate::output::write_atomically(&args.out, &file)?;
    println!(
        "{} vectors of {dim} values from {} to {}",
        labels.len(),
        net.plan().layers[layer].label,
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct SimilarArgs {
    /// A features file written by `alexnet features`.
    #[arg(long)]
    features: PathBuf,
    /// Indices (within the features file) of the query images.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    queries: Vec<usize>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 6)]
    k: usize,
    /// Pixels per image cell in the grid.
    #[arg(long, default_value_t = 96)]
    cell: u32,
    #[arg(long, default_value = "similar.png")]
    out: PathBuf,
    #[command(flatten)]
    pub threads: crate::engine::ThreadsArg,
}

/// Indices of the `k` rows of `features` nearest to row `query` (itself excluded).
pub fn nearest(features: &[f32], dim: usize, query: usize, k: usize) -> Vec<(usize, f32)> {
    let q = &features[query * dim..][..dim];
    let mut found = nearest_to(features, q, k + 1);
    found.retain(|&(i, _)| i != query);
    found.truncate(k);
    found
}

/// Where the pictures of a features file come from: the dataset split, or the
/// image files, that its vectors were computed from.
pub enum Source {
    Split(alexnet_data::Split, [usize; 3]),
    Files(Vec<PathBuf>),
}

/// A features file written by `alexnet features`, read and checked.
pub struct FeatureFile {
    /// `count` rows of `dim` values.
    pub features: Vec<f32>,
    pub count: usize,
    pub dim: usize,
    /// Each row's label (-1 where unknown: image files).
    pub labels: Vec<f32>,
    pub metadata: HashMap<String, String>,
    pub source: Source,
}

impl FeatureFile {
    pub fn open(path: &Path) -> Result<FeatureFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.display();
        let file = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{name} is not a features file"))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let view = file
            .tensor("features")
            .with_context(|| format!("{name} has no `features` tensor"))?;
        let [count, dim] = view.shape()[..] else {
            bail!("{name}: `features` should be two-dimensional")
        };
        if view.dtype() != Dtype::F32 || dim == 0 {
            bail!("{name}: `features` should hold f32 rows of at least one value");
        }
        let features = f32_values(view.data());
        let labels = match file.tensor("labels") {
            Ok(view) if view.dtype() == Dtype::F32 && view.shape() == [count] => {
                f32_values(view.data())
            }
            Ok(_) => bail!("{name}: `labels` should be {count} f32 values"),
            Err(_) => vec![-1.0; count],
        };
        let source = Self::source(&metadata)?;
        Ok(FeatureFile {
            features,
            count,
            dim,
            labels,
            metadata,
            source,
        })
    }

    fn source(metadata: &HashMap<String, String>) -> Result<Source> {
        if let Some(images) = metadata.get("images") {
            return Ok(Source::Files(
                serde_json::from_str(images)
                    .context("the features file's image list is unreadable")?,
            ));
        }
        let data = metadata
            .get("data")
            .context("the features file names neither a dataset nor images")?;
        let split_name = metadata
            .get("split")
            .context("the features file does not name its split")?;
        let dataset = Dataset::open(Path::new(data))?;
        let info = dataset.info();
        Ok(Source::Split(
            dataset.split(split_name)?,
            [info.channels, info.height, info.width],
        ))
    }

    /// Row `index`'s picture as CHW bytes with its shape; image files are read at
    /// `side` x `side`.
    pub fn picture(&self, index: usize, side: u32) -> Result<(Vec<u8>, [usize; 3])> {
        match &self.source {
            Source::Split(split, shape) => {
                if index >= split.len() {
                    bail!("the split has no image {index}");
                }
                let mut decoded = alexnet_data::DecodeBuffer::default();
                Ok((split.read(index, &mut decoded)?.0.to_vec(), *shape))
            }
            Source::Files(paths) => {
                let path = paths
                    .get(index)
                    .context("the features file lists fewer images than vectors")?;
                let side_px = side as usize;
                Ok((
                    alexnet_data::load_photo(path, side, crate::classify::MAX_PIXELS)?,
                    [3, side_px, side_px],
                ))
            }
        }
    }

    /// The image file of row `index`, when the vectors came from files.
    pub fn path(&self, index: usize) -> Option<&Path> {
        match &self.source {
            Source::Files(paths) => paths.get(index).map(PathBuf::as_path),
            Source::Split(..) => None,
        }
    }

    /// Row `index`'s class label, when known.
    pub fn label(&self, index: usize) -> Option<usize> {
        let label = *self.labels.get(index)?;
        (label >= 0.0).then_some(label as usize)
    }
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Indices of the `k` rows of `features` nearest to `query` (a vector of the
/// same length as a row), with their distances.
pub fn nearest_to(features: &[f32], query: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut distances: Vec<(usize, f32)> = features
        .chunks_exact(query.len())
        .map(|row| {
            row.iter()
                .zip(query)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt()
        })
        .enumerate()
        .collect();
    distances.sort_by(|a, b| a.1.total_cmp(&b.1));
    distances.truncate(k);
    distances
}

pub fn run_similar(args: SimilarArgs) -> Result<()> {
    let file = FeatureFile::open(&args.features)?;
    let (count, dim) = (file.count, file.dim);
    let features = &file.features;
    let picture = |index: usize| file.picture(index, args.cell);
    let cell = args.cell;
    let columns = args.k + 1;
    let mut grid = RgbImage::from_pixel(
        columns as u32 * (cell + 4) + 8,
        args.queries.len() as u32 * (cell + 4),
        Rgb([255, 255, 255]),
    );
    for (row, &query) in args.queries.iter().enumerate() {
        if query >= count {
            bail!(
                "query {query} is beyond the {count} vectors of {}",
                args.features.display()
            );
        }
        let neighbours = nearest(features, dim, query, args.k);
        let mut shown = vec![query];
        shown.extend(neighbours.iter().map(|(i, _)| *i));
        println!(
            "query {query}: {}",
            neighbours
                .iter()
                .map(|(i, d)| format!("{i} ({d:.1})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (column, &index) in shown.iter().enumerate() {
            let (pixels, [channels, height, width]) = picture(index)?;
            // The query stands apart from its neighbours by a wider gap.
            let x0 = column as u32 * (cell + 4) + if column > 0 { 8 } else { 0 };
            let y0 = row as u32 * (cell + 4);
            for y in 0..cell {
                for x in 0..cell {
                    let sy = y as usize * height / cell as usize;
                    let sx = x as usize * width / cell as usize;
                    let channel =
                        |c: usize| pixels[(c.min(channels - 1) * height + sy) * width + sx];
                    grid.put_pixel(x0 + x, y0 + y, Rgb([channel(0), channel(1), channel(2)]));
                }
            }
        }
    }
    crate::output::save_png(&grid, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}
