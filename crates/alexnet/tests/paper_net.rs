//! The readable network (`paper_net.rs`, straight-line calls over the reference
//! layers) against `Network`, on the paper's net in miniature: the same losses,
//! logits, gradients and weights over several training steps with the same
//! dropout masks, on the reference backend and on the fast one.

mod common;

use alexnet::paper_net::{DropoutMasks, PaperGeometry, PaperNet};
use alexnet::rng::Rng;
use alexnet::{Backend, Cpu, Mode, Model, NetSpec, Network, ReferenceCpu, Sgd};
use common::{assert_close, paper_mini, random};

const BATCH: usize = 4;

/// Masks of 0 and `1 / (1 - p)`, drawn from `rng`.
fn masks(geometry: &PaperGeometry, rng: &mut Rng) -> DropoutMasks {
    let mut draw = |g: &alexnet::layers::DropoutGeometry| -> Vec<f32> {
        (0..BATCH * g.len)
            .map(|_| {
                if rng.uniform() < f64::from(g.p) {
                    0.0
                } else {
                    g.keep_scale()
                }
            })
            .collect()
    };
    DropoutMasks {
        dropout6: draw(&geometry.dropout6),
        dropout7: draw(&geometry.dropout7),
    }
}

/// Replaces the paper's initialisation (under which the fully connected layers'
/// unit biases keep every ReLU open in so small a net) by weights scaled to each
/// layer's fan-in and zero-centred biases, so that about half of every layer's
/// ReLUs are closed and a missing or misplaced layer shows.
fn spread_out_params(net: &mut impl Model, rng: &mut Rng) -> Vec<Vec<f32>> {
    let infos = net.plan().params.clone();
    let mut values = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let fan_in = info.len() / info.shape[0];
        let scale = if info.decay {
            (6.0 / fan_in as f64).sqrt()
        } else {
            0.1
        };
        let tensor = random(rng, info.len(), scale);
        net.set_param_values(i, &tensor).unwrap();
        values.push(tensor);
    }
    values
}

/// Asserts each parameter tensor of `net`, as `ours` reads it by index, close to
/// the readable net's tensor of the same index in `theirs`.
fn each_param_close(
    what: &str,
    net: &impl Model,
    ours: impl Fn(usize) -> Vec<f32>,
    theirs: Vec<&[f32]>,
    tol: f32,
) {
    for (i, theirs) in theirs.into_iter().enumerate() {
        let name = &net.plan().params[i].name;
        assert_close(&format!("{what} {name}"), &ours(i), theirs, tol);
    }
}

/// Trains `Network` on `backend` and the readable net side by side for three
/// steps and checks that they agree to `tol` (relative to each tensor's size).
fn agrees_with_network<B: Backend>(backend: B, what: &str, tol: f32) {
    let spec = paper_mini();
    let mut net = Network::new(backend, &spec, BATCH, 11).unwrap();
    let mut rng = Rng::new(5);
    let values = spread_out_params(&mut net, &mut rng);
    let mut paper = PaperNet::new(net.plan(), values).unwrap();
    let images = random(&mut rng, BATCH * net.plan().input_shape().len(), 1.0);
    let labels = [0, 3, 7, 9];
    // A rate well above the paper's, so that three steps move every weight visibly.
    let sgd = Sgd {
        learning_rate: 0.05,
        ..Sgd::from_recipe(&spec.recipe)
    };
    for step in 0..3 {
        let masks = masks(&paper.geometry, &mut rng);
        net.set_input(&images).unwrap();
        net.set_next_dropout_masks(&[masks.dropout6.clone(), masks.dropout7.clone()])
            .unwrap();
        net.forward(Mode::Train);
        let loss = net.backward(&labels).unwrap();

        let activations = paper.forward(BATCH, &images, Some(&masks));
        let (paper_loss, grads) = paper.backward(BATCH, &images, &activations, &masks, &labels);
        assert_close(
            &format!("{what} step {step} logits"),
            &net.logits(),
            &activations.fc8,
            tol,
        );
        assert_close(
            &format!("{what} step {step} loss"),
            &[loss],
            &[paper_loss],
            tol,
        );
        let what = format!("{what} step {step} grad");
        each_param_close(&what, &net, |i| net.param_grad(i), grads.tensors(), tol);
        net.sgd_step(&sgd);
        paper.update(&grads, &sgd);
    }
    let what = format!("{what} final");
    each_param_close(
        &what,
        &net,
        |i| net.param_values(i),
        paper.params.tensors(),
        tol,
    );
    let test_logits = net.predict(&images).unwrap();
    let paper_logits = paper.forward(BATCH, &images, None).fc8;
    assert_close(
        &format!("{what} test logits"),
        &test_logits,
        &paper_logits,
        tol,
    );
}

#[test]
fn the_readable_net_trains_like_network_on_the_reference_backend() {
    // The same loops in another order (Network fuses LRN with pooling): only
    // rounding differs.
    agrees_with_network(ReferenceCpu, "reference", 1e-5);
}

#[test]
fn the_readable_net_trains_like_network_on_the_fast_backend() {
    // Blocked products and Winograd transforms sum in other orders than the loops.
    agrees_with_network(Cpu::new(), "fast", 2e-4);
}

#[test]
fn a_net_with_other_layers_is_refused_naming_the_layer() {
    let spec = NetSpec::preset("cifar").unwrap().with_input(1, 28, 28);
    let plan = alexnet::Plan::new(&spec).unwrap();
    let err = PaperGeometry::from_plan(&plan).unwrap_err().to_string();
    assert!(err.contains("layer"), "{err}");
    assert!(err.contains("expected"), "{err}");

    let plan = alexnet::Plan::new(&paper_mini()).unwrap();
    let err = PaperNet::new(&plan, vec![vec![0.0; 3]; 16])
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv1.weight"), "{err}");
}
