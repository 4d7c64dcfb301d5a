//! Every operation of the CUDA backend against the CPU reference on random
//! inputs, at small geometries that still cover each code path: groups 1 and 2,
//! strides and padding, LRN within each tower, overlapping pooling with ties.
//!
//! Tolerances are relative to the largest reference value of each tensor:
//! - element-wise ops, pooling, dropout, SGD: 1e-6 (the same formula, at most a
//!   fused multiply-add apart; pooling gradients even add in the same order);
//! - LRN: 1e-5 (`powf` on the GPU differs from the host's by an ulp or two);
//! - convolutions and fully connected layers: 1e-5 for sums of under 400
//!   products; cuDNN's FFT and Winograd algorithms (fp32 throughout, but a
//!   different order of operations) stay within that at these sizes;
//! - softmax cross-entropy: 1e-5 (`expf`/`logf` an ulp or two apart, sums over
//!   up to 1000 classes in another order).

mod common;

use alexnet::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, Shape};
use alexnet::rng::Rng;
use alexnet::{Backend, ReferenceCpu};
use common::{assert_close, conv, gpu, paper_lrn, pool, random, ties, to_device, to_host};

/// Forward and backward of one convolution on both backends; `dw` and `db`
/// start non-zero so that accumulation (`+=`) is checked too.
fn check_conv(label: &str, g: ConvGeometry, n: usize, with_dx: bool) {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let mut rng = Rng::new(17);
    let x = random(&mut rng, n * g.input.len(), 1.0);
    let w = random(&mut rng, g.weight_len(), 0.3);
    let b = random(&mut rng, g.output.channels, 0.5);
    let dy = random(&mut rng, n * g.output.len(), 1.0);
    let dw0 = random(&mut rng, g.weight_len(), 0.1);
    let db0 = random(&mut rng, g.output.channels, 0.1);

    let mut y_ref = vec![0.0; n * g.output.len()];
    cpu.conv_forward(&g, n, &x, &w, &b, &mut y_ref);
    let (mut dw_ref, mut db_ref, mut dx_ref) = (dw0.clone(), db0.clone(), vec![0.0; x.len()]);
    cpu.conv_backward(
        &g,
        n,
        &x,
        &w,
        &dy,
        &mut dw_ref,
        &mut db_ref,
        with_dx.then_some(&mut dx_ref),
    );

    let (xd, wd, bd, dyd) = (
        to_device(gpu, &x),
        to_device(gpu, &w),
        to_device(gpu, &b),
        to_device(gpu, &dy),
    );
    let mut yd = gpu.alloc(y_ref.len()).unwrap();
    gpu.conv_forward(&g, n, &xd, &wd, &bd, &mut yd);
    let (mut dwd, mut dbd) = (to_device(gpu, &dw0), to_device(gpu, &db0));
    let mut dxd = gpu.alloc(x.len()).unwrap();
    gpu.conv_backward(
        &g,
        n,
        &xd,
        &wd,
        &dyd,
        &mut dwd,
        &mut dbd,
        with_dx.then_some(&mut dxd),
    );

    let tol = 1e-5;
    assert_close(
        &format!("{label} y"),
        &to_host(gpu, &yd, y_ref.len()),
        &y_ref,
        tol,
    );
    assert_close(
        &format!("{label} dw"),
        &to_host(gpu, &dwd, dw_ref.len()),
        &dw_ref,
        tol,
    );
    assert_close(
        &format!("{label} db"),
        &to_host(gpu, &dbd, db_ref.len()),
        &db_ref,
        tol,
    );
    if with_dx {
        assert_close(
            &format!("{label} dx"),
            &to_host(gpu, &dxd, x.len()),
            &dx_ref,
            tol,
        );
    }

    // The convolution with its ReLU taken in the bias's pass.
    let mut relu_ref = vec![0.0; y_ref.len()];
    cpu.conv_relu_forward(&g, n, &x, &w, &b, &mut relu_ref);
    assert!(
        relu_ref.contains(&0.0) && relu_ref.iter().any(|&v| v > 0.0),
        "{label}: the ReLU test needs outputs on both sides of zero"
    );
    gpu.conv_relu_forward(&g, n, &xd, &wd, &bd, &mut yd);
    assert_close(
        &format!("{label} relu(y)"),
        &to_host(gpu, &yd, y_ref.len()),
        &relu_ref,
        tol,
    );
}

