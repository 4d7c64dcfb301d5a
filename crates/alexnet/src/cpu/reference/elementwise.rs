//! ReLU and tanh, in place.

use num_traits::Float;

/// In place: `x <- max(x, 0)`.
pub fn relu_forward<T: Float>(x: &mut [T]) {
    for v in x {
        *v = v.max(T::zero());
    }
}

/// In place on the gradient: `d <- d * [y > 0]`, from the ReLU's output `y`.
pub fn relu_backward<T: Float>(y: &[T], d: &mut [T]) {
    for (d, &y) in d.iter_mut().zip(y) {
        if y <= T::zero() {
            *d = T::zero();
        }
    }
}

/// In place: `x <- tanh(x)`.
pub fn tanh_forward<T: Float>(x: &mut [T]) {
    for v in x {
        *v = v.tanh();
    }
}

/// In place on the gradient: `d <- d * (1 - y^2)`, from tanh's output `y`.
pub fn tanh_backward<T: Float>(y: &[T], d: &mut [T]) {
    for (d, &y) in d.iter_mut().zip(y) {
        *d = *d * (T::one() - y * y);
    }
}
