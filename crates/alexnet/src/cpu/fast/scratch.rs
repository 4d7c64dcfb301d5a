//! Per-thread scratch memory that grows to the largest request and is then
//! reused, so that a training step allocates nothing after the first.

use std::cell::Cell;

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of at least `len` values (contents
/// unspecified). The buffer is taken out of the thread-local slot for the call,
/// so a nested call (rayon may run another task on this thread while `f` waits)
/// gets a fresh buffer instead of aliasing this one.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    SCRATCH.with(|slot| {
        // Keep the larger of this buffer and any left by a nested call.
        let other = slot.take();
        slot.set(if other.len() > buf.len() { other } else { buf });
    });
    result
}
