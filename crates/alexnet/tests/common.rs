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
