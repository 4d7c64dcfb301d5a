//! The paper's two towers as two devices (here two CPU backends): the split itself,
//! and training that matches the one-device net with the same description, seed
//! and data step for step.

mod common;

use alexnet::model::Model;
use alexnet::rng::Rng;
use alexnet::spec::LayerSpec;
use alexnet::towers::TowerLayout;
use alexnet::{Backend, Cpu, NetSpec, Network, ReferenceCpu, Sgd, Towers, checkpoint};
use common::{assert_close, paper_mini, random};

struct Run {
    losses: Vec<f32>,
    logits: Vec<f32>,
    fc7: Vec<f32>,
    params: Vec<Vec<f32>>,
    velocities: Vec<Vec<f32>>,
}

/// Three training steps (dropout masks drawn by the net), then a test pass.
fn run_steps(net: &mut dyn Model) -> Run {
    let batch = 4;
    let mut rng = Rng::new(5);
    let images = random(&mut rng, batch * net.plan().input_shape().len(), 128.0);
    let labels: Vec<u32> = vec![3, 1, 4, 1];
    let sgd = Sgd::from_recipe(&net.spec().recipe);
    let losses = (0..3)
        .map(|_| net.train_step(&images, &labels, &sgd).unwrap())
        .collect();
    let logits = net.predict(&images).unwrap();
    let fc7 = net
        .plan()
        .layers
        .iter()
        .position(|l| l.label.contains("fc7"))
        .unwrap();
    let count = net.plan().params.len();
    Run {
        losses,
        logits,
        fc7: net.layer_output(fc7),
        params: (0..count).map(|i| net.param_values(i)).collect(),
        velocities: (0..count).map(|i| net.param_velocity(i)).collect(),
    }
}

fn assert_same_run(what: &str, towers: &Run, one: &Run, tol: f32) {
    assert_close(&format!("{what}: losses"), &towers.losses, &one.losses, tol);
    assert_close(&format!("{what}: logits"), &towers.logits, &one.logits, tol);
    assert_close(&format!("{what}: fc7"), &towers.fc7, &one.fc7, tol);
    for (i, (a, b)) in towers.params.iter().zip(&one.params).enumerate() {
        assert_close(&format!("{what}: parameter {i}"), a, b, tol);
    }
    for (i, (a, b)) in towers.velocities.iter().zip(&one.velocities).enumerate() {
        assert_close(&format!("{what}: velocity {i}"), a, b, tol);
    }
}

/// Three training steps at batch 4 of nets built for `max_batch` images.
fn towers_against_one_device<B: Backend>(
    make: impl Fn() -> B,
    spec: &NetSpec,
    max_batch: usize,
    what: &str,
    tol: f32,
) {
    let spec = spec.clone();
    let mut one = Network::new(make(), &spec, max_batch, 11).unwrap();
    let mut towers = Towers::new(vec![make(), make()], &spec, max_batch, 11).unwrap();
    // Same seed, same initial values: the halves put together are the whole.
    for i in 0..spec_param_count(&spec) {
        assert_eq!(
            towers.param_values(i),
            one.param_values(i),
            "initial parameter {i}"
        );
    }
    let one = run_steps(&mut one);
    let towers = run_steps(&mut towers);
    assert_same_run(what, &towers, &one, tol);
    // The steps moved the weights: the comparison is not of two untouched nets.
    let fresh = Network::new(make(), &spec, max_batch, 11).unwrap();
    assert!(
        towers.params[0] != fresh.param_values(0),
        "{what}: training left conv1 unchanged"
    );
}

fn spec_param_count(spec: &NetSpec) -> usize {
    alexnet::Plan::new(spec).unwrap().params.len()
}

#[test]
fn two_reference_towers_train_like_the_one_device_reference_net() {
    // The same sums in a different order (a tower's share of conv3 adds up over
    // its own input half separately), so equal to rounding.
    towers_against_one_device(|| ReferenceCpu, &paper_mini(), 4, "reference", 1e-5);
}

#[test]
fn two_fast_towers_train_like_the_one_device_fast_net() {
    // Half-width layers may take other kernels (Winograd or im2col) than the whole.
    towers_against_one_device(Cpu::new, &paper_mini(), 4, "fast", 1e-4);
}

#[test]
fn towers_built_for_larger_batches_train_like_one_device() {
    towers_against_one_device(|| ReferenceCpu, &paper_mini(), 7, "batch 4 of 7", 1e-5);
}

