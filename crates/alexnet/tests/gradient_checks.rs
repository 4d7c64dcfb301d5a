//! Finite-difference checks of every layer's backward pass, on the reference
//! kernels in f64: for a random projection `L = sum(r * y)`, each analytic
//! gradient must equal the central difference `(L(v + e) - L(v - e)) / 2e` for
//! every input and parameter value. In f64 with e = 1e-6 the difference is exact
//! to about 1e-8 relative, so 1e-6 catches any wrong term.

use alexnet::cpu::reference as r;
use alexnet::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, Shape};
use alexnet::rng::Rng;
use alexnet::testing::pool;

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.uniform() * 2.0 - 1.0) * scale)
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Compares `analytic` with central differences of `loss` over every value of `v`.
fn check(what: &str, v: &mut [f64], analytic: &[f64], loss: &mut dyn FnMut(&[f64]) -> f64) {
    let scale = analytic
        .iter()
        .fold(0.0f64, |m, g| m.max(g.abs()))
        .max(1e-3);
    for i in 0..v.len() {
        let keep = v[i];
        v[i] = keep + EPS;
        let up = loss(v);
        v[i] = keep - EPS;
        let down = loss(v);
        v[i] = keep;
        let numeric = (up - down) / (2.0 * EPS);
        let err = (numeric - analytic[i]).abs();
        assert!(
            err <= TOL * scale,
            "{what}[{i}]: analytic {} numeric {numeric} (error {err:e}, allowed {:e})",
            analytic[i],
            TOL * scale
        );
    }
}

#[test]
fn conv_gradients() {
    for (groups, stride, pad) in [(1, 1, 1), (2, 2, 1), (2, 1, 2)] {
        let input = Shape::new(4, 6, 5);
        let side = |s| ConvGeometry::output_side(s, 3, stride, pad).unwrap();
        let g = ConvGeometry {
            input,
            output: Shape::new(4, side(6), side(5)),
            kernel: 3,
            stride,
            pad,
            groups,
        };
        let n = 2;
        let mut rng = Rng::new(groups as u64 * 7 + stride as u64);
        let x = random(&mut rng, n * input.len(), 1.0);
        let mut w = random(&mut rng, g.weight_len(), 1.0);
        let mut b = random(&mut rng, 4, 1.0);
        let proj = random(&mut rng, n * g.output.len(), 1.0);
        let (mut dw, mut db, mut dx) = (vec![0.0; w.len()], vec![0.0; 4], vec![0.0; x.len()]);
        r::conv_backward(&g, n, &x, &w, &proj, &mut dw, &mut db, Some(&mut dx));
        let forward = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; n * g.output.len()];
            r::conv_forward(&g, n, x, w, b, &mut y);
            dot(&y, &proj)
        };
        let name = format!("conv groups {groups} stride {stride} pad {pad}");
        let (w0, b0) = (w.clone(), b.clone());
        check(&format!("{name} dx"), &mut x.clone(), &dx, &mut |x| {
            forward(x, &w0, &b0)
        });
        check(&format!("{name} dw"), &mut w, &dw, &mut |w| {
            forward(&x, w, &b0)
        });
        check(&format!("{name} db"), &mut b, &db, &mut |b| {
            forward(&x, &w0, b)
        });
    }
}

#[test]
fn linear_gradients() {
    let g = LinearGeometry {
        inputs: 6,
        outputs: 4,
    };
    let n = 3;
    let mut rng = Rng::new(1);
    let x = random(&mut rng, n * 6, 1.0);
    let mut w = random(&mut rng, 24, 1.0);
    let mut b = random(&mut rng, 4, 1.0);
    let proj = random(&mut rng, n * 4, 1.0);
    let (mut dw, mut db, mut dx) = (vec![0.0; 24], vec![0.0; 4], vec![0.0; n * 6]);
    r::linear_backward(&g, n, &x, &w, &proj, &mut dw, &mut db, Some(&mut dx));
    let forward = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; n * 4];
        r::linear_forward(&g, n, x, w, b, &mut y);
        dot(&y, &proj)
    };
    let (w0, b0) = (w.clone(), b.clone());
    check("linear dx", &mut x.clone(), &dx, &mut |x| {
        forward(x, &w0, &b0)
    });
    check("linear dw", &mut w, &dw, &mut |w| forward(&x, w, &b0));
    check("linear db", &mut b, &db, &mut |b| forward(&x, &w0, b));
}

