//! Max pooling (overlapping windows, Section 3.4) and average pooling.

use num_traits::Float;

use crate::layers::PoolGeometry;

/// Position (within the input plane) of the first largest value of an output's window.
pub(super) fn window_argmax<T: Float>(
    g: &PoolGeometry,
    plane: &[T],
    oy: usize,
    ox: usize,
) -> usize {
    let mut best = oy * g.stride * g.input.width + ox * g.stride;
    for ky in 0..g.size {
        for kx in 0..g.size {
            let pos = (oy * g.stride + ky) * g.input.width + ox * g.stride + kx;
            if plane[pos] > plane[best] {
                best = pos;
            }
        }
    }
    best
}

pub fn max_pool_forward<T: Float>(g: &PoolGeometry, n: usize, x: &[T], y: &mut [T]) {
    let (ip, op) = (
        g.input.height * g.input.width,
        g.output.height * g.output.width,
    );
    for plane in 0..n * g.input.channels {
        let xp = &x[plane * ip..][..ip];
        for oy in 0..g.output.height {
            for ox in 0..g.output.width {
                y[plane * op + oy * g.output.width + ox] = xp[window_argmax(g, xp, oy, ox)];
            }
        }
    }
}

pub fn max_pool_backward<T: Float>(g: &PoolGeometry, n: usize, x: &[T], dy: &[T], dx: &mut [T]) {
    let (ip, op) = (
        g.input.height * g.input.width,
        g.output.height * g.output.width,
    );
    dx[..n * g.input.len()].fill(T::zero());
    for plane in 0..n * g.input.channels {
        let xp = &x[plane * ip..][..ip];
        for oy in 0..g.output.height {
            for ox in 0..g.output.width {
                let pos = plane * ip + window_argmax(g, xp, oy, ox);
                dx[pos] = dx[pos] + dy[plane * op + oy * g.output.width + ox];
            }
        }
    }
}

pub fn avg_pool_forward<T: Float>(g: &PoolGeometry, n: usize, x: &[T], y: &mut [T]) {
    let (ip, op) = (
        g.input.height * g.input.width,
        g.output.height * g.output.width,
    );
    let count = T::from(g.size * g.size).expect("window size fits a float");
    for plane in 0..n * g.input.channels {
        for oy in 0..g.output.height {
            for ox in 0..g.output.width {
                let mut sum = T::zero();
                for ky in 0..g.size {
                    for kx in 0..g.size {
                        sum = sum
                            + x[plane * ip
                                + (oy * g.stride + ky) * g.input.width
                                + ox * g.stride
                                + kx];
                    }
                }
                y[plane * op + oy * g.output.width + ox] = sum / count;
            }
        }
    }
}

pub fn avg_pool_backward<T: Float>(g: &PoolGeometry, n: usize, dy: &[T], dx: &mut [T]) {
    let (ip, op) = (
        g.input.height * g.input.width,
        g.output.height * g.output.width,
    );
    let count = T::from(g.size * g.size).expect("window size fits a float");
    dx[..n * g.input.len()].fill(T::zero());
    for plane in 0..n * g.input.channels {
        for oy in 0..g.output.height {
            for ox in 0..g.output.width {
                let share = dy[plane * op + oy * g.output.width + ox] / count;
                for ky in 0..g.size {
                    for kx in 0..g.size {
                        let pos =
                            plane * ip + (oy * g.stride + ky) * g.input.width + ox * g.stride + kx;
                        dx[pos] = dx[pos] + share;
                    }
                }
            }
        }
    }
}
