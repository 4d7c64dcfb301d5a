//! PyTorch's `torch.save` files, read as a state_dict: tensor names with their
//! dtype, shape and values (as f32), in the file's order.
//!
//! Two layouts are read:
//! - zip (PyTorch 1.6 and later): `<dir>/data.pkl` is the pickle, each storage is
//!   the entry `<dir>/data/<key>`, raw little-endian;
//! - legacy (`_use_new_zipfile_serialization=False`): five pickles in a row (magic
//!   number, protocol version, system info, the object, the storage keys), then
//!   per storage, in the keys' order, its element count (8 bytes, little-endian)
//!   and its raw data.
//!
//! The older tar layout (PyTorch before 0.4) is recognised and refused.
//!
//! The pickle is run by [`crate::pickle`], which executes nothing; here its
//! tensor rebuild calls are interpreted. Every storage offset, extent and size is
//! checked against the length of the file before anything is read or allocated.
//!
//! The bytes come from a [`Source`]: a slice ([`read`]), from which storages are
//! converted straight into each tensor's f32 values, or an open file
//! ([`read_file`]), of which only the small parts (the zip directory and the
//! pickle, or the legacy layout's leading pickles) are read into memory; each
//! tensor's values are then read at their offset, f32 ones straight into the
//! tensor's memory and others through a bounded buffer, so that the import
//! holds little more than the f32 values themselves.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::pickle::{self, Global, Value};
use crate::zip::{self, Archive, Source};

/// The element types of torch's typed storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    Complex64,
    Complex128,
}

impl DType {
    /// The dtype of a typed storage class (`FloatStorage`, ...).
    pub fn from_storage_class(class: &str) -> Option<DType> {
        Some(match class {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            "ComplexFloatStorage" => DType::Complex64,
            "ComplexDoubleStorage" => DType::Complex128,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 | DType::Complex64 => 8,
            DType::Complex128 => 16,
        }
    }

    /// torch's name for it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
            DType::Complex64 => "complex64",
            DType::Complex128 => "complex128",
        }
    }

    /// Reads one little-endian element as f32 (integers exactly up to 2^24), or
    /// `None` for complex dtypes, which have no f32 value.
    fn decoder(self) -> Option<fn(&[u8]) -> f32> {
        Some(match self {
            DType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F64 => |b| f64::from_le_bytes(b[..8].try_into().unwrap()) as f32,
            DType::F16 => |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            DType::BF16 => |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            DType::I64 => |b| i64::from_le_bytes(b[..8].try_into().unwrap()) as f32,
            DType::I32 => |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            DType::I16 => |b| i16::from_le_bytes([b[0], b[1]]) as f32,
            DType::I8 => |b| b[0] as i8 as f32,
            DType::U8 => |b| b[0] as f32,
            DType::Bool => |b| (b[0] != 0) as u8 as f32,
            DType::Complex64 | DType::Complex128 => return None,
        })
    }
}

/// IEEE half precision to f32, exactly (every half is an f32).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exponent = ((bits >> 10) & 0x1F) as u32;
    let mantissa = (bits & 0x3FF) as u32;
    let magnitude = match exponent {
        // Zero and subnormals: mantissa x 2^-24, exact in f32.
        0 => (mantissa as f32 * f32::from_bits(0x3380_0000)).to_bits(),
        // Infinity and NaN keep their payload.
        0x1F => 0x7F80_0000 | (mantissa << 13),
        // Rebias the exponent from 15 to 127.
        _ => ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// bfloat16 is the top half of an f32.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// One tensor of a state_dict: its dtype in the file, its shape, and its values
/// in row-major order, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Which of `torch.save`'s layouts a file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    Legacy,
}

impl Format {
    pub fn describe(self) -> &'static str {
        match self {
            Format::Zip => "torch.save zip format",
            Format::Legacy => "torch.save legacy format",
        }
    }
}

/// A state_dict read from a file.
#[derive(Clone, Debug)]
pub struct StateDict {
    pub format: Format,
    /// Tensor names (DataParallel's `module.` prefix removed) and tensors, in file order.
    pub tensors: Vec<(String, TensorInfo)>,
}

/// Reads the state_dict in a `torch.save` file's bytes; `file` names it in errors.
///
/// The file may hold the state_dict itself or a dict that holds it under
/// `state_dict`, `model_state_dict` or `model` (a training checkpoint); other
/// entries of such a checkpoint (optimizer state, epoch) are ignored.
pub fn read(bytes: &[u8], file: &str) -> Result<StateDict> {
    read_source(Source::Memory(bytes), file)
}

