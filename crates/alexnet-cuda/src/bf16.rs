//! bf16 values on the device, for [`Precision::Bf16`](crate::Precision::Bf16):
//! the element type of the scratch buffers that hold the operands of the matrix
//! products, rounded from the f32 values the network keeps; the conversions
//! between the two (in the engine's NCHW layout, or transposed to NHWC for
//! cuDNN's channels-last convolutions); and bf16 mode's convolutions, which
//! hand cuDNN their operands in the layout of the shape's plan.
//!
//! A local type rather than `half::bf16` (cudarc's `f16` feature) keeps the
//! dependency tree as it is; the device sees the same 16-bit pattern.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use alexnet::layers::ConvGeometry;
use cudarc::cudnn::CudnnDataType;
use cudarc::cudnn::sys::{cudnnDataType_t, cudnnMathType_t};
use cudarc::driver::{
    CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use crate::dnn::{ConvKey, Dnn, DnnError, Layout, Rank, key};
use crate::launch::{NULL_POINTER, int, per_value};
use crate::{Algorithms, Bf16Layout, Convolutions, CudaBackend};

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
/// gradient); and, for the convolutions on bf16 values, the same operands as f32
/// copies rounded to bf16 values. Every operation is queued on the backend's one
/// stream, so one set serves every layer in turn; each buffer grows to the
/// largest layer's size the first time it is needed and then stays.
pub(crate) struct Bf16Scratch {
    pub input: CudaSlice<Bf16>,
    pub output: CudaSlice<Bf16>,
    pub weights: CudaSlice<Bf16>,
    pub input_values: CudaSlice<f32>,
    pub output_values: CudaSlice<f32>,
    pub weight_values: CudaSlice<f32>,
}

fn grow<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    buffer: &mut CudaSlice<T>,
    len: usize,
) -> Result<(), DriverError> {
    if buffer.len() < len {
        // cudarc frees the old buffer in stream order (or after synchronising),
        // so work already queued that reads it is not disturbed.
        *buffer = stream.alloc_zeros::<T>(len)?;
    }
    Ok(())
}

impl Bf16Scratch {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Bf16Scratch, DriverError> {
        Ok(Bf16Scratch {
            input: stream.alloc_zeros::<Bf16>(1)?,
            output: stream.alloc_zeros::<Bf16>(1)?,
            weights: stream.alloc_zeros::<Bf16>(1)?,
            input_values: stream.alloc_zeros::<f32>(1)?,
            output_values: stream.alloc_zeros::<f32>(1)?,
            weight_values: stream.alloc_zeros::<f32>(1)?,
        })
    }

    /// Makes each bf16 buffer hold at least the given number of values.
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

    /// Makes each f32 buffer of bf16 values hold at least the given number.
    pub fn reserve_values(
        &mut self,
        stream: &Arc<CudaStream>,
        input: usize,
        output: usize,
        weights: usize,
    ) -> Result<(), DriverError> {
        grow(stream, &mut self.input_values, input)?;
        grow(stream, &mut self.output_values, output)?;
        grow(stream, &mut self.weight_values, weights)
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

    /// [`Bf16Scratch::reserve`], or fail.
    fn grow_bf16(&self, s: &mut Bf16Scratch, input: usize, output: usize, weights: usize) {
        if let Err(e) = s.reserve(&self.stream, input, output, weights) {
            self.fail("allocating the bf16 buffers", e);
        }
    }

    /// [`Bf16Scratch::reserve_values`], or fail.
    fn grow_values(&self, s: &mut Bf16Scratch, input: usize, output: usize, weights: usize) {
        if let Err(e) = s.reserve_values(&self.stream, input, output, weights) {
            self.fail("allocating the buffers of bf16 values", e);
        }
    }

    /// `dst[..len]` = the f32 values of `bf16(src[..len])`, rounding to nearest
    /// even: values TF32 holds exactly.
    fn round_values(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>, len: usize) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.f32_round_to_bf16);
        args.arg(src).arg(dst).arg(&len64);
        self.launch(args, per_value(len), "f32_round_to_bf16");
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

/// Which of bf16 mode's routes a convolution shape takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bf16Route {
    /// bf16 copies of the operands in this layout, bf16 results widened.
    Bf16(Layout),
    /// f32 copies rounded to bf16 values, through TF32 tensor cores.
    Values,
}

