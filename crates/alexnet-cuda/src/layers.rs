//! Launches shared by several layers' operations: biases (convolutions and
//! fully connected layers), the LRN's second backward pass (plain and fused
//! with pooling), and element-wise products (dropout).

use alexnet::layers::LrnGeometry;
use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::CudaBackend;
use crate::launch::{LrnArgs, int, per_plane_value, per_row, per_value};

impl CudaBackend {
    /// `y[img][c][p] += b[c]` over `len` values of `channels` planes of `plane`,
    /// then with `rectify` `y = max(y, 0)` (a ReLU in the same pass).
    pub(crate) fn bias_add(
        &self,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        channels: usize,
        plane: usize,
        len: usize,
        rectify: bool,
    ) {
        if len == 0 {
            return;
        }
        let (channels, plane, len64) = (int(channels), plane as u64, len as u64);
        let rectify = i32::from(rectify);
        let mut args = self.stream.launch_builder(&self.kernels.bias_add);
        args.arg(y)
            .arg(b)
            .arg(&channels)
            .arg(&plane)
            .arg(&rectify)
            .arg(&len64);
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
