//! Convolutions through cuDNN: descriptors and algorithms per shape, chosen once
//! and cached, and one workspace grown to the largest any algorithm asked for.
//!
//! The engine's layout is cuDNN's: NCHW activations, `[out, in / groups, k, k]`
//! weights, and cuDNN's group count is exactly the engine's `groups` (the paper's
//! towers), so f32 convolutions run on the network's own buffers.
//!
//! The element type is f32, or [`Bf16`] for bf16 mode's bf16 tensors (bf16
//! mode's other route hands f32 tensors of bf16 values to a `Dnn<f32>`, see
//! [`Dnn::for_bf16_values`]). cuDNN's legacy API runs a bf16 convolution only as
//! `PSEUDO_BFLOAT16_CONFIG`: input, filter and output all bf16, computed in f32
//! (the convolution descriptor's type). The backend therefore hands it bf16
//! copies of its f32 operands and turns the bf16 result back into f32.
//!
//! # Layouts
//!
//! Those copies are made anyway, so in bf16 mode they can be made in either
//! [`Layout`]: NCHW as the engine keeps them, or NHWC (channels last, filters
//! `[out, k, k, in / groups]`), the layout cuDNN's tensor-core kernels are written
//! for (given NCHW, cuDNN may transpose internally around them; channel counts
//! that are not a multiple of 8, as conv1's three inputs, may keep a shape off
//! them in either layout). The kernels that round the operands transpose them
//! with the same bytes moved (one read, one write each), if somewhat slower than
//! the flat conversions; the conversions are not timed, so the comparison
//! leaves that difference out. Each plan is built for every layout the
//! backend allows (both by default) and kept by [`Rank`]: a plan that keeps the
//! precision policy first, then one timed throughout, then the least time for
//! its three passes together (a shape only ever run forward, as inference's, is
//! still judged by all three). A layout whose plan fails loses to any that
//! works, with a warning. fp32, TF32 and bf16-values plans are NCHW.
//!
//! # Choosing algorithms
//!
//! The first time a shape (geometry and batch) is seen, each of its three passes
//! (forward, backward-data, backward-filter) times every algorithm cuDNN has for
//! it, as PyTorch's `cudnn.benchmark` does (`cudnnFind*AlgorithmEx`, on scratch
//! tensors of the shape's sizes, never on the network's own buffers, since the
//! trials write their outputs), and keeps the fastest one that the precision
//! policy allows. cuDNN reports each algorithm together with the math type it was
//! timed with; the pass's convolution descriptor is given that math type, or
//! cuDNN would run a different kernel from the one it timed. Should the timing
//! call fail, or none of its results be allowed, cuDNN's heuristic ranking (the
//! v7 queries) is used instead, under the same policy.
//!
//! The precision policy keeps each mode's promise about rounding:
//!
//! - fp32 ([`CUDNN_FMA_MATH`](cudnnMathType_t::CUDNN_FMA_MATH)): only results
//!   timed with FMA math (no TF32 tensor cores). With
//!   [`Algorithms::Exact`](crate::Algorithms::Exact), also none of the transform
//!   algorithms FFT, FFT_TILING and WINOGRAD_NONFUSED, whose transforms round
//!   above fp32's own rounding (plain WINOGRAD is allowed); with
//!   [`Algorithms::Fastest`](crate::Algorithms::Fastest), the default, they
//!   compete too, as under PyTorch's `cudnn.benchmark`.
//! - bf16 tensors: no backward-data or backward-filter algorithm that cuDNN
//!   reports as non-deterministic, or documents as summing with atomic adds
//!   (backward-filter ALGO_0 and ALGO_3, backward-data ALGO_0): such sums can
//!   round every partial sum to bf16's 8-bit mantissa.
//! - TF32: everything, except a math type that would convert the f32 operands to
//!   16-bit types.
//! - bf16 values in f32 tensors ([`Dnn::for_bf16_values`]: bf16 mode's f32 copies
//!   of the operands rounded to bf16): tensor-op math, whose TF32 holds every
//!   bf16 value exactly, so the products are those of the bf16 operands and the
//!   sums f32 (a result timed with FMA math is as exact, and allowed); no algorithm that transforms the operands first (FFT,
//!   FFT_TILING, WINOGRAD, WINOGRAD_NONFUSED: the transformed values are no
//!   longer bf16 values), and no math type that converts them to a 16-bit type.
//!
//! If no algorithm passes, the convolution fails with an error that names the
//! shape and every algorithm cuDNN offered with the reason it was turned down.
//!
//! # Logging
//!
//! With the environment variable `ALEXNET_CUDNN_LOG=1`, each new plan prints to
//! stderr, once: the shape (batch, input channels and size, output channels and
//! size, kernel, stride, padding, groups, data type), the mode's policy and the
//! scratch workspace the timings were given; then for each pass the algorithm
//! chosen, its math type, its measured time and its workspace, and every faster
//! (or, for the heuristic ranking, higher-ranked) algorithm that was turned down,
//! with the reason.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use alexnet::layers::ConvGeometry;
use cudarc::cudnn::sys::{
    self, cudnnConvolutionBwdDataAlgo_t as BwdDataAlgo,
    cudnnConvolutionBwdFilterAlgo_t as BwdFilterAlgo, cudnnConvolutionFwdAlgo_t as FwdAlgo,
    cudnnConvolutionMode_t, cudnnDataType_t, cudnnDeterminism_t, cudnnMathType_t, cudnnStatus_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{CudnnDataType, CudnnError, result};
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop,
    ValidAsZeroBits,
};

use crate::Algorithms;
use crate::bf16::Bf16;

mod graph;

/// What a convolution's tensors may hold: f32, or bf16 (computed in f32). Both
/// take their scaling factors (alpha, beta) as f32.
pub(crate) trait Element:
    CudnnDataType<Scalar = f32> + DeviceRepr + ValidAsZeroBits + Copy
{
    const ZERO: Self;
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}

impl Element for Bf16 {
    const ZERO: Bf16 = Bf16::ZERO;
    const ONE: Bf16 = Bf16::ONE;
}

/// Everything that fixes a convolution's descriptors: the geometry and the batch.
pub(crate) type ConvKey = [usize; 11];

pub(crate) fn key(g: &ConvGeometry, n: usize) -> ConvKey {
    [
        g.input.channels,
        g.input.height,
        g.input.width,
        g.output.channels,
        g.output.height,
        g.output.width,
        g.kernel,
        g.stride,
        g.pad,
        g.groups,
        n,
    ]
}

/// The most workspace the timing trials are given. An algorithm that needs more
/// is reported as failed by the trial and not chosen (unless the heuristic
/// fallback picks it, when nothing timed passed).
const TIMING_WORKSPACE_CAP: usize = 1 << 30;

/// Why a convolution could not be planned or run: the cuDNN (or CUDA) call and
/// its status, or a shape for which no algorithm passed the precision policy.
#[derive(Debug)]
pub(crate) struct DnnError(pub(crate) String);

impl DnnError {
    fn call(what: &str, error: impl fmt::Display) -> DnnError {
        DnnError(format!("{what}: {error}"))
    }
}

impl fmt::Display for DnnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DnnError {}

/// `map_err` adapter: names the failing call.
fn failed(what: &'static str) -> impl FnOnce(CudnnError) -> DnnError {
    move |e| DnnError::call(what, e)
}

// ---------------------------------------------------------------------------
// Handle and descriptors.
//
// cudarc's safe cuDNN wrappers keep the raw handle and descriptors private, and
// the timed searches (`cudnnFind*AlgorithmEx`) and per-pass math types need them,
// so this module owns its own, each destroyed when dropped.

/// A cuDNN handle bound to the backend's stream, and the context it was made in
/// (current again when it is destroyed, whichever thread drops it).
struct Handle {
    raw: sys::cudnnHandle_t,
    context: Arc<CudaContext>,
}

