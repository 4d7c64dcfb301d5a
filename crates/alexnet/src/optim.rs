//! Stochastic gradient descent as the paper writes it (Section 5):
//!
//! ```text
//! v <- momentum * v - decay * lr * w - lr * dL/dw
//! w <- w + v
//! ```
//!
//! The velocity carries the learning rate, so after a learning-rate change the
//! old velocity keeps its old scale; `torch.optim.SGD` instead stores unscaled
//! velocity and differs there. Decay applies to weights only: the paper's rule
//! names weights, and the first author's cuda-convnet does not decay biases.

use crate::spec::Recipe;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

impl Sgd {
    /// The optimiser a recipe describes, at its starting learning rate.
    pub fn from_recipe(recipe: &Recipe) -> Sgd {
        Sgd {
            learning_rate: recipe.learning_rate,
            momentum: recipe.momentum,
            weight_decay: recipe.weight_decay,
        }
    }
}
