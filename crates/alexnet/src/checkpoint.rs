//! Checkpoints in safetensors: every parameter under its PyTorch-style name and
//! shape (`conv1.weight` `[96, 3, 11, 11]`), optionally the SGD velocities under
//! `velocity.<name>`, and metadata: the network description (TOML), the step and
//! any caller-provided fields. Files are written to a temporary name and renamed,
//! so a crash never leaves a half-written checkpoint under the real name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::spec::NetSpec;

/// The `format` metadata value that marks our checkpoints.
pub const FORMAT: &str = "alexnet-checkpoint-v1";
const VELOCITY_PREFIX: &str = "velocity.";

fn ckpt_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// A checkpoint read into memory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub spec: NetSpec,
    pub step: u64,
    /// All metadata fields, including `format`, `spec` and `step`.
    pub metadata: BTreeMap<String, String>,
    /// Tensors by name: shape and values.
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

/// What a checkpoint holds besides the parameters.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    pub step: u64,
    /// Also store the SGD velocities (needed to resume training exactly).
    pub with_velocity: bool,
    /// Extra metadata fields (training state, preprocessing, class names).
    pub metadata: BTreeMap<String, String>,
    /// Extra tensors (for instance the mean image): name, shape, values.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// A tensor's values as the little-endian bytes safetensors stores: borrowed on
/// little-endian machines (no copy of a 233 MB net), converted elsewhere.
fn le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: f32 has no padding and every bit pattern is a valid u8; the
        // slice covers exactly the same memory, borrowed for as long as `values`.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        };
        std::borrow::Cow::Borrowed(bytes)
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Writes the net's parameters and what `options` asks for to `path` atomically.
pub fn save<M: Model + ?Sized>(net: &M, path: &Path, options: &SaveOptions) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (index, p) in net.plan().params.iter().enumerate() {
        owned.push((p.name.clone(), p.shape.clone(), net.param_values(index)));
        if options.with_velocity {
            owned.push((
                format!("{VELOCITY_PREFIX}{}", p.name),
                p.shape.clone(),
                net.param_velocity(index),
            ));
        }
    }
    let params: Vec<(&str, &[usize], &[f32])> = owned
        .iter()
        .map(|(name, shape, values)| (name.as_str(), shape.as_slice(), values.as_slice()))
        .collect();
    write_checkpoint(net.spec(), &params, path, options)
}

