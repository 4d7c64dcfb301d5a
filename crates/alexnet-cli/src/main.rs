//! The `alexnet` command.

mod bench;
mod chart;
mod classify;
mod device;
mod digest;
mod dist;
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
mod serve;
mod train;
mod weights;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "alexnet",
    version,
    about = "AlexNet (Krizhevsky, Sutskever, Hinton 2012) in Rust",
    long_about = "AlexNet (Krizhevsky, Sutskever, Hinton 2012) in Rust.\n\n\
        Start here: `alexnet prepare <images or MNIST/CIFAR files> --out data/<name>`, then\n\
        `alexnet train --data data/<name> --arch cifar` (or `bash tools/quickstart.sh` for both)."
)]
struct Cli {
    /// The engine's flags may also come before the command.
    #[command(flatten)]
    engine: engine::EngineArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn image folders or MNIST/CIFAR files into a prepared dataset.
    #[command(
        after_long_help = "Example:\n  alexnet prepare /usr/share/datasets/fashion-mnist --out data/fashion-mnist\n  alexnet prepare imagenet/train --val imagenet/val --out data/imagenet"
    )]
    Prepare(prepare::PrepareArgs),
    /// Train a net on a prepared dataset with the paper's recipe.
    #[command(
        after_long_help = "Example:\n  alexnet train --data data/fashion-mnist --arch cifar --out runs/fashion"
    )]
    Train(train::TrainArgs),
    /// Top-1 and top-5 error of a checkpoint on a dataset split.
    #[command(
        after_long_help = "Example:\n  alexnet eval --checkpoint runs/fashion/best.safetensors --data data/fashion-mnist --ten-crop"
    )]
    Eval(evaluate::EvalArgs),
    /// The most probable classes of image files.
    #[command(
        after_long_help = "Example:\n  alexnet classify --checkpoint runs/fashion/best.safetensors examples/images/*.png"
    )]
    Classify(classify::ClassifyArgs),
    /// Serve a checkpoint over HTTP: classify, features, similar images, a page.
    #[command(
        after_long_help = "Example:\n  alexnet serve --checkpoint runs/fashion/best.safetensors --addr 127.0.0.1:8080\n\nThen open http://127.0.0.1:8080/ or:\n  curl --data-binary @examples/images/cat.jpg 'http://127.0.0.1:8080/v1/classify?top=3'"
    )]
    Serve(serve::ServeArgs),
    /// Write the last hidden layer's activations for a dataset split.
    #[command(
        after_long_help = "Example:\n  alexnet features --checkpoint runs/fashion/best.safetensors --data data/fashion-mnist --out features.safetensors"
    )]
    Features(features::FeaturesArgs),
    /// Find the images nearest to queries by their features (the paper's Figure 4).
    #[command(
        after_long_help = "Example:\n  alexnet similar --features features.safetensors --queries 0,7 --out similar.png"
    )]
    Similar(features::SimilarArgs),
    /// Run one of the paper's experiments (variants of one net, several seeds) and report.
    #[command(after_long_help = "Example:\n  alexnet experiment relu-vs-tanh --data data/cifar10")]
    Experiment(experiment::ExperimentArgs),
    /// Draw training curves from metrics logs (the paper's Figure 1).
    #[command(after_long_help = "Example:\n  alexnet plot runs/fashion --out curves.png")]
    Plot(plot::PlotArgs),
    /// Draw the first layer's kernels (the paper's Figure 3).
    #[command(
        after_long_help = "Example:\n  alexnet kernels --checkpoint runs/imagenet/best.safetensors --out kernels.png"
    )]
    Kernels(kernels::KernelsArgs),
    /// Time training and inference of a net on random data, with a per-layer breakdown.
    #[command(after_long_help = "Example:\n  alexnet bench --arch alexnet --threads 2")]
    Bench(bench::BenchArgs),
    /// Show a network's layers, shapes and parameter counts.
    #[command(after_long_help = "Example:\n  alexnet info --arch alexnet")]
    Info(info::InfoArgs),
    /// Turn weights trained elsewhere (torchvision, Caffe) into a checkpoint.
    #[command(
        after_long_help = "Example:\n  alexnet import torchvision alexnet-owt-7be5be79.pth --out alexnet-owt.safetensors"
    )]
    Import(interop::ImportArgs),
    /// Fetch published ImageNet weights (torchvision, Caffe) into the cache.
    #[command(
        after_long_help = "Example:\n  alexnet weights fetch torchvision --out alexnet-owt.safetensors"
    )]
    Weights(weights::WeightsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_long_help = "Example:\n  alexnet completions bash > ~/.local/share/bash-completion/completions/alexnet"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), made from the same definitions as --help.
    #[command(after_long_help = "Example:\n  alexnet man > alexnet.1 && man ./alexnet.1")]
    Man,
    /// Write a checkpoint in another format (ONNX).
    #[command(
        after_long_help = "Example:\n  alexnet export onnx runs/fashion/best.safetensors --out fashion.onnx"
    )]
    Export(interop::ExportArgs),
}

