//! Helpers for testing this crate, and any backend, against the reference:
//! random inputs, comparing tensors with a tolerance relative to their scale,
//! geometries that must fit, and a miniature of the paper's net that has every
//! kind of layer it has.

use crate::layers::{ConvGeometry, LrnGeometry, PoolGeometry, Shape};
use crate::rng::Rng;
use crate::spec::{LayerSpec, NetSpec};

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

/// The convolution geometry of a test case, which is written to fit.
pub fn conv(
    input: Shape,
    out: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) -> ConvGeometry {
    ConvGeometry::new(input, out, kernel, stride, pad, groups).expect("the kernel fits")
}

/// The pooling geometry of a test case, which is written to fit.
pub fn pool(input: Shape, size: usize, stride: usize) -> PoolGeometry {
    PoolGeometry::new(input, size, stride).expect("the window fits")
}

/// The paper's response normalisation (Section 3.3: n = 5, alpha = 1e-4,
/// beta = 0.75, k = 2) over `shape`, within each of `groups` towers.
pub fn paper_lrn(shape: Shape, groups: usize) -> LrnGeometry {
    LrnGeometry {
        shape,
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 2.0,
        groups,
    }
}

/// Panics, naming the tensor and the worst position, unless
/// max|ours - reference| <= tol * max(max|reference|, 1e-12).
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
        "{what}: max |ours - reference| = {worst:e} at {at} (ours {}, reference {}), allowed {tol:e} x {scale:e}",
        ours[at],
        reference[at]
    );
}

/// The paper's layout at an eighth of the width, on 67x67 inputs, for 10 classes:
/// every kind of layer of the real net with its kernel sizes and strides, groups,
/// per-tower LRN, conv3 and the fully connected layers reading both towers, dropout.
pub fn paper_mini() -> NetSpec {
    let mut spec = NetSpec::preset("alexnet")
        .expect("the alexnet preset parses")
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
