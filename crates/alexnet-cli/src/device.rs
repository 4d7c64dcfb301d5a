//! Where a command runs: `cpu`, or `cuda:N` in a binary built with the `cuda`
//! feature (which brings in the alexnet-cuda backend).

use anyhow::{Result, bail};

pub enum Device {
    Cpu,
    /// A CUDA GPU by ordinal (0 for the first).
    Cuda(usize),
}

pub fn parse(text: &str) -> Result<Device> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok(Device::Cuda(ordinal)),
            _ => bail!("--device {text}: expected cpu or cuda:N (cuda:0 for the first GPU)"),
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

/// The CUDA backend on GPU `ordinal`; fails with the reason (no driver, a CUDA
/// library not found, no such device) rather than panicking.
#[cfg(feature = "cuda")]
pub fn cuda(ordinal: usize) -> Result<alexnet_cuda::CudaBackend> {
    alexnet_cuda::CudaBackend::new(ordinal).map_err(|e| anyhow::anyhow!("cuda:{ordinal}: {e}"))
}