impl Handle {
    fn new(stream: &CudaStream) -> Result<Handle, DnnError> {
        let context = stream.context().clone();
        context
            .bind_to_thread()
            .map_err(|e| DnnError::call("making the context current", e))?;
        let handle = Handle {
            raw: result::create_handle().map_err(failed("cudnnCreate"))?,
            context,
        };
        // SAFETY: a live handle and the backend's live stream (which outlives it:
        // `Dnn` holds the stream too).
        unsafe { result::set_stream(handle.raw, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(failed("cudnnSetStream"))?;
        Ok(handle)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A first failure can be an earlier, unrelated error that the driver
        // wrapper reports once and clears; only a second one is about binding.
        if self.context.bind_to_thread().is_err()
            && let Err(e) = self.context.bind_to_thread()
        {
            eprintln!("alexnet-cuda: making the context current to destroy cuDNN: {e}");
            return;
        }
        // SAFETY: created in `new` and destroyed only here, with its context current.
        if let Err(e) = unsafe { result::destroy_handle(self.raw) } {
            eprintln!("alexnet-cuda: cudnnDestroy: {e}");
        }
    }
}

/// How a convolution's tensors are laid out in memory. Dimensions are always
/// given to cuDNN in NCHW order; the layout says where each value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `[n, c, h, w]`: the engine's own layout.
    Nchw,
    /// `[n, h, w, c]`: channels last (filters `[k, r, s, c]`).
    Nhwc,
}

impl Layout {
    fn format(self) -> cudnnTensorFormat_t {
        match self {
            Layout::Nchw => cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            Layout::Nhwc => cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

/// Which of cuDNN's APIs a plan goes through, and with which layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The legacy API (`cudnnConvolution*`, algorithms timed by
    /// `cudnnFind*AlgorithmEx`), operands in this layout.
    Legacy(Layout),
    /// The graph API (see [`graph`]), operands NHWC.
    Graph,
}

impl Route {
    /// The layout the operands are handed over in.
    fn layout(self) -> Layout {
        match self {
            Route::Legacy(layout) => layout,
            Route::Graph => Layout::Nhwc,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Route::Legacy(layout) => layout.name(),
            Route::Graph => "NHWC through the graph API",
        }
    }
}

/// A 4-d tensor descriptor.
struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    fn new(
        data_type: cudnnDataType_t,
        layout: Layout,
        dims: [usize; 4],
    ) -> Result<TensorDesc, DnnError> {
        // Wrapped at once so that it is destroyed if setting it fails.
        let desc = TensorDesc(
            result::create_tensor_descriptor().map_err(failed("cudnnCreateTensorDescriptor"))?,
        );
        // SAFETY: a live descriptor.
        unsafe {
            result::set_tensor4d_descriptor(desc.0, layout.format(), data_type, dims.map(dim))
        }
        .map_err(failed("cudnnSetTensor4dDescriptor"))?;
        Ok(desc)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created in `new` and destroyed only here.
        if let Err(e) = unsafe { result::destroy_tensor_descriptor(self.0) } {
            eprintln!("alexnet-cuda: cudnnDestroyTensorDescriptor: {e}");
        }
    }
}

/// A `[out, in / groups, k, k]` filter descriptor (dimensions in that order,
/// values in `layout`).
struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    fn new(
        data_type: cudnnDataType_t,
        layout: Layout,
        dims: [usize; 4],
    ) -> Result<FilterDesc, DnnError> {
        let desc = FilterDesc(
            result::create_filter_descriptor().map_err(failed("cudnnCreateFilterDescriptor"))?,
        );
        // SAFETY: a live descriptor.
        unsafe {
            result::set_filter4d_descriptor(desc.0, data_type, layout.format(), dims.map(dim))
        }
        .map_err(failed("cudnnSetFilter4dDescriptor"))?;
        Ok(desc)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created in `new` and destroyed only here.
        if let Err(e) = unsafe { result::destroy_filter_descriptor(self.0) } {
            eprintln!("alexnet-cuda: cudnnDestroyFilterDescriptor: {e}");
        }
    }
}

/// A convolution descriptor: the geometry, f32 compute, the group count and a
/// math type.
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    fn new(g: &ConvGeometry, math: cudnnMathType_t) -> Result<ConvDesc, DnnError> {
        let desc = ConvDesc(
            result::create_convolution_descriptor()
                .map_err(failed("cudnnCreateConvolutionDescriptor"))?,
        );
        let (pad, stride) = (dim(g.pad), dim(g.stride));
        // SAFETY: a live descriptor.
        unsafe {
            result::set_convolution2d_descriptor(
                desc.0,
                pad,
                pad,
                stride,
                stride,
                1,
                1,
                cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                // f32 compute for f32 and bf16 tensors alike.
                f32::DATA_TYPE,
            )
            .map_err(failed("cudnnSetConvolution2dDescriptor"))?;
            result::set_convolution_group_count(desc.0, dim(g.groups))
                .map_err(failed("cudnnSetConvolutionGroupCount"))?;
            result::set_convolution_math_type(desc.0, math)
                .map_err(failed("cudnnSetConvolutionMathType"))?;
        }
        Ok(desc)
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created in `new` and destroyed only here.
        if let Err(e) = unsafe { result::destroy_convolution_descriptor(self.0) } {
            eprintln!("alexnet-cuda: cudnnDestroyConvolutionDescriptor: {e}");
        }
    }
}

fn dim(v: usize) -> i32 {
    i32::try_from(v).expect("convolution sizes fit cuDNN's 32-bit dimensions")
}

// ---------------------------------------------------------------------------
// Algorithms and what cuDNN says about them.

/// One of a convolution's three passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::BackwardData => "backward-data",
            Pass::BackwardFilter => "backward-filter",
        }
    }
}

const FWD_ALGOS: [FwdAlgo; 8] = [
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
];

const BWD_DATA_ALGOS: [BwdDataAlgo; 6] = [
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
];

const BWD_FILTER_ALGOS: [BwdFilterAlgo; 7] = [
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
];

/// An algorithm of one pass. cuDNN reports algorithms as plain integers; only
/// those these bindings know become an `Algo` (a number outside the Rust enum
/// must never be turned into it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    Forward(FwdAlgo),
    BackwardData(BwdDataAlgo),
    BackwardFilter(BwdFilterAlgo),
}

impl Algo {
    fn new(pass: Pass, number: u32) -> Option<Algo> {
        match pass {
            Pass::Forward => FWD_ALGOS
                .into_iter()
                .find(|a| *a as u32 == number)
                .map(Algo::Forward),
            Pass::BackwardData => BWD_DATA_ALGOS
                .into_iter()
                .find(|a| *a as u32 == number)
                .map(Algo::BackwardData),
            Pass::BackwardFilter => BWD_FILTER_ALGOS
                .into_iter()
                .find(|a| *a as u32 == number)
                .map(Algo::BackwardFilter),
        }
    }

    /// Every algorithm of a pass.
    fn all(pass: Pass) -> Vec<Algo> {
        match pass {
            Pass::Forward => FWD_ALGOS.into_iter().map(Algo::Forward).collect(),
            Pass::BackwardData => BWD_DATA_ALGOS.into_iter().map(Algo::BackwardData).collect(),
            Pass::BackwardFilter => BWD_FILTER_ALGOS
                .into_iter()
                .map(Algo::BackwardFilter)
                .collect(),
        }
    }

    /// The name without cuDNN's prefix, e.g. `IMPLICIT_PRECOMP_GEMM`, `FFT`,
    /// `ALGO_1` (the numbered ones keep their `ALGO_`).
    fn name(self) -> String {
        let full = match self {
            Algo::Forward(a) => format!("{a:?}"),
            Algo::BackwardData(a) => format!("{a:?}"),
            Algo::BackwardFilter(a) => format!("{a:?}"),
        };
        match full.split_once("_ALGO_") {
            Some((_, rest)) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                format!("ALGO_{rest}")
            }
            Some((_, rest)) => rest.to_string(),
            None => full,
        }
    }

    /// FFT, FFT_TILING and WINOGRAD_NONFUSED: algorithms that compute in a
    /// transformed domain and round there, well above fp32's own rounding.
    fn is_transform(self) -> bool {
        matches!(
            self,
            Algo::Forward(
                FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT
                    | FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING
                    | FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED
            ) | Algo::BackwardData(
                BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT
                    | BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING
                    | BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED
            ) | Algo::BackwardFilter(
                BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT
                    | BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING
                    | BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED
            )
        )
    }

    /// WINOGRAD, whose transforms (fused, unlike WINOGRAD_NONFUSED) stay within
    /// fp32's rounding but still make new operands of the old.
    fn is_winograd(self) -> bool {
        matches!(
            self,
            Algo::Forward(FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD)
                | Algo::BackwardData(BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD)
                | Algo::BackwardFilter(BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD)
        )
    }

    /// The algorithms cuDNN's documentation ("Reproducibility") names as summing
    /// with atomic adds: backward-filter ALGO_0 and ALGO_3, backward-data ALGO_0.
    fn uses_atomics(self) -> bool {
        matches!(
            self,
            Algo::BackwardData(BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0)
                | Algo::BackwardFilter(
                    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0
                        | BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3
                )
        )
    }
}

/// One entry of cuDNN's `cudnnConvolution*AlgoPerf_t` (the three structs share
/// this layout), with its enumerations read as plain integers: a newer cuDNN may
/// report a status, algorithm or math type these bindings do not list, and
/// reading such a value as the bindings' Rust enum would be undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Perf {
    algo: u32,
    status: u32,
    /// Milliseconds (timed searches only; the heuristics leave it meaningless).
    time: f32,
    /// Bytes of workspace.
    memory: usize,
    determinism: u32,
    math_type: u32,
    reserved: [c_int; 3],
}

// `Perf` stands in for the three structs in the calls that fill them.
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    macro_rules! same_layout {
        ($t:ty) => {
            assert!(size_of::<Perf>() == size_of::<$t>());
            assert!(align_of::<Perf>() == align_of::<$t>());
            assert!(offset_of!(Perf, algo) == offset_of!($t, algo));
            assert!(offset_of!(Perf, status) == offset_of!($t, status));
            assert!(offset_of!(Perf, time) == offset_of!($t, time));
            assert!(offset_of!(Perf, memory) == offset_of!($t, memory));
            assert!(offset_of!(Perf, determinism) == offset_of!($t, determinism));
            assert!(offset_of!(Perf, math_type) == offset_of!($t, mathType));
        };
    }
    same_layout!(sys::cudnnConvolutionFwdAlgoPerf_t);
    same_layout!(sys::cudnnConvolutionBwdDataAlgoPerf_t);
    same_layout!(sys::cudnnConvolutionBwdFilterAlgoPerf_t);
};

const SUCCESS: u32 = cudnnStatus_t::CUDNN_STATUS_SUCCESS as u32;
const NON_DETERMINISTIC: u32 = cudnnDeterminism_t::CUDNN_NON_DETERMINISTIC as u32;

const MATH_TYPES: [cudnnMathType_t; 4] = [
    cudnnMathType_t::CUDNN_DEFAULT_MATH,
    cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
    cudnnMathType_t::CUDNN_FMA_MATH,
];

fn math_type(number: u32) -> Option<cudnnMathType_t> {
    MATH_TYPES.into_iter().find(|m| *m as u32 == number)
}

fn math_name(number: u32) -> String {
    match math_type(number) {
        Some(cudnnMathType_t::CUDNN_DEFAULT_MATH) => "default math".into(),
        Some(cudnnMathType_t::CUDNN_TENSOR_OP_MATH) => "tensor-op math".into(),
        Some(cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) => {
            "tensor-op math with down-conversion".into()
        }
        Some(cudnnMathType_t::CUDNN_FMA_MATH) => "FMA math".into(),
        None => format!("math type {number}"),
    }
}

/// A status read as an integer (see [`Perf`]): cuDNN 9 groups its codes by the
/// thousand; cuDNN 8's were 0-14.
fn status_name(code: u32) -> String {
    let class = match code {
        SUCCESS => "success",
        1000..=1999 => "not initialised / library",
        2000..=2999 => "bad parameter",
        3000..=3999 => "not supported",
        4000..=4999 => "internal error (allocation included)",
        5000..=5999 => "execution failed",
        1..=14 => "cuDNN 8 status",
        _ => "unknown status",
    };
    format!("status {code} ({class})")
}

