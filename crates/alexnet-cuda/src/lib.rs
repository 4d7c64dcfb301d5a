//! # alexnet-cuda
//!
//! A CUDA backend for the `alexnet` engine: [`CudaBackend`] implements
//! [`alexnet::Backend`], so `Network<CudaBackend>` trains and runs the paper's net
//! on one NVIDIA GPU.
//!
//! - convolutions (forward, backward-data, backward-filter, with the paper's two
//!   towers as cuDNN's group count) through cuDNN, the algorithm for each shape
//!   chosen once and cached (`dnn`);
//! - fully connected layers through cuBLAS SGEMM;
//! - everything else (ReLU, tanh, per-tower LRN, max/average pooling, dropout,
//!   softmax cross-entropy, the SGD step, biases) in small CUDA C kernels compiled
//!   by NVRTC when the backend is created (`kernels`).
//!
//! [`Precision`] sets how the matrix products (convolutions and fully connected
//! layers) round: fp32 (the default), TF32 or bf16 on tensor cores. In every mode
//! activations, gradients, weights, velocities and every other layer stay f32; in
//! bf16 mode the operands of each product are rounded to bf16 (nearest even) just
//! before it, and products are summed in f32 (mixed precision with f32 master
//! weights).
//!
//! The CUDA libraries are opened at run time (cudarc's dynamic loading), so this
//! crate builds, and its tests run and skip, on machines without CUDA.
//! [`CudaBackend::new`] returns [`CudaError::LibraryMissing`] there rather than
//! panicking.
//!
//! ```no_run
//! use alexnet::{Model, NetSpec, Network, Sgd};
//! use alexnet_cuda::CudaBackend;
//!
//! let backend = CudaBackend::new(0).expect("a CUDA GPU");
//! let spec = NetSpec::preset("alexnet").unwrap();
//! let mut net = Network::new(backend, &spec, 128, 42).unwrap();
//! let images = vec![0.0f32; 128 * 3 * 224 * 224];
//! let labels: Vec<u32> = (0..128).collect();
//! let loss = net.train_step(&images, &labels, &Sgd::from_recipe(&spec.recipe)).unwrap();
//! ```

mod bf16;
mod blas;
mod device;
mod dnn;
mod error;
mod exchange;
mod input;
mod kernels;
mod launch;
mod layers;
pub mod nccl;
mod staging;

use std::sync::{Arc, Mutex};

use alexnet::input::StoredBatch;
use alexnet::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, PoolGeometry};
use alexnet::{Backend, Rows};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaStream, DevicePtr, DevicePtrMut, PushKernelArg, sys,
};

/// The buffer type of [`CudaBackend`] (what `alexnet::BufferMut::Device` holds for it).
pub use cudarc::driver::CudaSlice;
pub use device::{KERNEL_NAMES, compile_kernels};
pub use error::CudaError;
pub use exchange::enable_peer_access;

use exchange::check_rows;
use input::InputScratch;
use launch::{
    LrnArgs, NO_TIMING, NULL_POINTER, PoolArgs, grow, int, per_plane_value, per_row, per_value,
};

use bf16::{Bf16Convolutions, Bf16Scratch};
use dnn::Dnn;
use kernels::Kernels;
use staging::Staging;

/// How matrix products round: the engine's one [`Precision`]. On this backend,
/// bf16 fully connected layers give f32 results (cuBLAS GEMM with bf16 inputs and
/// an f32 output). cuDNN runs bf16 convolutions only with bf16 outputs too, so on
/// bf16 tensors a convolution's output, input gradient and weight gradient are
/// each rounded to bf16 once more before they return to f32 (the weight gradient
/// then accumulates in f32), as under PyTorch's autocast; on bf16 values in f32
/// tensors ([`Bf16Layout::Tf32`]) they stay f32. tf32 and bf16 need a GPU
/// of compute capability 8.0 (Ampere) or newer.
pub use alexnet::Precision;

/// Which cuDNN convolution algorithms fp32 mode may choose from (each shape's
/// algorithms are timed once, and the fastest allowed one is kept). TF32 and
/// bf16 round their operands far more than any algorithm does, so this applies
/// to fp32 only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithms {
    /// Any algorithm, as PyTorch's `cudnn.benchmark`: FFT and Winograd
    /// transforms too, which are several times faster on some of the paper's
    /// layers but round intermediate values, so results differ from a direct sum
    /// by more than fp32 rounding.
    #[default]
    Fastest,
    /// Only algorithms that sum the products directly (no FFT, FFT_TILING or
    /// WINOGRAD_NONFUSED): results within fp32 rounding of the CPU reference.
    Exact,
}

