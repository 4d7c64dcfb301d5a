//! Folders of photographs, the layout ImageNet is distributed in:
//! `root/<class>/<image files>`, with an optional validation folder in the same
//! layout or flat with a ground-truth file. Every image is brought to the paper's
//! form (Section 2): the shorter side rescaled to `size` (256) with an antialiasing
//! filter, the central `size` x `size` patch kept, as RGB.

use std::cell::RefCell;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use fast_image_resize as fir;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use rayon::prelude::*;

use super::{Job, PrepareOptions, Source, Summary, folder_name, read_limited, write_dataset};
use crate::error::{Result, config_error, io_error, source_error};
use crate::format::ClassInfo;

/// Where the photographs are and what to make of them.
#[derive(Clone, Debug)]
pub struct FolderOptions {
    /// The training folder: one sub-folder per class.
    pub train: PathBuf,
    /// A validation folder: class sub-folders, or flat with `val_labels`.
    pub val: Option<PathBuf>,
    /// For a flat validation folder: one 1-based class index per line, for the
    /// image files in sorted name order (ILSVRC's ground-truth file). Index `k`
    /// is the `k`-th class: the `k`-th line of `synsets` when given, else the
    /// `k`-th class folder in sorted order.
    pub val_labels: Option<PathBuf>,
    /// A class list, one `<id> <name>` a line ("n01440764 tench, Tinca tinca"):
    /// fixes the class order and names; every class folder must be listed.
    pub synsets: Option<PathBuf>,
    /// Readable names for class ids (without `synsets`): a folder named by an id
    /// listed here gets its name, others keep their folder name.
    pub known_names: Vec<ClassInfo>,
    /// The stored side: shorter side rescaled to this, then the central square kept.
    pub size: u32,
    /// Images declaring more pixels than this are skipped unread (decompression bombs).
    pub max_pixels: u64,
}

impl FolderOptions {
    pub fn new(train: &Path) -> FolderOptions {
        FolderOptions {
            train: train.to_path_buf(),
            val: None,
            val_labels: None,
            synsets: None,
            known_names: Vec::new(),
            size: 256,
            max_pixels: 100_000_000,
        }
    }
}

/// The largest stored side of photographs: each decoding thread holds a few
/// images of this size (48 MiB each as RGB) besides the one it decodes, and
/// every stored image takes as much on disk. (The format itself allows
/// [`crate::format::MAX_SIDE`].)
pub const MAX_PHOTO_SIDE: usize = 4096;

/// Largest image file read: far above any real photograph, and a bound on the
/// memory one decoding thread can take for its input.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// A photograph loaded the paper's way: decoded, converted to RGB, shorter side
/// rescaled to `size`, centre-cropped to `size` x `size`, returned as CHW bytes.
/// The error says why the file cannot be used.
pub fn load_photo(path: &Path, size: u32, max_pixels: u64) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 3 * size as usize * size as usize];
    photo_into(path, size, max_pixels, &mut out).map_err(|reason| source_error(path, reason))?;
    Ok(out)
}

/// [`load_photo`] of an image already in memory (an upload, say): the same
/// decoding, checks and crop; the error is the reason alone, with no file name.
pub fn photo_from_bytes(
    bytes: &[u8],
    size: u32,
    max_pixels: u64,
) -> std::result::Result<Vec<u8>, String> {
    if bytes.is_empty() {
        return Err("empty image (0 bytes)".into());
    }
    let rgb = decode_rgb(bytes, max_pixels, None)?;
    let mut out = vec![0u8; 3 * size as usize * size as usize];
    resize_centre_crop(&rgb, size, &mut out)?;
    Ok(out)
}

fn photo_into(
    path: &Path,
    size: u32,
    max_pixels: u64,
    out: &mut [u8],
) -> std::result::Result<(), String> {
    photo_into_serialised(path, size, max_pixels, out, None)
}

/// [`photo_into`], where images of more than [`LARGE_PIXELS`] decode one at a
/// time under `large` (when given), so that the memory of several decoding
/// threads does not grow with the threads times the largest image.
fn photo_into_serialised(
    path: &Path,
    size: u32,
    max_pixels: u64,
    out: &mut [u8],
    large: Option<&std::sync::Mutex<()>>,
) -> std::result::Result<(), String> {
    let metadata = file_metadata(path)?;
    let len = metadata.len();
    if len == 0 {
        return Err("empty file (0 bytes)".into());
    }
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "file of {len} bytes is larger than the {MAX_FILE_BYTES}-byte limit"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let rgb = decode_rgb(&bytes, max_pixels, large)?;
    resize_centre_crop(&rgb, size, out)
}

