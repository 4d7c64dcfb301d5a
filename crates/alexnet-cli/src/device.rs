//! Where a command runs: `cpu`, or `cuda:N` in a binary built with the `cuda`
//! feature (which brings in the alexnet-cuda backend); or the paper's two towers
//! on two devices (`--devices cuda:0,cuda:1 --parallel towers`).
//!
//! The commands that compute (`train`, `eval`, `classify`, `features`, `bench`,
//! `experiment`) flatten [`Placement`] into their flags and build their net
//! through it, as an `alexnet::Model`; their bodies do not know where it runs.

use alexnet::{Model, NetSpec, Network, Towers};
use alexnet_train::{External, NetFactory};
use anyhow::{Result, bail};

use crate::engine::EngineSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The CPU's readable reference loops (`cpu-reference`): slow, but the same
    /// arithmetic on every CPU, for checks that must not depend on its kernels.
    Reference,
    /// A CUDA GPU by ordinal (0 for the first).
    Cuda(usize),
}

impl Device {
    fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Reference => write!(f, "cpu-reference"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Parses `--device`: `cpu`, `cuda` (the first GPU; under mpirun or torchrun,
/// the GPU of this process's local rank) or `cuda:N`; clap reports an error with the
/// flag's name.
pub fn parse(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cpu-reference" => Ok(Device::Reference),
        "cuda" => Ok(Device::Cuda(local_gpu(launchers_local_rank())?)),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok(Device::Cuda(ordinal)),
            _ => {
                Err("expected cpu, cuda:N (cuda:0 for the first GPU) or cpu-reference".to_string())
            }
        },
    }
}

/// The variable and value of this process's rank among the processes of its
/// machine, where a launcher set it: mpirun's, or torchrun's.
fn launchers_local_rank() -> Option<(&'static str, String)> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK"]
        .into_iter()
        .find_map(|name| Some((name, std::env::var(name).ok()?)))
}

/// The GPU of a process whose launcher gave it a local rank among the
/// processes of its machine (one GPU each), or the first GPU alone.
fn local_gpu(local_rank: Option<(&str, String)>) -> Result<usize, String> {
    match local_rank {
        None => Ok(0),
        Some((name, text)) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}={text}: expected the process's local rank, a number")),
    }
}

/// The error for `--device cuda:N` in a binary built without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn without_cuda(flag: &str, ordinal: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "{flag} cuda:{ordinal}: this alexnet binary was built without CUDA support; \
         build it with `cargo build --release -p alexnet-cli --features cuda`"
    )
}

/// The CUDA backend on GPU `ordinal`, its products in the `--precision` given
/// and its convolutions as `--conv-algorithms` and `--bf16-conv-layout` say;
/// fails with the reason (no driver, a CUDA library not found, no such device)
/// rather than panicking.
#[cfg(feature = "cuda")]
pub fn cuda(ordinal: usize, engine: &EngineSettings) -> Result<alexnet_cuda::CudaBackend> {
    alexnet_cuda::CudaBackend::with_settings(ordinal, engine.cuda_settings())
        .map_err(|e| anyhow::anyhow!("--device cuda:{ordinal}: {e}"))
}

/// The backends of two towers on GPUs `a` and `b`, each reaching the other's
/// memory directly where the GPUs allow (else the driver stages their copies
/// through the host).
#[cfg(feature = "cuda")]
fn cuda_towers(
    a: usize,
    b: usize,
    engine: &EngineSettings,
) -> Result<Vec<alexnet_cuda::CudaBackend>> {
    let (first, second) = (cuda(a, engine)?, cuda(b, engine)?);
    alexnet_cuda::enable_peer_access(&first, &second);
    Ok(vec![first, second])
}

