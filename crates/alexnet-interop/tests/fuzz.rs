//! Mutation fuzzing of the importers, bounded in time: every file of the corpus
//! (the fixtures and the hostile files beside them) is mutated many times over —
//! bits flipped, bytes set to boundary values, cut short, chunks repeated or
//! dropped, random bytes inserted — and each mutant is handed to the readers.
//! A reader may refuse a mutant (it usually should) but must never panic, and
//! must never allocate anywhere near a size a header declares: a counting
//! allocator records the largest single allocation, which must stay under a
//! bound far below any declared size a mutant can produce.
//!
//! `ALEXNET_FUZZ_SECONDS` sets the time per reader (default 5). A mutant that
//! panics is written to target/fuzz-failures/ so that it can be replayed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alexnet::rng::Rng;
use common::fixtures;

/// Forwards to the system allocator, remembering the largest request.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// GlobalAlloc contract; the only addition is an atomic maximum.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout, same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// No single allocation of a reader may exceed this: the corpus files are all
/// under a megabyte, so their honest contents never need more than a few times
/// that, while a trusted declared size would reach gigabytes.
const ALLOCATION_LIMIT: usize = 64 << 20;

fn budget() -> Duration {
    let seconds = std::env::var("ALEXNET_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(seconds)
}

/// The files whose names match `keep`, in the fixtures and the named corpus folder.
fn corpus(folder: &str, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for dir in [fixtures(), fixtures().join(folder)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_file() && (dir != fixtures() || keep(&name)) {
                files.push((name, std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus for {folder} in {}",
        fixtures().display()
    );
    files
}

/// One random change to `bytes`.
fn mutate(bytes: &mut Vec<u8>, rng: &mut Rng) {
    const BOUNDARIES: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];
    let len = bytes.len();
    match rng.below(7) {
        0 if len > 0 => {
            let at = rng.below(len);
            bytes[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            bytes[at] = BOUNDARIES[rng.below(BOUNDARIES.len())];
        }
        2 => bytes.truncate(rng.below(len + 1)),
        3 if len > 0 => {
            // Repeat a chunk in place (nesting, duplicated records).
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            let chunk = bytes[start..end].to_vec();
            bytes.splice(start..start, chunk);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            bytes.drain(start..end);
        }
        5 => {
            let at = rng.below(len + 1);
            let extra: Vec<u8> = (0..1 + rng.below(8))
                .map(|_| rng.next_u64() as u8)
                .collect();
            bytes.splice(at..at, extra);
        }
        _ if len >= 8 => {
            // A little-endian length field set to something huge.
            let at = rng.below(len - 7);
            let value = [u32::MAX as u64, 1 << 40, u64::MAX >> 1][rng.below(3)];
            let width = [4usize, 8][rng.below(2)];
            bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        _ => bytes.push(rng.next_u64() as u8),
    }
}

/// The largest-allocation record is global: fuzz targets take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Feeds mutants of `corpus` to `read` until the time budget is spent.
fn fuzz(label: &str, corpus: &[(String, Vec<u8>)], read: impl Fn(&[u8])) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(0x5EED ^ label.len() as u64);
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() || runs < corpus.len() as u64 {
        let (name, original) = &corpus[runs as usize % corpus.len()];
        let mut bytes = original.clone();
        // The originals first, then one to four mutations stacked.
        if runs >= corpus.len() as u64 {
            for _ in 0..1 + rng.below(4) {
                mutate(&mut bytes, &mut rng);
            }
        }
        LARGEST.store(0, Ordering::Relaxed);
        if catch_unwind(AssertUnwindSafe(|| read(&bytes))).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{label}-{runs}-{name}"));
            std::fs::write(&path, &bytes).unwrap();
            panic!(
                "{label}: a mutant of {name} panicked; saved as {}",
                path.display()
            );
        }
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest <= ALLOCATION_LIMIT,
            "{label}: a mutant of {name} made a single allocation of {largest} bytes"
        );
        runs += 1;
    }
    eprintln!(
        "{label}: {runs} inputs from {} corpus files in {:.1} s, no panic",
        corpus.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn torch_files_never_panic() {
    let corpus = corpus("pickle-corpus", |n| n.ends_with(".pth"));
    fuzz("torch", &corpus, |bytes| {
        let _ = alexnet_interop::torchvision::import(bytes, "mutant.pth");
    });
}

#[test]
fn caffemodels_never_panic() {
    let corpus = corpus("caffe-corpus", |n| {
        n.ends_with(".caffemodel") || n.ends_with(".binaryproto")
    });
    let model = std::fs::read(fixtures().join("caffe-mini-alexnet.caffemodel")).unwrap();
    fuzz("caffe", &corpus, |bytes| {
        let _ = alexnet_interop::caffe::import(bytes, "mutant.caffemodel", None);
        // The same bytes as a mean file beside a valid model.
        let _ = alexnet_interop::caffe::import(
            &model,
            "model.caffemodel",
            Some((bytes, "mutant.binaryproto")),
        );
    });
}

#[test]
fn prototxts_never_panic() {
    let corpus = corpus("caffe-corpus", |n| n.ends_with(".prototxt"));
    fuzz("prototxt", &corpus, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let _ = alexnet_interop::caffe::parse_prototxt(&text, "mutant.prototxt");
    });
}
