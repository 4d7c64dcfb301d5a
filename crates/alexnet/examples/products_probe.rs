//! GFLOP/s of the engine's matrix products (`cpu::fast::gemm::matmul`) on the
//! shapes and operand layouts the paper's layers use, in f32 and in bf16 with
//! each bf16 kernel this CPU has. A tool for tuning the kernels.
//!
//! `cargo run --release -p alexnet --example products_probe [seconds per shape]`
use std::time::Instant;

use alexnet::cpu::fast::gemm::{Layout, matmul};
use alexnet::{Bf16Kernel, Precision, Products};

fn rate(shape: &Shape, products: Products, seconds: f64) -> f64 {
    let (m, n, k) = (shape.m, shape.n, shape.k);
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let mut c = vec![0.0f32; m * n];
    let run = |c: &mut [f32]| {
        matmul(
            m,
            n,
            k,
            &a,
            shape.a,
            &b,
            shape.b,
            c,
            false,
            shape.threads,
            products,
        )
    };
    run(&mut c);
    let start = Instant::now();
    let mut reps = 0;
    while start.elapsed().as_secs_f64() < seconds {
        run(&mut c);
        reps += 1;
    }
    2.0 * (m * n * k) as f64 * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    a: Layout,
    b: Layout,
    threads: usize,
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.5);
    use Layout::{Normal as N, Transposed as T};
    let shape = |name, m, n, k, a, b, threads| Shape {
        name,
        m,
        n,
        k,
        a,
        b,
        threads,
    };
    // The products of the paper's layers, as crates/alexnet/src/cpu/fast calls them.
    let shapes = [
        shape("conv1 fwd", 48, 3025, 363, N, N, 1),
        shape("conv2 fwd", 128, 729, 1200, N, N, 1),
        shape("conv3 fwd x4", 192, 676, 2304, N, N, 1),
        shape("conv1 dW", 48, 363, 3025, N, T, 1),
        shape("conv2 dW", 128, 1200, 729, N, T, 1),
        shape("conv3 dW x4", 192, 2304, 676, N, T, 1),
        shape("conv2 dcol", 1200, 729, 128, T, N, 1),
        shape("conv3 dcol x4", 2304, 676, 192, T, N, 1),
        shape("conv2 wino x4", 128, 324, 192, N, N, 1),
        shape("conv2 wino dU", 128, 192, 324, N, T, 1),
        shape("conv3 wino", 192, 392, 256, N, N, 1),
        shape("conv1 wino", 96, 841, 48, N, N, 1),
        shape("conv1 wino dU", 96, 48, 841, N, T, 1),
        shape("fc6 fwd", 4096, 128, 9216, N, T, 2),
        shape("fc6 dW", 4096, 9216, 128, N, N, 2),
        shape("fc6 dX", 9216, 128, 4096, T, N, 2),
    ];
    let mut kernels = vec![Bf16Kernel::Portable];
    if Bf16Kernel::Avx512Bf16.is_available() {
        kernels.push(Bf16Kernel::Avx512Bf16);
    }
    print!("{:<14} {:>16} {:>7}", "product", "m x n x k", "fp32");
    for kernel in &kernels {
        print!(" {:>12}", format!("bf16 {}", kernel.name()));
    }
    println!("   GFLOP/s");
    for s in &shapes {
        let f32_products = Products {
            precision: Precision::F32,
            bf16_kernel: Bf16Kernel::Portable,
        };
        print!(
            "{:<14} {:>16} {:>7.0}",
            s.name,
            format!("{}x{}x{}", s.m, s.n, s.k),
            rate(s, f32_products, seconds)
        );
        for &bf16_kernel in &kernels {
            let products = Products {
                precision: Precision::Bf16,
                bf16_kernel,
            };
            print!(" {:>12.0}", rate(s, products, seconds));
        }
        println!(" (t{})", s.threads);
    }
}