#[test]
fn convolution_one_group() {
    check_conv(
        "conv 4x9x9 -> 6, 3x3/1 pad 1",
        conv(Shape::new(4, 9, 9), 6, 3, 1, 1, 1),
        3,
        true,
    );
}

#[test]
fn convolution_two_towers() {
    // Each tower sees only its own half of the input channels (the paper's conv2,
    // conv4 and conv5).
    check_conv(
        "conv 6x11x11 -> 8 groups 2, 5x5/2 pad 2",
        conv(Shape::new(6, 11, 11), 8, 5, 2, 2, 2),
        3,
        true,
    );
}

#[test]
fn convolution_first_layer_without_input_gradient() {
    // conv1's shape in small: a large kernel with stride 4, and no dx.
    check_conv(
        "conv 3x23x23 -> 4, 11x11/4 pad 2",
        conv(Shape::new(3, 23, 23), 4, 11, 4, 2, 1),
        2,
        false,
    );
}

#[test]
fn convolution_on_fewer_images_than_the_buffers_hold() {
    // Buffers sized for 4 images, a batch of 3: only the first 3 take part.
    let Some(gpu) = gpu() else { return };
    let g = conv(Shape::new(2, 6, 6), 4, 3, 1, 1, 2);
    let mut rng = Rng::new(3);
    let x = random(&mut rng, 4 * g.input.len(), 1.0);
    let w = random(&mut rng, g.weight_len(), 0.5);
    let b = random(&mut rng, g.output.channels, 0.5);
    let mut y_ref = vec![0.0; 3 * g.output.len()];
    ReferenceCpu.conv_forward(&g, 3, &x, &w, &b, &mut y_ref);
    let mut yd = to_device(gpu, &vec![7.0; 4 * g.output.len()]);
    gpu.conv_forward(
        &g,
        3,
        &to_device(gpu, &x),
        &to_device(gpu, &w),
        &to_device(gpu, &b),
        &mut yd,
    );
    let y = to_host(gpu, &yd, 4 * g.output.len());
    assert_close("conv y, 3 of 4 images", &y[..y_ref.len()], &y_ref, 1e-5);
    assert!(
        y[y_ref.len()..].iter().all(|&v| v == 7.0),
        "the fourth image's output was written"
    );
}

#[test]
fn linear_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let g = LinearGeometry {
        inputs: 37,
        outputs: 13,
    };
    let n = 5;
    let mut rng = Rng::new(23);
    let x = random(&mut rng, n * g.inputs, 1.0);
    let w = random(&mut rng, g.weight_len(), 0.5);
    let b = random(&mut rng, g.outputs, 0.5);
    let dy = random(&mut rng, n * g.outputs, 1.0);
    let dw0 = random(&mut rng, g.weight_len(), 0.1);
    let db0 = random(&mut rng, g.outputs, 0.1);

    let mut y_ref = vec![0.0; n * g.outputs];
    cpu.linear_forward(&g, n, &x, &w, &b, &mut y_ref);
    let (mut dw_ref, mut db_ref, mut dx_ref) = (dw0.clone(), db0.clone(), vec![0.0; x.len()]);
    cpu.linear_backward(
        &g,
        n,
        &x,
        &w,
        &dy,
        &mut dw_ref,
        &mut db_ref,
        Some(&mut dx_ref),
    );

    let (xd, wd, bd, dyd) = (
        to_device(gpu, &x),
        to_device(gpu, &w),
        to_device(gpu, &b),
        to_device(gpu, &dy),
    );
    let mut yd = gpu.alloc(y_ref.len()).unwrap();
    gpu.linear_forward(&g, n, &xd, &wd, &bd, &mut yd);
    let (mut dwd, mut dbd) = (to_device(gpu, &dw0), to_device(gpu, &db0));
    let mut dxd = gpu.alloc(x.len()).unwrap();
    gpu.linear_backward(&g, n, &xd, &wd, &dyd, &mut dwd, &mut dbd, Some(&mut dxd));

    assert_close("linear y", &to_host(gpu, &yd, y_ref.len()), &y_ref, 1e-5);
    assert_close(
        "linear dw",
        &to_host(gpu, &dwd, dw_ref.len()),
        &dw_ref,
        1e-5,
    );
    assert_close(
        "linear db",
        &to_host(gpu, &dbd, db_ref.len()),
        &db_ref,
        1e-5,
    );
    assert_close("linear dx", &to_host(gpu, &dxd, x.len()), &dx_ref, 1e-5);
}

