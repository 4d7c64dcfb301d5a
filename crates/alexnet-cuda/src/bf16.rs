//! bf16 values on the device, for [`Precision::Bf16`](crate::Precision::Bf16):
//! the element type of the scratch buffers that hold the operands of the matrix
//! products, rounded from the f32 values the network keeps.
//!
//! A local type rather than `half::bf16` (cudarc's `f16` feature) keeps the
//! dependency tree as it is; the device sees the same 16-bit pattern.

use cudarc::cudnn::CudnnDataType;
use cudarc::cudnn::sys::cudnnDataType_t;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, DriverError, ValidAsZeroBits};
use std::sync::MutexGuard;

use cudarc::driver::PushKernelArg;

use crate::CudaBackend;
use crate::launch::per_value;

/// One bf16 value: the upper 16 bits of the f32 it rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Bf16(pub u16);

impl Bf16 {
    pub const ZERO: Bf16 = Bf16(0);
    pub const ONE: Bf16 = Bf16(0x3f80);

    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

// SAFETY: a plain 16-bit value with no padding, laid out as the `unsigned short`
// the kernels take and the 16-bit bf16 cuDNN and cuBLAS read.
unsafe impl DeviceRepr for Bf16 {}
// SAFETY: all-zero bits are bf16 +0.0.
unsafe impl ValidAsZeroBits for Bf16 {}

impl CudnnDataType for Bf16 {
    const DATA_TYPE: cudnnDataType_t = cudnnDataType_t::CUDNN_DATA_BFLOAT16;
    /// cuDNN takes the scaling factors of bf16 convolutions as f32.
    type Scalar = f32;
    fn into_scaling_parameter(self) -> f32 {
        self.to_f32()
    }
}

/// The bf16 operands and results of one product at a time: the layer's input (or
/// input gradient), its output (or output gradient), and its weights (or weight
/// gradient). Every operation is queued on the backend's one stream, so one set
/// serves every layer in turn; each buffer grows to the largest layer's size the
/// first time it is needed and then stays.
pub(crate) struct Bf16Scratch {
    pub input: CudaSlice<Bf16>,
    pub output: CudaSlice<Bf16>,
    pub weights: CudaSlice<Bf16>,
}

fn grow(
    stream: &std::sync::Arc<CudaStream>,
    buffer: &mut CudaSlice<Bf16>,
    len: usize,
) -> Result<(), DriverError> {
    if buffer.len() < len {
        // cudarc frees the old buffer in stream order (or after synchronising),
        // so work already queued that reads it is not disturbed.
        *buffer = stream.alloc_zeros::<Bf16>(len)?;
    }
    Ok(())
}

impl Bf16Scratch {
    pub fn new(stream: &std::sync::Arc<CudaStream>) -> Result<Bf16Scratch, DriverError> {
        Ok(Bf16Scratch {
            input: stream.alloc_zeros::<Bf16>(1)?,
            output: stream.alloc_zeros::<Bf16>(1)?,
            weights: stream.alloc_zeros::<Bf16>(1)?,
        })
    }

    /// Makes each buffer hold at least the given number of values.
    pub fn reserve(
        &mut self,
        stream: &std::sync::Arc<CudaStream>,
        input: usize,
        output: usize,
        weights: usize,
    ) -> Result<(), DriverError> {
        grow(stream, &mut self.input, input)?;
        grow(stream, &mut self.output, output)?;
        grow(stream, &mut self.weights, weights)
    }
}

impl CudaBackend {
    /// The bf16 scratch buffers, each grown to hold at least the given number of
    /// values. Only called in bf16 mode.
    pub(crate) fn bf16_scratch(
        &self,
        input: usize,
        output: usize,
        weights: usize,
    ) -> MutexGuard<'_, Bf16Scratch> {
        let Some(scratch) = &self.bf16 else {
            unreachable!("bf16 buffers exist in bf16 mode")
        };
        let mut scratch = self.lock(scratch);
        if let Err(e) = scratch.reserve(&self.stream, input, output, weights) {
            self.fail("allocating the bf16 buffers", e);
        }
        scratch
    }

    /// `dst[..len] = bf16(src[..len])`, rounding to nearest even.
    pub(crate) fn convert_to_bf16(
        &self,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<Bf16>,
        len: usize,
    ) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.f32_to_bf16);
        args.arg(src).arg(dst).arg(&len64);
        self.launch(args, per_value(len), "f32_to_bf16");
    }

    /// `dst[..len] = f32(src[..len])`, or `+=` with `accumulate`.
    pub(crate) fn convert_to_f32(
        &self,
        src: &CudaSlice<Bf16>,
        dst: &mut CudaSlice<f32>,
        len: usize,
        accumulate: bool,
    ) {
        if len == 0 {
            return;
        }
        let (accumulate, len64) = (i32::from(accumulate), len as u64);
        let mut args = self.stream.launch_builder(&self.kernels.bf16_to_f32);
        args.arg(src).arg(dst).arg(&accumulate).arg(&len64);
        self.launch(args, per_value(len), "bf16_to_f32");
    }
}