fn bytes(n: usize) -> String {
    const KIB: f64 = 1024.0;
    let v = n as f64;
    if v < KIB {
        format!("{n} B")
    } else if v < KIB * KIB {
        format!("{:.1} KiB", v / KIB)
    } else if v < KIB * KIB * KIB {
        format!("{:.1} MiB", v / (KIB * KIB))
    } else {
        format!("{:.2} GiB", v / (KIB * KIB * KIB))
    }
}

// ---------------------------------------------------------------------------
// The precision policy.

/// Which algorithms a mode may run (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// f32 tensors, FMA math, no transform algorithms: fp32 rounding only.
    Fp32,
    /// f32 tensors, FMA math, any algorithm.
    Fp32Fastest,
    /// f32 tensors, tensor-op math: TF32 products.
    Tf32,
    /// bf16 tensors (computed in f32 on tensor cores).
    Bf16,
    /// f32 tensors holding bf16 values, tensor-op math: TF32 holds them
    /// exactly, so the products are the bf16 operands' and the sums f32 (as
    /// with FMA math, which results may also report).
    Bf16Values,
}

impl Policy {
    /// The policy of a mode, known from its tensors' type and its math type: bf16
    /// tensors are bf16 mode, f32 with FMA math fp32 mode, f32 otherwise TF32.
    fn of(data_type: cudnnDataType_t, math: cudnnMathType_t, algorithms: Algorithms) -> Policy {
        if data_type == cudnnDataType_t::CUDNN_DATA_BFLOAT16 {
            Policy::Bf16
        } else if math == cudnnMathType_t::CUDNN_FMA_MATH {
            match algorithms {
                Algorithms::Exact => Policy::Fp32,
                Algorithms::Fastest => Policy::Fp32Fastest,
            }
        } else {
            Policy::Tf32
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Policy::Fp32 => "fp32: FMA math only, no FFT, FFT_TILING or WINOGRAD_NONFUSED",
            Policy::Fp32Fastest => "fp32: FMA math only, any algorithm",
            Policy::Tf32 => "tf32: any algorithm",
            Policy::Bf16 => "bf16: deterministic backward passes only",
            Policy::Bf16Values => {
                "bf16 values in f32: tensor-op (TF32) or FMA math, both exact on them; no FFT, \
                 FFT_TILING or Winograd"
            }
        }
    }

    /// The math type a chosen result runs under: fp32 mode always runs FMA, even
    /// where cuDNN reported a result as DEFAULT (which on Ampere and later may
    /// use TF32 tensor cores).
    fn run_math(self, reported: cudnnMathType_t) -> cudnnMathType_t {
        match self {
            Policy::Fp32 | Policy::Fp32Fastest => cudnnMathType_t::CUDNN_FMA_MATH,
            _ => reported,
        }
    }

    /// Whether an algorithm can be excluded before it is run (it then needs no
    /// timing workspace): fp32's transform algorithms, and every transform
    /// under the bf16 values policy.
    fn excludes_algo(self, algo: Algo) -> bool {
        match self {
            Policy::Fp32 => algo.is_transform(),
            Policy::Bf16Values => algo.is_transform() || algo.is_winograd(),
            _ => false,
        }
    }

