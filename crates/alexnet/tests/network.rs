//! Whole networks: the fast backend against the reference backend over several
//! training steps, initialisation, checkpoints, input validation, and learning.

mod common;

use std::collections::BTreeMap;

use alexnet::checkpoint;
use alexnet::plan::Init;
use alexnet::rng::Rng;
use alexnet::{
    Backend, Bf16Kernel, Cpu, Mode, Model, NetSpec, Network, Precision, ReferenceCpu, Sgd,
};
use common::{assert_close, paper_mini, random};

fn run_steps<B: Backend>(
    backend: B,
    spec: &NetSpec,
    steps: usize,
) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
    let batch = 4;
    let mut net = Network::new(backend, spec, batch, 11).unwrap();
    let mut rng = Rng::new(5);
    let images = random(&mut rng, batch * net.plan().input_shape().len(), 128.0);
    let labels: Vec<u32> = (0..batch as u32).collect();
    let sgd = Sgd::from_recipe(&spec.recipe);
    let mut losses = Vec::new();
    for _ in 0..steps {
        losses.push(net.train_step(&images, &labels, &sgd).unwrap());
    }
    let logits = net.predict(&images).unwrap();
    let params = (0..net.params().len())
        .map(|i| net.param_values(i))
        .collect();
    (losses, logits, params)
}

/// ||a - b|| / ||b|| (Euclidean norms).
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut off, mut size) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        off += f64::from(x - y).powi(2);
        size += f64::from(*y).powi(2);
    }
    (off / size.max(1e-300)).sqrt()
}

/// Loss, logits and all parameter gradients (concatenated) of one forward and
/// backward pass on a fixed random batch.
fn gradients<B: Backend>(backend: B, spec: &NetSpec) -> (f32, Vec<f32>, Vec<f32>) {
    let batch = 4;
    let mut net = Network::new(backend, spec, batch, 11).unwrap();
    let mut rng = Rng::new(5);
    let images = random(&mut rng, batch * net.plan().input_shape().len(), 128.0);
    let labels: Vec<u32> = (0..batch as u32).collect();
    net.set_input(&images).unwrap();
    net.forward(Mode::Test);
    let logits = net.logits();
    let loss = net.backward(&labels).unwrap();
    let grads = (0..net.params().len())
        .flat_map(|i| net.param_grad(i))
        .collect();
    (loss, logits, grads)
}

#[test]
fn bf16_products_give_fp32_gradients_to_bf16_accuracy() {
    // bf16 operands carry 8 significant bits (relative rounding 2^-9 = 0.2%), so
    // outputs and gradients move by a few tenths of a percent (as vectors; single
    // entries whose sums cancel move more); a wrong index would move them by order
    // 1. Each bf16 kernel must also agree closely with the portable one.
    for spec in [
        paper_mini(),
        NetSpec::preset("cifar").unwrap().with_input(1, 28, 28),
    ] {
        let (loss_f32, logits_f32, grads_f32) = gradients(Cpu::new(), &spec);
        let mut portable = None;
        for (mode, products) in common::product_modes() {
            if products.precision != Precision::Bf16 {
                continue;
            }
            let what = format!("{} ({mode})", spec.name);
            let (loss, logits, grads) = gradients(Cpu::with_products(products).unwrap(), &spec);
            let (logits_off, grads_off) = (
                relative_l2(&logits, &logits_f32),
                relative_l2(&grads, &grads_f32),
            );
            eprintln!(
                "{what}: loss {loss} / {loss_f32}, logits {logits_off:e}, gradients {grads_off:e}"
            );
            // The fp32 path is deterministic: any difference shows that bf16 ran.
            assert!(
                grads_off > 0.0,
                "{what}: gradients equal fp32's bit for bit"
            );
            assert!(logits_off < 1e-2, "{what}: logits {logits_off:e} from fp32");
            assert!(
                grads_off < 2e-2,
                "{what}: gradients {grads_off:e} from fp32"
            );
            assert!(
                ((loss - loss_f32) / loss_f32).abs() < 1e-3,
                "{what}: loss {loss} vs {loss_f32}"
            );
            match products.bf16_kernel {
                Bf16Kernel::Portable => portable = Some(grads),
                _ => {
                    let reference = portable.as_ref().expect("the portable kernel runs first");
                    let off = relative_l2(&grads, reference);
                    assert!(
                        off < 1e-4,
                        "{what}: gradients {off:e} from the portable kernel's"
                    );
                }
            }
        }
    }
}

