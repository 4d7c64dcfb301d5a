//! Setting a device up: opening the CUDA libraries (an error, not a panic, for
//! a missing one), creating the context, streams, handles and kernels, and
//! describing what was found.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::cublasMath_t;
use cudarc::cudnn::sys::cudnnMathType_t;
use cudarc::driver::CudaContext;
use cudarc::driver::sys::cudaError_enum;

use crate::bf16::Bf16Convolutions;
use crate::bf16::Bf16Scratch;
use crate::dnn::{self, Dnn, Layout, Route};
use crate::input::InputScratch;
use crate::kernels;
use crate::staging::Staging;
use crate::{
    BackwardScratch, Convolutions, CudaBackend, CudaError, CudaSettings, LossScratch, Precision,
};

/// Opens each library the backend needs by name and closes it again, so that a
/// missing one is reported as an error. cudarc's own loader panics instead when
/// a library is missing (with dynamic loading, the first call into it loads it).
pub(crate) fn probe_libraries() -> Result<(), CudaError> {
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

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
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
pub const KERNEL_NAMES: [&str; 28] = [
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
    "f32_round_to_bf16",
    "bf16_to_f32",
    "f32_to_bf16_nhwc",
    "f32_to_bf16_nhwc_few",
    "bf16_nhwc_to_f32",
];

impl CudaBackend {
    /// The backend on device `ordinal` (0 for the first GPU), computing in fp32.
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        CudaBackend::with_precision(ordinal, Precision::F32)
    }

    /// The backend on device `ordinal` with the given rounding of matrix products,
    /// the fastest convolution algorithms and, in bf16, the faster layout.
    pub fn with_precision(ordinal: usize, precision: Precision) -> Result<CudaBackend, CudaError> {
        CudaBackend::with_settings(
            ordinal,
            CudaSettings {
                precision,
                ..CudaSettings::default()
            },
        )
    }

    /// The backend on device `ordinal` with the given settings.
    ///
    /// Fails with [`CudaError::LibraryMissing`] when the driver or a CUDA library
    /// cannot be opened and [`CudaError::NoDevice`] when the driver finds no such
    /// GPU ([`CudaError::is_no_gpu`] tells these apart from real failures).
    pub fn with_settings(ordinal: usize, settings: CudaSettings) -> Result<CudaBackend, CudaError> {
        probe_libraries()?;
        // cudarc panics rather than returning an error when a symbol it needs is
        // missing from a library that did open (an older driver or library than
        // its bindings expect); setting up is where that would first happen, so a
        // panic here becomes an error too.
        match catch_unwind(AssertUnwindSafe(|| CudaBackend::build(ordinal, settings))) {
            Ok(result) => result,
            Err(payload) => Err(CudaError::Call {
                what: format!("setting up cuda:{ordinal}"),
                message: panic_message(payload),
            }),
        }
    }

    pub(crate) fn build(ordinal: usize, settings: CudaSettings) -> Result<CudaBackend, CudaError> {
        let CudaSettings {
            precision,
            algorithms,
            bf16_layout,
        } = settings;
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
        let nchw = [Route::Legacy(Layout::Nchw)];
        let dnn = match precision {
            Precision::F32 => Convolutions::F32(
                Dnn::new(
                    stream.clone(),
                    cudnnMathType_t::CUDNN_FMA_MATH,
                    algorithms,
                    &nchw,
                )
                .map_err(dnn_error)?,
            ),
            Precision::Tf32 => Convolutions::F32(
                Dnn::new(
                    stream.clone(),
                    cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
                    algorithms,
                    &nchw,
                )
                .map_err(dnn_error)?,
            ),
            Precision::Bf16 => Convolutions::Bf16(Box::new(
                Bf16Convolutions::new(&stream, bf16_layout).map_err(dnn_error)?,
            )),
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
    pub(crate) fn bind(&self) {
        self.ctx
            .bind_to_thread()
            .unwrap_or_else(|e| self.fail("making the context current", e));
    }

    pub(crate) fn fail(&self, what: &str, error: impl std::fmt::Display) -> ! {
        panic!("cuda:{}: {what}: {error}", self.ordinal)
    }
}

/// "cuda:0 (NVIDIA H200, sm_90, 140 GiB; driver 12.8, cuBLAS 12.8.4, cuDNN 9.8.0, NVRTC 12.8; fp32)".
pub(crate) fn describe_device(
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
