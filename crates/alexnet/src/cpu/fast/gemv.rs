//! Fully connected layers for a few images (fewer than
//! [`BF16_MIN_BATCH`](crate::precision::BF16_MIN_BATCH): small-batch inference, the
//! batch-1 latency): `y = x W^T + b` a few rows of `W` at a time, each row
//! streamed from memory once for all the images. A product at batch 1 reads
//! every weight once per image, so it can run no faster than memory delivers
//! them; the GEMM kernels, made for large products, reached about half of that
//! (BENCHMARKS.md). The weights are f32, or in bf16 mode a bf16 copy (half the
//! bytes); inputs, sums and outputs are f32.

use rayon::prelude::*;

use super::linear::transpose;
use super::scratch::with_scratch;
use super::simd;
use crate::layers::LinearGeometry;

/// A weight as stored: f32, or bf16 bits (the upper half of an f32).
pub trait Weight: Copy + Send + Sync {
    fn to_f32(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bf16 bits.
impl Weight for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }
}

/// Weight rows the AVX-512 kernels take at once: enough independent sums to
/// hide the additions' latency and streams for the prefetchers, with the runs
/// of `x` loaded once for all of them.
const ROWS_AT_ONCE: usize = 8;

/// Lanes of the running sums (one AVX-512 vector).
const LANES: usize = 16;

/// `y = x W^T + b` for the first `n` images (`x [n][in]`, `w [out][in]`), the
/// rows of `w` shared among the threads.
pub fn forward<W: Weight>(
    g: &LinearGeometry,
    n: usize,
    x: &[f32],
    w: &[W],
    b: &[f32],
    y: &mut [f32],
) where
    Kernels: Kernel<W>,
{
    if n == 0 || g.outputs == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    // Several tasks per thread, so that an uneven split costs little; whole
    // groups of rows, so that none is left to the one-row loop but the last.
    let rows_per_task = g
        .outputs
        .div_ceil(4 * threads)
        .next_multiple_of(ROWS_AT_ONCE);
    let avx512 = has_avx512f();
    let y = &mut y[..n * g.outputs];
    with_scratch(n * g.outputs, |yt| {
        // yt[out][image], transposed into y below.
        yt.par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, yt)| {
                let first_row = task * rows_per_task;
                let row = |r: usize| &w[(first_row + r) * g.inputs..][..g.inputs];
                let image = |i: usize| &x[i * g.inputs..][..g.inputs];
                // Rows eight at a time where the CPU has AVX-512, the rest one by one.
                let grouped = if avx512 {
                    yt.len() / n / ROWS_AT_ONCE * ROWS_AT_ONCE
                } else {
                    0
                };
                let (in_groups, rest) = yt.split_at_mut(grouped * n);
                for (group, sums) in in_groups.chunks_exact_mut(ROWS_AT_ONCE * n).enumerate() {
                    let rows = std::array::from_fn(|k| row(group * ROWS_AT_ONCE + k));
                    for i in 0..n {
                        // SAFETY: `avx512` says the CPU has AVX-512F; every row is
                        // as long as an image's inputs.
                        let dots = unsafe { Kernels::dots_avx512(rows, image(i)) };
                        for (k, dot) in dots.into_iter().enumerate() {
                            sums[k * n + i] = dot;
                        }
                    }
                }
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (r, sums) in rest.chunks_exact_mut(n).enumerate() {
                            for (i, sum) in sums.iter_mut().enumerate() {
                                *sum = dot(row(grouped + r), image(i));
                            }
                        }
                    },
                )
            });
        transpose(yt, g.outputs, n, y);
    });
    for row in y.chunks_exact_mut(g.outputs) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `sum w_k x_k` in 16 running sums (so the compiler vectorises it) added at the
/// end: the portable path, and the rows left over from the groups.
#[inline(always)]
fn dot<W: Weight>(w: &[W], x: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let (w_runs, x_runs) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
    let (w_rest, x_rest) = (w_runs.remainder(), x_runs.remainder());
    for (w, x) in w_runs.zip(x_runs) {
        for lane in 0..LANES {
            sums[lane] += w[lane].to_f32() * x[lane];
        }
    }
    let tail: f32 = w_rest.iter().zip(x_rest).map(|(w, x)| w.to_f32() * x).sum();
    sums.iter().sum::<f32>() + tail
}

/// The AVX-512 kernels, one per weight type.
pub struct Kernels;

/// `dot` of `ROWS_AT_ONCE` weight rows with the same `x`: each run of 16
/// values of `x` is loaded once for all the rows, and each row has its own chain
/// of fused multiply-adds, so no addition waits for another and the weights
/// stream at the speed of memory.
pub trait Kernel<W> {
    /// # Safety
    /// The CPU must have AVX-512F; every row must be as long as `x`.
    unsafe fn dots_avx512(rows: [&[W]; ROWS_AT_ONCE], x: &[f32]) -> [f32; ROWS_AT_ONCE];
}

