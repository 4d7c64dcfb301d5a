//! The engine against PyTorch. Each `fixtures/twin-<net>.safetensors` (written by
//! `tools/pytorch_twin.py`) holds a small net's description, starting weights, a
//! batch, its labels and the dropout masks of five training steps, and what PyTorch
//! computed from them: the logits, loss and gradients of the first step, the loss
//! of every step, and the weights and velocities after five steps of the paper's
//! SGD. Both CPU backends replay the same steps here and must agree.
//!
//! PyTorch's values were computed in float64 from the same float32 starting
//! values, so each difference below is the engine's own float32 rounding error.
//! Differences are measured as max|ours - torch| / max|torch| over a tensor,
//! against a bound per kind of tensor (see [`Kind::tolerance`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use alexnet::plan::Op;
use alexnet::{Backend, Cpu, Mode, Model, NetSpec, Network, ReferenceCpu, Sgd};
use safetensors::tensor::{Dtype, SafeTensors};

/// The fixtures that must exist; a missing file fails its test.
const FIXTURES: &[&str] = &["paper-mini", "owt-mini", "cifar-tanh"];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn fixture_path(name: &str) -> PathBuf {
    fixture_dir().join(format!("twin-{name}.safetensors"))
}

/// What a compared tensor is, which sets how close it must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Logits,
    Loss,
    Grad,
    Final,
    Displacement,
    Velocity,
}

impl Kind {
    /// The largest accepted max|ours - torch| / max|torch|.
    ///
    /// float32 rounds each operation by at most 6e-8 relative. The logits and the
    /// loss come out of a forward pass of sums over a few hundred terms through
    /// about eight layers; errors of 1e-7 to 1e-6 relative are what float32 can
    /// do there (float32 PyTorch itself lands at 1e-7 to 4e-7 from float64 on
    /// these nets, stored in each fixture), so 1e-5 leaves a margin of ten while
    /// still catching anything that is not rounding: a wrong LRN constant, a
    /// bias left out or a mis-indexed group moves them by 1e-3 or more.
    ///
    /// Gradients go back through the same layers and then sum over the batch and
    /// every output position, which adds cancellation: a weight's gradient can be
    /// much smaller than the terms it sums, so its error relative to the tensor's
    /// largest value is larger. float32 PyTorch reaches 1.3e-6; 1e-4 is the
    /// bound.
    ///
    /// After five steps the weights are compared twice: their values, dominated by
    /// the starting weights, to 1e-5, and their displacement from the start (the
    /// sum of the five updates) to 1e-4 like the gradients it is made of, since an
    /// update is small beside the weight and an error in it could hide in the
    /// values' comparison. The displacement's bound also allows for a float32
    /// weight's resolution (see [`displacement_floor`]). Velocities are scaled
    /// gradients and have the gradients' bound.
    fn tolerance(self) -> f64 {
        match self {
            Kind::Logits | Kind::Loss | Kind::Final => 1e-5,
            Kind::Grad | Kind::Displacement | Kind::Velocity => 1e-4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Logits => "logits",
            Kind::Loss => "loss",
            Kind::Grad => "gradients (step 0)",
            Kind::Final => "weights after 5 steps",
            Kind::Displacement => "weights minus start",
            Kind::Velocity => "velocities",
        }
    }
}

struct Fixture {
    name: String,
    metadata: HashMap<String, String>,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let path = fixture_path(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} cannot be read ({e}); write it with `python3 tools/pytorch_twin.py`",
                path.display()
            )
        });
        let file = format!("twin-{name}.safetensors");
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("{file}: not a safetensors file: {e}"));
        let metadata = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{file}: not a safetensors file: {e}"));
        let mut tensors = HashMap::new();
        for (key, view) in st.tensors() {
            assert_eq!(view.dtype(), Dtype::F32, "{file}: tensor {key} is not F32");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(key, (view.shape().to_vec(), values));
        }
        Fixture {
            name: file,
            metadata,
            tensors,
        }
    }

    fn meta(&self, key: &str) -> &str {
        self.metadata
            .get(key)
            .unwrap_or_else(|| panic!("{}: metadata field `{key}` is missing", self.name))
    }

    fn meta_f32(&self, key: &str) -> f32 {
        let text = self.meta(key);
        text.parse()
            .unwrap_or_else(|e| panic!("{}: metadata `{key}` = {text:?}: {e}", self.name))
    }

    fn tensor(&self, key: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: tensor `{key}` is missing", self.name))
    }

    fn values(&self, key: &str) -> &[f32] {
        &self.tensor(key).1
    }
}

