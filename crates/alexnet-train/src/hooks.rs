//! What a caller plugs into a [`Trainer`](crate::Trainer) besides observers:
//! where nets are built, work between the backward pass and the update, and an
//! orderly stop requested from outside.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use alexnet::{Model, NetSpec};

use crate::error::External;

/// Builds the nets a run trains, on whatever devices the caller chose (the CPU,
/// a GPU, towers over two devices); the trainer does not know which.
pub trait NetFactory {
    /// A net of `spec` for batches of up to `max_batch`, initialised from `seed`
    /// as the paper does, or with every parameter zero when `seed` is `None`
    /// (for weights that a checkpoint then supplies).
    fn build(
        &self,
        spec: &NetSpec,
        max_batch: usize,
        seed: Option<u64>,
    ) -> Result<Box<dyn Model>, External>;
}

/// A closure `(spec, max_batch, seed) -> net` is a factory.
impl<F> NetFactory for F
where
    F: Fn(&NetSpec, usize, Option<u64>) -> Result<Box<dyn Model>, External>,
{
    fn build(
        &self,
        spec: &NetSpec,
        max_batch: usize,
        seed: Option<u64>,
    ) -> Result<Box<dyn Model>, External> {
        self(spec, max_batch, seed)
    }
}

/// Runs in every step after the backward pass and before the update, with the
/// step's gradients in the net: where data-parallel training reduces them across
/// processes. (Reducing each layer's gradients as soon as they are ready, to
/// overlap with the rest of the backward pass, needs per-layer events from the
/// net; this hook is the point where all of them must have arrived.)
pub trait StepHook {
    /// `step` is the step being taken, counted from 1.
    fn before_update(&mut self, net: &mut dyn Model, step: u64) -> Result<(), External>;
}

/// Asks a running trainer to stop after the step in progress, writing a
/// checkpoint that `resume` continues; cheap to clone and to set from a signal
/// handler or another thread.
#[derive(Clone, Debug, Default)]
pub struct StopRequest(Arc<AtomicBool>);

impl StopRequest {
    pub fn new() -> StopRequest {
        StopRequest::default()
    }

    /// Asks for the stop (idempotent).
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
