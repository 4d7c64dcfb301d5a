//! GPU processes started by mpirun (a binary built with both `mpi` and
//! `cuda`): sums and broadcasts go through NCCL, one GPU per process, whose id
//! rank 0 makes and MPI hands to the others (as Horovod does); the per-step
//! check-in stays with MPI, which can name a process that stopped answering.

use std::any::Any;
use std::time::Duration;

use alexnet_cuda::nccl::{ID_BYTES, NcclGroup};
use alexnet_train::{BackgroundSums, Communicator, External};

use super::launcher::Place;
use super::mpi_world::Mpi;
use super::nccl_world::Nccl;

pub struct MpiNccl {
    // First, so that NCCL's group is left before MPI is finalised.
    nccl: Nccl,
    mpi: Mpi,
}

impl MpiNccl {
    /// Joins the NCCL group of the processes of `mpi` (`place`) on GPU `ordinal`.
    pub fn new(
        mpi: Mpi,
        place: Place,
        ordinal: usize,
        timeout: Duration,
    ) -> anyhow::Result<MpiNccl> {
        let mut id = [0u8; ID_BYTES];
        if place.rank == 0 {
            id = NcclGroup::id()?;
        }
        mpi.broadcast_bytes(&mut id, 0);
        let met = "its id sent by MPI from rank 0";
        let nccl = Nccl::join(place, ordinal, timeout, id, met)?;
        Ok(MpiNccl { nccl, mpi })
    }
}

impl Communicator for MpiNccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn size(&self) -> usize {
        self.mpi.size()
    }
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), External> {
        self.nccl.all_reduce_sum(values)
    }
    fn all_reduce_sum_bf16(&self, values: &mut [f32]) -> Result<(), External> {
        self.nccl.all_reduce_sum_bf16(values)
    }
    fn weighted_sum_on_device(
        &self,
        buffer: &mut dyn Any,
        len: usize,
        images: usize,
        all: usize,
        bf16: bool,
    ) -> Result<bool, External> {
        self.nccl
            .weighted_sum_on_device(buffer, len, images, all, bf16)
    }
    fn background_sums(&self) -> Option<&dyn BackgroundSums> {
        self.nccl.background_sums()
    }
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), External> {
        self.nccl.broadcast(values, root)
    }
    fn check_in(&self, step: u64, stop: bool) -> Result<bool, External> {
        self.mpi.check_in(step, stop)
    }
}
