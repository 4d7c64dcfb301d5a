//! The `alexnet` command.

mod bench;
mod info;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time training and inference of a net on random data, with a per-layer breakdown.
    Bench(bench::BenchArgs),
    /// Show a network's layers, shapes and parameter counts.
    Info(info::InfoArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Info(args) => info::run(args),
    }
}
