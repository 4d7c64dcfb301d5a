//! Builds a net, saves and loads a checkpoint, and classifies a batch.
//!
//! ```text
//! cargo run --release -p alexnet --example classify [CHECKPOINT]
//! ```
//! With a checkpoint path, that checkpoint is loaded (its network description
//! comes from the file). Without one, a freshly initialised `cifar` net is saved
//! to a temporary file first, so the example runs on its own.

use std::path::PathBuf;

use alexnet::{Cpu, Model, NetSpec, Network, checkpoint, softmax_rows};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => {
            let spec = NetSpec::preset("cifar")?.with_input(1, 28, 28);
            let net = Network::new(Cpu::new(), &spec, 1, 42)?;
            let path = std::env::temp_dir().join("alexnet-example.safetensors");
            checkpoint::save(&net, &path, &checkpoint::SaveOptions::default())?;
            println!("saved a fresh {} net to {}", spec.name, path.display());
            path
        }
    };

    // A checkpoint carries its network description: build that net, then load the weights.
    let ckpt = checkpoint::load(&path)?;
    let batch = 4;
    let mut net = Network::new(Cpu::new(), &ckpt.spec, batch, 0)?;
    ckpt.apply(&mut net, &path, false)?;
    let shape = net.plan().input_shape();
    println!(
        "loaded {} (step {}), input {shape}",
        ckpt.spec.name, ckpt.step
    );

    // A batch of synthetic images: vertical gradients of different strengths.
    let mut images = Vec::with_capacity(batch * shape.len());
    for i in 0..batch {
        for _c in 0..shape.channels {
            for y in 0..shape.height {
                for _x in 0..shape.width {
                    images.push((y as f32 / shape.height as f32 - 0.5) * 50.0 * (i + 1) as f32);
                }
            }
        }
    }
    let classes = net.plan().classes();
    let probabilities = softmax_rows(&net.predict(&images)?, classes);
    for (i, row) in probabilities.chunks_exact(classes).enumerate() {
        let (best, p) = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("classes > 0");
        println!("image {i}: class {best} with probability {p:.3}");
    }
    Ok(())
}
