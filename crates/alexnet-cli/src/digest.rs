//! Digests of files: the SHA-256 a features file records of the checkpoint it
//! came from (so that a server can tell whether the two belong together), and
//! the digests a publisher states of a downloaded file.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The file's SHA-256, as 64 lowercase hex digits.
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(hex(&file_digest::<Sha256>(path)?))
}

/// The file's digest under `D`, read in chunks so that a large file is never
/// held in memory whole.
pub fn file_digest<D: Digest>(path: &Path) -> Result<Vec<u8>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = D::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut chunk)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            return Ok(hasher.finalize().to_vec());
        }
        hasher.update(&chunk[..read]);
    }
}

/// Bytes as lowercase hex digits, two a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
