//! bf16 mode (`Precision::Bf16`): convolutions and fully connected layers with
//! bf16 operands on tensor cores and f32 sums, against the CPU reference.
//!
//! Each result is compared twice, with tolerances relative to the largest
//! reference value of the tensor:
//! - against the reference on the f32 inputs: 1e-2. Rounding an operand to bf16
//!   moves it by at most 2^-9 (about 2e-3) of itself, so a product moves by at
//!   most about 4e-3 of itself; over a sum of products these errors have random
//!   signs and mostly cancel, leaving about 1e-3 of the largest output, and a
//!   convolution's result is rounded to bf16 once more (another 2e-3 at most).
//!   1e-2 leaves room for that and is still far below what a wrong index, a
//!   missing term or the other tower's channels would give (order 1).
//! - against the reference on the operands rounded to bf16 as the GPU rounds
//!   them: then the products are exact in f32 (8-bit by 8-bit mantissas) and only
//!   the order of the f32 sums differs. Fully connected layers return f32 sums:
//!   1e-4. Convolutions on bf16 tensors return bf16 (cuDNN's only bf16
//!   configuration), so each value may be off by 2^-9 of itself: 5e-3. On bf16
//!   values in f32 tensors through TF32 (`Bf16Layout::Tf32`) they return f32
//!   sums of exact products, as fully connected layers do: 1e-4 (a result
//!   rounded to bf16, as on the other routes, would not pass). This checks that
//!   the operands are rounded as the CPU's bf16 mode rounds them (to nearest,
//!   ties to even) and that nothing else is lost.
//!
//! Bias gradients are f32 sums of f32 gradients in every mode: 1e-5.
//!
//! Each convolution runs with its bf16 operands handed to cuDNN in NCHW, in NHWC
//! (rounded and transposed by one kernel, the results transposed back), through
//! the graph API, as bf16 values in f32 on TF32, and in whichever the backend
//! timed faster (of the two legacy layouts, and of all four); the shapes put
//! channels and plane positions across the transposing kernels' 32-wide tiles,
//! and blocks of at most 8 channels (conv1's input, filters of 3 and 8 inputs per
//! group) through the one-thread-per-value conversion.
//! The tests skip without a GPU, like the others.

mod common;

use alexnet::layers::{ConvGeometry, LinearGeometry, Shape};
use alexnet::rng::Rng;
use alexnet::{Backend, ReferenceCpu};
use alexnet_cuda::Bf16Layout;
use common::{
    assert_close, bf16_gpu, bf16_gpu_in, conv, random, round_to_bf16, to_device, to_host,
};

const EXACT_TOL: f32 = 1e-2;
const ROUNDED_CONV_TOL: f32 = 5e-3;
const ROUNDED_LINEAR_TOL: f32 = 1e-4;
const BIAS_TOL: f32 = 1e-5;

/// What one layer's forward and backward gave (for a convolution, `relu` is
/// its forward pass with the ReLU; fully connected layers leave it empty).
struct Results {
    y: Vec<f32>,
    relu: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    dx: Vec<f32>,
}

/// Random inputs for a layer; `dw` and `db` start non-zero so that accumulation
/// (`+=`) is checked too.
struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

impl Inputs {
    fn new(seed: u64, x: usize, w: usize, b: usize, y: usize) -> Inputs {
        let mut rng = Rng::new(seed);
        Inputs {
            x: random(&mut rng, x, 1.0),
            w: random(&mut rng, w, 0.3),
            b: random(&mut rng, b, 0.5),
            dy: random(&mut rng, y, 1.0),
            dw0: random(&mut rng, w, 0.1),
            db0: random(&mut rng, b, 0.1),
        }
    }

    /// The same inputs with the operands of the products rounded to bf16.
    fn rounded(&self) -> Inputs {
        Inputs {
            x: round_to_bf16(&self.x),
            w: round_to_bf16(&self.w),
            b: self.b.clone(),
            dy: round_to_bf16(&self.dy),
            dw0: self.dw0.clone(),
            db0: self.db0.clone(),
        }
    }
}

fn compare(label: &str, ours: &Results, exact: &Results, rounded: &Results, rounded_tol: f32) {
    for (name, a, e, r) in [
        ("y", &ours.y, &exact.y, &rounded.y),
        ("relu(y)", &ours.relu, &exact.relu, &rounded.relu),
        ("dw", &ours.dw, &exact.dw, &rounded.dw),
        ("dx", &ours.dx, &exact.dx, &rounded.dx),
    ] {
        assert_close(&format!("{label} {name} vs f32"), a, e, EXACT_TOL);
        assert_close(
            &format!("{label} {name} vs bf16-rounded operands"),
            a,
            r,
            rounded_tol,
        );
    }
    assert_close(&format!("{label} db"), &ours.db, &exact.db, BIAS_TOL);
}

fn conv_on<B: Backend>(
    backend: &B,
    g: &ConvGeometry,
    n: usize,
    inputs: &Inputs,
    upload: impl Fn(&[f32]) -> B::Buffer,
    download: impl Fn(&B::Buffer, usize) -> Vec<f32>,
) -> Results {
    let (x, w, b, dy) = (
        upload(&inputs.x),
        upload(&inputs.w),
        upload(&inputs.b),
        upload(&inputs.dy),
    );
    let y_len = n * g.output.len();
    let mut y = upload(&vec![0.0; y_len]);
    backend.conv_relu_forward(g, n, &x, &w, &b, &mut y);
    let relu = download(&y, y_len);
    backend.conv_forward(g, n, &x, &w, &b, &mut y);
    let (mut dw, mut db) = (upload(&inputs.dw0), upload(&inputs.db0));
    let mut dx = upload(&vec![0.0; inputs.x.len()]);
    backend.conv_backward(g, n, &x, &w, &dy, &mut dw, &mut db, Some(&mut dx));
    Results {
        y: download(&y, y_len),
        relu,
        dw: download(&dw, inputs.w.len()),
        db: download(&db, inputs.b.len()),
        dx: download(&dx, inputs.x.len()),
    }
}