/// Dropout on the input image, before anything is split: every tower takes the
/// whole mask, the one the one-device net draws.
#[test]
fn dropout_before_the_towers_split_is_the_one_device_nets() {
    let mut spec = paper_mini();
    spec.layers
        .insert(0, LayerSpec::Dropout(alexnet::spec::DropoutSpec { p: 0.2 }));
    towers_against_one_device(|| ReferenceCpu, &spec, 4, "input dropout", 1e-5);
    let mut towers = Towers::new(vec![ReferenceCpu, ReferenceCpu], &spec, 2, 1).unwrap();
    let mut one = Network::new(ReferenceCpu, &spec, 2, 1).unwrap();
    let mut rng = Rng::new(2);
    let images = random(&mut rng, 2 * 3 * 67 * 67, 128.0);
    for net in [&mut towers as &mut dyn Model, &mut one] {
        net.set_input(&images).unwrap();
        net.forward(alexnet::Mode::Train);
    }
    assert_eq!(
        towers.layer_output(0),
        one.layer_output(0),
        "the dropped-out input"
    );
}

/// Masks given by the caller are cut into the towers' shares like drawn ones.
#[test]
fn given_dropout_masks_reach_every_tower() {
    let spec = paper_mini();
    let mut towers = Towers::new(vec![ReferenceCpu, ReferenceCpu], &spec, 2, 5).unwrap();
    let mut one = Network::new(ReferenceCpu, &spec, 2, 5).unwrap();
    let mut rng = Rng::new(8);
    let images = random(&mut rng, 2 * 3 * 67 * 67, 128.0);
    // fc6 and fc7 each have 64 outputs in the miniature.
    let masks: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            (0..2 * 64)
                .map(|_| if rng.uniform() < 0.5 { 0.0 } else { 2.0 })
                .collect()
        })
        .collect();
    let labels = [2, 7];
    let mut losses = Vec::new();
    for net in [&mut towers as &mut dyn Model, &mut one] {
        net.set_input(&images).unwrap();
        let err = net
            .set_next_dropout_masks(&masks[..1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("one mask per dropout layer"), "{err}");
        net.set_next_dropout_masks(&masks).unwrap();
        net.forward(alexnet::Mode::Train);
        losses.push(net.backward(&labels).unwrap());
    }
    assert_close("loss with given masks", &losses[..1], &losses[1..], 1e-5);
    assert_close(
        "fc6 gradient",
        &towers.param_grad(10),
        &one.param_grad(10),
        1e-5,
    );
}

#[test]
fn paper_layout_splits_at_conv3_and_the_fully_connected_layers() {
    let spec = NetSpec::preset("alexnet").unwrap();
    let layout = TowerLayout::new(&spec, 2).unwrap();
    let whole = alexnet::Plan::new(&spec).unwrap();
    let gathered: Vec<&str> = layout
        .gathered
        .iter()
        .map(|&i| whole.layers[i].label.as_str())
        .collect();
    assert_eq!(
        gathered,
        [
            "layer 9 (conv3)",
            "layer 16 (fc6)",
            "layer 19 (fc7)",
            "layer 22 (fc8)"
        ]
    );
    let shapes: Vec<(&str, &[usize])> = layout
        .tower
        .params
        .iter()
        .filter(|p| p.name.ends_with("weight"))
        .map(|p| (p.name.as_str(), p.shape.as_slice()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("conv1.weight", &[48, 3, 11, 11][..]),
            ("conv2.weight", &[128, 48, 5, 5][..]),
            ("conv3.weight", &[192, 256, 3, 3][..]),
            ("conv4.weight", &[192, 192, 3, 3][..]),
            ("conv5.weight", &[128, 192, 3, 3][..]),
            ("fc6.weight", &[2048, 9216][..]),
            ("fc7.weight", &[2048, 4096][..]),
            ("fc8.weight", &[500, 4096][..]),
        ]
    );
    assert_eq!(2 * layout.tower.parameter_count(), whole.parameter_count());
}