    /// Why a result may not be used, or `None` if it may.
    fn rejection(self, pass: Pass, perf: &Perf) -> Option<String> {
        if perf.status != SUCCESS {
            return Some(status_name(perf.status));
        }
        let Some(algo) = Algo::new(pass, perf.algo) else {
            return Some(format!(
                "algorithm number {} unknown to this build",
                perf.algo
            ));
        };
        let Some(math) = math_type(perf.math_type) else {
            return Some(format!(
                "math type {} unknown to this build",
                perf.math_type
            ));
        };
        match self {
            Policy::Fp32 if algo.is_transform() => Some(
                "fp32 mode excludes FFT, FFT_TILING and WINOGRAD_NONFUSED (their transforms round \
                 beyond fp32)"
                    .into(),
            ),
            // DEFAULT is accepted and then run under FMA (`Policy::run_math`).
            Policy::Fp32 | Policy::Fp32Fastest
                if math != cudnnMathType_t::CUDNN_FMA_MATH
                    && math != cudnnMathType_t::CUDNN_DEFAULT_MATH =>
            {
                Some(format!(
                    "fp32 mode runs FMA math only; this result used {}, which may round to TF32",
                    math_name(perf.math_type)
                ))
            }
            Policy::Tf32 | Policy::Bf16Values
                if math == cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION =>
            {
                Some("would round the f32 operands to a 16-bit type".into())
            }
            Policy::Bf16Values if algo.is_transform() || algo.is_winograd() => Some(
                "transforms the operands before its products (they would no longer be products \
                 of bf16 values)"
                    .into(),
            ),
            Policy::Bf16 if pass != Pass::Forward && perf.determinism == NON_DETERMINISTIC => Some(
                "reported non-deterministic (unordered sums, which may round partial sums to bf16)"
                    .into(),
            ),
            Policy::Bf16 if pass != Pass::Forward && algo.uses_atomics() => Some(
                "documented to sum with atomic adds (non-deterministic), which may round partial \
                 sums to bf16"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// How a list of results ranks its entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ranking {
    /// cuDNN's timings: the allowed entry with the least time wins.
    Timed,
    /// cuDNN's heuristics: the first allowed entry in cuDNN's order wins.
    Heuristic,
}

/// The outcome of applying the policy to one list of results.
struct Judged {
    /// Index of the chosen entry in `results`.
    chosen: Option<usize>,
    results: Vec<Perf>,
    /// Per entry, why it was turned down (`None`: allowed).
    rejections: Vec<Option<String>>,
    ranking: Ranking,
    /// Where the choice had to break the policy's promise (bf16's determinism),
    /// what to tell the user if this plan is kept.
    warning: Option<String>,
}

impl Judged {
    fn new(policy: Policy, pass: Pass, results: Vec<Perf>, ranking: Ranking) -> Judged {
        let rejections: Vec<_> = results.iter().map(|p| policy.rejection(pass, p)).collect();
        let mut allowed = (0..results.len()).filter(|&i| rejections[i].is_none());
        let chosen = match ranking {
            Ranking::Heuristic => allowed.next(),
            // cuDNN sorts its timings already; the minimum is taken regardless.
            Ranking::Timed => allowed.min_by(|&a, &b| results[a].time.total_cmp(&results[b].time)),
        };
        Judged {
            chosen,
            results,
            rejections,
            ranking,
            warning: None,
        }
    }

    /// Turned-down entries that would have won without the policy: faster ones
    /// (timed) or higher-ranked ones (heuristic), with why; and how many others
    /// (slower, lower-ranked or failed) were turned down.
    fn passed_over(&self) -> (Vec<(Perf, &str)>, usize) {
        let chosen = self.chosen;
        let mut ahead = Vec::new();
        let mut others = 0;
        for (i, (perf, why)) in self.results.iter().zip(&self.rejections).enumerate() {
            let Some(why) = why else { continue };
            let is_ahead = match (self.ranking, chosen) {
                (_, None) => true,
                (Ranking::Heuristic, Some(c)) => i < c,
                (Ranking::Timed, Some(c)) => {
                    perf.status == SUCCESS && perf.time < self.results[c].time
                }
            };
            if is_ahead {
                ahead.push((*perf, why.as_str()));
            } else {
                others += 1;
            }
        }
        (ahead, others)
    }

    /// Every entry with its verdict, for the "no algorithm" error.
    fn list(&self, pass: Pass) -> String {
        let entries: Vec<String> = self
            .results
            .iter()
            .zip(&self.rejections)
            .map(|(p, why)| {
                format!(
                    "{} ({}): {}",
                    algo_name(pass, p.algo),
                    math_name(p.math_type),
                    why.as_deref().unwrap_or("allowed")
                )
            })
            .collect();
        if entries.is_empty() {
            "none".into()
        } else {
            entries.join("; ")
        }
    }
}

fn algo_name(pass: Pass, number: u32) -> String {
    Algo::new(pass, number).map_or_else(|| format!("algorithm {number}"), Algo::name)
}

// ---------------------------------------------------------------------------
// Plans.

/// One pass's algorithm, with a convolution descriptor whose math type is the
/// one cuDNN timed (or ranked) the algorithm with.
struct PassPlan {
    algo: Algo,
    conv: ConvDesc,
    /// Bytes of workspace the algorithm needs.
    workspace: usize,
    /// Milliseconds cuDNN measured, or `None` where the choice came from its
    /// (untimed) heuristics.
    time: Option<f32>,
    /// Set where the algorithm breaks the policy's promise (see [`Judged`]).
    warning: Option<String>,
}

/// The descriptors of one convolution shape and the algorithm chosen for each pass.
/// The convolution itself always computes in f32.
struct ConvPlan {
    layout: Layout,
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
    forward: PassPlan,
    backward_data: PassPlan,
    backward_filter: PassPlan,
    /// Bytes of workspace the largest of the three algorithms needs.
    workspace: usize,
}

impl ConvPlan {
    fn passes(&self) -> [&PassPlan; 3] {
        [&self.forward, &self.backward_data, &self.backward_filter]
    }

    /// How the plan ranks against the same shape's plan in another layout.
    fn rank(&self) -> Rank {
        Rank {
            keeps_policy: self.passes().iter().all(|p| p.warning.is_none()),
            time: self.passes().iter().map(|p| p.time).sum(),
        }
    }
}

/// What decides between one shape's plans in two layouts, or on two routes
/// (bf16 mode's bf16 tensors against its bf16 values).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rank {
    /// No pass breaks the precision policy's promise.
    pub(crate) keeps_policy: bool,
    /// The three passes' measured milliseconds together, or `None` where any
    /// pass's algorithm was not timed.
    pub(crate) time: Option<f32>,
}

impl Rank {
    /// Whether a plan of this rank beats one of rank `other`: one that keeps
    /// the policy beats one that does not; then one timed throughout beats one
    /// that is not, and the lesser time wins. A tie keeps `other` (the plan built
    /// first: the engine's NCHW).
    pub(crate) fn beats(self, other: Rank) -> bool {
        if self.keeps_policy != other.keeps_policy {
            return self.keeps_policy;
        }
        match (self.time, other.time) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// A shape's plan on one of the routes.
enum Plan {
    Legacy(ConvPlan),
    Graph(graph::GraphPlan),
}

impl Plan {
    fn route(&self) -> Route {
        match self {
            Plan::Legacy(plan) => Route::Legacy(plan.layout),
            Plan::Graph(_) => Route::Graph,
        }
    }

    fn rank(&self) -> Rank {
        match self {
            Plan::Legacy(plan) => plan.rank(),
            Plan::Graph(plan) => plan.rank(),
        }
    }

    fn workspace(&self) -> usize {
        match self {
            Plan::Legacy(plan) => plan.workspace,
            Plan::Graph(plan) => plan.workspace,
        }
    }

    /// Where a pass breaks the policy's promise.
    fn warnings(&self) -> Vec<&String> {
        match self {
            Plan::Legacy(plan) => plan
                .passes()
                .iter()
                .filter_map(|p| p.warning.as_ref())
                .collect(),
            Plan::Graph(plan) => plan.warnings().collect(),
        }
    }
}

/// Scratch tensors of a shape's sizes, and a workspace, for the timing trials:
/// the trials write their outputs, so the network's buffers are never used.
/// All zeros: the trials read each other's outputs, and zeros stay finite (the
/// kernels' speed does not depend on the values).
struct Trial<T> {
    x: CudaSlice<T>,
    y: CudaSlice<T>,
    w: CudaSlice<T>,
    workspace: Option<CudaSlice<u8>>,
}

/// The cuDNN handle with its plans. cuDNN handles must not be used by two threads
/// at once, so the backend keeps this behind a mutex.
pub(crate) struct Dnn<T> {
    // Field order is drop order: the plans' descriptors, the workspace, then the
    // handle.
    plans: HashMap<ConvKey, Plan>,
    workspace: Option<CudaSlice<u8>>,
    handle: Handle,
    stream: Arc<CudaStream>,
    /// The math type the mode asks for; the searches start from it.
    math: cudnnMathType_t,
    policy: Policy,
    /// The routes each plan is built on, the fastest kept (see "Layouts").
    routes: Vec<Route>,
    /// Where the warnings of each plan built wait to be taken (printed only if
    /// the plan is used), instead of being printed at once.
    deferred: Option<HashMap<ConvKey, Vec<String>>>,
    /// `ALEXNET_CUDNN_LOG=1`: print each plan's choices to stderr.
    log: bool,
    _element: std::marker::PhantomData<T>,
}

impl Dnn<f32> {
    /// cuDNN on `stream` for f32 tensors that hold bf16 values (bf16 mode's
    /// rounded copies of its operands): NCHW, tensor-op math, under the bf16
    /// values policy (see "Choosing algorithms"), so that TF32 tensor cores
    /// compute exactly the products of the bf16 operands, summed in f32.
    pub(crate) fn for_bf16_values(stream: Arc<CudaStream>) -> Result<Dnn<f32>, DnnError> {
        Dnn::with_policy(
            stream,
            cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            Policy::Bf16Values,
            &[Route::Legacy(Layout::Nchw)],
        )
    }
}

// SAFETY: the raw cuDNN handle and descriptors make `Dnn` neither Send nor Sync
// because cuDNN forbids concurrent use of one handle. `Dnn` is only ever reached
// through the backend's `Mutex`, so one thread at a time uses it; cuDNN allows a
// handle to move between threads as long as the device context is current, which
// the backend makes sure of before every call.
unsafe impl<T> Send for Dnn<T> {}

impl<T: Element> Dnn<T> {
    /// cuDNN on `stream`, with `math` for every convolution: FMA math (fp32
    /// mode) or tensor-op math (TF32 with f32 tensors, bf16 with bf16 ones). The
    /// precision policy follows from these two. Each plan is built on every one
    /// of `routes` (at least one) and the fastest kept.
    pub(crate) fn new(
        stream: Arc<CudaStream>,
        math: cudnnMathType_t,
        algorithms: Algorithms,
        routes: &[Route],
    ) -> Result<Dnn<T>, DnnError> {
        let policy = Policy::of(T::DATA_TYPE, math, algorithms);
        Dnn::with_policy(stream, math, policy, routes)
    }

    fn with_policy(
        stream: Arc<CudaStream>,
        math: cudnnMathType_t,
        policy: Policy,
        routes: &[Route],
    ) -> Result<Dnn<T>, DnnError> {
        assert!(!routes.is_empty(), "a plan needs a route to be built on");
        Ok(Dnn {
            routes: routes.to_vec(),
            deferred: None,
            plans: HashMap::new(),
            workspace: None,
            handle: Handle::new(&stream)?,
            stream,
            math,
            policy,
            log: std::env::var_os("ALEXNET_CUDNN_LOG").is_some_and(|v| v == "1"),
            _element: std::marker::PhantomData,
        })
    }

    /// The plan for this shape, built (and its algorithms chosen) on first use.
    /// The workspace is grown here too, so a pass never allocates once its shape
    /// has been seen.
    fn prepare(&mut self, g: &ConvGeometry, n: usize) -> Result<ConvKey, DnnError> {
        let k = key(g, n);
        if !self.plans.contains_key(&k) {
            let (plan, warnings) = self.build(g, n)?;
            match self.deferred.as_mut() {
                Some(deferred) => {
                    deferred.insert(k, warnings);
                }
                None => warnings.iter().for_each(|w| eprintln!("{w}")),
            }
            let have = self.workspace.as_ref().map_or(0, |w| w.len());
            let need = plan.workspace();
            if need > have {
                // Drop the old workspace first so both never exist at once.
                self.workspace = None;
                self.workspace = Some(self.stream.alloc_zeros::<u8>(need).map_err(|e| {
                    DnnError::call(&format!("allocating {} of cuDNN workspace", bytes(need)), e)
                })?);
            }
            self.plans.insert(k, plan);
        }
        Ok(k)
    }

    /// Keeps each new plan's warnings (a pass that breaks the policy, a route
    /// that could not be planned) for [`Dnn::take_warnings`] instead of printing
    /// them: for a caller that may not use the plan.
    pub(crate) fn defer_warnings(&mut self) {
        self.deferred.get_or_insert_with(HashMap::new);
    }

    /// The warnings of this shape's plan, kept since it was built (see
    /// [`Dnn::defer_warnings`]); none the second time.
    pub(crate) fn take_warnings(&mut self, g: &ConvGeometry, n: usize) -> Vec<String> {
        let deferred = self.deferred.as_mut();
        deferred
            .and_then(|d| d.remove(&key(g, n)))
            .unwrap_or_default()
    }

    /// How the plan for this shape ranks (building it first, if this shape is
    /// new), against a plan of another kind for the same shape.
    pub(crate) fn rank(&mut self, g: &ConvGeometry, n: usize) -> Result<Rank, DnnError> {
        let k = self.prepare(g, n)?;
        Ok(self.plans[&k].rank())
    }

    /// The layout the plan for this shape runs in (building the plan first, if
    /// this shape is new): the operands must be handed over in it.
    pub(crate) fn layout(&mut self, g: &ConvGeometry, n: usize) -> Result<Layout, DnnError> {
        let k = self.prepare(g, n)?;
        Ok(self.plans[&k].route().layout())
    }

    /// The plan on each allowed route, and the fastest of them (see "Layouts").
    fn build(&self, g: &ConvGeometry, n: usize) -> Result<(Plan, Vec<String>), DnnError> {
        let mut best: Option<Plan> = None;
        let mut failures = Vec::new();
        for &route in &self.routes {
            let built = match route {
                Route::Legacy(layout) => self.build_in(layout, g, n).map(Plan::Legacy),
                Route::Graph => self.build_graph(g, n).map(Plan::Graph),
            };
            match built {
                Ok(plan) => {
                    if best.as_ref().is_none_or(|b| plan.rank().beats(b.rank())) {
                        best = Some(plan);
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", route.name())),
            }
        }
        let failed = failures.join("; ");
        match best {
            Some(plan) => {
                let mut warnings: Vec<String> = plan.warnings().into_iter().cloned().collect();
                if !failed.is_empty() {
                    // Once per shape: a layout that cannot be planned at all is
                    // worth knowing about even though the other one runs.
                    warnings.push(format!(
                        "warning: cuDNN could not plan the convolution {g:?} x {n} on every route \
                         allowed; using {}. {failed}",
                        plan.route().name()
                    ));
                }
                if self.log && self.routes.len() > 1 {
                    let time = plan.rank().time;
                    let time = time.map_or("untimed".into(), |t| format!("{t:.3} ms"));
                    eprintln!(
                        "alexnet-cuda: cuDNN plan for {g:?} x {n}: {} chosen, {time} for the three \
                         passes",
                        plan.route().name()
                    );
                }
                Ok((plan, warnings))
            }
            None => Err(DnnError(failed)),
        }
    }

    /// The plan of one shape in one layout: its descriptors and each pass's
    /// algorithm, timed.
    fn build_in(&self, layout: Layout, g: &ConvGeometry, n: usize) -> Result<ConvPlan, DnnError> {
        let x = TensorDesc::new(
            T::DATA_TYPE,
            layout,
            [n, g.input.channels, g.input.height, g.input.width],
        )?;
        let y = TensorDesc::new(
            T::DATA_TYPE,
            layout,
            [n, g.output.channels, g.output.height, g.output.width],
        )?;
        let w = FilterDesc::new(
            T::DATA_TYPE,
            layout,
            [g.output.channels, g.in_per_group(), g.kernel, g.kernel],
        )?;
        // The searches run with the mode's math type; each pass's final
        // descriptor gets the math type of the result chosen.
        let search_conv = ConvDesc::new(g, self.math)?;
        let shapes = Shapes {
            handle: &self.handle,
            x: &x,
            y: &y,
            w: &w,
        };

        let mut log = String::new();
        let mut trial = self.trial(layout, g, n, &shapes, &search_conv, &mut log)?;
        let mut choose =
            |pass| self.choose(pass, g, n, &shapes, &search_conv, &mut trial, &mut log);
        let forward = choose(Pass::Forward)?;
        let backward_data = choose(Pass::BackwardData)?;
        let backward_filter = choose(Pass::BackwardFilter)?;
        // The scratch tensors go back in stream order, after the trials.
        drop(trial);
        let workspace = forward
            .workspace
            .max(backward_data.workspace)
            .max(backward_filter.workspace);
        if self.log {
            let _ = writeln!(log, "  plan workspace {}", bytes(workspace));
            eprint!("{log}");
        }
        Ok(ConvPlan {
            layout,
            x,
            y,
            w,
            forward,
            backward_data,
            backward_filter,
            workspace,
        })
    }

    /// Allocates the timing trials' scratch tensors and workspace (as much as the
    /// largest algorithm the policy does not exclude outright needs, up to
    /// [`TIMING_WORKSPACE_CAP`]), and starts the plan's log with the shape.
    fn trial(
        &self,
        layout: Layout,
        g: &ConvGeometry,
        n: usize,
        shapes: &Shapes<'_>,
        conv: &ConvDesc,
        log: &mut String,
    ) -> Result<Trial<T>, DnnError> {
        let mut want = 0;
        for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
            for algo in Algo::all(pass) {
                if self.policy.excludes_algo(algo) {
                    continue;
                }
                // An algorithm that does not apply to this shape answers with an
                // error status here; it needs no workspace then.
                if let Ok(size) = shapes.workspace_size(conv, algo) {
                    want = want.max(size);
                }
            }
        }
        let want = want.min(TIMING_WORKSPACE_CAP);
        let (trial, note) = self.scratch(g, n, want)?;
        if self.log {
            let given = trial.workspace.as_ref().map_or(0, |w| w.len());
            let data = if T::DATA_TYPE == cudnnDataType_t::CUDNN_DATA_BFLOAT16 {
                "bf16"
            } else {
                "f32"
            };
            let _ = writeln!(
                log,
                "alexnet-cuda: cuDNN plan: {}, {data} tensors in {}; policy {}; timing workspace \
                 {}{note}",
                shape_line(g, n),
                layout.name(),
                self.policy.describe(),
                bytes(given),
            );
        }
        Ok(trial)
    }

    /// Zeroed scratch tensors of the shape's sizes and, if it can be had, `want`
    /// bytes of workspace (else none, and a note saying why), done on the stream.
    fn scratch(
        &self,
        g: &ConvGeometry,
        n: usize,
        want: usize,
    ) -> Result<(Trial<T>, String), DnnError> {
        let alloc = |len: usize, what: &str| {
            self.stream.alloc_zeros::<T>(len).map_err(|e| {
                DnnError::call(&format!("allocating the {what} for cuDNN's timings"), e)
            })
        };
        let x = alloc(n * g.input.len(), "input")?;
        let y = alloc(n * g.output.len(), "output")?;
        let w = alloc(g.weight_len(), "weights")?;
        // Without workspace the trials still time every algorithm that needs none.
        let (workspace, note) = if want == 0 {
            (None, String::new())
        } else {
            match self.stream.alloc_zeros::<u8>(want) {
                Ok(ws) => (Some(ws), String::new()),
                Err(e) => (None, format!(" (allocating {} failed: {e})", bytes(want))),
            }
        };
        // The allocations and zero fills are queued on the stream; the trials are
        // to see them done whichever stream cuDNN times on.
        self.stream
            .synchronize()
            .map_err(|e| DnnError::call("synchronising before cuDNN's timings", e))?;
        Ok((Trial { x, y, w, workspace }, note))
    }

    /// Times (or, failing that, ranks) one pass's algorithms, applies the policy
    /// and builds the pass's plan.
    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        pass: Pass,
        g: &ConvGeometry,
        n: usize,
        shapes: &Shapes<'_>,
        search_conv: &ConvDesc,
        trial: &mut Trial<T>,
        log: &mut String,
    ) -> Result<PassPlan, DnnError> {
        let judged = self.judge(pass, g, n, shapes, search_conv, trial, log)?;
        let chosen = judged.results[judged.chosen.expect("checked above")];
        let algo = Algo::new(pass, chosen.algo).expect("the policy admits known algorithms only");
        let math = self.policy.run_math(
            math_type(chosen.math_type).expect("the policy admits known math types only"),
        );
        let conv = ConvDesc::new(g, math)?;
        // cuDNN's own figure for the algorithm under its final math type, in case
        // it differs from what the search reported.
        let (workspace, note) = match shapes.workspace_size(&conv, algo) {
            Ok(size) => (size.max(chosen.memory), String::new()),
            Err(e) => (
                chosen.memory,
                format!(" (workspace query failed: {e}; using the search's figure)"),
            ),
        };
        if self.log {
            log_choice(log, pass, &judged, &chosen, algo, workspace, &note);
        }
        let time = (judged.ranking == Ranking::Timed).then_some(chosen.time);
        Ok(PassPlan {
            algo,
            conv,
            workspace,
            time,
            warning: judged.warning,
        })
    }

    /// The pass's algorithms timed (or ranked by cuDNN's heuristics where timing
    /// fails or admits none) and judged by the policy; an error where none passes.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        pass: Pass,
        g: &ConvGeometry,
        n: usize,
        shapes: &Shapes<'_>,
        search_conv: &ConvDesc,
        trial: &mut Trial<T>,
        log: &mut String,
    ) -> Result<Judged, DnnError> {
        let pass_name = pass.name();
        let timed = match shapes.find(&self.stream, pass, search_conv, trial) {
            Ok(results) => Some(Judged::new(self.policy, pass, results, Ranking::Timed)),
            Err(e) => {
                if self.log {
                    let _ = writeln!(
                        log,
                        "  {pass_name}: timing failed ({e}); using cuDNN's heuristic ranking"
                    );
                }
                None
            }
        };
        Ok(match timed {
            Some(t) if t.chosen.is_some() => t,
            timed => {
                // Nothing timed may be used (or the timing failed): cuDNN's
                // heuristics may still know an algorithm the trials could not run,
                // e.g. one needing more workspace than they were given.
                let heuristic = shapes
                    .heuristics(pass, search_conv)
                    .map_err(|e| DnnError::call(&format!("cuDNN's {pass_name} heuristics"), e))?;
                let mut heuristic = Judged::new(self.policy, pass, heuristic, Ranking::Heuristic);
                if heuristic.chosen.is_none() && self.policy == Policy::Bf16 {
                    // bf16 asks for deterministic backward passes for precision's
                    // sake only: rather than stop, run one that is not, and say so.
                    let relaxed = match &timed {
                        Some(t) => {
                            Judged::new(Policy::Tf32, pass, t.results.clone(), Ranking::Timed)
                        }
                        None => Judged::new(
                            Policy::Tf32,
                            pass,
                            heuristic.results.clone(),
                            Ranking::Heuristic,
                        ),
                    };
                    if let Some(chosen) = relaxed.chosen {
                        let warning = format!(
                            "warning: no deterministic cuDNN {pass_name} algorithm for the bf16 \
                             convolution {g:?} x {n}; using algorithm {}, whose sums may round \
                             partial results to bf16",
                            relaxed.results[chosen].algo
                        );
                        heuristic = Judged {
                            warning: Some(warning),
                            ..relaxed
                        };
                    }
                }
                if heuristic.chosen.is_none() {
                    return Err(DnnError(format!(
                        "no cuDNN {pass_name} algorithm for the convolution {g:?} x {n} ({} \
                         tensors) passes the precision policy ({}). Timed: {}. Heuristics: {}.",
                        if self.policy == Policy::Bf16 {
                            "bf16"
                        } else {
                            "f32"
                        },
                        self.policy.describe(),
                        timed.map_or_else(|| "failed".into(), |t| t.list(pass)),
                        heuristic.list(pass),
                    )));
                }
                if self.log
                    && let Some(timed) = &timed
                {
                    let _ = writeln!(
                        log,
                        "  {pass_name}: no timed algorithm passed the policy ({}); using cuDNN's \
                         heuristic ranking",
                        timed.list(pass)
                    );
                }
                heuristic
            }
        })
    }

    /// `y = conv(x, w)` over `n` images (overwrites `y`; the bias is added apart).
    pub(crate) fn forward(
        &mut self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<T>,
        w: &CudaSlice<T>,
        y: &mut CudaSlice<T>,
    ) -> Result<(), DnnError> {
        let k = self.prepare(g, n)?;
        let stream = &*self.stream;
        let (x_ptr, _x) = x.device_ptr(stream);
        let (w_ptr, _w) = w.device_ptr(stream);
        let (y_ptr, _y) = y.device_ptr_mut(stream);
        let (ws, ws_len, _ws) = workspace_arg(&mut self.workspace, stream);
        let plan = match &self.plans[&k] {
            Plan::Legacy(plan) => plan,
            // SAFETY: as below, for the graph plan's tensors.
            Plan::Graph(plan) => unsafe {
                return plan.execute(Pass::Forward, &self.handle, [x_ptr, w_ptr, y_ptr], ws);
            },
        };
        let Algo::Forward(algo) = plan.forward.algo else {
            unreachable!("the forward plan holds a forward algorithm")
        };
        let (alpha, beta) = (
            T::ONE.into_scaling_parameter(),
            T::ZERO.into_scaling_parameter(),
        );
        // SAFETY: the descriptors were built from this geometry and batch, the
        // engine sizes every buffer for at least `n` images of it, and the
        // workspace is at least as large as the plan asked for.
        unsafe {
            result::convolution_forward(
                self.handle.raw,
                (&raw const alpha).cast(),
                plan.x.0,
                x_ptr as *const c_void,
                plan.w.0,
                w_ptr as *const c_void,
                plan.forward.conv.0,
                algo,
                ws,
                ws_len,
                (&raw const beta).cast(),
                plan.y.0,
                y_ptr as *mut c_void,
            )
        }
        .map_err(failed("cudnnConvolutionForward"))
    }

    /// `dx = conv_transpose(dy, w)` (overwrites `dx`).
    pub(crate) fn backward_data(
        &mut self,
        g: &ConvGeometry,
        n: usize,
        w: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
    ) -> Result<(), DnnError> {
        let k = self.prepare(g, n)?;
        let stream = &*self.stream;
        let (w_ptr, _w) = w.device_ptr(stream);
        let (dy_ptr, _dy) = dy.device_ptr(stream);
        let (dx_ptr, _dx) = dx.device_ptr_mut(stream);
        let (ws, ws_len, _ws) = workspace_arg(&mut self.workspace, stream);
        let plan = match &self.plans[&k] {
            Plan::Legacy(plan) => plan,
            // SAFETY: as in `forward`.
            Plan::Graph(plan) => unsafe {
                let tensors = [dx_ptr, w_ptr, dy_ptr];
                return plan.execute(Pass::BackwardData, &self.handle, tensors, ws);
            },
        };
        let Algo::BackwardData(algo) = plan.backward_data.algo else {
            unreachable!("the backward-data plan holds a backward-data algorithm")
        };
        let (alpha, beta) = (
            T::ONE.into_scaling_parameter(),
            T::ZERO.into_scaling_parameter(),
        );
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_data(
                self.handle.raw,
                (&raw const alpha).cast(),
                plan.w.0,
                w_ptr as *const c_void,
                plan.y.0,
                dy_ptr as *const c_void,
                plan.backward_data.conv.0,
                algo,
                ws,
                ws_len,
                (&raw const beta).cast(),
                plan.x.0,
                dx_ptr as *mut c_void,
            )
        }
        .map_err(failed("cudnnConvolutionBackwardData"))
    }

    /// `dw += correlate(x, dy)` when `accumulate` (beta = 1 keeps what `dw` held,
    /// as the engine's convention, parameter gradients accumulate, asks), else
    /// `dw = correlate(x, dy)`.
    pub(crate) fn backward_filter(
        &mut self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        dw: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> Result<(), DnnError> {
        let k = self.prepare(g, n)?;
        let stream = &*self.stream;
        let (x_ptr, _x) = x.device_ptr(stream);
        let (dy_ptr, _dy) = dy.device_ptr(stream);
        let (dw_ptr, _dw) = dw.device_ptr_mut(stream);
        let (ws, ws_len, _ws) = workspace_arg(&mut self.workspace, stream);
        let plan = match &self.plans[&k] {
            Plan::Legacy(plan) => plan,
            Plan::Graph(_) if accumulate => {
                return Err(DnnError(
                    "graph API plans overwrite the weight gradient; it is accumulated apart".into(),
                ));
            }
            // SAFETY: as in `forward`.
            Plan::Graph(plan) => unsafe {
                let tensors = [x_ptr, dw_ptr, dy_ptr];
                return plan.execute(Pass::BackwardFilter, &self.handle, tensors, ws);
            },
        };
        let Algo::BackwardFilter(algo) = plan.backward_filter.algo else {
            unreachable!("the backward-filter plan holds a backward-filter algorithm")
        };
        let alpha = T::ONE.into_scaling_parameter();
        let beta = if accumulate { T::ONE } else { T::ZERO }.into_scaling_parameter();
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_filter(
                self.handle.raw,
                (&raw const alpha).cast(),
                plan.x.0,
                x_ptr as *const c_void,
                plan.y.0,
                dy_ptr as *const c_void,
                plan.backward_filter.conv.0,
                algo,
                ws,
                ws_len,
                (&raw const beta).cast(),
                plan.w.0,
                dw_ptr as *mut c_void,
            )
        }
        .map_err(failed("cudnnConvolutionBackwardFilter"))
    }
}

/// A workspace's pointer and size for a cuDNN call (null and 0 when there is
/// none), with the guard cudarc's pointer access hands out.
fn workspace_arg<'a>(
    workspace: &'a mut Option<CudaSlice<u8>>,
    stream: &'a CudaStream,
) -> (*mut c_void, usize, Option<SyncOnDrop<'a>>) {
    match workspace {
        Some(ws) => {
            let len = ws.len();
            let (ptr, guard) = ws.device_ptr_mut(stream);
            (ptr as *mut c_void, len, Some(guard))
        }
        None => (std::ptr::null_mut(), 0, None),
    }
}

/// A shape's descriptors with the handle: what cuDNN's queries take.
struct Shapes<'a> {
    handle: &'a Handle,
    x: &'a TensorDesc,
    y: &'a TensorDesc,
    w: &'a FilterDesc,
}

