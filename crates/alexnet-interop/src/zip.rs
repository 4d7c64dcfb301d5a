//! A minimal reader of ZIP archives as `torch.save` writes them: every entry
//! stored (method 0), a central directory, and ZIP64 end records (PyTorch always
//! writes those). It reads a [`Source`]: a byte slice, from which it hands out
//! sub-slices (nothing is copied), or an open file, of which it reads only the
//! end records, the central directory and the local headers; an entry's data is
//! read when asked for, and a caller may read it at its offset straight into
//! where it is wanted.
//!
//! Every number the archive declares (entry count, directory size and offset,
//! each entry's local header and data) is checked against the length of the
//! source before it is used or anything is allocated for it. Compressed or
//! encrypted entries are refused: PyTorch never writes them, and inflating would
//! mean copying.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;

use crate::error::{Error, Result};

/// A file's bytes, wherever they are: in memory (a slice, perhaps of a mapped
/// file), or in an open file of a known length, read at offsets when asked for.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    Memory(&'a [u8]),
    File { file: &'a File, len: usize },
}

impl<'a> Source<'a> {
    /// An open file, its length taken now; `name` names it in errors.
    pub fn file(file: &'a File, name: &str) -> Result<Source<'a>> {
        let io = |source| Error::Io {
            file: name.to_string(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).map_err(|_| {
            Error::unsupported(
                name,
                format!("a file of {len} bytes, more than this machine can address"),
            )
        })?;
        Ok(Source::File { file, len })
    }

    /// The length in bytes.
    pub fn size(&self) -> usize {
        match self {
            Source::Memory(bytes) => bytes.len(),
            Source::File { len, .. } => *len,
        }
    }

    /// Whether the bytes are in memory already (reading them is free).
    pub fn in_memory(&self) -> bool {
        matches!(self, Source::Memory(_))
    }

    /// The `len` bytes from `offset`: borrowed from memory, or read from the
    /// file into a buffer of that length. A range past the end is an error (a
    /// caller checks declared ranges first, with its own message; this is the
    /// backstop, and the case of a file that shrank while it was read).
    pub fn read(&self, offset: usize, len: usize, name: &str) -> Result<Cow<'a, [u8]>> {
        self.check(offset, len, name)?;
        match *self {
            Source::Memory(bytes) => Ok(Cow::Borrowed(&bytes[offset..offset + len])),
            Source::File { .. } => {
                let mut buffer = vec![0; len];
                self.read_into(offset, &mut buffer, name)?;
                Ok(Cow::Owned(buffer))
            }
        }
    }

    /// Fills `out` with the bytes from `offset`, read straight into it.
    pub fn read_into(&self, offset: usize, out: &mut [u8], name: &str) -> Result<()> {
        self.check(offset, out.len(), name)?;
        match *self {
            Source::Memory(bytes) => {
                out.copy_from_slice(&bytes[offset..offset + out.len()]);
                Ok(())
            }
            Source::File { file, .. } => {
                read_exact_at(file, out, offset as u64).map_err(|source| Error::Io {
                    file: name.to_string(),
                    source,
                })
            }
        }
    }

    fn check(&self, offset: usize, len: usize, name: &str) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(Error::format(
                name,
                format!(
                    "{len} bytes from byte {offset} lie past the end of the {}-byte file (truncated?)",
                    self.size()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, out: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, out, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, out: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(out)
}

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_END_OF_DIRECTORY: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;

const LOCAL_HEADER_LEN: usize = 30;
const CENTRAL_HEADER_LEN: usize = 46;
const END_LEN: usize = 22;
const ZIP64_END_LEN: usize = 56;
const ZIP64_LOCATOR_LEN: usize = 20;
/// The end record may be followed by a comment of at most this many bytes.
const MAX_COMMENT: usize = 0xFFFF;
/// The ZIP64 extra field's header id.
const ZIP64_EXTRA: u16 = 0x0001;

/// Whether `bytes` starts like a ZIP archive (a local file header).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && le_u32(bytes, 0) == LOCAL_HEADER
}

/// One stored entry: its name and where its data lies in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Byte offset of the entry's data from the start of the archive.
    pub offset: usize,
    /// Length of the entry's data in bytes.
    pub size: usize,
}

impl Entry {
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.size
    }
}

/// A parsed archive: its entries in central-directory order, over the archive's bytes.
#[derive(Debug)]
pub struct Archive<'a> {
    source: Source<'a>,
    file: String,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl<'a> Archive<'a> {
    /// Reads the end records and the central directory of `bytes`; `file` names
    /// the archive in errors.
    pub fn parse(bytes: &'a [u8], file: &str) -> Result<Archive<'a>> {
        Archive::parse_source(Source::Memory(bytes), file)
    }

    /// [`Archive::parse`] on any source: of a file, only the end records, the
    /// central directory and the local headers are read.
    pub fn parse_source(source: Source<'a>, file: &str) -> Result<Archive<'a>> {
        let end = find_end_record(&source, file)?;
        let directory = read_directory_location(&source, file, end)?;
        let entries = read_directory(&source, file, &directory)?;
        let mut by_name = HashMap::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            // Two entries of one name would let the archive say two things at once.
            if by_name.insert(entry.name.clone(), index).is_some() {
                return Err(Error::format(
                    file,
                    format!("zip: the entry {} appears twice", entry.name),
                ));
            }
        }
        Ok(Archive {
            source,
            file: file.to_string(),
            entries,
            by_name,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The entry `name`, or an error naming it when it is absent.
    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.find(name).ok_or_else(|| {
            Error::format(&self.file, format!("zip: the archive has no entry {name}"))
        })
    }

    /// The data of the entry `name` (borrowed from memory, or read from the
    /// file), or an error naming it when it is absent.
    pub fn data(&self, name: &str) -> Result<Cow<'a, [u8]>> {
        let entry = self.entry(name)?;
        self.source.read(entry.offset, entry.size, &self.file)
    }

    /// What the archive is read from.
    pub fn source(&self) -> Source<'a> {
        self.source
    }
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn truncated(file: &str, what: &str) -> Error {
    Error::format(
        file,
        format!("zip: {what} lies beyond the end of the file (truncated?)"),
    )
}

/// Where the central directory is and how many entries it holds, with the
/// offset of the first end record (the directory must lie before it).
#[derive(Debug, PartialEq)]
struct DirectoryLocation {
    offset: usize,
    size: usize,
    entries: usize,
    end: usize,
}

/// The offset of the end-of-central-directory record: the last signature within
/// the trailing 22 + 65535 bytes whose comment length reaches exactly to the end
/// (so a signature inside the comment is not taken for the record).
fn find_end_record(source: &Source, file: &str) -> Result<usize> {
    let len = source.size();
    if len < END_LEN {
        return Err(Error::format(
            file,
            format!("zip: {len} bytes is too short for an archive (truncated?)"),
        ));
    }
    let lowest = len.saturating_sub(END_LEN + MAX_COMMENT);
    let tail = source.read(lowest, len - lowest, file)?;
    (0..=tail.len() - END_LEN)
        .rev()
        .find(|&at| {
            le_u32(&tail, at) == END_OF_DIRECTORY
                && lowest + at + END_LEN + le_u16(&tail, at + 20) as usize == len
        })
        .map(|at| lowest + at)
        .ok_or_else(|| {
            Error::format(
                file,
                "zip: no end-of-central-directory record (the file is truncated or not a zip archive)",
            )
        })
}

fn read_directory_location(source: &Source, file: &str, end: usize) -> Result<DirectoryLocation> {
    let record = source.read(end, END_LEN, file)?;
    let disk = le_u16(&record, 4);
    let directory_disk = le_u16(&record, 6);
    let entries = le_u16(&record, 10) as usize;
    let size = le_u32(&record, 12) as usize;
    let offset = le_u32(&record, 16) as usize;
    if disk != 0 || directory_disk != 0 {
        return Err(Error::unsupported(file, "zip: multi-volume archives"));
    }
    let location = DirectoryLocation {
        offset,
        size,
        entries,
        end,
    };
    // The ZIP64 locator sits right before the end record when there is one.
    if end >= ZIP64_LOCATOR_LEN {
        let locator = source.read(end - ZIP64_LOCATOR_LEN, ZIP64_LOCATOR_LEN, file)?;
        if le_u32(&locator, 0) == ZIP64_LOCATOR {
            return read_zip64_location(source, file, &locator, end - ZIP64_LOCATOR_LEN);
        }
    }
    check_directory_bounds(file, &location)?;
    Ok(location)
}

/// Reads the ZIP64 end record the locator (its bytes, found at byte `at`) points to.
fn read_zip64_location(
    source: &Source,
    file: &str,
    locator: &[u8],
    at: usize,
) -> Result<DirectoryLocation> {
    let start = usize::try_from(le_u64(locator, 8))
        .ok()
        .filter(|&r| r.checked_add(ZIP64_END_LEN).is_some_and(|e| e <= at))
        .ok_or_else(|| truncated(file, "the ZIP64 end record"))?;
    let record = source.read(start, ZIP64_END_LEN, file)?;
    if le_u32(&record, 0) != ZIP64_END_OF_DIRECTORY {
        return Err(Error::format(
            file,
            format!("zip: no ZIP64 end record at byte {start}, where the locator points"),
        ));
    }
    if le_u32(&record, 16) != 0 || le_u32(&record, 20) != 0 {
        return Err(Error::unsupported(file, "zip: multi-volume archives"));
    }
    let as_usize = |at: usize, what: &str| {
        usize::try_from(le_u64(&record, at)).map_err(|_| truncated(file, what))
    };
    let location = DirectoryLocation {
        entries: as_usize(32, "the central directory")?,
        size: as_usize(40, "the central directory")?,
        offset: as_usize(48, "the central directory")?,
        end: start,
    };
    check_directory_bounds(file, &location)?;
    Ok(location)
}

/// The directory must end before the end records, and hold at least a fixed
/// header per declared entry: checked before anything is allocated for it.
fn check_directory_bounds(file: &str, location: &DirectoryLocation) -> Result<()> {
    let fits = location
        .offset
        .checked_add(location.size)
        .is_some_and(|e| e <= location.end);
    if !fits {
        return Err(Error::format(
            file,
            format!(
                "zip: the central directory (bytes {} to {}) runs past its end record at byte {} (truncated?)",
                location.offset,
                location.offset as u128 + location.size as u128,
                location.end
            ),
        ));
    }
    if location.entries > location.size / CENTRAL_HEADER_LEN {
        return Err(Error::format(
            file,
            format!(
                "zip: the archive declares {} entries but its central directory of {} bytes holds at most {}",
                location.entries,
                location.size,
                location.size / CENTRAL_HEADER_LEN
            ),
        ));
    }
    Ok(())
}

fn read_directory(source: &Source, file: &str, location: &DirectoryLocation) -> Result<Vec<Entry>> {
    // In bounds: checked against the end records, which lie inside the source.
    let directory = source.read(location.offset, location.size, file)?;
    let mut entries = Vec::with_capacity(location.entries);
    let mut at = 0;
    for index in 0..location.entries {
        let (entry, next) = read_central_header(source, &directory, at, file, index)?;
        // Entry data lies before the directory: what is past it is not data.
        if entry.offset + entry.size > location.offset {
            return Err(Error::format(
                file,
                format!(
                    "zip: the entry {} (bytes {} to {}) runs past the start of the central directory at byte {} (truncated, or sizes that exceed the file)",
                    entry.name,
                    entry.offset,
                    entry.offset + entry.size,
                    location.offset
                ),
            ));
        }
        entries.push(entry);
        at = next;
    }
    Ok(entries)
}

/// The fields of a central directory header we use.
struct CentralHeader {
    flags: u16,
    method: u16,
    compressed: u64,
    uncompressed: u64,
    local_header: u64,
}

/// Reads the central header at `at` in `directory` and the local header it
/// points to; returns the entry and where the next central header starts.
fn read_central_header(
    source: &Source,
    directory: &[u8],
    at: usize,
    file: &str,
    index: usize,
) -> Result<(Entry, usize)> {
    let what = format!("the central directory header of entry {index}");
    if at + CENTRAL_HEADER_LEN > directory.len() {
        return Err(truncated(file, &what));
    }
    if le_u32(directory, at) != CENTRAL_HEADER {
        return Err(Error::format(
            file,
            format!("zip: {what} has no header signature"),
        ));
    }
    let name_len = le_u16(directory, at + 28) as usize;
    let extra_len = le_u16(directory, at + 30) as usize;
    let comment_len = le_u16(directory, at + 32) as usize;
    let name_at = at + CENTRAL_HEADER_LEN;
    let next = name_at + name_len + extra_len + comment_len;
    if next > directory.len() {
        return Err(truncated(file, &what));
    }
    let name = String::from_utf8(directory[name_at..name_at + name_len].to_vec())
        .map_err(|_| Error::format(file, format!("zip: the name of entry {index} is not UTF-8")))?;
    let mut header = CentralHeader {
        flags: le_u16(directory, at + 8),
        method: le_u16(directory, at + 10),
        compressed: le_u32(directory, at + 20) as u64,
        uncompressed: le_u32(directory, at + 24) as u64,
        local_header: le_u32(directory, at + 42) as u64,
    };
    let extra = &directory[name_at + name_len..name_at + name_len + extra_len];
    apply_zip64_extra(&mut header, extra, file, &name)?;
    let entry = locate_data(source, file, name, &header)?;
    Ok((entry, next))
}

/// Sizes and offsets too large for 32 bits are stored as 0xFFFFFFFF in the header
/// and given in full, in this order, in the ZIP64 extra field.
fn apply_zip64_extra(
    header: &mut CentralHeader,
    extra: &[u8],
    file: &str,
    name: &str,
) -> Result<()> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let id = le_u16(extra, at);
        let len = le_u16(extra, at + 2) as usize;
        let body = extra
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| truncated(file, &format!("the extra field of entry {name}")))?;
        if id == ZIP64_EXTRA {
            let mut fields = body
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
            for value in [
                &mut header.uncompressed,
                &mut header.compressed,
                &mut header.local_header,
            ] {
                if *value == u32::MAX as u64 {
                    *value = fields.next().ok_or_else(|| {
                        Error::format(
                            file,
                            format!("zip: the ZIP64 field of entry {name} is too short"),
                        )
                    })?;
                }
            }
        }
        at += 4 + len;
    }
    Ok(())
}

