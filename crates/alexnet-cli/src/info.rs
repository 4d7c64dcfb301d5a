//! `alexnet info`: the layers of a net, their output shapes and parameters.

use alexnet::plan::Op;
use alexnet::{NetSpec, Plan};
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct InfoArgs {
    /// A preset name (alexnet, alexnet-owt, cifar) or the path of a TOML description.
    #[arg(long, default_value = "alexnet")]
    arch: String,
    /// Override the number of classes.
    #[arg(long)]
    classes: Option<usize>,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let mut spec = NetSpec::resolve(&args.arch)?;
    if let Some(classes) = args.classes {
        spec = spec.with_classes(classes);
    }
    let plan = Plan::new(&spec)?;
    println!(
        "{}: input {}, {} classes",
        spec.name,
        plan.input_shape(),
        plan.classes()
    );
    println!("{:<22} {:>14} {:>12}", "layer", "output", "parameters");
    for layer in &plan.layers {
        let params = match &layer.op {
            Op::Conv { weight, .. } | Op::Linear { weight, .. } => {
                plan.params[*weight].len() + plan.params[weight + 1].len()
            }
            _ => 0,
        };
        println!(
            "{:<22} {:>14} {:>12}",
            layer.label,
            layer.output.to_string(),
            params
        );
    }
    println!(
        "total {} parameters, {:.3} G multiply-adds per image forward",
        plan.parameter_count(),
        plan.forward_macs() as f64 / 1e9
    );
    Ok(())
}
