//! Every fast CPU kernel against the readable reference, on random inputs: small
//! geometries that hit the edge cases (stride, padding, groups, windows clipped
//! at group borders) and the real sizes of the paper's layers.
//!
//! Tolerances: the fast kernels sum in a different order (blocked GEMM, vector
//! lanes), so fp32 results differ by rounding; 1e-5 relative to the largest value
//! covers sums of a few thousand terms with margin, and any indexing error gives
//! errors of order 1. The convolution and linear layers are checked in every
//! matrix-product mode (f32, and bf16 with each kernel this CPU has).

mod common;

use alexnet::cpu::fast::buffers::ConvBuffers;
use alexnet::cpu::{fast, reference};
use alexnet::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, Shape};
use alexnet::precision::BF16_MIN_BATCH;
use alexnet::rng::Rng;
use alexnet::testing::{conv, paper_lrn, pool};
use alexnet::{Precision, Products};
use common::{assert_close, operand, product_modes, random};

const TOL: f32 = 1e-5;

/// Random inputs of one convolution check; gradients start non-zero to check
/// that they accumulate.
struct ConvCase {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

/// The reference's forward output and gradients.
struct ConvResults {
    y: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    dx: Vec<f32>,
}

/// The reference on the operands the products in `precision` multiply: in bf16
/// mode `x`, `w` and `dy` rounded, except for the bias gradient, which sums the
/// unrounded `dy`.
fn conv_reference(g: &ConvGeometry, n: usize, case: &ConvCase, products: Products) -> ConvResults {
    let (x, w, dy) = (
        operand(products, &case.x),
        operand(products, &case.w),
        operand(products, &case.dy),
    );
    let mut y = vec![0.0; n * g.output.len()];
    reference::conv_forward(g, n, &x, &w, &case.b, &mut y);
    let (mut dw, mut unused_db, mut dx) = (
        case.dw0.clone(),
        case.db0.clone(),
        vec![0.0; n * g.input.len()],
    );
    reference::conv_backward(g, n, &x, &w, &dy, &mut dw, &mut unused_db, Some(&mut dx));
    let plane = g.out_plane();
    let mut db = case.db0.clone();
    for image in case.dy.chunks_exact(g.output.len()).take(n) {
        for (sum, channel) in db.iter_mut().zip(image.chunks_exact(plane)) {
            *sum += channel.iter().sum::<f32>();
        }
    }
    ConvResults { y, dw, db, dx }
}

/// Checks one convolution in every product mode, on a pool of 2 threads: which
/// path runs depends on the batch against the thread count (Winograd needs an
/// image per thread), so the batches of 1 and of 2 or more take the two paths
/// on any machine.
fn check_conv(name: &str, g: &ConvGeometry, n: usize, seed: u64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a 2-thread pool");
    pool.install(|| check_conv_in_every_mode(name, g, n, seed));
}

fn check_conv_in_every_mode(name: &str, g: &ConvGeometry, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let case = ConvCase {
        x: random(&mut rng, n * g.input.len(), 1.0),
        w: random(&mut rng, g.weight_len(), 0.1),
        b: random(&mut rng, g.output.channels, 0.1),
        dy: random(&mut rng, n * g.output.len(), 1.0),
        dw0: random(&mut rng, g.weight_len(), 1.0),
        db0: random(&mut rng, g.output.channels, 1.0),
    };
    // One reference per precision (the bf16 kernels share theirs).
    let mut references: Vec<(Precision, ConvResults)> = Vec::new();
    for (mode, products) in product_modes() {
        if !references.iter().any(|(p, _)| *p == products.precision) {
            references.push((products.precision, conv_reference(g, n, &case, products)));
        }
        let (_, expected) = references
            .iter()
            .find(|(p, _)| *p == products.precision)
            .unwrap();
        let name = format!("{name} ({mode})");
        if products.precision == Precision::Bf16 && fast::conv::uses_winograd(g, n, products) {
            // bf16 Winograd rounds the transformed blocks, not the operands: held to
            // the error of a direct bf16 convolution instead (below).
            let exact = &references[0].1;
            check_bf16_winograd(&name, g, n, &case, exact, expected, products);
        } else {
            check_conv_against(&name, g, n, &case, expected, products);
        }
    }
}

/// How many times a direct bf16 convolution's own error (against f32) the bf16
/// Winograd path may be off (measured: 1.3 to 2.4): its products round transformed blocks, sums of up
/// to 16 inputs or 9 weights, so each rounding is relative to a larger value.
const BF16_WINOGRAD_FACTOR: f32 = 4.0;

/// Asserts max|ours - exact| <= factor * max|direct - exact| (and that the
/// direct error is a real bf16 error, not zero).
fn assert_within_bf16_error(what: &str, ours: &[f32], exact: &[f32], direct: &[f32]) {
    let worst = |a: &[f32]| {
        a.iter()
            .zip(exact)
            .fold(0.0f32, |m, (x, e)| m.max((x - e).abs()))
    };
    let (ours_off, direct_off) = (worst(ours), worst(direct));
    assert!(
        direct_off > 0.0,
        "{what}: a direct bf16 convolution equals f32"
    );
    assert!(
        ours_off <= BF16_WINOGRAD_FACTOR * direct_off,
        "{what}: {ours_off:e} from f32, {:.1} times a direct bf16 convolution's {direct_off:e}",
        ours_off / direct_off
    );
    eprintln!(
        "{what}: {:.2} times a direct bf16 convolution's error",
        ours_off / direct_off
    );
}

/// The fast convolution's forward output and gradients, with the input gradient.
fn fast_conv(
    g: &ConvGeometry,
    n: usize,
    case: &ConvCase,
    products: Products,
    buffers: &ConvBuffers,
) -> ConvResults {
    let ConvCase {
        x,
        w,
        b,
        dy,
        dw0,
        db0,
    } = case;
    let mut y = vec![f32::NAN; n * g.output.len()];
    fast::conv::forward(g, n, x, w, b, &mut y, products, buffers, false);
    let (mut dw, mut db, mut dx) = (dw0.clone(), db0.clone(), vec![f32::NAN; n * g.input.len()]);
    fast::conv::backward(
        g,
        n,
        x,
        w,
        dy,
        &mut dw,
        &mut db,
        Some(&mut dx),
        products,
        buffers,
    );
    ConvResults { y, dw, db, dx }
}

fn check_bf16_winograd(
    name: &str,
    g: &ConvGeometry,
    n: usize,
    case: &ConvCase,
    exact: &ConvResults,
    direct: &ConvResults,
    products: Products,
) {
    let ours = fast_conv(g, n, case, products, &ConvBuffers::default());
    assert_within_bf16_error(&format!("{name} forward"), &ours.y, &exact.y, &direct.y);
    assert_within_bf16_error(&format!("{name} dw"), &ours.dw, &exact.dw, &direct.dw);
    assert_close(&format!("{name} db"), &ours.db, &exact.db, TOL);
    assert_within_bf16_error(&format!("{name} dx"), &ours.dx, &exact.dx, &direct.dx);
}

fn check_conv_against(
    name: &str,
    g: &ConvGeometry,
    n: usize,
    case: &ConvCase,
    expected: &ConvResults,
    products: Products,
) {
    // One set of buffers for all the calls, as a backend keeps them.
    let buffers = ConvBuffers::default();
    let ours = fast_conv(g, n, case, products, &buffers);
    assert_close(&format!("{name} forward"), &ours.y, &expected.y, TOL);
    assert_close(&format!("{name} dw"), &ours.dw, &expected.dw, TOL);
    assert_close(&format!("{name} db"), &ours.db, &expected.db, TOL);
    assert_close(&format!("{name} dx"), &ours.dx, &expected.dx, TOL);

    // With the ReLU after it: the same values, rectified.
    let (x, w, b) = (&case.x, &case.w, &case.b);
    let mut rectified = vec![f32::NAN; ours.y.len()];
    fast::conv::forward(g, n, x, w, b, &mut rectified, products, &buffers, true);
    let expected_rectified: Vec<f32> = ours.y.iter().map(|v| v.max(0.0)).collect();
    assert_eq!(
        rectified, expected_rectified,
        "{name}: forward with the ReLU"
    );

    // Without an input gradient the parameter gradients are the same.
    let (mut dw_none, mut db_none) = (case.dw0.clone(), case.db0.clone());
    fast::conv::backward(
        g,
        n,
        x,
        w,
        &case.dy,
        &mut dw_none,
        &mut db_none,
        None,
        products,
        &buffers,
    );
    assert_close(
        &format!("{name} dw without dx"),
        &dw_none,
        &expected.dw,
        TOL,
    );
}

#[test]
fn conv_small_geometries() {
    let cases = [
        ("1x1", conv(Shape::new(3, 5, 5), 4, 1, 1, 0, 1)),
        ("3x3 pad 1", conv(Shape::new(4, 7, 6), 6, 3, 1, 1, 1)),
        (
            "5x5 pad 2 groups 2",
            conv(Shape::new(4, 9, 9), 6, 5, 1, 2, 2),
        ),
        (
            "5x5 pad 2 on 8x10 (blocks past the edge)",
            conv(Shape::new(3, 8, 10), 5, 5, 1, 2, 1),
        ),
        (
            "11x11 stride 4 pad 2",
            conv(Shape::new(3, 31, 31), 8, 11, 4, 2, 1),
        ),
        (
            "9x9 stride 3 groups 2, a row and columns no output reads",
            conv(Shape::new(2, 11, 13), 4, 9, 3, 0, 2),
        ),
        (
            "stride 2 odd pad",
            conv(Shape::new(2, 8, 11), 4, 3, 2, 3, 2),
        ),
        (
            "pad larger than kernel",
            conv(Shape::new(2, 4, 4), 2, 2, 3, 3, 1),
        ),
        ("groups 4", conv(Shape::new(8, 6, 6), 8, 3, 1, 1, 4)),
        (
            "3x3 pad 1 groups 2 on 19x21 (rows of blocks longer than a vector)",
            conv(Shape::new(4, 19, 21), 6, 3, 1, 1, 2),
        ),
    ];
    for (i, (name, g)) in cases.iter().enumerate() {
        for n in [1, 3] {
            check_conv(name, g, n, i as u64 * 10 + n as u64);
        }
    }
}

#[test]
fn conv_with_several_images_per_product() {
    // Small output planes put several images side by side in one product, as
    // many as the batch allows while every thread still gets work: batches of 8
    // and 11 exercise full and ragged runs.
    let cases = [
        ("3x3 pad 1 on 6x6", conv(Shape::new(4, 6, 6), 6, 3, 1, 1, 2)),
        (
            "conv4 of the paper",
            conv(Shape::new(384, 13, 13), 384, 3, 1, 1, 2),
        ),
    ];
    for (i, (name, g)) in cases.iter().enumerate() {
        for n in [8, 11] {
            check_conv(name, g, n, 200 + i as u64 * 10 + n as u64);
        }
    }
}

#[test]
fn conv_at_the_papers_sizes() {
    let cases = [
        ("conv1", conv(Shape::new(3, 224, 224), 96, 11, 4, 2, 1)),
        ("conv2", conv(Shape::new(96, 27, 27), 256, 5, 1, 2, 2)),
        ("conv3", conv(Shape::new(256, 13, 13), 384, 3, 1, 1, 1)),
        ("conv4", conv(Shape::new(384, 13, 13), 384, 3, 1, 1, 2)),
        ("conv5", conv(Shape::new(384, 13, 13), 256, 3, 1, 1, 2)),
    ];
    for (i, (name, g)) in cases.iter().enumerate() {
        for n in [1, 2] {
            check_conv(name, g, n, 100 + i as u64);
        }
    }
}

fn check_linear(g: LinearGeometry, n: usize, seed: u64) {
    for (mode, products) in product_modes() {
        check_linear_in(g, n, seed, &mode, products);
    }
}

/// Operands as in [`check_conv_in`].
fn check_linear_in(g: LinearGeometry, n: usize, seed: u64, mode: &str, products: Products) {
    let mut rng = Rng::new(seed);
    let x = random(&mut rng, n * g.inputs, 1.0);
    let w = random(&mut rng, g.weight_len(), 0.1);
    let b = random(&mut rng, g.outputs, 0.1);
    let dy = random(&mut rng, n * g.outputs, 1.0);
    // Below a batch of BF16_MIN_BATCH the layer's products stay f32 (see `for_linear_batch`).
    let used = products.for_linear_batch(n);
    assert_eq!(
        used == products,
        n >= BF16_MIN_BATCH || products.precision == Precision::F32
    );
    let (x_op, w_op, dy_op) = (operand(used, &x), operand(used, &w), operand(used, &dy));
    let (mut y_ref, mut y_fast) = (vec![0.0; n * g.outputs], vec![f32::NAN; n * g.outputs]);
    reference::linear_forward(&g, n, &x_op, &w_op, &b, &mut y_ref);
    fast::linear::forward(&g, n, &x, &w, &b, &mut y_fast, products);
    let name = format!("linear {}->{} batch {n} ({mode})", g.inputs, g.outputs);
    assert_close(&format!("{name} forward"), &y_fast, &y_ref, TOL);
    let dw0 = random(&mut rng, g.weight_len(), 1.0);
    let (mut dw_ref, mut db_ref, mut dx_ref) =
        (dw0.clone(), vec![0.5; g.outputs], vec![0.0; n * g.inputs]);
    let (mut dw_fast, mut db_fast, mut dx_fast) = (
        dw0.clone(),
        vec![0.5; g.outputs],
        vec![f32::NAN; n * g.inputs],
    );
    reference::linear_backward(
        &g,
        n,
        &x_op,
        &w_op,
        &dy_op,
        &mut dw_ref,
        &mut db_ref,
        Some(&mut dx_ref),
    );
    // The bias gradient from the unrounded output gradient.
    let mut db_ref = vec![0.5; g.outputs];
    let mut unused = dw0;
    reference::linear_backward(&g, n, &x, &w, &dy, &mut unused, &mut db_ref, None);
    fast::linear::backward(
        &g,
        n,
        &x,
        &w,
        &dy,
        &mut dw_fast,
        &mut db_fast,
        Some(&mut dx_fast),
        products,
    );
    assert_close(&format!("{name} dw"), &dw_fast, &dw_ref, TOL);
    assert_close(&format!("{name} db"), &db_fast, &db_ref, TOL);
    assert_close(&format!("{name} dx"), &dx_fast, &dx_ref, TOL);
}

#[test]
fn linear_small_and_paper_sizes() {
    check_linear(
        LinearGeometry {
            inputs: 7,
            outputs: 3,
        },
        1,
        1,
    );
    check_linear(
        LinearGeometry {
            inputs: 33,
            outputs: 17,
        },
        5,
        2,
    );
    // Batches from which bf16 mode multiplies in bf16.
    for n in [BF16_MIN_BATCH, 13] {
        check_linear(
            LinearGeometry {
                inputs: 33,
                outputs: 17,
            },
            n,
            6,
        );
    }
    check_linear(
        LinearGeometry {
            inputs: 4096,
            outputs: 4096,
        },
        BF16_MIN_BATCH,
        7,
    );
    // fc6, fc7, fc8 of the paper, at batch 2.
    check_linear(
        LinearGeometry {
            inputs: 9216,
            outputs: 4096,
        },
        2,
        3,
    );
    check_linear(
        LinearGeometry {
            inputs: 4096,
            outputs: 4096,
        },
        2,
        4,
    );
    check_linear(
        LinearGeometry {
            inputs: 4096,
            outputs: 1000,
        },
        2,
        5,
    );
}

#[test]
fn linear_at_small_batches_with_f32_and_bf16_weights() {
    // Below BF16_MIN_BATCH the weight rows are streamed (`fast::gemv`): f32
    // weights in fp32 mode; in bf16 mode the weights rounded to bf16, the inputs
    // and sums f32. Row counts not a multiple of the kernels' groups of eight,
    // and inputs not a multiple of their runs of 16, included.
    let bf16 = Products {
        precision: Precision::Bf16,
        ..Products::default()
    };
    let cases = [
        (7, 3, 1),
        (33, 17, 3),
        (40, 5, BF16_MIN_BATCH - 1),
        (9216, 4096, 1),
    ];
    for (seed, (inputs, outputs, n)) in cases.into_iter().enumerate() {
        let g = LinearGeometry { inputs, outputs };
        let mut rng = Rng::new(300 + seed as u64);
        let x = random(&mut rng, n * inputs, 1.0);
        let w = random(&mut rng, g.weight_len(), 0.1);
        let b = random(&mut rng, outputs, 0.1);
        let mut y_ref = vec![0.0; n * outputs];
        reference::linear_forward(&g, n, &x, &operand(bf16, &w), &b, &mut y_ref);
        let w_bits: Vec<u16> = w.iter().map(|&v| fast::gemm_bf16::bf16_bits(v)).collect();
        let mut y = vec![f32::NAN; n * outputs];
        fast::gemv::forward(&g, n, &x, &w_bits, &b, &mut y);
        let name = format!("linear {inputs}->{outputs} batch {n}, bf16 weights");
        assert_close(&name, &y, &y_ref, TOL);

        reference::linear_forward(&g, n, &x, &w, &b, &mut y_ref);
        let mut y = vec![f32::NAN; n * outputs];
        fast::gemv::forward(&g, n, &x, &w, &b, &mut y);
        let name = format!("linear {inputs}->{outputs} batch {n}, f32 weights");
        assert_close(&name, &y, &y_ref, TOL);
    }
}

#[test]
fn the_backend_refreshes_its_bf16_weights_when_they_change() {
    use alexnet::{Backend, Cpu};
    let bf16 = Products {
        precision: Precision::Bf16,
        ..Products::default()
    };
    let cpu = Cpu::with_products(bf16).unwrap();
    let g = LinearGeometry {
        inputs: 21,
        outputs: 6,
    };
    let mut rng = Rng::new(400);
    let x_host = random(&mut rng, g.inputs, 1.0);
    let b_host = random(&mut rng, g.outputs, 0.1);
    let (mut x, mut w, mut b) = (
        cpu.alloc(g.inputs).unwrap(),
        cpu.alloc(g.weight_len()).unwrap(),
        cpu.alloc(g.outputs).unwrap(),
    );
    let mut y = cpu.alloc(g.outputs).unwrap();
    cpu.upload(&x_host, &mut x);
    cpu.upload(&b_host, &mut b);
    for (step, scale) in [0.1, 0.1, 0.3].into_iter().enumerate() {
        // New weights on every pass, by upload and by fill: each must be seen.
        let w_host = random(&mut rng, g.weight_len(), scale);
        if step != 1 {
            cpu.upload(&w_host, &mut w);
        } else {
            cpu.fill(&mut w, 0.25);
        }
        let mut w_now = vec![0.0; g.weight_len()];
        cpu.download(&w, &mut w_now);
        cpu.linear_forward(&g, 1, &x, &w, &b, &mut y);
        let mut y_ref = vec![0.0; g.outputs];
        reference::linear_forward(&g, 1, &x_host, &operand(bf16, &w_now), &b_host, &mut y_ref);
        let mut y_host = vec![0.0; g.outputs];
        cpu.download(&y, &mut y_host);
        assert_close(&format!("pass {step}"), &y_host, &y_ref, TOL);
    }
}

fn check_lrn(g: LrnGeometry, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let len = n * g.shape.len();
    // Values of the size ReLU outputs have at the paper's pixel scale, so that
    // alpha * sum(a^2) is comparable with k and the normalisation matters.
    let x: Vec<f32> = random(&mut rng, len, 60.0)
        .into_iter()
        .map(f32::abs)
        .collect();
    let dy = random(&mut rng, len, 1.0);
    let (mut y_ref, mut y_fast) = (vec![0.0; len], vec![f32::NAN; len]);
    reference::lrn_forward(&g, n, &x, &mut y_ref);
    fast::lrn::forward(&g, n, &x, &mut y_fast);
    let name = format!(
        "lrn {} size {} groups {} beta {}",
        g.shape, g.size, g.groups, g.beta
    );
    assert_close(&format!("{name} forward"), &y_fast, &y_ref, TOL);
    let (mut dx_ref, mut dx_fast) = (vec![0.0; len], vec![f32::NAN; len]);
    reference::lrn_backward(&g, n, &x, &dy, &mut dx_ref);
    fast::lrn::backward(&g, n, &x, &dy, &mut dx_fast);
    assert_close(&format!("{name} dx"), &dx_fast, &dx_ref, TOL);
}

#[test]
fn lrn_small_and_paper_sizes() {
    check_lrn(paper_lrn(Shape::new(7, 3, 4), 1), 2, 1);
    check_lrn(paper_lrn(Shape::new(8, 3, 3), 2), 2, 2);
    check_lrn(
        LrnGeometry {
            size: 3,
            beta: 0.5,
            k: 1.0,
            ..paper_lrn(Shape::new(6, 2, 5), 3)
        },
        1,
        3,
    );
    check_lrn(paper_lrn(Shape::new(96, 55, 55), 2), 1, 4);
    check_lrn(paper_lrn(Shape::new(256, 27, 27), 2), 1, 5);
    check_lrn(paper_lrn(Shape::new(96, 55, 55), 1), 1, 6);
}

#[test]
fn pooling_small_and_paper_sizes() {
    let cases = [
        pool(Shape::new(2, 7, 7), 3, 2),
        pool(Shape::new(3, 8, 6), 2, 2),
        pool(Shape::new(1, 5, 9), 3, 1),
        pool(Shape::new(2, 10, 11), 3, 3),
        pool(Shape::new(2, 9, 9), 2, 4),
        pool(Shape::new(96, 55, 55), 3, 2),
        pool(Shape::new(256, 27, 27), 3, 2),
        pool(Shape::new(256, 13, 13), 3, 2),
    ];
    for (i, g) in cases.iter().enumerate() {
        let mut rng = Rng::new(i as u64);
        let n = 2;
        let (il, ol) = (n * g.input.len(), n * g.output.len());
        // Half the inputs are zero, as after a ReLU, so ties are common.
        let x: Vec<f32> = random(&mut rng, il, 1.0)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let dy = random(&mut rng, ol, 1.0);
        let name = format!("pool {} size {} stride {}", g.input, g.size, g.stride);
        let (mut y_ref, mut y_fast) = (vec![0.0; ol], vec![f32::NAN; ol]);
        reference::max_pool_forward(g, n, &x, &mut y_ref);
        fast::pool::max_forward(g, n, &x, &mut y_fast);
        assert_eq!(y_fast, y_ref, "{name}: max forward");
        let (mut dx_ref, mut dx_fast) = (vec![0.0; il], vec![f32::NAN; il]);
        reference::max_pool_backward(g, n, &x, &dy, &mut dx_ref);
        fast::pool::max_backward(g, n, &x, &dy, &mut dx_fast);
        assert_close(&format!("{name} max dx"), &dx_fast, &dx_ref, TOL);
        reference::avg_pool_forward(g, n, &x, &mut y_ref);
        fast::pool::avg_forward(g, n, &x, &mut y_fast);
        assert_close(&format!("{name} avg forward"), &y_fast, &y_ref, TOL);
        reference::avg_pool_backward(g, n, &dy, &mut dx_ref);
        fast::pool::avg_backward(g, n, &dy, &mut dx_fast);
        assert_close(&format!("{name} avg dx"), &dx_fast, &dx_ref, TOL);
    }
}

#[test]
fn elementwise_passes() {
    let mut rng = Rng::new(9);
    // Longer than one parallel block, and not a multiple of the vector width.
    let len = 200_003;
    let x = random(&mut rng, len, 2.0);
    let d = random(&mut rng, len, 1.0);

    let (mut r, mut f) = (x.clone(), x.clone());
    reference::relu_forward(&mut r);
    fast::elementwise::relu_forward(&mut f);
    assert_eq!(f, r, "relu forward");
    let (mut dr, mut df) = (d.clone(), d.clone());
    reference::relu_backward(&r, &mut dr);
    fast::elementwise::relu_backward(&r, &mut df);
    assert_eq!(df, dr, "relu backward");

    let (mut r, mut f) = (x.clone(), x.clone());
    reference::tanh_forward(&mut r);
    fast::elementwise::tanh_forward(&mut f);
    assert_close("tanh forward", &f, &r, TOL);
    let (mut dr, mut df) = (d.clone(), d.clone());
    reference::tanh_backward(&r, &mut dr);
    fast::elementwise::tanh_backward(&r, &mut df);
    assert_close("tanh backward", &df, &dr, TOL);

    let g = DropoutGeometry { len, p: 0.5 };
    let mask: Vec<f32> = (0..len)
        .map(|_| if rng.uniform() < 0.5 { 0.0 } else { 2.0 })
        .collect();
    let (mut r, mut f) = (vec![0.0; len], vec![f32::NAN; len]);
    reference::dropout_forward(&g, 1, &mask, &x, &mut r);
    fast::elementwise::multiply(&x, &mask, &mut f);
    assert_eq!(f, r, "dropout forward");

    let (mut w_ref, mut v_ref) = (x.clone(), d.clone());
    let (mut w_fast, mut v_fast) = (x.clone(), d.clone());
    let grad = random(&mut rng, len, 1.0);
    reference::sgd_update(&mut w_ref, &grad, &mut v_ref, 0.01, 0.9, 0.0005);
    fast::elementwise::sgd_update(&mut w_fast, &grad, &mut v_fast, 0.01, 0.9, 0.0005);
    assert_close("sgd weights", &w_fast, &w_ref, 1e-6);
    assert_close("sgd velocity", &v_fast, &v_ref, 1e-6);
}

/// LRN followed by max pooling as one operation: the reference equals the two
/// reference layers one after the other (exactly), and the fast kernel agrees
/// with the reference.
fn check_lrn_max_pool(lrn: LrnGeometry, size: usize, stride: usize, n: usize, seed: u64) {
    let pool = pool(lrn.shape, size, stride);
    let mut rng = Rng::new(seed);
    let (il, ol) = (n * lrn.shape.len(), n * pool.output.len());
    // ReLU outputs: half zero (ties), the rest on the paper's pixel scale.
    let x: Vec<f32> = random(&mut rng, il, 60.0)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    let dy = random(&mut rng, ol, 1.0);
    let name = format!(
        "lrn {} groups {} + pool {size}/{stride}",
        lrn.shape, lrn.groups
    );

    // The reference is the two layers' references in a row.
    let mut normalised = vec![0.0; il];
    reference::lrn_forward(&lrn, n, &x, &mut normalised);
    let mut y_layers = vec![0.0; ol];
    reference::max_pool_forward(&pool, n, &normalised, &mut y_layers);
    let (mut y_ref, mut record_ref) = (vec![f32::NAN; ol], vec![f32::NAN; ol]);
    reference::lrn_max_pool_forward(&lrn, &pool, n, &x, &mut y_ref, Some(&mut record_ref));
    assert_eq!(y_ref, y_layers, "{name}: reference forward");
    let mut d_normalised = vec![0.0; il];
    reference::max_pool_backward(&pool, n, &normalised, &dy, &mut d_normalised);
    let mut dx_layers = vec![0.0; il];
    reference::lrn_backward(&lrn, n, &x, &d_normalised, &mut dx_layers);
    let mut dx_ref = vec![f32::NAN; il];
    reference::lrn_max_pool_backward(&lrn, &pool, n, &x, &record_ref, &dy, &mut dx_ref);
    assert_eq!(dx_ref, dx_layers, "{name}: reference backward");

    // The fast kernel, with and without a record.
    let mut y_fast = vec![f32::NAN; ol];
    // Filled with a byte no window position takes, so an unwritten one shows.
    let mut record = vec![u8::MAX; n * fast::lrn_pool::record_len(&pool)];
    fast::lrn_pool::forward(&lrn, &pool, n, &x, &mut y_fast, Some(&mut record));
    let record_fast: Vec<f32> = record.iter().copied().map(f32::from).collect();
    assert_close(&format!("{name} forward"), &y_fast, &y_ref, TOL);
    let mut y_unrecorded = vec![f32::NAN; ol];
    fast::lrn_pool::forward(&lrn, &pool, n, &x, &mut y_unrecorded, None);
    assert_eq!(y_unrecorded, y_fast, "{name}: forward without a record");
    // Its LRN rounds differently, so a near-tie may have another winner: each
    // recorded winner must hold its window's largest reference value.
    let (ip, op) = (
        pool.input.height * pool.input.width,
        pool.output.height * pool.output.width,
    );
    for (out, &within) in record_fast.iter().enumerate() {
        let (plane, o) = (out / op, out % op);
        let (oy, ox) = (o / pool.output.width, o % pool.output.width);
        let within = within as usize;
        assert!(within < size * size, "{name}: record {within} at {out}");
        let pos = (oy * stride + within / size) * pool.input.width + ox * stride + within % size;
        let winner = normalised[plane * ip + pos];
        assert!(
            (winner - y_ref[out]).abs() <= TOL * y_ref[out].abs().max(1.0),
            "{name}: output {out} recorded a value of {winner}, the window's largest is {}",
            y_ref[out]
        );
    }
    // Given the same record, both backward passes route the same gradients.
    let mut dx_expected = vec![f32::NAN; il];
    reference::lrn_max_pool_backward(&lrn, &pool, n, &x, &record_fast, &dy, &mut dx_expected);
    let mut dx_fast = vec![f32::NAN; il];
    fast::lrn_pool::backward(&lrn, &pool, n, &x, &record, &dy, &mut dx_fast);
    assert_close(&format!("{name} dx"), &dx_fast, &dx_expected, TOL);
}

#[test]
fn lrn_then_max_pool_in_one_pass() {
    check_lrn_max_pool(paper_lrn(Shape::new(6, 7, 7), 2), 3, 2, 2, 1);
    check_lrn_max_pool(paper_lrn(Shape::new(5, 9, 8), 1), 2, 2, 3, 2);
    check_lrn_max_pool(
        LrnGeometry {
            size: 3,
            beta: 0.5,
            k: 1.0,
            ..paper_lrn(Shape::new(4, 10, 11), 1)
        },
        3,
        3,
        1,
        3,
    );
    check_lrn_max_pool(paper_lrn(Shape::new(3, 9, 9), 1), 2, 4, 2, 4);
    check_lrn_max_pool(paper_lrn(Shape::new(96, 55, 55), 2), 3, 2, 1, 5);
    check_lrn_max_pool(paper_lrn(Shape::new(256, 27, 27), 2), 3, 2, 1, 6);
}