/// bf16 mode's convolutions: cuDNN with bf16 tensors on the layout's routes,
/// and (where the layout allows) cuDNN's fp32 algorithms on bf16 values in f32
/// tensors. Each shape takes the one whose plan ranks first (see
/// [`Rank`](crate::dnn::Rank)): both compute the products of the same bf16
/// operands in f32, so they differ in speed and in the order of their sums, and
/// the second does not round its results to bf16.
pub(crate) struct Bf16Convolutions {
    bf16: Option<Dnn<Bf16>>,
    values: Option<Dnn<f32>>,
    chosen: HashMap<ConvKey, Bf16Route>,
    /// `ALEXNET_CUDNN_LOG=1`: print each shape's choice to stderr.
    log: bool,
}

impl Bf16Convolutions {
    pub fn new(stream: &Arc<CudaStream>, layout: Bf16Layout) -> Result<Self, DnnError> {
        let routes = layout.bf16_routes();
        // bf16 tensors have one policy, whatever the algorithms setting.
        let mut bf16 = match routes.is_empty() {
            true => None,
            false => Some(Dnn::new(
                stream.clone(),
                cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
                Algorithms::Exact,
                routes,
            )?),
        };
        let mut values = match layout.bf16_values() {
            true => Some(Dnn::for_bf16_values(stream.clone())?),
            false => None,
        };
        // Where both compete, only the chosen plan's warnings are worth printing.
        if let (Some(bf16), Some(values)) = (bf16.as_mut(), values.as_mut()) {
            bf16.defer_warnings();
            values.defer_warnings();
        }
        Ok(Bf16Convolutions {
            bf16,
            values,
            chosen: HashMap::new(),
            log: std::env::var_os("ALEXNET_CUDNN_LOG").is_some_and(|v| v == "1"),
        })
    }

    /// The route of this shape, its plans built and ranked the first time.
    pub fn route(&mut self, g: &ConvGeometry, n: usize) -> Result<Bf16Route, DnnError> {
        if let Some(&route) = self.chosen.get(&key(g, n)) {
            return Ok(route);
        }
        let bf16 = self.bf16.as_mut().map(|dnn| {
            let rank = dnn.rank(g, n)?;
            Ok((rank, dnn.layout(g, n)?))
        });
        let values = self.values.as_mut().map(|dnn| dnn.rank(g, n));
        if self.log && self.bf16.is_some() && self.values.is_some() {
            let time = |rank: Option<Rank>| match rank.and_then(|r| r.time) {
                Some(t) => format!("{t:.3} ms"),
                None => "untimed".into(),
            };
            let on_bf16 = bf16.as_ref().and_then(|r| r.as_ref().ok()).map(|(r, _)| *r);
            let on_values = values.as_ref().and_then(|r| r.as_ref().ok()).copied();
            eprintln!(
                "alexnet-cuda: bf16 convolution {g:?} x {n}: bf16 tensors {}, bf16 values on TF32 \
                 {} (three passes)",
                time(on_bf16),
                time(on_values)
            );
        }
        let route = choose(bf16, values)?;
        if let (Some(bf16), Some(values)) = (self.bf16.as_mut(), self.values.as_mut()) {
            let (on_bf16, on_values) = (bf16.take_warnings(g, n), values.take_warnings(g, n));
            let warnings = match route {
                Bf16Route::Bf16(_) => on_bf16,
                Bf16Route::Values => on_values,
            };
            warnings.iter().for_each(|w| eprintln!("{w}"));
            if self.log {
                eprintln!("alexnet-cuda: bf16 convolution {g:?} x {n}: {route:?} chosen");
            }
        }
        self.chosen.insert(key(g, n), route);
        Ok(route)
    }

    fn bf16(&mut self) -> &mut Dnn<Bf16> {
        self.bf16
            .as_mut()
            .expect("a shape on a bf16 route has bf16 plans")
    }

    fn values(&mut self) -> &mut Dnn<f32> {
        self.values
            .as_mut()
            .expect("a shape on the bf16-values route has its plans")
    }
}

/// The route of the better-ranked plan (bf16 tensors on a tie, the route
/// measured longest); where only one could be planned, that one, with a
/// warning; neither, an error naming both failures.
fn choose(
    bf16: Option<Result<(Rank, Layout), DnnError>>,
    values: Option<Result<Rank, DnnError>>,
) -> Result<Bf16Route, DnnError> {
    match (bf16, values) {
        (Some(Ok((a, layout))), Some(Ok(b))) => Ok(match b.beats(a) {
            true => Bf16Route::Values,
            false => Bf16Route::Bf16(layout),
        }),
        (Some(Ok((_, layout))), None) => Ok(Bf16Route::Bf16(layout)),
        (None, Some(Ok(_))) => Ok(Bf16Route::Values),
        (Some(Ok((_, layout))), Some(Err(e))) => {
            eprintln!(
                "warning: TF32 on bf16 values could not be planned ({e}); using bf16 tensors"
            );
            Ok(Bf16Route::Bf16(layout))
        }
        (Some(Err(e)), Some(Ok(_))) => {
            eprintln!(
                "warning: bf16 tensors could not be planned ({e}); using TF32 on bf16 values"
            );
            Ok(Bf16Route::Values)
        }
        (Some(Err(a)), Some(Err(b))) => Err(DnnError(format!(
            "bf16 tensors: {a}; TF32 on bf16 values: {b}"
        ))),
        (Some(Err(e)), None) | (None, Some(Err(e))) => Err(e),
        (None, None) => Err(DnnError("bf16 mode has no convolution route".into())),
    }
}

