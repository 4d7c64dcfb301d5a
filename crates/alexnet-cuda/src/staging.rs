//! Host-to-device copies of large buffers through page-locked memory.
//!
//! A copy straight from ordinary (pageable) host memory makes the driver stage it
//! through its own small page-locked buffer, one piece at a time; on the machines
//! this was measured on that ran several times slower than a copy from page-locked
//! memory (BENCHMARKS.md, CUDA). Here the host copies each piece of the source into
//! one of two page-locked buffers of our own while the copy engine moves the
//! previous piece to the device, so the two overlap. Like a pageable copy, the
//! source may be reused as soon as [`Staging::upload`] returns.
//!
//! The copies are queued on the stream the caller names, behind the work already
//! there. Refilling a buffer waits for the copy out of it, and so for everything
//! queued on that stream before the copy: on the compute stream, an upload of
//! more than two pieces (16 MiB) waits for the work queued before it started, as
//! a pageable copy would. Stored batches go through the backend's copy stream
//! instead, where nothing but copies is queued, so their upload runs during the
//! previous batch's work.

use std::sync::Arc;

use rayon::prelude::*;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaStream, DevicePtrMut, DeviceRepr, DriverError, PinnedHostSlice,
    result, sys,
};

/// Bytes per piece: large enough that each copy runs at the link's full speed,
/// small enough that the host's copy of the next piece overlaps it well.
const PIECE_BYTES: usize = 8 << 20;
/// Bytes each core copies at a time into a page-locked buffer.
const COPY_BYTES_PER_TASK: usize = 1 << 20;
/// Below this, a plain copy is as fast and needs no page-locked memory. (A
/// pageable copy may also wait for the work already queued on the stream; a
/// staged one of one or two pieces waits only for the copies that last used its
/// buffers.)
const STAGE_FROM_BYTES: usize = 1 << 20;

/// A page-locked buffer and the event recorded after the copy out of it was queued.
struct Buffer {
    memory: PinnedHostSlice<u8>,
    /// Waited on before the buffer is filled again.
    copied: Option<CudaEvent>,
}

/// Two page-locked buffers used in turn, allocated at the first large upload.
#[derive(Default)]
pub(crate) struct Staging {
    buffers: Vec<Buffer>,
    /// The buffer the next piece goes through: they alternate across uploads
    /// too, so that two small uploads in a row do not wait for each other.
    next: usize,
}

impl Staging {
    /// Queues a copy of `src` into the start of `dst` on `stream`. `src` may be
    /// reused once this returns; `dst` must hold at least `src.len()` values.
    pub fn upload<T: DeviceRepr, D: DevicePtrMut<T>>(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        src: &[T],
        dst: &mut D,
    ) -> Result<(), DriverError> {
        assert!(dst.len() >= src.len(), "upload past the end of a buffer");
        let bytes = std::mem::size_of_val(src);
        if bytes < STAGE_FROM_BYTES {
            // From pageable memory the call returns once the driver has staged `src`.
            return stream.memcpy_htod(src, dst);
        }
        // SAFETY: `DeviceRepr` types are plain values whose bytes may be read.
        let src = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), bytes) };
        if self.buffers.is_empty() {
            for _ in 0..2 {
                // SAFETY: the memory is written before anything reads it.
                let memory = unsafe { ctx.alloc_pinned_with_flags::<u8>(PIECE_BYTES, 0)? };
                self.buffers.push(Buffer {
                    memory,
                    copied: None,
                });
            }
        }
        let (dst, _written) = dst.device_ptr_mut(stream);
        ctx.bind_to_thread()?;
        for (index, piece) in src.chunks(PIECE_BYTES).enumerate() {
            let count = self.buffers.len();
            let buffer = &mut self.buffers[self.next];
            self.next = (self.next + 1) % count;
            if let Some(copied) = buffer.copied.take() {
                copied.synchronize()?;
            }
            let host = &mut buffer.memory.as_mut_slice()?[..piece.len()];
            // One core copies at a few GB/s, under the link's speed from
            // page-locked memory (BENCHMARKS.md, CUDA): split it among cores.
            // Not from inside a rayon task, though: waiting for the parallel copy
            // there, the thread could steal another task that uploads to this
            // backend and block on the lock this call holds.
            if rayon::current_thread_index().is_some() {
                host.copy_from_slice(piece);
            } else {
                host.par_chunks_mut(COPY_BYTES_PER_TASK)
                    .zip(piece.par_chunks(COPY_BYTES_PER_TASK))
                    .for_each(|(to, from)| to.copy_from_slice(from));
            }
            let at = dst + (index * PIECE_BYTES) as u64;
            // SAFETY: the destination range lies inside `dst` (asserted above), and
            // the page-locked source is not written again until `copied` has passed.
            unsafe { result::memcpy_htod_async(at, host, stream.cu_stream())? };
            match stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)) {
                Ok(event) => buffer.copied = Some(event),
                Err(e) => {
                    // Without the event nothing would keep the buffer from being
                    // refilled while the copy engine reads it: wait here instead.
                    stream.synchronize()?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Drop for Staging {
    /// The copy engine may still be reading a buffer: wait before it is freed.
    fn drop(&mut self) {
        for buffer in &mut self.buffers {
            if let Some(copied) = buffer.copied.take() {
                // A first failure can be an earlier, unrelated error that the
                // driver wrapper reports once and clears; a second means the wait
                // itself failed, and nothing more can be done while dropping.
                if copied.synchronize().is_err() {
                    let _ = copied.synchronize();
                }
            }
        }
    }
}
