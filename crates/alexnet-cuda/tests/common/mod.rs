//! What the GPU tests share: getting a backend (or skipping), random inputs,
//! moving buffers, and comparing against the CPU reference.
// Each test binary uses its own subset of these.
#![allow(dead_code, unused_imports)]

use std::sync::OnceLock;

use alexnet::Backend;
pub use alexnet::testing::{assert_close, conv, paper_lrn, paper_mini, pool, random, ties};
use alexnet_cuda::{Algorithms, Bf16Layout, CudaBackend, CudaError, CudaSettings};
use cudarc::driver::CudaSlice;

/// Whether a missing GPU must fail the test instead of skipping it.
pub fn gpu_required() -> bool {
    std::env::var("ALEXNET_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Skips (returns `None`, saying so) when this machine has no GPU, unless
/// `ALEXNET_REQUIRE_GPU=1`; any other failure to set up fails the test.
pub fn skip_or_fail(error: CudaError) -> Option<CudaBackend> {
    if gpu_required() {
        panic!("ALEXNET_REQUIRE_GPU=1 but the CUDA backend could not be created: {error}");
    }
    let why = match &error {
        CudaError::LibraryMissing { library, .. } if error.is_no_gpu() => {
            format!("no CUDA driver ({library} not found)")
        }
        CudaError::NoDevice { .. } => error.to_string(),
        _ => panic!("the CUDA backend could not be created: {error}"),
    };
    eprintln!("SKIPPED: {why}; set ALEXNET_REQUIRE_GPU=1 to make this a failure");
    None
}

/// A new backend on device 0, or `None` (skip) where there is no GPU.
///
/// Its fp32 convolutions sum directly ([`Algorithms::Exact`]), so that results
/// can be held to fp32 rounding; tests of the default algorithms use
/// [`new_gpu_with`].
pub fn new_gpu(precision: alexnet_cuda::Precision) -> Option<CudaBackend> {
    new_gpu_with(precision, Algorithms::Exact)
}

/// A new backend on device 0 with the given choice of algorithms, or `None`.
pub fn new_gpu_with(
    precision: alexnet_cuda::Precision,
    algorithms: Algorithms,
) -> Option<CudaBackend> {
    new_gpu_with_settings(CudaSettings {
        precision,
        algorithms,
        ..CudaSettings::default()
    })
}

/// A new backend on device 0 with the given settings, or `None`.
pub fn new_gpu_with_settings(settings: CudaSettings) -> Option<CudaBackend> {
    CudaBackend::with_settings(0, settings).map_or_else(skip_or_fail, Some)
}

/// The backend in `cell`, created with `settings` (and named on stderr) by the
/// first test that asks; creating one compiles the kernels. Its fp32
/// convolutions sum directly, as [`new_gpu`]'s.
fn shared_gpu(
    cell: &'static OnceLock<Option<CudaBackend>>,
    settings: CudaSettings,
) -> Option<&'static CudaBackend> {
    cell.get_or_init(|| {
        let gpu = new_gpu_with_settings(CudaSettings {
            algorithms: Algorithms::Exact,
            ..settings
        });
        if let Some(gpu) = &gpu {
            eprintln!("testing on {}", gpu.describe());
        }
        gpu
    })
    .as_ref()
}

fn in_precision(precision: alexnet_cuda::Precision) -> CudaSettings {
    CudaSettings {
        precision,
        ..CudaSettings::default()
    }
}

/// One fp32 backend shared by the op tests.
pub fn gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    shared_gpu(&GPU, in_precision(alexnet_cuda::Precision::F32))
}

/// One bf16 backend shared by the bf16 op tests (each convolution in the faster
/// layout).
pub fn bf16_gpu() -> Option<&'static CudaBackend> {
    bf16_gpu_in(Bf16Layout::Timed)
}

/// One bf16 backend per layout (and route) of its convolutions' operands, shared.
pub fn bf16_gpu_in(layout: Bf16Layout) -> Option<&'static CudaBackend> {
    static TIMED: OnceLock<Option<CudaBackend>> = OnceLock::new();
    static NCHW: OnceLock<Option<CudaBackend>> = OnceLock::new();
    static NHWC: OnceLock<Option<CudaBackend>> = OnceLock::new();
    static GRAPH: OnceLock<Option<CudaBackend>> = OnceLock::new();
    static TF32: OnceLock<Option<CudaBackend>> = OnceLock::new();
    static TIMED_ALL: OnceLock<Option<CudaBackend>> = OnceLock::new();
    let cell = match layout {
        Bf16Layout::Timed => &TIMED,
        Bf16Layout::Nchw => &NCHW,
        Bf16Layout::Nhwc => &NHWC,
        Bf16Layout::Graph => &GRAPH,
        Bf16Layout::Tf32 => &TF32,
        Bf16Layout::TimedAll => &TIMED_ALL,
    };
    shared_gpu(
        cell,
        CudaSettings {
            bf16_layout: layout,
            ..in_precision(alexnet_cuda::Precision::Bf16)
        },
    )
}

/// `values` rounded to the nearest bf16 (ties to even), as bf16 mode rounds the
/// operands of its products.
pub fn round_to_bf16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| alexnet::cpu::fast::gemm_bf16::round_to_bf16(v))
        .collect()
}

pub fn to_device(gpu: &CudaBackend, host: &[f32]) -> CudaSlice<f32> {
    let mut buffer = gpu.alloc(host.len()).unwrap();
    gpu.upload(host, &mut buffer);
    buffer
}

pub fn to_host(gpu: &CudaBackend, buffer: &CudaSlice<f32>, len: usize) -> Vec<f32> {
    let mut host = vec![0.0; len];
    gpu.download(buffer, &mut host);
    host
}

/// Held by each whole-network test for its whole run, so that they run one at a
/// time: one whole-network test keeps a GPU busy anyway. When seven of them ran
/// at once in one process (each with its own backends), the process once died
/// of a segmentation fault on an H200; one or two at a time they had passed.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
