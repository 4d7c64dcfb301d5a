//! The compute engine's settings, one value built in `main` from the global flags
//! (`--threads`, `--precision`, `--bf16-kernel`, `--conv-algorithms`,
//! `--bf16-conv-layout`) and the
//! command's device, then handed to whatever builds a backend. Nothing here is
//! process-global: two values (an experiment's fp32 and bf16 variants) live side
//! by side.

use std::sync::Arc;

use alexnet::{Bf16Kernel, Cpu, Precision, Products};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::device::Device;

/// Arithmetic of the matrix products: `--precision`, as the engine's [`Precision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 operands and sums.
    Fp32,
    /// Operands rounded to TF32 on tensor cores, f32 sums (--device cuda:N only).
    Tf32,
    /// Mixed precision: bf16 operands, f32 sums, f32 weights and everything else.
    Bf16,
}

impl PrecisionArg {
    fn precision(self) -> Precision {
        match self {
            PrecisionArg::Fp32 => Precision::F32,
            PrecisionArg::Tf32 => Precision::Tf32,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

/// Which convolution algorithms cuDNN may choose from (--device cuda:N, fp32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ConvAlgorithmsArg {
    /// The fastest it times, as PyTorch's cudnn.benchmark: FFT and Winograd
    /// transforms too, which round beyond fp32 (within about 1e-3).
    #[default]
    Fastest,
    /// Only direct sums: results within fp32 rounding of the CPU reference.
    Exact,
}

/// How bf16 convolutions hand cuDNN their operands (--device cuda:N, bf16).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Bf16LayoutArg {
    /// Each shape timed in both layouts, the faster kept.
    #[default]
    Timed,
    /// The engine's NCHW.
    Nchw,
    /// Channels last, the layout cuDNN's tensor-core kernels are written for.
    Nhwc,
    /// Channels last through cuDNN's graph API, its engines timed.
    Graph,
    /// No bf16 tensors: f32 copies rounded to bf16 values, through cuDNN's fp32
    /// algorithms on TF32 tensor cores (the same products, f32 results).
    Tf32,
    /// Both layouts, the graph API and tf32 timed, the fastest kept.
    #[value(alias = "timed-with-graph")]
    TimedAll,
}

/// Which bf16 kernel to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelArg {
    /// The fastest this CPU has.
    Auto,
    /// AVX512-BF16 (`VDPBF16PS`).
    Avx512Bf16,
    /// Plain f32 arithmetic on bf16 values (any CPU; slow).
    Portable,
}

/// The engine's flags, on the commands that compute (under an "Engine" heading
/// of their help). Each may also come before the command (`alexnet --threads 2
/// train ...`), as scripts written for earlier versions put them; given in both
/// places, the command's own wins.
#[derive(Args, Clone, Debug, Default)]
pub struct EngineArgs {
    /// Worker threads (default: all cores).
    #[arg(long, help_heading = "Engine")]
    pub threads: Option<usize>,
    /// Arithmetic of the convolutions' and fully connected layers' matrix products:
    /// fp32 [default]; bf16 operands with f32 sums (weights, gradients and all other
    /// layers stay f32; on a GPU, on its tensor cores); or tf32 (--device cuda:N
    /// only: operands rounded to TF32 on tensor cores, f32 sums).
    #[arg(long, value_enum, help_heading = "Engine")]
    pub precision: Option<PrecisionArg>,
    /// The bf16 product kernel of the CPU [default: auto, the fastest this CPU has].
    #[arg(long, value_enum, help_heading = "Engine")]
    pub bf16_kernel: Option<KernelArg>,
    /// Which convolution algorithms cuDNN may run on a GPU in fp32: the fastest it
    /// times [default] (FFT and Winograd transforms too, as PyTorch's
    /// cudnn.benchmark), or only exact ones (direct sums, within fp32 rounding of
    /// the CPU's results).
    #[arg(long, value_enum, help_heading = "Engine", hide = !cfg!(feature = "cuda"))]
    pub conv_algorithms: Option<ConvAlgorithmsArg>,
    /// How a GPU's convolutions get their bf16 operands: each shape timed in
    /// both layouts and the faster kept [default], NCHW or NHWC always, NHWC
    /// through cuDNN's graph API, or all three timed (results equal to
    /// rounding; for comparing their speed).
    #[arg(long, value_enum, help_heading = "Engine", hide = !cfg!(feature = "cuda"))]
    pub bf16_conv_layout: Option<Bf16LayoutArg>,
    /// Hand the CPU stored images to cut the views from, as a GPU is (the same
    /// results; for testing that path without a GPU).
    #[arg(long, help_heading = "Engine", hide = true)]
    pub stored_batches: bool,
}

