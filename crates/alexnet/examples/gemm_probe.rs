//! Measures the `gemm` crate on the matrix shapes of the paper's layers, in the
//! operand layouts the kernels could use. A tool for choosing layouts.
use std::time::Instant;

/// GFLOP/s of c[m x n] = a[m x k] * b[k x n] with the given (row stride, col stride) of each.
fn rate(m: usize, n: usize, k: usize, a_t: bool, b_t: bool, c_t: bool, threads: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let (c_rs, c_cs) = if c_t {
        (1, m as isize)
    } else {
        (n as isize, 1)
    };
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let run = |c: &mut Vec<f32>| unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            true,
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
            par,
        )
    };
    run(&mut c);
    let reps = (1e10 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
    let s = Instant::now();
    for _ in 0..reps {
        run(&mut c);
    }
    2.0 * (m * n * k) as f64 / (s.elapsed().as_secs_f64() / reps as f64) / 1e9
}

fn main() {
    let shapes = [
        ("conv1 fwd", 96, 3025, 363, 1),
        ("conv2 fwd", 128, 729, 1200, 1),
        ("conv3 fwd", 384, 169, 2304, 1),
        ("conv3 fwd x8", 384, 169 * 8, 2304, 1),
        ("conv4 fwd", 192, 169, 1728, 1),
        ("conv2 dW", 128, 1200, 729, 1),
        ("conv3 dW", 384, 2304, 169, 1),
        ("conv3 dW x8", 384, 2304, 169 * 8, 1),
        ("conv2 dcol", 1200, 729, 128, 1),
        ("conv3 dcol", 2304, 169, 384, 1),
        ("fc6 fwd", 128, 4096, 9216, 2),
        ("fc6 dW", 4096, 9216, 128, 2),
        ("fc6 dX", 128, 9216, 4096, 2),
    ];
    for (name, m, n, k, t) in shapes {
        let mut line = format!("{name:<14} {m}x{n}x{k} t{t}:");
        for bits in 0..8 {
            let (a_t, b_t, c_t) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
            line += &format!(
                " {}{}{}={:.0}",
                a_t as u8,
                b_t as u8,
                c_t as u8,
                rate(m, n, k, a_t, b_t, c_t, t)
            );
        }
        println!("{line}");
    }
}