/// [`read`] on any source of the file's bytes.
pub fn read_source(source: Source, file: &str) -> Result<StateDict> {
    let head = source.read(0, source.size().min(DETECT_LEN), file)?;
    match detect(&head, file)? {
        Format::Zip => read_zip(source, file),
        Format::Legacy => read_legacy(source, file, LEGACY_PREFIX),
    }
}

/// [`read`]'s tensors alone.
pub fn read_state_dict(bytes: &[u8], file: &str) -> Result<Vec<(String, TensorInfo)>> {
    Ok(read(bytes, file)?.tensors)
}

/// [`read`] on a file, neither mapped nor read whole: the small parts are read
/// into memory and each tensor's values from their offset, so that little more
/// than the tensors' f32 values is allocated. The path names the file in errors.
pub fn read_file(path: &Path) -> Result<StateDict> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        file: name.clone(),
        source,
    })?;
    read_source(Source::file(&file, &name)?, &name)
}

/// What [`detect`] looks at: the start of the file (a tar header is 512 bytes).
const DETECT_LEN: usize = 512;

const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i128 = 1001;

fn detect(bytes: &[u8], file: &str) -> Result<Format> {
    if zip::is_zip(bytes) {
        return Ok(Format::Zip);
    }
    if bytes.get(257..262) == Some(b"ustar") {
        return Err(Error::unsupported(
            file,
            "the tar layout of torch.save from PyTorch before 0.4; load it in PyTorch and save it again",
        ));
    }
    // A pickle's PROTO opcode: torch's legacy layout is pickles from the start
    // (protocol 2 unless `pickle_protocol` said otherwise).
    if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Ok(Format::Legacy);
    }
    let looks_like_safetensors = bytes.len() > 8 && bytes[8] == b'{';
    let hint = if looks_like_safetensors {
        " (it looks like a safetensors file)"
    } else {
        ""
    };
    let start: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(Error::format(
        file,
        format!(
            "not a torch.save file: it starts with bytes {}, neither a zip archive nor a pickle{hint}",
            start.join(" ")
        ),
    ))
}

/// A tensor as the pickle describes it, before its storage is read.
#[derive(Debug)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
struct StorageRef {
    key: String,
    dtype: DType,
    /// Elements the storage holds.
    numel: usize,
}

fn read_zip(source: Source, file: &str) -> Result<StateDict> {
    let archive = Archive::parse_source(source, file)?;
    let dir = archive_dir(&archive, file)?;
    let byteorder = format!("{dir}/byteorder");
    if archive.find(&byteorder).is_some() {
        let order = archive.data(&byteorder)?;
        if *order != *b"little" {
            return Err(Error::unsupported(
                file,
                format!(
                    "tensors stored {} (byteorder record); only little-endian files are read",
                    String::from_utf8_lossy(&order)
                ),
            ));
        }
    }
    let pickle_name = format!("{dir}/data.pkl");
    let (root, _) = pickle::load(
        &archive.data(&pickle_name)?,
        &format!("{file} ({pickle_name})"),
    )?;
    let named = tensor_refs(&root, file)?;
    let mut tensors = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        let entry = archive.entry(&format!("{dir}/data/{}", tensor.storage.key))?;
        let storage = Storage {
            source,
            offset: entry.offset,
            len: entry.size,
        };
        let expected = tensor
            .storage
            .numel
            .checked_mul(tensor.storage.dtype.size());
        if expected != Some(storage.len) {
            return Err(Error::format(
                file,
                format!(
                    "tensor {name}: its storage {dir}/data/{} has {} bytes, but the pickle declares {} {} elements",
                    tensor.storage.key,
                    storage.len,
                    tensor.storage.numel,
                    tensor.storage.dtype.name()
                ),
            ));
        }
        tensors.push((name.clone(), convert(&name, &tensor, storage, file)?));
    }
    Ok(StateDict {
        format: Format::Zip,
        tensors,
    })
}

