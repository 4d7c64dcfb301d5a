//! JPEG shards: the compressed alternative to raw records, for small disks
//! (ImageNet at 256x256 takes about a tenth of the raw 250 GB).
//!
//! A JPEG shard is laid out as follows (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..32 | the header of [`ShardHeader`], with magic `ALXJPEGS` and version 1 |
//! | 32..E | the JPEG streams, one per image, back to back in record order |
//! | E..end | the index: per record its offset (u64, from the file's start), length (u32) and label (u32) |
//!
//! where `E` is the file's length minus 16 bytes per record. The index trails the
//! streams, rather than preceding them, so that `prepare` can write a shard in one
//! pass without holding it in memory or knowing in advance how many of its source
//! items will turn out usable. Records tile the space between header and index
//! exactly; opening a shard checks every offset and length against that (and each
//! label against the classes), so a damaged index is found before any record is
//! read. The manifest's CRC-32 covers the whole file, as for raw shards.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::{JpegDecoder, JpegEncoder};
use image::{ColorType, ExtendedColorType, ImageDecoder};

use crate::error::{Result, dataset_error};
use crate::format::{SHARD_HEADER_BYTES, ShardFile, ShardHeader, ShardInfo};
use crate::pixels::deinterleave;

/// The first eight bytes of every JPEG shard.
pub const JPEG_SHARD_MAGIC: [u8; 8] = *b"ALXJPEGS";
/// The JPEG shard layout version this crate writes and reads.
pub const JPEG_SHARD_VERSION: u32 = 1;
/// Bytes of one index entry: offset (u64), length (u32), label (u32).
pub const INDEX_ENTRY_BYTES: usize = 16;

/// The markers every JPEG stream starts and ends with (start and end of image).
const SOI: [u8; 2] = [0xFF, 0xD8];
const EOI: [u8; 2] = [0xFF, 0xD9];

/// One record of a JPEG shard's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Where the record's JPEG stream starts, from the start of the file.
    pub offset: u64,
    pub length: u32,
    pub label: u32,
}

impl IndexEntry {
    pub fn to_bytes(self) -> [u8; INDEX_ENTRY_BYTES] {
        let mut out = [0u8; INDEX_ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.length.to_le_bytes());
        out[12..16].copy_from_slice(&self.label.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; INDEX_ENTRY_BYTES]) -> IndexEntry {
        IndexEntry {
            offset: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
            length: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            label: u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        }
    }
}

/// Where a checked JPEG shard's index starts. Every entry of that index has been
/// checked to lie inside the file, so reading a record needs no further checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JpegLayout {
    index_at: usize,
}

impl JpegLayout {
    /// Checks a mapped JPEG shard: header (magic, version, shape, record count),
    /// room for the index, every offset and length, and every label below `classes`.
    pub fn check(
        map: &[u8],
        path: &Path,
        shape: [usize; 3],
        images: u64,
        classes: usize,
    ) -> Result<JpegLayout> {
        let header = ShardHeader::parse_as(map, path, &JPEG_SHARD_MAGIC, JPEG_SHARD_VERSION)?;
        if header.shape() != shape || header.count != images {
            let [c, h, w] = header.shape();
            return Err(dataset_error(
                path,
                format!(
                    "expected header shape {}x{}x{} and {images} records, found {c}x{h}x{w} and {} records",
                    shape[0], shape[1], shape[2], header.count
                ),
            ));
        }
        let index_at = (images as usize)
            .checked_mul(INDEX_ENTRY_BYTES)
            .and_then(|index| map.len().checked_sub(index))
            .filter(|&at| at >= SHARD_HEADER_BYTES)
            .ok_or_else(|| {
                dataset_error(
                    path,
                    format!(
                        "a JPEG shard of {images} records needs at least {SHARD_HEADER_BYTES} header bytes and \
                         {INDEX_ENTRY_BYTES} index bytes a record, found a file of {} bytes",
                        map.len()
                    ),
                )
            })?;
        let layout = JpegLayout { index_at };
        layout.check_entries(map, path, images as usize, classes)?;
        Ok(layout)
    }

    /// Checks that the records tile the bytes between header and index, in order.
    fn check_entries(&self, map: &[u8], path: &Path, count: usize, classes: usize) -> Result<()> {
        let fail =
            |k: usize, message: String| Err(dataset_error(path, format!("record {k}: {message}")));
        let mut expected = SHARD_HEADER_BYTES as u64;
        for k in 0..count {
            let e = self.entry(map, k);
            if e.offset != expected {
                return fail(
                    k,
                    format!(
                        "expected its JPEG stream at byte {expected} (right after the previous one), \
                         found offset {}; the index is damaged",
                        e.offset
                    ),
                );
            }
            if (e.length as usize) < SOI.len() + EOI.len() {
                return fail(
                    k,
                    format!("a {}-byte stream cannot be a JPEG image", e.length),
                );
            }
            expected += e.length as u64;
            if expected > self.index_at as u64 {
                return fail(
                    k,
                    format!(
                        "its {} bytes at offset {} run past the end of the streams (byte {}); \
                         the index is damaged or the file was cut",
                        e.length, e.offset, self.index_at
                    ),
                );
            }
            if e.label as usize >= classes {
                return fail(
                    k,
                    format!("expected a label below {classes}, found {}", e.label),
                );
            }
        }
        if expected != self.index_at as u64 {
            return Err(dataset_error(
                path,
                format!(
                    "the records end at byte {expected} but the index starts at byte {}; \
                     the index is damaged",
                    self.index_at
                ),
            ));
        }
        Ok(())
    }