/// How bf16 mode hands cuDNN a convolution's operands (fp32 and TF32 hand cuDNN
/// the network's own NCHW buffers): as bf16 copies in a layout (or through the
/// graph API), or as f32 copies holding bf16 values (`Tf32`). Every way the
/// copies are made by one kernel that rounds (and, for NHWC, transposes), and
/// the products are the same; cuDNN's algorithms differ, and so do their speed
/// and the order of their sums (results agree to rounding, not bit for bit;
/// under `Timed` the choice, and so the last bits, may differ from run to run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bf16Layout {
    /// Each convolution shape's algorithms are timed in both layouts and the
    /// faster kept.
    #[default]
    Timed,
    /// NCHW, the engine's layout (cuDNN may transpose internally for its
    /// tensor-core kernels).
    Nchw,
    /// NHWC (channels last), the layout cuDNN's tensor-core kernels are written
    /// for.
    Nhwc,
    /// NHWC through cuDNN's graph (backend) API, the route cuDNN recommends and
    /// PyTorch takes: its heuristics' engines for each pass, each timed and the
    /// fastest kept. Not yet part of `Timed`: it has not run on a GPU.
    Graph,
    /// No bf16 tensors: f32 copies of the operands rounded to bf16 values,
    /// through cuDNN's fp32 algorithms on TF32 tensor cores, which hold a bf16
    /// value exactly (no algorithm that transforms the operands first): the same
    /// products, f32 sums, and f32 results that need no widening pass. Not yet
    /// part of `Timed`: it has not run on a GPU.
    Tf32,
    /// Every route competing: both legacy layouts, the graph API and `Tf32`.
    TimedAll,
}

impl Bf16Layout {
    /// The routes of its bf16 tensors' plans (none for `Tf32`), NCHW first, which
    /// wins ties.
    pub(crate) fn bf16_routes(self) -> &'static [dnn::Route] {
        use dnn::{Layout, Route};
        match self {
            Bf16Layout::Timed => &[Route::Legacy(Layout::Nchw), Route::Legacy(Layout::Nhwc)],
            Bf16Layout::Nchw => &[Route::Legacy(Layout::Nchw)],
            Bf16Layout::Nhwc => &[Route::Legacy(Layout::Nhwc)],
            Bf16Layout::Graph => &[Route::Graph],
            Bf16Layout::Tf32 => &[],
            Bf16Layout::TimedAll => &[
                Route::Legacy(Layout::Nchw),
                Route::Legacy(Layout::Nhwc),
                Route::Graph,
            ],
        }
    }

    /// Whether TF32 on bf16 values competes.
    pub(crate) fn bf16_values(self) -> bool {
        matches!(self, Bf16Layout::Tf32 | Bf16Layout::TimedAll)
    }
}

/// What a backend is made with beside its device: how its matrix products round,
/// which convolution algorithms fp32 may choose, and, in bf16, the layout of the
/// convolutions' operands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaSettings {
    pub precision: Precision,
    pub algorithms: Algorithms,
    pub bf16_layout: Bf16Layout,
}

/// One CUDA device: a context, one stream every operation is queued on (so they
/// run in the order the network calls them, with no further synchronisation),
/// and the cuBLAS and cuDNN handles bound to that stream.
pub struct CudaBackend {
    ordinal: usize,
    precision: Precision,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Where stored batches and input batches (`upload_input`) are copied to the
    /// device, so that a batch's copy runs while the compute stream works through
    /// the batch before (which waits, by an event, for the copy before reading
    /// it). Every copy queued
    /// here is waited for by the compute stream right away, so buffers freed in
    /// the compute stream's order are never still being written, and this stream
    /// needs no draining when the backend is dropped.
    copy_stream: Arc<CudaStream>,
    kernels: Kernels,
    /// cuBLAS and cuDNN handles must not be used from two threads at once.
    blas: Mutex<CudaBlas>,
    dnn: Mutex<Convolutions>,
    /// The bf16 operands of the products (and the f32 copies of bf16 values of
    /// the convolutions on TF32), in bf16 mode only. Where it is held
    /// together with the cuBLAS or cuDNN handle, it is locked first.
    bf16: Option<Mutex<Bf16Scratch>>,
    /// Device buffers for the loss: labels in, per-image losses out.
    loss_scratch: Mutex<LossScratch>,
    input_scratch: Mutex<InputScratch>,
    /// Page-locked buffers that large uploads pass through.
    staging: Mutex<Staging>,
    /// Recorded on the compute stream at the last `upload_input`: the input
    /// buffer the next one writes was last used by work queued before it.
    input_released: Mutex<Option<CudaEvent>>,
    /// Intermediate values of the LRN's and max pooling's backward passes.
    backward_scratch: Mutex<BackwardScratch>,
    description: String,
}

/// cuDNN with f32 tensors (fp32 and TF32 modes), or bf16 mode's routes.
enum Convolutions {
    F32(Dnn<f32>),
    Bf16(Box<Bf16Convolutions>),
}