impl CudaBackend {
    /// bf16 mode's convolutions, locked (after the bf16 scratch buffers, which
    /// are always locked first), with the device's context current.
    fn bf16_convolutions(&self) -> MutexGuard<'_, Convolutions> {
        self.bind();
        self.lock(&self.dnn)
    }

    /// The scratch buffers and the convolutions, locked in that order, and the
    /// route of this shape.
    fn bf16_route(
        &self,
        g: &ConvGeometry,
        n: usize,
    ) -> Result<
        (
            MutexGuard<'_, Bf16Scratch>,
            MutexGuard<'_, Convolutions>,
            Bf16Route,
        ),
        DnnError,
    > {
        let scratch = self.bf16_scratch(0, 0, 0);
        let mut convolutions = self.bf16_convolutions();
        let route = bf16_of(&mut convolutions).route(g, n)?;
        Ok((scratch, convolutions, route))
    }

    /// A convolution's forward pass in bf16 mode, with the bias `b` added and,
    /// with `rectify`, the ReLU taken, in the pass that finishes the output: on
    /// bf16 tensors, bf16 copies of `x` and `w` in the layout of the shape's
    /// plan and a bf16 output (cuDNN's one bf16 configuration) widened into `y`;
    /// on bf16 values, their rounded f32 copies and `y` written by cuDNN.
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
        let (mut scratch, mut convolutions, route) = self.bf16_route(g, n)?;
        let s = &mut *scratch;
        let dnn = bf16_of(&mut convolutions);
        let Bf16Route::Bf16(layout) = route else {
            self.grow_values(s, input.len(), output.len(), weights.len());
            self.round_values(x, &mut s.input_values, input.len());
            self.round_values(w, &mut s.weight_values, weights.len());
            dnn.values()
                .forward(g, n, &s.input_values, &s.weight_values, y)?;
            let y_len = output.len();
            self.bias_add(b, y, g.output.channels, g.out_plane(), y_len, rectify);
            return Ok(());
        };
        self.grow_bf16(s, input.len(), output.len(), weights.len());
        self.convert_to_bf16_in(layout, x, &mut s.input, input);
        self.convert_to_bf16_in(layout, w, &mut s.weights, weights);
        dnn.bf16()
            .forward(g, n, &s.input, &s.weights, &mut s.output)?;
        let finish = Widen::Bias { bias: b, rectify };
        self.convert_to_f32_from(layout, &s.output, y, output, finish);
        Ok(())
    }

    /// The weight and input gradients of a convolution in bf16 mode, the weight
    /// gradient added to `dw` in f32 and the input gradient written to `dx`: on
    /// bf16 tensors, bf16 copies of `x`, `dy` and `w` in the plan's layout and
    /// bf16 gradients out, widened; on bf16 values, their rounded f32 copies and
    /// the gradients written by cuDNN (the weight gradient added there).
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
        let planned = self.bf16_route(g, n);
        let (mut scratch, mut convolutions, route) = planned
            .unwrap_or_else(|e| self.fail(&format!("cuDNN convolution plan {g:?} x {n}"), e));
        let s = &mut *scratch;
        let dnn = bf16_of(&mut convolutions);
        match route {
            Bf16Route::Bf16(layout) => {
                self.conv_backward_on_bf16(dnn.bf16(), s, layout, g, n, x, w, dy, dw, dx)
            }
            Bf16Route::Values => {
                self.conv_backward_on_values(dnn.values(), s, g, n, x, w, dy, dw, dx)
            }
        }
    }

    /// [`conv_backward_bf16`](CudaBackend::conv_backward_bf16) on bf16 tensors.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward_on_bf16(
        &self,
        dnn: &mut Dnn<Bf16>,
        s: &mut Bf16Scratch,
        layout: Layout,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) {
        let [input, output, weights] = Planes::of_conv(g, n);
        self.grow_bf16(s, input.len(), output.len(), weights.len());
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

    /// [`conv_backward_bf16`](CudaBackend::conv_backward_bf16) on bf16 values:
    /// cuDNN adds the weight gradient to `dw` itself (beta = 1, in f32).
    #[allow(clippy::too_many_arguments)]
    fn conv_backward_on_values(
        &self,
        dnn: &mut Dnn<f32>,
        s: &mut Bf16Scratch,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) {
        let [input, output, weights] = Planes::of_conv(g, n);
        self.grow_values(s, input.len(), output.len(), weights.len());
        self.round_values(x, &mut s.input_values, input.len());
        self.round_values(dy, &mut s.output_values, output.len());
        if let Err(e) = dnn.backward_filter(g, n, &s.input_values, &s.output_values, dw, true) {
            self.fail(&format!("cuDNN convolution backward-filter {g:?} x {n}"), e);
        }
        if let Some(dx) = dx {
            self.round_values(w, &mut s.weight_values, weights.len());
            if let Err(e) = dnn.backward_data(g, n, &s.weight_values, &s.output_values, dx) {
                self.fail(&format!("cuDNN convolution backward-data {g:?} x {n}"), e);
            }
        }
    }
}