#[test]
fn fast_backend_trains_like_the_reference() {
    for spec in [
        paper_mini(),
        NetSpec::preset("cifar").unwrap().with_input(1, 28, 28),
    ] {
        let (loss_fast, logits_fast, params_fast) = run_steps(Cpu::new(), &spec, 3);
        let (loss_ref, logits_ref, params_ref) = run_steps(ReferenceCpu, &spec, 3);
        // Rounding differences grow a little over steps; 1e-4 relative is still far
        // below what any wrong index or missing term would produce.
        assert_close(
            &format!("{} losses", spec.name),
            &loss_fast,
            &loss_ref,
            1e-4,
        );
        assert_close(
            &format!("{} logits", spec.name),
            &logits_fast,
            &logits_ref,
            1e-4,
        );
        let plan = alexnet::Plan::new(&spec).unwrap();
        for (info, (f, r)) in plan.params.iter().zip(params_fast.iter().zip(&params_ref)) {
            assert_close(&format!("{} {}", spec.name, info.name), f, r, 1e-4);
        }
    }
}

#[test]
fn paper_initialisation() {
    let spec = NetSpec::preset("alexnet").unwrap();
    let net = Network::new(Cpu::new(), &spec, 1, 3).unwrap();
    for (index, p) in net.params().iter().enumerate() {
        let values = net.param_values(index);
        match p.info.init {
            Init::Gaussian(std) => {
                assert_eq!(std, 0.01, "{}", p.info.name);
                let n = values.len() as f64;
                let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
                let sd = (values
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt();
                assert!(
                    mean.abs() < 0.01 * 5.0 / n.sqrt(),
                    "{} mean {mean}",
                    p.info.name
                );
                assert!((sd - 0.01).abs() < 0.0005, "{} std {sd}", p.info.name);
            }
            Init::Constant(c) => assert!(values.iter().all(|&v| v == c), "{}", p.info.name),
        }
    }
    // The same seed gives the same weights.
    let again = Network::new(Cpu::new(), &spec, 1, 3).unwrap();
    assert_eq!(net.param_values(0), again.param_values(0));
}

#[test]
fn checkpoints_round_trip_and_name_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("alexnet-ckpt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.safetensors");
    let spec = paper_mini();
    let mut net = Network::new(Cpu::new(), &spec, 2, 1).unwrap();
    let mut rng = Rng::new(1);
    let images = random(&mut rng, 2 * net.plan().input_shape().len(), 100.0);
    net.train_step(&images, &[1, 2], &Sgd::from_recipe(&spec.recipe))
        .unwrap();
    let options = checkpoint::SaveOptions {
        step: 1,
        with_velocity: true,
        metadata: BTreeMap::from([("note".to_string(), "test".to_string())]),
        tensors: vec![("preprocess.mean".to_string(), vec![2], vec![1.5, 2.5])],
    };
    checkpoint::save(&net, &path, &options).unwrap();
    assert!(
        !dir.join(".net.safetensors.tmp").exists(),
        "temporary file left behind"
    );

    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded.spec, spec);
    assert_eq!(loaded.step, 1);
    assert_eq!(loaded.metadata["note"], "test");
    assert_eq!(loaded.tensors["preprocess.mean"], (vec![2], vec![1.5, 2.5]));
    assert_eq!(loaded.tensors["conv1.weight"].0, vec![12, 3, 11, 11]);
    let mut fresh = Network::new(Cpu::new(), &loaded.spec, 2, 99).unwrap();
    loaded.apply(&mut fresh, &path, true).unwrap();
    assert_eq!(
        fresh.predict(&images).unwrap(),
        net.predict(&images).unwrap()
    );
    for i in 0..net.params().len() {
        assert_eq!(fresh.param_velocity(i), net.param_velocity(i));
    }

    // A net of another shape: the error names the tensor and both shapes.
    let mut wider = spec.clone();
    if let alexnet::spec::LayerSpec::Conv(c) = &mut wider.layers[0] {
        c.out = 16;
    }
    let mut other = Network::new(Cpu::new(), &wider, 1, 1).unwrap();
    let err = loaded
        .apply(&mut other, &path, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv1.weight")
            && err.contains("[16, 3, 11, 11]")
            && err.contains("[12, 3, 11, 11]"),
        "{err}"
    );

    // Not a checkpoint at all.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    let err = checkpoint::load(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.safetensors"), "{err}");
    let err = checkpoint::load(&dir.join("missing.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_refused_with_a_message() {
    let spec = NetSpec::preset("cifar").unwrap();
    let mut net = Network::new(Cpu::new(), &spec, 2, 1).unwrap();
    let err = net.set_input(&[0.0; 100]).unwrap_err().to_string();
    assert!(err.contains("3x32x32"), "{err}");
    let err = net
        .set_input(&vec![0.0; 3 * 3 * 32 * 32])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 2 images"), "{err}");
    net.set_input(&vec![0.0; 3 * 32 * 32]).unwrap();
    net.forward(Mode::Train);
    let err = net.backward(&[10]).unwrap_err().to_string();
    assert!(err.contains("below 10"), "{err}");
    let err = net.backward(&[1, 2]).unwrap_err().to_string();
    assert!(err.contains("1 labels"), "{err}");
}

#[test]
fn dropout_is_the_identity_at_test_time_and_random_in_training() {
    let spec = paper_mini();
    let mut net = Network::new(Cpu::new(), &spec, 2, 1).unwrap();
    let mut rng = Rng::new(3);
    let images = random(&mut rng, 2 * net.plan().input_shape().len(), 100.0);
    let a = net.predict(&images).unwrap();
    let b = net.predict(&images).unwrap();
    assert_eq!(a, b, "test mode must be deterministic");
    net.set_input(&images).unwrap();
    net.forward(Mode::Train);
    let c = net.logits();
    net.forward(Mode::Train);
    let d = net.logits();
    assert_ne!(c, d, "training mode draws new dropout masks");
}

/// A small learnable task: each class is a fixed random pattern plus noise.
#[test]
fn the_cifar_net_learns_a_simple_task() {
    let spec = NetSpec::preset("cifar")
        .unwrap()
        .with_input(1, 28, 28)
        .with_classes(4);
    let batch = 32;
    let mut net = Network::new(Cpu::new(), &spec, batch, 7).unwrap();
    let mut rng = Rng::new(8);
    let len = 28 * 28;
    let patterns: Vec<Vec<f32>> = (0..4).map(|_| random(&mut rng, len, 100.0)).collect();
    let mut sgd = Sgd::from_recipe(&spec.recipe);
    sgd.learning_rate = 0.003;
    let make_batch = |rng: &mut Rng| {
        let labels: Vec<u32> = (0..batch).map(|_| rng.below(4) as u32).collect();
        let mut images = Vec::with_capacity(batch * len);
        for &l in &labels {
            images.extend(
                patterns[l as usize]
                    .iter()
                    .map(|&v| v + ((rng.uniform() - 0.5) * 100.0) as f32),
            );
        }
        (images, labels)
    };
    let mut first = 0.0;
    for step in 0..100 {
        let (images, labels) = make_batch(&mut rng);
        let loss = net.train_step(&images, &labels, &sgd).unwrap();
        if step == 0 {
            first = loss;
        }
    }
    let (images, labels) = make_batch(&mut rng);
    let logits = net.predict(&images).unwrap();
    let correct = logits
        .chunks_exact(4)
        .zip(&labels)
        .filter(|(row, l)| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
                == **l as usize
        })
        .count();
    assert!(
        (first - (4f32).ln()).abs() < 0.2,
        "initial loss {first} should be near ln 4"
    );
    assert!(
        correct >= batch * 3 / 4,
        "only {correct} of {batch} right after training"
    );
}