#[test]
fn relu_and_tanh_touch_only_the_first_len_values() {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let (len, buffer) = (1001, 1100);
    let mut rng = Rng::new(5);
    let x = random(&mut rng, buffer, 2.0);
    let d = random(&mut rng, buffer, 1.0);
    for (name, forward) in [("relu", true), ("tanh", false)] {
        let mut y_ref = x.clone();
        let mut d_ref = d.clone();
        let (mut yd, mut dd) = (to_device(gpu, &x), to_device(gpu, &d));
        if forward {
            cpu.relu_forward(len, &mut y_ref);
            cpu.relu_backward(len, &y_ref, &mut d_ref);
            gpu.relu_forward(len, &mut yd);
            gpu.relu_backward(len, &yd, &mut dd);
        } else {
            cpu.tanh_forward(len, &mut y_ref);
            cpu.tanh_backward(len, &y_ref, &mut d_ref);
            gpu.tanh_forward(len, &mut yd);
            gpu.tanh_backward(len, &yd, &mut dd);
        }
        let (y, dg) = (to_host(gpu, &yd, buffer), to_host(gpu, &dd, buffer));
        assert_close(&format!("{name} forward"), &y, &y_ref, 1e-6);
        assert_close(&format!("{name} backward"), &dg, &d_ref, 1e-6);
        assert_eq!(&y[len..], &x[len..], "{name}: values past len changed");
    }
}

fn check_lrn(label: &str, g: LrnGeometry, n: usize) {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let mut rng = Rng::new(31);
    // Large enough that the normaliser differs clearly from k.
    let x = random(&mut rng, n * g.shape.len(), 30.0);
    let dy = random(&mut rng, x.len(), 1.0);
    let mut y_ref = vec![0.0; x.len()];
    let mut dx_ref = vec![0.0; x.len()];
    cpu.lrn_forward(&g, n, &x, &mut y_ref);
    cpu.lrn_backward(&g, n, &x, &dy, &mut dx_ref);
    let (xd, dyd) = (to_device(gpu, &x), to_device(gpu, &dy));
    let (mut yd, mut dxd) = (gpu.alloc(x.len()).unwrap(), gpu.alloc(x.len()).unwrap());
    gpu.lrn_forward(&g, n, &xd, &mut yd);
    gpu.lrn_backward(&g, n, &xd, &dyd, &mut dxd);
    assert_close(
        &format!("{label} y"),
        &to_host(gpu, &yd, x.len()),
        &y_ref,
        1e-5,
    );
    assert_close(
        &format!("{label} dx"),
        &to_host(gpu, &dxd, x.len()),
        &dx_ref,
        1e-5,
    );
}

#[test]
fn lrn_within_each_tower() {
    // The paper's constants on 2 towers of 6 channels: the windows of the channels
    // beside the boundary (5 and 6) are clipped there.
    check_lrn("lrn paper, 2 towers", paper_lrn(Shape::new(12, 5, 6), 2), 3);
}

#[test]
fn lrn_across_all_channels() {
    // The cifar preset's constants, one group, alpha large enough to matter here.
    check_lrn(
        "lrn one group",
        LrnGeometry {
            shape: Shape::new(7, 4, 3),
            size: 3,
            alpha: 5e-3,
            beta: 0.75,
            k: 1.0,
            groups: 1,
        },
        2,
    );
}

/// The fused LRN + max pooling against the reference: forward with a record,
/// backward from that record, and a test-mode forward (no record) that must give
/// the same values. Inputs are rectified (half zero: ties, broken the same way on
/// both sides); `dx` starts non-zero so that every value must be written.
fn check_lrn_max_pool(label: &str, lrn: LrnGeometry, size: usize, stride: usize, n: usize) {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let pool = pool(lrn.shape, size, stride);
    let mut rng = Rng::new(37);
    let x: Vec<f32> = random(&mut rng, n * lrn.shape.len(), 30.0)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    let dy = random(&mut rng, n * pool.output.len(), 1.0);
    let mut y_ref = vec![0.0; dy.len()];
    let mut record_ref = cpu.alloc_pool_record(&pool, n).unwrap();
    cpu.lrn_max_pool_forward(&lrn, &pool, n, &x, &mut y_ref, Some(&mut record_ref));
    let mut dx_ref = vec![0.0; x.len()];
    cpu.lrn_max_pool_backward(&lrn, &pool, n, &x, &record_ref, &dy, &mut dx_ref);

    let (xd, dyd) = (to_device(gpu, &x), to_device(gpu, &dy));
    let mut yd = gpu.alloc(dy.len()).unwrap();
    let mut record = gpu.alloc_pool_record(&pool, n).unwrap();
    gpu.lrn_max_pool_forward(&lrn, &pool, n, &xd, &mut yd, Some(&mut record));
    let mut dxd = to_device(gpu, &vec![7.0; x.len()]);
    gpu.lrn_max_pool_backward(&lrn, &pool, n, &xd, &record, &dyd, &mut dxd);
    let mut y_test = gpu.alloc(dy.len()).unwrap();
    gpu.lrn_max_pool_forward(&lrn, &pool, n, &xd, &mut y_test, None);

    let y = to_host(gpu, &yd, dy.len());
    assert_close(&format!("{label} y"), &y, &y_ref, 1e-5);
    assert_eq!(
        to_host(gpu, &y_test, dy.len()),
        y,
        "{label} y without a record"
    );
    assert_close(
        &format!("{label} dx"),
        &to_host(gpu, &dxd, x.len()),
        &dx_ref,
        1e-5,
    );
}

