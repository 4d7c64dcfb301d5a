//! # alexnet-cuda
//!
//! A CUDA backend for the `alexnet` engine: [`CudaBackend`] implements
//! [`alexnet::Backend`], so `Network<CudaBackend>` trains and runs the paper's net
//! on one NVIDIA GPU.
//!
//! - convolutions (forward, backward-data, backward-filter, with the paper's two
//!   towers as cuDNN's group count) through cuDNN, the algorithm for each shape
//!   chosen once and cached ([`dnn`](crate::dnn));
//! - fully connected layers through cuBLAS SGEMM;
//! - everything else (ReLU, tanh, per-tower LRN, max/average pooling, dropout,
//!   softmax cross-entropy, the SGD step, biases) in small CUDA C kernels compiled
//!   by NVRTC when the backend is created ([`kernels`](crate::kernels)).
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
mod dnn;
mod error;
mod kernels;
mod staging;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};

use alexnet::input::StoredBatch;
use alexnet::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, PoolGeometry};
use alexnet::{Backend, Rows};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::cudnn::sys::cudnnMathType_t;
use cudarc::driver::sys::cudaError_enum;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError,
    LaunchArgs, LaunchConfig, PushKernelArg, sys,
};

pub use error::CudaError;

use bf16::{Bf16, Bf16Scratch};
use dnn::Dnn;
use kernels::{BLOCK, Kernels};
use staging::Staging;

/// How matrix products round: the engine's one [`Precision`]. On this backend,
/// bf16 fully connected layers give f32 results (cuBLAS GEMM with bf16 inputs and
/// an f32 output). cuDNN's legacy API runs bf16 convolutions only with bf16
/// outputs too, so a convolution's output, input gradient and weight gradient are
/// each rounded to bf16 once more before they return to f32 (the weight gradient
/// then accumulates in f32), as under PyTorch's autocast. tf32 and bf16 need a GPU
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
    /// The bf16 operands of the products, in bf16 mode only. Where it is held
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

/// cuDNN with f32 tensors (fp32 and TF32 modes) or bf16 ones (bf16 mode).
enum Convolutions {
    F32(Dnn<f32>),
    Bf16(Dnn<Bf16>),
}

/// Device copies of a stored batch: its bytes, and each view's placement
/// (`image, y, x, flip`) and colour shift; grown as needed.
#[derive(Default)]
struct InputScratch {
    /// Stored batches' bytes, two buffers used in turn: the next batch's bytes
    /// are copied into one on the copy stream while the work already queued on
    /// the compute stream may still read the other.
    pixels: [PixelBuffer; 2],
    /// The buffer the next stored batch goes to.
    next_pixels: usize,
    place: Option<CudaSlice<i32>>,
    shift: Option<CudaSlice<f32>>,
}

/// One of [`InputScratch`]'s byte buffers.
#[derive(Default)]
struct PixelBuffer {
    bytes: Option<CudaSlice<u8>>,
    /// Recorded on the compute stream after the last work queued there that
    /// uses the buffer (its allocation, or the kernel that reads it); the copy
    /// stream waits for it before writing the buffer again.
    released: Option<CudaEvent>,
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

/// Opens each library the backend needs by name and closes it again, so that a
/// missing one is reported as an error. cudarc's own loader panics instead when
/// a library is missing (with dynamic loading, the first call into it loads it).
fn probe_libraries() -> Result<(), CudaError> {
    const PATH_HINT: &str = "put the directory holding it on LD_LIBRARY_PATH (the CUDA \
        toolkit's lib64, or PyTorch's site-packages/nvidia/*/lib)";
    // SAFETY: each probe only dlopens candidate file names and drops the handle.
    let (driver, nvrtc, cublas, cudnn) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::cudnn::sys::is_culib_present(),
        )
    };
    let missing = |library, what, hint| {
        Err(CudaError::LibraryMissing {
            library,
            what,
            hint,
        })
    };
    if !driver {
        return missing(
            "libcuda.so.1",
            "the NVIDIA driver",
            "no NVIDIA driver is installed, so there is no usable GPU",
        );
    }
    if !nvrtc {
        return missing("libnvrtc.so", "NVRTC, CUDA's run-time compiler", PATH_HINT);
    }
    if !cublas {
        return missing("libcublas.so", "cuBLAS", PATH_HINT);
    }
    if !cudnn {
        return missing("libcudnn.so.9", "cuDNN", PATH_HINT);
    }
    Ok(())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// PTX for the backend's kernels, compiled by NVRTC for a virtual architecture
