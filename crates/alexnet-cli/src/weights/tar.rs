//! One file out of a gzip-compressed tar archive (Caffe ships its ImageNet mean
//! in one): the archive is walked header by header, reading nothing but the
//! headers and the wanted member, whose size is bounded.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

const BLOCK: usize = 512;

/// The bytes of the member whose name ends with `/name` (or is `name`), at most
/// `limit` bytes.
pub fn member(archive: &Path, name: &str, limit: u64) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("reading {}", archive.display()))?;
    let mut tar = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let what = || format!("{} (a .tar.gz)", archive.display());
    let mut header = [0u8; BLOCK];
    loop {
        if !read_block(&mut tar, &mut header).with_context(what)? || header.iter().all(|&b| b == 0)
        {
            bail!("{} has no member named {name}", what());
        }
        let member_name = text(&header[..100]);
        let size =
            octal(&header[124..136]).with_context(|| format!("{}: a header's size", what()))?;
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let kind = header[156];
        let is_file = kind == b'0' || kind == 0;
        if is_file && (member_name == name || member_name.ends_with(&format!("/{name}"))) {
            if size > limit {
                bail!(
                    "{}: {name} is {size} bytes, more than the {limit} expected",
                    what()
                );
            }
            let mut bytes = vec![0u8; size as usize];
            tar.read_exact(&mut bytes)
                .with_context(|| format!("{}: {name} is cut short", what()))?;
            return Ok(bytes);
        }
        std::io::copy(&mut (&mut tar).take(padded), &mut std::io::sink()).with_context(what)?;
    }
}

/// Reads one block; false at a clean end of the stream.
fn read_block(reader: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<bool> {
    let mut filled = 0;
    while filled < BLOCK {
        let read = reader.read(&mut block[filled..])?;
        if read == 0 {
            if filled == 0 {
                return Ok(false);
            }
            bail!("the archive ends inside a header");
        }
        filled += read;
    }
    Ok(true)
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> Result<u64> {
    let digits = text(field);
    let digits = digits.trim_matches(|c: char| c == ' ' || c == '\0');
    u64::from_str_radix(if digits.is_empty() { "0" } else { digits }, 8)
        .map_err(|_| anyhow::anyhow!("not an octal size: {digits:?}"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A tar of the given members, gzip-compressed.
    pub fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (name, bytes) in members {
            let mut header = [0u8; BLOCK];
            header[..name.len()].copy_from_slice(name.as_bytes());
            header[100..107].copy_from_slice(b"0000644");
            header[124..135].copy_from_slice(format!("{:011o}", bytes.len()).as_bytes());
            header[156] = b'0';
            header[257..262].copy_from_slice(b"ustar");
            tar.extend_from_slice(&header);
            tar.extend_from_slice(bytes);
            tar.resize(tar.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        tar.extend_from_slice(&[0u8; 2 * BLOCK]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn finds_a_member_after_others_and_bounds_its_size() {
        let dir = std::env::temp_dir().join(format!("alexnet-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.tar.gz");
        let other = vec![7u8; 1000];
        std::fs::write(
            &path,
            tar_gz(&[
                ("x/readme.txt", &other),
                ("x/mean.binaryproto", b"the mean"),
            ]),
        )
        .unwrap();
        assert_eq!(member(&path, "mean.binaryproto", 100).unwrap(), b"the mean");
        let err = member(&path, "mean.binaryproto", 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than the 4 expected"), "{err}");
        let err = member(&path, "missing", 100).unwrap_err().to_string();
        assert!(err.contains("no member named missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
