//! What data-parallel training needs of the processes it runs in: their number,
//! this one's rank, and sums of values across all of them. One implementation
//! serves a single process; the command line provides MPI's (`mpirun`), so that
//! the same trainer code runs at every world size.

use crate::error::External;

/// The processes a run is shared among.
pub trait Communicator {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// How many processes share the run.
    fn size(&self) -> usize;
    /// Replaces `values` by their element-wise sum over all processes (every
    /// process calls it with the same length, in the same order of calls).
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), External>;
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
}