/// What `path` is, if it is a regular file (or a link to one); otherwise why it
/// is not an image file. Nothing but a regular file is opened: reading a FIFO
/// would wait for a writer forever.
fn file_metadata(path: &Path) -> std::result::Result<std::fs::Metadata, String> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
            return Err(if e.kind() == std::io::ErrorKind::NotFound {
                "a dangling symbolic link (its target does not exist)".into()
            } else {
                format!("a symbolic link that cannot be followed (a loop?): {e}")
            });
        }
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if metadata.is_dir() {
        return Err(
            "a directory (a class folder holds image files; folders in it are not entered)".into(),
        );
    }
    if !metadata.is_file() {
        return Err("not a regular file (a FIFO, socket or device)".into());
    }
    Ok(metadata)
}

/// Images with more pixels than this decode one at a time in `prepare` (about
/// 130 MB as 16-bit RGBA, the decoder's largest output): several threads may
/// each hold one smaller image, but only one such large one.
pub const LARGE_PIXELS: u64 = 16_000_000;

/// Decodes an image file's bytes (format from the content, not the name) to RGB;
/// an image of more than [`LARGE_PIXELS`] waits for `large` where given.
fn decode_rgb(
    bytes: &[u8],
    max_pixels: u64,
    large: Option<&std::sync::Mutex<()>>,
) -> std::result::Result<RgbImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let format = reader
        .format()
        .ok_or("not an image: the content matches no known image format")?;
    if format == image::ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        // The JPEG decoder fills a cut-off scan with grey rather than failing; a
        // photograph half grey would be a silently wrong training example.
        return Err("truncated JPEG: no end-of-image marker after the last scan".into());
    }
    let mut limits = Limits::default();
    // The decoder's own allocation cap backs up the pixel-count check below for
    // formats that allocate before their dimensions are known; 8 bytes per pixel
    // covers 16-bit RGBA output.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot read {format:?} header: {e}"))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("image has no pixels ({w}x{h})"));
    }
    if w as u64 * h as u64 > max_pixels {
        return Err(format!(
            "declared size {w}x{h} is over the limit of {max_pixels} pixels (a decompression bomb?)"
        ));
    }
    let _one_at_a_time = large
        .filter(|_| w as u64 * h as u64 > LARGE_PIXELS)
        .map(|lock| {
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
    let image = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    // Grey, grey+alpha, palette, 16-bit and CMYK (converted by the JPEG decoder)
    // all become 8-bit RGB; alpha is dropped, as the reference pipelines do.
    Ok(image.into_rgb8())
}

/// True when a JPEG stream's last start-of-scan marker is followed by an
/// end-of-image marker. Inside entropy-coded data a 0xFF byte is always followed
/// by 0x00 or a restart marker, so 0xFF 0xD9 there can only be the real end; an
/// embedded thumbnail's end marker comes before the main image's scans.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    matches!((last_sos, last_eoi), (Some(s), Some(e)) if e > s)
}

thread_local! {
    static RESIZER: RefCell<fir::Resizer> = RefCell::new(fir::Resizer::new());
}

/// Rescales the shorter side to `size` and keeps the central square, writing CHW.
fn resize_centre_crop(
    rgb: &RgbImage,
    size: u32,
    out: &mut [u8],
) -> std::result::Result<(), String> {
    let (w, h) = rgb.dimensions();
    let src = fir::images::ImageRef::new(w, h, rgb.as_raw(), fir::PixelType::U8x3)
        .map_err(|e| format!("cannot resize: {e}"))?;
    let mut dst = fir::images::Image::new(size, size, fir::PixelType::U8x3);
    // Catmull-Rom is the bicubic filter; as a convolution it widens with the
    // scale when shrinking, which is the antialiasing. Fitting the square
    // destination crops the source's central square first: the same as resizing
    // the shorter side to `size` and cropping the middle, without the second copy.
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom))
        .fit_into_destination(None);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .map_err(|e| format!("cannot resize: {e}"))?;
    let plane = size as usize * size as usize;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in dst.buffer().chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
    Ok(())
}

struct Photos {
    items: Vec<(PathBuf, u32)>,
    size: u32,
    max_pixels: u64,
    /// Held while a large image decodes (see [`LARGE_PIXELS`]).
    large: std::sync::Mutex<()>,
}

impl Source for Photos {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn describe(&self, i: usize) -> String {
        self.items[i].0.display().to_string()
    }

