//! The compute engine every command uses, configured once from the global flags
//! `--precision` and `--bf16-kernel`.

use std::sync::Mutex;

use alexnet::{Bf16Kernel, Cpu, Precision, Products};
use anyhow::{Result, bail};
use clap::ValueEnum;

/// Arithmetic of the matrix products.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrecisionArg {
    /// f32 operands and sums.
    Fp32,
    /// Mixed precision: bf16 operands, f32 sums, f32 weights and everything else.
    Bf16,
}

/// Which bf16 kernel to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
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

/// Sets the product settings for this process; an error names a kernel this CPU lacks.
pub fn configure(precision: PrecisionArg, kernel: KernelArg) -> Result<()> {
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

/// Runs `f` with the matrix products in `precision` (the configured bf16 kernel),
/// then restores the settings: for experiments that compare precisions.
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    let saved = current();
    set(Products { precision, ..saved });
    let result = f();
    set(saved);
    result
}

/// The CPU backend with this process's product settings.
pub fn cpu() -> Cpu {
    // `configure` checked the kernel, and the default is always available.
    Cpu::with_products(current()).unwrap_or_default()
}