#[test]
fn lrn_then_max_pool_in_one_operation() {
    // The paper's conv1 block in miniature: per-tower LRN, then 3/2 pooling.
    check_lrn_max_pool(
        "lrn + pool 12x9x9",
        paper_lrn(Shape::new(12, 9, 9), 2),
        3,
        2,
        3,
    );
}

#[test]
fn lrn_then_max_pool_at_other_geometries() {
    // Planes longer than a block of threads, and a last row no window covers.
    check_lrn_max_pool(
        "lrn + pool 10x18x17",
        paper_lrn(Shape::new(10, 18, 17), 2),
        3,
        2,
        2,
    );
    // 45 outputs per image: records of images do not end on a whole value.
    check_lrn_max_pool(
        "lrn + pool 5x7x7",
        paper_lrn(Shape::new(5, 7, 7), 1),
        3,
        2,
        3,
    );
    // Windows apart (stride above size: inputs no window covers) and side by side.
    check_lrn_max_pool(
        "lrn + pool 2/3",
        paper_lrn(Shape::new(6, 11, 10), 2),
        2,
        3,
        2,
    );
    check_lrn_max_pool("lrn + pool 2/2", paper_lrn(Shape::new(6, 8, 8), 1), 2, 2, 2);
}

#[test]
fn lrn_with_the_cpu_formula_at_the_tower_boundary() {
    // A direct check that the towers do not talk: changing tower 2's inputs must
    // leave tower 1's outputs exactly as they were.
    let Some(gpu) = gpu() else { return };
    let g = LrnGeometry {
        shape: Shape::new(8, 2, 2),
        size: 5,
        alpha: 1e-2,
        beta: 0.75,
        k: 2.0,
        groups: 2,
    };
    let mut rng = Rng::new(2);
    let x = random(&mut rng, g.shape.len(), 10.0);
    let mut x2 = x.clone();
    x2[g.shape.len() / 2..].iter_mut().for_each(|v| *v *= 3.0);
    let run = |x: &[f32]| {
        let mut yd = gpu.alloc(x.len()).unwrap();
        gpu.lrn_forward(&g, 1, &to_device(gpu, x), &mut yd);
        to_host(gpu, &yd, x.len())
    };
    let (y, y2) = (run(&x), run(&x2));
    assert_eq!(y[..g.shape.len() / 2], y2[..g.shape.len() / 2]);
}