    fn load(&self, i: usize, out: &mut [u8]) -> std::result::Result<u32, String> {
        let (path, label) = &self.items[i];
        photo_into_serialised(path, self.size, self.max_pixels, out, Some(&self.large))?;
        Ok(*label)
    }

    fn fingerprint(&self, hash: &mut crc32fast::Hasher) {
        hash.update(format!("photos {} {};", self.size, self.max_pixels).as_bytes());
        for (path, label) in &self.items {
            hash.update(path.as_os_str().as_encoded_bytes());
            hash.update(&label.to_le_bytes());
        }
    }
}

/// Visible entries of a directory, sorted by name, keeping those `keep` accepts.
fn entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && keep(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Class folders of `root` with their names (folder names must be UTF-8: they
/// become class ids in the manifest).
fn class_folders(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    entries(root, |p| p.is_dir())?
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| source_error(&path, "class folder name is not UTF-8"))?
                .to_string();
            Ok((name, path))
        })
        .collect()
}

/// Files of one folder (regular files or links to them; sub-folders are not entered).
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    entries(dir, |p| p.is_file())
}

/// Every visible entry of a class folder: what is not an image file (a folder,
/// a dangling or looping link, a FIFO) is skipped with its reason when loaded,
/// so it is listed in `skipped.txt` rather than passed over in silence.
fn class_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    entries(dir, |_| true)
}

/// Refuses a training class folder with nothing in it: a class no image
/// teaches, usually a link to a folder that is not where it was meant to be.
fn check_no_empty_class(
    items: &[(PathBuf, u32)],
    folders: &[(String, PathBuf)],
    classes: &[ClassInfo],
) -> Result<()> {
    for (name, path) in folders {
        let label = classes.iter().position(|c| c.id == *name);
        if !items.iter().any(|(_, l)| Some(*l as usize) == label) {
            let link = std::fs::read_link(path)
                .map(|to| format!(" (a link to {})", to.display()))
                .unwrap_or_default();
            return Err(source_error(
                path,
                format!("the class folder '{name}'{link} has no entries: no image would teach it"),
            ));
        }
    }
    Ok(())
}

