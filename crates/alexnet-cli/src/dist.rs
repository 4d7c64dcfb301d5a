//! Data-parallel training across processes started by a launcher: under
//! `mpirun -np N alexnet train ...` every process trains its part of each
//! batch and the gradients are summed by MPI (`--features mpi`, Open MPI through
//! the `mpi` crate). The launcher is recognised from its environment.
//!
//! No process waits for the others forever: each step begins with a check-in
//! (a small message to every other process, answered within `--dist-timeout`),
//! which names the processes that did not answer, and every collective runs
//! under a watchdog with the same deadline.

use std::time::Duration;

use alexnet_train::{Communicator, SingleProcess};
use anyhow::{Result, bail};
use clap::Args;

/// How processes of one run wait for each other.
#[derive(Args, Clone, Debug)]
pub struct DistArgs {
    /// Under mpirun: seconds a process waits for the others (at each step's
    /// check-in, or inside a sum of gradients) before the run stops with an
    /// error naming the processes that did not answer.
    #[arg(
        long,
        default_value_t = 300,
        value_name = "SECONDS",
        help_heading = "Several processes"
    )]
    pub dist_timeout: u64,
}

impl DistArgs {
    fn timeout(&self) -> Result<Duration> {
        if self.dist_timeout == 0 {
            bail!("--dist-timeout 0: expected at least 1 second");
        }
        Ok(Duration::from_secs(self.dist_timeout))
    }
}

/// The processes this one runs among, as the launcher's environment says:
/// `OMPI_COMM_WORLD_SIZE` (Open MPI's `mpirun`); none is one process alone.
/// Started by `torchrun` (its `WORLD_SIZE` above 1), which needs NCCL, not
/// built yet: refused, rather than every process training alone into one
/// folder.
pub fn world_size() -> Result<usize> {
    let Ok(text) = std::env::var("OMPI_COMM_WORLD_SIZE") else {
        if let Ok(size) = std::env::var("WORLD_SIZE")
            && size.trim() != "1"
        {
            bail!(
                "WORLD_SIZE={size}: started by torchrun or another launcher that this build \
                 cannot join (data parallelism runs under mpirun, with --features mpi); start \
                 it with `mpirun -np N alexnet ...`"
            );
        }
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
pub fn communicator(args: &DistArgs) -> Result<Box<dyn Communicator>> {
    let timeout = args.timeout()?;
    if world_size()? == 1 {
        return Ok(Box::new(SingleProcess));
    }
    mpi_communicator(timeout)
}

#[cfg(not(feature = "mpi"))]
fn mpi_communicator(_timeout: Duration) -> Result<Box<dyn Communicator>> {
    bail!(
        "started by mpirun with {} processes, but this binary was built without MPI: build it \
         with `cargo build --release -p alexnet-cli --features mpi`",
        world_size()?
    )
}

#[cfg(feature = "mpi")]
fn mpi_communicator(timeout: Duration) -> Result<Box<dyn Communicator>> {
    let Some(universe) = mpi::initialize() else {
        bail!("MPI was initialised twice in one process");
    };
    Ok(Box::new(mpi_world::Mpi::new(universe, timeout)?))
}

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "mpi")]
mod watchdog;