/// The paper's LRN + max-pooling blocks run as one operation that keeps no LRN
/// output: the LRN layers' outputs are still reported (normalised again), and a
/// backward pass after a test-mode forward pass (which records nothing for the
/// pooling) gives the gradients of one after a training forward pass.
#[test]
fn fused_lrn_and_pooling_keep_the_layer_semantics() {
    let mut spec = paper_mini();
    // Without dropout, training and test forward passes compute the same.
    spec.layers
        .retain(|l| !matches!(l, alexnet::spec::LayerSpec::Dropout(_)));
    let batch = 3;
    let mut rng = Rng::new(8);
    let mut net = Network::new(Cpu::new(), &spec, batch, 4).unwrap();
    let images = random(&mut rng, batch * net.plan().input_shape().len(), 128.0);
    let labels = [1, 7, 3];
    let plan = net.plan().clone();

    net.set_input(&images).unwrap();
    net.forward(Mode::Train);
    let lrn_layers: Vec<usize> = plan
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.op, alexnet::plan::Op::Lrn { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        lrn_layers.len(),
        2,
        "the miniature has the paper's two LRN layers"
    );
    let fusions = alexnet::fusion::fusions(&plan);
    for &index in &lrn_layers {
        assert_eq!(
            fusions[index],
            alexnet::fusion::Fusion::LrnIntoPool { pool: index + 1 },
            "{} runs with its pooling",
            plan.layers[index].label
        );
    }
    for &index in &lrn_layers {
        let alexnet::plan::Op::Lrn { geometry } = &plan.layers[index].op else {
            unreachable!()
        };
        let input = net.layer_output(index - 1);
        let mut expected = vec![0.0; input.len()];
        alexnet::cpu::reference::lrn_forward(geometry, batch, &input, &mut expected);
        assert_close(
            &format!("{} output", plan.layers[index].label),
            &net.layer_output(index),
            &expected,
            1e-5,
        );
    }
    net.backward(&labels).unwrap();
    let after_training: Vec<Vec<f32>> = (0..plan.params.len()).map(|i| net.param_grad(i)).collect();

    // A training pass of other images first, so that what it recorded is stale.
    let other = random(&mut rng, images.len(), 128.0);
    net.set_input(&other).unwrap();
    net.forward(Mode::Train);
    net.set_input(&images).unwrap();
    net.forward(Mode::Test);
    net.backward(&labels).unwrap();
    for (index, expected) in after_training.iter().enumerate() {
        // Close rather than equal: the threads' partial sums may add up in another order.
        assert_close(
            &format!("{} after a test-mode forward pass", plan.params[index].name),
            &net.param_grad(index),
            expected,
            1e-5,
        );
    }
}

