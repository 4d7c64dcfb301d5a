//! Convolution with stride, zero padding and groups (the paper's towers), as the
//! sums of its definition.

use num_traits::Float;

use super::{at, input_pos};
use crate::layers::ConvGeometry;

pub fn conv_forward<T: Float>(g: &ConvGeometry, n: usize, x: &[T], w: &[T], b: &[T], y: &mut [T]) {
    let (ci, co) = (g.in_per_group(), g.out_per_group());
    let (ih, iw, oh, ow) = (
        g.input.height,
        g.input.width,
        g.output.height,
        g.output.width,
    );
    for img in 0..n {
        let x = &x[img * g.input.len()..][..g.input.len()];
        let y = &mut y[img * g.output.len()..][..g.output.len()];
        for o in 0..g.output.channels {
            let group = o / co;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = b[o];
                    for c in 0..ci {
                        for ky in 0..g.kernel {
                            for kx in 0..g.kernel {
                                let (Some(sy), Some(sx)) = (
                                    input_pos(oy, ky, g.stride, g.pad, ih),
                                    input_pos(ox, kx, g.stride, g.pad, iw),
                                ) else {
                                    continue;
                                };
                                let weight = w[((o * ci + c) * g.kernel + ky) * g.kernel + kx];
                                sum = sum + weight * x[at(ih, iw, group * ci + c, sy, sx)];
                            }
                        }
                    }
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
    let (ci, co) = (g.in_per_group(), g.out_per_group());
    let (ih, iw, oh, ow) = (
        g.input.height,
        g.input.width,
        g.output.height,
        g.output.width,
    );
    if let Some(dx) = dx.as_deref_mut() {
        dx[..n * g.input.len()].fill(T::zero());
    }
    for img in 0..n {
        let x = &x[img * g.input.len()..][..g.input.len()];
        let dy = &dy[img * g.output.len()..][..g.output.len()];
        for o in 0..g.output.channels {
            let group = o / co;
            for oy in 0..oh {
                for ox in 0..ow {
                    let grad = dy[at(oh, ow, o, oy, ox)];
                    db[o] = db[o] + grad;
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
                                let xi = at(ih, iw, group * ci + c, sy, sx);
                                dw[wi] = dw[wi] + grad * x[xi];
                                if let Some(dx) = dx.as_deref_mut() {
                                    let dx = &mut dx[img * g.input.len()..];
                                    dx[xi] = dx[xi] + grad * w[wi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
