//! The paper's SGD update (Section 5).

use num_traits::Float;

use super::cast;

/// The paper's update (Section 5): `v <- momentum*v - decay*lr*w - lr*dw; w <- w + v`.
pub fn sgd_update<T: Float>(
    w: &mut [T],
    dw: &[T],
    v: &mut [T],
    lr: f32,
    momentum: f32,
    decay: f32,
) {
    let (lr, momentum, decay) = (cast::<T>(lr), cast::<T>(momentum), cast::<T>(decay));
    for i in 0..w.len() {
        v[i] = momentum * v[i] - decay * lr * w[i] - lr * dw[i];
        w[i] = w[i] + v[i];
    }
}
