//! What training, evaluation, checkpoints and the tools need of a net, whether it
//! runs on one device ([`crate::Network`]) or split into towers across several
//! ([`crate::towers::Towers`]). Parameters are always seen whole, as the
//! one-device net lays them out, so checkpoints do not depend on where a net ran.

use crate::error::Result;
use crate::input::StoredBatch;
use crate::optim::Sgd;
use crate::plan::Plan;
use crate::rng::Rng;
use crate::spec::NetSpec;

/// Whether a forward pass is for training (dropout active) or for testing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Test,
}

/// A backend's buffer where its values live, for work on them in place from
/// outside the engine (a communicator summing gradients across processes).
pub enum BufferMut<'a> {
    /// Host memory.
    Host(&'a mut [f32]),
    /// A device's buffer as its backend holds it (`CudaSlice<f32>` for CUDA),
    /// of which the first `len` values count: only code that knows the
    /// backend can use it.
    Device {
        buffer: &'a mut dyn std::any::Any,
        len: usize,
    },
}

/// Seconds spent in each layer's forward and backward pass, when recorded.
#[derive(Clone, Debug, Default)]
pub struct LayerTimes {
    pub forward: Vec<f64>,
    pub backward: Vec<f64>,
}

/// What a kind of net does not offer (two towers do not take part in data
/// parallelism).
fn unsupported(what: &str) -> crate::Error {
    crate::Error::Input {
        what: what.into(),
        expected: "a net on one device".into(),
        found: "a net that does not support it (towers)".into(),
    }
}

pub trait Model {
    /// Where the net runs, for reports: "cpu (2 threads, avx512)".
    fn describe(&self) -> String;
    /// The whole net's plan (layers, parameter names and shapes).
    fn plan(&self) -> &Plan;
    fn spec(&self) -> &NetSpec {
        &self.plan().spec
    }
    /// The largest batch the net was built for.
    fn max_batch(&self) -> usize;
    /// The generator behind dropout masks (its state goes into checkpoints).
    fn rng(&self) -> &Rng;
    fn set_rng(&mut self, rng: Rng);
    /// Waits until queued work has finished (for timing).
    fn synchronize(&self);

    /// Index of a parameter tensor by name (`conv1.weight`).
    fn param_index(&self, name: &str) -> Option<usize> {
        self.plan().params.iter().position(|p| p.name == name)
    }
    /// A parameter tensor's values, copied to the host.
    fn param_values(&self, index: usize) -> Vec<f32>;
    fn param_grad(&self, index: usize) -> Vec<f32>;
    fn param_velocity(&self, index: usize) -> Vec<f32>;
    /// Replaces a parameter tensor's values; the length must match its shape.
    fn set_param_values(&mut self, index: usize, values: &[f32]) -> Result<()>;
    fn set_param_velocity(&mut self, index: usize, values: &[f32]) -> Result<()>;
    /// Replaces a parameter tensor's gradient (gradients reduced across
    /// processes, between the backward pass and the update).
    fn set_param_grad(&mut self, index: usize, values: &[f32]) -> Result<()> {
        let _ = (index, values);
        Err(unsupported("replacing gradients"))
    }
    /// A parameter tensor's gradient in the backend's own buffer, to be
    /// summed across processes in place (no copy to and from the host).
    fn param_grad_mut(&mut self, index: usize) -> Option<BufferMut<'_>> {
        let _ = index;
        None
    }
    /// Draws the dropout masks of this net's batch as images `images..` of a
    /// larger batch drawn from the same generator, so that processes sharing a
    /// batch use the masks one process would (data parallelism).
    fn set_dropout_offset(&mut self, images: usize) -> Result<()> {
        let _ = images;
        Err(unsupported("a dropout offset"))
    }
    /// Frozen parameters keep their values: the SGD step skips them (fine-tuning).
    fn set_frozen(&mut self, index: usize, frozen: bool);

    /// Loads a batch of images (NCHW); returns how many.
    fn set_input(&mut self, images: &[f32]) -> Result<usize>;
    /// Whether batches should arrive stored, for [`Model::set_input_stored`].
    fn cuts_views(&self) -> bool;
    /// Keeps the mean image (one value per stored byte) for stored batches.
    fn set_mean_image(&mut self, mean: &[f32]) -> Result<()>;
    /// Loads a batch by cutting its views from stored images on the device (see
    /// [`crate::input`]); returns how many views.
    fn set_input_stored(&mut self, batch: &StoredBatch) -> Result<usize>;
    /// Uses these masks (one per dropout layer, `n * len` values of 0 or
    /// `1 / (1 - p)`) in the next training forward pass instead of drawing them.
    fn set_next_dropout_masks(&mut self, masks: &[Vec<f32>]) -> Result<()>;
    /// Runs the loaded batch through the net.
    fn forward(&mut self, mode: Mode);
    /// The class scores of the current batch (`n x classes`).
    fn logits(&self) -> Vec<f32>;
    /// The output of layer `index` (of `plan().layers`) for the current batch.
    fn layer_output(&self, index: usize) -> Vec<f32>;
    /// Zeroes the parameter gradients, then adds the gradient of the mean
    /// cross-entropy of the last forward pass against `labels`. Returns the loss.
    fn backward(&mut self, labels: &[u32]) -> Result<f32>;
    /// [`backward`](Model::backward), handing every parameter's gradient to
    /// `ready` once the pass has finished it (the last layers' first), so that
    /// work on it (a sum across processes) can start while the rest of the
    /// pass runs. A device's buffer is finished in its backend's queue order:
    /// [`synchronize`](Model::synchronize) before reading it from elsewhere.
    /// By default, after the whole pass, the gradients that
    /// [`param_grad_mut`](Model::param_grad_mut) reaches, last first.
    fn backward_each(
        &mut self,
        labels: &[u32],
        ready: &mut dyn FnMut(usize, BufferMut<'_>),
    ) -> Result<f32> {
        let loss = self.backward(labels)?;
        for index in (0..self.plan().params.len()).rev() {
            if let Some(grad) = self.param_grad_mut(index) {
                ready(index, grad);
            }
        }
        Ok(loss)
    }
    /// One SGD update of every parameter that is not frozen.
    fn sgd_step(&mut self, sgd: &Sgd);
    /// Starts (or stops) recording the time of each layer's passes.
    fn record_layer_times(&mut self, on: bool);
    /// Accumulated per-layer seconds since recording started.
    fn layer_times(&self) -> Option<LayerTimes>;

    /// Runs `images` forward in test mode and returns the logits.
    fn predict(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.set_input(images)?;
        self.forward(Mode::Test);
        Ok(self.logits())
    }
    /// Forward, backward and SGD update on one batch; returns the loss.
    fn train_step(&mut self, images: &[f32], labels: &[u32], sgd: &Sgd) -> Result<f32> {
        self.set_input(images)?;
        self.forward(Mode::Train);
        let loss = self.backward(labels)?;
        self.sgd_step(sgd);
        Ok(loss)
    }
}
