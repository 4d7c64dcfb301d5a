//! What data-parallel training needs of the processes it runs in: their number,
//! this one's rank, sums of values across all of them (in f32, or carried as
//! bf16 to halve the bytes), a broadcast, and a check-in each step that names a
//! process that stopped answering. One implementation serves a single process;
//! the command line provides MPI's (`mpirun`), so that the same trainer code
//! runs at every world size.

use alexnet::BufferMut;
use alexnet::cpu::fast::gemm_bf16::round_to_bf16;

use crate::error::External;

/// The processes a run is shared among. Every process makes the same calls in
/// the same order, with buffers of the same lengths.
pub trait Communicator {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// How many processes share the run.
    fn size(&self) -> usize;
    /// Whether the run's sums and check-ins go through this communicator:
    /// with several processes, or in a launcher's group of one, whose sums
    /// then cost what they would with more (to measure that cost).
    fn shared(&self) -> bool {
        self.size() > 1
    }
    /// Replaces `values` by their element-wise sum over all processes.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), External>;
    /// [`all_reduce_sum`](Communicator::all_reduce_sum) with the values
    /// carried as bf16: each process's values, and every partial sum, are
    /// rounded to bf16 (to nearest, ties to even), so the result is a bf16
    /// value. Half the bytes of f32.
    fn all_reduce_sum_bf16(&self, values: &mut [f32]) -> Result<(), External>;
    /// Multiplies one process's gradient, the mean over its `images`, by
    /// `images / all` and replaces it by its sum over the processes (the mean
    /// over all `all` images of the batch), in place in the net backend's own
    /// buffer. `Ok(false)`, leaving it as it was, where this communicator
    /// cannot reach that kind of buffer (the caller then goes through the
    /// host). Every process must pass the same kind of buffer.
    fn weighted_sum_in_place(
        &self,
        grad: BufferMut<'_>,
        images: usize,
        all: usize,
        bf16: bool,
    ) -> Result<bool, External> {
        match grad {
            BufferMut::Host(values) => weighted_sum_on_host(self, values, images, all, bf16),
            BufferMut::Device { buffer, len } => {
                self.weighted_sum_on_device(buffer, len, images, all, bf16)
            }
        }
    }
    /// [`weighted_sum_in_place`](Communicator::weighted_sum_in_place) of the
    /// first `len` values of a device's buffer: none by default.
    fn weighted_sum_on_device(
        &self,
        buffer: &mut dyn std::any::Any,
        len: usize,
        images: usize,
        all: usize,
        bf16: bool,
    ) -> Result<bool, External> {
        let _ = (buffer, len, images, all, bf16);
        Ok(false)
    }
    /// The sums this communicator runs in the background while the caller
    /// goes on (gradients summed during the backward pass), if it has them.
    fn background_sums(&self) -> Option<&dyn BackgroundSums> {
        None
    }
    /// Replaces `values` on every process by those of process `root`.
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), External>;
    /// Says that this process has reached `step` (and whether it was asked to
    /// `stop`) and waits until every other process says so too; returns
    /// whether any of them was asked to stop, so that all stop at the same
    /// step. Called after each step's long computation, before its sums, so
    /// that an error can name the processes that did not check in within the
    /// communicator's deadline (stopped or lost): a run never hangs on one.
    fn check_in(&self, step: u64, stop: bool) -> Result<bool, External>;
}

/// Sums across the processes that run while the caller goes on, in the order
/// they were started, apart from the communicator's other calls (which may be
/// made meanwhile). Every process starts the same sums in the same order.
pub trait BackgroundSums {
    /// Starts summing `values` over the processes, in f32 or carried as bf16
    /// (as [`Communicator::all_reduce_sum_bf16`]).
    fn start(&self, values: Vec<f32>, bf16: bool) -> Result<(), External>;
    /// Waits for the oldest sum started and not yet finished, and returns it.
    fn finish(&self) -> Result<Vec<f32>, External>;
    /// Starts [`Communicator::weighted_sum_on_device`] of a gradient in a
    /// device's buffer without waiting for it (on GPUs: on the communicator's
    /// stream, after the work already queued on the buffer's). `Ok(false)`,
    /// starting nothing, where it cannot (the caller sums that gradient after
    /// the backward pass); none by default. The buffer must not be touched
    /// again before [`finish_on_device`](BackgroundSums::finish_on_device).
    fn start_on_device(
        &self,
        buffer: &mut dyn std::any::Any,
        len: usize,
        images: usize,
        all: usize,
        bf16: bool,
    ) -> Result<bool, External> {
        let _ = (buffer, len, images, all, bf16);
        Ok(false)
    }
    /// Waits for every sum [`start_on_device`](BackgroundSums::start_on_device)
    /// started.
    fn finish_on_device(&self) -> Result<(), External> {
        Ok(())
    }
}

/// One process alone: sums are the values themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _values: &mut [f32]) -> Result<(), External> {
        Ok(())
    }
    fn all_reduce_sum_bf16(&self, values: &mut [f32]) -> Result<(), External> {
        // The same rounding as any world size, so one process and several
        // train alike.
        round_slice_to_bf16(values);
        Ok(())
    }
    fn broadcast(&self, _values: &mut [f32], _root: usize) -> Result<(), External> {
        Ok(())
    }
    fn check_in(&self, _step: u64, stop: bool) -> Result<bool, External> {
        Ok(stop)
    }
}

/// [`Communicator::weighted_sum_in_place`] of values in host memory.
pub fn weighted_sum_on_host<C: Communicator + ?Sized>(
    comm: &C,
    values: &mut [f32],
    images: usize,
    all: usize,
    bf16: bool,
) -> Result<bool, External> {
    let weight = images as f32 / all.max(1) as f32;
    values.iter_mut().for_each(|g| *g *= weight);
    if bf16 {
        comm.all_reduce_sum_bf16(values)?;
    } else {
        comm.all_reduce_sum(values)?;
    }
    Ok(true)
}

/// Rounds every value to the nearest bf16 value, in place.
pub fn round_slice_to_bf16(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = round_to_bf16(*v));
}

#[cfg(test)]
mod tests {
    use alexnet::BufferMut;

    use super::Communicator;
    use crate::testing::Mirrored;

    #[test]
    fn a_gradient_in_host_memory_is_weighted_and_summed_in_place() {
        // 32 of the batch's 128 images here: a quarter, then the sum of two.
        let mut values = vec![1.0, -3.0, 0.5];
        let host = BufferMut::Host(&mut values);
        assert!(
            Mirrored::default()
                .weighted_sum_in_place(host, 32, 128, false)
                .unwrap()
        );
        assert_eq!(values, [0.5, -1.5, 0.25]);
        let mut values = vec![1.0 + 1.0 / 512.0];
        let host = BufferMut::Host(&mut values);
        assert!(
            Mirrored::default()
                .weighted_sum_in_place(host, 1, 1, true)
                .unwrap()
        );
        assert_eq!(values, [2.0], "rounded to bf16 before the sum");
    }

    #[test]
    fn a_buffer_it_cannot_reach_is_left_to_the_caller() {
        let mut elsewhere = vec![7.0f32];
        let device = BufferMut::Device {
            buffer: &mut elsewhere,
            len: 1,
        };
        assert!(
            !Mirrored::default()
                .weighted_sum_in_place(device, 1, 2, false)
                .unwrap()
        );
        assert_eq!(elsewhere, [7.0]);
    }
}