impl Shapes<'_> {
    /// Bytes of workspace `algo` needs under `conv`'s math type.
    fn workspace_size(&self, conv: &ConvDesc, algo: Algo) -> Result<usize, CudnnError> {
        let (h, x, y, w, c) = (self.handle.raw, self.x.0, self.y.0, self.w.0, conv.0);
        let mut size = 0usize;
        // SAFETY: live handle and descriptors; `size` is a valid out-pointer.
        let status = unsafe {
            match algo {
                Algo::Forward(a) => {
                    sys::cudnnGetConvolutionForwardWorkspaceSize(h, x, w, c, y, a, &mut size)
                }
                Algo::BackwardData(a) => {
                    sys::cudnnGetConvolutionBackwardDataWorkspaceSize(h, w, y, c, x, a, &mut size)
                }
                Algo::BackwardFilter(a) => {
                    sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(h, x, y, c, w, a, &mut size)
                }
            }
        };
        status.result()?;
        Ok(size)
    }

    /// How many results a search of `pass` may return (cuDNN's count, which
    /// includes tensor-op and other variants of one algorithm).
    fn max_results(&self, pass: Pass) -> Result<usize, CudnnError> {
        let mut count: c_int = 0;
        // SAFETY: a live handle; `count` is a valid out-pointer.
        let status = unsafe {
            match pass {
                Pass::Forward => {
                    sys::cudnnGetConvolutionForwardAlgorithmMaxCount(self.handle.raw, &mut count)
                }
                Pass::BackwardData => sys::cudnnGetConvolutionBackwardDataAlgorithmMaxCount(
                    self.handle.raw,
                    &mut count,
                ),
                Pass::BackwardFilter => sys::cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(
                    self.handle.raw,
                    &mut count,
                ),
            }
        };
        status.result()?;
        // Room for a tensor-op and a plain variant of every algorithm at least.
        let known = Algo::all(pass).len() * 2;
        Ok(usize::try_from(count).unwrap_or(0).max(known))
    }

    /// cuDNN's timed trial of every algorithm of `pass` (`cudnnFind*AlgorithmEx`)
    /// on the scratch tensors, which it overwrites.
    fn find<T: Element>(
        &self,
        stream: &CudaStream,
        pass: Pass,
        conv: &ConvDesc,
        trial: &mut Trial<T>,
    ) -> Result<Vec<Perf>, CudnnError> {
        let max = self.max_results(pass)?;
        let mut results = vec![Perf::default(); max];
        let mut returned: c_int = 0;
        let requested = c_int::try_from(max).unwrap_or(c_int::MAX);
        let (h, xd, yd, wd, c) = (self.handle.raw, self.x.0, self.y.0, self.w.0, conv.0);
        let (x, _x) = trial.x.device_ptr_mut(stream);
        let (y, _y) = trial.y.device_ptr_mut(stream);
        let (w, _w) = trial.w.device_ptr_mut(stream);
        let (ws, ws_len, _ws) = workspace_arg(&mut trial.workspace, stream);
        let (x, y, w) = (x as *mut c_void, y as *mut c_void, w as *mut c_void);
        let out = results.as_mut_ptr();
        // SAFETY: live handle and descriptors; the scratch tensors have exactly
        // the descriptors' sizes and the workspace its stated length; `results`
        // holds `requested` entries laid out as cuDNN's perf structs (checked at
        // compile time above).
        let status = unsafe {
            match pass {
                Pass::Forward => sys::cudnnFindConvolutionForwardAlgorithmEx(
                    h,
                    xd,
                    x,
                    wd,
                    w,
                    c,
                    yd,
                    y,
                    requested,
                    &mut returned,
                    out.cast(),
                    ws,
                    ws_len,
                ),
                Pass::BackwardData => sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                    h,
                    wd,
                    w,
                    yd,
                    y,
                    c,
                    xd,
                    x,
                    requested,
                    &mut returned,
                    out.cast(),
                    ws,
                    ws_len,
                ),
                Pass::BackwardFilter => sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                    h,
                    xd,
                    x,
                    yd,
                    y,
                    c,
                    wd,
                    w,
                    requested,
                    &mut returned,
                    out.cast(),
                    ws,
                    ws_len,
                ),
            }
        };
        status.result()?;
        results.truncate(usize::try_from(returned).unwrap_or(0).min(max));
        Ok(results)
    }

    /// cuDNN's heuristic ranking of the algorithms of `pass` (the v7 queries),
    /// best first; nothing is run.
    fn heuristics(&self, pass: Pass, conv: &ConvDesc) -> Result<Vec<Perf>, CudnnError> {
        let max = self.max_results(pass)?;
        let mut results = vec![Perf::default(); max];
        let mut returned: c_int = 0;
        let requested = c_int::try_from(max).unwrap_or(c_int::MAX);
        let (h, x, y, w, c) = (self.handle.raw, self.x.0, self.y.0, self.w.0, conv.0);
        let out = results.as_mut_ptr();
        // SAFETY: live handle and descriptors; `results` holds `requested`
        // entries laid out as cuDNN's perf structs.
        let status = unsafe {
            match pass {
                Pass::Forward => sys::cudnnGetConvolutionForwardAlgorithm_v7(
                    h,
                    x,
                    w,
                    c,
                    y,
                    requested,
                    &mut returned,
                    out.cast(),
                ),
                Pass::BackwardData => sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                    h,
                    w,
                    y,
                    c,
                    x,
                    requested,
                    &mut returned,
                    out.cast(),
                ),
                Pass::BackwardFilter => sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    h,
                    x,
                    y,
                    c,
                    w,
                    requested,
                    &mut returned,
                    out.cast(),
                ),
            }
        };
        status.result()?;
        results.truncate(usize::try_from(returned).unwrap_or(0).min(max));
        Ok(results)
    }
}

