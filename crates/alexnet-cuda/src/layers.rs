//! Launches shared by several layers' operations: biases (convolutions and
//! fully connected layers), the LRN's second backward pass (plain and fused
//! with pooling), element-wise products (dropout), and the bf16 convolution
//! backward pass.

use alexnet::layers::{ConvGeometry, LrnGeometry};
use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::launch::{LrnArgs, int, per_plane_value, per_row, per_value};
use crate::{Convolutions, CudaBackend};

impl CudaBackend {
    /// `y[img][c][p] += b[c]` over `len` values of `channels` planes of `plane`.
    pub(crate) fn bias_add(
        &self,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        channels: usize,
        plane: usize,
        len: usize,
    ) {
        if len == 0 {
            return;
        }
        let (channels, plane, len64) = (int(channels), plane as u64, len as u64);
        let mut args = self.stream.launch_builder(&self.kernels.bias_add);
        args.arg(y).arg(b).arg(&channels).arg(&plane).arg(&len64);
        self.launch(args, per_value(len), "bias_add");
    }

    /// `db[c] += sum of dy[img][c][p]` over `images` images.
    pub(crate) fn bias_grad(
        &self,
        dy: &CudaSlice<f32>,
        db: &mut CudaSlice<f32>,
        images: usize,
        channels: usize,
        plane: usize,
    ) {
        let (images32, channels32, plane64) = (int(images), int(channels), plane as u64);
        let mut args = self.stream.launch_builder(&self.kernels.bias_grad);
        args.arg(dy)
            .arg(db)
            .arg(&images32)
            .arg(&channels32)
            .arg(&plane64);
        self.launch(args, per_row(channels), "bias_grad");
    }

    /// The second pass of the LRN's backward pass (`lrn_backward_finish` in the
    /// kernels), after the first has written `terms` and the first part of `dx`.
    pub(crate) fn lrn_backward_finish(
        &self,
        g: &LrnGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        terms: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) {
        let (planes, plane_len) = (n * g.shape.channels, g.shape.height * g.shape.width);
        let (l, plane_len32) = (LrnArgs::new(g), int(plane_len));
        let mut args = self
            .stream
            .launch_builder(&self.kernels.lrn_backward_finish);
        args.arg(x).arg(terms).arg(dx);
        l.push(&mut args);
        args.arg(&plane_len32);
        self.launch(
            args,
            per_plane_value(planes, plane_len),
            "lrn_backward_finish",
        );
    }

    /// The weight and input gradients of a convolution in bf16 mode: bf16 copies
    /// of `x`, `dy` and `w` in, bf16 gradients out (cuDNN's one bf16
    /// configuration), the weight gradient then added to `dw` in f32 and the input
    /// gradient written to `dx` as f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_backward_bf16(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) {
        let (x_len, y_len, w_len) = (n * g.input.len(), n * g.output.len(), g.weight_len());
        let mut scratch = self.bf16_scratch(x_len, y_len, w_len);
        let s = &mut *scratch;
        self.convert_to_bf16(x, &mut s.input, x_len);
        self.convert_to_bf16(dy, &mut s.output, y_len);
        self.bind();
        let mut dnn = self.lock(&self.dnn);
        let Convolutions::Bf16(dnn) = &mut *dnn else {
            unreachable!("bf16 mode has bf16 convolutions")
        };
        // The weight gradient of this batch alone (beta = 0) into the weights'
        // buffer, then accumulated in f32.
        if let Err(e) = dnn.backward_filter(g, n, &s.input, &s.output, &mut s.weights, false) {
            self.fail(&format!("cuDNN convolution backward-filter {g:?} x {n}"), e);
        }
        self.convert_to_f32(&s.weights, dw, w_len, true);
        if let Some(dx) = dx {
            // Stream order: the accumulation above has read the buffer before the
            // weights overwrite it, and the input gradient may overwrite `x`'s copy.
            self.convert_to_bf16(w, &mut s.weights, w_len);
            if let Err(e) = dnn.backward_data(g, n, &s.weights, &s.output, &mut s.input) {
                self.fail(&format!("cuDNN convolution backward-data {g:?} x {n}"), e);
            }
            self.convert_to_f32(&s.input, dx, x_len, false);
        }
    }

    /// `out = a * b` over the first `len` values (dropout, both directions).
    pub(crate) fn multiply(
        &self,
        len: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) {
        if len == 0 {
            return;
        }
        let len64 = len as u64;
        let mut args = self.stream.launch_builder(&self.kernels.multiply);
        args.arg(a).arg(b).arg(out).arg(&len64);
        self.launch(args, per_value(len), "multiply");
    }
}
