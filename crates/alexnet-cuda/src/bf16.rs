//! bf16 values on the device, for [`Precision::Bf16`](crate::Precision::Bf16):
//! the element type of the scratch buffers that hold the operands of the matrix
//! products, rounded from the f32 values the network keeps; the conversions
//! between the two (in the engine's NCHW layout, or transposed to NHWC for
//! cuDNN's channels-last convolutions); and bf16 mode's convolutions, which
//! hand cuDNN their operands in the layout of the shape's plan.
//!
//! A local type rather than `half::bf16` (cudarc's `f16` feature) keeps the
//! dependency tree as it is; the device sees the same 16-bit pattern.

use std::sync::{Arc, MutexGuard};

use alexnet::layers::ConvGeometry;
use cudarc::cudnn::CudnnDataType;
use cudarc::cudnn::sys::cudnnDataType_t;
use cudarc::driver::{
    CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use crate::dnn::{Dnn, DnnError, Layout};
use crate::launch::{NULL_POINTER, int, per_value};
use crate::{Convolutions, CudaBackend};

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
    stream: &Arc<CudaStream>,
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
    pub fn new(stream: &Arc<CudaStream>) -> Result<Bf16Scratch, DriverError> {
        Ok(Bf16Scratch {
            input: stream.alloc_zeros::<Bf16>(1)?,
            output: stream.alloc_zeros::<Bf16>(1)?,
            weights: stream.alloc_zeros::<Bf16>(1)?,
        })
    }

    /// Makes each buffer hold at least the given number of values.
    pub fn reserve(
        &mut self,
        stream: &Arc<CudaStream>,
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
}

/// At most this many channels, NCHW f32 values go to NHWC bf16 by one thread
/// per value (`f32_to_bf16_nhwc_few`) rather than by tiles of 32 channels, most
/// of whose threads would idle.
const FEW_CHANNELS: usize = 8;

/// What [`CudaBackend::convert_to_f32_from`] does with each widened value.
#[derive(Clone, Copy)]
pub(crate) enum Widen<'a> {
    /// Stores it.
    Overwrite,
    /// Adds it to what the destination holds (parameter gradients).
    Accumulate,
    /// Adds its channel's bias, then (with `rectify`) takes its ReLU: a
    /// convolution's output, finished in the same pass.
    Bias {
        bias: &'a CudaSlice<f32>,
        rectify: bool,
    },
}

/// A block of NCHW values as the engine keeps them: `images` times `channels`
/// planes of `plane` values. A filter is one too: its output channels are the
/// images, the inputs of its group the channels, its k x k window the plane.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Planes {
    pub images: usize,
    pub channels: usize,
    pub plane: usize,
}

impl Planes {
    pub fn len(self) -> usize {
        self.images * self.channels * self.plane
    }

    /// A convolution's input, output and filter over `n` images.
    pub fn of_conv(g: &ConvGeometry, n: usize) -> [Planes; 3] {
        [
            Planes {
                images: n,
                channels: g.input.channels,
                plane: g.input.height * g.input.width,
            },
            Planes {
                images: n,
                channels: g.output.channels,
                plane: g.out_plane(),
            },
            Planes {
                images: g.output.channels,
                channels: g.in_per_group(),
                plane: g.kernel * g.kernel,
            },
        ]
    }

    /// The launch of the transposing conversions (`f32_to_bf16_nhwc`,
    /// `bf16_nhwc_to_f32`): a block per image, per 32 channels and per 32
    /// positions, of 32 x 8 threads.
    fn transpose_launch(self) -> LaunchConfig {
        const TILE: usize = 32;
        let tiles = |v: usize| {
            u32::try_from(v.div_ceil(TILE))
                .ok()
                .filter(|&t| t <= 65535)
                .expect("at most 65535 tiles of channels or positions")
        };
        LaunchConfig {
            grid_dim: (
                u32::try_from(self.images)
                    .ok()
                    .filter(|&i| i <= i32::MAX as u32)
                    .expect("at most 2^31 - 1 images"),
                tiles(self.channels),
                tiles(self.plane),
            ),
            block_dim: (TILE as u32, 8, 1),
            shared_mem_bytes: 0,
        }
    }
}

impl CudaBackend {
    /// `dst` = the NCHW f32 values `src` of `planes` rounded to bf16, in `layout`:
    /// as they are (NCHW) or transposed to channels last (NHWC).
    pub(crate) fn convert_to_bf16_in(
        &self,
        layout: Layout,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<Bf16>,
        planes: Planes,
    ) {
        if layout == Layout::Nchw {
            return self.convert_to_bf16(src, dst, planes.len());
        }
        let len = planes.len();
        if len == 0 {
            return;
        }
        let (channels, plane) = (int(planes.channels), int(planes.plane));
        if planes.channels <= FEW_CHANNELS {
            let len64 = len as u64;
            let mut args = self
                .stream
                .launch_builder(&self.kernels.f32_to_bf16_nhwc_few);
            args.arg(src)
                .arg(dst)
                .arg(&channels)
                .arg(&plane)
                .arg(&len64);
            return self.launch(args, per_value(len), "f32_to_bf16_nhwc_few");
        }
        let mut args = self.stream.launch_builder(&self.kernels.f32_to_bf16_nhwc);
        args.arg(src).arg(dst).arg(&channels).arg(&plane);
        self.launch(args, planes.transpose_launch(), "f32_to_bf16_nhwc");
    }