impl EngineArgs {
    /// These flags, where not given, taken from `outer` (the flags before the command).
    pub fn or(self, outer: &EngineArgs) -> EngineArgs {
        EngineArgs {
            threads: self.threads.or(outer.threads),
            precision: self.precision.or(outer.precision),
            bf16_kernel: self.bf16_kernel.or(outer.bf16_kernel),
            conv_algorithms: self.conv_algorithms.or(outer.conv_algorithms),
            bf16_conv_layout: self.bf16_conv_layout.or(outer.bf16_conv_layout),
            stored_batches: self.stored_batches || outer.stored_batches,
        }
    }
}

/// The `--threads` flag alone, for commands that use threads but no backend.
#[derive(Args, Clone, Debug, Default)]
pub struct ThreadsArg {
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// How every backend of a command computes.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// The CPU backend's products: precision and bf16 kernel (checked to exist).
    pub products: Products,
    /// `--precision` as a GPU takes it (tf32 too). Read only by the CUDA backend.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub gpu_precision: Precision,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub conv_algorithms: ConvAlgorithmsArg,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub bf16_conv_layout: Bf16LayoutArg,
    /// The one pool of worker threads the command runs on (`main` runs the
    /// command inside it) and every CPU backend's layers run on: a layer called
    /// from one of its threads just runs, with nothing handed across pools.
    pub pool: Arc<ThreadPool>,
    /// CPU backends ask for stored batches (`--stored-batches`).
    pub stored_batches: bool,
}

/// The engine flags given that do nothing on `device` (or in the precision
/// asked for), each said as a note: a CPU kernel on a GPU, cuDNN's choices on a
/// CPU, bf16's layout outside bf16.
fn unused_flags(flags: &EngineArgs, device: Device) -> Vec<String> {
    let mut notes = Vec::new();
    let bf16 = flags.precision == Some(PrecisionArg::Bf16);
    match device {
        Device::Cuda(ordinal) => {
            if flags.bf16_kernel.is_some_and(|k| k != KernelArg::Auto) {
                notes.push(format!(
                    "--bf16-kernel chooses a CPU kernel; it does nothing on cuda:{ordinal}"
                ));
            }
            if flags.bf16_conv_layout.is_some() && !bf16 {
                notes.push(
                    "--bf16-conv-layout applies to bf16 convolutions (--precision bf16); it does \
                     nothing in this precision"
                        .into(),
                );
            }
        }
        Device::Cpu | Device::Reference => {
            if flags.conv_algorithms.is_some() {
                notes.push(
                    "--conv-algorithms chooses cuDNN's algorithms; it does nothing on the CPU"
                        .into(),
                );
            }
            if flags.bf16_conv_layout.is_some() {
                notes.push(
                    "--bf16-conv-layout chooses how cuDNN gets bf16 operands; it does nothing on \
                     the CPU"
                        .into(),
                );
            }
        }
    }
    notes
}

/// The most worker threads `--threads` takes: far beyond any machine's cores,
/// low enough that a typo does not try to start millions of threads.
pub const MAX_THREADS: usize = 1024;

impl EngineSettings {
    /// The settings of the global flags for a command on `device` (commands
    /// without `--device` run on the CPU). An error names a precision the device
    /// does not offer, a bf16 kernel this CPU lacks, or a thread count out of range.
    pub fn from_flags(flags: &EngineArgs, device: Device) -> Result<EngineSettings> {
        let precision = flags.precision.unwrap_or(PrecisionArg::Fp32);
        let kernel = flags.bf16_kernel.unwrap_or(KernelArg::Auto);
        let conv_algorithms = flags.conv_algorithms.unwrap_or_default();
        let bf16_conv_layout = flags.bf16_conv_layout.unwrap_or_default();
        let threads = flags.threads;
        if let Some(threads) = threads
            && !(1..=MAX_THREADS).contains(&threads)
        {
            bail!("--threads {threads}: expected 1 to {MAX_THREADS} worker threads");
        }
        for note in unused_flags(flags, device) {
            eprintln!("note: {note}");
        }
        let products = match device {
            Device::Cuda(_) => Products::default(),
            Device::Cpu | Device::Reference => cpu_products(precision, kernel)?,
        };
        let mut pool = ThreadPoolBuilder::new().thread_name(|i| format!("alexnet-{i}"));
        if let Some(threads) = threads {
            pool = pool.num_threads(threads);
        }
        let pool = pool
            .build()
            .map_err(|e| anyhow::anyhow!("--threads: cannot start the worker threads: {e}"))?;
        Ok(EngineSettings {
            products,
            gpu_precision: precision.precision(),
            conv_algorithms,
            bf16_conv_layout,
            pool: Arc::new(pool),
            stored_batches: flags.stored_batches,
        })
    }

    /// The same settings with the matrix products in `precision` (on the CPU with
    /// the same bf16 kernel): for experiments that compare precisions.
    pub fn with_precision(&self, precision: Precision) -> EngineSettings {
        EngineSettings {
            products: Products {
                precision,
                ..self.products
            },
            gpu_precision: precision,
            ..self.clone()
        }
    }