#[test]
fn max_and_average_pooling() {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let n = 2;
    for (size, stride, input) in [
        (3, 2, Shape::new(3, 13, 13)), // the paper's overlapping pooling
        (3, 2, Shape::new(2, 8, 7)),   // a last row and column no window covers
        (2, 2, Shape::new(2, 6, 6)),   // non-overlapping
        (3, 2, Shape::new(2, 21, 19)), // planes longer than a block of threads
    ] {
        let g = pool(input, size, stride);
        let label = format!("pool {size}/{stride} on {input}");
        let mut rng = Rng::new(9);
        // Small integers: many ties, so the first-largest rule is exercised.
        let x = ties(&mut rng, n * g.input.len());
        let dy = random(&mut rng, n * g.output.len(), 1.0);
        let (xd, dyd) = (to_device(gpu, &x), to_device(gpu, &dy));

        let mut y_ref = vec![0.0; dy.len()];
        let mut dx_ref = vec![0.0; x.len()];
        cpu.max_pool_forward(&g, n, &x, &mut y_ref);
        cpu.max_pool_backward(&g, n, &x, &dy, &mut dx_ref);
        let (mut yd, mut dxd) = (gpu.alloc(dy.len()).unwrap(), to_device(gpu, &x));
        gpu.max_pool_forward(&g, n, &xd, &mut yd);
        gpu.max_pool_backward(&g, n, &xd, &dyd, &mut dxd);
        assert_close(
            &format!("max {label} y"),
            &to_host(gpu, &yd, dy.len()),
            &y_ref,
            0.0,
        );
        assert_close(
            &format!("max {label} dx"),
            &to_host(gpu, &dxd, x.len()),
            &dx_ref,
            1e-6,
        );

        cpu.avg_pool_forward(&g, n, &x, &mut y_ref);
        cpu.avg_pool_backward(&g, n, &dy, &mut dx_ref);
        gpu.avg_pool_forward(&g, n, &xd, &mut yd);
        gpu.avg_pool_backward(&g, n, &dyd, &mut dxd);
        assert_close(
            &format!("avg {label} y"),
            &to_host(gpu, &yd, dy.len()),
            &y_ref,
            1e-6,
        );
        assert_close(
            &format!("avg {label} dx"),
            &to_host(gpu, &dxd, x.len()),
            &dx_ref,
            1e-6,
        );
    }
}

/// Masks drawn on the device equal the host's bit for bit (the same seed gives the
/// same mask on every backend), for several drop probabilities, a length that is
/// no whole number of blocks, a tower's share of each image's values (rows at an
/// offset and stride), and only the values asked for written.
#[test]
fn dropout_masks_drawn_on_the_device_are_the_hosts() {
    use alexnet::Rows;
    let Some(gpu) = gpu() else { return };
    let share = Rows {
        count: 7,
        len: 2048,
        offset: 2048,
        stride: 4096,
    };
    for (p, seed, rows) in [
        (0.5, 7, Rows::packed(1, 100_003)),
        (0.3, u64::MAX, Rows::packed(17, 241)),
        (0.0, 0, Rows::packed(1, 513)),
        (0.5, 11, share),
    ] {
        let len = rows.count * rows.len;
        let g = DropoutGeometry { len: rows.len, p };
        let mut host = vec![0.0; len];
        alexnet::layers::dropout::fill_mask_rows(&g, seed, rows, &mut host);
        let mut mask = to_device(gpu, &vec![-1.0; len + 5]);
        gpu.dropout_mask(&g, seed, rows, &mut mask);
        let device = to_host(gpu, &mask, len + 5);
        let differing = (0..len)
            .filter(|&i| device[i].to_bits() != host[i].to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "p {p}, seed {seed}, {rows:?}: values differing from the host's"
        );
        assert_eq!(&device[len..], &[-1.0; 5], "written past len");
    }
}

#[test]
fn dropout_multiplies_by_the_given_mask() {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let g = DropoutGeometry { len: 50, p: 0.5 };
    let n = 3;
    let mut rng = Rng::new(4);
    let x = random(&mut rng, n * g.len, 1.0);
    let dy = random(&mut rng, n * g.len, 1.0);
    let mask: Vec<f32> = (0..n * g.len)
        .map(|_| {
            if rng.uniform() < 0.5 {
                0.0
            } else {
                g.keep_scale()
            }
        })
        .collect();
    let (mut y_ref, mut dx_ref) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    cpu.dropout_forward(&g, n, &mask, &x, &mut y_ref);
    cpu.dropout_backward(&g, n, &mask, &dy, &mut dx_ref);
    let maskd = to_device(gpu, &mask);
    let (mut yd, mut dxd) = (gpu.alloc(x.len()).unwrap(), gpu.alloc(x.len()).unwrap());
    gpu.dropout_forward(&g, n, &maskd, &to_device(gpu, &x), &mut yd);
    gpu.dropout_backward(&g, n, &maskd, &to_device(gpu, &dy), &mut dxd);
    assert_close("dropout y", &to_host(gpu, &yd, x.len()), &y_ref, 0.0);
    assert_close("dropout dx", &to_host(gpu, &dxd, x.len()), &dx_ref, 0.0);
}