/// The archive's top directory: torch names it after the file it first wrote,
/// so it is whatever directory holds `data.pkl`.
fn archive_dir(archive: &Archive, file: &str) -> Result<String> {
    let mut dirs = archive.entries().iter().filter_map(|e| {
        e.name
            .strip_suffix("/data.pkl")
            .filter(|dir| !dir.contains('/'))
    });
    match (dirs.next(), dirs.next()) {
        (Some(dir), None) => Ok(dir.to_string()),
        (None, _) => Err(Error::format(
            file,
            "a zip archive without <dir>/data.pkl: not written by torch.save (a TorchScript or other archive?)",
        )),
        (Some(a), Some(b)) => Err(Error::format(
            file,
            format!("the archive holds two pickles, {a}/data.pkl and {b}/data.pkl"),
        )),
    }
}

/// How much of a legacy file is read first to find its pickles in: they
/// describe the tensors, and are a few kilobytes for a state_dict.
const LEGACY_PREFIX: usize = 1 << 20;

/// Reads the legacy layout; from a file, its first `prefix` bytes are read to
/// find the pickles in.
fn read_legacy(source: Source, file: &str, prefix: usize) -> Result<StateDict> {
    let (root, keys, at) = legacy_pickles(source, file, prefix)?;
    let storages = legacy_storages(source, at, &root, &keys, file)?;
    let named = tensor_refs(&root, file)?;
    let mut tensors = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        let storage = storages[&tensor.storage.key];
        tensors.push((name.clone(), convert(&name, &tensor, storage, file)?));
    }
    Ok(StateDict {
        format: Format::Legacy,
        tensors,
    })
}

/// The legacy layout's object and storage keys pickles, and where the storages
/// start. Their length is only known by running them: from a file, they are
/// run on a prefix, and on a longer one (up to the whole file) when that fails.
/// A pickle that runs to its STOP in a prefix runs the same in the whole file,
/// and what fails on the whole file fails as [`read`] does on its bytes.
fn legacy_pickles(source: Source, file: &str, prefix: usize) -> Result<(Value, Value, usize)> {
    let len = source.size();
    let mut want = if source.in_memory() {
        len
    } else {
        len.min(prefix.max(1))
    };
    loop {
        let prefix = source.read(0, want, file)?;
        match parse_legacy_pickles(&prefix, file) {
            Err(Error::Format { .. } | Error::Unsupported { .. }) if want < len => {
                want = want.saturating_mul(8).min(len);
            }
            result => return result,
        }
    }
}

fn parse_legacy_pickles(bytes: &[u8], file: &str) -> Result<(Value, Value, usize)> {
    let mut at = 0;
    let mut next = |what: &str| -> Result<Value> {
        let (value, used) = pickle::load(&bytes[at..], &format!("{file} ({what} pickle)"))?;
        at += used;
        Ok(value)
    };
    if next("first")?.as_int() != Some(LEGACY_MAGIC) {
        return Err(Error::format(
            file,
            "not a torch.save file: a pickle, but not one that starts with torch's magic number",
        ));
    }
    let protocol = next("protocol")?;
    if protocol.as_int() != Some(LEGACY_PROTOCOL) {
        return Err(Error::unsupported(
            file,
            format!("legacy protocol version {protocol:?}; only {LEGACY_PROTOCOL} is read"),
        ));
    }
    if next("system info")?.get("little_endian") != Some(&Value::Bool(true)) {
        return Err(Error::unsupported(
            file,
            "written on a big-endian machine; only little-endian files are read",
        ));
    }
    let root = next("object")?;
    let keys = next("storage keys")?;
    Ok((root, keys, at))
}

