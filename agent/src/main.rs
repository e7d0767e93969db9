//! The `evokernel` command line: a thin layer over the library crates.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "evokernel",
    version,
    about = "Evolves efficient attention kernels on a local inference core"
)]
struct Cli {
    /// Compute threads (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// The discovered-kernel database.
    #[arg(long, global = true, default_value = agent::db::DEFAULT_PATH)]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a GGUF model, streaming it to stdout.
    Generate(cli::generate::Args),
    /// Perplexity of a model on a text file.
    Perplexity(cli::perplexity::Args),
    /// The sequential recommender: train, evaluate, enrich with the local LLM, serve.
    Recsys {
        #[command(subcommand)]
        which: cli::recsys::Command,
    },
    /// Query the discovered kernels in the database.
    Kernels {
        #[command(subcommand)]
        which: cli::kernels::Command,
    },
    /// Campaigns: run, resume, replay, compare, and their progress.
    Campaign {
        #[command(subcommand)]
        which: cli::campaign::Command,
    },
    /// Evaluate a candidate kernel through the evaluator's cascade of checks.
    Eval(cli::eval::Args),
    /// A worker process for campaigns: evaluations requested on stdin, one JSON line each.
    #[command(hide = true)]
    EvalWorker(cli::eval::WorkerArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill and decode speed of our core against candle-transformers on the same GGUF.
    Core(cli::bench::core::CoreArgs),
    /// Attention time against sequence length for exact attention and every training-free
    /// kernel, with fitted exponents and a plot.
    Kernels(cli::bench::kernels::Args),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    if let Err(e) = cli::set_threads(args.threads) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match args.command {
        Command::Generate(a) => cli::generate::run(a, &args.db),
        Command::Perplexity(a) => cli::perplexity::run(a),
        Command::Recsys { which } => cli::recsys::run(&args.db, which),
        Command::Kernels { which } => cli::kernels::run(&args.db, which),
        Command::Campaign { which } => cli::campaign::run(&args.db, which),
        Command::Eval(a) => cli::eval::run(a),
        Command::EvalWorker(a) => cli::eval::run_worker(a),
        Command::Bench {
            which: BenchCommand::Core(a),
        } => cli::bench::core::run_core(a),
        Command::Bench {
            which: BenchCommand::Kernels(a),
        } => cli::bench::kernels::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
