//! `alexnet kernels`: the first convolution's kernels as a grid of colour
//! patches, the paper's Figure 3, with one block per tower when the net has two
//! (the towers are the groups of the first grouped layer that follows).

use std::path::PathBuf;

use alexnet::checkpoint::{self, Checkpoint};
use alexnet::plan::{Op, Plan};
use anyhow::{Context, Result, bail};
use clap::Args;
use image::{Rgb, RgbImage};

#[derive(Args)]
pub struct KernelsArgs {
    /// A checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The PNG to write.
    #[arg(long, default_value = "kernels.png")]
    out: PathBuf,
    /// Pixels per kernel tap.
    #[arg(long, default_value_t = 4)]
    scale: u32,
    /// Kernels per row within a block.
    #[arg(long, default_value_t = 8)]
    columns: usize,
}

/// How many towers a plan has: the group count of its first grouped convolution.
fn towers(plan: &Plan) -> usize {
    plan.layers
        .iter()
        .find_map(|l| match &l.op {
            Op::Conv { geometry, .. } if geometry.groups > 1 => Some(geometry.groups),
            _ => None,
        })
        .unwrap_or(1)
}

pub fn run(args: KernelsArgs) -> Result<()> {
    let ckpt = checkpoint::load_weights(&args.checkpoint)?;
    let drawing = draw(&ckpt, args.scale, args.columns)?;
    crate::output::save_png(&drawing.image, &args.out)?;
    println!(
        "{} kernels of {} in {} block(s): {}",
        drawing.kernels,
        drawing.layer,
        drawing.blocks,
        args.out.display()
    );
    Ok(())
}

/// The first convolution's kernels of a checkpoint, drawn.
pub struct Drawing {
    pub image: RgbImage,
    /// The layer's label, how many kernels, in how many blocks (one per tower).
    pub layer: String,
    pub kernels: usize,
    pub blocks: usize,
}

/// Draws the first convolution's kernels, each `scale` pixels per weight, in
/// `columns` columns per tower.
pub fn draw(ckpt: &Checkpoint, scale: u32, columns: usize) -> Result<Drawing> {
    let plan = Plan::new(&ckpt.spec)?;
    let Some((layer, weight)) = plan.layers.iter().find_map(|l| match &l.op {
        Op::Conv { weight, .. } => Some((l, *weight)),
        _ => None,
    }) else {
        bail!("{} has no convolution", ckpt.spec.name);
    };
    let info = &plan.params[weight];
    let (_, values) = ckpt
        .tensors
        .get(&info.name)
        .with_context(|| format!("the checkpoint lacks {}", info.name))?;
    let [out, inputs, k, _] = info.shape[..] else {
        bail!("{} is not a 4-d convolution weight", info.name)
    };
    if inputs != 1 && inputs != 3 {
        bail!(
            "{} sees {inputs} channels; only grey or RGB kernels can be drawn",
            layer.label
        );
    }
    let blocks = towers(&plan).min(out).max(1);
    let per_block = out / blocks;
    let columns = columns.max(1);
    let rows = per_block.div_ceil(columns);
    let cell = k as u32 * scale + 1;
    let block_width = columns as u32 * cell + 1;
    let gap = 8;
    let width = blocks as u32 * block_width + (blocks as u32 - 1) * gap;
    let height = rows as u32 * cell + 1;
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for kernel in 0..out {
        let w = &values[kernel * inputs * k * k..][..inputs * k * k];
        // Each kernel is stretched to the full range on its own, as in the paper's figure.
        let (lo, hi) = w
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let span = (hi - lo).max(1e-12);
        let (block, index) = (kernel / per_block, kernel % per_block);
        let x0 = block as u32 * (block_width + gap) + (index % columns) as u32 * cell + 1;
        let y0 = (index / columns) as u32 * cell + 1;
        for ky in 0..k {
            for kx in 0..k {
                let channel =
                    |c: usize| ((w[(c * k + ky) * k + kx] - lo) / span * 255.0).round() as u8;
                let colour = if inputs == 3 {
                    [channel(0), channel(1), channel(2)]
                } else {
                    [channel(0); 3]
                };
                for dy in 0..scale {
                    for dx in 0..scale {
                        image.put_pixel(
                            x0 + kx as u32 * scale + dx,
                            y0 + ky as u32 * scale + dy,
                            Rgb(colour),
                        );
                    }
                }
            }
        }
    }
    Ok(Drawing {
        image,
        layer: layer.label.clone(),
        kernels: out,
        blocks,
    })
}
