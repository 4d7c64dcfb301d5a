//! Stored batches on the device: their bytes copied on the copy stream into two
//! buffers used in turn, ordered by events against the work that reads them.

use cudarc::driver::{CudaEvent, CudaSlice, DriverError};

use crate::CudaBackend;
use crate::launch::{NO_TIMING, grow};

/// Device copies of a stored batch: its bytes, and each view's placement
/// (`image, y, x, flip`) and colour shift; grown as needed.
#[derive(Default)]
pub(crate) struct InputScratch {
    /// Stored batches' bytes, two buffers used in turn: the next batch's bytes
    /// are copied into one on the copy stream while the work already queued on
    /// the compute stream may still read the other.
    pub(crate) pixels: [PixelBuffer; 2],
    /// The buffer the next stored batch goes to.
    pub(crate) next_pixels: usize,
    pub(crate) place: Option<CudaSlice<i32>>,
    pub(crate) shift: Option<CudaSlice<f32>>,
}

/// One of [`InputScratch`]'s byte buffers.
#[derive(Default)]
pub(crate) struct PixelBuffer {
    pub(crate) bytes: Option<CudaSlice<u8>>,
    /// Recorded on the compute stream after the last work queued there that
    /// uses the buffer (its allocation, or the kernel that reads it); the copy
    /// stream waits for it before writing the buffer again.
    pub(crate) released: Option<CudaEvent>,
}

impl CudaBackend {
    /// Queues a copy of a stored batch's bytes into `buffer` on the copy stream,
    /// after the compute stream's last use of the buffer, and makes the compute
    /// stream wait for the copy: work queued on the compute stream before this
    /// call (the previous batch's backward pass) runs while the bytes travel.
    pub(crate) fn upload_pixels(
        &self,
        buffer: &mut PixelBuffer,
        pixels: &[u8],
    ) -> Result<(), DriverError> {
        if buffer.bytes.as_ref().is_none_or(|b| b.len() < pixels.len()) {
            // Allocated, and the old buffer freed, in the compute stream's order.
            grow(&self.stream, &mut buffer.bytes, pixels.len())?;
            buffer.released = Some(self.stream.record_event(NO_TIMING)?);
        }
        if let Some(released) = &buffer.released {
            self.copy_stream.wait(released)?;
        }
        if pixels.is_empty() {
            return Ok(());
        }
        let bytes = buffer.bytes.as_mut().expect("grown above");
        self.lock(&self.staging).upload(
            &self.ctx,
            &self.copy_stream,
            pixels,
            &mut bytes.slice_mut(..pixels.len()),
        )?;
        let arrived = self.copy_stream.record_event(NO_TIMING)?;
        self.stream.wait(&arrived)
    }
}
