use alexnet::cpu::fast::gemm::{Layout, matmul};
use std::time::Instant;
fn main() {
    let threads = rayon::current_num_threads();
    for &(m, n, k, la, lb, t) in &[
        (128usize, 4096usize, 9216usize, Layout::Normal, Layout::Transposed, threads),
        (128, 4096, 9216, Layout::Normal, Layout::Normal, threads),
        (96, 3025, 363, Layout::Normal, Layout::Normal, 1),
        (128, 729, 1200, Layout::Normal, Layout::Normal, 1),
        (192, 169, 1728, Layout::Normal, Layout::Normal, 1),
        (1024, 1024, 1024, Layout::Normal, Layout::Normal, threads),
        (1024, 1024, 1024, Layout::Normal, Layout::Normal, 1),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0.0f32; m * n];
        matmul(m, n, k, &a, la, &b, lb, &mut c, false, t);
        let reps = (2e10 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
        let s = Instant::now();
        for _ in 0..reps { matmul(m, n, k, &a, la, &b, lb, &mut c, false, t); }
        let dt = s.elapsed().as_secs_f64() / reps as f64;
        println!("{m}x{n}x{k} {:?} {:?} t{t}: {:.0} GFLOP/s", la, lb, 2.0 * (m * n * k) as f64 / dt / 1e9);
    }
}