/// What the backward passes of the LRN (plain or fused with max pooling) and of
/// max pooling keep between their kernels, grown as needed.
#[derive(Default)]
struct BackwardScratch {
    /// The LRN's per-value terms `g a q / s` (see `lrn_backward_terms` in the
    /// kernels), as many as the LRN's input.
    lrn_terms: Option<CudaSlice<f32>>,
    /// Each pooled output's winning position within its window.
    pool_winners: Option<CudaSlice<i32>>,
}

#[derive(Default)]
struct LossScratch {
    labels: Option<CudaSlice<u32>>,
    losses: Option<CudaSlice<f32>>,
    host: Vec<f32>,
}

impl CudaBackend {
    /// `y = conv(x, w) + b`, and with `rectify` its ReLU, in the pass that adds
    /// the bias.
    #[allow(clippy::too_many_arguments)]
    fn conv_forward_then(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rectify: bool,
    ) {
        if self.precision == Precision::Bf16 {
            if let Err(e) = self.conv_forward_bf16(g, n, x, w, b, y, rectify) {
                self.fail(&format!("cuDNN convolution forward {g:?} x {n}"), e);
            }
            return;
        }
        self.bind();
        let result = match &mut *self.lock(&self.dnn) {
            Convolutions::F32(dnn) => dnn.forward(g, n, x, w, y),
            Convolutions::Bf16(_) => unreachable!("only bf16 mode has bf16 convolutions"),
        };
        if let Err(e) = result {
            self.fail(&format!("cuDNN convolution forward {g:?} x {n}"), e);
        }
        let y_len = n * g.output.len();
        self.bias_add(b, y, g.output.channels, g.out_plane(), y_len, rectify);
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaSlice<f32>;

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn buffer_mut<'a>(&self, buf: &'a mut CudaSlice<f32>, len: usize) -> alexnet::BufferMut<'a> {
        alexnet::BufferMut::Device { buffer: buf, len }
    }

    fn alloc(&self, len: usize) -> alexnet::Result<CudaSlice<f32>> {
        // CUDA refuses zero-byte allocations; one value stands in for none.
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| alexnet::Error::Io {
                path: format!("cuda:{}", self.ordinal),
                source: std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    format!("allocating {len} floats of device memory: {e}"),
                ),
            })
    }

    fn upload(&self, src: &[f32], dst: &mut CudaSlice<f32>) {
        if src.is_empty() {
            return;
        }
        // Staged, so the caller may reuse `src` at once.
        let mut head = dst.slice_mut(..src.len());
        let copied = self
            .lock(&self.staging)
            .upload(&self.ctx, &self.stream, src, &mut head);
        if let Err(e) = copied {
            self.fail("copying to the device", e);
        }
    }

    /// On the copy stream, after the work queued before the previous call (the
    /// last that used `dst`, the network's other input buffer) and before the
    /// compute stream's next work, which waits for it: the copy runs while the
    /// compute stream works through what was queued since the previous call (the
    /// last batch's backward pass). Before any previous call, after everything
    /// queued so far (the buffer's allocation among it).
    fn upload_input(&self, src: &[f32], dst: &mut CudaSlice<f32>) {
        if src.is_empty() {
            return;
        }
        let mut released = self.lock(&self.input_released);
        let copied = self.stream.record_event(NO_TIMING).and_then(|now| {
            let after = released.replace(now);
            self.copy_stream
                .wait(after.as_ref().or(released.as_ref()).expect("just set"))?;
            let mut head = dst.slice_mut(..src.len());
            self.lock(&self.staging)
                .upload(&self.ctx, &self.copy_stream, src, &mut head)?;
            let arrived = self.copy_stream.record_event(NO_TIMING)?;
            self.stream.wait(&arrived)
        });
        if let Err(e) = copied {
            self.fail("copying an input batch to the device", e);
        }
    }

    fn overlaps_input_uploads(&self) -> bool {
        true
    }

    fn download(&self, src: &CudaSlice<f32>, dst: &mut [f32]) {
        if dst.is_empty() {
            return;
        }
        if let Err(e) = self.stream.memcpy_dtoh(&src.slice(..dst.len()), dst) {
            self.fail("copying from the device", e);
        }
        // The copy is queued behind the work that produces `src`; wait for it.
        self.synchronize();
    }

    fn fill(&self, buf: &mut CudaSlice<f32>, value: f32) {
        if value == 0.0 && value.is_sign_positive() {
            if let Err(e) = self.stream.memset_zeros(buf) {
                self.fail("zeroing a buffer", e);
            }
            return;
        }
        let len = buf.len();
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.fill);
        args.arg(buf).arg(&value).arg(&len64);
        self.launch(args, per_value(len), "fill");
    }

    fn copy(&self, len: usize, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) {
        if len == 0 {
            return;
        }
        if let Err(e) = self
            .stream
            .memcpy_dtod(&src.slice(..len), &mut dst.slice_mut(..len))
        {
            self.fail("copying on the device", e);
        }
    }

    fn cuts_views(&self) -> bool {
        true
    }

    fn wait_for(&self, other: &CudaBackend) {
        if std::ptr::eq(self, other) {
            return;
        }
        let waited = other
            .stream
            .record_event(NO_TIMING)
            .and_then(|event| self.stream.wait(&event));
        if let Err(e) = waited {
            self.fail(
                &format!("waiting for cuda:{}'s queued work", other.ordinal),
                e,
            );
        }
    }

    /// One 2-D copy (rows of bytes at two pitches), queued on this backend's
    /// stream (after the caller's `wait_for(from)`). `cuMemcpy3DPeerAsync` names both
    /// contexts, so the same call serves two devices and one device named twice.
    /// Between two GPUs the copy goes directly where [`enable_peer_access`] has
    /// granted each access to the other's memory pool, and is staged through host
    /// memory by the driver otherwise; neither has run on a two-GPU machine yet.
    fn pull_rows(
        &self,
        from: &CudaBackend,
        src: &CudaSlice<f32>,
        src_rows: Rows,
        dst: &mut CudaSlice<f32>,
        dst_rows: Rows,
    ) {
        check_rows(src, src_rows, dst, dst_rows, "pulled");
        // Each buffer must be its backend's (allocated on its stream): the copy
        // names the contexts, and a mix-up would go unseen on one device.
        assert!(
            Arc::ptr_eq(src.stream(), &from.stream) && Arc::ptr_eq(dst.stream(), &self.stream),
            "rows pulled between buffers of other backends than the ones named"
        );
        if src_rows.count == 0 || src_rows.len == 0 {
            return;
        }
        const F32: usize = std::mem::size_of::<f32>();
        let (src_ptr, _read) = src.device_ptr(&self.stream);
        let (dst_ptr, _written) = dst.device_ptr_mut(&self.stream);
        let copy = sys::CUDA_MEMCPY3D_PEER {
            srcXInBytes: 0,
            srcY: 0,
            srcZ: 0,
            srcLOD: 0,
            srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcHost: std::ptr::null(),
            srcDevice: src_ptr + (src_rows.offset * F32) as u64,
            srcArray: std::ptr::null_mut(),
            srcContext: from.ctx.cu_ctx(),
            srcPitch: src_rows.stride.max(src_rows.len) * F32,
            srcHeight: src_rows.count,
            dstXInBytes: 0,
            dstY: 0,
            dstZ: 0,
            dstLOD: 0,
            dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst_ptr + (dst_rows.offset * F32) as u64,
            dstArray: std::ptr::null_mut(),
            dstContext: self.ctx.cu_ctx(),
            dstPitch: dst_rows.stride.max(dst_rows.len) * F32,
            dstHeight: dst_rows.count,
            WidthInBytes: src_rows.len * F32,
            Height: src_rows.count,
            Depth: 1,
        };
        self.bind();
        // SAFETY: both ranges lie inside their buffers (checked above); the stream
        // orders the copy before later work on `dst`, and the caller's waits order
        // it after the work on `from` that writes `src` and before any that
        // overwrites it.
        if let Err(e) = unsafe { sys::cuMemcpy3DPeerAsync(&copy, self.stream.cu_stream()) }.result()
        {
            self.fail(
                &format!("copying {} rows from cuda:{}", src_rows.count, from.ordinal),
                e,
            );
        }
    }

    fn add_rows(
        &self,
        src: &CudaSlice<f32>,
        src_rows: Rows,
        dst: &mut CudaSlice<f32>,
        dst_rows: Rows,
    ) {
        check_rows(src, src_rows, dst, dst_rows, "added");
        let len = src_rows.count * src_rows.len;
        if len == 0 {
            return;
        }
        let [
            src_offset,
            src_stride,
            dst_offset,
            dst_stride,
            row_len,
            count,
        ] = [
            src_rows.offset,
            src_rows.stride,
            dst_rows.offset,
            dst_rows.stride,
            src_rows.len,
            src_rows.count,
        ]
        .map(|v| v as u64);
        let mut args = self.stream.launch_builder(&self.kernels.add_rows);
        args.arg(src)
            .arg(&src_offset)
            .arg(&src_stride)
            .arg(dst)
            .arg(&dst_offset)
            .arg(&dst_stride)
            .arg(&row_len)
            .arg(&count);
        self.launch(args, per_value(len), "add_rows");
    }

    fn cut_views(
        &self,
        batch: &StoredBatch,
        mean: Option<&CudaSlice<f32>>,
        dst: &mut CudaSlice<f32>,
    ) {
        let len = batch.views.len() * batch.view_shape().len();
        if len == 0 {
            return;
        }
        let place: Vec<i32> = batch
            .views
            .iter()
            .flat_map(|v| [int(v.image), int(v.y), int(v.x), i32::from(v.flip)])
            .collect();
        let shift: Vec<f32> = batch.views.iter().flat_map(|v| v.shift).collect();
        let mut scratch = self.lock(&self.input_scratch);
        let s = &mut *scratch;
        let slot = s.next_pixels;
        s.next_pixels = 1 - slot;
        let arrived = self.upload_pixels(&mut s.pixels[slot], batch.pixels);
        let copied = arrived
            .and_then(|()| grow(&self.stream, &mut s.place, place.len()))
            .and_then(|buf| {
                self.stream
                    .memcpy_htod(&place, &mut buf.slice_mut(..place.len()))
            })
            .and_then(|()| grow(&self.stream, &mut s.shift, shift.len()))
            .and_then(|buf| {
                self.stream
                    .memcpy_htod(&shift, &mut buf.slice_mut(..shift.len()))
            });
        if let Err(e) = copied {
            self.fail("copying a stored batch to the device", e);
        }
        let (Some(pixels), Some(place), Some(shift)) = (&s.pixels[slot].bytes, &s.place, &s.shift)
        else {
            unreachable!("grown above")
        };
        let mean = if batch.subtract_mean { mean } else { None };
        let has_mean = i32::from(mean.is_some());
        let stored = batch.stored;
        let (channels, height, width) =
            (int(stored.channels), int(stored.height), int(stored.width));
        let (crop_h, crop_w) = (int(batch.crop_height), int(batch.crop_width));
        let [s0, s1, s2] = batch.scale;
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.cut_views);
        // Without a mean the kernel never reads its pointer; the shifts stand in.
        args.arg(pixels)
            .arg(mean.unwrap_or(shift))
            .arg(&has_mean)
            .arg(place)
            .arg(shift)
            .arg(dst)
            .arg(&channels)
            .arg(&height)
            .arg(&width)
            .arg(&crop_h)
            .arg(&crop_w)
            .arg(&s0)
            .arg(&s1)
            .arg(&s2)
            .arg(&len64);
        self.launch(args, per_value(len), "cut_views");
        // The next copy into this buffer waits for the kernel that reads it.
        match self.stream.record_event(NO_TIMING) {
            Ok(event) => s.pixels[slot].released = Some(event),
            Err(e) => self.fail("recording an event after cutting views", e),
        }
    }

    fn synchronize(&self) {
        if let Err(e) = self.stream.synchronize() {
            self.fail("waiting for the device", e);
        }
    }

    fn conv_forward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) {
        self.conv_forward_then(g, n, x, w, b, y, false);
    }

    /// The ReLU is taken by the pass that adds the bias (in bf16, the one that
    /// widens the output too), so `y` is written once after cuDNN's sum.
    fn conv_relu_forward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) {
        self.conv_forward_then(g, n, x, w, b, y, true);
    }

    fn conv_backward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        db: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) {
        self.bias_grad(dy, db, n, g.output.channels, g.out_plane());
        if self.precision == Precision::Bf16 {
            self.conv_backward_bf16(g, n, x, w, dy, dw, dx);
            return;
        }
        self.bind();
        let mut dnn = self.lock(&self.dnn);
        let Convolutions::F32(dnn) = &mut *dnn else {
            unreachable!("only bf16 mode has bf16 convolutions")
        };
        if let Err(e) = dnn.backward_filter(g, n, x, dy, dw, true) {
            self.fail(&format!("cuDNN convolution backward-filter {g:?} x {n}"), e);
        }
        if let Some(dx) = dx
            && let Err(e) = dnn.backward_data(g, n, w, dy, dx)
        {
            self.fail(&format!("cuDNN convolution backward-data {g:?} x {n}"), e);
        }
    }

    /// `y = x W^T + b` with row-major `x [n, in]`, `W [out, in]`, `y [n, out]`.
    /// Read column-major (cuBLAS's view), the same memory holds `x^T`, `W^T`, `y^T`,
    /// so the product is `y^T (out x n) = op_T(W^T) (out x in) . x^T (in x n)`.
    fn linear_forward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) {
        let (inputs, outputs) = (int(g.inputs), int(g.outputs));
        let config = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: outputs,
            n: int(n),
            k: inputs,
            alpha: 1.0,
            lda: inputs,
            ldb: inputs,
            beta: 0.0,
            ldc: outputs,
        };
        if self.precision == Precision::Bf16 {
            let x_len = n * g.inputs;
            let mut scratch = self.bf16_scratch(x_len, 0, g.weight_len());
            let s = &mut *scratch;
            self.convert_to_bf16(x, &mut s.input, x_len);
            self.convert_to_bf16(w, &mut s.weights, g.weight_len());
            self.gemm_bf16(config, &s.weights, &s.input, y);
        } else {
            self.gemm(config, w, x, y);
        }
        self.bias_add(b, y, g.outputs, 1, n * g.outputs, false);
    }

    /// `dW += dy^T x` is, column-major, `dW^T (in x out) += x^T (in x n) . op_T(dy^T)`;
    /// `dx = dy W` is `dx^T (in x n) = W^T (in x out) . dy^T (out x n)`.
    fn linear_backward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        db: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) {
        let (inputs, outputs, images) = (int(g.inputs), int(g.outputs), int(n));
        self.bias_grad(dy, db, n, g.outputs, 1);
        let weight_grad = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_T,
            m: inputs,
            n: outputs,
            k: images,
            alpha: 1.0,
            lda: inputs,
            ldb: outputs,
            beta: 1.0,
            ldc: inputs,
        };
        let input_grad = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: inputs,
            n: images,
            k: outputs,
            alpha: 1.0,
            lda: inputs,
            ldb: outputs,
            beta: 0.0,
            ldc: inputs,
        };
        if self.precision == Precision::Bf16 {
            let (x_len, y_len) = (n * g.inputs, n * g.outputs);
            let mut scratch = self.bf16_scratch(x_len, y_len, g.weight_len());
            let s = &mut *scratch;
            self.convert_to_bf16(x, &mut s.input, x_len);
            self.convert_to_bf16(dy, &mut s.output, y_len);
            // f32 output with beta = 1: the weight gradient accumulates in f32.
            self.gemm_bf16(weight_grad, &s.input, &s.output, dw);
            if let Some(dx) = dx {
                self.convert_to_bf16(w, &mut s.weights, g.weight_len());
                self.gemm_bf16(input_grad, &s.weights, &s.output, dx);
            }
        } else {
            self.gemm(weight_grad, x, dy, dw);
            if let Some(dx) = dx {
                self.gemm(input_grad, w, dy, dx);
            }
        }
    }

    fn relu_forward(&self, len: usize, x: &mut CudaSlice<f32>) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.relu_forward);
        args.arg(x).arg(&len64);
        self.launch(args, per_value(len), "relu_forward");
    }

    fn relu_backward(&self, len: usize, y: &CudaSlice<f32>, d: &mut CudaSlice<f32>) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.relu_backward);
        args.arg(y).arg(d).arg(&len64);
        self.launch(args, per_value(len), "relu_backward");
    }

    fn tanh_forward(&self, len: usize, x: &mut CudaSlice<f32>) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.tanh_forward);
        args.arg(x).arg(&len64);
        self.launch(args, per_value(len), "tanh_forward");
    }

    fn tanh_backward(&self, len: usize, y: &CudaSlice<f32>, d: &mut CudaSlice<f32>) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.tanh_backward);
        args.arg(y).arg(d).arg(&len64);
        self.launch(args, per_value(len), "tanh_backward");
    }

    fn lrn_forward(&self, g: &LrnGeometry, n: usize, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>) {
        let (planes, plane_len) = (n * g.shape.channels, g.shape.height * g.shape.width);
        if planes * plane_len == 0 {
            return;
        }
        let (l, plane_len32) = (LrnArgs::new(g), int(plane_len));
        let mut args = self.stream.launch_builder(&self.kernels.lrn_forward);
        args.arg(x).arg(y);
        l.push(&mut args);
        args.arg(&plane_len32);
        self.launch(args, per_plane_value(planes, plane_len), "lrn_forward");
    }

    fn lrn_backward(
        &self,
        g: &LrnGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        let (planes, plane_len) = (n * g.shape.channels, g.shape.height * g.shape.width);
        if planes * plane_len == 0 {
            return;
        }
        let mut scratch = self.lock(&self.backward_scratch);
        let terms = grow(&self.stream, &mut scratch.lrn_terms, n * g.shape.len())
            .unwrap_or_else(|e| self.fail("allocating the LRN's terms", e));
        let (l, plane_len32) = (LrnArgs::new(g), int(plane_len));
        let mut args = self.stream.launch_builder(&self.kernels.lrn_backward_terms);
        args.arg(x).arg(dy).arg(&mut *dx).arg(&mut *terms);
        l.push(&mut args);
        args.arg(&plane_len32);
        self.launch(
            args,
            per_plane_value(planes, plane_len),
            "lrn_backward_terms",
        );
        self.lrn_backward_finish(g, n, x, terms, dx);
    }

    fn max_pool_forward(
        &self,
        g: &PoolGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) {
        let (planes, out_len) = (n * g.output.channels, g.output.height * g.output.width);
        if planes * out_len == 0 {
            return;
        }
        let p = PoolArgs::new(g);
        let mut args = self.stream.launch_builder(&self.kernels.max_pool_forward);
        args.arg(x).arg(y).arg(&NULL_POINTER);
        p.push(&mut args);
        self.launch(args, per_plane_value(planes, out_len), "max_pool_forward");
    }

    /// Finds each output's winner again (the forward pass keeps none), then
    /// gathers each input's gradient from the outputs it won.
    fn max_pool_backward(
        &self,
        g: &PoolGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        let planes = n * g.input.channels;
        let (in_len, out_len) = (
            g.input.height * g.input.width,
            g.output.height * g.output.width,
        );
        if planes * in_len == 0 {
            return;
        }
        let mut scratch = self.lock(&self.backward_scratch);
        let winners = grow(&self.stream, &mut scratch.pool_winners, planes * out_len)
            .unwrap_or_else(|e| self.fail("allocating the pooling's winners", e));
        let p = PoolArgs::new(g);
        if out_len > 0 {
            let mut args = self.stream.launch_builder(&self.kernels.max_pool_forward);
            args.arg(x).arg(&NULL_POINTER).arg(&mut *winners);
            p.push(&mut args);
            self.launch(args, per_plane_value(planes, out_len), "max_pool_forward");
        }
        let mut args = self.stream.launch_builder(&self.kernels.max_pool_backward);
        args.arg(&*winners).arg(dy).arg(dx);
        p.push(&mut args);
        self.launch(args, per_plane_value(planes, in_len), "max_pool_backward");
    }

    /// One kernel: each pooled output normalises its own window (see
    /// `lrn_max_pool_forward` in the kernels).
    /// Each pooled output's winning position within its window in a byte
    /// (`ky * size + kx`: windows are at most 16x16, see `alexnet::fusion`), byte
    /// `i` for output `i` of the batch.
    type PoolRecord = CudaSlice<u8>;

    fn alloc_pool_record(
        &self,
        pool: &PoolGeometry,
        images: usize,
    ) -> alexnet::Result<CudaSlice<u8>> {
        let len = images.saturating_mul(pool.output.len());
        self.bind();
        self.stream
            .alloc_zeros::<u8>(len.max(1))
            .map_err(|e| alexnet::Error::Input {
                what: format!("cuda:{} memory", self.ordinal),
                expected: "a record the device can hold".into(),
                found: format!("{len} bytes: {e}"),
            })
    }

    fn lrn_max_pool_forward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        record: Option<&mut CudaSlice<u8>>,
    ) {
        assert_eq!(pool.input, lrn.shape, "the pooling reads the LRN's output");
        // The record keeps each window's winner as one byte (ky * size + kx).
        assert!(
            pool.size <= 16,
            "fused LRN + max pooling takes windows of at most 16x16"
        );
        let (planes, out_len) = (
            n * pool.output.channels,
            pool.output.height * pool.output.width,
        );
        if planes * out_len == 0 {
            return;
        }
        let (l, p) = (LrnArgs::new(lrn), PoolArgs::new(pool));
        let mut args = self
            .stream
            .launch_builder(&self.kernels.lrn_max_pool_forward);
        args.arg(x).arg(y);
        match record {
            Some(record) => {
                assert!(
                    record.len() >= n * pool.output.len(),
                    "the record holds {} bytes, fewer than {n} images need",
                    record.len()
                );
                args.arg(record)
            }
            None => args.arg(&NULL_POINTER),
        };
        l.push(&mut args);
        p.push(&mut args);
        self.launch(
            args,
            per_plane_value(planes, out_len),
            "lrn_max_pool_forward",
        );
    }

    /// Two element-wise kernels: the LRN output's gradient gathered through the
    /// record together with the LRN's terms, then the LRN's input gradient
    /// (see `lrn_max_pool_backward_terms` in the kernels).
    fn lrn_max_pool_backward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        record: &CudaSlice<u8>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        assert_eq!(pool.input, lrn.shape, "the pooling reads the LRN's output");
        let (planes, plane_len) = (n * lrn.shape.channels, lrn.shape.height * lrn.shape.width);
        if planes * plane_len == 0 {
            return;
        }
        assert!(
            record.len() >= n * pool.output.len(),
            "the record holds {} bytes, fewer than {n} images need",
            record.len()
        );
        let mut scratch = self.lock(&self.backward_scratch);
        let terms = grow(&self.stream, &mut scratch.lrn_terms, n * lrn.shape.len())
            .unwrap_or_else(|e| self.fail("allocating the LRN's terms", e));
        let (l, p) = (LrnArgs::new(lrn), PoolArgs::new(pool));
        let mut args = self
            .stream
            .launch_builder(&self.kernels.lrn_max_pool_backward_terms);
        args.arg(x)
            .arg(record)
            .arg(dy)
            .arg(&mut *dx)
            .arg(&mut *terms);
        l.push(&mut args);
        p.push(&mut args);
        self.launch(
            args,
            per_plane_value(planes, plane_len),
            "lrn_max_pool_backward_terms",
        );
        self.lrn_backward_finish(lrn, n, x, terms, dx);
    }

    fn avg_pool_forward(
        &self,
        g: &PoolGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) {
        let len = n * g.output.len();
        if len == 0 {
            return;
        }
        let p = PoolArgs::new(g);
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.avg_pool_forward);
        args.arg(x).arg(y);
        p.push(&mut args);
        args.arg(&len64);
        self.launch(args, per_value(len), "avg_pool_forward");
    }

    fn avg_pool_backward(
        &self,
        g: &PoolGeometry,
        n: usize,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        let len = n * g.input.len();
        if len == 0 {
            return;
        }
        let p = PoolArgs::new(g);
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.avg_pool_backward);
        args.arg(dy).arg(dx);
        p.push(&mut args);
        args.arg(&len64);
        self.launch(args, per_value(len), "avg_pool_backward");
    }

    /// Drawn on the device: nothing is drawn on the host or copied.
    fn dropout_mask(
        &self,
        g: &DropoutGeometry,
        seed: u64,
        values: Rows,
        mask: &mut CudaSlice<f32>,
    ) {
        let len = values.count * values.len;
        if len == 0 {
            return;
        }
        assert!(mask.len() >= len, "a dropout mask past its buffer");
        let (threshold, keep) = (g.keep_threshold(), g.keep_scale());
        let [offset, stride, row_len, count] =
            [values.offset, values.stride, values.len, values.count].map(|v| v as u64);
        let mut args = self.stream.launch_builder(&self.kernels.dropout_mask);
        args.arg(mask)
            .arg(&seed)
            .arg(&threshold)
            .arg(&keep)
            .arg(&offset)
            .arg(&stride)
            .arg(&row_len)
            .arg(&count);
        self.launch(args, per_value(len), "dropout_mask");
    }

    fn dropout_forward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) {
        self.multiply(n * g.len, x, mask, y);
    }

    fn dropout_backward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        self.multiply(n * g.len, dy, mask, dx);
    }

    fn softmax_cross_entropy(
        &self,
        classes: usize,
        n: usize,
        logits: &CudaSlice<f32>,
        labels: &[u32],
        dlogits: &mut CudaSlice<f32>,
    ) -> f32 {
        if n == 0 {
            return 0.0;
        }
        let mut scratch = self.lock(&self.loss_scratch);
        let scratch = &mut *scratch;
        if scratch.labels.as_ref().is_none_or(|b| b.len() < n) {
            scratch.labels = None;
            scratch.losses = None;
            let labels = self.stream.alloc_zeros::<u32>(n);
            let losses = self.stream.alloc_zeros::<f32>(n);
            match (labels, losses) {
                (Ok(l), Ok(s)) => (scratch.labels, scratch.losses) = (Some(l), Some(s)),
                (Err(e), _) | (_, Err(e)) => self.fail("allocating the loss buffers", e),
            }
            scratch.host = vec![0.0; n];
        }
        let (Some(label_buf), Some(loss_buf)) = (&mut scratch.labels, &mut scratch.losses) else {
            unreachable!("allocated above")
        };
        if let Err(e) = self
            .stream
            .memcpy_htod(&labels[..n], &mut label_buf.slice_mut(..n))
        {
            self.fail("copying labels to the device", e);
        }
        let (classes32, count) = (int(classes), n as f32);
        let mut args = self.stream.launch_builder(&self.kernels.softmax_xent);
        args.arg(logits)
            .arg(&*label_buf)
            .arg(dlogits)
            .arg(&mut *loss_buf)
            .arg(&classes32)
            .arg(&count);
        self.launch(args, per_row(n), "softmax_xent");
        let host = &mut scratch.host[..n];
        if let Err(e) = self.stream.memcpy_dtoh(&loss_buf.slice(..n), host) {
            self.fail("copying the loss from the device", e);
        }
        self.synchronize();
        host.iter().sum::<f32>() / count
    }

    fn sgd_update(
        &self,
        w: &mut CudaSlice<f32>,
        dw: &CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        lr: f32,
        momentum: f32,
        decay: f32,
    ) {
        let len = w.len();
        assert!(
            dw.len() >= len && v.len() >= len,
            "SGD: gradient and velocity must be as long as the weights"
        );
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.sgd_update);
        args.arg(w)
            .arg(dw)
            .arg(v)
            .arg(&lr)
            .arg(&momentum)
            .arg(&decay)
            .arg(&len64);
        self.launch(args, per_value(len), "sgd_update");
    }
}