/// The kernel for weights of type `$weight`, `$load` widening 16 of them at a
/// pointer into an `__m512` of f32.
macro_rules! avx512_kernel {
    ($weight:ty, $name:ident, |$at:ident| $load:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $name(rows: [&[$weight]; ROWS_AT_ONCE], x: &[f32]) -> [f32; ROWS_AT_ONCE] {
            use std::arch::x86_64::*;
            let runs = x.len() / LANES;
            let mut sums = [_mm512_setzero_ps(); ROWS_AT_ONCE];
            for run in 0..runs {
                let offset = run * LANES;
                // SAFETY: `offset + 16 <= x.len()`, and every row is as long as `x`.
                unsafe {
                    let xs = _mm512_loadu_ps(x.as_ptr().add(offset));
                    for (sum, row) in sums.iter_mut().zip(rows) {
                        let $at = row.as_ptr().add(offset);
                        *sum = _mm512_fmadd_ps($load, xs, *sum);
                    }
                }
            }
            let done = runs * LANES;
            std::array::from_fn(|k| {
                let mut lanes = [0.0f32; LANES];
                // SAFETY: 16 values into a 16-value array.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sums[k]) };
                let tail: f32 = rows[k][done..]
                    .iter()
                    .zip(&x[done..])
                    .map(|(w, x)| w.to_f32() * x)
                    .sum();
                lanes.iter().sum::<f32>() + tail
            })
        }

        #[cfg(not(target_arch = "x86_64"))]
        unsafe fn $name(_rows: [&[$weight]; ROWS_AT_ONCE], _x: &[f32]) -> [f32; ROWS_AT_ONCE] {
            unreachable!("AVX-512 outside x86-64 (`has_avx512f` is false there)")
        }

        impl Kernel<$weight> for Kernels {
            unsafe fn dots_avx512(
                rows: [&[$weight]; ROWS_AT_ONCE],
                x: &[f32],
            ) -> [f32; ROWS_AT_ONCE] {
                // SAFETY: the caller's promise, passed on.
                unsafe { $name(rows, x) }
            }
        }
    };
}

avx512_kernel!(f32, dots_f32_avx512, |at| _mm512_loadu_ps(at));
// bf16 to f32: the 16 bits become the upper half of each 32.
avx512_kernel!(u16, dots_bf16_avx512, |at| _mm512_castsi512_ps(
    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(at.cast())))
));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    /// Both weight types, batches of 1 and 3, row counts that leave rows over
    /// from the groups of eight and inputs that leave values over from the runs
    /// of 16, against the sums in f64; on one thread and on three, so that tasks
    /// both of whole groups and of groups with rows left over are run.
    #[test]
    fn few_image_products_match_the_sums() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(check_few_image_products);
        }
    }

    fn check_few_image_products() {
        let mut rng = Rng::new(5);
        let cases = [
            (9216 / 8, 4096 / 8, 1),
            (37, 29, 3),
            (100, 45, 2),
            (16, 8, 1),
            (5, 3, 2),
        ];
        for (inputs, outputs, n) in cases {
            let g = LinearGeometry { inputs, outputs };
            let x = random(&mut rng, n * inputs);
            let w = random(&mut rng, outputs * inputs);
            let w_bf16: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            let b = random(&mut rng, outputs);
            for (label, weights) in [
                ("f32", w.clone()),
                ("bf16", w_bf16.iter().map(|&v| v.to_f32()).collect()),
            ] {
                let mut y = vec![f32::NAN; n * outputs];
                if label == "f32" {
                    forward(&g, n, &x, &w, &b, &mut y);
                } else {
                    forward(&g, n, &x, &w_bf16, &b, &mut y);
                }
                for i in 0..n {
                    for o in 0..outputs {
                        let exact: f64 = (0..inputs)
                            .map(|k| {
                                f64::from(weights[o * inputs + k]) * f64::from(x[i * inputs + k])
                            })
                            .sum::<f64>()
                            + f64::from(b[o]);
                        let scale: f64 = (0..inputs)
                            .map(|k| {
                                (f64::from(weights[o * inputs + k]) * f64::from(x[i * inputs + k]))
                                    .abs()
                            })
                            .sum::<f64>()
                            + f64::from(b[o]).abs();
                        let got = f64::from(y[i * outputs + o]);
                        assert!(
                            (got - exact).abs() <= 1e-6 * scale,
                            "{label} {inputs}x{outputs} batch {n}: output {o} of image {i} is {got}, \
                             the sum {exact}"
                        );
                    }
                }
            }
        }
    }
}