/// A convolution shape for the log: "n=128 c=3 h=224 w=224 -> k=96 55x55,
/// kernel 11 stride 4 pad 2 groups 1".
fn shape_line(g: &ConvGeometry, n: usize) -> String {
    format!(
        "n={n} c={} h={} w={} -> k={} {}x{}, kernel {} stride {} pad {} groups {}",
        g.input.channels,
        g.input.height,
        g.input.width,
        g.output.channels,
        g.output.height,
        g.output.width,
        g.kernel,
        g.stride,
        g.pad,
        g.groups,
    )
}

/// The cuDNN library's version, as `major.minor.patch`.
pub(crate) fn version() -> String {
    let v = cudarc::cudnn::result::get_version();
    // cuDNN 9 encodes major * 10000 + minor * 100 + patch; cuDNN 8 used 1000 and 100.
    if v >= 90000 {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, v / 100 % 10, v % 100)
    }
}

/// Writes the chosen algorithm of a pass, and those passed over, to the log.
fn log_choice(
    log: &mut String,
    pass: Pass,
    judged: &Judged,
    chosen: &Perf,
    algo: Algo,
    workspace: usize,
    note: &str,
) {
    let pass_name = pass.name();
    let how = match judged.ranking {
        Ranking::Timed => format!("{:.3} ms", chosen.time),
        Ranking::Heuristic => "untimed, heuristic".into(),
    };
    let _ = writeln!(
        log,
        "  {pass_name}: {} ({}, {how}), workspace {}{note}",
        algo.name(),
        math_name(chosen.math_type),
        bytes(workspace),
    );
    let (ahead, others) = judged.passed_over();
    let word = match judged.ranking {
        Ranking::Timed => "faster",
        Ranking::Heuristic => "ranked higher",
    };
    for (p, why) in ahead {
        let time = match judged.ranking {
            Ranking::Timed => format!(", {:.3} ms", p.time),
            Ranking::Heuristic => String::new(),
        };
        let _ = writeln!(
            log,
            "    rejected, {word}: {} ({}{time}): {why}",
            algo_name(pass, p.algo),
            math_name(p.math_type),
        );
    }
    if others > 0 {
        let _ = writeln!(
            log,
            "    ({others} slower, lower-ranked or failed not listed)"
        );
    }
}