/// Writes a checkpoint of `spec` from parameter tensors held elsewhere (imported
/// weights), without building a network: every parameter the description has
/// must be among `params` with its shape; others are refused.
pub fn save_tensors(
    spec: &NetSpec,
    params: &[(&str, &[usize], &[f32])],
    path: &Path,
    options: &SaveOptions,
) -> Result<()> {
    let plan = crate::plan::Plan::new(spec)?;
    for info in &plan.params {
        match params.iter().find(|(name, _, _)| *name == info.name) {
            None => {
                return Err(ckpt_error(path, format!("tensor {} is missing", info.name)));
            }
            Some((_, shape, values)) if *shape != info.shape || values.len() != info.len() => {
                return Err(ckpt_error(
                    path,
                    format!(
                        "tensor {}: expected shape {:?}, found {:?} ({} values)",
                        info.name,
                        info.shape,
                        shape,
                        values.len()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some((name, _, _)) = params
        .iter()
        .find(|(name, _, _)| !plan.params.iter().any(|p| p.name == *name))
    {
        return Err(ckpt_error(path, format!("the net has no parameter {name}")));
    }
    write_checkpoint(spec, params, path, options)
}

/// A tensor on its way to the file: name, shape, little-endian bytes.
type StoredTensor<'a> = (&'a str, &'a [usize], std::borrow::Cow<'a, [u8]>);

/// Streams the safetensors file to a temporary name beside `path` (the tensors
/// are written from where they lie, never gathered into one buffer), syncs it,
/// and renames it over `path`.
fn write_checkpoint(
    spec: &NetSpec,
    params: &[(&str, &[usize], &[f32])],
    path: &Path,
    options: &SaveOptions,
) -> Result<()> {
    let mut metadata: HashMap<String, String> = options
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("spec".into(), spec.to_toml());
    metadata.insert("step".into(), options.step.to_string());

    let extra = options
        .tensors
        .iter()
        .map(|(name, shape, values)| (name.as_str(), shape.as_slice(), values.as_slice()));
    let all: Vec<StoredTensor<'_>> = extra
        .chain(params.iter().copied())
        .map(|(name, shape, values)| (name, shape, le_bytes(values)))
        .collect();
    let views = all
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.to_vec(), data)
                .map(|view| (name.to_string(), view))
                .map_err(|e| ckpt_error(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = temporary_name(path)?;
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    safetensors::serialize_to_file(views, &Some(metadata), &tmp)
        .map_err(|e| ckpt_error(path, format!("cannot write: {e}")))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The hidden name beside `path` a file is written under before it is renamed.
fn temporary_name(path: &Path) -> Result<std::path::PathBuf> {
    let file_name = path
        .file_name()
        .ok_or_else(|| ckpt_error(path, "not a file path"))?;
    Ok(path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy())))
}

/// Removes the hidden temporary file a write of `path` left behind when it was
/// killed before its rename; returns whether there was one.
pub fn remove_stale_temporary(path: &Path) -> Result<bool> {
    let tmp = temporary_name(path)?;
    match std::fs::remove_file(&tmp) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io {
            path: tmp.display().to_string(),
            source: e,
        }),
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let tmp = temporary_name(path)?;
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a checkpoint, checking its format and that every tensor is f32 and whole.
pub fn load(path: &Path) -> Result<Checkpoint> {
    load_filtered(path, |_| true)
}

/// Reads a checkpoint without its SGD velocities: all that inference needs.
pub fn load_weights(path: &Path) -> Result<Checkpoint> {
    load_filtered(path, |name| !name.starts_with(VELOCITY_PREFIX))
}

fn load_filtered(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Checkpoint> {
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    // SAFETY: the map is only read, and only while this function runs. Mapping is
    // unsound only if another process truncates or rewrites the file meanwhile;
    // this program never changes a checkpoint in place (it writes a new file and
    // renames it over the old one), so the mapped file stays as it was.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|e| ckpt_error(path, format!("not a readable safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| ckpt_error(path, format!("unreadable header: {e}")))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    match metadata.get("format") {
        Some(f) if f == FORMAT => {}
        other => {
            return Err(ckpt_error(
                path,
                format!(
                    "expected metadata format = {FORMAT}, found {}",
                    other.map_or("none", String::as_str)
                ),
            ));
        }
    }
    let spec_text = metadata
        .get("spec")
        .ok_or_else(|| ckpt_error(path, "metadata has no network description (spec)"))?;
    let spec = NetSpec::from_toml(spec_text, &format!("{} (spec)", path.display()))?;
    // The description is believed only once it is a valid net whose every
    // parameter the file holds with its shape: checked on the header alone,
    // before any value is read or any net is built from it.
    let plan = crate::plan::Plan::new(&spec)
        .map_err(|e| ckpt_error(path, format!("its network description is invalid: {e}")))?;
    let step = metadata
        .get("step")
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| ckpt_error(path, format!("step '{s}' is not a number")))
        })
        .transpose()?
        .unwrap_or(0);
    let views: HashMap<String, TensorView<'_>> = tensors.tensors().into_iter().collect();
    for info in &plan.params {
        match views.get(&info.name) {
            None => {
                return Err(ckpt_error(
                    path,
                    format!(
                        "tensor {} is missing (its own network description has it, shape {:?})",
                        info.name, info.shape
                    ),
                ));
            }
            Some(view) if view.shape() != info.shape.as_slice() => {
                return Err(ckpt_error(
                    path,
                    format!(
                        "tensor {}: its network description says shape {:?}, the tensor has {:?}",
                        info.name,
                        info.shape,
                        view.shape()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let mut out = HashMap::new();
    for (name, view) in views.into_iter().filter(|(name, _)| keep(name)) {
        let values = read_f32(path, &name, &view)?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(Checkpoint {
        spec,
        step,
        metadata,
        tensors: out,
    })
}

/// A tensor's values, which must be f32 and finite: a NaN or infinite weight,
/// velocity or mean would otherwise flow silently into every result.
fn read_f32(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        return Err(ckpt_error(
            path,
            format!(
                "tensor {name}: expected dtype F32, found {:?}",
                view.dtype()
            ),
        ));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    check_finite(&values).map_err(|e| ckpt_error(path, format!("tensor {name}: {e}")))?;
    Ok(values)
}

/// Refuses NaN and infinite values, naming the first one and how many there are.
pub fn check_finite(values: &[f32]) -> std::result::Result<(), String> {
    let Some(first) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let count = values.iter().filter(|v| !v.is_finite()).count();
    Err(format!(
        "value {first} of {} is {} ({count} non-finite in all); weights and statistics must be finite numbers",
        values.len(),
        values[first]
    ))
}

impl Checkpoint {
    /// Copies the parameters (and velocities, when `with_velocity`) into `net`,
    /// checking that every tensor the net has is present with the right shape.
    pub fn apply<M: Model + ?Sized>(
        &self,
        net: &mut M,
        path: &Path,
        with_velocity: bool,
    ) -> Result<()> {
        for index in 0..net.plan().params.len() {
            let info = net.plan().params[index].clone();
            let (shape, values) = self.tensors.get(&info.name).ok_or_else(|| {
                ckpt_error(
                    path,
                    format!(
                        "tensor {} is missing (the net has shape {:?})",
                        info.name, info.shape
                    ),
                )
            })?;
            if *shape != info.shape {
                return Err(ckpt_error(
                    path,
                    format!(
                        "tensor {}: expected shape {:?}, found {:?}",
                        info.name, info.shape, shape
                    ),
                ));
            }
            net.set_param_values(index, values)?;
            if with_velocity {
                let name = format!("{VELOCITY_PREFIX}{}", info.name);
                let (_, velocity) = self
                    .tensors
                    .get(&name)
                    .filter(|(s, _)| *s == info.shape)
                    .ok_or_else(|| {
                        ckpt_error(path, format!("tensor {name} is missing or misshapen"))
                    })?;
                net.set_param_velocity(index, velocity)?;
            }
        }
        Ok(())
    }
}