/// such as `compute_90`. Needs the NVRTC library but no GPU or driver: it lets a
/// machine without a GPU check that the kernels compile.
pub fn compile_kernels(arch: &str) -> Result<String, CudaError> {
    // SAFETY: as in `probe_libraries`.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::LibraryMissing {
            library: "libnvrtc.so",
            what: "NVRTC, CUDA's run-time compiler",
            hint: "put the directory holding it on LD_LIBRARY_PATH",
        });
    }
    Ok(kernels::compile(Some(arch))?.to_src())
}

/// The names of the kernels' entry points (what [`compile_kernels`]' PTX must define).
pub const KERNEL_NAMES: [&str; 24] = [
    "fill",
    "relu_forward",
    "relu_backward",
    "tanh_forward",
    "tanh_backward",
    "multiply",
    "add_rows",
    "dropout_mask",
    "cut_views",
    "bias_add",
    "bias_grad",
    "lrn_forward",
    "lrn_backward_terms",
    "lrn_backward_finish",
    "max_pool_forward",
    "max_pool_backward",
    "lrn_max_pool_forward",
    "lrn_max_pool_backward_terms",
    "avg_pool_forward",
    "avg_pool_backward",
    "softmax_xent",
    "sgd_update",
    "f32_to_bf16",
    "bf16_to_f32",
];

