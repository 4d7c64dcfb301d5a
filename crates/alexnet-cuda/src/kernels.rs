//! The element-wise, normalisation, pooling, loss and update kernels, and the
//! f32/bf16 conversions of bf16 mode, as CUDA C compiled by NVRTC once when a
//! backend is created.
//!
//! Each kernel follows the loop of the same name in `alexnet::cpu::reference`,
//! in the same order of additions where that order is cheap to keep (pooling
//! gradients), so that the two agree to rounding. Where the reference scatters
//! (max and average pooling backward), the kernels gather instead: every input
//! position sums the outputs whose windows cover it. That needs no atomics,
//! gives the same sums in the same order, and so is deterministic.
//!
//! One thread per output value unless a kernel says otherwise; lengths are
//! 64-bit, geometry 32-bit. The LRN and max-pooling kernels index planes on a
//! 2-D grid instead of a flat length (see `plane_index` in [`SOURCE`]).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::error::CudaError;

/// Threads per block: exactly this many for the reductions, at most this many
/// for the kernels over planes.
pub(crate) const BLOCK: u32 = 256;

/// The CUDA C of every kernel, one file per layer in `crates/alexnet-cuda/cuda/`
/// (named as the layer is everywhere else), compiled by NVRTC as one unit in this
/// order: `common.cuh` first, and `lrn_pool.cu` after the LRN and pooling helpers it
/// uses.
pub(crate) const SOURCE: &str = concat!(
    include_str!("../cuda/common.cuh"),
    include_str!("../cuda/elementwise.cu"),
    include_str!("../cuda/dropout.cu"),
    include_str!("../cuda/exchange.cu"),
    include_str!("../cuda/input.cu"),
    include_str!("../cuda/bias.cu"),
    include_str!("../cuda/lrn.cu"),
    include_str!("../cuda/pool.cu"),
    include_str!("../cuda/lrn_pool.cu"),
    include_str!("../cuda/loss.cu"),
    include_str!("../cuda/bf16.cu"),
    include_str!("../cuda/sgd.cu"),
);

/// The compiled kernels, one handle per entry point of [`SOURCE`].
pub(crate) struct Kernels {
    pub fill: CudaFunction,
    pub relu_forward: CudaFunction,
    pub relu_backward: CudaFunction,
    pub tanh_forward: CudaFunction,
    pub tanh_backward: CudaFunction,
    pub multiply: CudaFunction,
    pub add_rows: CudaFunction,
    pub dropout_mask: CudaFunction,
    pub cut_views: CudaFunction,
    pub bias_add: CudaFunction,
    pub bias_grad: CudaFunction,
    pub lrn_forward: CudaFunction,
    pub lrn_backward_terms: CudaFunction,
    pub lrn_backward_finish: CudaFunction,
    pub max_pool_forward: CudaFunction,
    pub max_pool_backward: CudaFunction,
    pub lrn_max_pool_forward: CudaFunction,
    pub lrn_max_pool_backward_terms: CudaFunction,
    pub avg_pool_forward: CudaFunction,
    pub avg_pool_backward: CudaFunction,
    pub softmax_xent: CudaFunction,
    pub sgd_update: CudaFunction,
    pub f32_to_bf16: CudaFunction,
    pub f32_round_to_bf16: CudaFunction,
    pub bf16_to_f32: CudaFunction,
    pub f32_to_bf16_nhwc: CudaFunction,
    pub f32_to_bf16_nhwc_few: CudaFunction,
    pub bf16_nhwc_to_f32: CudaFunction,
}

/// Stack for the thread NVRTC runs on. A compiler may recurse deeply, and the
/// threads a backend is created on can be small (2 MiB for a test harness's or a
/// thread pool's), where an overflow inside a C++ library is a bare segmentation
/// fault rather than Rust's message.
const COMPILER_STACK_BYTES: usize = 64 << 20;

/// Compiles [`SOURCE`] to PTX for a virtual architecture (`compute_90`), or for
/// NVRTC's default one when `arch` is `None`, on a thread with a large stack.
/// Needs only the NVRTC library, no GPU.
pub(crate) fn compile(arch: Option<&str>) -> Result<Ptx, CudaError> {
    let arch = arch.map(str::to_owned);
    std::thread::Builder::new()
        .name("nvrtc".into())
        .stack_size(COMPILER_STACK_BYTES)
        .spawn(move || compile_here(arch.as_deref()))
        .map_err(|e| CudaError::Kernels(format!("could not start NVRTC's thread: {e}")))?
        .join()
        .map_err(|_| CudaError::Kernels("NVRTC's thread panicked".into()))?
}

/// [`compile`] on the calling thread.
fn compile_here(arch: Option<&str>) -> Result<Ptx, CudaError> {
    let options = CompileOptions {
        options: arch
            .map(|a| format!("--gpu-architecture={a}"))
            .into_iter()
            .collect(),
        name: Some("alexnet_kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, options)
        .map_err(|e| CudaError::Kernels(format!("NVRTC could not compile the kernels: {e}")))
}

/// Compiles [`SOURCE`] for the device's compute capability and loads every kernel.
///
/// PTX for the device's own virtual architecture lets the driver JIT the best code
/// for it; should this NVRTC not know that architecture (a GPU newer than the
/// toolkit), NVRTC's default target is tried, which any newer device can still run.
pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, CudaError> {
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| CudaError::call("reading the compute capability", e))?;
    let ptx = match compile(Some(&format!("compute_{major}{minor}"))) {
        Ok(ptx) => ptx,
        Err(first) => compile(None).map_err(|_| first)?,
    };
    let module: Arc<CudaModule> = ctx
        .load_module(ptx)
        .map_err(|e| CudaError::call("loading the compiled kernels", e))?;
    let f = |name: &str| {
        module
            .load_function(name)
            .map_err(|e| CudaError::call(&format!("finding kernel {name}"), e))
    };
    Ok(Kernels {
        fill: f("fill")?,
        relu_forward: f("relu_forward")?,
        relu_backward: f("relu_backward")?,
        tanh_forward: f("tanh_forward")?,
        tanh_backward: f("tanh_backward")?,
        multiply: f("multiply")?,
        add_rows: f("add_rows")?,
        dropout_mask: f("dropout_mask")?,
        cut_views: f("cut_views")?,
        bias_add: f("bias_add")?,
        bias_grad: f("bias_grad")?,
        lrn_forward: f("lrn_forward")?,
        lrn_backward_terms: f("lrn_backward_terms")?,
        lrn_backward_finish: f("lrn_backward_finish")?,
        max_pool_forward: f("max_pool_forward")?,
        max_pool_backward: f("max_pool_backward")?,
        lrn_max_pool_forward: f("lrn_max_pool_forward")?,
        lrn_max_pool_backward_terms: f("lrn_max_pool_backward_terms")?,
        avg_pool_forward: f("avg_pool_forward")?,
        avg_pool_backward: f("avg_pool_backward")?,
        softmax_xent: f("softmax_xent")?,
        sgd_update: f("sgd_update")?,
        f32_to_bf16: f("f32_to_bf16")?,
        f32_round_to_bf16: f("f32_round_to_bf16")?,
        bf16_to_f32: f("bf16_to_f32")?,
        f32_to_bf16_nhwc: f("f32_to_bf16_nhwc")?,
        f32_to_bf16_nhwc_few: f("f32_to_bf16_nhwc_few")?,
        bf16_nhwc_to_f32: f("bf16_nhwc_to_f32")?,
    })
}