/// The convolution in each layout of its bf16 operands (and through cuDNN's
/// graph API, and as bf16 values on TF32 tensor cores), against the reference.
fn check_conv(label: &str, g: ConvGeometry, n: usize) {
    for layout in [
        Bf16Layout::Nchw,
        Bf16Layout::Nhwc,
        Bf16Layout::Graph,
        Bf16Layout::Tf32,
        Bf16Layout::Timed,
        Bf16Layout::TimedAll,
    ] {
        check_conv_in(&format!("{label}, {layout:?} layout"), layout, g, n);
    }
}

fn check_conv_in(label: &str, layout: Bf16Layout, g: ConvGeometry, n: usize) {
    let Some(gpu) = bf16_gpu_in(layout) else {
        return;
    };
    let inputs = Inputs::new(
        29,
        n * g.input.len(),
        g.weight_len(),
        g.output.channels,
        n * g.output.len(),
    );
    let host = |v: &[f32]| v.to_vec();
    let host_out = |v: &Vec<f32>, len: usize| v[..len].to_vec();
    let ours = conv_on(
        gpu,
        &g,
        n,
        &inputs,
        |v| to_device(gpu, v),
        |b, len| to_host(gpu, b, len),
    );
    let exact = conv_on(&ReferenceCpu, &g, n, &inputs, host, host_out);
    let rounded = conv_on(&ReferenceCpu, &g, n, &inputs.rounded(), host, host_out);
    // Only the TF32 route is certain to return f32 sums; a timed choice may
    // take either kind.
    let tol = match layout {
        Bf16Layout::Tf32 => ROUNDED_LINEAR_TOL,
        _ => ROUNDED_CONV_TOL,
    };
    compare(label, &ours, &exact, &rounded, tol);
}

#[test]
fn bf16_backend_says_so() {
    let Some(gpu) = bf16_gpu() else { return };
    assert!(gpu.describe().ends_with("bf16)"), "{}", gpu.describe());
}

#[test]
fn bf16_convolution_two_towers() {
    check_conv(
        "bf16 conv 16x13x13 -> 32 groups 2, 3x3/1 pad 1",
        conv(Shape::new(16, 13, 13), 32, 3, 1, 1, 2),
        4,
    );
}

#[test]
fn bf16_convolution_across_the_transposing_tiles() {
    // 40 input and 48 output channels (20 inputs per group), 9x9 planes: every
    // tile of 32 channels or positions has a partial one beside it.
    check_conv(
        "bf16 conv 40x9x9 -> 48 groups 2, 3x3/1 pad 1",
        conv(Shape::new(40, 9, 9), 48, 3, 1, 1, 2),
        3,
    );
}

#[test]
fn bf16_convolution_like_the_first_layer() {
    // Three input channels, an 11x11 kernel with stride 4.
    check_conv(
        "bf16 conv 3x35x35 -> 8, 11x11/4 pad 2",
        conv(Shape::new(3, 35, 35), 8, 11, 4, 2, 1),
        3,
    );
}

#[test]
fn bf16_fully_connected_layer() {
    let Some(gpu) = bf16_gpu() else { return };
    let g = LinearGeometry {
        inputs: 300,
        outputs: 40,
    };
    let n = 8;
    let inputs = Inputs::new(31, n * g.inputs, g.weight_len(), g.outputs, n * g.outputs);
    let on_cpu = |inputs: &Inputs| {
        let mut y = vec![0.0; n * g.outputs];
        ReferenceCpu.linear_forward(&g, n, &inputs.x, &inputs.w, &inputs.b, &mut y);
        let (mut dw, mut db, mut dx) = (
            inputs.dw0.clone(),
            inputs.db0.clone(),
            vec![0.0; inputs.x.len()],
        );
        ReferenceCpu.linear_backward(
            &g,
            n,
            &inputs.x,
            &inputs.w,
            &inputs.dy,
            &mut dw,
            &mut db,
            Some(&mut dx),
        );
        Results {
            y,
            relu: Vec::new(),
            dw,
            db,
            dx,
        }
    };
    let (x, w, b, dy) = (
        to_device(gpu, &inputs.x),
        to_device(gpu, &inputs.w),
        to_device(gpu, &inputs.b),
        to_device(gpu, &inputs.dy),
    );
    let mut y = gpu.alloc(n * g.outputs).unwrap();
    gpu.linear_forward(&g, n, &x, &w, &b, &mut y);
    let (mut dw, mut db) = (to_device(gpu, &inputs.dw0), to_device(gpu, &inputs.db0));
    let mut dx = gpu.alloc(inputs.x.len()).unwrap();
    gpu.linear_backward(&g, n, &x, &w, &dy, &mut dw, &mut db, Some(&mut dx));
    let ours = Results {
        y: to_host(gpu, &y, n * g.outputs),
        relu: Vec::new(),
        dw: to_host(gpu, &dw, inputs.w.len()),
        db: to_host(gpu, &db, inputs.b.len()),
        dx: to_host(gpu, &dx, inputs.x.len()),
    };
    let exact = on_cpu(&inputs);
    let rounded = on_cpu(&inputs.rounded());
    compare(
        "bf16 linear 300 -> 40",
        &ours,
        &exact,
        &rounded,
        ROUNDED_LINEAR_TOL,
    );
}