/// cuDNN without a GPU, for the tests of descriptors: cuDNN builds and checks
/// them on the host.
#[cfg(test)]
mod cudnn_on_cpu {
    use alexnet::layers::{ConvGeometry, Shape};

    /// Opens cuDNN's library by the path `ALEXNET_CUDNN_LIB` names
    /// (tools/ci/fetch_cudnn.sh) unless it is on the loader's path already:
    /// once open, cudarc's calls by its usual name reach it. Where it is
    /// nowhere, says the test is skipped and returns false (or fails, with
    /// ALEXNET_REQUIRE_CUDNN=1).
    pub(super) fn open() -> bool {
        // SAFETY: only tries to open the library, as cudarc would.
        if unsafe { cudarc::cudnn::sys::is_culib_present() } {
            return true;
        }
        let Some(path) = std::env::var_os("ALEXNET_CUDNN_LIB") else {
            assert!(
                std::env::var_os("ALEXNET_REQUIRE_CUDNN").is_none_or(|v| v != "1"),
                "ALEXNET_REQUIRE_CUDNN=1 but cuDNN is not found (set ALEXNET_CUDNN_LIB)"
            );
            println!("skipped: cuDNN not found (tools/ci/fetch_cudnn.sh and ALEXNET_CUDNN_LIB)");
            return false;
        };
        // SAFETY: cuDNN's initialisers have no preconditions; the library stays
        // open for the rest of the process, as cudarc keeps its own.
        match unsafe { libloading::Library::new(&path) } {
            Ok(library) => {
                std::mem::forget(library);
                true
            }
            Err(e) => panic!("ALEXNET_CUDNN_LIB={}: {e}", path.to_string_lossy()),
        }
    }