/// `with_backend!(device, engine, |backend| body)`: evaluates `body` (a `Result`)
/// with `backend` bound to the CPU engine or, for `Device::Cuda`, the CUDA
/// backend, both made with the settings `engine`.
/// The body is compiled once per backend type, so it can call generic code; in a
/// binary without the `cuda` feature a CUDA device gives [`without_cuda`]'s error.
macro_rules! with_backend {
    ($device:expr, $engine:expr, |$backend:ident| $body:expr) => {
        match $device {
            $crate::device::Device::Cpu => {
                let $backend = $engine.cpu()?;
                $body
            }
            $crate::device::Device::Reference => {
                let $backend = alexnet::ReferenceCpu;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::Device::Cuda(ordinal) => {
                let $backend = $crate::device::cuda(ordinal, $engine)?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::device::Device::Cuda(ordinal) => {
                Err($crate::device::without_cuda("--device", ordinal))
            }
        }
    };
}

/// How one net is spread over several devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Parallel {
    /// The paper's layout (Section 3.2): each device holds one tower, half of every
    /// layer's kernels; they exchange activations only at conv3 and the fully
    /// connected layers. The net needs per-tower LRN and an even split (the
    /// `alexnet` preset has both).
    Towers,
}

/// The placement flags of a command that computes.
#[derive(clap::Args, Clone, Debug)]
pub struct Placement {
    /// Where to run: cpu, or cuda:N (a binary built with the `cuda` feature; its
    /// products in fp32, tf32 or bf16 as --precision says), or cpu-reference
    /// (the readable reference loops: slow, the same arithmetic on every CPU). A training run may be
    /// resumed elsewhere (checkpoints hold whole f32 tensors, wherever the net
    /// ran); only the same placement continues it bit for bit.
    #[arg(long, default_value = "cpu", value_parser = parse, conflicts_with = "devices")]
    pub device: Device,
    /// Several devices for one net, split as --parallel says: `cuda:0,cuda:1`. The
    /// same device may be named twice (both towers on one GPU, or `cpu,cpu`).
    #[arg(long, value_delimiter = ',', value_parser = parse, requires = "parallel")]
    pub devices: Vec<Device>,
    /// How --devices share the net.
    #[arg(long, value_enum, requires = "devices")]
    pub parallel: Option<Parallel>,
}

impl Placement {
    /// The device whose settings (`--precision`) apply: the first named.
    pub fn main_device(&self) -> Device {
        self.devices.first().copied().unwrap_or(self.device)
    }

    /// Refuses what no net could be built on, before a command opens any file: a
    /// CUDA device in a binary without the feature, or towers on other than two
    /// devices of one kind.
    pub fn validate(&self) -> Result<()> {
        #[cfg(not(feature = "cuda"))]
        {
            if let Device::Cuda(ordinal) = self.device {
                return Err(without_cuda("--device", ordinal));
            }
            if let Some(Device::Cuda(ordinal)) = self.devices.iter().find(|d| d.is_cuda()) {
                return Err(without_cuda("--devices", *ordinal));
            }
        }
        if self.parallel == Some(Parallel::Towers) {
            if self.devices.len() != 2 {
                bail!(
                    "--devices: --parallel towers takes two devices, one per tower (the same one \
                     twice runs both towers on it); found {}",
                    self.devices.len()
                );
            }
            if self.devices.contains(&Device::Reference) {
                bail!("--devices: towers run on cpu or cuda:N, not on cpu-reference");
            }
            if self.devices[0].is_cuda() != self.devices[1].is_cuda() {
                bail!("--devices: both towers must be on the CPU or both on GPUs");
            }
        }
        Ok(())
    }

    /// The nets of this placement, their backends made with `engine`.
    pub fn nets<'a>(&'a self, engine: &'a EngineSettings) -> Nets<'a> {
        Nets {
            placement: self,
            engine,
        }
    }
}

/// Builds nets where a [`Placement`] says, with one command's engine settings.
#[derive(Clone, Copy)]
pub struct Nets<'a> {
    placement: &'a Placement,
    engine: &'a EngineSettings,
}

impl Nets<'_> {
    /// The net of `spec` for batches of up to `max_batch`, initialised from `seed`
    /// as the paper does.
    pub fn network(&self, spec: &NetSpec, max_batch: usize, seed: u64) -> Result<Box<dyn Model>> {
        self.build(spec, max_batch, Some(seed))
    }

    /// The net with every parameter at zero, for weights from a checkpoint.
    pub fn network_zeroed(&self, spec: &NetSpec, max_batch: usize) -> Result<Box<dyn Model>> {
        self.build(spec, max_batch, None)
    }

    fn build(&self, spec: &NetSpec, max_batch: usize, seed: Option<u64>) -> Result<Box<dyn Model>> {
        let (placement, engine) = (self.placement, self.engine);
        let Some(Parallel::Towers) = placement.parallel else {
            return with_backend!(placement.device, engine, |backend| Ok(match seed {
                Some(seed) => Box::new(Network::new(backend, spec, max_batch, seed)?),
                None => Box::new(Network::new_zeroed(backend, spec, max_batch)?),
            }
                as Box<dyn Model>));
        };
        placement.validate()?;
        match (placement.devices[0], placement.devices[1]) {
            (Device::Cpu, Device::Cpu) => {
                towers(vec![engine.cpu()?, engine.cpu()?], spec, max_batch, seed)
            }
            #[cfg(feature = "cuda")]
            (Device::Cuda(a), Device::Cuda(b)) => {
                towers(cuda_towers(a, b, engine)?, spec, max_batch, seed)
            }
            #[cfg(not(feature = "cuda"))]
            (Device::Cuda(ordinal), _) | (_, Device::Cuda(ordinal)) => {
                Err(without_cuda("--devices", ordinal))
            }
            // `validate` refused the rest.
            _ => bail!("--devices: both towers must be on the CPU or both on GPUs"),
        }
    }
}

/// The trainer builds its nets here.
impl NetFactory for Nets<'_> {
    fn build(
        &self,
        spec: &NetSpec,
        max_batch: usize,
        seed: Option<u64>,
    ) -> Result<Box<dyn Model>, External> {
        Nets::build(self, spec, max_batch, seed).map_err(Into::into)
    }
}

/// The net split into one tower per backend.
fn towers<B: alexnet::Backend + 'static>(
    backends: Vec<B>,
    spec: &NetSpec,
    max_batch: usize,
    seed: Option<u64>,
) -> Result<Box<dyn Model>> {
    let net = match seed {
        Some(seed) => Towers::new(backends, spec, max_batch, seed),
        None => Towers::new_zeroed(backends, spec, max_batch),
    };
    Ok(Box::new(
        net.map_err(|e| anyhow::anyhow!("--parallel towers: {e}"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::local_gpu;

    #[test]
    fn cuda_alone_is_the_first_gpu_and_under_a_launcher_the_local_ranks() {
        let rank = |name: &'static str, text: &str| Some((name, text.to_string()));
        assert_eq!(local_gpu(None), Ok(0));
        assert_eq!(local_gpu(rank("OMPI_COMM_WORLD_LOCAL_RANK", "3")), Ok(3));
        assert_eq!(local_gpu(rank("LOCAL_RANK", "5")), Ok(5));
        assert!(
            local_gpu(rank("OMPI_COMM_WORLD_LOCAL_RANK", "x"))
                .unwrap_err()
                .contains("OMPI_COMM_WORLD_LOCAL_RANK=x")
        );
        assert!(
            local_gpu(rank("LOCAL_RANK", "-1"))
                .unwrap_err()
                .contains("LOCAL_RANK=-1")
        );
    }
}
