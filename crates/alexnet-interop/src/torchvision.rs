//! torchvision's `alexnet` weights (`alexnet-owt-7be5be79.pth`, or any state_dict
//! of a module with torchvision's AlexNet layout) as our `alexnet-owt` net.
//!
//! torchvision's AlexNet is `features` (conv, ReLU, pool, conv, ReLU, pool, conv,
//! ReLU, conv, ReLU, conv, ReLU, pool), an adaptive average pool to 6x6 and
//! `classifier` (dropout, linear, ReLU, dropout, linear, ReLU, linear), so its
//! parameters are `features.{0,3,6,8,10}` and `classifier.{1,4,6}`. Our layouts
//! are the same (convolution weights `[out, in, k, k]`, linear weights
//! `[out, in]` over the CHW-flattened input, like `torch.flatten`), so the
//! tensors are taken as they are, renamed.
//!
//! The adaptive pool is the identity at 224x224, where the features are 6x6
//! already; the net keeps that input size. The layer widths and the class count
//! come from the tensors, so narrower nets of the same layout import too.

use std::path::Path;

use alexnet::NetSpec;
use alexnet::plan::Plan;
use alexnet::spec::{LayerSpec, PixelScale};

use crate::error::{Error, Result};
use crate::torch::{self, StateDict, TensorInfo};
use crate::{Imported, InputConvention, NamedTensor};

/// torchvision's module names and ours, in the net's order.
const LAYERS: &[(&str, &str)] = &[
    ("features.0", "conv1"),
    ("features.3", "conv2"),
    ("features.6", "conv3"),
    ("features.8", "conv4"),
    ("features.10", "conv5"),
    ("classifier.1", "fc6"),
    ("classifier.4", "fc7"),
    ("classifier.6", "fc8"),
];

/// The side of the feature map torchvision's adaptive pool produces.
const POOLED_SIDE: usize = 6;

/// torchvision's ImageNet preprocessing: resize the shorter side to 256, centre
/// crop 224, RGB in [0, 1] normalised by the ImageNet mean and std.
pub fn input_convention() -> InputConvention {
    InputConvention {
        resize: 256,
        pixels: PixelScale::UnitMeanStd,
        channel_mean: [0.485, 0.456, 0.406],
        channel_std: [0.229, 0.224, 0.225],
        mean_image: None,
    }
}

/// Imports the torchvision AlexNet state_dict in a `.pth` file's bytes (zip or
/// legacy `torch.save` layout); `file` names it in errors.
pub fn import(bytes: &[u8], file: &str) -> Result<Imported> {
    let state = torch::read(bytes, file)?;
    from_state_dict(state, file)
}

/// [`import`] on a file, named in errors by its path. The file is neither
/// mapped nor read whole: the zip directory and the pickle (or the legacy
/// layout's leading pickles) are read into memory, then each tensor's values
/// from its offset, f32 ones straight into the tensor, so that the import holds
/// little more than the tensors' f32 values (about the file's size).
pub fn import_path(path: &Path) -> Result<Imported> {
    let state = torch::read_file(path)?;
    from_state_dict(state, &path.display().to_string())
}

/// [`import_path`], under its earlier name.
pub fn import_file(path: &Path) -> Result<Imported> {
    import_path(path)
}

/// Maps a state_dict already read onto `alexnet-owt`.
pub fn from_state_dict(state: StateDict, file: &str) -> Result<Imported> {
    let format = state.format;
    let mut ours = rename(state.tensors, file)?;
    let spec = spec_for(&ours, file)?;
    let plan = Plan::new(&spec)?;
    let mut tensors: Vec<NamedTensor> = Vec::with_capacity(plan.params.len());
    for param in &plan.params {
        let (theirs, tensor) = take(&mut ours, &param.name);
        if tensor.shape != param.shape {
            return Err(Error::format(
                file,
                format!(
                    "{theirs} ({}) has shape {:?}; torchvision's AlexNet layout needs {:?} there",
                    param.name, tensor.shape, param.shape
                ),
            ));
        }
        tensors.push((param.name.clone(), tensor.shape, tensor.values));
    }
    Imported {
        spec,
        tensors,
        input: input_convention(),
        source: format!(
            "torchvision AlexNet state_dict {file} ({})",
            format.describe()
        ),
    }
    .checked_finite(file)
}

/// A tensor under our name, with the name it had in the file.
struct Renamed {
    theirs: String,
    ours: String,
    tensor: TensorInfo,
}

