//! The softmax cross-entropy loss.

use num_traits::Float;

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