/// A test-mode forward pass records nothing for a fused LRN + pooling, so the
/// backward pass runs it again: that must leave the pool's buffer alone, where
/// an in-place activation after the pool keeps its output for its own backward
/// pass (a second backward pass, and the features, read it).
#[test]
fn recording_again_keeps_an_in_place_activation_after_the_pool() {
    let spec = NetSpec::from_toml(
        r#"
name = "lrn-pool-tanh"
classes = 3
[input]
channels = 2
height = 11
width = 11
[[layers]]
type = "conv"
name = "conv1"
out = 6
kernel = 3
pad = 1
init_std = 0.5
[[layers]]
type = "lrn"
[[layers]]
type = "max-pool"
size = 3
stride = 2
[[layers]]
type = "tanh"
[[layers]]
type = "linear"
name = "fc"
"#,
        "test",
    )
    .unwrap();
    let batch = 2;
    let mut rng = Rng::new(21);
    let mut net = Network::new(Cpu::new(), &spec, batch, 6).unwrap();
    let images = random(&mut rng, batch * net.plan().input_shape().len(), 3.0);
    let labels = [2, 0];
    net.set_input(&images).unwrap();
    net.forward(Mode::Test);
    let tanh_output = net.layer_output(3);
    assert!(tanh_output.iter().all(|v| v.abs() < 1.0), "tanh's outputs");
    net.backward(&labels).unwrap();
    let first: Vec<Vec<f32>> = (0..net.plan().params.len())
        .map(|i| net.param_grad(i))
        .collect();
    assert_eq!(
        net.layer_output(3),
        tanh_output,
        "tanh's outputs after a backward pass"
    );
    net.backward(&labels).unwrap();
    for (index, expected) in first.iter().enumerate() {
        assert_close(
            &format!(
                "{} in a second backward pass",
                net.plan().params[index].name
            ),
            &net.param_grad(index),
            expected,
            1e-6,
        );
    }
}

