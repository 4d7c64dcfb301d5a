//! Data-parallel training across processes started by a launcher: under
//! `mpirun -np N alexnet train ...` every process trains its share of each
//! batch and the gradients are summed by MPI (`--features mpi`, Open MPI through
//! the `mpi` crate). The launcher is recognised from its environment.

use alexnet_train::{Communicator, SingleProcess};
use anyhow::{Result, bail};

/// The processes this one runs among, as the launcher's environment says:
/// `OMPI_COMM_WORLD_SIZE` (Open MPI's `mpirun`); none is one process alone.
pub fn world_size() -> Result<usize> {
    let Ok(text) = std::env::var("OMPI_COMM_WORLD_SIZE") else {
        return Ok(1);
    };
    match text.parse::<usize>() {
        Ok(size) if size >= 1 => Ok(size),
        _ => bail!("OMPI_COMM_WORLD_SIZE={text}: expected a number of processes of at least 1"),
    }
}

/// Worker threads per process when `--threads` is not given: the cores divided
/// among the processes on this machine (`OMPI_COMM_WORLD_LOCAL_SIZE`).
pub fn default_threads() -> Option<usize> {
    let local: usize = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
        .ok()?
        .parse()
        .ok()
        .filter(|&n| n > 1)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / local).max(1))
}

/// The communicator of this process: MPI's under a launcher, or this process alone.
pub fn communicator() -> Result<Box<dyn Communicator>> {
    if world_size()? == 1 {
        return Ok(Box::new(SingleProcess));
    }
    mpi_communicator()
}

#[cfg(not(feature = "mpi"))]
fn mpi_communicator() -> Result<Box<dyn Communicator>> {
    bail!(
        "started by mpirun with {} processes, but this binary was built without MPI: build it \
         with `cargo build --release -p alexnet-cli --features mpi`",
        world_size()?
    )
}

#[cfg(feature = "mpi")]
fn mpi_communicator() -> Result<Box<dyn Communicator>> {
    let Some(universe) = mpi::initialize() else {
        bail!("MPI was initialised twice in one process");
    };
    Ok(Box::new(mpi_world::Mpi { universe }))
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use alexnet_train::{Communicator, External};
    use mpi::collective::SystemOperation;
    use mpi::traits::{Communicator as _, CommunicatorCollectives};

    /// MPI's world communicator; MPI is finalised when it is dropped.
    pub struct Mpi {
        pub universe: mpi::environment::Universe,
    }

    impl Communicator for Mpi {
        fn rank(&self) -> usize {
            self.universe.world().rank() as usize
        }
        fn size(&self) -> usize {
            self.universe.world().size() as usize
        }
        fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), External> {
            // MPI reduces into a buffer apart from the one it reads.
            let send = values.to_vec();
            self.universe
                .world()
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }
    }
}