impl Command {
    /// The engine flags of a command that computes.
    fn engine_args(&self) -> Option<&engine::EngineArgs> {
        match self {
            Command::Train(args) => Some(&args.engine),
            Command::Eval(args) => Some(&args.engine),
            Command::Classify(args) => Some(&args.engine),
            Command::Features(args) => Some(&args.engine),
            Command::Serve(args) => Some(&args.engine),
            Command::Bench(args) => Some(&args.engine),
            Command::Experiment(args) => Some(&args.engine),
            _ => None,
        }
    }

    /// How the processes of a command that may run under a launcher meet.
    fn dist_args(&self) -> Option<&dist::DistArgs> {
        match self {
            Command::Train(args) => Some(&args.dist),
            Command::Eval(args) => Some(&args.dist),
            _ => None,
        }
    }

    /// `--threads` of a command that uses threads without a backend.
    fn threads(&self) -> Option<usize> {
        match self {
            Command::Prepare(args) => args.threads.threads,
            Command::Similar(args) => args.threads.threads,
            _ => None,
        }
    }

    /// The engine flags in force: the command's own, else those before it.
    fn engine_flags(&self, outer: &engine::EngineArgs) -> engine::EngineArgs {
        match self.engine_args() {
            Some(own) => own.clone().or(outer),
            None => engine::EngineArgs {
                threads: self.threads().or(outer.threads),
                ..outer.clone()
            },
        }
    }

    /// Where a command that computes runs; the others run on the CPU.
    fn placement(&self) -> Option<&device::Placement> {
        match self {
            Command::Train(args) => Some(&args.placement),
            Command::Eval(args) => Some(&args.placement),
            Command::Classify(args) => Some(&args.placement),
            Command::Features(args) => Some(&args.placement),
            Command::Serve(args) => Some(&args.placement),
            Command::Bench(args) => Some(&args.placement),
            Command::Experiment(args) => Some(&args.placement),
            _ => None,
        }
    }
}

fn main() -> Result<()> {
    restore_default_sigpipe();
    let cli = Cli::parse();
    if let Some(dist) = cli.command.dist_args() {
        // Before any thread starts: it may set the environment.
        dist::prepare_environment(dist)?;
    }
    let placement = cli.command.placement();
    if let Some(placement) = placement {
        placement.validate()?;
    }
    let device = placement.map_or(device::Device::Cpu, device::Placement::main_device);
    let mut flags = cli.command.engine_flags(&cli.engine);
    if flags.threads.is_none() {
        // Several processes on one machine share its cores.
        flags.threads = dist::default_threads();
    }
    let engine = engine::EngineSettings::from_flags(&flags, device)?;
    if let Command::Serve(args) = cli.command {
        // Not inside the pool: the server's own threads must not take one of
        // the pool's, which its inference worker uses whole.
        return serve::run(args, &engine);
    }
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
        Command::Serve(args) => serve::run(args, engine),
        Command::Similar(args) => features::run_similar(args),
        Command::Experiment(args) => experiment::run(args, engine),
        Command::Plot(args) => plot::run(args),
        Command::Kernels(args) => kernels::run(args),
        Command::Bench(args) => bench::run(args, engine),
        Command::Info(args) => info::run(args),
        Command::Import(args) => interop::run_import(args),
        Command::Weights(args) => weights::run(args),
        Command::Export(args) => interop::run_export(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "alexnet", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// The example lines of each subcommand's long help.
    fn examples() -> Vec<(String, String)> {
        let mut cli = Cli::command();
        cli.build();
        let mut found = Vec::new();
        for sub in cli.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            let help = sub.render_long_help().to_string();
            let lines = help
                .lines()
                .skip_while(|l| !l.starts_with("Example:"))
                .skip(1);
            for line in lines.take_while(|l| l.starts_with("  alexnet ")) {
                let line = line
                    .split(" > ")
                    .next()
                    .unwrap_or(line)
                    .split(" && ")
                    .next()
                    .unwrap_or(line);
                found.push((name.clone(), line.trim().to_string()));
            }
        }
        found
    }

    #[test]
    fn every_subcommand_has_an_example_that_parses() {
        let examples = examples();
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
            assert!(
                examples.iter().any(|(name, _)| name == sub.get_name()),
                "{} has no example in its long help",
                sub.get_name()
            );
        }
        for (name, line) in examples {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("{name}: the example `{line}` does not parse: {e}");
            }
        }
    }

    #[test]
    fn engine_flags_appear_only_where_they_act() {
        let mut cli = Cli::command();
        cli.build();
        let computing = [
            "train",
            "eval",
            "classify",
            "features",
            "serve",
            "bench",
            "experiment",
        ];
        for sub in cli.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            let help = sub.render_long_help().to_string();
            for flag in ["--precision", "--bf16-kernel"] {
                assert_eq!(
                    help.contains(flag),
                    computing.contains(&name.as_str()),
                    "{name} --help and {flag}"
                );
            }
            for flag in ["--conv-algorithms", "--bf16-conv-layout"] {
                assert_eq!(
                    help.contains(flag),
                    cfg!(feature = "cuda") && computing.contains(&name.as_str()),
                    "{name} --help and {flag}"
                );
            }
        }
    }
}