/// Finds each storage's bytes after the pickles. Stepping over a storage needs
/// its element size, which only the pickle's references to it say, so every
/// storage listed must be referenced somewhere in the object (even outside the
/// state_dict, e.g. in a checkpoint's optimizer state).
fn legacy_storages<'a>(
    source: Source<'a>,
    mut at: usize,
    root: &Value,
    keys: &Value,
    file: &str,
) -> Result<HashMap<String, Storage<'a>>> {
    let mut referenced = HashMap::new();
    collect_storages(root, file, &mut referenced)?;
    let keys = keys.as_sequence().ok_or_else(|| {
        Error::format(
            file,
            format!("the storage keys pickle is {}, not a list", keys.kind()),
        )
    })?;
    let mut storages = HashMap::with_capacity(keys.len());
    for key in keys {
        let key = storage_key(key, file)?;
        let storage: &StorageRef = referenced.get(&key).ok_or_else(|| {
            Error::format(
                file,
                format!("the storage {key} is listed but never referenced, so its element size is unknown"),
            )
        })?;
        if at + 8 > source.size() {
            return Err(Error::format(
                file,
                format!("the file ends before storage {key} (truncated?)"),
            ));
        }
        let count = u64::from_le_bytes(source.read(at, 8, file)?[..].try_into().unwrap());
        if count != storage.numel as u64 {
            return Err(Error::format(
                file,
                format!(
                    "storage {key} declares {count} elements where the pickle says {}",
                    storage.numel
                ),
            ));
        }
        let start = at + 8;
        let len = storage.numel.saturating_mul(storage.dtype.size());
        if start.saturating_add(len) > source.size() {
            return Err(Error::format(
                file,
                format!(
                    "storage {key} declares {len} bytes from byte {start}, past the end of the {}-byte file (truncated?)",
                    source.size()
                ),
            ));
        }
        let data = Storage {
            source,
            offset: start,
            len,
        };
        if storages.insert(key.clone(), data).is_some() {
            return Err(Error::format(
                file,
                format!("the storage {key} is listed twice"),
            ));
        }
        at = start + len;
    }
    if let Some(missing) = referenced.keys().find(|k| !storages.contains_key(*k)) {
        return Err(Error::format(
            file,
            format!("a tensor uses the storage {missing}, which the file does not hold"),
        ));
    }
    Ok(storages)
}

/// Every storage the value refers to, by key; one key must always have one dtype.
fn collect_storages(
    value: &Value,
    file: &str,
    found: &mut HashMap<String, StorageRef>,
) -> Result<()> {
    let mut visit = |v: &Value| collect_storages(v, file, found);
    match value {
        Value::PersistentId(id) => {
            let storage = storage_ref(id, file)?;
            if let Some(seen) = found.get(&storage.key)
                && *seen != storage
            {
                return Err(Error::unsupported(
                    file,
                    format!(
                        "the storage {} is viewed as two dtypes or sizes",
                        storage.key
                    ),
                ));
            }
            found.insert(storage.key.clone(), storage);
            Ok(())
        }
        Value::Tuple(items) | Value::List(items) => items.iter().try_for_each(visit),
        Value::Dict(entries) => entries.iter().try_for_each(|(k, v)| {
            visit(k)?;
            visit(v)
        }),
        Value::Call { args, state, .. } => {
            args.iter().try_for_each(&mut visit)?;
            state.as_deref().map_or(Ok(()), visit)
        }
        _ => Ok(()),
    }
}

/// Keys under which a training checkpoint keeps the model's state_dict.
const WRAPPER_KEYS: &[&str] = &["state_dict", "model_state_dict", "model"];

/// The state_dict's tensors: the root dict, or the dict a checkpoint keeps it
/// under, with DataParallel's `module.` prefix removed when every key has it.
fn tensor_refs(root: &Value, file: &str) -> Result<Vec<(String, TensorRef)>> {
    let mut dict = root;
    let mut path = String::new();
    for _ in 0..4 {
        let inner = WRAPPER_KEYS.iter().find_map(|&k| {
            dict.get(k)
                .filter(|v| matches!(v, Value::Dict(_)))
                .map(|v| (k, v))
        });
        match inner {
            Some((key, value)) => {
                path.push_str(&format!("['{key}']"));
                dict = value;
            }
            None => break,
        }
    }
    let where_ = if path.is_empty() {
        "the file".to_string()
    } else {
        format!("the file's {path}")
    };
    let Value::Dict(entries) = dict else {
        return Err(Error::format(
            file,
            format!(
                "{where_} holds {}, not a state_dict (a dict of tensors)",
                dict.kind()
            ),
        ));
    };
    let mut named = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let name = key.as_str().ok_or_else(|| {
            Error::format(
                file,
                format!(
                    "{where_} has a key that is {}, not a tensor name",
                    key.kind()
                ),
            )
        })?;
        let tensor = tensor_ref(value, file).map_err(|e| in_entry(e, name, &where_))?;
        named.push((name.to_string(), tensor));
    }
    if !named.is_empty() && named.iter().all(|(n, _)| n.starts_with("module.")) {
        for (name, _) in &mut named {
            name.drain(.."module.".len());
        }
    }
    Ok(named)
}

/// Adds which entry an error is about.
fn in_entry(error: Error, name: &str, where_: &str) -> Error {
    match error {
        Error::Format { file, message } => Error::Format {
            file,
            message: format!("entry {name} of {where_}: {message}"),
        },
        Error::Unsupported { file, message } => Error::Unsupported {
            file,
            message: format!("entry {name} of {where_}: {message}"),
        },
        other => other,
    }
}