/// Renames every tensor, refusing (all at once, by name) keys that are missing
/// or that torchvision's AlexNet does not have.
fn rename(tensors: Vec<(String, TensorInfo)>, file: &str) -> Result<Vec<Renamed>> {
    let mut renamed = Vec::with_capacity(tensors.len());
    let mut unexpected = Vec::new();
    for (theirs, tensor) in tensors {
        match our_name(&theirs) {
            Some(ours) => renamed.push(Renamed {
                theirs,
                ours,
                tensor,
            }),
            None => unexpected.push(theirs),
        }
    }
    let missing: Vec<String> = LAYERS
        .iter()
        .flat_map(|(t, _)| [format!("{t}.weight"), format!("{t}.bias")])
        .filter(|name| !renamed.iter().any(|r| &r.theirs == name))
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(renamed);
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        problems.push(format!("unexpected {}", unexpected.join(", ")));
    }
    Err(Error::format(
        file,
        format!(
            "not torchvision's AlexNet state_dict (features.0/3/6/8/10 and classifier.1/4/6, .weight and .bias): {}",
            problems.join("; ")
        ),
    ))
}

fn our_name(theirs: &str) -> Option<String> {
    let (module, kind) = theirs.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, ours) = LAYERS.iter().find(|(t, _)| *t == module)?;
    Some(format!("{ours}.{kind}"))
}

/// Removes and returns the tensor named `ours` (present: [`rename`] checked).
fn take(tensors: &mut Vec<Renamed>, ours: &str) -> (String, TensorInfo) {
    let index = tensors
        .iter()
        .position(|r| r.ours == ours)
        .expect("rename checked every name is present");
    let r = tensors.swap_remove(index);
    (r.theirs, r.tensor)
}

fn shape_of<'a>(tensors: &'a [Renamed], ours: &str) -> &'a [usize] {
    &tensors
        .iter()
        .find(|r| r.ours == ours)
        .expect("rename checked every name is present")
        .tensor
        .shape
}

/// The first dimension of a weight: its layer's output width.
fn width(tensors: &[Renamed], layer: &str, file: &str) -> Result<usize> {
    let shape = shape_of(tensors, &format!("{layer}.weight"));
    match shape.first() {
        Some(&w) if w > 0 => Ok(w),
        _ => Err(Error::format(
            file,
            format!("the weight of {layer} has shape {shape:?}, with no output width"),
        )),
    }
}

