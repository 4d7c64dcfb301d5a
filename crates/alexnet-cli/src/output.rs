//! Writing result files atomically: to a temporary name beside the target, then
//! renamed, so an interrupted command never leaves half a file under the real name.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    alexnet::checkpoint::write_atomically(path, bytes)?;
    Ok(())
}

pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    write_atomically(path, &bytes)
}