/// Refuses an output folder inside an input folder: a rerun would read the
/// dataset's own files as photographs.
fn check_output_outside(opts: &PrepareOptions, train: &Path, val: Option<&Path>) -> Result<()> {
    let out = opts.out.parent().map_or_else(
        || opts.out.clone(),
        |parent| {
            let parent = parent
                .canonicalize()
                .unwrap_or_else(|_| parent.to_path_buf());
            parent.join(opts.out.file_name().unwrap_or_default())
        },
    );
    for input in std::iter::once(train).chain(val) {
        let input = input.canonicalize().unwrap_or_else(|_| input.to_path_buf());
        if out.starts_with(&input) {
            return Err(config_error(
                "out",
                format!(
                    "{} is inside the input folder {}: put the dataset outside it",
                    opts.out.display(),
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a synset list: `<id> <name>` a line, in class order.
fn read_synsets(path: &Path) -> Result<Vec<ClassInfo>> {
    let text = String::from_utf8(read_limited(path, 64 << 20)?)
        .map_err(|_| source_error(path, "expected UTF-8 text"))?;
    let mut classes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (id, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let name = name.trim();
        if !seen.insert(id.to_string()) {
            return Err(source_error(
                path,
                format!("line {}: class '{id}' is listed twice", number + 1),
            ));
        }
        classes.push(ClassInfo {
            id: id.to_string(),
            name: if name.is_empty() { id } else { name }.to_string(),
        });
    }
    if classes.is_empty() {
        return Err(source_error(
            path,
            "expected lines of '<id> <name>', found none",
        ));
    }
    Ok(classes)
}

/// The images of class folders under `root`, labelled through `classes`, in
/// class-folder then file-name order.
fn labelled_folders(
    root: &Path,
    classes: &[ClassInfo],
    list: &Path,
) -> Result<Vec<(PathBuf, u32)>> {
    let folders = class_folders(root)?;
    let labelled = folders
        .into_iter()
        .map(|(name, path)| {
            let label = classes.iter().position(|c| c.id == name).ok_or_else(|| {
                source_error(
                    &path,
                    format!("class folder '{name}' is not a class of {}", list.display()),
                )
            })?;
            Ok((label as u32, path))
        })
        .collect::<Result<Vec<_>>>()?;
    let per_folder = labelled
        .par_iter()
        .map(|(label, path)| {
            Ok(class_entries(path)?
                .into_iter()
                .map(|f| (f, *label))
                .collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(per_folder.into_iter().flatten().collect())
}

/// A flat validation folder labelled by a ground-truth file of 1-based indices.
fn flat_validation(dir: &Path, labels: &Path, classes: usize) -> Result<Vec<(PathBuf, u32)>> {
    let files = image_files(dir)?;
    let text = String::from_utf8(read_limited(labels, 64 << 20)?)
        .map_err(|_| source_error(labels, "expected UTF-8 text"))?;
    let mut indices = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let k: usize = line.parse().map_err(|_| {
            source_error(
                labels,
                format!(
                    "line {}: expected a class index, found '{line}'",
                    number + 1
                ),
            )
        })?;
        if k == 0 || k > classes {
            return Err(source_error(
                labels,
                format!(
                    "line {}: expected a 1-based class index in 1..={classes}, found {k}",
                    number + 1
                ),
            ));
        }
        indices.push(k as u32 - 1);
    }
    if indices.len() != files.len() {
        return Err(source_error(
            labels,
            format!(
                "expected one label per file of {} ({} files), found {} labels",
                dir.display(),
                files.len(),
                indices.len()
            ),
        ));
    }
    Ok(files.into_iter().zip(indices).collect())
}

/// Prepares a folder of class folders of photographs (and optionally a validation
/// folder) at `size` x `size` RGB: splits `train` and, with a validation folder, `val`.
pub fn prepare_folder(folder: &FolderOptions, opts: &PrepareOptions) -> Result<Summary> {
    if folder.size == 0 || folder.size as usize > MAX_PHOTO_SIDE {
        return Err(config_error(
            "size",
            format!(
                "expected 1..={MAX_PHOTO_SIDE} (the paper stores 256), found {}",
                folder.size
            ),
        ));
    }
    if folder.val_labels.is_some() && folder.val.is_none() {
        return Err(config_error(
            "val-labels",
            "labels a flat validation folder: give the folder too (--val DIR)",
        ));
    }
    let root = &folder.train;
    if !root.is_dir() {
        return Err(source_error(root, "expected a directory of class folders"));
    }
    let folders = class_folders(root)?;
    if folders.is_empty() {
        return Err(source_error(
            root,
            "expected class folders (root/<class>/<image files>), found none",
        ));
    }
    let (classes, list) = match &folder.synsets {
        Some(path) => (read_synsets(path)?, path.clone()),
        None => (
            folders
                .iter()
                .map(|(id, _)| ClassInfo {
                    id: id.clone(),
                    name: folder
                        .known_names
                        .iter()
                        .find(|known| known.id == *id)
                        .map_or_else(|| id.clone(), |known| known.name.clone()),
                })
                .collect(),
            root.clone(),
        ),
    };
    check_output_outside(opts, root, folder.val.as_deref())?;
    let train = Photos {
        items: labelled_folders(root, &classes, &list)?,
        size: folder.size,
        max_pixels: folder.max_pixels,
        large: std::sync::Mutex::new(()),
    };
    check_no_empty_class(&train.items, &folders, &classes)?;
    let val = match (&folder.val, &folder.val_labels) {
        (Some(dir), Some(labels)) => Some(flat_validation(dir, labels, classes.len())?),
        (Some(dir), None) => Some(labelled_folders(dir, &classes, &list)?),
        _ => None,
    }
    .map(|items| Photos {
        items,
        size: folder.size,
        max_pixels: folder.max_pixels,
        large: std::sync::Mutex::new(()),
    });

    let mut splits: Vec<(String, &dyn Source)> = vec![("train".into(), &train)];
    if let Some(val) = &val {
        splits.push(("val".into(), val));
    }
    let canonical = root.canonicalize().unwrap_or_else(|_| root.clone());
    let name = opts.name.clone().unwrap_or_else(|| {
        // ImageNet-like trees keep the training images in a folder called "train":
        // the folder above it names the dataset.
        let name = folder_name(root);
        match (name.as_str(), canonical.parent()) {
            ("train" | "training", Some(parent)) => folder_name(parent),
            _ => name,
        }
    });
    let job = Job {
        name,
        source: format!(
            "photo folders in {}{}, shorter side to {}, central square",
            canonical.display(),
            folder
                .val
                .as_ref()
                .map(|v| format!(" (validation: {})", v.display()))
                .unwrap_or_default(),
            folder.size
        ),
        shape: [3, folder.size as usize, folder.size as usize],
        classes,
        splits,
    };
    write_dataset(job, opts)
}
