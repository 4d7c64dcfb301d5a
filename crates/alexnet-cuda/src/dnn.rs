//! Convolutions through cuDNN: descriptors and algorithms per shape, chosen once
//! and cached, and one workspace grown to the largest any algorithm asked for.
//!
//! The engine's layout is cuDNN's: NCHW activations, `[out, in / groups, k, k]`
//! weights, and cuDNN's group count is exactly the engine's `groups` (the paper's
//! towers), so no layout conversion happens anywhere.
//!
//! The element type is f32, or [`Bf16`] in bf16 mode. cuDNN's legacy API runs a
//! bf16 convolution only as `PSEUDO_BFLOAT16_CONFIG`: input, filter and output
//! all bf16, computed in f32 (the convolution descriptor's type). The backend
//! therefore hands it bf16 copies of its f32 operands and turns the bf16 result
//! back into f32.

use std::collections::HashMap;
use std::sync::Arc;

use alexnet::layers::ConvGeometry;
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
    cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    CudnnError, FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};

use crate::bf16::Bf16;

/// What a convolution's tensors may hold: f32, or bf16 (computed in f32).
pub(crate) trait Element: CudnnDataType + DeviceRepr + Copy {
    const ZERO: Self;
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}

impl Element for Bf16 {
    const ZERO: Bf16 = Bf16::ZERO;
    const ONE: Bf16 = Bf16::ONE;
}

/// Everything that fixes a convolution's descriptors: the geometry and the batch.
type ConvKey = [usize; 11];

fn key(g: &ConvGeometry, n: usize) -> ConvKey {
    [
        g.input.channels,
        g.input.height,
        g.input.width,
        g.output.channels,
        g.output.height,
        g.output.width,
        g.kernel,
        g.stride,
        g.pad,
        g.groups,
        n,
    ]
}

/// The descriptors of one convolution shape and the algorithm chosen for each pass.
/// The convolution itself always computes in f32.
struct ConvPlan<T> {
    x: TensorDescriptor<T>,
    y: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    conv: ConvDescriptor<f32>,
    forward: cudnnConvolutionFwdAlgo_t,
    backward_data: cudnnConvolutionBwdDataAlgo_t,
    backward_filter: cudnnConvolutionBwdFilterAlgo_t,
    /// Bytes of workspace the largest of the three algorithms needs.
    workspace: usize,
}

/// The cuDNN handle with its plans. cuDNN handles must not be used by two threads
/// at once, so the backend keeps this behind a mutex.
pub(crate) struct Dnn<T> {
    handle: Arc<Cudnn>,
    stream: Arc<CudaStream>,
    math: cudnnMathType_t,
    plans: HashMap<ConvKey, ConvPlan<T>>,
    workspace: Option<CudaSlice<u8>>,
}

// SAFETY: cudarc marks the cuDNN handle (and the descriptors holding it) neither
// Send nor Sync because cuDNN forbids concurrent use of one handle. `Dnn` is only
// ever reached through the backend's `Mutex`, so one thread at a time uses it;
// cuDNN allows a handle to move between threads as long as the device context is
// current, which every entry point below makes sure of.
unsafe impl<T> Send for Dnn<T> {}

fn dim(v: usize) -> i32 {
    i32::try_from(v).expect("convolution sizes fit cuDNN's 32-bit dimensions")
}

impl<T: Element> Dnn<T> {
    pub(crate) fn new(
        stream: Arc<CudaStream>,
        math: cudnnMathType_t,
    ) -> Result<Dnn<T>, CudnnError> {
        Ok(Dnn {
            handle: Cudnn::new(stream.clone())?,
            stream,
            math,
            plans: HashMap::new(),
            workspace: None,
        })
    }

    /// The plan for this shape, built (and its algorithms chosen) on first use.
    /// The workspace is grown here too, so a pass never allocates once its shape
    /// has been seen.
    fn prepare(&mut self, g: &ConvGeometry, n: usize) -> Result<ConvKey, CudnnError> {
        let k = key(g, n);
        if !self.plans.contains_key(&k) {
            let plan = self.build(g, n)?;
            let have = self.workspace.as_ref().map_or(0, |w| w.len());
            if plan.workspace > have {
                // Drop the old workspace first so both never exist at once.
                self.workspace = None;
                self.workspace = Some(
                    self.stream
                        .alloc_zeros::<u8>(plan.workspace)
                        .unwrap_or_else(|e| {
                            panic!(
                                "allocating {} bytes of cuDNN workspace: {e}",
                                plan.workspace
                            )
                        }),
                );
            }
            self.plans.insert(k, plan);
        }
        Ok(k)
    }

