//! Matrix products: f32 on the `gemm` crate (AVX-512 kernels chosen at run time),
//! or bf16 operands with f32 sums on [`super::gemm_bf16`].

use gemm::Parallelism;

use crate::precision::{Precision, Products};

/// How a matrix operand is stored, row-major either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// An `r x c` operand stored as `r` rows of `c`.
    Normal,
    /// An `r x c` operand stored as its transpose: `c` rows of `r`.
    Transposed,
}

/// `c[m x n] (+)= a[m x k] * b[k x n]`, all row-major, with `c` overwritten unless
/// `accumulate`. `threads > 1` lets the product itself use that many rayon threads.
///
/// Panics if a slice is too short for its shape: that is a bug in the caller, and
/// the check keeps the unsafe call below sound.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
    products: Products,
) {
    if products.precision == Precision::Bf16 {
        let kernel = products.bf16_kernel;
        return super::gemm_bf16::matmul(
            m, n, k, a, a_layout, b, b_layout, c, accumulate, threads, kernel,
        );
    }
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "matmul operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // Column stride, row stride of each operand.
    let (a_cs, a_rs) = match a_layout {
        Layout::Normal => (1, k as isize),
        Layout::Transposed => (m as isize, 1),
    };
    let (b_cs, b_rs) = match b_layout {
        Layout::Normal => (1, n as isize),
        Layout::Transposed => (k as isize, 1),
    };
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the lengths were checked above against the strides chosen for each
    // layout, and `c` does not alias `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A matrix operand anywhere in a slice: element `(r, c)` at
/// `data[r * row_stride + c * column_stride]`. Lets a product read a window of a
/// larger array (rows padded, or a shifted start) without copying it.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub column_stride: usize,
}

impl Strided<'_> {
    /// Whether every element of a `rows` x `columns` matrix lies inside `data`
    /// (an offset too large to compute lies outside).
    fn holds(&self, rows: usize, columns: usize) -> bool {
        if rows == 0 || columns == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.row_stride)
            .zip((columns - 1).checked_mul(self.column_stride))
            .and_then(|(r, c)| r.checked_add(c));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `c = a b` (or `c += a b` with `accumulate`) in f32 on one thread, `a` m x k
/// and `b` k x n read through their strides, `c` m x n with rows `c_row_stride`
/// apart (its other values are left alone).
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_strided(
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    b: Strided,
    c: &mut [f32],
    c_row_stride: usize,
    accumulate: bool,
) {
    // `c`'s rows must not overlap, and its last element must lie inside it.
    let c_fits = m == 0
        || n == 0
        || ((m == 1 || c_row_stride >= n)
            && (m - 1)
                .checked_mul(c_row_stride)
                .and_then(|start| start.checked_add(n))
                .is_some_and(|end| end <= c.len()));
    assert!(
        a.holds(m, k) && b.holds(k, n) && c_fits,
        "matmul operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * c_row_stride..][..n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: every element the strides reach was checked to lie inside its slice
    // above, and `c` does not alias `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.column_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.column_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data` read as rows `row_stride` apart, each row's values side by side.
    fn rows(data: &[f32], row_stride: usize) -> Strided<'_> {
        Strided {
            data,
            row_stride,
            column_stride: 1,
        }
    }

    #[test]
    fn strided_products_read_and_write_only_their_windows() {
        // a: 3x4 inside rows of 6 (from offset 1); b: 4x5 read transposed with
        // rows of 7; c: 3x5 inside rows of 8, its other values kept.
        let (m, n, k) = (3, 5, 4);
        let a_data: Vec<f32> = (0..20).map(|i| (i as f32 * 0.7).sin()).collect();
        let b_data: Vec<f32> = (0..40).map(|i| (i as f32 * 0.3).cos()).collect();
        let a = rows(&a_data[1..], 6);
        let b = Strided {
            data: &b_data,
            row_stride: 1,
            column_stride: 7,
        };
        let at = |s: &Strided, r: usize, c: usize| s.data[r * s.row_stride + c * s.column_stride];
        for accumulate in [false, true] {
            let mut c = vec![0.5f32; 8 * m];
            matmul_f32_strided(m, n, k, a, b, &mut c, 8, accumulate);
            for r in 0..m {
                for col in 0..8 {
                    let got = c[r * 8 + col];
                    let want = if col < n {
                        let sum: f32 = (0..k).map(|i| at(&a, r, i) * at(&b, i, col)).sum();
                        sum + if accumulate { 0.5 } else { 0.0 }
                    } else {
                        0.5
                    };
                    assert!((got - want).abs() < 1e-5, "{r},{col}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "matmul operand too short")]
    fn strided_products_refuse_windows_past_the_end() {
        let data = vec![0.0f32; 10];
        let a = rows(&data, 4);
        let mut c = vec![0.0f32; 9];
        // 3 rows of 4 would need 12 values.
        matmul_f32_strided(3, 3, 4, a, a, &mut c, 3, false);
    }

    #[test]
    #[should_panic(expected = "matmul operand too short")]
    fn strided_products_refuse_strides_whose_offsets_overflow() {
        let data = vec![0.0f32; 10];
        let huge = rows(&data, usize::MAX / 2 + 1);
        let mut c = vec![0.0f32; 9];
        // (3 - 1) * row_stride wraps to 0 in unchecked arithmetic.
        matmul_f32_strided(3, 3, 1, huge, huge, &mut c, 3, false);
    }
}