/// Interprets `_rebuild_tensor_v2(storage, offset, size, stride, ...)`, possibly
/// wrapped in `_rebuild_parameter(tensor, ...)`.
fn tensor_ref(value: &Value, file: &str) -> Result<TensorRef> {
    let bad = |what: String| Error::format(file, what);
    let Value::Call { callee, args, .. } = value else {
        return Err(bad(format!("{}, not a tensor", value.kind())));
    };
    match callee {
        Global::RebuildParameter => {
            let inner = args
                .first()
                .ok_or_else(|| bad("a parameter without its tensor".into()))?;
            return tensor_ref(inner, file);
        }
        Global::RebuildTensorV2 => {}
        other => {
            return Err(bad(format!(
                "a call of {}, not a tensor",
                other.qualified_name()
            )));
        }
    }
    if args.len() < 4 {
        return Err(bad(format!(
            "a tensor rebuilt from {} arguments; torch gives at least 4",
            args.len()
        )));
    }
    let Value::PersistentId(id) = &args[0] else {
        return Err(bad(format!(
            "a tensor whose storage is {}, not a storage reference",
            args[0].kind()
        )));
    };
    let storage = storage_ref(id, file)?;
    let offset = non_negative(&args[1], "storage offset", file)?;
    let shape = int_list(&args[2], "size", file)?;
    let mut strides = int_list(&args[3], "stride", file)?;
    if shape.len() != strides.len() {
        return Err(bad(format!(
            "a tensor of {} dimensions with {} strides",
            shape.len(),
            strides.len()
        )));
    }
    // A dimension of size 1 never steps: its stride is meaningless (torch's
    // `is_contiguous` ignores it too), and zero keeps the arithmetic in bounds.
    for (s, &d) in strides.iter_mut().zip(&shape) {
        if d == 1 {
            *s = 0;
        }
    }
    Ok(TensorRef {
        storage,
        offset,
        shape,
        strides,
    })
}

/// Interprets torch's persistent id `('storage', StorageClass, key, location, numel[, view])`.
fn storage_ref(id: &Value, file: &str) -> Result<StorageRef> {
    let items = id.as_sequence().unwrap_or(&[]);
    if items.len() < 5 || items[0].as_str() != Some("storage") {
        return Err(Error::format(
            file,
            format!(
                "a persistent id that is {}, not torch's storage reference",
                id.kind()
            ),
        ));
    }
    let Value::Global(Global::Storage(class)) = &items[1] else {
        return Err(Error::format(
            file,
            format!(
                "a storage whose type is {}, not a storage class",
                items[1].kind()
            ),
        ));
    };
    let dtype = DType::from_storage_class(class)
        .ok_or_else(|| Error::unsupported(file, format!("the storage class torch.{class}")))?;
    if items.get(5).is_some_and(|view| *view != Value::None) {
        return Err(Error::unsupported(
            file,
            "storage views (written by PyTorch before 1.0); load the file in PyTorch and save it again",
        ));
    }
    Ok(StorageRef {
        key: storage_key(&items[2], file)?,
        dtype,
        numel: non_negative(&items[4], "storage size", file)?,
    })
}

fn storage_key(value: &Value, file: &str) -> Result<String> {
    match value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(Error::format(
            file,
            format!("a storage key that is {}", other.kind()),
        )),
    }
}

fn non_negative(value: &Value, what: &str, file: &str) -> Result<usize> {
    value
        .as_int()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| Error::format(file, format!("a {what} that is {value:?}, not a count")))
}

/// A tensor's size or stride: a tuple of non-negative ints, at most 32 of them.
fn int_list(value: &Value, what: &str, file: &str) -> Result<Vec<usize>> {
    let items = value.as_sequence().ok_or_else(|| {
        Error::format(
            file,
            format!("a {what} that is {}, not a tuple", value.kind()),
        )
    })?;
    if items.len() > 32 {
        return Err(Error::format(
            file,
            format!("a tensor of {} dimensions", items.len()),
        ));
    }
    items.iter().map(|v| non_negative(v, what, file)).collect()
}

/// Where a storage's bytes lie: `len` bytes from byte `offset` of the source,
/// in bounds (checked when it is made), `numel` times the element size.
#[derive(Clone, Copy, Debug)]
struct Storage<'a> {
    source: Source<'a>,
    offset: usize,
    len: usize,
}

