//! `alexnet prepare`: turns a source (class folders of photographs, MNIST or
//! Fashion-MNIST IDX files, CIFAR-10/100 binary batches) into a dataset directory
//! that training reads at full speed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use alexnet_data::{
    Encoding, FolderOptions, IdxNames, PrepareOptions, SourceKind, detect_source, prepare_cifar,
    prepare_folder, prepare_idx,
};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// The source directory: class folders of photographs (root/<class>/*.jpg),
    /// MNIST or Fashion-MNIST IDX files, or CIFAR-10/100 binary batches.
    pub input: PathBuf,
    /// The dataset directory to write (built in <out>.partial, renamed when complete).
    #[arg(long, short)]
    pub out: PathBuf,
    /// What the source is (default: recognised from its files).
    #[arg(long, value_enum, default_value_t = SourceFormat::Auto)]
    pub format: SourceFormat,
    /// IDX files: class names (default: fashion when the path mentions "fashion", else digits).
    #[arg(long, value_enum)]
    pub names: Option<Names>,
    /// Photo folders: a validation folder, in class folders or flat with --val-labels.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Photo folders: ground truth of a flat --val folder, one 1-based class index a
    /// line for the files in sorted name order (ILSVRC's validation ground truth).
    #[arg(long, requires = "val")]
    pub val_labels: Option<PathBuf>,
    /// Photo folders: the class list, "<id> <name>" a line ("n01440764 tench, Tinca
    /// tinca"); fixes the class order and names.
    #[arg(long)]
    pub synsets: Option<PathBuf>,
    /// Photo folders: the stored side; the shorter side is resized to it, then the
    /// central square is kept [default: 256, the paper's].
    #[arg(long)]
    pub size: Option<u32>,
    /// Photo folders: skip images that declare more pixels than this (decompression
    /// bombs) [default: 100000000].
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// Largest shard file, in MiB (JPEG shards hold as many images as raw ones of
    /// this size would, so they come out smaller).
    #[arg(long, default_value_t = 512)]
    pub shard_mb: u64,
    /// How to store each image: raw pixels (fastest to read) or JPEG (about a
    /// tenth of the disk space, for small disks; the loader decodes it).
    #[arg(long, value_enum, default_value_t = StoredEncoding::Raw)]
    pub encoding: StoredEncoding,
    /// With --encoding jpeg: the JPEG quality, 1-100 [default: 90].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: Option<u8>,
    /// The dataset's name (default: the source folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace a finished dataset already at --out.
    #[arg(long)]
    pub force: bool,
    /// Write at most this many shards, then stop; the same command continues later.
    #[arg(long)]
    pub stop_after_shards: Option<usize>,
    #[command(flatten)]
    pub threads: crate::engine::ThreadsArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceFormat {
    Auto,
    /// MNIST-style IDX files.
    Idx,
    /// CIFAR-10 or CIFAR-100 binary batches.
    Cifar,
    /// Class folders of photographs.
    Folder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoredEncoding {
    /// Raw pixels, read in place.
    Raw,
    /// One JPEG per image.
    Jpeg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Names {
    Digits,
    Fashion,
}

pub fn run(args: PrepareArgs) -> Result<()> {
    if args.val.is_none() {
        suggest_split_folders(&args.input)?;
    }
    let kind = match args.format {
        SourceFormat::Auto => detect_source(&args.input)?,
        SourceFormat::Idx => SourceKind::Idx,
        SourceFormat::Cifar => SourceKind::Cifar,
        SourceFormat::Folder => SourceKind::Folder,
    };
    let photo_only = [
        ("--val", args.val.is_some()),
        ("--val-labels", args.val_labels.is_some()),
        ("--synsets", args.synsets.is_some()),
        ("--size", args.size.is_some()),
        ("--max-pixels", args.max_pixels.is_some()),
    ];
    let misplaced = photo_only
        .iter()
        .find(|(_, given)| *given && kind != SourceKind::Folder);
    if let Some((flag, _)) = misplaced {
        let holds = if kind == SourceKind::Idx {
            "IDX"
        } else {
            "CIFAR"
        };
        bail!(
            "{flag} applies to photo folders, but {} holds {holds} files (stored at their native size)",
            args.input.display()
        );
    }
    if kind != SourceKind::Idx && args.names.is_some() {
        bail!("--names applies to MNIST-style IDX files only");
    }
    if args.shard_mb == 0 {
        bail!("--shard-mb: expected at least 1");
    }
    let encoding = match (args.encoding, args.jpeg_quality) {
        (StoredEncoding::Raw, Some(_)) => bail!("--jpeg-quality applies to --encoding jpeg only"),
        (StoredEncoding::Raw, None) => Encoding::Raw,
        (StoredEncoding::Jpeg, None) => Encoding::DEFAULT_JPEG,
        (StoredEncoding::Jpeg, Some(quality)) => Encoding::Jpeg { quality },
    };

    let mut opts = PrepareOptions::new(&args.out);
    opts.force = args.force;
    opts.name = args.name;
    opts.shard_bytes = args.shard_mb.saturating_mul(1 << 20);
    opts.progress = std::io::stderr().is_terminal();
    opts.stop_after_shards = args.stop_after_shards;
    opts.encoding = encoding;

    let summary = match kind {
        SourceKind::Idx => prepare_idx(
            &args.input,
            args.names.map(|n| match n {
                Names::Digits => IdxNames::Digits,
                Names::Fashion => IdxNames::Fashion,
            }),
            &opts,
        )?,
        SourceKind::Cifar => prepare_cifar(&args.input, &opts)?,
        SourceKind::Folder => {
            let mut folder = FolderOptions::new(&args.input);
            folder.val = args.val;
            folder.val_labels = args.val_labels;
            if args.synsets.is_none() && named_by_wordnet_ids(&args.input) {
                // ImageNet's layout: folders named by WordNet ids get the shipped names.
                let classes = alexnet_interop::classes::imagenet_1k();
                folder.known_names = classes
                    .ids
                    .into_iter()
                    .zip(classes.names)
                    .map(|(id, name)| alexnet_data::ClassInfo { id, name })
                    .collect();
            }
            folder.synsets = args.synsets;
            if let Some(size) = args.size {
                folder.size = size;
            }
            if let Some(max) = args.max_pixels {
                folder.max_pixels = max;
            }
            prepare_folder(&folder, &opts)?
        }
    };
    println!("{summary}");
    Ok(())
}

/// A dataset root holding `train/` and `val/` (the usual download) is not a
/// folder of classes: say which command prepares it, rather than failing on
/// two classes of folders.
fn suggest_split_folders(input: &Path) -> Result<()> {
    let train = input.join("train");
    let val = ["val", "validation"]
        .into_iter()
        .map(|name| input.join(name))
        .find(|dir| dir.is_dir());
    if let (true, Some(val)) = (train.is_dir(), val) {
        bail!(
            "{} holds a train and a validation folder, not class folders: prepare it with\n  \
             alexnet prepare {} --val {} --out <dataset>",
            input.display(),
            train.display(),
            val.display()
        );
    }
    Ok(())
}

/// Whether every class folder of `input` is named by a WordNet id (`n01440764`).
fn named_by_wordnet_ids(input: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(input) else {
        return false;
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    !names.is_empty()
        && names.iter().all(|n| {
            n.len() == 9 && n.starts_with('n') && n[1..].bytes().all(|b| b.is_ascii_digit())
        })
}
