//! The fast CPU kernels: GEMM-based convolution and linear layers, and
//! vectorised, multi-threaded passes for everything else. Each is tested against
//! [`super::reference`].

pub mod buffers;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod gemm_bf16;
pub mod gemv;
pub mod lanes;
pub mod linear;
pub mod lrn;
pub mod lrn_pool;
pub mod pool;
pub mod scratch;
pub mod simd;
pub mod winograd;
pub mod winograd_4x4;
pub mod winograd_5x5;
pub mod winograd_driver;
pub mod winograd_strided;
