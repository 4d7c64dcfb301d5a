//! Each weighted layer's blobs as our tensors, checked against the plan.

use alexnet::Plan;
use alexnet::plan::Op;

use super::chain::Chain;
use super::schema::{Ctx, Net, RawLayer, read_blob, trimmed};
use crate::{NamedTensor, Result};

/// The blob at `index` of a weighted layer, checked against the shape our plan
/// gives the tensor.
fn blob_values(
    layer: &RawLayer<'_>,
    index: usize,
    what: &str,
    expected: &[usize],
    input: &str,
    file: &str,
) -> Result<Vec<f32>> {
    let ctx = Ctx {
        file,
        place: format!("{}, blob {index} ({what})", layer.label()),
    };
    let mut reader = ctx.check(layer.reader.nested(layer.blobs[index]))?;
    let blob = read_blob(&mut reader, &ctx)?;
    let expected_dims: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
    if trimmed(&blob.dims) != trimmed(&expected_dims) {
        return Err(ctx.format(format!(
            "has shape {:?}, expected {:?} from the layer's parameters and its input \
             (the net's input taken as {input})",
            blob.dims, expected
        )));
    }
    Ok(blob.data)
}

/// `[in, out]` values as `[out, in]`.
fn transposed(values: &[f32], out: usize, inputs: usize) -> Vec<f32> {
    let mut t = vec![0.0; values.len()];
    for i in 0..inputs {
        for o in 0..out {
            t[o * inputs + i] = values[i * out + o];
        }
    }
    t
}

/// Reverses the input-channel axis of a `[out, 3, k, k]` weight: BGR to RGB.
fn reverse_input_channels(values: &mut [f32], shape: &[usize]) {
    let plane = shape[2] * shape[3];
    for filter in values.chunks_exact_mut(shape[1] * plane) {
        let (blue, rest) = filter.split_at_mut(plane);
        blue.swap_with_slice(&mut rest[plane..2 * plane]);
    }
}

pub(super) fn collect_tensors(
    plan: &Plan,
    chain: &Chain,
    net: &Net<'_>,
    file: &str,
) -> Result<Vec<NamedTensor>> {
    let mut tensors = Vec::new();
    let input = format!("{}x{}", plan.spec.input.height, plan.spec.input.width);
    for (position, weighted) in chain.weighted.iter().enumerate() {
        let layer = &net.layers[weighted.raw];
        let expected = 1 + usize::from(weighted.bias);
        if layer.blobs.len() != expected {
            return Err(layer.ctx(file).format(format!(
                "{} blob{}, expected {expected} (weights{}){}",
                layer.blobs.len(),
                if layer.blobs.len() == 1 { "" } else { "s" },
                if weighted.bias { " and biases" } else { "" },
                if layer.blobs.is_empty() {
                    "; is this a prototxt's net without trained weights?"
                } else {
                    ""
                }
            )));
        }
        let find = |suffix: &str| {
            let name = format!("{}.{suffix}", weighted.name);
            let info = plan
                .params
                .iter()
                .find(|p| p.name == name)
                .expect("the plan has a tensor for every weighted layer");
            (name, info.shape.clone())
        };
        let (name, shape) = find("weight");
        let mut values = if weighted.transpose {
            let stored = [shape[1], shape[0]];
            let values = blob_values(layer, 0, "weights, transposed", &stored, &input, file)?;
            transposed(&values, shape[0], shape[1])
        } else {
            blob_values(layer, 0, "weights", &shape, &input, file)?
        };
        if position == 0 {
            to_rgb_input(&mut values, &shape, plan, layer, file)?;
        }
        tensors.push((name, shape, values));
        let (name, shape) = find("bias");
        let values = if weighted.bias {
            blob_values(layer, 1, "biases", &shape, &input, file)?
        } else {
            // A layer without a bias term is ours with a zero bias.
            vec![0.0; shape[0]]
        };
        tensors.push((name, shape, values));
    }
    Ok(tensors)
}

/// Makes the first layer take RGB: Caffe's nets read BGR.
fn to_rgb_input(
    values: &mut [f32],
    shape: &[usize],
    plan: &Plan,
    layer: &RawLayer<'_>,
    file: &str,
) -> Result<()> {
    let first_is_this_conv = matches!(&plan.layers[0].op, Op::Conv { weight: 0, .. });
    if !first_is_this_conv || shape.len() != 4 || shape[1] != 3 {
        return Err(layer.ctx(file).unsupported(
            "a net whose first layer is not a convolution over all 3 input channels \
             (its weights are reordered from BGR to RGB input)",
        ));
    }
    reverse_input_channels(values, shape);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_inner_product_weights_become_out_by_in() {
        // Stored [in = 3, out = 2]: row i holds input i's weight to each output.
        let stored = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(transposed(&stored, 2, 3), [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn input_channels_are_reversed_per_filter() {
        // Two filters of 3 channels of 1x2 values.
        let mut w: Vec<f32> = (0..12).map(|v| v as f32).collect();
        reverse_input_channels(&mut w, &[2, 3, 1, 2]);
        assert_eq!(
            w,
            [4.0, 5.0, 2.0, 3.0, 0.0, 1.0, 10.0, 11.0, 8.0, 9.0, 6.0, 7.0]
        );
    }
}
