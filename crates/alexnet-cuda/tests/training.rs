//! Whole training steps on the GPU against the CPU reference: the same seeds give
//! the same initial weights and the same dropout masks (both drawn on the host),
//! so after each step the two networks must agree to rounding.
//!
//! Tolerance: 1e-4 of each tensor's largest value, for losses, gradients, weights
//! after the update and test-mode logits. That is what the fast CPU backend is
//! held to against the same reference over the same kind of run; a wrong index,
//! a missing term or a tower that sees the other tower's channels is off by far
//! more.
//!
//! bf16 mode against the same f32 reference: 3e-2. One bf16 product is within
//! about 1e-2 of its largest output (see tests/bf16.rs); through the eight
//! products of a forward and backward pass these errors compound like a random
//! walk (sqrt(8) x ~3e-3 typical), and a rounding can flip which input of a
//! pooling window is largest or on which side of zero a ReLU input lies. 3e-2
//! holds those, while a wrong layer is still off by order 1.

mod common;

use alexnet::layers::{ConvGeometry, Shape};
use alexnet::rng::Rng;
use alexnet::{Backend, Model, NetSpec, Network, ReferenceCpu, Sgd, Towers};
use alexnet_cuda::Precision;
use common::{assert_close, new_gpu, paper_mini, random, to_device, to_host};

struct Run {
    losses: Vec<f32>,
    grads: Vec<Vec<f32>>,
    params: Vec<Vec<f32>>,
    logits: Vec<f32>,
}

fn train<B: Backend>(backend: B, spec: &NetSpec, batch: usize, steps: usize) -> Run {
    let mut net = Network::new(backend, spec, batch, 11).unwrap();
    train_model(&mut net, spec, batch, steps)
}

fn train_model(net: &mut dyn Model, spec: &NetSpec, batch: usize, steps: usize) -> Run {
    let mut rng = Rng::new(5);
    // Raw 0-255 pixels minus a mean: the scale the paper's net is initialised for.
    let images = random(&mut rng, batch * net.plan().input_shape().len(), 128.0);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % spec.classes as u32).collect();
    let sgd = Sgd::from_recipe(&spec.recipe);
    let mut losses = Vec::new();
    for _ in 0..steps {
        losses.push(net.train_step(&images, &labels, &sgd).unwrap());
    }
    let count = net.plan().params.len();
    Run {
        losses,
        grads: (0..count).map(|i| net.param_grad(i)).collect(),
        params: (0..count).map(|i| net.param_values(i)).collect(),
        logits: net.predict(&images).unwrap(),
    }
}

fn compare(spec: &NetSpec, batch: usize, steps: usize) {
    compare_in(Precision::F32, 1e-4, spec, batch, steps);
}

fn compare_in(precision: Precision, tol: f32, spec: &NetSpec, batch: usize, steps: usize) {
    let Some(gpu) = new_gpu(precision) else {
        return;
    };
    let ours = train(gpu, spec, batch, steps);
    let reference = train(ReferenceCpu, spec, batch, steps);
    check_runs(
        &format!("{} ({precision})", spec.name),
        &ours,
        &reference,
        spec,
        tol,
    );
}

fn check_runs(name: &str, ours: &Run, reference: &Run, spec: &NetSpec, tol: f32) {
    assert!(
        ours.losses.iter().all(|l| l.is_finite()),
        "{name}: losses {:?}",
        ours.losses
    );
    assert_close(
        &format!("{name} losses"),
        &ours.losses,
        &reference.losses,
        tol,
    );
    let plan = alexnet::Plan::new(spec).unwrap();
    for (i, info) in plan.params.iter().enumerate() {
        let label = format!("{name} {}", info.name);
        assert_close(
            &format!("{label} gradient"),
            &ours.grads[i],
            &reference.grads[i],
            tol,
        );
        assert_close(
            &format!("{label} after the step"),
            &ours.params[i],
            &reference.params[i],
            tol,
        );
    }
    assert_close(
        &format!("{name} test logits"),
        &ours.logits,
        &reference.logits,
        tol,
    );
}

#[test]
fn cifar_preset_trains_like_the_cpu_reference() {
    // The preset as shipped: 3x32x32 input, conv 5x5, overlapping max pooling,
    // LRN, dropout and two fully connected layers.
    compare(&NetSpec::preset("cifar").unwrap(), 8, 2);
}

#[test]
fn paper_layout_with_two_towers_trains_like_the_cpu_reference() {
    compare(&paper_mini(), 4, 2);
}

/// The paper's two towers, both on GPU 0 (how `--devices cuda:0,cuda:0 --parallel
/// towers` runs them), against the one-device CPU reference: the same function,
/// exchanging activations at conv3 and the fully connected layers.
#[test]
fn two_towers_on_one_gpu_train_like_the_cpu_reference() {
    let (Some(first), Some(second)) = (new_gpu(Precision::F32), new_gpu(Precision::F32)) else {
        return;
    };
    let spec = paper_mini();
    let mut towers = Towers::new(vec![first, second], &spec, 4, 11).unwrap();
    let ours = train_model(&mut towers, &spec, 4, 2);
    let reference = train(ReferenceCpu, &spec, 4, 2);
    check_runs("two towers on one GPU", &ours, &reference, &spec, 1e-4);
}

#[test]
fn cifar_preset_trains_in_bf16_near_the_cpu_reference() {
    compare_in(
        Precision::Bf16,
        3e-2,
        &NetSpec::preset("cifar").unwrap(),
        8,
        2,
    );
}

#[test]
fn paper_layout_trains_in_bf16_near_the_cpu_reference() {
    compare_in(Precision::Bf16, 3e-2, &paper_mini(), 4, 2);
}

#[test]
fn tf32_convolution_stays_near_fp32() {
    // TF32 keeps 10 mantissa bits of each input (relative rounding ~5e-4);
    // sums of a few hundred such products stay within 1e-2 of the largest output.
    let Some(gpu) = new_gpu(Precision::Tf32) else {
        return;
    };
    assert!(gpu.describe().ends_with("tf32)"), "{}", gpu.describe());
    let g = ConvGeometry {
        input: Shape::new(8, 13, 13),
        output: Shape::new(16, 13, 13),
        kernel: 3,
        stride: 1,
        pad: 1,
        groups: 2,
    };
    let n = 4;
    let mut rng = Rng::new(12);
    let x = random(&mut rng, n * g.input.len(), 1.0);
    let w = random(&mut rng, g.weight_len(), 0.3);
    let b = random(&mut rng, g.output.channels, 0.5);
    let mut y_ref = vec![0.0; n * g.output.len()];
    ReferenceCpu.conv_forward(&g, n, &x, &w, &b, &mut y_ref);
    let mut yd = gpu.alloc(y_ref.len()).unwrap();
    gpu.conv_forward(
        &g,
        n,
        &to_device(&gpu, &x),
        &to_device(&gpu, &w),
        &to_device(&gpu, &b),
        &mut yd,
    );
    assert_close(
        "tf32 conv y",
        &to_host(&gpu, &yd, y_ref.len()),
        &y_ref,
        1e-2,
    );
}