#[test]
fn a_share_of_a_batch_draws_its_rows_of_the_whole_batchs_dropout_masks() {
    // Data parallelism: images 2..4 of a batch of 4, on a net of its own with the
    // same generator, must meet the same dropout masks as in the whole batch.
    let spec = paper_mini();
    let mut whole = Network::new(ReferenceCpu, &spec, 4, 11).unwrap();
    let mut share = Network::new(ReferenceCpu, &spec, 2, 11).unwrap();
    share.set_dropout_offset(2).unwrap();
    let mut rng = Rng::new(5);
    let len = whole.plan().input_shape().len();
    let images = random(&mut rng, 4 * len, 1.0);
    whole.set_input(&images).unwrap();
    whole.forward(Mode::Train);
    share.set_input(&images[2 * len..]).unwrap();
    share.forward(Mode::Train);
    let dropouts: Vec<usize> = (0..whole.plan().layers.len())
        .filter(|&i| matches!(whole.plan().layers[i].op, alexnet::plan::Op::Dropout { .. }))
        .collect();
    assert_eq!(dropouts.len(), 2);
    for layer in dropouts {
        let per_image = whole.plan().layers[layer].output.len();
        let (a, b) = (whole.layer_output(layer), share.layer_output(layer));
        assert_eq!(
            &a[2 * per_image..4 * per_image],
            &b[..2 * per_image],
            "layer {layer}"
        );
        assert!(b.contains(&0.0), "some values dropped");
    }
}

