//! Where a command runs: `cpu`, or `cuda:N` in a binary built with the `cuda`
//! feature (which brings in the alexnet-cuda backend).
//!
//! The commands that compute (`train`, `eval`, `classify`, `features`, `bench`)
//! take `--device` and write their bodies generic over `alexnet::Backend`;
//! [`with_backend!`] builds the backend the flag names and runs the body with it.

use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA GPU by ordinal (0 for the first).
    Cuda(usize),
}

/// Parses `--device`: `cpu`, `cuda` (the first GPU) or `cuda:N`; clap reports an
/// error with the flag's name.
pub fn parse(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok(Device::Cuda(ordinal)),
            _ => Err("expected cpu or cuda:N (cuda:0 for the first GPU)".to_string()),
        },
    }
}

/// The error for `--device cuda:N` in a binary built without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn without_cuda(ordinal: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "--device cuda:{ordinal}: this alexnet binary was built without CUDA support; \
         build it with `cargo build --release -p alexnet-cli --features cuda`"
    )
}

/// The CUDA backend on GPU `ordinal`, its products in the `--precision` given;
/// fails with the reason (no driver, a CUDA library not found, no such device)
/// rather than panicking.
#[cfg(feature = "cuda")]
pub fn cuda(ordinal: usize) -> Result<alexnet_cuda::CudaBackend> {
    alexnet_cuda::CudaBackend::with_precision(ordinal, crate::engine::cuda_precision())
        .map_err(|e| anyhow::anyhow!("--device cuda:{ordinal}: {e}"))
}

/// `with_backend!(device, |backend| body)`: evaluates `body` (a `Result`) with
/// `backend` bound to the CPU engine or, for `Device::Cuda`, the CUDA backend.
/// The body is compiled once per backend type, so it can call generic code; in a
/// binary without the `cuda` feature a CUDA device gives [`without_cuda`]'s error.
macro_rules! with_backend {
    ($device:expr, |$backend:ident| $body:expr) => {
        match $device {
            $crate::device::Device::Cpu => {
                let $backend = $crate::engine::cpu();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::Device::Cuda(ordinal) => {
                let $backend = $crate::device::cuda(ordinal)?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::device::Device::Cuda(ordinal) => Err($crate::device::without_cuda(ordinal)),
        }
    };
}
pub(crate) use with_backend;
