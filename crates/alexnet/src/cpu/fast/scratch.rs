//! Per-thread scratch memory that grows to the largest request and is then
//! reused, so that a training step allocates nothing after the first.

use std::cell::Cell;
use std::thread::LocalKey;

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static STAGING: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of at least `len` values (contents
/// unspecified). The buffer is taken out of the thread-local slot for the call,
/// so a nested call (rayon may run another task on this thread while `f` waits)
/// gets a fresh buffer instead of aliasing this one.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

/// Like [`with_scratch`], from a second per-thread buffer: for data staged
/// around a call that itself uses `with_scratch` (which would otherwise find
/// its slot empty and allocate afresh each time).
pub fn with_staging<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&STAGING, len, f)
}

fn with_buffer<R>(
    slot: &'static LocalKey<Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = slot.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    slot.with(|slot| {
        // Keep the larger of this buffer and any left by a nested call.
        let other = slot.take();
        slot.set(if other.len() > buf.len() { other } else { buf });
    });
    result
}