    /// The bf16 values `src` of `planes`, held in `layout`, widened into the NCHW
    /// f32 buffer `dst` as `how` says.
    pub(crate) fn convert_to_f32_from(
        &self,
        layout: Layout,
        src: &CudaSlice<Bf16>,
        dst: &mut CudaSlice<f32>,
        planes: Planes,
        how: Widen<'_>,
    ) {
        let len = planes.len();
        if len == 0 {
            return;
        }
        let (accumulate, bias, rectify) = match how {
            Widen::Overwrite => (0, None, 0),
            Widen::Accumulate => (1, None, 0),
            Widen::Bias { bias, rectify } => (0, Some(bias), i32::from(rectify)),
        };
        let (channels, plane) = (int(planes.channels), planes.plane);
        let (kernel, config, name) = match layout {
            Layout::Nchw => (&self.kernels.bf16_to_f32, per_value(len), "bf16_to_f32"),
            Layout::Nhwc => (
                &self.kernels.bf16_nhwc_to_f32,
                planes.transpose_launch(),
                "bf16_nhwc_to_f32",
            ),
        };
        let mut args = self.stream.launch_builder(kernel);
        args.arg(src).arg(dst);
        match bias {
            Some(bias) => args.arg(bias),
            None => args.arg(&NULL_POINTER),
        };
        args.arg(&accumulate).arg(&rectify).arg(&channels);
        // The flat kernel takes 64-bit plane and length, the tiled one a 32-bit
        // plane (its grid covers the rest).
        let (plane64, plane32, len64) = (plane as u64, int(plane), len as u64);
        match layout {
            Layout::Nchw => args.arg(&plane64).arg(&len64),
            Layout::Nhwc => args.arg(&plane32),
        };
        self.launch(args, config, name);
    }
}

impl CudaBackend {
    /// cuDNN's bf16 convolutions, locked (after the bf16 scratch buffers, which
    /// are always locked first), with the device's context current.
    fn bf16_convolutions(&self) -> MutexGuard<'_, Convolutions> {
        self.bind();
        self.lock(&self.dnn)
    }

    /// A convolution's forward pass in bf16 mode: bf16 copies of `x` and `w` in
    /// the layout of the shape's plan, a bf16 output (cuDNN's one bf16
    /// configuration), widened into `y` with the bias `b` added and, with
    /// `rectify`, the ReLU taken, in one pass.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_forward_bf16(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rectify: bool,
    ) -> Result<(), DnnError> {
        let [input, output, weights] = Planes::of_conv(g, n);
        let mut scratch = self.bf16_scratch(input.len(), output.len(), weights.len());
        let s = &mut *scratch;
        let mut dnn = self.bf16_convolutions();
        let dnn = bf16_dnn(&mut dnn);
        let layout = dnn.layout(g, n)?;
        self.convert_to_bf16_in(layout, x, &mut s.input, input);
        self.convert_to_bf16_in(layout, w, &mut s.weights, weights);
        dnn.forward(g, n, &s.input, &s.weights, &mut s.output)?;
        let finish = Widen::Bias { bias: b, rectify };
        self.convert_to_f32_from(layout, &s.output, y, output, finish);
        Ok(())
    }

    /// The weight and input gradients of a convolution in bf16 mode: bf16 copies
    /// of `x`, `dy` and `w` in the plan's layout, bf16 gradients out, the weight
    /// gradient then added to `dw` in f32 and the input gradient written to `dx`
    /// as f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_backward_bf16(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) {
        let [input, output, weights] = Planes::of_conv(g, n);
        let mut scratch = self.bf16_scratch(input.len(), output.len(), weights.len());
        let s = &mut *scratch;
        let mut dnn = self.bf16_convolutions();
        let dnn = bf16_dnn(&mut dnn);
        let layout = dnn
            .layout(g, n)
            .unwrap_or_else(|e| self.fail(&format!("cuDNN convolution plan {g:?} x {n}"), e));
        self.convert_to_bf16_in(layout, x, &mut s.input, input);
        self.convert_to_bf16_in(layout, dy, &mut s.output, output);
        // The weight gradient of this batch alone (beta = 0) into the weights'
        // buffer, then accumulated in f32.
        if let Err(e) = dnn.backward_filter(g, n, &s.input, &s.output, &mut s.weights, false) {
            self.fail(&format!("cuDNN convolution backward-filter {g:?} x {n}"), e);
        }
        self.convert_to_f32_from(layout, &s.weights, dw, weights, Widen::Accumulate);
        if let Some(dx) = dx {
            // Stream order: the accumulation above has read the buffer before the
            // weights overwrite it, and the input gradient may overwrite `x`'s copy.
            self.convert_to_bf16_in(layout, w, &mut s.weights, weights);
            if let Err(e) = dnn.backward_data(g, n, &s.weights, &s.output, &mut s.input) {
                self.fail(&format!("cuDNN convolution backward-data {g:?} x {n}"), e);
            }
            self.convert_to_f32_from(layout, &s.input, dx, input, Widen::Overwrite);
        }
    }
}

fn bf16_dnn(convolutions: &mut Convolutions) -> &mut Dnn<Bf16> {
    match convolutions {
        Convolutions::Bf16(dnn) => dnn,
        Convolutions::F32(_) => unreachable!("bf16 mode has bf16 convolutions"),
    }
}
