//! What data-parallel training needs of the processes it runs in: their number,
//! this one's rank, sums of values across all of them (in f32, or carried as
//! bf16 to halve the bytes), a broadcast, and a check-in each step that names a
//! process that stopped answering. One implementation serves a single process;
//! the command line provides MPI's (`mpirun`), so that the same trainer code
//! runs at every world size.

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

/// Rounds every value to the nearest bf16 value, in place.
pub fn round_slice_to_bf16(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = round_to_bf16(*v));
}