#[test]
fn softmax_cross_entropy_loss_and_gradient() {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    // 10 classes (fewer than a block's threads) and 1000 (more: each thread loops).
    for (classes, n) in [(10, 4), (1000, 3)] {
        let mut rng = Rng::new(classes as u64);
        let mut logits = random(&mut rng, n * classes, 5.0);
        // Far-apart logits: the loss must stay finite, as on the CPU.
        logits[1] = 200.0;
        logits[2] = -300.0;
        let labels: Vec<u32> = (0..n as u32)
            .map(|i| (i * 7 + 2) % classes as u32)
            .collect();
        let mut d_ref = vec![0.0; logits.len()];
        let loss_ref = cpu.softmax_cross_entropy(classes, n, &logits, &labels, &mut d_ref);
        let mut dd = gpu.alloc(logits.len()).unwrap();
        let loss =
            gpu.softmax_cross_entropy(classes, n, &to_device(gpu, &logits), &labels, &mut dd);
        assert_close(
            &format!("loss, {classes} classes"),
            &[loss],
            &[loss_ref],
            1e-5,
        );
        assert_close(
            &format!("dlogits, {classes} classes"),
            &to_host(gpu, &dd, logits.len()),
            &d_ref,
            1e-5,
        );
    }
}

#[test]
fn sgd_update_as_the_paper_writes_it() {
    let Some(gpu) = gpu() else { return };
    let cpu = ReferenceCpu;
    let mut rng = Rng::new(8);
    let len = 1234;
    let (w, dw, v) = (
        random(&mut rng, len, 0.1),
        random(&mut rng, len, 1.0),
        random(&mut rng, len, 0.01),
    );
    let (mut w_ref, mut v_ref) = (w.clone(), v.clone());
    cpu.sgd_update(&mut w_ref, &dw, &mut v_ref, 0.01, 0.9, 0.0005);
    let (mut wd, mut vd) = (to_device(gpu, &w), to_device(gpu, &v));
    gpu.sgd_update(&mut wd, &to_device(gpu, &dw), &mut vd, 0.01, 0.9, 0.0005);
    assert_close("sgd w", &to_host(gpu, &wd, len), &w_ref, 1e-6);
    assert_close("sgd v", &to_host(gpu, &vd, len), &v_ref, 1e-6);
}

#[test]
fn buffers_fill_copy_upload_download() {
    let Some(gpu) = gpu() else { return };
    let mut a = gpu.alloc(10).unwrap();
    assert_eq!(to_host(gpu, &a, 10), vec![0.0; 10], "alloc zeroes");
    gpu.fill(&mut a, 2.5);
    assert_eq!(to_host(gpu, &a, 10), vec![2.5; 10]);
    gpu.upload(&[1.0, 2.0, 3.0], &mut a);
    assert_eq!(
        to_host(gpu, &a, 4),
        vec![1.0, 2.0, 3.0, 2.5],
        "upload writes the start only"
    );
    let mut b = gpu.alloc(10).unwrap();
    gpu.copy(2, &a, &mut b);
    assert_eq!(to_host(gpu, &b, 3), vec![1.0, 2.0, 0.0]);
    gpu.fill(&mut b, 0.0);
    assert_eq!(to_host(gpu, &b, 10), vec![0.0; 10]);
    gpu.synchronize();
    assert!(gpu.describe().starts_with("cuda:0"), "{}", gpu.describe());
}

/// Uploads large enough to go through the page-locked buffers in several pieces
/// (the last one partial), back to back into two buffers, each source overwritten
/// as soon as its upload returns: both arrive whole.
#[test]
fn large_uploads_arrive_whole() {
    let Some(gpu) = gpu() else { return };
    // 21 MiB and an odd number of values: three 8 MiB pieces, the last partial.
    let len = (21 << 20) / 4 + 3;
    let mut rng = Rng::new(31);
    let first = random(&mut rng, len, 1.0);
    let second = random(&mut rng, len - 5, 1.0);
    let mut a = gpu.alloc(len).unwrap();
    let mut b = gpu.alloc(len).unwrap();
    let mut source = first.clone();
    gpu.upload(&source, &mut a);
    source.fill(f32::NAN);
    source.truncate(second.len());
    source.copy_from_slice(&second);
    gpu.upload(&source, &mut b);
    source.fill(f32::NAN);
    assert!(to_host(gpu, &a, len) == first, "the first upload");
    assert!(
        to_host(gpu, &b, second.len()) == second,
        "the second upload"
    );
}

