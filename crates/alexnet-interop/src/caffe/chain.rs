//! The layers in file order translated into one chain of our layers.

use std::collections::HashSet;

use alexnet::Plan;
use alexnet::plan::Op;
use alexnet::spec::{ConvSpec, LayerSpec, LinearSpec};

use super::layers::{
    check_relu, conv_param, dropout_spec, inner_product_param, is_left_out, is_source, lrn_spec,
    pooling_spec,
};
use super::schema::{Net, RawLayer};
use crate::{Error, Result};

/// A layer with weights, and where its blobs are.
pub(super) struct Weighted {
    pub(super) name: String,
    pub(super) raw: usize,
    pub(super) bias: bool,
    pub(super) transpose: bool,
}

/// The net translated: our layers (each with the index of the Caffe layer it
/// came from), the layers with weights, and the number of classes.
pub(super) struct Chain {
    pub(super) layers: Vec<LayerSpec>,
    origins: Vec<usize>,
    pub(super) weighted: Vec<Weighted>,
    pub(super) classes: usize,
}

/// Checks that `layer` continues the chain (reads what the previous computing
/// layer wrote) and returns the blob it writes.
fn follow(layer: &RawLayer<'_>, current: &Option<String>, file: &str) -> Result<String> {
    let ctx = layer.ctx(file);
    if layer.bottoms.len() != 1 || layer.tops.len() != 1 {
        return Err(ctx.unsupported(format!(
            "{} inputs and {} outputs (only nets that are one chain of layers are supported)",
            layer.bottoms.len(),
            layer.tops.len()
        )));
    }
    if let Some(current) = current
        && &layer.bottoms[0] != current
    {
        return Err(ctx.unsupported(format!(
                "reads blob '{}' but the chain so far ends in '{current}' (only nets that are one chain of layers are supported)",
                layer.bottoms[0]
            )));
    }
    Ok(layer.tops[0].clone())
}

pub(super) fn translate(net: &Net<'_>, file: &str) -> Result<Chain> {
    let last_fc = net
        .layers
        .iter()
        .rposition(|l| l.kind == "InnerProduct")
        .ok_or_else(|| {
            Error::unsupported(file, "no InnerProduct layer to produce the class scores")
        })?;
    if net.inputs.len() > 1 {
        return Err(Error::unsupported(
            file,
            format!(
                "{} inputs {:?} (expected one image input)",
                net.inputs.len(),
                net.inputs
            ),
        ));
    }
    let mut chain = Chain {
        layers: Vec::new(),
        origins: Vec::new(),
        weighted: Vec::new(),
        classes: 0,
    };
    let mut current = net.inputs.first().cloned();
    let mut names = HashSet::new();
    for (raw, layer) in net.layers.iter().enumerate() {
        let ctx = layer.ctx(file);
        if is_left_out(&layer.kind) {
            continue;
        }
        if is_source(&layer.kind) {
            if !chain.layers.is_empty() {
                return Err(ctx.unsupported("a data layer after the first computing layer"));
            }
            current = layer.tops.first().cloned();
            continue;
        }
        let top = follow(layer, &current, file)?;
        current = Some(top);
        // This layer's weights, with or without a bias, stored transposed or not.
        let weighted = |bias, transpose| Weighted {
            name: layer.name.clone(),
            raw,
            bias,
            transpose,
        };
        let spec = match layer.kind.as_str() {
            "Flatten" => continue,
            "Convolution" => {
                let p = conv_param(layer, &ctx)?;
                chain.weighted.push(weighted(p.bias, false));
                LayerSpec::Conv(ConvSpec {
                    name: layer.name.clone(),
                    out: p.out,
                    kernel: p.kernel,
                    stride: p.stride,
                    pad: p.pad,
                    groups: p.groups,
                    init_std: 0.01,
                    bias_init: 0.0,
                })
            }
            "InnerProduct" => {
                let p = inner_product_param(layer, &ctx)?;
                chain.weighted.push(weighted(p.bias, p.transpose));
                // The last inner product gives the class scores.
                let out = if raw == last_fc {
                    chain.classes = p.out;
                    None
                } else {
                    Some(p.out)
                };
                LayerSpec::Linear(LinearSpec {
                    name: layer.name.clone(),
                    out,
                    init_std: 0.01,
                    bias_init: 0.0,
                })
            }
            "ReLU" => {
                check_relu(layer, &ctx)?;
                LayerSpec::Relu
            }
            "TanH" => LayerSpec::Tanh,
            "LRN" => LayerSpec::Lrn(lrn_spec(layer, &ctx)?),
            "Pooling" => pooling_spec(layer, &ctx)?,
            "Dropout" => LayerSpec::Dropout(dropout_spec(layer, &ctx)?),
            other => {
                return Err(ctx.unsupported(format!("layer type '{other}'")));
            }
        };
        if matches!(spec, LayerSpec::Conv(_) | LayerSpec::Linear(_))
            && !names.insert(layer.name.clone())
        {
            return Err(ctx.format(format!("a second layer named '{}'", layer.name)));
        }
        chain.layers.push(spec);
        chain.origins.push(raw);
    }
    Ok(chain)
}

/// Refuses pooling layers whose output Caffe (rounding up) and we (rounding
/// down) would size differently at this input size: the weights after them
/// would see a different grid.
pub(super) fn check_pooling(plan: &Plan, chain: &Chain, net: &Net<'_>, file: &str) -> Result<()> {
    for (planned, &raw) in plan.layers.iter().zip(&chain.origins) {
        let (Op::MaxPool { geometry } | Op::AvgPool { geometry }) = &planned.op else {
            continue;
        };
        let (k, s) = (geometry.size, geometry.stride);
        let ceil = |side: usize| (side - k).div_ceil(s) + 1;
        let (h, w) = (geometry.input.height, geometry.input.width);
        if ceil(h) != geometry.output.height || ceil(w) != geometry.output.width {
            return Err(net.layers[raw].ctx(file).unsupported(format!(
                "at this input size ({}x{}) the {k}x{k} stride {s} windows do not fit its {h}x{w} input exactly: \
                 Caffe rounds the output up to {}x{}, our pooling rounds down to {}x{}",
                plan.spec.input.height,
                plan.spec.input.width,
                ceil(h),
                ceil(w),
                geometry.output.height,
                geometry.output.width
            )));
        }
    }
    Ok(())
}
