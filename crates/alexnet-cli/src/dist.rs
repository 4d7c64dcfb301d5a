//! Data-parallel training across processes started by a launcher: under
//! `mpirun -np N alexnet train ...` every process trains its part of each
//! batch and the gradients are summed by MPI (`--features mpi`, Open MPI through
//! the `mpi` crate); under `torchrun --no-python --nproc-per-node N alexnet
//! train ... --device cuda` one process per GPU sums them with NCCL
//! (`--features cuda`). The launcher is recognised from its environment
//! ([`launcher`]).
//!
//! No process waits for the others forever: each step has a check-in, answered
//! within `--dist-timeout` (under MPI it names the processes that did not
//! answer), and every collective runs under a watchdog with the same deadline.

use std::time::Duration;

use alexnet_train::{Communicator, SingleProcess};
use anyhow::{Result, bail};
use clap::Args;

use crate::device::Device;
use launcher::{Launcher, Place};

/// How processes of one run wait for each other and meet.
#[derive(Args, Clone, Debug)]
pub struct DistArgs {
    /// Under a launcher: seconds a process waits for the others (at each step's
    /// check-in, or inside a sum of gradients) before the run stops with an
    /// error naming the processes that did not answer.
    #[arg(
        long,
        default_value_t = 300,
        value_name = "SECONDS",
        help_heading = "Several processes"
    )]
    pub dist_timeout: u64,
    /// Under torchrun: the TCP port on MASTER_ADDR where NCCL's processes meet
    /// (default MASTER_PORT + 1, beside torchrun's own store; an NCCL_COMM_ID
    /// already in the environment is used as it is).
    #[arg(long, value_name = "PORT", help_heading = "Several processes")]
    pub dist_port: Option<u16>,
}

impl DistArgs {
    fn timeout(&self) -> Result<Duration> {
        if self.dist_timeout == 0 {
            bail!("--dist-timeout 0: expected at least 1 second");
        }
        Ok(Duration::from_secs(self.dist_timeout))
    }
}

/// Where NCCL's processes meet under torchrun: `NCCL_COMM_ID`, set before
/// any thread starts (NCCL reads it when it makes its id, and setting the
/// environment while other threads may read it is not sound). Elsewhere, or
/// with `NCCL_COMM_ID` already set, nothing changes.
pub fn prepare_environment(args: &DistArgs) -> Result<()> {
    let Launcher::Torchrun {
        master_addr,
        master_port,
        ..
    } = Launcher::from_env()?
    else {
        return Ok(());
    };
    if std::env::var_os("NCCL_COMM_ID").is_some() {
        return Ok(());
    }
    let id = nccl_comm_id(&master_addr, master_port, args.dist_port)?;
    // SAFETY: called from `main` before the thread pool (or any other thread)
    // starts, so no other thread reads the environment meanwhile.
    unsafe { std::env::set_var("NCCL_COMM_ID", id) };
    Ok(())
}

/// `host:port` for NCCL: `--dist-port`, or the port after torchrun's store.
fn nccl_comm_id(master_addr: &str, master_port: u16, dist_port: Option<u16>) -> Result<String> {
    let port = match dist_port {
        Some(0) => bail!("--dist-port 0: expected a TCP port from 1 to 65535"),
        Some(port) if port == master_port => bail!(
            "--dist-port {port} is MASTER_PORT, where torchrun's own store listens: choose another"
        ),
        Some(port) => port,
        None => master_port.checked_add(1).ok_or_else(|| {
            anyhow::anyhow!(
                "MASTER_PORT={master_port} leaves no port after it for NCCL: choose one with \
                 --dist-port"
            )
        })?,
    };
    // NCCL reads an IPv6 address in brackets.
    let host = if master_addr.contains(':') && !master_addr.starts_with('[') {
        format!("[{master_addr}]")
    } else {
        master_addr.to_string()
    };
    Ok(format!("{host}:{port}"))
}

/// Worker threads per process when `--threads` is not given: the cores divided
/// among the processes on this machine (`OMPI_COMM_WORLD_LOCAL_SIZE` under
/// mpirun, `LOCAL_WORLD_SIZE` under torchrun); alone, the engine's default.
pub fn default_threads() -> Option<usize> {
    let local = local_processes()?;
    (local > 1).then(cores_per_process)
}

/// MiB of a bucket of gradients summed during the backward pass when
/// `--bucket-mb` is not given, for processes whose nets run on `device`: on a
/// GPU, PyTorch DDP's 25 (NCCL sums each gradient on the GPU while the pass
/// goes on); on CPUs none (sums after the pass) when a launcher says every
/// process runs on this machine, where summing takes the cores the pass
/// computes on, else 25.
pub fn default_bucket_mb(device: Device) -> u32 {
    bucket_mb_for(Launcher::from_env().ok().and_then(|l| l.place()), device)
}

fn bucket_mb_for(place: Option<Place>, device: Device) -> u32 {
    match place {
        _ if matches!(device, Device::Cuda(_)) => 25,
        Some(place) if place.local_size == Some(place.size) => 0,
        _ => 25,
    }
}

/// This machine's cores divided among the run's processes on it (at least 1).
pub fn cores_per_process() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local_processes().unwrap_or(1).max(1)).max(1)
}

/// Processes of this run on this machine, where a launcher says.
fn local_processes() -> Option<usize> {
    Launcher::from_env().ok()?.place()?.local_size
}

