//! Network descriptions: the layers of a net in order, as data (TOML), plus the
//! built-in presets. A description is only words until [`crate::plan::Plan`]
//! checks that its shapes fit together.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{Error, Result};

/// A whole network description: input geometry, number of classes, layers and the
/// default training recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// A short name, used in checkpoints and reports.
    pub name: String,
    /// Number of output classes: the last linear layer without `out` produces this many scores.
    pub classes: usize,
    pub input: InputSpec,
    #[serde(default)]
    pub recipe: Recipe,
    pub layers: Vec<LayerSpec>,
}

/// What one input image looks like.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// How pixels are scaled before they reach the net.
    #[serde(default)]
    pub pixels: PixelScale,
}

/// The pixel convention a net's weights expect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelScale {
    /// The paper: raw 0-255 values minus the training set's mean image.
    #[default]
    RawMinusMean,
    /// torchvision: values in [0, 1], minus a per-channel mean, divided by a per-channel std.
    UnitMeanStd,
}

/// The training recipe a preset carries (the paper's for `alexnet`, Section 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    pub batch: usize,
    pub learning_rate: f32,
    pub momentum: f32,
    /// Decay applied to weights (not biases): v <- m*v - decay*lr*w - lr*grad.
    pub weight_decay: f32,
    pub epochs: usize,
    /// How many times the learning rate may be divided.
    pub lr_drops: usize,
    pub lr_drop_factor: f32,
    /// When the learning rate is divided.
    pub schedule: Schedule,
    /// Plateau schedule: epochs without a better validation error before dividing.
    pub patience: usize,
    /// Steps schedule: the epochs after which the rate is divided.
    pub lr_steps: Vec<usize>,
}

/// When the learning rate is divided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// When validation error has not improved for `patience` epochs (the paper).
    #[default]
    Plateau,
    /// After the epochs listed in `lr_steps`.
    Steps,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            batch: 128,
            learning_rate: 0.01,
            momentum: 0.9,
            weight_decay: 0.0005,
            epochs: 90,
            lr_drops: 3,
            lr_drop_factor: 0.1,
            schedule: Schedule::Plateau,
            patience: 3,
            lr_steps: Vec::new(),
        }
    }
}

/// One layer of a description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum LayerSpec {
    Conv(ConvSpec),
    Linear(LinearSpec),
    Relu,
    Tanh,
    Lrn(LrnSpec),
    MaxPool(PoolSpec),
    AvgPool(PoolSpec),
    Dropout(DropoutSpec),
}

fn one() -> usize {
    1
}
fn default_init_std() -> f32 {
    0.01
}

/// A 2-D convolution with square kernels; `groups` splits input and output channels
/// into independent towers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvSpec {
    pub name: String,
    pub out: usize,
    pub kernel: usize,
    #[serde(default = "one")]
    pub stride: usize,
    #[serde(default)]
    pub pad: usize,
    #[serde(default = "one")]
    pub groups: usize,
    /// Standard deviation of the zero-mean Gaussian the weights start from.
    #[serde(default = "default_init_std")]
    pub init_std: f32,
    /// The constant every bias starts at.
    #[serde(default)]
    pub bias_init: f32,
}

/// A fully connected layer over everything the previous layer produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    pub name: String,
    /// Number of outputs; absent means one per class (the net's last layer).
    #[serde(default)]
    pub out: Option<usize>,
    #[serde(default = "default_init_std")]
    pub init_std: f32,
    #[serde(default)]
    pub bias_init: f32,
}

/// Local response normalisation across channels in the paper's form
/// b_i = a_i / (k + alpha * sum_j a_j^2)^beta over the `size` channels centred on i,
/// with alpha *not* divided by `size` (Caffe and PyTorch divide it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrnSpec {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    /// Channels are normalised within `groups` equal blocks: 2 is the paper's
    /// per-tower normalisation, 1 normalises across all channels (Caffe, PyTorch).
    pub groups: usize,
}

impl Default for LrnSpec {
    fn default() -> Self {
        LrnSpec {
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 2.0,
            groups: 1,
        }
    }
}

/// Pooling over square windows without padding; windows overlap when `stride < size`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub size: usize,
    pub stride: usize,
}

/// Inverted dropout: in training each value is zeroed with probability `p` and the
/// survivors scaled by 1/(1-p); at test time the layer is the identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutSpec {
    pub p: f32,
}

/// The names of the built-in presets.
pub const PRESETS: &[&str] = &["alexnet", "alexnet-owt", "cifar"];

fn preset_text(name: &str) -> Option<&'static str> {
    match name {
        "alexnet" => Some(include_str!("../presets/alexnet.toml")),
        "alexnet-owt" => Some(include_str!("../presets/alexnet-owt.toml")),
        "cifar" => Some(include_str!("../presets/cifar.toml")),
        _ => None,
    }
}

impl NetSpec {
    /// Parses a description from TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<NetSpec> {
        toml::from_str(text).map_err(|e| Error::Spec {
            origin: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the description as TOML (what checkpoints store).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a NetSpec always serialises to TOML")
    }

    /// A built-in preset by name.
    pub fn preset(name: &str) -> Result<NetSpec> {
        let text = preset_text(name).ok_or_else(|| Error::Spec {
            origin: name.to_string(),
            message: format!(
                "no preset named '{name}'; presets are {}",
                PRESETS.join(", ")
            ),
        })?;
        NetSpec::from_toml(text, &format!("preset '{name}'"))
    }

    /// What `--arch` accepts: a preset name, or the path of a TOML description.
    pub fn resolve(arch: &str) -> Result<NetSpec> {
        if preset_text(arch).is_some() {
            return NetSpec::preset(arch);
        }
        let path = Path::new(arch);
        if !path.exists() {
            return Err(Error::Spec {
                origin: arch.to_string(),
                message: format!(
                    "neither a preset ({}) nor an existing TOML file",
                    PRESETS.join(", ")
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        NetSpec::from_toml(&text, &path.display().to_string())
    }

    /// The same net with a different number of classes.
    pub fn with_classes(mut self, classes: usize) -> NetSpec {
        self.classes = classes;
        self
    }

    /// The same net for images of another size and channel count.
    pub fn with_input(mut self, channels: usize, height: usize, width: usize) -> NetSpec {
        self.input.channels = channels;
        self.input.height = height;
        self.input.width = width;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_round_trip() {
        for name in PRESETS {
            let spec = NetSpec::preset(name).unwrap();
            let again = NetSpec::from_toml(&spec.to_toml(), "round trip").unwrap();
            assert_eq!(spec, again, "{name}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let text = "name='x'\nclasses=2\n[input]\nchannels=1\nheight=8\nwidth=8\n\
                    [[layers]]\ntype='conv'\nname='c'\nout=2\nkernel=3\nstrde=2\n";
        let err = NetSpec::from_toml(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("strde"), "{err}");
        assert!(err.contains("t.toml"), "{err}");
    }

    #[test]
    fn unknown_preset_lists_the_presets() {
        let err = NetSpec::resolve("vgg16").unwrap_err().to_string();
        assert!(err.contains("alexnet-owt"), "{err}");
    }
}
