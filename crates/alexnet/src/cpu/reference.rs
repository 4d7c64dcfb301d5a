//! The readable specification of every layer: plain loops that follow the
//! formulas, generic over `f32` and `f64` (gradient checks run in `f64`). Every
//! fast kernel is tested against these. Nothing here is tuned for speed.
//!
//! Buffers hold `n` images back to back in NCHW order. Conventions (see
//! [`crate::layers`]): forward overwrites `y`; backward overwrites `dx` and adds
//! into parameter gradients.

use num_traits::Float;

use crate::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, PoolGeometry};

fn cast<T: Float>(v: f32) -> T {
    T::from(v).expect("f32 converts to any float")
}

/// Index of `x[c][h][w]` within one image of `channels x height x width`.
fn at(height: usize, width: usize, c: usize, h: usize, w: usize) -> usize {
    (c * height + h) * width + w
}

/// The input position a kernel tap reads, or `None` where it falls into the zero padding.
fn input_pos(out: usize, tap: usize, stride: usize, pad: usize, side: usize) -> Option<usize> {
    let pos = (out * stride + tap).checked_sub(pad)?;
    (pos < side).then_some(pos)
}

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

/// The normaliser `s_c = k + alpha * sum over window(c) of a_j^2` at one pixel.
fn lrn_scale<T: Float>(g: &LrnGeometry, a: &[T], plane: usize, c: usize, p: usize) -> T {
    let mut sum = T::zero();
    for j in g.window(c) {
        let v = a[j * plane + p];
        sum = sum + v * v;
    }
    cast::<T>(g.k) + cast::<T>(g.alpha) * sum
}

pub fn lrn_forward<T: Float>(g: &LrnGeometry, n: usize, x: &[T], y: &mut [T]) {
    let plane = g.shape.height * g.shape.width;
    let beta = cast::<T>(g.beta);
    for img in 0..n {
        let a = &x[img * g.shape.len()..][..g.shape.len()];
        let b = &mut y[img * g.shape.len()..][..g.shape.len()];
        for c in 0..g.shape.channels {
            for p in 0..plane {
                b[c * plane + p] = a[c * plane + p] * lrn_scale(g, a, plane, c, p).powf(-beta);
            }
        }
    }
}

/// `da_m = dy_m s_m^-beta - 2 alpha beta a_m sum_{i : m in window(i)} dy_i a_i s_i^(-beta-1)`.
/// Windows are symmetric, so `m in window(i)` exactly when `i in window(m)`.
pub fn lrn_backward<T: Float>(g: &LrnGeometry, n: usize, x: &[T], dy: &[T], dx: &mut [T]) {
    let plane = g.shape.height * g.shape.width;
    let beta = cast::<T>(g.beta);
    let two_alpha_beta = cast::<T>(2.0) * cast::<T>(g.alpha) * beta;
    for img in 0..n {
        let a = &x[img * g.shape.len()..][..g.shape.len()];
        let dy = &dy[img * g.shape.len()..][..g.shape.len()];
        let dx = &mut dx[img * g.shape.len()..][..g.shape.len()];
        for m in 0..g.shape.channels {
            for p in 0..plane {
                let s_m = lrn_scale(g, a, plane, m, p);
                let mut cross = T::zero();
                for i in g.window(m) {
                    let s_i = lrn_scale(g, a, plane, i, p);
                    cross =
                        cross + dy[i * plane + p] * a[i * plane + p] * s_i.powf(-beta - T::one());
                }
                dx[m * plane + p] =
                    dy[m * plane + p] * s_m.powf(-beta) - two_alpha_beta * a[m * plane + p] * cross;
            }
        }
    }
}