/// The communicator of this process, whose net runs on `device`: MPI's under
/// mpirun (with NCCL's sums for GPUs where the binary has both), NCCL's under
/// torchrun (GPUs only), or this process alone.
pub fn communicator(args: &DistArgs, device: Device) -> Result<Box<dyn Communicator>> {
    let timeout = args.timeout()?;
    match Launcher::from_env()? {
        Launcher::Alone => Ok(Box::new(SingleProcess)),
        Launcher::Mpirun(place) if place.size == 1 => Ok(Box::new(SingleProcess)),
        Launcher::Mpirun(place) => match device {
            Device::Cuda(ordinal) => mpi_nccl_communicator(place, ordinal, timeout),
            _ => mpi_communicator(place, timeout),
        },
        Launcher::Torchrun { place, .. } => match device {
            Device::Cuda(ordinal) => nccl_communicator(place, ordinal, timeout),
            _ if place.size == 1 => Ok(Box::new(SingleProcess)),
            other => bail!(
                "started by torchrun as rank {} of {}: torchrun's processes sum their \
                 gradients with NCCL, one GPU each (--device cuda); for processes on {other} \
                 start them with `mpirun -np {} alexnet ...` (a binary built with --features mpi)",
                place.rank,
                place.size,
                place.size
            ),
        },
    }
}

#[cfg(not(feature = "cuda"))]
fn nccl_communicator(
    place: Place,
    ordinal: usize,
    _timeout: Duration,
) -> Result<Box<dyn Communicator>> {
    let _ = place;
    Err(crate::device::without_cuda("--device", ordinal))
}

#[cfg(feature = "cuda")]
fn nccl_communicator(
    place: Place,
    ordinal: usize,
    timeout: Duration,
) -> Result<Box<dyn Communicator>> {
    Ok(Box::new(nccl_world::Nccl::new(place, ordinal, timeout)?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_communicator(place: Place, _timeout: Duration) -> Result<Box<dyn Communicator>> {
    bail!(
        "started by mpirun with {} processes, but this binary was built without MPI: build it \
         with `cargo build --release -p alexnet-cli --features mpi`",
        place.size
    )
}

#[cfg(feature = "mpi")]
fn mpi_communicator(_place: Place, timeout: Duration) -> Result<Box<dyn Communicator>> {
    Ok(Box::new(start_mpi(timeout)?))
}

/// MPI's world, initialised for calls from several threads where it allows
/// them (gradients are then summed during the backward pass; an MPI without
/// that sums them after it).
#[cfg(feature = "mpi")]
fn start_mpi(timeout: Duration) -> Result<mpi_world::Mpi> {
    use mpi::Threading;
    let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Multiple) else {
        bail!("MPI was initialised twice in one process");
    };
    let threads_allowed = threading == Threading::Multiple;
    mpi_world::Mpi::new(universe, threads_allowed, timeout)
}

/// GPU processes under mpirun: NCCL sums (its id handed out by MPI) where
/// the binary has both; without CUDA `--device cuda` fails where the net is
/// made, and without MPI the run is refused as for CPU processes.
#[cfg(all(feature = "mpi", feature = "cuda"))]
fn mpi_nccl_communicator(
    place: Place,
    ordinal: usize,
    timeout: Duration,
) -> Result<Box<dyn Communicator>> {
    let mpi = start_mpi(timeout)?;
    Ok(Box::new(mpi_nccl::MpiNccl::new(
        mpi, place, ordinal, timeout,
    )?))
}

#[cfg(not(all(feature = "mpi", feature = "cuda")))]
fn mpi_nccl_communicator(
    place: Place,
    _ordinal: usize,
    timeout: Duration,
) -> Result<Box<dyn Communicator>> {
    mpi_communicator(place, timeout)
}

pub mod launcher;
#[cfg(all(feature = "mpi", feature = "cuda"))]
mod mpi_nccl;
#[cfg(feature = "mpi")]
mod mpi_sums;
#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "cuda")]
mod nccl_world;
#[cfg(any(feature = "mpi", feature = "cuda"))]
mod watchdog;

#[cfg(test)]
mod tests {
    use super::launcher::Place;
    use super::{bucket_mb_for, nccl_comm_id};
    use crate::device::Device;

    #[test]
    fn gradients_go_in_buckets_by_default_on_gpus_and_across_machines() {
        let place = |size, local_size| Place {
            rank: 0,
            size,
            local_rank: 0,
            local_size,
        };
        let cpu = Device::Cpu;
        assert_eq!(
            bucket_mb_for(Some(place(4, Some(4))), cpu),
            0,
            "one machine"
        );
        assert_eq!(
            bucket_mb_for(Some(place(4, Some(2))), cpu),
            25,
            "two machines"
        );
        assert_eq!(
            bucket_mb_for(Some(place(4, None)), cpu),
            25,
            "the launcher does not say"
        );
        assert_eq!(bucket_mb_for(None, cpu), 25);
        // GPUs sum during the pass on one machine too.
        let gpu = Device::Cuda(0);
        assert_eq!(
            bucket_mb_for(Some(place(4, Some(4))), gpu),
            25,
            "one machine"
        );
    }

    #[test]
    fn nccl_meets_beside_torchruns_store_or_at_the_port_given() {
        assert_eq!(
            nccl_comm_id("10.0.0.1", 29500, None).unwrap(),
            "10.0.0.1:29501"
        );
        assert_eq!(
            nccl_comm_id("node-a", 29500, Some(4000)).unwrap(),
            "node-a:4000"
        );
        assert_eq!(
            nccl_comm_id("fe80::1", 29500, None).unwrap(),
            "[fe80::1]:29501"
        );
        let message = nccl_comm_id("h", 65535, None).unwrap_err().to_string();
        assert!(message.contains("--dist-port"), "{message}");
        assert!(nccl_comm_id("h", 1, Some(0)).is_err());
        let message = nccl_comm_id("h", 29500, Some(29500))
            .unwrap_err()
            .to_string();
        assert!(message.contains("torchrun's own store"), "{message}");
    }
}