/// `alexnet-owt` with the widths and class count the tensors have.
fn spec_for(tensors: &[Renamed], file: &str) -> Result<NetSpec> {
    let conv1 = shape_of(tensors, "conv1.weight");
    if conv1.len() != 4 || conv1[1] != 3 {
        return Err(Error::format(
            file,
            format!(
                "features.0.weight has shape {conv1:?}; torchvision's AlexNet takes RGB images ([out, 3, 11, 11])"
            ),
        ));
    }
    let conv5 = width(tensors, "conv5", file)?;
    let fc6 = shape_of(tensors, "fc6.weight");
    if fc6.len() != 2 || fc6[1] != conv5 * POOLED_SIDE * POOLED_SIDE {
        return Err(Error::format(
            file,
            format!(
                "classifier.1.weight has shape {fc6:?}, but torchvision's AlexNet feeds it conv5's {conv5} channels x {POOLED_SIDE} x {POOLED_SIDE} = {} values \
                 (from its adaptive average pool, which at our 224x224 input is the identity)",
                conv5 * POOLED_SIDE * POOLED_SIDE
            ),
        ));
    }
    let mut spec = NetSpec::preset("alexnet-owt")?;
    let preset = spec.clone();
    spec.classes = width(tensors, "fc8", file)?;
    for layer in &mut spec.layers {
        match layer {
            LayerSpec::Conv(c) => c.out = width(tensors, &c.name, file)?,
            LayerSpec::Linear(l) if l.out.is_some() => l.out = Some(width(tensors, &l.name, file)?),
            _ => {}
        }
    }
    if spec != preset {
        // Narrower than torchvision's: a net of the same layout, not alexnet-owt.
        spec.name = "torchvision-alexnet".into();
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::DType;

    /// A state_dict of torchvision's layout with these conv widths, fc widths and classes.
    fn state_dict(convs: [usize; 5], fcs: [usize; 2], classes: usize) -> Vec<(String, TensorInfo)> {
        let kernels = [11, 5, 3, 3, 3];
        let mut shapes = Vec::new();
        let mut channels = 3;
        for (i, (&out, &k)) in convs.iter().zip(&kernels).enumerate() {
            let name = LAYERS[i].0;
            shapes.push((format!("{name}.weight"), vec![out, channels, k, k]));
            shapes.push((format!("{name}.bias"), vec![out]));
            channels = out;
        }
        let mut inputs = channels * 36;
        for (i, out) in [fcs[0], fcs[1], classes].into_iter().enumerate() {
            let name = LAYERS[5 + i].0;
            shapes.push((format!("{name}.weight"), vec![out, inputs]));
            shapes.push((format!("{name}.bias"), vec![out]));
            inputs = out;
        }
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                let tensor = TensorInfo {
                    dtype: DType::F32,
                    shape,
                    values: vec![0.5; n],
                };
                (name, tensor)
            })
            .collect()
    }

    fn import_tensors(tensors: Vec<(String, TensorInfo)>) -> Result<Imported> {
        let state = StateDict {
            format: torch::Format::Zip,
            tensors,
        };
        from_state_dict(state, "t.pth")
    }

    #[test]
    fn full_size_is_alexnet_owt() {
        let imported =
            import_tensors(state_dict([64, 192, 384, 256, 256], [4096, 4096], 1000)).unwrap();
        assert_eq!(imported.spec, NetSpec::preset("alexnet-owt").unwrap());
        let names: Vec<_> = imported.tensors.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names[0], "conv1.weight");
        assert_eq!(names[15], "fc8.bias");
        assert_eq!(imported.input, input_convention());
    }

    #[test]
    fn narrow_nets_take_their_widths_from_the_tensors() {
        let imported = import_tensors(state_dict([8, 16, 24, 16, 16], [32, 32], 10)).unwrap();
        assert_eq!(imported.spec.classes, 10);
        assert_eq!(imported.spec.name, "torchvision-alexnet");
        let plan = Plan::new(&imported.spec).unwrap();
        for (param, (name, shape, values)) in plan.params.iter().zip(&imported.tensors) {
            assert_eq!((&param.name, &param.shape), (name, shape));
            assert_eq!(values.len(), param.len());
        }
    }

    #[test]
    fn non_finite_weights_are_refused_naming_the_tensor() {
        for bad in [f32::NAN, f32::INFINITY] {
            let mut tensors = state_dict([8, 16, 24, 16, 16], [32, 32], 10);
            tensors[4].1.values[7] = bad;
            let e = import_tensors(tensors).unwrap_err().to_string();
            assert!(
                e.contains("t.pth") && e.contains("conv3.weight") && e.contains("value 7"),
                "{e}"
            );
        }
    }

    #[test]
    fn missing_and_extra_keys_are_named() {
        let mut tensors = state_dict([8, 16, 24, 16, 16], [32, 32], 10);
        tensors.retain(|(n, _)| n != "features.3.bias");
        tensors.push(("features.1.weight".into(), tensors[0].1.clone()));
        let e = import_tensors(tensors).unwrap_err().to_string();
        assert!(e.contains("missing features.3.bias"), "{e}");
        assert!(e.contains("unexpected features.1.weight"), "{e}");
    }

    #[test]
    fn misshapen_tensors_are_named_with_both_shapes() {
        let mut tensors = state_dict([8, 16, 24, 16, 16], [32, 32], 10);
        tensors[2].1.shape = vec![16, 8, 3, 3];
        let e = import_tensors(tensors).unwrap_err().to_string();
        assert!(
            e.contains("features.3.weight (conv2.weight)")
                && e.contains("[16, 8, 3, 3]")
                && e.contains("[16, 8, 5, 5]"),
            "{e}"
        );

        let mut tensors = state_dict([8, 16, 24, 16, 16], [32, 32], 10);
        tensors[10].1.shape = vec![32, 16 * 5 * 5];
        let e = import_tensors(tensors).unwrap_err().to_string();
        assert!(
            e.contains("classifier.1.weight") && e.contains("576"),
            "{e}"
        );

        let mut tensors = state_dict([8, 16, 24, 16, 16], [32, 32], 10);
        tensors[0].1.shape = vec![8, 1, 11, 11];
        let e = import_tensors(tensors).unwrap_err().to_string();
        assert!(e.contains("RGB"), "{e}");
    }
}
