//! Why a CUDA backend could not be created.
//!
//! Only construction returns errors: the [`alexnet::Backend`] operations have no
//! error channel (a failing kernel launch or library call there is a bug or a lost
//! device, and panics with the call named).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CudaError {
    /// A shared library could not be opened: no NVIDIA driver (`libcuda.so.1`), or
    /// a CUDA library (NVRTC, cuBLAS, cuDNN) not on the loader's path.
    #[error("{library} not found ({what}); {hint}")]
    LibraryMissing {
        /// The file name looked for first, e.g. `libcuda.so.1`.
        library: &'static str,
        what: &'static str,
        hint: &'static str,
    },

    /// The driver loaded but reports no usable device with this ordinal.
    #[error("no CUDA device {ordinal}: {message}")]
    NoDevice { ordinal: usize, message: String },

    /// A CUDA, cuBLAS or cuDNN call failed while setting the backend up.
    #[error("{what}: {message}")]
    Call { what: String, message: String },

    /// NVRTC rejected or could not load the kernels.
    #[error("{0}")]
    Kernels(String),
}

impl CudaError {
    pub(crate) fn call(what: &str, error: impl std::fmt::Display) -> CudaError {
        CudaError::Call {
            what: what.to_string(),
            message: error.to_string(),
        }
    }

    /// Whether this machine simply has no NVIDIA GPU (no driver library, or no
    /// device): what GPU tests treat as "skip" rather than "fail".
    pub fn is_no_gpu(&self) -> bool {
        matches!(
            self,
            CudaError::LibraryMissing {
                library: "libcuda.so.1",
                ..
            } | CudaError::NoDevice { .. }
        )
    }
}