#[test]
fn activation_gradients() {
    let mut rng = Rng::new(2);
    // Keep ReLU inputs away from its kink at zero.
    let mut x: Vec<f64> = random(&mut rng, 50, 1.0)
        .into_iter()
        .map(|v| v + 0.1f64.copysign(v))
        .collect();
    let proj = random(&mut rng, 50, 1.0);
    for tanh in [false, true] {
        let forward = |x: &[f64]| {
            let mut y = x.to_vec();
            if tanh {
                r::tanh_forward(&mut y)
            } else {
                r::relu_forward(&mut y)
            }
            y
        };
        let y = forward(&x);
        let mut d = proj.clone();
        if tanh {
            r::tanh_backward(&y, &mut d)
        } else {
            r::relu_backward(&y, &mut d)
        }
        check(
            if tanh { "tanh dx" } else { "relu dx" },
            &mut x,
            &d,
            &mut |x| dot(&forward(x), &proj),
        );
    }
}

#[test]
fn lrn_gradients() {
    let cases = [
        LrnGeometry {
            shape: Shape::new(8, 2, 3),
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 2.0,
            groups: 2,
        },
        LrnGeometry {
            shape: Shape::new(7, 2, 2),
            size: 3,
            alpha: 0.01,
            beta: 0.6,
            k: 1.0,
            groups: 1,
        },
    ];
    for g in cases {
        let n = 2;
        let mut rng = Rng::new(3);
        // Magnitudes where alpha * sum(a^2) is comparable with k.
        let scale = (g.k as f64 / g.alpha as f64 / g.size as f64).sqrt();
        let mut x = random(&mut rng, n * g.shape.len(), scale);
        let proj = random(&mut rng, n * g.shape.len(), 1.0);
        let mut dx = vec![0.0; x.len()];
        r::lrn_backward(&g, n, &x, &proj, &mut dx);
        let name = format!("lrn size {} groups {}", g.size, g.groups);
        check(&name, &mut x, &dx, &mut |x| {
            let mut y = vec![0.0; x.len()];
            r::lrn_forward(&g, n, x, &mut y);
            dot(&y, &proj)
        });
    }
}

#[test]
fn pooling_gradients() {
    let input = Shape::new(2, 7, 7);
    for (size, stride) in [(3, 2), (2, 2)] {
        let g = pool(input, size, stride);
        let n = 2;
        let mut rng = Rng::new(4);
        // Distinct values: a finite difference across a tie would be meaningless.
        let mut x: Vec<f64> = (0..n * input.len()).map(|i| i as f64 * 0.01).collect();
        for i in (1..x.len()).rev() {
            x.swap(i, rng.below(i + 1));
        }
        let proj = random(&mut rng, n * g.output.len(), 1.0);
        let mut dx = vec![0.0; x.len()];
        r::max_pool_backward(&g, n, &x, &proj, &mut dx);
        check(
            &format!("max pool {size}/{stride}"),
            &mut x.clone(),
            &dx,
            &mut |x| {
                let mut y = vec![0.0; proj.len()];
                r::max_pool_forward(&g, n, x, &mut y);
                dot(&y, &proj)
            },
        );
        r::avg_pool_backward(&g, n, &proj, &mut dx);
        check(
            &format!("avg pool {size}/{stride}"),
            &mut x,
            &dx,
            &mut |x| {
                let mut y = vec![0.0; proj.len()];
                r::avg_pool_forward(&g, n, x, &mut y);
                dot(&y, &proj)
            },
        );
    }
}

#[test]
fn dropout_gradients() {
    let g = DropoutGeometry { len: 10, p: 0.5 };
    let mut rng = Rng::new(5);
    let mask: Vec<f64> = (0..20)
        .map(|_| if rng.uniform() < 0.5 { 0.0 } else { 2.0 })
        .collect();
    let mut x = random(&mut rng, 20, 1.0);
    let proj = random(&mut rng, 20, 1.0);
    let mut dx = vec![0.0; 20];
    r::dropout_backward(&g, 2, &mask, &proj, &mut dx);
    check("dropout", &mut x, &dx, &mut |x| {
        let mut y = vec![0.0; 20];
        r::dropout_forward(&g, 2, &mask, x, &mut y);
        dot(&y, &proj)
    });
}

#[test]
fn softmax_cross_entropy_gradient() {
    let (classes, n) = (5, 3);
    let mut rng = Rng::new(6);
    let mut logits = random(&mut rng, classes * n, 3.0);
    let labels = [4u32, 0, 2];
    let mut d = vec![0.0; logits.len()];
    r::softmax_cross_entropy(classes, n, &logits, &labels, &mut d);
    check("softmax cross-entropy", &mut logits, &d, &mut |l| {
        let mut scratch = vec![0.0; l.len()];
        r::softmax_cross_entropy(classes, n, l, &labels, &mut scratch)
    });
}
