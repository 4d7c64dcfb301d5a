//! Fully connected layers: `y = x W^T + b`.

use num_traits::Float;

use crate::layers::LinearGeometry;

pub fn linear_forward<T: Float>(
    g: &LinearGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: &[T],
    y: &mut [T],
) {
    for img in 0..n {
        for o in 0..g.outputs {
            let mut sum = b[o];
            for i in 0..g.inputs {
                sum = sum + w[o * g.inputs + i] * x[img * g.inputs + i];
            }
            y[img * g.outputs + o] = sum;
        }
    }
}

pub fn linear_backward<T: Float>(
    g: &LinearGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dw: &mut [T],
    db: &mut [T],
    dx: Option<&mut [T]>,
) {
    for img in 0..n {
        for o in 0..g.outputs {
            let grad = dy[img * g.outputs + o];
            db[o] = db[o] + grad;
            for i in 0..g.inputs {
                dw[o * g.inputs + i] = dw[o * g.inputs + i] + grad * x[img * g.inputs + i];
            }
        }
    }
    if let Some(dx) = dx {
        for img in 0..n {
            for i in 0..g.inputs {
                let mut sum = T::zero();
                for o in 0..g.outputs {
                    sum = sum + dy[img * g.outputs + o] * w[o * g.inputs + i];
                }
                dx[img * g.inputs + i] = sum;
            }
        }
    }
}
