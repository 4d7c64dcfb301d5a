//! The compute engine every command uses, configured once from the global flags
//! `--precision` and `--bf16-kernel` and the command's `--device`.

use std::sync::Mutex;

use alexnet::{Bf16Kernel, Cpu, Precision, Products};
use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::device::Device;

/// Arithmetic of the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 operands and sums.
    Fp32,
    /// Operands rounded to TF32 on tensor cores, f32 sums (--device cuda:N only).
    Tf32,
    /// Mixed precision: bf16 operands, f32 sums, f32 weights and everything else.
    Bf16,
}

/// Which convolution algorithms cuDNN may choose from (--device cuda:N, fp32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ConvAlgorithmsArg {
    /// The fastest it times, as PyTorch's cudnn.benchmark: FFT and Winograd
    /// transforms too, which round beyond fp32 (within about 1e-3).
    #[default]
    Fastest,
    /// Only direct sums: results within fp32 rounding of the CPU reference.
    Exact,
}

/// The `--conv-algorithms` of a CUDA device.
#[cfg(feature = "cuda")]
static CUDA_ALGORITHMS: Mutex<Option<alexnet_cuda::Algorithms>> = Mutex::new(None);

/// Sets the CUDA backend's choice of convolution algorithms from `--conv-algorithms`.
pub fn set_conv_algorithms(choice: ConvAlgorithmsArg) {
    #[cfg(feature = "cuda")]
    {
        let algorithms = match choice {
            ConvAlgorithmsArg::Fastest => alexnet_cuda::Algorithms::Fastest,
            ConvAlgorithmsArg::Exact => alexnet_cuda::Algorithms::Exact,
        };
        *CUDA_ALGORITHMS.lock().unwrap_or_else(|e| e.into_inner()) = Some(algorithms);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = choice;
}

/// The CUDA backend's choice of convolution algorithms (default: the fastest).
#[cfg(feature = "cuda")]
pub fn cuda_algorithms() -> alexnet_cuda::Algorithms {
    let settings = CUDA_ALGORITHMS.lock().unwrap_or_else(|e| e.into_inner());
    settings.unwrap_or_default()
}

/// Which bf16 kernel to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelArg {
    /// The fastest this CPU has.
    Auto,
    /// AVX512-BF16 (`VDPBF16PS`).
    Avx512Bf16,
    /// Plain f32 arithmetic on bf16 values (any CPU; slow).
    Portable,
}

/// This process's product settings; `None` until configured (then the default).
static PRODUCTS: Mutex<Option<Products>> = Mutex::new(None);

fn current() -> Products {
    let settings = PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
    settings.unwrap_or_default()
}

fn set(products: Products) {
    *PRODUCTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(products);
}

/// The `--precision` of a CUDA device; `None` until configured (then fp32).
#[cfg(feature = "cuda")]
static CUDA_PRECISION: Mutex<Option<alexnet_cuda::Precision>> = Mutex::new(None);

/// The rounding of the CUDA backend's products, from `--precision`.
#[cfg(feature = "cuda")]
pub fn cuda_precision() -> alexnet_cuda::Precision {
    let settings = CUDA_PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    settings.unwrap_or_default()
}

/// Sets the product settings for this process from the global flags and the
/// command's device (commands without `--device` run on the CPU). An error names
/// a precision the device does not offer or a bf16 kernel this CPU lacks.
pub fn configure(precision: PrecisionArg, kernel: KernelArg, device: Device) -> Result<()> {
    if let Device::Cuda(ordinal) = device {
        if kernel != KernelArg::Auto {
            eprintln!(
                "note: --bf16-kernel chooses a CPU kernel; it does nothing on cuda:{ordinal}"
            );
        }
        #[cfg(feature = "cuda")]
        {
            let precision = match precision {
                PrecisionArg::Fp32 => alexnet_cuda::Precision::F32,
                PrecisionArg::Tf32 => alexnet_cuda::Precision::Tf32,
                PrecisionArg::Bf16 => alexnet_cuda::Precision::Bf16,
            };
            *CUDA_PRECISION.lock().unwrap_or_else(|e| e.into_inner()) = Some(precision);
        }
        // Without the feature the command itself refuses the device.
        return Ok(());
    }
    if precision == PrecisionArg::Tf32 {
        bail!(
            "--precision tf32: TF32 is a tensor-core format of NVIDIA GPUs, accepted only with \
             --device cuda:N; on the CPU --precision takes fp32 or bf16"
        );
    }
    let bf16_kernel = match kernel {
        KernelArg::Auto => Bf16Kernel::detect(),
        KernelArg::Avx512Bf16 => Bf16Kernel::Avx512Bf16,
        KernelArg::Portable => Bf16Kernel::Portable,
    };
    if !bf16_kernel.is_available() {
        bail!(
            "--bf16-kernel {}: this CPU does not have it (available: {})",
            bf16_kernel.name(),
            Bf16Kernel::detect().name()
        );
    }
    let precision = match precision {
        PrecisionArg::Fp32 => Precision::F32,
        PrecisionArg::Bf16 => Precision::Bf16,
        PrecisionArg::Tf32 => unreachable!("refused above on the CPU"),
    };
    let products = Products {
        precision,
        bf16_kernel,
    };
    if precision == Precision::Bf16 && bf16_kernel == Bf16Kernel::Portable {
        // Correct everywhere, but without the bf16 instructions it is several
        // times slower than f32: say so rather than leave a user wondering.
        eprintln!(
            "note: bf16 products on the portable kernel ({}): results are bf16's, speed is several times below fp32's",
            if Bf16Kernel::Avx512Bf16.is_available() {
                "as asked"
            } else {
                "this CPU has no AVX512-BF16"
            }
        );
    }
    set(products);
    Ok(())
}

/// Runs `f` with the matrix products in `precision` (on the CPU with the configured
/// bf16 kernel; on a GPU as `--precision fp32` or `bf16`), then restores the
/// settings: for experiments that compare precisions.
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    let saved = current();
    set(Products { precision, ..saved });
    #[cfg(feature = "cuda")]
    let saved_cuda = {
        let mut cuda = CUDA_PRECISION.lock().unwrap_or_else(|e| e.into_inner());
        cuda.replace(match precision {
            Precision::F32 => alexnet_cuda::Precision::F32,
            Precision::Bf16 => alexnet_cuda::Precision::Bf16,
        })
    };
    let result = f();
    set(saved);
    #[cfg(feature = "cuda")]
    {
        *CUDA_PRECISION.lock().unwrap_or_else(|e| e.into_inner()) = saved_cuda;
    }
    result
}

/// The CPU backend with this process's product settings.
pub fn cpu() -> Cpu {
    // `configure` checked the kernel, and the default is always available.
    Cpu::with_products(current()).unwrap_or_default()
}
