//! Pretrained ImageNet weights in one command: `alexnet weights fetch
//! torchvision|caffe`, and `--pretrained` on the commands that read a
//! checkpoint. The published files are downloaded from their publishers'
//! addresses ([`sources.json`](sources.json)), checked as each publisher allows,
//! imported with the importers of `alexnet import`, and the checkpoint is cached
//! in the user's cache folder (`$XDG_CACHE_HOME/alexnet`, else
//! `~/.cache/alexnet`), so that every later use is instant and offline.
//!
//! `ALEXNET_WEIGHTS_TABLE` names another table of the same form (tests point
//! it at a server on loopback). No setting skips a check: torchvision's files
//! are checked by the SHA-256 prefix in their name, Caffe's model by its SHA-1.

mod download;
mod tar;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;

use download::{Check, Download};

/// The built-in table of addresses and digests.
const SOURCES: &str = include_str!("sources.json");
/// The largest mean image accepted from Caffe's archive (its own is 786 KB).
const MAX_MEAN_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pretrained {
    /// torchvision's `alexnet` (one tower, 224x224, 56.5% top-1 error as torchvision reports).
    Torchvision,
    /// Caffe's `bvlc_alexnet` (two towers, 227x227; non-commercial use only).
    Caffe,
}

impl Pretrained {
    fn name(self) -> &'static str {
        match self {
            Pretrained::Torchvision => "torchvision",
            Pretrained::Caffe => "caffe",
        }
    }

    /// The terms under which the publisher offers the weights.
    fn licence(self) -> &'static str {
        match self {
            Pretrained::Torchvision => {
                "torchvision's AlexNet weights, published by the PyTorch project with torchvision \
                 (BSD 3-Clause); they were trained on ImageNet, whose terms of access apply to its images"
            }
            Pretrained::Caffe => {
                "Caffe's bvlc_alexnet, published by the Berkeley Vision and Learning Center for \
                 unrestricted non-commercial use only (the BVLC model zoo's terms); trained on ImageNet"
            }
        }
    }
}

/// `--checkpoint PATH` or `--pretrained SOURCE`, for the commands that read weights.
#[derive(Args, Clone, Debug)]
pub struct CheckpointArg {
    /// A checkpoint written by `alexnet train` or `alexnet import`.
    #[arg(long, required_unless_present = "pretrained")]
    pub checkpoint: Option<PathBuf>,
    /// ImageNet weights published by torchvision or Caffe instead: downloaded and
    /// imported on first use, then taken from the cache (see `alexnet weights fetch`).
    #[arg(long, value_enum, conflicts_with = "checkpoint")]
    pub pretrained: Option<Pretrained>,
}

impl CheckpointArg {
    /// The checkpoint file: the one named, or the pretrained one (fetched if need be).
    pub fn path(&self) -> Result<PathBuf> {
        match (&self.checkpoint, self.pretrained) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(source)) => obtain(source),
            (None, None) => bail!("give --checkpoint PATH or --pretrained torchvision|caffe"),
        }
    }
}

#[derive(Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    action: WeightsAction,
}

#[derive(Subcommand)]
enum WeightsAction {
    /// Download, check and import published weights into the cache (once).
    Fetch {
        #[arg(value_enum)]
        source: Pretrained,
        /// Also copy the checkpoint here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: WeightsArgs) -> Result<()> {
    match args.action {
        WeightsAction::Fetch { source, out } => {
            let cached = obtain(source)?;
            println!("{}", cached.display());
            if let Some(out) = out {
                let bytes = std::fs::read(&cached)
                    .with_context(|| format!("reading {}", cached.display()))?;
                crate::output::write_atomically(&out, &bytes)?;
                println!("{}", out.display());
            }
            Ok(())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    torchvision: TorchvisionEntry,
    caffe: CaffeEntry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TorchvisionEntry {
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaffeEntry {
    url: String,
    sha1: String,
    mean_url: String,
    mean_member: String,
}

fn table() -> Result<Table> {
    let (text, name) = match std::env::var_os("ALEXNET_WEIGHTS_TABLE") {
        Some(path) => {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("ALEXNET_WEIGHTS_TABLE: reading {}", path.display()))?;
            (text, path.display().to_string())
        }
        None => (SOURCES.to_string(), "the built-in table".to_string()),
    };
    serde_json::from_str(&text).with_context(|| format!("{name} of weights sources"))
}

/// The cache folder: `$XDG_CACHE_HOME/alexnet`, else `$HOME/.cache/alexnet`.
fn cache_dir() -> Result<PathBuf> {
    let base = match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg),
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".cache"),
        _ => bail!("no cache folder: set XDG_CACHE_HOME or HOME"),
    };
    Ok(base.join("alexnet"))
}

/// The last part of a URL's path: the file's published name.
fn file_name(url: &str) -> Result<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." || name.contains('\\') {
        bail!("{url} does not end in a file name");
    }
    Ok(name.to_string())
}

