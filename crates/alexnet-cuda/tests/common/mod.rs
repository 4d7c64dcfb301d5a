//! What the GPU tests share: getting a backend (or skipping), random inputs,
//! moving buffers, and comparing against the CPU reference.
// Each test binary uses its own subset of these.
#![allow(dead_code, unused_imports)]

use std::sync::OnceLock;

use alexnet::Backend;
pub use alexnet::testing::{assert_close, conv, paper_lrn, paper_mini, pool, random, ties};
use alexnet_cuda::{Algorithms, CudaBackend, CudaError};
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
    CudaBackend::with_options(0, precision, algorithms).map_or_else(skip_or_fail, Some)
}

/// The backend in `cell`, created in `precision` (and named on stderr) by the
/// first test that asks; creating one compiles the kernels.
fn shared_gpu(
    cell: &'static OnceLock<Option<CudaBackend>>,
    precision: alexnet_cuda::Precision,
) -> Option<&'static CudaBackend> {
    cell.get_or_init(|| {
        let gpu = new_gpu(precision);
        if let Some(gpu) = &gpu {
            eprintln!("testing on {}", gpu.describe());
        }
        gpu
    })
    .as_ref()
}

/// One fp32 backend shared by the op tests.
pub fn gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    shared_gpu(&GPU, alexnet_cuda::Precision::F32)
}

/// One bf16 backend shared by the bf16 op tests.
pub fn bf16_gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    shared_gpu(&GPU, alexnet_cuda::Precision::Bf16)
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