fn bf16_of(convolutions: &mut Convolutions) -> &mut Bf16Convolutions {
    match convolutions {
        Convolutions::Bf16(routes) => routes,
        Convolutions::F32(_) => unreachable!("bf16 mode has bf16 convolutions"),
    }
}

#[cfg(test)]
mod tests {
    //! The choice between bf16 mode's routes is plain logic over the plans'
    //! ranks, checked here without a GPU.

    use super::*;

    fn rank(time: f32) -> Rank {
        Rank {
            keeps_policy: true,
            time: Some(time),
        }
    }

    fn failed(why: &str) -> DnnError {
        DnnError(why.into())
    }

    #[test]
    fn the_faster_route_wins_and_a_tie_keeps_bf16_tensors() {
        let nhwc = Layout::Nhwc;
        let both = |a, b| choose(Some(Ok((rank(a), nhwc))), Some(Ok(rank(b)))).unwrap();
        assert_eq!(both(2.0, 1.0), Bf16Route::Values);
        assert_eq!(both(1.0, 2.0), Bf16Route::Bf16(nhwc));
        assert_eq!(both(1.0, 1.0), Bf16Route::Bf16(nhwc));
        // A plan that keeps the policy beats a faster one that does not.
        let relaxed = Rank {
            keeps_policy: false,
            time: Some(0.5),
        };
        let chosen = choose(Some(Ok((relaxed, nhwc))), Some(Ok(rank(1.0)))).unwrap();
        assert_eq!(chosen, Bf16Route::Values);
    }

    #[test]
    fn a_route_that_cannot_be_planned_leaves_the_other() {
        let nchw = Layout::Nchw;
        let alone = choose(Some(Ok((rank(1.0), nchw))), None).unwrap();
        assert_eq!(alone, Bf16Route::Bf16(nchw));
        assert_eq!(
            choose(None, Some(Ok(rank(1.0)))).unwrap(),
            Bf16Route::Values
        );
        let values_failed = choose(Some(Ok((rank(1.0), nchw))), Some(Err(failed("x"))));
        assert_eq!(values_failed.unwrap(), Bf16Route::Bf16(nchw));
        let bf16_failed = choose(Some(Err(failed("x"))), Some(Ok(rank(1.0))));
        assert_eq!(bf16_failed.unwrap(), Bf16Route::Values);
        let both = choose(Some(Err(failed("first"))), Some(Err(failed("second"))));
        let message = both.unwrap_err().to_string();
        assert!(
            message.contains("first") && message.contains("second"),
            "{message}"
        );
        assert!(choose(None, None).is_err());
    }

    #[test]
    fn each_layout_setting_builds_its_routes() {
        use crate::dnn::Route;
        let legacy = [Route::Legacy(Layout::Nchw), Route::Legacy(Layout::Nhwc)];
        assert_eq!(Bf16Layout::Timed.bf16_routes(), legacy);
        assert!(!Bf16Layout::Timed.bf16_values());
        assert!(Bf16Layout::Tf32.bf16_routes().is_empty());
        assert!(Bf16Layout::Tf32.bf16_values());
        assert_eq!(Bf16Layout::Graph.bf16_routes(), [Route::Graph]);
        assert!(!Bf16Layout::Graph.bf16_values());
        let all = Bf16Layout::TimedAll;
        assert_eq!(all.bf16_routes().len(), 3);
        assert!(all.bf16_routes().contains(&Route::Graph) && all.bf16_values());
    }
}