    /// Checks that every record is a whole JPEG stream (starts with SOI, ends with
    /// EOI): done with the checksum, when the whole file is read anyway.
    pub fn check_streams(&self, map: &[u8], path: &Path, count: usize) -> Result<()> {
        for k in 0..count {
            let (bytes, _) = self.record(map, k);
            if !is_whole_stream(bytes) {
                return Err(dataset_error(
                    path,
                    format!(
                        "record {k}: expected a JPEG stream (starting FF D8, ending FF D9), found {:02X?} ... {:02X?}",
                        &bytes[..2],
                        &bytes[bytes.len() - 2..]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Index entry `k` (not checked: `k` must be below the shard's record count).
    pub fn entry(&self, map: &[u8], k: usize) -> IndexEntry {
        let at = self.index_at + k * INDEX_ENTRY_BYTES;
        IndexEntry::from_bytes(map[at..at + INDEX_ENTRY_BYTES].try_into().unwrap())
    }

    /// Record `k`'s JPEG stream and label.
    pub fn record<'a>(&self, map: &'a [u8], k: usize) -> (&'a [u8], u32) {
        let e = self.entry(map, k);
        let at = e.offset as usize;
        (&map[at..at + e.length as usize], e.label)
    }
}

fn is_whole_stream(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes.starts_with(&SOI) && bytes.ends_with(&EOI)
}

/// Writes one JPEG shard: a placeholder header, the streams as they come, the
/// index (kept in memory, 16 bytes a record) at the end, then the real header.
pub(crate) struct JpegShardWriter {
    shard: ShardFile,
    index: Vec<u8>,
    offset: u64,
}

impl JpegShardWriter {
    pub fn create(path: &Path, shape: [usize; 3]) -> Result<JpegShardWriter> {
        Ok(JpegShardWriter {
            shard: ShardFile::create(path, shape)?,
            index: Vec::new(),
            offset: SHARD_HEADER_BYTES as u64,
        })
    }

    /// Appends one image's JPEG stream.
    pub fn push(&mut self, label: u32, jpeg: &[u8]) -> Result<()> {
        let length = u32::try_from(jpeg.len()).map_err(|_| {
            dataset_error(
                &self.shard.path,
                format!("a JPEG stream of {} bytes is over 4 GiB", jpeg.len()),
            )
        })?;
        let entry = IndexEntry {
            offset: self.offset,
            length,
            label,
        };
        self.index.extend_from_slice(&entry.to_bytes());
        self.shard.write(jpeg)?;
        self.offset += jpeg.len() as u64;
        self.shard.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.shard.count
    }

    /// Writes the index and the real header, syncs the file, and returns its
    /// manifest entry.
    pub fn finish(mut self) -> Result<ShardInfo> {
        self.shard.write(&self.index)?;
        let header = self
            .shard
            .header()
            .to_bytes_as(&JPEG_SHARD_MAGIC, JPEG_SHARD_VERSION);
        let info = self.shard.finish(&header)?;
        debug_assert_eq!(info.bytes, self.offset + self.index.len() as u64);
        Ok(info)
    }
}

/// Encodes one CHW image (1 or 3 channels) as a baseline JPEG at `quality`.
pub(crate) fn encode(
    pixels: &[u8],
    shape: [usize; 3],
    quality: u8,
) -> std::result::Result<Vec<u8>, String> {
    let [channels, height, width] = shape;
    let colour = if channels == 1 {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    let interleaved;
    let samples = if channels == 1 {
        pixels
    } else {
        interleaved = interleave(pixels, height * width);
        &interleaved[..]
    };
    let mut out = Vec::with_capacity(pixels.len() / 4);
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode(samples, width as u32, height as u32, colour)
        .map_err(|e| format!("cannot encode as JPEG: {e}"))?;
    Ok(out)
}

/// CHW planes of three channels to interleaved RGB.
fn interleave(pixels: &[u8], plane: usize) -> Vec<u8> {
    let (r, rest) = pixels.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let mut out = Vec::with_capacity(3 * plane);
    for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
        out.extend_from_slice(&[r, g, b]);
    }
    out
}

/// Scratch memory for decoding stored JPEG images, reused from one image to the
/// next (see [`Split::read`](crate::Split::read)): after the first image of a
/// dataset it does not grow. Each loader thread keeps its own.
#[derive(Debug, Default)]
pub struct DecodeBuffer {
    /// The decoder's output, interleaved RGB (unused for grey images).
    interleaved: Vec<u8>,
    /// The image as [`Split::read`](crate::Split::read) returns it: CHW.
    planar: Vec<u8>,
}

/// Decodes one stored JPEG stream into `buf`, checking that it holds an image of
/// `shape` (1 channel: grey; 3: RGB), and returns the CHW pixels.
pub(crate) fn decode<'a>(
    bytes: &[u8],
    shape: [usize; 3],
    buf: &'a mut DecodeBuffer,
) -> std::result::Result<&'a [u8], String> {
    let mut planar = std::mem::take(&mut buf.planar);
    planar.resize(shape.iter().product(), 0);
    let decoded = decode_into(bytes, shape, buf, &mut planar);
    buf.planar = planar;
    decoded.map(|()| &buf.planar[..])
}

/// [`decode`], the CHW pixels written to `out` (exactly the image's bytes long)
/// instead of `buf`'s own planes: straight into a batch.
pub(crate) fn decode_into(
    bytes: &[u8],
    shape: [usize; 3],
    buf: &mut DecodeBuffer,
    out: &mut [u8],
) -> std::result::Result<(), String> {
    let [channels, height, width] = shape;
    assert_eq!(
        out.len(),
        channels * height * width,
        "decode_into: the output holds one image"
    );
    if !is_whole_stream(bytes) {
        return Err("not a whole JPEG stream (it must start FF D8 and end FF D9)".into());
    }
    let decoder = JpegDecoder::new(Cursor::new(bytes))
        .map_err(|e| format!("cannot read the JPEG header: {e}"))?;
    let (w, h) = decoder.dimensions();
    let colour = if channels == 1 {
        ColorType::L8
    } else {
        ColorType::Rgb8
    };
    // Checked before decoding, so a damaged header cannot size an allocation.
    if (w as usize, h as usize) != (width, height) || decoder.color_type() != colour {
        return Err(format!(
            "expected a {width}x{height} {colour:?} JPEG, found {w}x{h} {:?}",
            decoder.color_type()
        ));
    }
    let plane = height * width;
    let target = if channels == 1 {
        &mut out[..]
    } else {
        buf.interleaved.resize(3 * plane, 0);
        &mut buf.interleaved[..]
    };
    decoder
        .read_image(target)
        .map_err(|e| format!("cannot decode the JPEG: {e}"))?;
    if channels == 3 {
        deinterleave(&buf.interleaved, out, plane);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(shape: [usize; 3]) -> Vec<u8> {
        let [c, h, w] = shape;
        (0..c * h * w)
            .map(|i| ((i % w) * 3 + (i / w % h) * 2 + (i / (h * w)) * 40) as u8)
            .collect()
    }

    #[test]
    fn encode_then_decode_is_close_in_colour_and_grey() {
        for shape in [[3, 24, 40], [1, 28, 28]] {
            let pixels = gradient(shape);
            let jpeg = encode(&pixels, shape, 95).unwrap();
            let mut buf = DecodeBuffer::default();
            let back = decode(&jpeg, shape, &mut buf).unwrap();
            let worst = pixels
                .iter()
                .zip(back)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .max()
                .unwrap();
            assert!(worst <= 12, "{shape:?}: worst difference {worst}");
        }
    }

    #[test]
    fn decode_refuses_other_shapes_and_broken_streams() {
        let shape = [3, 16, 16];
        let jpeg = encode(&gradient(shape), shape, 90).unwrap();
        let mut buf = DecodeBuffer::default();
        let err = decode(&jpeg, [3, 16, 24], &mut buf).unwrap_err();
        assert!(
            err.contains("expected a 24x16") && err.contains("found 16x16"),
            "{err}"
        );
        let err = decode(&jpeg, [1, 16, 16], &mut buf).unwrap_err();
        assert!(err.contains("L8") && err.contains("Rgb8"), "{err}");
        let err = decode(&jpeg[..jpeg.len() - 1], shape, &mut buf).unwrap_err();
        assert!(err.contains("whole JPEG stream"), "{err}");
        // The decoder reads damaged entropy-coded data as some picture; damaged
        // headers, as here the frame's component count, are errors.
        let mut bad = jpeg.clone();
        let sof = bad.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        bad[sof + 9] = 0;
        let err = decode(&bad, shape, &mut buf).unwrap_err();
        assert!(err.contains("cannot read the JPEG header"), "{err}");
    }

    #[test]
    fn index_entries_round_trip() {
        let e = IndexEntry {
            offset: 1 << 40,
            length: 12345,
            label: 999,
        };
        assert_eq!(IndexEntry::from_bytes(&e.to_bytes()), e);
    }
}