/// On the CPU a parameter's gradient is reachable in place, as host memory
/// (what a communicator sums across processes without copies), and what is
/// written there is the gradient the update uses.
#[test]
fn a_gradient_changed_in_place_is_the_one_the_update_uses() {
    let spec = paper_mini();
    let mut rng = Rng::new(5);
    for fast in [false, true] {
        let mut net: Box<dyn Model> = if fast {
            Box::new(Network::new(Cpu::new(), &spec, 2, 11).unwrap())
        } else {
            Box::new(Network::new(ReferenceCpu, &spec, 2, 11).unwrap())
        };
        let images = random(&mut rng, 2 * net.plan().input_shape().len(), 1.0);
        net.set_input(&images).unwrap();
        net.forward(Mode::Train);
        net.backward(&[0, 1]).unwrap();
        let index = net.param_index("fc6.weight").unwrap();
        let before = net.param_grad(index);
        let Some(alexnet::BufferMut::Host(grad)) = net.param_grad_mut(index) else {
            panic!("a CPU gradient is host memory");
        };
        assert_eq!(grad, &before[..]);
        grad.iter_mut().for_each(|g| *g *= 3.0);
        let tripled: Vec<f32> = before.iter().map(|g| g * 3.0).collect();
        assert_eq!(net.param_grad(index), tripled);
        // Plain SGD (no momentum, no decay): the step is -lr times the gradient.
        let values = net.param_values(index);
        let sgd = Sgd {
            learning_rate: 0.5,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        net.sgd_step(&sgd);
        let moved: Vec<f32> = values
            .iter()
            .zip(&tripled)
            .map(|(v, g)| v - 0.5 * g)
            .collect();
        assert_close(
            "fc6.weight after the step",
            &net.param_values(index),
            &moved,
            1e-6,
        );
    }
}

/// The backward pass hands over each parameter's gradient once, as soon as
/// its layer is done (the last layers' first, so that sums across processes
/// can start while the convolutions' gradients are computed), and what it
/// hands over is already the final gradient, in the buffer the update reads.
#[test]
fn each_gradient_is_handed_over_once_finished_last_layers_first() {
    let spec = paper_mini();
    let mut rng = Rng::new(6);
    let mut net = Network::new(Cpu::new(), &spec, 2, 12).unwrap();
    let images = random(&mut rng, 2 * net.plan().input_shape().len(), 1.0);
    net.set_input(&images).unwrap();
    net.forward(Mode::Train);
    let mut handed: Vec<(usize, Vec<f32>)> = Vec::new();
    net.backward_each(&[1, 0], &mut |index, grad| match grad {
        alexnet::BufferMut::Host(values) => handed.push((index, values.to_vec())),
        alexnet::BufferMut::Device { .. } => panic!("a CPU gradient is host memory"),
    })
    .unwrap();
    let params = net.plan().params.len();
    let order: Vec<usize> = handed.iter().map(|(index, _)| *index).collect();
    // Weight then bias of each layer, the layers from last to first.
    let expected: Vec<usize> = (0..params / 2)
        .rev()
        .flat_map(|layer| [2 * layer, 2 * layer + 1])
        .collect();
    assert_eq!(order, expected);
    for (index, values) in &handed {
        assert_eq!(&net.param_grad(*index), values, "{index}");
    }
    // The same gradients as the plain backward pass.
    let mut again = Network::new(Cpu::new(), &spec, 2, 12).unwrap();
    again.set_input(&images).unwrap();
    again.forward(Mode::Train);
    again.backward(&[1, 0]).unwrap();
    for (index, values) in &handed {
        assert_eq!(&again.param_grad(*index), values, "{index}");
    }
}

/// A net that ran a larger batch (a validation batch of a data-parallel
/// process) trains a smaller one exactly as a net that never did: nothing of
/// the larger batch's rows is read again.
#[test]
fn a_smaller_batch_after_a_larger_one_trains_as_if_alone() {
    let spec = NetSpec::preset("cifar").unwrap();
    let mut rng = Rng::new(8);
    let len = Network::new(Cpu::new(), &spec, 1, 3)
        .unwrap()
        .plan()
        .input_shape()
        .len();
    let classes = 10;
    let large = random(&mut rng, 6 * len, 1.0);
    let small = random(&mut rng, 5 * len, 1.0);
    let labels: Vec<u32> = (0..5).map(|i| i % classes).collect();
    let sgd = Sgd {
        learning_rate: 0.01,
        momentum: 0.9,
        weight_decay: 0.0005,
    };
    let mut after = Network::new(Cpu::new(), &spec, 6, 3).unwrap();
    let mut alone = Network::new(Cpu::new(), &spec, 6, 3).unwrap();
    after.predict(&large).unwrap();
    for _ in 0..2 {
        after.train_step(&small, &labels, &sgd).unwrap();
        alone.train_step(&small, &labels, &sgd).unwrap();
    }
    for index in 0..after.plan().params.len() {
        let name = &after.plan().params[index].name;
        assert_eq!(
            after.param_values(index),
            alone.param_values(index),
            "{name}"
        );
    }
}