#[test]
fn nets_whose_towers_would_have_to_talk_elsewhere_are_refused() {
    // LRN across all 96 maps (Caffe's and PyTorch's one-tower form).
    let mut spec = NetSpec::preset("alexnet").unwrap();
    if let LayerSpec::Lrn(n) = &mut spec.layers[2] {
        n.groups = 1;
    }
    let err = TowerLayout::new(&spec, 2).unwrap_err().to_string();
    assert!(
        err.contains("layer 3 (lrn)") && err.contains("within each tower"),
        "{err}"
    );

    let spec = NetSpec::preset("alexnet").unwrap().with_classes(999);
    let err = TowerLayout::new(&spec, 2).unwrap_err().to_string();
    assert!(err.contains("classes") && err.contains("999"), "{err}");

    let mut spec = NetSpec::preset("alexnet").unwrap();
    if let LayerSpec::Conv(c) = &mut spec.layers[0] {
        c.groups = 3;
        c.out = 96;
    }
    let spec = spec.with_input(3, 224, 224);
    let err = TowerLayout::new(&spec, 2).unwrap_err().to_string();
    assert!(
        err.contains("layer 1 (conv1)") && err.contains("groups 3"),
        "{err}"
    );

    let err = TowerLayout::new(&NetSpec::preset("alexnet").unwrap(), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2 towers"), "{err}");
}

#[test]
fn checkpoints_from_towers_load_into_one_device_and_back() {
    let spec = paper_mini();
    let mut towers = Towers::new(vec![Cpu::new(), Cpu::new()], &spec, 2, 7).unwrap();
    let mut rng = Rng::new(9);
    let images = random(&mut rng, 2 * 3 * 67 * 67, 128.0);
    let sgd = Sgd::from_recipe(&spec.recipe);
    towers.train_step(&images, &[0, 9], &sgd).unwrap();
    let dir = std::env::temp_dir().join(format!("alexnet-towers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("towers.safetensors");
    let options = checkpoint::SaveOptions {
        with_velocity: true,
        ..Default::default()
    };
    checkpoint::save(&towers, &path, &options).unwrap();

    let loaded = checkpoint::load(&path).unwrap();
    let mut one = Network::new_zeroed(Cpu::new(), &loaded.spec, 2).unwrap();
    loaded.apply(&mut one, &path, true).unwrap();
    let expected = towers.predict(&images).unwrap();
    assert_close(
        "one device from towers",
        &one.predict(&images).unwrap(),
        &expected,
        1e-5,
    );

    let mut again = Towers::new_zeroed(vec![Cpu::new(), Cpu::new()], &loaded.spec, 2).unwrap();
    loaded.apply(&mut again, &path, true).unwrap();
    assert_close(
        "towers from towers",
        &again.predict(&images).unwrap(),
        &expected,
        0.0,
    );
    for i in 0..towers.plan().params.len() {
        assert_eq!(
            again.param_velocity(i),
            towers.param_velocity(i),
            "velocity {i}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_to_towers_is_refused_with_a_message() {
    let spec = paper_mini();
    let mut towers = Towers::new(vec![ReferenceCpu, ReferenceCpu], &spec, 2, 1).unwrap();
    let err = towers.set_input(&[0.0; 10]).unwrap_err().to_string();
    assert!(err.contains("input batch"), "{err}");
    towers.set_input(&vec![0.0; 2 * 3 * 67 * 67]).unwrap();
    towers.forward(alexnet::Mode::Test);
    let err = towers.backward(&[0, 10]).unwrap_err().to_string();
    assert!(err.contains("class indices below 10"), "{err}");
    let err = towers.set_param_values(0, &[1.0]).unwrap_err().to_string();
    assert!(err.contains("conv1.weight"), "{err}");
}

/// Views cut by the net from stored bytes give the logits of the same views cut on
/// the host, on one device and in towers; what does not fit is refused.
#[test]
fn stored_batches_are_cut_into_the_input_of_one_device_and_of_towers() {
    use alexnet::input::{StoredBatch, ViewPlacement, cut_views};
    use alexnet::layers::Shape;
    let spec = paper_mini();
    let stored = Shape::new(3, 70, 72);
    let mut rng = Rng::new(4);
    let pixels: Vec<u8> = (0..2 * stored.len())
        .map(|_| rng.below(256) as u8)
        .collect();
    let mean = random(&mut rng, stored.len(), 100.0);
    let views = [
        ViewPlacement {
            image: 1,
            y: 3,
            x: 5,
            flip: true,
            shift: [1.0, -2.0, 0.5],
        },
        ViewPlacement {
            image: 0,
            y: 0,
            x: 0,
            flip: false,
            shift: [0.0; 3],
        },
        ViewPlacement {
            image: 1,
            y: 2,
            x: 1,
            flip: false,
            shift: [3.0, 0.0, -1.0],
        },
    ];
    let batch = StoredBatch {
        pixels: &pixels,
        stored,
        crop_height: 67,
        crop_width: 67,
        views: &views,
        subtract_mean: true,
        scale: [1.0; 3],
    };
    let mut images = vec![0.0; 3 * 3 * 67 * 67];
    cut_views(&batch, Some(&mean), &mut images);

    let mut one = Network::new(Cpu::new(), &spec, 4, 3).unwrap();
    let mut towers = Towers::new(vec![Cpu::new(), Cpu::new()], &spec, 4, 3).unwrap();
    for net in [&mut one as &mut dyn Model, &mut towers] {
        let expected = net.predict(&images).unwrap();
        let err = net.set_input_stored(&batch).unwrap_err().to_string();
        assert!(
            err.contains("mean image") && err.contains("set_mean_image"),
            "{err}"
        );
        net.set_mean_image(&mean).unwrap();
        assert_eq!(net.set_input_stored(&batch).unwrap(), 3);
        net.forward(alexnet::Mode::Test);
        assert_eq!(net.logits(), expected);

        let small = StoredBatch {
            crop_height: 60,
            ..batch
        };
        let err = net.set_input_stored(&small).unwrap_err().to_string();
        assert!(err.contains("views of 3x67x67"), "{err}");
        let outside = [ViewPlacement { x: 6, ..views[0] }];
        let err = net
            .set_input_stored(&StoredBatch {
                views: &outside,
                ..batch
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("image 1 at (3, 6)"), "{err}");
    }
}
