//! # alexnet
//!
//! The network of Krizhevsky, Sutskever and Hinton, "ImageNet Classification with
//! Deep Convolutional Neural Networks" (NIPS 2012): its layers with explicit
//! forward and backward passes, networks described as data, the paper's
//! initialisation and SGD, and safetensors checkpoints.
//!
//! ```
//! use alexnet::{Cpu, Model, NetSpec, Network, Sgd};
//!
//! // The paper's net on 28x28 grey images, for 10 classes, batches of up to 4.
//! let spec = NetSpec::preset("cifar").unwrap().with_input(1, 28, 28);
//! let mut net = Network::new(Cpu::new(), &spec, 4, 42).unwrap();
//! let images = vec![0.5f32; 4 * 28 * 28];
//! let loss = net.train_step(&images, &[0, 1, 2, 3], &Sgd::from_recipe(&spec.recipe)).unwrap();
//! assert!(loss.is_finite());
//! let logits = net.predict(&images).unwrap();
//! assert_eq!(logits.len(), 4 * 10);
//! ```
//!
//! The crate is organised from the description down: [`spec`] (the TOML
//! description and presets) → [`plan`] (validated geometry) → [`net`] (buffers,
//! forward, backward, SGD) over a [`Backend`]: [`Cpu`] (fast) or
//! [`ReferenceCpu`] (the readable loops everything is tested against).

pub mod backend;
pub mod checkpoint;
pub mod cpu;
pub mod error;
pub mod fusion;
pub mod input;
pub mod layers;
pub mod model;
pub mod net;
pub mod optim;
pub mod paper_net;
pub mod plan;
pub mod precision;
pub mod rng;
pub mod spec;
pub mod testing;
pub mod towers;

pub use backend::Backend;
pub use cpu::{Cpu, ReferenceCpu};
pub use error::{Error, Result};
pub use layers::Rows;
pub use model::{BufferMut, Mode, Model};
pub use net::Network;
pub use optim::Sgd;
pub use plan::Plan;
pub use precision::{Bf16Kernel, Precision, Products};
pub use spec::NetSpec;
pub use towers::Towers;

/// Probabilities from logits: a numerically stable softmax of each row of `classes` values.
pub fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_exact_mut(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    out
}