    /// A CPU backend with these settings, on the command's pool; its
    /// convolutions' buffers are its own.
    pub fn cpu(&self) -> Result<Cpu> {
        Ok(Cpu::with_products(self.products)?
            .with_pool(self.pool.clone())
            .with_stored_batches(self.stored_batches))
    }

    /// Runs `work` (a command) on the pool.
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.pool.install(work)
    }

    /// Threads for work beside a backend's (the loader of `eval`, `features`).
    pub fn worker_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// What a CUDA backend is made with: `--precision`, `--conv-algorithms` and
    /// `--bf16-conv-layout`.
    #[cfg(feature = "cuda")]
    pub fn cuda_settings(&self) -> alexnet_cuda::CudaSettings {
        alexnet_cuda::CudaSettings {
            precision: self.gpu_precision,
            algorithms: match self.conv_algorithms {
                ConvAlgorithmsArg::Fastest => alexnet_cuda::Algorithms::Fastest,
                ConvAlgorithmsArg::Exact => alexnet_cuda::Algorithms::Exact,
            },
            bf16_layout: match self.bf16_conv_layout {
                Bf16LayoutArg::Timed => alexnet_cuda::Bf16Layout::Timed,
                Bf16LayoutArg::Nchw => alexnet_cuda::Bf16Layout::Nchw,
                Bf16LayoutArg::Nhwc => alexnet_cuda::Bf16Layout::Nhwc,
                Bf16LayoutArg::Graph => alexnet_cuda::Bf16Layout::Graph,
                Bf16LayoutArg::Tf32 => alexnet_cuda::Bf16Layout::Tf32,
                Bf16LayoutArg::TimedAll => alexnet_cuda::Bf16Layout::TimedAll,
            },
        }
    }
}

/// The CPU's products for `--precision` and `--bf16-kernel`.
fn cpu_products(precision: PrecisionArg, kernel: KernelArg) -> Result<Products> {
    if precision == PrecisionArg::Tf32 {
        bail!(
            "--precision tf32: TF32 is a tensor-core format of NVIDIA GPUs, accepted only with \
             --device cuda:N; on the CPU --precision takes fp32 or bf16"
        );
    }
    let bf16_kernel = match kernel {
        KernelArg::Auto => Bf16Kernel::detect(),
        KernelArg::Avx512Bf16 => Bf16Kernel::Avx512Bf16,
        KernelArg::Portable => Bf16Kernel::Portable,
    };
    if !bf16_kernel.is_available() {
        bail!(
            "--bf16-kernel {}: this CPU does not have it (available: {})",
            bf16_kernel.name(),
            Bf16Kernel::detect().name()
        );
    }
    let precision = precision.precision();
    if precision == Precision::Bf16 && bf16_kernel == Bf16Kernel::Portable {
        // Correct everywhere, but without the bf16 instructions it is several
        // times slower than f32: say so rather than leave a user wondering.
        eprintln!(
            "note: bf16 products on the portable kernel ({}): results are bf16's, speed is several times below fp32's",
            if Bf16Kernel::Avx512Bf16.is_available() {
                "as asked"
            } else {
                "this CPU has no AVX512-BF16"
            }
        );
    }
    Ok(Products {
        precision,
        bf16_kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> EngineArgs {
        EngineArgs::default()
    }

    #[test]
    fn flags_that_do_nothing_where_they_are_given_are_noted() {
        assert!(unused_flags(&flags(), Device::Cpu).is_empty());
        assert!(unused_flags(&flags(), Device::Cuda(0)).is_empty());

        let cudnn_flags = EngineArgs {
            conv_algorithms: Some(ConvAlgorithmsArg::Exact),
            bf16_conv_layout: Some(Bf16LayoutArg::Graph),
            ..flags()
        };
        let on_cpu = unused_flags(&cudnn_flags, Device::Cpu);
        assert_eq!(on_cpu.len(), 2, "{on_cpu:?}");
        assert!(
            on_cpu[0].contains("--conv-algorithms") && on_cpu[1].contains("--bf16-conv-layout")
        );
        // On a GPU, --conv-algorithms applies; the bf16 layout only in bf16.
        let in_fp32 = unused_flags(&cudnn_flags, Device::Cuda(1));
        assert_eq!(in_fp32.len(), 1, "{in_fp32:?}");
        assert!(in_fp32[0].contains("--precision bf16"), "{in_fp32:?}");
        let in_bf16 = EngineArgs {
            precision: Some(PrecisionArg::Bf16),
            ..cudnn_flags
        };
        assert!(unused_flags(&in_bf16, Device::Cuda(0)).is_empty());

        let cpu_kernel = EngineArgs {
            bf16_kernel: Some(KernelArg::Portable),
            ..flags()
        };
        let on_gpu = unused_flags(&cpu_kernel, Device::Cuda(2));
        assert_eq!(on_gpu.len(), 1);
        assert!(on_gpu[0].contains("cuda:2"), "{on_gpu:?}");
        assert!(unused_flags(&cpu_kernel, Device::Cpu).is_empty());
    }
}
