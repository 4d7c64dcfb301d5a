//! Helpers shared by the integration tests.
#![allow(dead_code)]

use alexnet::rng::Rng;

/// `n` values uniform in [-scale, scale).
pub fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

/// Asserts max|ours - theirs| <= tol * max(max|theirs|, floor), naming the tensor.
pub fn assert_close(what: &str, ours: &[f32], theirs: &[f32], tol: f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: max |ours - reference| = {worst:e} at {at} (ours {}, reference {}), allowed {tol:e} x {scale:e}",
        ours[at],
        theirs[at]
    );
}

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
        alexnet::Precision::Bf16 => values
            .iter()
            .map(|&v| alexnet::cpu::fast::gemm_bf16::round_to_bf16(v))
            .collect(),
    }
}

/// The paper's layout at an eighth of the width, on 67x67 inputs, for 10 classes:
/// every kind of layer of the real net with its kernel sizes and strides, groups,
/// per-tower LRN, conv3 and the fully connected layers reading both towers, dropout.
pub fn paper_mini() -> alexnet::NetSpec {
    use alexnet::spec::LayerSpec;
    let mut spec = alexnet::NetSpec::preset("alexnet")
        .unwrap()
        .with_input(3, 67, 67)
        .with_classes(10);
    for layer in &mut spec.layers {
        match layer {
            LayerSpec::Conv(c) => c.out /= 8,
            LayerSpec::Linear(l) => l.out = l.out.map(|o| o / 64),
            _ => {}
        }
    }
    spec
}