/// torch.hub's rule: the file name's last `-` part before the extension is the
/// start of the file's SHA-256 (`alexnet-owt-7be5be79.pth`).
fn hash_prefix(name: &str) -> Result<String> {
    let stem = name.split('.').next().unwrap_or(name);
    let prefix = stem.rsplit('-').next().unwrap_or("");
    if prefix.len() < 8 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{name} does not carry a SHA-256 prefix (torch.hub's `name-<hex>.pth`)");
    }
    Ok(prefix.to_ascii_lowercase())
}

/// The cached checkpoint of `source`, fetched and imported when not cached yet.
pub fn obtain(source: Pretrained) -> Result<PathBuf> {
    let table = table()?;
    let cache = cache_dir()?;
    let downloads = cache.join("downloads");
    match source {
        Pretrained::Torchvision => {
            let name = file_name(&table.torchvision.url)?;
            let prefix = hash_prefix(&name)?;
            let checkpoint = cache.join(format!("torchvision-{prefix}.safetensors"));
            if checkpoint.exists() {
                return Ok(checkpoint);
            }
            eprintln!("{}", source.licence());
            let pth = downloads.join(&name);
            Download {
                url: &table.torchvision.url,
                dest: &pth,
                check: &Check::Sha256Prefix(prefix),
            }
            .obtain()?;
            let imported = alexnet_interop::torchvision::import_path(&pth)?;
            save(source, &imported, &checkpoint)?;
            Ok(checkpoint)
        }
        Pretrained::Caffe => {
            let entry = &table.caffe;
            let sha1 = entry.sha1.to_ascii_lowercase();
            if sha1.len() != 40 || !sha1.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!(
                    "the weights table's caffe sha1 {:?} is not 40 hex digits",
                    entry.sha1
                );
            }
            let checkpoint = cache.join(format!("caffe-{}.safetensors", &sha1[..8]));
            if checkpoint.exists() {
                return Ok(checkpoint);
            }
            eprintln!("{}", source.licence());
            let model = downloads.join(file_name(&entry.url)?);
            Download {
                url: &entry.url,
                dest: &model,
                check: &Check::Sha1(sha1),
            }
            .obtain()?;
            let archive = downloads.join(file_name(&entry.mean_url)?);
            Download {
                url: &entry.mean_url,
                dest: &archive,
                check: &Check::Unchecked(
                    "the Caffe project publishes no digest for its mean image's archive",
                ),
            }
            .obtain()?;
            let imported = import_caffe(&model, &archive, &entry.mean_member)?;
            save(source, &imported, &checkpoint)?;
            Ok(checkpoint)
        }
    }
}

fn import_caffe(model: &Path, archive: &Path, member: &str) -> Result<alexnet_interop::Imported> {
    let mean = tar::member(archive, member, MAX_MEAN_BYTES)?;
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let mean_name = format!("{member} in {}", archive.display());
    Ok(alexnet_interop::caffe::import(
        &bytes,
        &model.display().to_string(),
        Some((mean.as_slice(), mean_name.as_str())),
    )?)
}

fn save(source: Pretrained, imported: &alexnet_interop::Imported, checkpoint: &Path) -> Result<()> {
    crate::interop::save_imported(imported, checkpoint)?;
    eprintln!(
        "imported {} weights ({} classes) into {}",
        source.name(),
        imported.spec.classes,
        checkpoint.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_table_reads_and_names_the_published_files() {
        let table: Table = serde_json::from_str(SOURCES).unwrap();
        let name = file_name(&table.torchvision.url).unwrap();
        assert_eq!(name, "alexnet-owt-7be5be79.pth");
        assert_eq!(hash_prefix(&name).unwrap(), "7be5be79");
        assert_eq!(table.caffe.sha1, "9116a64c0fbe4459d18f4bb6b56d647b63920377");
        assert_eq!(
            file_name(&table.caffe.mean_url).unwrap(),
            "caffe_ilsvrc12.tar.gz"
        );
    }

    #[test]
    fn a_name_without_a_digest_or_a_path_without_a_name_is_refused() {
        assert!(hash_prefix("alexnet.pth").is_err());
        assert!(hash_prefix("alexnet-owt-xyz12345.pth").is_err());
        assert!(file_name("http://host/models/").is_err());
        assert!(file_name("http://host/models/..").is_err());
    }
}