    fn build(&self, g: &ConvGeometry, n: usize) -> Result<ConvPlan<T>, CudnnError> {
        let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let x = self.handle.create_4d_tensor::<T>(
            nchw,
            [
                dim(n),
                dim(g.input.channels),
                dim(g.input.height),
                dim(g.input.width),
            ],
        )?;
        let y = self.handle.create_4d_tensor::<T>(
            nchw,
            [
                dim(n),
                dim(g.output.channels),
                dim(g.output.height),
                dim(g.output.width),
            ],
        )?;
        let w = self.handle.create_4d_filter::<T>(
            nchw,
            [
                dim(g.output.channels),
                dim(g.in_per_group()),
                dim(g.kernel),
                dim(g.kernel),
            ],
        )?;
        let mut conv = self.handle.create_conv2d::<f32>(
            [dim(g.pad), dim(g.pad)],
            [dim(g.stride), dim(g.stride)],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        conv.set_group_count(dim(g.groups))?;
        conv.set_math_type(self.math)?;

        // cuDNN's heuristics (the v7 queries) rank the algorithms for this shape;
        // the first that reports success is taken. Timing every algorithm
        // (cudnnFind*) could pick faster ones and is left for when it is measured.
        let forward_op = ConvForward {
            conv: &conv,
            x: &x,
            w: &w,
            y: &y,
        };
        let forward = forward_op.pick_algorithm()?;
        let data_op = ConvBackwardData {
            conv: &conv,
            dx: &x,
            w: &w,
            dy: &y,
        };
        let backward_data = data_op.pick_algorithm()?;
        let filter_op = ConvBackwardFilter {
            conv: &conv,
            x: &x,
            dw: &w,
            dy: &y,
        };
        let backward_filter = filter_op.pick_algorithm()?;
        let workspace = forward_op
            .get_workspace_size(forward)?
            .max(data_op.get_workspace_size(backward_data)?)
            .max(filter_op.get_workspace_size(backward_filter)?);
        Ok(ConvPlan {
            x,
            y,
            w,
            conv,
            forward,
            backward_data,
            backward_filter,
            workspace,
        })
    }

    /// `y = conv(x, w)` over `n` images (overwrites `y`; the bias is added apart).
    pub(crate) fn forward(
        &mut self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<T>,
        w: &CudaSlice<T>,
        y: &mut CudaSlice<T>,
    ) -> Result<(), CudnnError> {
        let k = self.prepare(g, n)?;
        let plan = &self.plans[&k];
        let op = ConvForward {
            conv: &plan.conv,
            x: &plan.x,
            w: &plan.w,
            y: &plan.y,
        };
        // SAFETY: the descriptors were built from this geometry and batch, and the
        // engine sizes every buffer for at least `n` images of it.
        unsafe {
            op.launch(
                plan.forward,
                self.workspace.as_mut(),
                (T::ONE, T::ZERO),
                x,
                w,
                y,
            )
        }
    }

    /// `dx = conv_transpose(dy, w)` (overwrites `dx`).
    pub(crate) fn backward_data(
        &mut self,
        g: &ConvGeometry,
        n: usize,
        w: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
    ) -> Result<(), CudnnError> {
        let k = self.prepare(g, n)?;
        let plan = &self.plans[&k];
        let op = ConvBackwardData {
            conv: &plan.conv,
            dx: &plan.x,
            w: &plan.w,
            dy: &plan.y,
        };
        // SAFETY: as in `forward`.
        unsafe {
            op.launch(
                plan.backward_data,
                self.workspace.as_mut(),
                (T::ONE, T::ZERO),
                dx,
                w,
                dy,
            )
        }
    }

    /// `dw += correlate(x, dy)` when `accumulate` (beta = 1 keeps what `dw` held,
    /// as the engine's convention, parameter gradients accumulate, asks), else
    /// `dw = correlate(x, dy)`.
    pub(crate) fn backward_filter(
        &mut self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        dw: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> Result<(), CudnnError> {
        let k = self.prepare(g, n)?;
        let plan = &self.plans[&k];
        let op = ConvBackwardFilter {
            conv: &plan.conv,
            x: &plan.x,
            dw: &plan.w,
            dy: &plan.y,
        };
        // SAFETY: as in `forward`.
        unsafe {
            op.launch(
                plan.backward_filter,
                self.workspace.as_mut(),
                (T::ONE, if accumulate { T::ONE } else { T::ZERO }),
                x,
                dw,
                dy,
            )
        }
    }
}

/// The cuDNN library's version, as `major.minor.patch`.
pub(crate) fn version() -> String {
    let v = cudarc::cudnn::result::get_version();
    // cuDNN 9 encodes major * 10000 + minor * 100 + patch; cuDNN 8 used 1000 and 100.
    if v >= 90000 {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, v / 100 % 10, v % 100)
    }
}
