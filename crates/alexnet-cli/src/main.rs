//! The `alexnet` command.

mod bench;
mod chart;
mod classify;
mod device;
mod engine;
mod evaluate;
mod experiment;
mod features;
mod info;
mod interop;
mod kernels;
mod output;
mod plot;
mod prepare;
mod preprocess;
mod progress;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "alexnet",
    version,
    about = "AlexNet (Krizhevsky, Sutskever, Hinton 2012) in Rust"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Arithmetic of the convolutions' and fully connected layers' matrix products:
    /// fp32; bf16 operands with f32 sums (weights, gradients and all other layers
    /// stay f32; on a GPU, on its tensor cores); or tf32 (--device cuda:N only:
    /// operands rounded to TF32 on tensor cores, f32 sums).
    #[arg(long, global = true, value_enum, default_value = "fp32")]
    precision: engine::PrecisionArg,
    /// Which convolution algorithms cuDNN may run on a GPU in fp32: the fastest
    /// it times (FFT and Winograd transforms too, as PyTorch's cudnn.benchmark),
    /// or only exact ones (direct sums, within fp32 rounding of the CPU's results).
    #[arg(long, global = true, value_enum, default_value = "fastest")]
    conv_algorithms: engine::ConvAlgorithmsArg,
    /// The bf16 product kernel (default: the fastest this CPU has).
    #[arg(long, global = true, value_enum, default_value = "auto")]
    bf16_kernel: engine::KernelArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn image folders or MNIST/CIFAR files into a prepared dataset.
    Prepare(prepare::PrepareArgs),
    /// Train a net on a prepared dataset with the paper's recipe.
    Train(train::TrainArgs),
    /// Top-1 and top-5 error of a checkpoint on a dataset split.
    Eval(evaluate::EvalArgs),
    /// The most probable classes of image files.
    Classify(classify::ClassifyArgs),
    /// Write the last hidden layer's activations for a dataset split.
    Features(features::FeaturesArgs),
    /// Find the images nearest to queries by their features (the paper's Figure 4).
    Similar(features::SimilarArgs),
    /// Run one of the paper's experiments (variants of one net, several seeds) and report.
    Experiment(experiment::ExperimentArgs),
    /// Draw training curves from metrics logs (the paper's Figure 1).
    Plot(plot::PlotArgs),
    /// Draw the first layer's kernels (the paper's Figure 3).
    Kernels(kernels::KernelsArgs),
    /// Time training and inference of a net on random data, with a per-layer breakdown.
    Bench(bench::BenchArgs),
    /// Show a network's layers, shapes and parameter counts.
    Info(info::InfoArgs),
    /// Turn weights trained elsewhere (torchvision, Caffe) into a checkpoint.
    Import(interop::ImportArgs),
    /// Write a checkpoint in another format (ONNX).
    Export(interop::ExportArgs),
}

impl Command {
    /// Where a command that computes runs; the others run on the CPU.
    fn placement(&self) -> Option<&device::Placement> {
        match self {
            Command::Train(args) => Some(&args.placement),
            Command::Eval(args) => Some(&args.placement),
            Command::Classify(args) => Some(&args.placement),
            Command::Features(args) => Some(&args.placement),
            Command::Bench(args) => Some(&args.placement),
            Command::Experiment(args) => Some(&args.placement),
            _ => None,
        }
    }
}

fn main() -> Result<()> {
    restore_default_sigpipe();
    let cli = Cli::parse();
    let placement = cli.command.placement();
    if let Some(placement) = placement {
        placement.validate()?;
    }
    let device = placement.map_or(device::Device::Cpu, device::Placement::main_device);
    let engine = engine::EngineSettings::from_flags(
        cli.precision,
        cli.bf16_kernel,
        cli.conv_algorithms,
        cli.threads,
        device,
    )?;
    // Work beside the backends (preparing, checking a dataset) runs on the same
    // pool as the CPU backends' layers.
    engine.install(|| run(cli.command, &engine))
}

/// Rust programs ignore SIGPIPE, so printing into a closed pipe
/// (`alexnet classify ... | head -1`) fails, and `println!` panics. Restoring the
/// default makes this program end quietly there, as other command-line tools do.
fn restore_default_sigpipe() {
    // SAFETY: setting a signal's disposition to its default, before any thread
    // is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(command: Command, engine: &engine::EngineSettings) -> Result<()> {
    match command {
        Command::Prepare(args) => prepare::run(args),
        Command::Train(args) => {
            // Ctrl-C, SIGTERM and SIGHUP (a batch scheduler stopping the job, a closed
            // terminal) ask the trainer to write a checkpoint and stop after the current step.
            let stop = alexnet_train::StopRequest::new();
            let on_signal = stop.clone();
            ctrlc::set_handler(move || on_signal.request())?;
            train::run(args, engine, &stop)
        }
        Command::Eval(args) => evaluate::run(args, engine),
        Command::Classify(args) => classify::run(args, engine),
        Command::Features(args) => features::run_features(args, engine),
        Command::Similar(args) => features::run_similar(args),
        Command::Experiment(args) => experiment::run(args, engine),
        Command::Plot(args) => plot::run(args),
        Command::Kernels(args) => kernels::run(args),
        Command::Bench(args) => bench::run(args, engine),
        Command::Info(args) => info::run(args),
        Command::Import(args) => interop::run_import(args),
        Command::Export(args) => interop::run_export(args),
    }
}