    /// [`open`], and cuBLASLt, which some of cuDNN's engines open as their
    /// execution plans are built (cuDNN aborts the process where it cannot):
    /// from the loader's path, else from beside `ALEXNET_CUDNN_LIB` (cuDNN's
    /// own opening by name then finds the one already open). Where it is
    /// nowhere, says the test is skipped and returns false (or fails, with
    /// ALEXNET_REQUIRE_CUDNN=1).
    pub(super) fn open_with_cublaslt() -> bool {
        const NAME: &str = "libcublasLt.so.13";
        if !open() {
            return false;
        }
        let keep = |library: libloading::Library| std::mem::forget(library);
        // SAFETY (both): cuBLASLt's initialisers have no preconditions; it
        // stays open for the rest of the process, as cuDNN would keep it.
        if let Ok(library) = unsafe { libloading::Library::new(NAME) } {
            keep(library);
            return true;
        }
        let beside = std::env::var_os("ALEXNET_CUDNN_LIB")
            .map(std::path::PathBuf::from)
            .and_then(|cudnn| Some(cudnn.parent()?.join(NAME)))
            .filter(|path| path.exists());
        let Some(path) = beside else {
            assert!(
                std::env::var_os("ALEXNET_REQUIRE_CUDNN").is_none_or(|v| v != "1"),
                "ALEXNET_REQUIRE_CUDNN=1 but {NAME} is neither on the loader's path nor beside \
                 ALEXNET_CUDNN_LIB (tools/ci/fetch_cudnn.sh puts it there)"
            );
            println!("skipped: {NAME} not found (tools/ci/fetch_cudnn.sh)");
            return false;
        };
        match unsafe { libloading::Library::new(&path) } {
            Ok(library) => {
                keep(library);
                true
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }

    /// The paper's five convolutions (the towers as groups) and the GPU tests'
    /// shapes.
    pub(super) fn shapes() -> Vec<ConvGeometry> {
        let geometry = |[c, h, w]: [usize; 3], out, k, stride, pad, groups| {
            ConvGeometry::new(Shape::new(c, h, w), out, k, stride, pad, groups)
                .expect("a geometry that fits")
        };
        vec![
            geometry([3, 224, 224], 96, 11, 4, 2, 1),
            geometry([96, 27, 27], 256, 5, 1, 2, 2),
            geometry([256, 13, 13], 384, 3, 1, 1, 1),
            geometry([384, 13, 13], 384, 3, 1, 1, 2),
            geometry([384, 13, 13], 256, 3, 1, 1, 2),
            geometry([16, 13, 13], 32, 3, 1, 1, 2),
            geometry([40, 9, 9], 48, 3, 1, 1, 2),
        ]
    }
}

#[cfg(test)]
mod tests {
    //! The policy and the ranking are plain logic over cuDNN's reports, checked
    //! here without a GPU.

    use super::*;

    const FMA: u32 = cudnnMathType_t::CUDNN_FMA_MATH as u32;
    const DEFAULT: u32 = cudnnMathType_t::CUDNN_DEFAULT_MATH as u32;
    const TENSOR_OP: u32 = cudnnMathType_t::CUDNN_TENSOR_OP_MATH as u32;
    const CONVERSION: u32 = cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION as u32;
    const DETERMINISTIC: u32 = cudnnDeterminism_t::CUDNN_DETERMINISTIC as u32;
    const NOT_SUPPORTED: u32 = 3000;

    fn rank(keeps_policy: bool, time: Option<f32>) -> Rank {
        Rank { keeps_policy, time }
    }

    #[test]
    fn a_layout_wins_by_keeping_the_policy_then_by_being_timed_then_by_time() {
        let (fast, slow) = (Some(1.0), Some(2.0));
        assert!(rank(true, fast).beats(rank(true, slow)));
        assert!(!rank(true, slow).beats(rank(true, fast)));
        // A tie keeps the plan built first.
        assert!(!rank(true, fast).beats(rank(true, fast)));
        // A faster plan that breaks bf16's determinism loses to a slower one.
        assert!(!rank(false, fast).beats(rank(true, slow)));
        assert!(rank(true, slow).beats(rank(false, fast)));
        // Timed throughout beats partly untimed, whatever the time.
        assert!(rank(true, slow).beats(rank(true, None)));
        assert!(!rank(true, None).beats(rank(true, slow)));
        assert!(!rank(true, None).beats(rank(true, None)));
        assert!(rank(false, fast).beats(rank(false, slow)));
    }

    fn perf(algo: u32, math_type: u32, time: f32) -> Perf {
        Perf {
            algo,
            status: SUCCESS,
            time,
            memory: 0,
            determinism: DETERMINISTIC,
            math_type,
            reserved: [0; 3],
        }
    }

    /// The algorithm's number, as cuDNN reports it.
    fn number(algo: Algo) -> u32 {
        match algo {
            Algo::Forward(a) => a as u32,
            Algo::BackwardData(a) => a as u32,
            Algo::BackwardFilter(a) => a as u32,
        }
    }

    #[test]
    fn algorithm_names_are_short() {
        assert_eq!(algo_name(Pass::Forward, 1), "IMPLICIT_PRECOMP_GEMM");
        assert_eq!(algo_name(Pass::BackwardData, 0), "ALGO_0");
        assert_eq!(algo_name(Pass::BackwardFilter, 3), "ALGO_3");
        assert_eq!(algo_name(Pass::BackwardFilter, 6), "FFT_TILING");
        assert_eq!(algo_name(Pass::BackwardFilter, 7), "algorithm 7");
    }

    #[test]
    fn policies_follow_the_modes() {
        use cudnnDataType_t::{CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT};
        use cudnnMathType_t::{CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
        assert_eq!(
            Policy::of(CUDNN_DATA_FLOAT, CUDNN_FMA_MATH, Algorithms::Exact),
            Policy::Fp32
        );
        assert_eq!(
            Policy::of(CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, Algorithms::Exact),
            Policy::Tf32
        );
        assert_eq!(
            Policy::of(CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_OP_MATH, Algorithms::Exact),
            Policy::Bf16
        );
        assert_eq!(f32::DATA_TYPE, CUDNN_DATA_FLOAT);
        assert_eq!(Bf16::DATA_TYPE, CUDNN_DATA_BFLOAT16);
    }

    #[test]
    fn fp32_excludes_transforms_and_tensor_ops() {
        let p = Policy::Fp32;
        for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
            for algo in Algo::all(pass) {
                let number = number(algo);
                let name = algo.name();
                let transform = ["FFT", "FFT_TILING", "WINOGRAD_NONFUSED"].contains(&name.as_str());
                assert_eq!(algo.is_transform(), transform, "{pass:?} {name}");
                assert_eq!(
                    p.rejection(pass, &perf(number, FMA, 1.0)).is_some(),
                    transform
                );
                // DEFAULT passes (and then runs under FMA); tensor-op math never does.
                assert_eq!(
                    p.rejection(pass, &perf(number, DEFAULT, 1.0)).is_some(),
                    transform
                );
                assert!(p.rejection(pass, &perf(number, TENSOR_OP, 1.0)).is_some());
            }
        }
        // Plain Winograd stays.
        let winograd = FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD as u32;
        assert!(
            p.rejection(Pass::Forward, &perf(winograd, FMA, 1.0))
                .is_none()
        );
    }

    #[test]
    fn bf16_excludes_non_deterministic_backward_passes() {
        let p = Policy::Bf16;
        let filter_0 = BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 as u32;
        let filter_1 = BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 as u32;
        let filter_3 = BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 as u32;
        let data_0 = BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 as u32;
        let data_1 = BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 as u32;
        // Documented atomics are out even when reported deterministic.
        for (pass, algo) in [
            (Pass::BackwardFilter, filter_0),
            (Pass::BackwardFilter, filter_3),
            (Pass::BackwardData, data_0),
        ] {
            assert!(p.rejection(pass, &perf(algo, TENSOR_OP, 1.0)).is_some());
        }
        assert!(
            p.rejection(Pass::BackwardFilter, &perf(filter_1, TENSOR_OP, 1.0))
                .is_none()
        );
        assert!(
            p.rejection(Pass::BackwardData, &perf(data_1, DEFAULT, 1.0))
                .is_none()
        );
        // A reported non-deterministic result is out whatever its algorithm.
        let mut reported = perf(filter_1, TENSOR_OP, 1.0);
        reported.determinism = NON_DETERMINISTIC;
        assert!(p.rejection(Pass::BackwardFilter, &reported).is_some());
        // The forward pass is not concerned.
        let mut forward = perf(0, TENSOR_OP, 1.0);
        forward.determinism = NON_DETERMINISTIC;
        assert!(p.rejection(Pass::Forward, &forward).is_none());
    }

    #[test]
    fn tf32_allows_all_but_down_conversion() {
        let p = Policy::Tf32;
        let fft = BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT as u32;
        let mut atomics = perf(0, TENSOR_OP, 1.0);
        atomics.determinism = NON_DETERMINISTIC;
        assert!(p.rejection(Pass::BackwardFilter, &atomics).is_none());
        assert!(
            p.rejection(Pass::BackwardFilter, &perf(fft, DEFAULT, 1.0))
                .is_none()
        );
        assert!(
            p.rejection(Pass::BackwardFilter, &perf(fft, FMA, 1.0))
                .is_none()
        );
        assert!(
            p.rejection(Pass::Forward, &perf(1, CONVERSION, 1.0))
                .is_some()
        );
    }

    #[test]
    fn bf16_values_run_only_direct_products_on_tensor_cores() {
        let p = Policy::Bf16Values;
        for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
            for algo in Algo::all(pass) {
                let number = number(algo);
                let name = algo.name();
                // Every transform, fused Winograd too: its products are of
                // transformed operands, no longer bf16 values.
                let transforms = name.contains("FFT") || name.contains("WINOGRAD");
                assert_eq!(p.excludes_algo(algo), transforms, "{pass:?} {name}");
                for math in [TENSOR_OP, DEFAULT, FMA] {
                    assert_eq!(
                        p.rejection(pass, &perf(number, math, 1.0)).is_some(),
                        transforms,
                        "{pass:?} {name} math {math}"
                    );
                }
                // A 16-bit conversion could leave bf16's exponent range (fp16).
                assert!(p.rejection(pass, &perf(number, CONVERSION, 1.0)).is_some());
            }
        }
        // Non-deterministic sums are f32 sums here: allowed.
        let mut unordered = perf(0, TENSOR_OP, 1.0);
        unordered.determinism = NON_DETERMINISTIC;
        assert!(p.rejection(Pass::BackwardFilter, &unordered).is_none());
        let tensor_op = math_type(TENSOR_OP).unwrap();
        assert_eq!(p.run_math(tensor_op), tensor_op);
    }

    #[test]
    fn failures_and_unknown_values_are_rejected_everywhere() {
        for p in [Policy::Fp32, Policy::Tf32, Policy::Bf16, Policy::Bf16Values] {
            let mut failed = perf(1, FMA, 1.0);
            failed.status = NOT_SUPPORTED;
            assert!(p.rejection(Pass::Forward, &failed).is_some());
            assert!(p.rejection(Pass::Forward, &perf(99, FMA, 1.0)).is_some());
            assert!(p.rejection(Pass::Forward, &perf(1, 99, 1.0)).is_some());
        }
    }

    #[test]
    fn fp32_runs_under_fma_whatever_was_reported() {
        let default = math_type(DEFAULT).unwrap();
        assert_eq!(
            Policy::Fp32.run_math(default),
            cudnnMathType_t::CUDNN_FMA_MATH
        );
        assert_eq!(Policy::Tf32.run_math(default), default);
    }

    #[test]
    fn timed_ranking_takes_the_fastest_allowed() {
        let fft = FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT as u32;
        let mut failed = perf(2, FMA, 0.01);
        failed.status = NOT_SUPPORTED;
        // Out of order on purpose: the minimum is taken, not the first.
        let results = vec![
            perf(fft, FMA, 0.5),
            failed,
            perf(0, FMA, 3.0),
            perf(1, FMA, 2.0),
            perf(3, TENSOR_OP, 1.0),
        ];
        let judged = Judged::new(Policy::Fp32, Pass::Forward, results, Ranking::Timed);
        assert_eq!(judged.chosen, Some(3));
        let (ahead, others) = judged.passed_over();
        let ahead: Vec<u32> = ahead.iter().map(|(p, _)| p.algo).collect();
        assert_eq!(ahead, [fft, 3]);
        // The failed one, however "fast".
        assert_eq!(others, 1);
    }

    #[test]
    fn heuristic_ranking_takes_the_first_allowed() {
        let results = vec![
            perf(0, TENSOR_OP, -1.0),
            perf(3, TENSOR_OP, -1.0),
            perf(1, TENSOR_OP, -1.0),
        ];
        let judged = Judged::new(
            Policy::Bf16,
            Pass::BackwardFilter,
            results,
            Ranking::Heuristic,
        );
        assert_eq!(judged.chosen, Some(2));
        assert_eq!(judged.passed_over().0.len(), 2);
    }

    /// The legacy route's descriptors, in both layouts and both element types,
    /// describe each shape as the engine sees it: cuDNN's own output size for
    /// the input, the filter (in / groups channels) and the convolution (with
    /// its group count) is the engine's. Needs cuDNN's library, not a GPU.
    #[test]
    fn cudnn_agrees_with_the_engine_on_every_legacy_shape() {
        if !super::cudnn_on_cpu::open() {
            return;
        }
        let n = 4;
        for g in super::cudnn_on_cpu::shapes() {
            for layout in [Layout::Nchw, Layout::Nhwc] {
                for data_type in [
                    cudnnDataType_t::CUDNN_DATA_FLOAT,
                    cudnnDataType_t::CUDNN_DATA_BFLOAT16,
                ] {
                    let x = TensorDesc::new(
                        data_type,
                        layout,
                        [n, g.input.channels, g.input.height, g.input.width],
                    )
                    .unwrap();
                    let w = FilterDesc::new(
                        data_type,
                        layout,
                        [g.output.channels, g.in_per_group(), g.kernel, g.kernel],
                    )
                    .unwrap();
                    let conv = ConvDesc::new(&g, cudnnMathType_t::CUDNN_TENSOR_OP_MATH).unwrap();
                    let mut dims: [c_int; 4] = [0; 4];
                    let [dn, dc, dh, dw] = &mut dims;
                    // SAFETY: live descriptors and four valid out-pointers.
                    unsafe {
                        sys::cudnnGetConvolution2dForwardOutputDim(conv.0, x.0, w.0, dn, dc, dh, dw)
                    }
                    .result()
                    .unwrap_or_else(|e| panic!("{g:?} in {layout:?}, {data_type:?}: {e}"));
                    let want = [n, g.output.channels, g.output.height, g.output.width];
                    assert_eq!(dims.map(|d| d as usize), want, "{g:?} in {layout:?}");
                }
            }
        }
    }

    #[test]
    fn nothing_allowed_is_reported_in_full() {
        let results = vec![perf(0, TENSOR_OP, 1.0), perf(3, TENSOR_OP, 2.0)];
        let judged = Judged::new(Policy::Bf16, Pass::BackwardFilter, results, Ranking::Timed);
        assert_eq!(judged.chosen, None);
        let list = judged.list(Pass::BackwardFilter);
        assert!(list.contains("ALGO_0 (tensor-op math)"), "{list}");
        assert!(list.contains("ALGO_3 (tensor-op math)"), "{list}");
    }
}
