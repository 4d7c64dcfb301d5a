//! Helpers shared by the integration tests.
// Each test binary uses its own subset of these.
#![allow(dead_code, unused_imports)]

pub use alexnet::testing::{assert_close, paper_mini, random};

/// The matrix-product modes every fast layer is checked in: f32, and bf16 with
/// each bf16 kernel this CPU can run (a missing one is reported, not hidden).
pub fn product_modes() -> Vec<(String, alexnet::Products)> {
    use alexnet::{Bf16Kernel, Precision, Products};
    let mut modes = vec![("fp32".to_string(), Products::default())];
    for kernel in [Bf16Kernel::Portable, Bf16Kernel::Avx512Bf16] {
        if kernel.is_available() {
            let products = Products {
                precision: Precision::Bf16,
                bf16_kernel: kernel,
            };
            modes.push((format!("bf16 {}", kernel.name()), products));
        } else {
            eprintln!(
                "NOT TESTED: bf16 kernel {} (this CPU lacks it)",
                kernel.name()
            );
        }
    }
    modes
}

/// What a product in mode `products` multiplies: `values` rounded to bf16 in bf16
/// mode, so a reference fed these operands computes what the fast product should.
pub fn operand(products: alexnet::Products, values: &[f32]) -> Vec<f32> {
    match products.precision {
        alexnet::Precision::F32 => values.to_vec(),
        alexnet::Precision::Tf32 => panic!("the CPU has no tf32 products"),
        alexnet::Precision::Bf16 => values
            .iter()
            .map(|&v| alexnet::cpu::fast::gemm_bf16::round_to_bf16(v))
            .collect(),
    }
}
