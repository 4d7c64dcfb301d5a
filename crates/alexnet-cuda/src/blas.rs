//! Fully connected layers' products in cuBLAS: SGEMM, and GEMM with bf16
//! operands and f32 results in bf16 mode.

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::CudaBackend;
use crate::bf16::Bf16;

impl CudaBackend {
    /// `c = op(a) op(b)` in cuBLAS's column-major terms (see `linear_forward`).
    pub(crate) fn gemm(
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
    pub(crate) fn gemm_bf16(
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
}
