//! Max pooling (overlapping windows, Section 3.4) and average pooling.

use num_traits::Float;

use crate::layers::PoolGeometry;

/// Calls `visit(plane, oy, ox, out)` for every output of pooling `n` images:
/// `plane` counts the channels of all the images, (`oy`, `ox`) is the output's
/// position in its plane and `out` its index in the output.
pub(super) fn for_each_output(
    g: &PoolGeometry,
    n: usize,
    mut visit: impl FnMut(usize, usize, usize, usize),
) {
    let op = g.output.height * g.output.width;
    for plane in 0..n * g.input.channels {
        for oy in 0..g.output.height {
            for ox in 0..g.output.width {
                visit(plane, oy, ox, plane * op + oy * g.output.width + ox);
            }
        }
    }
}

/// Position within its input plane of the value at (`ky`, `kx`) of the window
/// of output (`oy`, `ox`).
pub(super) fn window_pos(g: &PoolGeometry, oy: usize, ox: usize, ky: usize, kx: usize) -> usize {
    (oy * g.stride + ky) * g.input.width + ox * g.stride + kx
}

/// Position (within the input plane) of the first largest value of an output's window.
pub(super) fn window_argmax<T: Float>(
    g: &PoolGeometry,
    plane: &[T],
    oy: usize,
    ox: usize,
) -> usize {
    let mut best = window_pos(g, oy, ox, 0, 0);
    for ky in 0..g.size {
        for kx in 0..g.size {
            let pos = window_pos(g, oy, ox, ky, kx);
            if plane[pos] > plane[best] {
                best = pos;
            }
        }
    }
    best
}

pub fn max_pool_forward<T: Float>(g: &PoolGeometry, n: usize, x: &[T], y: &mut [T]) {
    let ip = g.input.height * g.input.width;
    for_each_output(g, n, |plane, oy, ox, out| {
        let xp = &x[plane * ip..][..ip];
        y[out] = xp[window_argmax(g, xp, oy, ox)];
    });
}

pub fn max_pool_backward<T: Float>(g: &PoolGeometry, n: usize, x: &[T], dy: &[T], dx: &mut [T]) {
    let ip = g.input.height * g.input.width;
    dx[..n * g.input.len()].fill(T::zero());
    for_each_output(g, n, |plane, oy, ox, out| {
        let xp = &x[plane * ip..][..ip];
        let pos = plane * ip + window_argmax(g, xp, oy, ox);
        dx[pos] = dx[pos] + dy[out];
    });
}

pub fn avg_pool_forward<T: Float>(g: &PoolGeometry, n: usize, x: &[T], y: &mut [T]) {
    let ip = g.input.height * g.input.width;
    let count = T::from(g.size * g.size).expect("window size fits a float");
    for_each_output(g, n, |plane, oy, ox, out| {
        let mut sum = T::zero();
        for ky in 0..g.size {
            for kx in 0..g.size {
                sum = sum + x[plane * ip + window_pos(g, oy, ox, ky, kx)];
            }
        }
        y[out] = sum / count;
    });
}

pub fn avg_pool_backward<T: Float>(g: &PoolGeometry, n: usize, dy: &[T], dx: &mut [T]) {
    let ip = g.input.height * g.input.width;
    let count = T::from(g.size * g.size).expect("window size fits a float");
    dx[..n * g.input.len()].fill(T::zero());
    for_each_output(g, n, |plane, oy, ox, out| {
        let share = dy[out] / count;
        for ky in 0..g.size {
            for kx in 0..g.size {
                let pos = plane * ip + window_pos(g, oy, ox, ky, kx);
                dx[pos] = dx[pos] + share;
            }
        }
    });
}