/// Views cut from stored bytes on the device against `alexnet::input::cut_views`:
/// the same operations in the same order, so equal to the last bit. Colour and
/// grey images, with and without the mean, reflected and not, every corner.
#[test]
fn stored_views_are_cut_as_the_host_cuts_them() {
    use alexnet::input::{StoredBatch, ViewPlacement, cut_views};
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(23);
    for (channels, subtract_mean) in [(3, true), (3, false), (1, true)] {
        let stored = Shape::new(channels, 9, 11);
        let (crop_height, crop_width) = (6, 7);
        let images = 3;
        let pixels: Vec<u8> = (0..images * stored.len())
            .map(|_| rng.below(256) as u8)
            .collect();
        let mean: Vec<f32> = random(&mut rng, stored.len(), 100.0);
        let views: Vec<ViewPlacement> = (0..8)
            .map(|v| ViewPlacement {
                image: v % images,
                y: rng.below(9 - crop_height + 1),
                x: if v < 2 {
                    [0, 11 - crop_width][v]
                } else {
                    rng.below(11 - crop_width + 1)
                },
                flip: v % 2 == 1,
                shift: [
                    rng.normal() as f32,
                    rng.normal() as f32,
                    rng.normal() as f32,
                ],
            })
            .collect();
        let batch = StoredBatch {
            pixels: &pixels,
            stored,
            crop_height,
            crop_width,
            views: &views,
            subtract_mean,
            scale: [0.5, 2.0, 1.5],
        };
        batch.validate().unwrap();
        let len = views.len() * batch.view_shape().len();
        let mut expected = vec![0.0; len];
        cut_views(&batch, Some(&mean), &mut expected);
        let mean_gpu = to_device(gpu, &mean);
        let mut out = gpu.alloc(len).unwrap();
        gpu.cut_views(&batch, Some(&mean_gpu), &mut out);
        let label = format!("{channels} channels, mean {subtract_mean}");
        assert_eq!(to_host(gpu, &out, len), expected, "{label}");
    }
}

/// Stored batches large enough to be staged in several pieces, queued one after
/// another with no wait between: each is copied on the copy stream into one of
/// two device buffers used in turn, so the third batch's copy goes into the
/// first's buffer and must wait until the first batch's views are cut. Every
/// output must be its own batch's views, equal to the host's to the last bit.
#[test]
fn stored_batches_queued_back_to_back_keep_their_own_bytes() {
    use alexnet::input::{StoredBatch, ViewPlacement, cut_views};
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(29);
    let stored = Shape::new(3, 160, 160);
    let crop_height = 144;
    // 300 images of 76,800 bytes: 23 MB, three staging pieces.
    let images = 300;
    let batches: Vec<(Vec<u8>, Vec<ViewPlacement>)> = (0..4)
        .map(|_| {
            let pixels = (0..images * stored.len())
                .map(|_| rng.below(256) as u8)
                .collect();
            let views = (0..images)
                .map(|image| ViewPlacement {
                    image,
                    y: rng.below(160 - crop_height + 1),
                    x: rng.below(160 - crop_height + 1),
                    flip: rng.below(2) == 1,
                    shift: [0.0; 3],
                })
                .collect();
            (pixels, views)
        })
        .collect();
    fn as_batch<'a>(
        (pixels, views): &'a (Vec<u8>, Vec<ViewPlacement>),
        stored: Shape,
        crop: usize,
    ) -> StoredBatch<'a> {
        StoredBatch::raw(pixels, stored, crop, crop, views)
    }
    let len = images * 3 * crop_height * crop_height;
    let mut outputs: Vec<_> = (0..batches.len())
        .map(|_| gpu.alloc(len).unwrap())
        .collect();
    // Keep the compute stream busy first (products of some 0.8 TFLOP), so that
    // the copies, which do not wait for it, run well ahead of the cuts: a copy
    // that did not wait for the cut reading its buffer would overwrite bytes
    // not yet cut.
    keep_busy(gpu);
    for (batch, out) in batches.iter().zip(&mut outputs) {
        gpu.cut_views(&as_batch(batch, stored, crop_height), None, out);
    }
    for (index, (batch, out)) in batches.iter().zip(&outputs).enumerate() {
        let mut expected = vec![0.0; len];
        cut_views(&as_batch(batch, stored, crop_height), None, &mut expected);
        assert!(
            to_host(gpu, out, len) == expected,
            "stored batch {index} of {}: views differ from the host's",
            batches.len()
        );
    }
}

