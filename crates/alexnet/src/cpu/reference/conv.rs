//! Convolution with stride, zero padding and groups (the paper's towers), as the
//! sums of its definition.

use num_traits::Float;

use super::{at, input_pos};
use crate::layers::ConvGeometry;

/// Calls `tap(wi, xi)` for each weight of output channel `o` at output position
/// (`oy`, `ox`) whose input lies inside the image (padding contributes nothing),
/// by input channel, then kernel row, then kernel column: `wi` indexes the
/// weights, `xi` one image's input. Forward and backward visit the same terms
/// in the same order.
fn for_each_tap(
    g: &ConvGeometry,
    o: usize,
    oy: usize,
    ox: usize,
    mut tap: impl FnMut(usize, usize),
) {
    let ci = g.in_per_group();
    let group = o / g.out_per_group();
    let (ih, iw) = (g.input.height, g.input.width);
    for c in 0..ci {
        for ky in 0..g.kernel {
            for kx in 0..g.kernel {
                let (Some(sy), Some(sx)) = (
                    input_pos(oy, ky, g.stride, g.pad, ih),
                    input_pos(ox, kx, g.stride, g.pad, iw),
                ) else {
                    continue;
                };
                let wi = ((o * ci + c) * g.kernel + ky) * g.kernel + kx;
                tap(wi, at(ih, iw, group * ci + c, sy, sx));
            }
        }
    }
}

pub fn conv_forward<T: Float>(g: &ConvGeometry, n: usize, x: &[T], w: &[T], b: &[T], y: &mut [T]) {
    let (oh, ow) = (g.output.height, g.output.width);
    for img in 0..n {
        let x = &x[img * g.input.len()..][..g.input.len()];
        let y = &mut y[img * g.output.len()..][..g.output.len()];
        for o in 0..g.output.channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = b[o];
                    for_each_tap(g, o, oy, ox, |wi, xi| sum = sum + w[wi] * x[xi]);
                    y[at(oh, ow, o, oy, ox)] = sum;
                }
            }
        }
    }
}

/// `dx` may be `None` for the first layer, whose input gradient nobody needs.
pub fn conv_backward<T: Float>(
    g: &ConvGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dw: &mut [T],
    db: &mut [T],
    mut dx: Option<&mut [T]>,
) {
    let (oh, ow) = (g.output.height, g.output.width);
    if let Some(dx) = dx.as_deref_mut() {
        dx[..n * g.input.len()].fill(T::zero());
    }
    for img in 0..n {
        let x = &x[img * g.input.len()..][..g.input.len()];
        let dy = &dy[img * g.output.len()..][..g.output.len()];
        for o in 0..g.output.channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let grad = dy[at(oh, ow, o, oy, ox)];
                    db[o] = db[o] + grad;
                    for_each_tap(g, o, oy, ox, |wi, xi| {
                        dw[wi] = dw[wi] + grad * x[xi];
                        if let Some(dx) = dx.as_deref_mut() {
                            let dx = &mut dx[img * g.input.len()..];
                            dx[xi] = dx[xi] + grad * w[wi];
                        }
                    });
                }
            }
        }
    }
}