/// Elements converted at a time from a file through a buffer, for the dtypes
/// that are not read straight into the values (a multiple of every dtype size).
const CHUNK_BYTES: usize = 1 << 16;

impl<'a> Storage<'a> {
    /// `len` bytes from byte `at` of the storage: borrowed, or read from the file.
    fn bytes(&self, at: usize, len: usize, file: &str) -> Result<Cow<'a, [u8]>> {
        debug_assert!(at + len <= self.len);
        self.source.read(self.offset + at, len, file)
    }

    /// Fills `out` from byte `at` of the storage.
    fn read_into(&self, at: usize, out: &mut [u8], file: &str) -> Result<()> {
        debug_assert!(at + out.len() <= self.len);
        self.source.read_into(self.offset + at, out, file)
    }

    /// Calls `each` on the `len` bytes from byte `at` of the storage: once on
    /// the whole slice in memory, or chunk by chunk (whole elements of `size`
    /// bytes) through a bounded buffer from a file.
    fn for_each_chunk(
        &self,
        at: usize,
        len: usize,
        file: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<()> {
        if self.source.in_memory() {
            each(&self.bytes(at, len, file)?);
            return Ok(());
        }
        let mut buffer = vec![0; len.min(CHUNK_BYTES)];
        let mut done = 0;
        while done < len {
            let chunk = &mut buffer[..(len - done).min(CHUNK_BYTES)];
            self.read_into(at + done, chunk, file)?;
            each(chunk);
            done += chunk.len();
        }
        Ok(())
    }
}

/// The f32 values' memory as bytes, to read little-endian f32 data straight into.
fn f32_bytes_mut(values: &mut [f32]) -> &mut [u8] {
    let len = std::mem::size_of_val(values);
    // SAFETY: the same memory, exclusively borrowed for as long; u8 needs no
    // alignment, and every bit pattern written through it is some f32.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) }
}

/// The tensor's values from its storage's bytes: checks the offset and extent
/// against the storage, then converts, gathering by strides when the layout is
/// not row-major. Only the bytes from the tensor's first element to its last
/// are read.
fn convert(name: &str, tensor: &TensorRef, storage: Storage, file: &str) -> Result<TensorInfo> {
    let dtype = tensor.storage.dtype;
    let decode = dtype.decoder().ok_or_else(|| {
        Error::unsupported(
            file,
            format!(
                "tensor {name} has dtype {}, which has no f32 value",
                dtype.name()
            ),
        )
    })?;
    let (count, last) = check_extent(name, tensor, file)?;
    let size = dtype.size();
    debug_assert_eq!(Some(storage.len), tensor.storage.numel.checked_mul(size));
    if count == 0 {
        return Ok(TensorInfo {
            dtype,
            shape: tensor.shape.clone(),
            values: Vec::new(),
        });
    }
    // In bounds, without overflow: the first and last elements lie inside the
    // storage, of `numel` elements of `size` bytes in `storage.len` bytes.
    let start = tensor.offset * size;
    let values = if is_row_major(&tensor.shape, &tensor.strides) {
        if dtype == DType::F32 && cfg!(target_endian = "little") {
            // A zeroed allocation: a large one is fresh pages from the system,
            // first touched when the values are read into them.
            let mut values = vec![0f32; count];
            storage.read_into(start, f32_bytes_mut(&mut values), file)?;
            values
        } else {
            let mut values = Vec::with_capacity(count);
            storage.for_each_chunk(start, count * size, file, |bytes| {
                values.extend(bytes.chunks_exact(size).map(decode));
            })?;
            values
        }
    } else {
        let span = storage.bytes(start, (last + 1) * size - start, file)?;
        gather(tensor, &span, count, decode)
    };
    Ok(TensorInfo {
        dtype,
        shape: tensor.shape.clone(),
        values,
    })
}

/// The tensor's element count and the index of its last element in the
/// storage, once that is known to lie inside its storage and its values to take
/// no more room than the storage (a tensor broadcast by zero strides could
/// otherwise ask for any amount of memory). The last index is meaningless when
/// the count is zero.
fn check_extent(name: &str, tensor: &TensorRef, file: &str) -> Result<(usize, usize)> {
    let bad = |message: String| Error::format(file, format!("tensor {name}: {message}"));
    let numel = tensor.storage.numel;
    let count = tensor
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {:?} has too many elements", tensor.shape)))?;
    if count == 0 {
        return Ok((0, 0));
    }
    let last = tensor
        .shape
        .iter()
        .zip(&tensor.strides)
        .try_fold(tensor.offset, |end, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| end.checked_add(x))
        });
    let Some(last) = last.filter(|&last| last < numel) else {
        return Err(bad(format!(
            "shape {:?}, strides {:?} from offset {} reach past its storage of {numel} {} elements",
            tensor.shape,
            tensor.strides,
            tensor.offset,
            tensor.storage.dtype.name()
        )));
    };
    if count > numel {
        return Err(bad(format!(
            "{count} elements from a storage of {numel} (a broadcast view); save a contiguous copy"
        )));
    }
    Ok((count, last))
}