/// The error found for one tensor and the bound it must meet.
struct Finding {
    tensor: String,
    kind: Kind,
    error: f64,
    bound: f64,
}

fn max_abs(values: &[f32]) -> f64 {
    values.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()))
}

/// The part of a weight's displacement error that no float32 implementation can
/// avoid, relative to the largest displacement: each of the `steps` updates
/// `w <- w + v` rounds `w` to float32 (up to 2^-24 of |w|), and so does storing
/// the reference's final value. A bias that starts at 1 and moves by 3e-5 in five
/// steps (paper-mini's conv2) can therefore only be matched to about 1e-2 of its
/// displacement, however exact the gradients are.
fn displacement_floor(steps: usize, weights: &[f32], theirs_moved: &[f32]) -> f64 {
    let moved = max_abs(theirs_moved);
    if moved == 0.0 {
        return 0.0;
    }
    (steps + 1) as f64 * 2f64.powi(-24) * max_abs(weights) / moved
}

/// max|ours - theirs| / max|theirs|; the absolute difference where theirs is all zero.
fn relative_error(ours: &[f32], theirs: &[f32]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let scale = max_abs(theirs);
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    // A NaN or infinity of ours makes the error NaN, which fails every bound.
    if ours.iter().any(|v| !v.is_finite()) {
        f64::NAN
    } else if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Replays the fixture's five steps on `backend` and measures every compared tensor.
#[allow(clippy::too_many_lines)] // the fixture's steps replayed in its order, each finding beside its step
/// `ours` against `theirs` as a tensor of `kind`, with `floor` added to its bound.
fn finding(tensor: String, kind: Kind, ours: &[f32], theirs: &[f32], floor: f64) -> Finding {
    Finding {
        error: relative_error(ours, theirs),
        bound: kind.tolerance() + floor,
        tensor,
        kind,
    }
}

/// `ours` against the fixture's tensor `key`, as a tensor of `kind`.
fn against(fx: &Fixture, key: String, kind: Kind, ours: &[f32]) -> Finding {
    let theirs = fx.values(&key);
    finding(key, kind, ours, theirs, 0.0)
}

fn replay<B: Backend>(backend: B, fx: &Fixture) -> Vec<Finding> {
    let spec = NetSpec::from_toml(fx.meta("spec"), &fx.name)
        .unwrap_or_else(|e| panic!("{}: the stored description does not parse: {e}", fx.name));
    let (input_shape, input) = fx.tensor("input");
    let batch = input_shape[0];
    assert_eq!(
        input_shape[1..],
        [spec.input.channels, spec.input.height, spec.input.width],
        "{}: input shape against the description",
        fx.name
    );
    let labels: Vec<u32> = fx
        .values("labels")
        .iter()
        .map(|&l| {
            assert!(l >= 0.0 && l.fract() == 0.0, "{}: label {l}", fx.name);
            l as u32
        })
        .collect();
    let steps: usize = fx
        .meta("steps")
        .parse()
        .unwrap_or_else(|e| panic!("{}: steps: {e}", fx.name));
    let sgd = Sgd {
        learning_rate: fx.meta_f32("lr"),
        momentum: fx.meta_f32("momentum"),
        weight_decay: fx.meta_f32("weight_decay"),
    };

    let mut net = Network::new(backend, &spec, batch, 0)
        .unwrap_or_else(|e| panic!("{}: the net does not build: {e}", fx.name));
    let params: Vec<(usize, String, Vec<usize>)> = net
        .params()
        .iter()
        .map(|p| {
            let name = &p.info.name;
            (
                net.param_index(name)
                    .expect("a parameter is found by its own name"),
                name.clone(),
                p.info.shape.clone(),
            )
        })
        .collect();
    // Every parameter in the file must be one of ours and every one of ours must be
    // in the file, so a renamed or missing layer cannot go unnoticed.
    let ours: Vec<&str> = params.iter().map(|(_, n, _)| n.as_str()).collect();
    for key in fx.tensors.keys() {
        if let Some(name) = key.strip_prefix("param.") {
            assert!(
                ours.contains(&name),
                "{}: `{key}` is not a parameter of our net ({ours:?})",
                fx.name
            );
        }
    }
    for (index, name, shape) in &params {
        let (theirs, values) = fx.tensor(&format!("param.{name}"));
        assert_eq!(theirs, shape, "{}: shape of {name}", fx.name);
        net.set_param_values(*index, values).unwrap();
    }
    net.set_input(input).unwrap();
    let dropout_layers = net
        .plan()
        .layers
        .iter()
        .filter(|l| matches!(l.op, Op::Dropout { .. }))
        .count();

    let mut findings = Vec::new();
    for step in 0..steps {
        let masks: Vec<Vec<f32>> = (0..dropout_layers)
            .map(|k| fx.values(&format!("mask.{step}.{k}")).to_vec())
            .collect();
        assert!(
            !fx.tensors
                .contains_key(&format!("mask.{step}.{dropout_layers}")),
            "{}: more dropout masks than our {dropout_layers} dropout layers",
            fx.name
        );
        net.set_next_dropout_masks(&masks).unwrap();
        net.forward(Mode::Train);
        if step == 0 {
            findings.push(against(fx, "logits".into(), Kind::Logits, &net.logits()));
        }
        let loss = net.backward(&labels).unwrap();
        findings.push(against(fx, format!("loss.{step}"), Kind::Loss, &[loss]));
        if step == 0 {
            for (index, name, _) in &params {
                let grad = net.param_grad(*index);
                findings.push(against(fx, format!("grad.{name}"), Kind::Grad, &grad));
            }
        }
        net.sgd_step(&sgd);
    }
    for (index, name, _) in &params {
        let values = net.param_values(*index);
        let key = format!("final.{name}");
        let theirs = fx.values(&key);
        findings.push(finding(key, Kind::Final, &values, theirs, 0.0));

        let start = fx.values(&format!("param.{name}"));
        let ours_moved: Vec<f32> = values.iter().zip(start).map(|(a, b)| a - b).collect();
        let theirs_moved: Vec<f32> = theirs.iter().zip(start).map(|(a, b)| a - b).collect();
        let largest: Vec<f32> = start.iter().chain(theirs).copied().collect();
        let floor = displacement_floor(steps, &largest, &theirs_moved);
        findings.push(finding(
            format!("final.{name} - param.{name}"),
            Kind::Displacement,
            &ours_moved,
            &theirs_moved,
            floor,
        ));

        let velocity = net.param_velocity(*index);
        findings.push(against(
            fx,
            format!("velocity.{name}"),
            Kind::Velocity,
            &velocity,
        ));
    }
    findings
}

/// Replays one fixture on both backends; fails naming every tensor out of bounds.
fn check_fixture(name: &str) {
    let fx = Fixture::load(name);
    let mut failures = Vec::new();
    let mut summary = String::new();
    let runs = [
        ("cpu", replay(Cpu::new(), &fx)),
        ("reference-cpu", replay(ReferenceCpu, &fx)),
    ];
    for (backend, findings) in &runs {
        // Per kind, the tensor closest to its bound (largest error over bound).
        let mut worst: BTreeMap<Kind, &Finding> = BTreeMap::new();
        for f in findings {
            let entry = worst.entry(f.kind).or_insert(f);
            if f.error.is_nan() || f.error / f.bound > entry.error / entry.bound {
                *entry = f;
            }
            if f.error.is_nan() || f.error > f.bound {
                failures.push(format!(
                    "{} [{backend}]: {}: max|ours - torch| / max|torch| = {:.3e}, above the {:.3e} allowed for {}",
                    fx.name,
                    f.tensor,
                    f.error,
                    f.bound,
                    f.kind.name()
                ));
            }
        }
        for (kind, f) in worst {
            summary += &format!(
                "{} [{backend}] {:<22} rel err {:.2e} (bound {:.2e}) at {}\n",
                fx.name,
                kind.name(),
                f.error,
                f.bound,
                f.tensor
            );
        }
    }
    if let Some(torch) = fx.metadata.get("torch_float32_max_rel_err") {
        let version = fx.metadata.get("torch_version").map_or("?", String::as_str);
        summary += &format!(
            "{} float32 PyTorch {version} against float64: {torch}\n",
            fx.name
        );
    }
    println!("{summary}");
    assert!(
        failures.is_empty(),
        "{} tensor(s) differ from PyTorch:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn paper_mini_matches_pytorch() {
    check_fixture("paper-mini");
}

#[test]
fn owt_mini_matches_pytorch() {
    check_fixture("owt-mini");
}

#[test]
fn cifar_tanh_matches_pytorch() {
    check_fixture("cifar-tanh");
}

/// A twin fixture added to the directory but not to [`FIXTURES`] would never be
/// checked; this makes adding it to the list part of adding it.
#[test]
fn every_twin_fixture_is_checked() {
    let dir = fixture_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixture directory {} cannot be read: {e}", dir.display()));
    for entry in entries {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(name) = file
            .strip_prefix("twin-")
            .and_then(|f| f.strip_suffix(".safetensors"))
        {
            assert!(
                FIXTURES.contains(&name),
                "{file} is in {} but not checked: add \"{name}\" to FIXTURES",
                dir.display()
            );
        }
    }
}
