//! Generated data for tests of this crate and of the crates above it: small
//! MNIST-style datasets a net can learn.

use std::path::{Path, PathBuf};

use alexnet::rng::Rng;

/// Writes the IDX pair `<prefix>-images-idx3-ubyte` and `<prefix>-labels-idx1-ubyte`
/// into `dir`: `count` 28x28 grey images of ten classes, each class a bright bar
/// at its own height over noise, so that a small net learns them in a few steps.
pub fn write_bar_idx(dir: &Path, prefix: &str, count: usize, rng: &mut Rng) -> std::io::Result<()> {
    let mut images = vec![0, 0, 8, 3];
    for v in [count as u32, 28, 28] {
        images.extend(v.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((count as u32).to_be_bytes());
    for _ in 0..count {
        let class = rng.below(10);
        labels.push(class as u8);
        for y in 0..28 {
            for _x in 0..28 {
                let bar = if y / 3 == class { 200.0 } else { 20.0 };
                images.push((bar + rng.uniform() * 50.0) as u8);
            }
        }
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images)?;
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels)
}

/// Writes the source of the small datasets the trainer's and the command line's
/// tests train on into `root/source` and returns that folder: MNIST-style IDX
/// files of 240 training and 60 test images (see [`write_bar_idx`]), the same
/// images every time.
pub fn write_bar_source(root: &Path) -> std::io::Result<PathBuf> {
    let source = root.join("source");
    std::fs::create_dir_all(&source)?;
    let mut rng = Rng::new(3);
    write_bar_idx(&source, "train", 240, &mut rng)?;
    write_bar_idx(&source, "t10k", 60, &mut rng)?;
    Ok(source)
}