/// Checks the entry is stored and reads its local header, whose name and extra
/// field (PyTorch pads there to align data) may differ in length from the
/// central header's, to find where the data starts.
fn locate_data(source: &Source, file: &str, name: String, header: &CentralHeader) -> Result<Entry> {
    if header.flags & 1 != 0 {
        return Err(Error::unsupported(
            file,
            format!("zip: the entry {name} is encrypted"),
        ));
    }
    if header.method != 0 {
        let method = match header.method {
            8 => "deflate".to_string(),
            m => format!("method {m}"),
        };
        return Err(Error::unsupported(
            file,
            format!(
                "zip: the entry {name} is compressed ({method}); torch.save stores entries uncompressed, \
                 so the archive was rewritten by another tool (re-save it with torch.save, or unzip and zip with -0)"
            ),
        ));
    }
    if header.compressed != header.uncompressed {
        return Err(Error::format(
            file,
            format!(
                "zip: the stored entry {name} declares {} bytes stored but {} bytes of content",
                header.compressed, header.uncompressed
            ),
        ));
    }
    let len = source.size();
    let local = usize::try_from(header.local_header)
        .ok()
        .filter(|&l| l.checked_add(LOCAL_HEADER_LEN).is_some_and(|e| e <= len))
        .ok_or_else(|| truncated(file, &format!("the local header of entry {name}")))?;
    let bytes = source.read(local, LOCAL_HEADER_LEN, file)?;
    if le_u32(&bytes, 0) != LOCAL_HEADER {
        return Err(Error::format(
            file,
            format!("zip: no local header at byte {local}, where entry {name} should start"),
        ));
    }
    let offset =
        local + LOCAL_HEADER_LEN + le_u16(&bytes, 26) as usize + le_u16(&bytes, 28) as usize;
    let end = usize::try_from(header.compressed)
        .ok()
        .and_then(|size| offset.checked_add(size))
        .filter(|&end| end <= len)
        .ok_or_else(|| {
            Error::format(
                file,
                format!(
                    "zip: the entry {name} declares {} bytes from byte {offset}, past the end of the {}-byte file (truncated?)",
                    header.compressed, len
                ),
            )
        })?;
    Ok(Entry {
        name,
        offset,
        size: end - offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored entry as written by a plain ZIP writer (no data descriptor).
    struct Written {
        name: &'static str,
        data: Vec<u8>,
        /// Padding in the local header's extra field, as PyTorch writes.
        local_extra: usize,
    }

    fn put16(out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    fn put32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    fn put64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// The fields a local and a central header share, in the same order: flags,
    /// method (stored), time and date, CRC-32 (left 0), both sizes and the name's
    /// length.
    fn put_entry_fields(out: &mut Vec<u8>, e: &Written) {
        put16(out, 0);
        put16(out, 0);
        put32(out, 0);
        put32(out, 0);
        put32(out, e.data.len() as u32);
        put32(out, e.data.len() as u32);
        put16(out, e.name.len() as u16);
    }

    /// Writes an archive; `zip64` adds the ZIP64 end record and locator, and puts
    /// the local header offsets in ZIP64 extra fields (0xFFFFFFFF in the header).
    fn archive(entries: &[Written], zip64: bool, comment: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offsets = Vec::new();
        for e in entries {
            offsets.push(out.len());
            put32(&mut out, LOCAL_HEADER);
            put16(&mut out, 20);
            put_entry_fields(&mut out, e);
            put16(&mut out, e.local_extra as u16);
            out.extend_from_slice(e.name.as_bytes());
            out.extend(std::iter::repeat_n(b'Z', e.local_extra));
            out.extend_from_slice(&e.data);
        }
        let directory = out.len();
        for (e, &offset) in entries.iter().zip(&offsets) {
            put32(&mut out, CENTRAL_HEADER);
            put16(&mut out, 45);
            put16(&mut out, 45);
            put_entry_fields(&mut out, e);
            put16(&mut out, if zip64 { 12 } else { 0 });
            put16(&mut out, 0);
            put16(&mut out, 0);
            put16(&mut out, 0);
            put32(&mut out, 0);
            put32(&mut out, if zip64 { u32::MAX } else { offset as u32 });
            out.extend_from_slice(e.name.as_bytes());
            if zip64 {
                put16(&mut out, ZIP64_EXTRA);
                put16(&mut out, 8);
                put64(&mut out, offset as u64);
            }
        }
        let directory_size = out.len() - directory;
        if zip64 {
            let record = out.len();
            put32(&mut out, ZIP64_END_OF_DIRECTORY);
            put64(&mut out, 44);
            put16(&mut out, 45);
            put16(&mut out, 45);
            put32(&mut out, 0);
            put32(&mut out, 0);
            put64(&mut out, entries.len() as u64);
            put64(&mut out, entries.len() as u64);
            put64(&mut out, directory_size as u64);
            put64(&mut out, directory as u64);
            put32(&mut out, ZIP64_LOCATOR);
            put32(&mut out, 0);
            put64(&mut out, record as u64);
            put32(&mut out, 1);
        }
        put32(&mut out, END_OF_DIRECTORY);
        put16(&mut out, 0);
        put16(&mut out, 0);
        put16(&mut out, entries.len() as u16);
        put16(&mut out, entries.len() as u16);
        put32(&mut out, directory_size as u32);
        put32(&mut out, if zip64 { u32::MAX } else { directory as u32 });
        put16(&mut out, comment.len() as u16);
        out.extend_from_slice(comment);
        out
    }

    fn two_entries() -> Vec<Written> {
        vec![
            Written {
                name: "a/data.pkl",
                data: b"pickle".to_vec(),
                local_extra: 13,
            },
            Written {
                name: "a/data/0",
                data: vec![1, 2, 3, 4, 5, 6, 7, 8],
                local_extra: 0,
            },
        ]
    }

    fn check_two(bytes: &[u8]) {
        let zip = Archive::parse(bytes, "t.zip").unwrap();
        let names: Vec<_> = zip.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a/data.pkl", "a/data/0"]);
        assert_eq!(*zip.data("a/data.pkl").unwrap(), *b"pickle");
        assert_eq!(*zip.data("a/data/0").unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
        let err = zip.data("a/data/1").unwrap_err().to_string();
        assert!(err.contains("no entry a/data/1"), "{err}");
    }

    #[test]
    fn reads_plain_and_zip64_archives_with_padding_and_comments() {
        check_two(&archive(&two_entries(), false, b""));
        check_two(&archive(&two_entries(), true, b""));
        // A comment holding an end signature must not be taken for the record.
        let mut comment = END_OF_DIRECTORY.to_le_bytes().to_vec();
        comment.extend_from_slice(&[0; 30]);
        check_two(&archive(&two_entries(), false, &comment));
        assert!(is_zip(&archive(&two_entries(), false, b"")));
        assert!(!is_zip(b"\x80\x02"));
    }

    #[test]
    fn a_file_source_reads_like_the_bytes() {
        let dir = std::env::temp_dir().join(format!("alexnet-zip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for zip64 in [false, true] {
            let whole = archive(&two_entries(), zip64, b"");
            let path = dir.join(format!("t{zip64}.zip"));
            std::fs::write(&path, &whole).unwrap();
            let file = File::open(&path).unwrap();
            let source = Source::file(&file, "t.zip").unwrap();
            assert_eq!(source.size(), whole.len());
            let zip = Archive::parse_source(source, "t.zip").unwrap();
            let expected = Archive::parse(&whole, "t.zip").unwrap();
            assert_eq!(zip.entries(), expected.entries());
            assert_eq!(*zip.data("a/data.pkl").unwrap(), *b"pickle");
            let entry = zip.entry("a/data/0").unwrap();
            let mut out = [0; 4];
            zip.source()
                .read_into(entry.offset + 4, &mut out, "t.zip")
                .unwrap();
            assert_eq!(out, [5, 6, 7, 8]);
            let e = source.read(whole.len() - 2, 3, "t.zip").unwrap_err();
            assert!(e.to_string().contains("past the end"), "{e}");
            // Every truncation fails as the truncated bytes do.
            for len in 0..whole.len() {
                std::fs::write(&path, &whole[..len]).unwrap();
                let file = File::open(&path).unwrap();
                let from_file =
                    Archive::parse_source(Source::file(&file, "t.zip").unwrap(), "t.zip");
                let from_bytes = Archive::parse(&whole[..len], "t.zip");
                assert_eq!(
                    from_file.unwrap_err().to_string(),
                    from_bytes.unwrap_err().to_string()
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_archive_has_no_entries() {
        let zip = archive(&[], false, b"");
        assert!(Archive::parse(&zip, "e.zip").unwrap().entries().is_empty());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for zip64 in [false, true] {
            let whole = archive(&two_entries(), zip64, b"");
            for len in 0..whole.len() {
                assert!(
                    Archive::parse(&whole[..len], "t.zip").is_err(),
                    "length {len} of {}",
                    whole.len()
                );
            }
        }
        let err = Archive::parse(b"PK\x03\x04", "t.zip")
            .unwrap_err()
            .to_string();
        assert!(err.contains("too short"), "{err}");
    }

    #[test]
    fn every_corrupted_byte_is_an_error_or_a_consistent_archive() {
        // Flip each byte in turn: whatever parses must still hand out in-bounds data.
        let whole = archive(&two_entries(), true, b"");
        for at in 0..whole.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bytes = whole.clone();
                bytes[at] ^= flip;
                if let Ok(zip) = Archive::parse(&bytes, "t.zip") {
                    for e in zip.entries() {
                        assert!(e.offset + e.size <= bytes.len());
                    }
                }
            }
        }
    }

    #[test]
    fn sizes_past_the_file_are_refused() {
        let mut bytes = archive(&two_entries(), false, b"");
        let directory = bytes
            .windows(4)
            .position(|w| w == CENTRAL_HEADER.to_le_bytes())
            .unwrap();
        // Both size fields of the first entry: huge, but stored == content.
        bytes[directory + 20..directory + 28]
            .copy_from_slice(&[0xF0, 0xFF, 0xFF, 0x7F, 0xF0, 0xFF, 0xFF, 0x7F]);
        let err = Archive::parse(&bytes, "t.zip").unwrap_err().to_string();
        assert!(
            err.contains("a/data.pkl") && err.contains("past the end"),
            "{err}"
        );
    }

    #[test]
    fn a_declared_entry_count_beyond_the_directory_is_refused() {
        let mut bytes = archive(&two_entries(), false, b"");
        let end = bytes.len() - END_LEN;
        bytes[end + 8..end + 12].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        let err = Archive::parse(&bytes, "t.zip").unwrap_err().to_string();
        assert!(err.contains("65535 entries"), "{err}");
    }

    #[test]
    fn compressed_and_encrypted_entries_are_unsupported() {
        let whole = archive(&two_entries(), false, b"");
        let directory = whole
            .windows(4)
            .position(|w| w == CENTRAL_HEADER.to_le_bytes())
            .unwrap();
        let mut deflated = whole.clone();
        deflated[directory + 10] = 8;
        let err = Archive::parse(&deflated, "t.zip").unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }));
        assert!(err.to_string().contains("deflate"), "{err}");
        let mut encrypted = whole;
        encrypted[directory + 8] = 1;
        let err = Archive::parse(&encrypted, "t.zip").unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut entries = two_entries();
        entries[1].name = "a/data.pkl";
        let err = Archive::parse(&archive(&entries, false, b""), "t.zip")
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears twice"), "{err}");
    }
}
