//! What the GPU tests share: getting a backend (or skipping), random inputs,
//! moving buffers, and comparing against the CPU reference.
#![allow(dead_code)]

use std::sync::OnceLock;

use alexnet::Backend;
use alexnet::rng::Rng;
use alexnet_cuda::{CudaBackend, CudaError};
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
pub fn new_gpu(precision: alexnet_cuda::Precision) -> Option<CudaBackend> {
    CudaBackend::with_precision(0, precision).map_or_else(skip_or_fail, Some)
}

/// One fp32 backend shared by the op tests (creating one compiles the kernels).
pub fn gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = new_gpu(alexnet_cuda::Precision::F32);
        if let Some(gpu) = &gpu {
            eprintln!("testing on {}", gpu.describe());
        }
        gpu
    })
    .as_ref()
}

/// One bf16 backend shared by the bf16 op tests.
pub fn bf16_gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = new_gpu(alexnet_cuda::Precision::Bf16);
        if let Some(gpu) = &gpu {
            eprintln!("testing on {}", gpu.describe());
        }
        gpu
    })
    .as_ref()
}

/// `values` rounded to the nearest bf16 (ties to even), as bf16 mode rounds the
/// operands of its products.
pub fn round_to_bf16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| {
            let bits = v.to_bits();
            let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
            if v.is_nan() {
                v
            } else {
                f32::from_bits(rounded)
            }
        })
        .collect()
}

/// `n` values uniform in [-scale, scale).
pub fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

/// `n` small integers in [-3, 3]: many exact ties, for the pooling tie rule.
pub fn ties(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.uniform() * 7.0).floor() - 3.0) as f32)
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

/// Asserts max|ours - reference| <= tol * max(max|reference|, 1e-12), naming the tensor.
pub fn assert_close(what: &str, ours: &[f32], reference: &[f32], tol: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths differ");
    let scale = reference
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(1e-12);
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: max |gpu - reference| = {worst:e} at {at} (gpu {}, reference {}), allowed {tol:e} x {scale:e}",
        ours[at],
        reference[at]
    );
}