/// One thread per value, in blocks of [`BLOCK`].
fn per_value(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(BLOCK as usize);
    LaunchConfig {
        grid_dim: (
            u32::try_from(blocks).expect("a launch of at most 2^32 blocks"),
            1,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per value of each of `planes` planes (a channel of an image) of
/// `plane_len` values, as the LRN and max-pooling kernels expect: `blockIdx.x`
/// is the plane, `blockIdx.y * blockDim.x + threadIdx.x` the position within it.
/// Blocks are cut down to the plane, in whole warps, where it holds fewer than
/// [`BLOCK`] values, so that small planes (13x13 after conv2's pooling) leave
/// fewer threads idle.
fn per_plane_value(planes: usize, plane_len: usize) -> LaunchConfig {
    let threads = plane_len.next_multiple_of(32).clamp(32, BLOCK as usize);
    let blocks_per_plane = plane_len.div_ceil(threads);
    LaunchConfig {
        grid_dim: (
            u32::try_from(planes)
                .ok()
                .filter(|&p| p <= i32::MAX as u32)
                .expect("a launch of at most 2^31 - 1 planes"),
            u32::try_from(blocks_per_plane)
                .ok()
                .filter(|&b| b <= 65535)
                .expect("planes of at most 65535 blocks of values"),
            1,
        ),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A null device pointer (a pointer argument is its 64-bit address), for a
/// kernel's optional output left out.
const NULL_POINTER: u64 = 0;

/// One block of [`BLOCK`] threads per row (or channel).
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (u32::try_from(rows).expect("at most 2^32 rows"), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The buffer in `slot`, replaced by a larger one first when it holds fewer than `len` values.
fn grow<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>, cudarc::driver::DriverError> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None;
        *slot = Some(stream.alloc_zeros::<T>(len.max(1))?);
    }
    Ok(slot.as_mut().expect("filled above"))
}

/// Panics unless both blocks of rows have the same shape and lie inside their
/// buffers (a device copy past the end would corrupt other memory).
fn check_rows(
    src: &CudaSlice<f32>,
    src_rows: Rows,
    dst: &CudaSlice<f32>,
    dst_rows: Rows,
    what: &str,
) {
    assert_eq!(
        (src_rows.count, src_rows.len),
        (dst_rows.count, dst_rows.len),
        "rows {what} between blocks of different shapes"
    );
    assert!(
        src_rows.len <= src_rows.stride || src_rows.count <= 1,
        "overlapping source rows"
    );
    assert!(
        dst_rows.len <= dst_rows.stride || dst_rows.count <= 1,
        "overlapping destination rows"
    );
    assert!(
        src_rows.end() <= src.len() && dst_rows.end() <= dst.len(),
        "rows {what} past the end of a buffer"
    );
}

/// Events that only order work (no timestamps, which cost time to record).
const NO_TIMING: Option<sys::CUevent_flags> = Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);

fn int(v: usize) -> i32 {
    i32::try_from(v).expect("layer sizes fit 32 bits")
}

impl CudaBackend {
    /// The backend on device `ordinal` (0 for the first GPU), computing in fp32.
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        CudaBackend::with_precision(ordinal, Precision::F32)
    }

    /// The backend on device `ordinal` with the given rounding of matrix products
    /// and the fastest convolution algorithms ([`Algorithms::Fastest`]).
    pub fn with_precision(ordinal: usize, precision: Precision) -> Result<CudaBackend, CudaError> {
        CudaBackend::with_options(ordinal, precision, Algorithms::default())
    }

    /// The backend on device `ordinal` with the given rounding of matrix products
    /// and choice of convolution algorithms.
    ///
    /// Fails with [`CudaError::LibraryMissing`] when the driver or a CUDA library
    /// cannot be opened and [`CudaError::NoDevice`] when the driver finds no such
    /// GPU ([`CudaError::is_no_gpu`] tells these apart from real failures).
    pub fn with_options(
        ordinal: usize,
        precision: Precision,
        algorithms: Algorithms,
    ) -> Result<CudaBackend, CudaError> {
        probe_libraries()?;
        // cudarc panics rather than returning an error when a symbol it needs is
        // missing from a library that did open (an older driver or library than
        // its bindings expect); setting up is where that would first happen, so a
        // panic here becomes an error too.
        match catch_unwind(AssertUnwindSafe(|| {
            CudaBackend::build(ordinal, precision, algorithms)
        })) {
            Ok(result) => result,
            Err(payload) => Err(CudaError::Call {
                what: format!("setting up cuda:{ordinal}"),
                message: panic_message(payload),
            }),
        }
    }

    fn build(
        ordinal: usize,
        precision: Precision,
        algorithms: Algorithms,
    ) -> Result<CudaBackend, CudaError> {
        let no_device = |e: cudarc::driver::DriverError| match e.0 {
            cudaError_enum::CUDA_ERROR_NO_DEVICE | cudaError_enum::CUDA_ERROR_INVALID_DEVICE => {
                CudaError::NoDevice {
                    ordinal,
                    message: e.to_string(),
                }
            }
            _ => CudaError::call("initialising the CUDA driver", e),
        };
        let count = CudaContext::device_count().map_err(no_device)?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice {
                ordinal,
                message: format!("the driver sees {count} device(s)"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(no_device)?;
        if precision == Precision::Bf16 {
            let (major, minor) = ctx
                .compute_capability()
                .map_err(|e| CudaError::call("reading the compute capability", e))?;
            if major < 8 {
                return Err(CudaError::Call {
                    what: format!("bf16 products on cuda:{ordinal}"),
                    message: format!(
                        "bf16 tensor cores need compute capability 8.0 (Ampere) or newer; this GPU is \
                         sm_{major}{minor} (use fp32)"
                    ),
                });
            }
        }
        // SAFETY: every operation goes to the compute stream created below, so
        // stream order alone keeps reads after writes, except the copies of
        // stored batches on the copy stream, which are ordered by events of their
        // own (`cut_views`); per-buffer events (which cudarc records to order
        // work across streams) would only cost time. Disabled before the first
        // buffer is allocated, as cudarc requires.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::call("creating a stream", e))?;
        let copy_stream = ctx
            .new_stream()
            .map_err(|e| CudaError::call("creating a copy stream", e))?;
        let kernels = kernels::load(&ctx)?;

        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| CudaError::call("creating cuBLAS", e))?;
        // In bf16 mode cuBLAS only runs GEMMs with bf16 inputs, for which its
        // default math already takes the tensor cores.
        let blas_math = match precision {
            Precision::F32 | Precision::Bf16 => cublasMath_t::CUBLAS_DEFAULT_MATH,
            Precision::Tf32 => cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: a valid handle, just created.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), blas_math) }
            .result()
            .map_err(|e| CudaError::call("setting cuBLAS's math mode", e))?;
        let dnn_error = |e| CudaError::call("creating cuDNN", e);
        let dnn = match precision {
            Precision::F32 => Convolutions::F32(
                Dnn::new(stream.clone(), cudnnMathType_t::CUDNN_FMA_MATH, algorithms)
                    .map_err(dnn_error)?,
            ),
            Precision::Tf32 => Convolutions::F32(
                Dnn::new(
                    stream.clone(),
                    cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
                    algorithms,
                )
                .map_err(dnn_error)?,
            ),
            Precision::Bf16 => Convolutions::Bf16(
                Dnn::new(
                    stream.clone(),
                    cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
                    algorithms,
                )
                .map_err(dnn_error)?,
            ),
        };
        let bf16 = match precision {
            Precision::Bf16 => {
                Some(Mutex::new(Bf16Scratch::new(&stream).map_err(|e| {
                    CudaError::call("allocating the bf16 buffers", e)
                })?))
            }
            Precision::F32 | Precision::Tf32 => None,
        };

        let description = describe_device(&ctx, &blas, ordinal, precision);
        Ok(CudaBackend {
            ordinal,
            precision,
            ctx,
            stream,
            copy_stream,
            kernels,
            blas: Mutex::new(blas),
            dnn: Mutex::new(dnn),
            bf16,
            loss_scratch: Mutex::new(LossScratch::default()),
            input_scratch: Mutex::new(InputScratch::default()),
            staging: Mutex::new(Staging::default()),
            input_released: Mutex::new(None),
            backward_scratch: Mutex::new(BackwardScratch::default()),
            description,
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Makes the device's context current on the calling thread: cuBLAS and cuDNN
    /// calls act on whatever context is current, and the network may be driven
    /// from any thread.
    fn bind(&self) {
        self.ctx
            .bind_to_thread()
            .unwrap_or_else(|e| self.fail("making the context current", e));
    }

    fn fail(&self, what: &str, error: impl std::fmt::Display) -> ! {
        panic!("cuda:{}: {what}: {error}", self.ordinal)
    }

    fn launch(&self, mut args: LaunchArgs<'_>, config: LaunchConfig, kernel: &str) {
        // SAFETY: every kernel's arguments are pushed in the order and with the
        // types its CUDA C signature declares, and the lengths passed never exceed
        // the buffers (the engine sizes buffers for `n` images of each layer).
        if let Err(e) = unsafe { args.launch(config) } {
            self.fail(&format!("launching kernel {kernel}"), e);
        }
    }

    fn lock<'a, T>(&self, mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
        // A panic while holding the lock leaves nothing half-updated on the host
        // that a later call could trip over, so a poisoned lock is still usable.
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a copy of a stored batch's bytes into `buffer` on the copy stream,
    /// after the compute stream's last use of the buffer, and makes the compute
    /// stream wait for the copy: work queued on the compute stream before this
    /// call (the previous batch's backward pass) runs while the bytes travel.
    fn upload_pixels(&self, buffer: &mut PixelBuffer, pixels: &[u8]) -> Result<(), DriverError> {
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

    /// `y[img][c][p] += b[c]` over `len` values of `channels` planes of `plane`.
    fn bias_add(
        &self,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        channels: usize,
        plane: usize,
        len: usize,
    ) {
        if len == 0 {
            return;
        }
        let (channels, plane, len64) = (int(channels), plane as u64, len as u64);
        let mut args = self.stream.launch_builder(&self.kernels.bias_add);
        args.arg(y).arg(b).arg(&channels).arg(&plane).arg(&len64);
        self.launch(args, per_value(len), "bias_add");
    }

    /// `db[c] += sum of dy[img][c][p]` over `images` images.
    fn bias_grad(
        &self,
        dy: &CudaSlice<f32>,
        db: &mut CudaSlice<f32>,
        images: usize,
        channels: usize,
        plane: usize,
    ) {
        let (images32, channels32, plane64) = (int(images), int(channels), plane as u64);
        let mut args = self.stream.launch_builder(&self.kernels.bias_grad);
        args.arg(dy)
            .arg(db)
            .arg(&images32)
            .arg(&channels32)
            .arg(&plane64);
        self.launch(args, per_row(channels), "bias_grad");
    }

    /// `c = op(a) op(b)` in cuBLAS's column-major terms (see `linear_forward`).
    fn gemm(
        &self,
        config: GemmConfig<f32>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) {
        self.bind();
        let blas = self.lock(&self.blas);
        // SAFETY: the dimensions and leading dimensions describe the first `n`
        // rows of buffers the engine sized for at least that many.
        if let Err(e) = unsafe { blas.gemm(config, a, b, c) } {
            self.fail("cuBLAS SGEMM", e);
        }
    }

    /// `c = alpha op(a) op(b) + beta c` with bf16 `a` and `b`, f32 `c`, summed in
    /// f32 on tensor cores (cublasGemmEx, `CUBLAS_COMPUTE_32F`); the same shapes
    /// as [`CudaBackend::gemm`].
    fn gemm_bf16(
        &self,
        config: GemmConfig<f32>,
        a: &CudaSlice<Bf16>,
        b: &CudaSlice<Bf16>,
        c: &mut CudaSlice<f32>,
    ) {
        self.bind();
        let blas = self.lock(&self.blas);
        let (a, _a_done) = a.device_ptr(&self.stream);
        let (b, _b_done) = b.device_ptr(&self.stream);
        let (c, _c_done) = c.device_ptr_mut(&self.stream);
        // SAFETY: as in `gemm`; the pointers are to bf16 (a, b) and f32 (c) buffers
        // of the types declared, and alpha and beta are f32, the scale type of
        // CUBLAS_COMPUTE_32F.
        let result = unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                config.transa,
                config.transb,
                config.m,
                config.n,
                config.k,
                (&config.alpha) as *const f32 as *const _,
                a as *const _,
                cudaDataType_t::CUDA_R_16BF,
                config.lda,
                b as *const _,
                cudaDataType_t::CUDA_R_16BF,
                config.ldb,
                (&config.beta) as *const f32 as *const _,
                c as *mut _,
                cudaDataType_t::CUDA_R_32F,
                config.ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        if let Err(e) = result {
            self.fail("cuBLAS GEMM (bf16 inputs, f32 output)", e);
        }
    }

    /// The bf16 scratch buffers, each grown to hold at least the given number of
    /// values. Only called in bf16 mode.
    fn bf16_scratch(
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
    fn convert_to_bf16(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<Bf16>, len: usize) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.f32_to_bf16);
        args.arg(src).arg(dst).arg(&len64);
        self.launch(args, per_value(len), "f32_to_bf16");
    }

    /// `dst[..len] = f32(src[..len])`, or `+=` with `accumulate`.
    fn convert_to_f32(
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

/// "cuda:0 (NVIDIA H200, sm_90, 140 GiB; driver 12.8, cuBLAS 12.8.4, cuDNN 9.8.0, NVRTC 12.8; fp32)".
fn describe_device(
    ctx: &Arc<CudaContext>,
    blas: &CudaBlas,
    ordinal: usize,
    precision: Precision,
) -> String {
    let name = ctx.name().unwrap_or_else(|_| "unknown device".into());
    let (major, minor) = ctx.compute_capability().unwrap_or((0, 0));
    let memory = ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
    let mut driver = 0;
    let mut cublas = 0;
    let (mut nvrtc_major, mut nvrtc_minor) = (0, 0);
    // SAFETY: plain version queries writing into the integers passed; a failing
    // query leaves 0, which the description then shows.
    unsafe {
        let _ = cudarc::driver::sys::cuDriverGetVersion(&mut driver);
        let _ = cudarc::cublas::sys::cublasGetVersion_v2(*blas.handle(), &mut cublas);
        let _ = cudarc::nvrtc::sys::nvrtcVersion(&mut nvrtc_major, &mut nvrtc_minor);
    }
    format!(
        "cuda:{ordinal} ({name}, sm_{major}{minor}, {memory:.0} GiB; driver {}.{}, cuBLAS {}.{}.{}, \
         cuDNN {}, NVRTC {nvrtc_major}.{nvrtc_minor}; {precision})",
        driver / 1000,
        driver % 1000 / 10,
        cublas / 10000,
        cublas / 100 % 100,
        cublas % 100,
        dnn::version(),
    )
}

impl Backend for CudaBackend {
    type Buffer = CudaSlice<f32>;

    fn describe(&self) -> String {
        self.description.clone()
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
    /// Peer access is not enabled (the buffers come from each device's
    /// stream-ordered pool, which context peer access does not cover), so between
    /// two devices the driver stages the copy through host memory; that path has
    /// not run on a two-GPU machine yet.
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
        let (x_len, y_len) = (n * g.input.len(), n * g.output.len());
        let result = if self.precision == Precision::Bf16 {
            // bf16 copies of the operands in, a bf16 output out (the one data type
            // configuration cuDNN offers for bf16), then back to f32.
            let mut scratch = self.bf16_scratch(x_len, y_len, g.weight_len());
            let s = &mut *scratch;
            self.convert_to_bf16(x, &mut s.input, x_len);
            self.convert_to_bf16(w, &mut s.weights, g.weight_len());
            self.bind();
            let result = match &mut *self.lock(&self.dnn) {
                Convolutions::Bf16(dnn) => dnn.forward(g, n, &s.input, &s.weights, &mut s.output),
                Convolutions::F32(_) => unreachable!("bf16 mode has bf16 convolutions"),
            };
            self.convert_to_f32(&s.output, y, y_len, false);
            result
        } else {
            self.bind();
            match &mut *self.lock(&self.dnn) {
                Convolutions::F32(dnn) => dnn.forward(g, n, x, w, y),
                Convolutions::Bf16(_) => unreachable!("only bf16 mode has bf16 convolutions"),
            }
        };
        if let Err(e) = result {
            self.fail(&format!("cuDNN convolution forward {g:?} x {n}"), e);
        }
        self.bias_add(b, y, g.output.channels, g.out_plane(), y_len);
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
        self.bias_add(b, y, g.outputs, 1, n * g.outputs);
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
    fn lrn_max_pool_forward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        record: Option<&mut CudaSlice<f32>>,
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
                    record.len() >= n * self.lrn_max_pool_record_len(pool),
                    "the record holds {} values, fewer than {n} images need",
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

    /// Each pooled output's winning position within its window, in a byte
    /// (`ky * size + kx`: windows are at most 16x16, see `alexnet::fusion`), four
    /// to a value. The kernels treat the whole record as bytes, byte `i` for
    /// output `i` of the batch: `n` images' outputs take `n * out` bytes, which
    /// `n * ceil(out / 4)` values hold.
    fn lrn_max_pool_record_len(&self, pool: &PoolGeometry) -> usize {
        pool.output.len().div_ceil(4)
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
        record: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        assert_eq!(pool.input, lrn.shape, "the pooling reads the LRN's output");
        let (planes, plane_len) = (n * lrn.shape.channels, lrn.shape.height * lrn.shape.width);
        if planes * plane_len == 0 {
            return;
        }
        assert!(
            record.len() >= n * self.lrn_max_pool_record_len(pool),
            "the record holds {} values, fewer than {n} images need",
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

/// The arguments every LRN kernel takes after its buffers (then the plane's
/// length, or the pooling's [`PoolArgs`] for the fused kernels).
struct LrnArgs {
    channels: i32,
    per_group: i32,
    size: i32,
    alpha: f32,
    beta: f32,
    k: f32,
}

impl LrnArgs {
    fn new(g: &LrnGeometry) -> LrnArgs {
        LrnArgs {
            channels: int(g.shape.channels),
            per_group: int(g.channels_per_group()),
            size: int(g.size),
            alpha: g.alpha,
            beta: g.beta,
            k: g.k,
        }
    }

    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(&self.channels)
            .arg(&self.per_group)
            .arg(&self.size)
            .arg(&self.alpha)
            .arg(&self.beta)
            .arg(&self.k);
    }
}

/// The geometry arguments every pooling kernel takes after its buffers.
struct PoolArgs {
    in_h: i32,
    in_w: i32,
    out_h: i32,
    out_w: i32,
    size: i32,
    stride: i32,
}

impl PoolArgs {
    fn new(g: &PoolGeometry) -> PoolArgs {
        PoolArgs {
            in_h: int(g.input.height),
            in_w: int(g.input.width),
            out_h: int(g.output.height),
            out_w: int(g.output.width),
            size: int(g.size),
            stride: int(g.stride),
        }
    }

    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(&self.in_h)
            .arg(&self.in_w)
            .arg(&self.out_h)
            .arg(&self.out_w)
            .arg(&self.size)
            .arg(&self.stride);
    }
}

impl CudaBackend {
    /// The second pass of the LRN's backward pass (`lrn_backward_finish` in the
    /// kernels), after the first has written `terms` and the first part of `dx`.
    fn lrn_backward_finish(
        &self,
        g: &LrnGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        terms: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        let (planes, plane_len) = (n * g.shape.channels, g.shape.height * g.shape.width);
        let (l, plane_len32) = (LrnArgs::new(g), int(plane_len));
        let mut args = self
            .stream
            .launch_builder(&self.kernels.lrn_backward_finish);
        args.arg(x).arg(terms).arg(dx);
        l.push(&mut args);
        args.arg(&plane_len32);
        self.launch(
            args,
            per_plane_value(planes, plane_len),
            "lrn_backward_finish",
        );
    }

    /// The weight and input gradients of a convolution in bf16 mode: bf16 copies
    /// of `x`, `dy` and `w` in, bf16 gradients out (cuDNN's one bf16
    /// configuration), the weight gradient then added to `dw` in f32 and the input
    /// gradient written to `dx` as f32.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward_bf16(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) {
        let (x_len, y_len, w_len) = (n * g.input.len(), n * g.output.len(), g.weight_len());
        let mut scratch = self.bf16_scratch(x_len, y_len, w_len);
        let s = &mut *scratch;
        self.convert_to_bf16(x, &mut s.input, x_len);
        self.convert_to_bf16(dy, &mut s.output, y_len);
        self.bind();
        let mut dnn = self.lock(&self.dnn);
        let Convolutions::Bf16(dnn) = &mut *dnn else {
            unreachable!("bf16 mode has bf16 convolutions")
        };
        // The weight gradient of this batch alone (beta = 0) into the weights'
        // buffer, then accumulated in f32.
        if let Err(e) = dnn.backward_filter(g, n, &s.input, &s.output, &mut s.weights, false) {
            self.fail(&format!("cuDNN convolution backward-filter {g:?} x {n}"), e);
        }
        self.convert_to_f32(&s.weights, dw, w_len, true);
        if let Some(dx) = dx {
            // Stream order: the accumulation above has read the buffer before the
            // weights overwrite it, and the input gradient may overwrite `x`'s copy.
            self.convert_to_bf16(w, &mut s.weights, w_len);
            if let Err(e) = dnn.backward_data(g, n, &s.weights, &s.output, &mut s.input) {
                self.fail(&format!("cuDNN convolution backward-data {g:?} x {n}"), e);
            }
            self.convert_to_f32(&s.input, dx, x_len, false);
        }
    }

    /// `out = a * b` over the first `len` values (dropout, both directions).
    fn multiply(
        &self,
        len: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.multiply);
        args.arg(a).arg(b).arg(out).arg(&len64);
        self.launch(args, per_value(len), "multiply");
    }
}