/// Row-major order: each stride is the product of the later sizes (a dimension
/// of size 1 may have any stride, as in torch's `is_contiguous`).
fn is_row_major(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

/// Visits the tensor's elements in row-major order through its strides; `span`
/// holds the storage's bytes from the tensor's offset (its first element) on.
fn gather(tensor: &TensorRef, span: &[u8], count: usize, decode: fn(&[u8]) -> f32) -> Vec<f32> {
    let size = tensor.storage.dtype.size();
    let dims = tensor.shape.len();
    let mut index = vec![0usize; dims];
    let mut at = 0;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(decode(&span[at * size..]));
        // Advance the last index, carrying into earlier ones.
        for d in (0..dims).rev() {
            index[d] += 1;
            at += tensor.strides[d];
            if index[d] < tensor.shape[d] {
                break;
            }
            at -= tensor.strides[d] * tensor.shape[d];
            index[d] = 0;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        let cases: &[(u16, f32)] = &[
            (0x0000, 0.0),
            (0x3C00, 1.0),
            (0xC000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7BFF, 65504.0),
            (0x0400, 6.103_515_6e-5),
            (0x0001, 5.960_464_5e-8),
            (0x03FF, 6.097_555e-5),
            (0x7C00, f32::INFINITY),
            (0xFC00, f32::NEG_INFINITY),
        ];
        for &(bits, value) in cases {
            assert_eq!(f16_to_f32(bits), value, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7E00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
        assert_eq!(bf16_to_f32(0xC0A0), -5.0);
    }

    #[test]
    fn half_precision_round_trips_through_f32_rounding() {
        // Every finite half, converted and rounded back by f32 -> f64 -> half arithmetic.
        for bits in 0u16..=0xFFFF {
            let v = f16_to_f32(bits);
            if v.is_finite() && bits & 0x7FFF != 0 {
                let exponent = ((bits >> 10) & 0x1F) as i32;
                let mantissa = (bits & 0x3FF) as f64;
                let expected = if exponent == 0 {
                    mantissa * 2f64.powi(-24)
                } else {
                    (1.0 + mantissa / 1024.0) * 2f64.powi(exponent - 15)
                };
                let signed = if bits & 0x8000 != 0 {
                    -expected
                } else {
                    expected
                };
                assert_eq!(v as f64, signed, "{bits:#06x}");
            }
        }
    }

    fn tensor(shape: &[usize], strides: &[usize], offset: usize, numel: usize) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: DType::F32,
                numel,
            },
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        }
    }

    fn mem(bytes: &[u8]) -> Storage<'_> {
        Storage {
            source: Source::Memory(bytes),
            offset: 0,
            len: bytes.len(),
        }
    }

    fn storage(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn strides_offsets_and_transposes() {
        let bytes = storage(12);
        let row_major = convert("t", &tensor(&[3, 4], &[4, 1], 0, 12), mem(&bytes), "f").unwrap();
        assert_eq!(
            row_major.values,
            (0..12).map(|i| i as f32).collect::<Vec<_>>()
        );
        let transposed = convert("t", &tensor(&[4, 3], &[1, 4], 0, 12), mem(&bytes), "f").unwrap();
        assert_eq!(
            transposed.values,
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        let slice = convert("t", &tensor(&[2, 2], &[4, 1], 5, 12), mem(&bytes), "f").unwrap();
        assert_eq!(slice.values, [5., 6., 9., 10.]);
        // Strides of size-1 dimensions are zeroed when the pickle is read.
        let odd = convert("t", &tensor(&[1, 3], &[0, 1], 2, 12), mem(&bytes), "f").unwrap();
        assert_eq!(odd.values, [2., 3., 4.]);
        let column = convert("t", &tensor(&[3, 1], &[4, 0], 1, 12), mem(&bytes), "f").unwrap();
        assert_eq!(column.values, [1., 5., 9.]);
        let scalar = convert("t", &tensor(&[], &[], 7, 12), mem(&bytes), "f").unwrap();
        assert_eq!(scalar.values, [7.]);
        let empty = convert("t", &tensor(&[0, 5], &[5, 1], 0, 0), mem(&[]), "f").unwrap();
        assert!(empty.values.is_empty());
    }

    #[test]
    fn extents_past_the_storage_are_refused() {
        let bytes = storage(12);
        for t in [
            tensor(&[3, 4], &[4, 1], 1, 12),
            tensor(&[13], &[1], 0, 12),
            tensor(&[2], &[usize::MAX], 0, 12),
            tensor(&[usize::MAX, 2], &[1, 1], 0, 12),
        ] {
            let e = convert("w", &t, mem(&bytes), "f").unwrap_err().to_string();
            assert!(e.contains("tensor w"), "{e}");
            assert!(
                e.contains("past its storage") || e.contains("too many"),
                "{e}"
            );
        }
        let e = convert("w", &tensor(&[100], &[0], 0, 12), mem(&bytes), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broadcast"), "{e}");
    }

    #[test]
    fn other_dtypes_convert() {
        let mut t = tensor(&[2], &[1], 0, 2);
        t.storage.dtype = DType::F64;
        let bytes: Vec<u8> = [1.5f64, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            convert("d", &t, mem(&bytes), "f").unwrap().values,
            [1.5, -2.25]
        );
        t.storage.dtype = DType::I64;
        let bytes: Vec<u8> = [7i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            convert("l", &t, mem(&bytes), "f").unwrap().values,
            [7.0, -3.0]
        );
        t.storage.dtype = DType::Complex64;
        let e = convert("c", &t, mem(&[0; 16]), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("complex64"), "{e}");
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name)
    }

    /// A legacy file read from its path, its pickles looked for in prefixes
    /// from a few bytes long: they grow until the pickles fit, and the result
    /// is that of reading the file's bytes.
    #[test]
    fn legacy_pickles_are_found_in_growing_prefixes() {
        for name in [
            "torchvision-dtypes-legacy.pth",
            "torchvision-mini-legacy.pth",
            "pickle-corpus/truncated-legacy.pth",
            "pickle-corpus/deep-marks.pkl",
            "pickle-corpus/huge-length.pkl",
            "pickle-corpus/memo-bomb.pkl",
        ] {
            let path = fixture(name);
            let bytes = std::fs::read(&path).unwrap();
            let expected = read(&bytes, name);
            let file = std::fs::File::open(&path).unwrap();
            let source = Source::file(&file, name).unwrap();
            for prefix in [1, 7, 100, 1000] {
                match (&expected, read_legacy(source, name, prefix)) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!(b.format, Format::Legacy);
                        assert_eq!(a.tensors, b.tensors, "{name}");
                    }
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
                    (a, b) => {
                        panic!("{name}, prefix {prefix}: {a:?} from bytes, {b:?} from the file")
                    }
                }
            }
        }
    }

    #[test]
    fn f32_storages_are_read_straight_into_the_values() {
        // A storage at an offset of a larger source, as in an archive.
        let mut bytes = vec![0xAA; 3];
        bytes.extend(storage(12));
        let storage = Storage {
            source: Source::Memory(&bytes),
            offset: 3,
            len: 48,
        };
        let slice = convert("t", &tensor(&[2, 2], &[4, 1], 5, 12), storage, "f").unwrap();
        assert_eq!(slice.values, [5., 6., 9., 10.]);
        let transposed = convert("t", &tensor(&[2, 2], &[1, 4], 5, 12), storage, "f").unwrap();
        assert_eq!(transposed.values, [5., 9., 6., 10.]);
    }

    #[test]
    fn unknown_layouts_are_named() {
        let e = read(b"hello world, this is text", "x.pth")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a torch.save file"), "{e}");
        let mut tar = vec![0u8; 600];
        tar[257..262].copy_from_slice(b"ustar");
        let e = read(&tar, "old.pth").unwrap_err().to_string();
        assert!(e.contains("tar layout"), "{e}");
        let mut safetensors = 2u64.to_le_bytes().to_vec();
        safetensors.extend_from_slice(b"{}");
        let e = read(&safetensors, "w.pth").unwrap_err().to_string();
        assert!(e.contains("safetensors"), "{e}");
    }
}