/// Rows pulled from another backend on the same GPU (as two towers on one GPU
/// exchange them) and from the same backend, and rows added, against the host's.
/// The source is written last by a fill queued behind long work on the other
/// backend's stream, so a pull not ordered after that stream by `wait_for` would
/// read the values from before the fill.
#[test]
fn rows_pulled_between_backends_and_added_are_the_hosts() {
    use alexnet::Rows;
    let Some(gpu) = gpu() else { return };
    let Some(other) = common::new_gpu(alexnet_cuda::Precision::F32) else {
        return;
    };
    let mut rng = Rng::new(31);
    let src_rows = Rows {
        count: 5,
        len: 7,
        offset: 3,
        stride: 20,
    };
    let dst_rows = Rows {
        count: 5,
        len: 7,
        offset: 2,
        stride: 9,
    };
    let (src_len, dst_len) = (src_rows.end() + 4, dst_rows.end() + 1);
    let dst_start: Vec<f32> = random(&mut rng, dst_len, 1.0);

    // The source: 2.5 everywhere, written after long work.
    let mut src = to_device(&other, &random(&mut rng, src_len, 1.0));
    keep_busy(&other);
    other.fill(&mut src, 2.5);
    let host_src = vec![2.5; src_len];

    let mut expected = dst_start.clone();
    ReferenceCpu.pull_rows(&ReferenceCpu, &host_src, src_rows, &mut expected, dst_rows);
    let mut dst = to_device(gpu, &dst_start);
    gpu.wait_for(&other);
    gpu.pull_rows(&other, &src, src_rows, &mut dst, dst_rows);
    assert_eq!(
        to_host(gpu, &dst, dst_len),
        expected,
        "pulled from another backend"
    );

    let local: Vec<f32> = random(&mut rng, src_len, 1.0);
    let local_gpu = to_device(gpu, &local);
    let mut expected = dst_start.clone();
    ReferenceCpu.pull_rows(&ReferenceCpu, &local, src_rows, &mut expected, dst_rows);
    let mut dst = to_device(gpu, &dst_start);
    gpu.pull_rows(gpu, &local_gpu, src_rows, &mut dst, dst_rows);
    assert_eq!(
        to_host(gpu, &dst, dst_len),
        expected,
        "pulled within one backend"
    );

    ReferenceCpu.add_rows(&local, src_rows, &mut expected, dst_rows);
    gpu.add_rows(&local_gpu, src_rows, &mut dst, dst_rows);
    assert_eq!(to_host(gpu, &dst, dst_len), expected, "rows added");
}

/// Queues products of some 0.8 TFLOP on `gpu`'s stream (tens of milliseconds),
/// so that work ordered after them starts late.
fn keep_busy(gpu: &alexnet_cuda::CudaBackend) {
    let g = LinearGeometry {
        inputs: 8192,
        outputs: 8192,
    };
    let n = 2048;
    let (x, w, b) = (
        gpu.alloc(n * g.inputs).unwrap(),
        gpu.alloc(g.weight_len()).unwrap(),
        gpu.alloc(g.outputs).unwrap(),
    );
    let mut y = gpu.alloc(n * g.outputs).unwrap();
    for _ in 0..3 {
        gpu.linear_forward(&g, n, &x, &w, &b, &mut y);
    }
}

/// Input uploads alternate between two buffers (as a network's input does) and
/// run on the copy stream: the third upload, into the first buffer again, must
/// wait for the work queued before the second upload that reads that buffer,
/// which long work on the compute stream holds back; each read must see its own
/// batch.
#[test]
fn input_uploads_wait_for_the_last_reads_of_their_buffer() {
    let Some(gpu) = common::new_gpu(alexnet_cuda::Precision::F32) else {
        return;
    };
    assert!(gpu.overlaps_input_uploads());
    let len = 6 << 20; // 24 MiB: staged in several pieces
    let mut rng = Rng::new(37);
    let batches: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, len, 1.0)).collect();
    let mut buffers = [gpu.alloc(len).unwrap(), gpu.alloc(len).unwrap()];
    let mut reads: Vec<_> = (0..3).map(|_| gpu.alloc(len).unwrap()).collect();
    for (index, (batch, read)) in batches.iter().zip(&mut reads).enumerate() {
        let buffer = &mut buffers[index % 2];
        gpu.upload_input(batch, buffer);
        if index == 0 {
            keep_busy(&gpu);
        }
        gpu.copy(len, buffer, read);
    }
    for (index, (batch, read)) in batches.iter().zip(&reads).enumerate() {
        assert!(
            to_host(&gpu, read, len) == *batch,
            "batch {index}: the read saw other values"
        );
    }
}