/// Position (within the input plane) of the first largest value of an output's window.
fn window_argmax<T: Float>(g: &PoolGeometry, plane: &[T], oy: usize, ox: usize) -> usize {
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

/// Local response normalisation followed by max pooling, as the backends' fused
/// operation computes it: `y = max_pool(lrn(x))`. Where `record` is given, each
/// output's entry receives the position of its window's first largest value
/// within the window (`ky * size + kx`), which is all the backward pass needs
/// of `lrn(x)`.
pub fn lrn_max_pool_forward<T: Float>(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[T],
    y: &mut [T],
    mut record: Option<&mut [T]>,
) {
    let mut normalised = vec![T::zero(); n * lrn.shape.len()];
    lrn_forward(lrn, n, x, &mut normalised);
    let (ip, op) = (
        pool.input.height * pool.input.width,
        pool.output.height * pool.output.width,
    );
    for plane in 0..n * pool.input.channels {
        let zp = &normalised[plane * ip..][..ip];
        for oy in 0..pool.output.height {
            for ox in 0..pool.output.width {
                let best = window_argmax(pool, zp, oy, ox);
                let out = plane * op + oy * pool.output.width + ox;
                y[out] = zp[best];
                if let Some(record) = record.as_deref_mut() {
                    let (ky, kx) = (
                        best / pool.input.width - oy * pool.stride,
                        best % pool.input.width - ox * pool.stride,
                    );
                    record[out] = cast((ky * pool.size + kx) as f32);
                }
            }
        }
    }
}

/// The gradient of the LRN's input from the pooled output's gradient `dy`:
/// each output's gradient goes to the recorded position of its window, then
/// back through the normalisation.
pub fn lrn_max_pool_backward<T: Float>(
    lrn: &LrnGeometry,
    pool: &PoolGeometry,
    n: usize,
    x: &[T],
    record: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    let mut d_normalised = vec![T::zero(); n * lrn.shape.len()];
    let (ip, op) = (
        pool.input.height * pool.input.width,
        pool.output.height * pool.output.width,
    );
    for plane in 0..n * pool.input.channels {
        for oy in 0..pool.output.height {
            for ox in 0..pool.output.width {
                let out = plane * op + oy * pool.output.width + ox;
                let within = record[out].to_usize().expect("a recorded window position");
                let (ky, kx) = (within / pool.size, within % pool.size);
                let pos =
                    plane * ip + (oy * pool.stride + ky) * pool.input.width + ox * pool.stride + kx;
                d_normalised[pos] = d_normalised[pos] + dy[out];
            }
        }
    }
    lrn_backward(lrn, n, x, &d_normalised, dx);
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

/// `y = x * mask`; the mask already holds 0 or `1 / (1 - p)`.
pub fn dropout_forward<T: Float>(g: &DropoutGeometry, n: usize, mask: &[T], x: &[T], y: &mut [T]) {
    for i in 0..n * g.len {
        y[i] = x[i] * mask[i];
    }
}

pub fn dropout_backward<T: Float>(
    g: &DropoutGeometry,
    n: usize,
    mask: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    for i in 0..n * g.len {
        dx[i] = dy[i] * mask[i];
    }
}

/// Mean cross-entropy of the softmax of `logits` (`n x classes`) against `labels`;
/// writes `dlogits = (softmax - onehot) / n` and returns the loss.
pub fn softmax_cross_entropy<T: Float>(
    classes: usize,
    n: usize,
    logits: &[T],
    labels: &[u32],
    dlogits: &mut [T],
) -> T {
    let count = T::from(n).expect("batch size fits a float");
    let mut loss = T::zero();
    for img in 0..n {
        let row = &logits[img * classes..][..classes];
        let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
        let sum = row.iter().fold(T::zero(), |s, &v| s + (v - max).exp());
        let label = labels[img] as usize;
        // ln(sum) - (x_label - max) rather than -ln(exp(x_label - max) / sum): the
        // latter underflows to ln(0) = -inf once a logit is ~100 below the largest.
        loss = loss + sum.ln() - (row[label] - max);
        for c in 0..classes {
            let p = (row[c] - max).exp() / sum;
            let target = if c == label { T::one() } else { T::zero() };
            dlogits[img * classes + c] = (p - target) / count;
        }
    }
    loss / count
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_stays_finite_for_far_apart_logits() {
        let logits = [0.0f32, 200.0, -300.0];
        let mut d = [0.0f32; 3];
        let loss = softmax_cross_entropy(3, 1, &logits, &[2], &mut d);
        assert_eq!(loss, 500.0);
        assert_eq!(d, [0.0, 1.0, -1.0]);
    }
}
