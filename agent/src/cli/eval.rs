use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent::campaign::{TaskConfig, TaskName};
use agent::engine::run::{task_for, worker_command};
use evaluator::config::EvaluatorConfig;
use evaluator::worker::{self, Isolated};
use evaluator::{confirm, ConfirmOptions, Evaluation, Task};

#[derive(clap::Args)]
pub struct Args {
    /// The candidate: an AKL program for `--task drop-in` and `--task recsys`, any file for
    /// `--task command`.
    program: PathBuf,
    /// Which evaluation to run.
    #[arg(long, value_enum, default_value_t = TaskName::DropIn)]
    task: TaskName,
    /// The evaluator's TOML settings (sections `[drop_in]`, `[recsys]`, `[command]`); defaults without
    /// one, but `--task command` needs its `[command]` section.
    #[arg(long)]
    config: Option<PathBuf>,
    /// 0 for the standard slices and seeds; later trials draw fresh ones (confirmation).
    #[arg(long, default_value_t = 0)]
    trial: u32,
    /// Then confirm the score as the engine does before accepting a new best: re-evaluate
    /// on the next trial (fresh slices and seeds) and say whether the score holds within
    /// 10%.
    #[arg(long)]
    confirm: bool,
    /// Print the evaluation (with `--confirm`: `{"evaluation", "confirmation"}`) as JSON.
    #[arg(long)]
    json: bool,
    /// Stop a drop-in or recsys evaluation after this many seconds, recording it as failed at
    /// the `timeout` stage (it then runs in a worker process, as campaigns run it).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
}

/// The worker a campaign (or `eval --timeout`) starts: it builds the task once and answers
/// evaluation requests, one JSON line each, on stdin and stdout.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The campaign's `[task]` table, as JSON.
    #[arg(long)]
    task: String,
    /// What a command task's `{config_dir}` means.
    #[arg(long)]
    config_dir: PathBuf,
}

pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let build = || -> Result<Arc<dyn Task>, String> {
        let task: TaskConfig =
            serde_json::from_str(&args.task).map_err(|e| format!("--task: {e}"))?;
        task_for(&task, &args.config_dir).map_err(|e| format!("{e:#}"))
    };
    let stdout = std::io::stdout();
    worker::serve(build, std::io::stdin().lock(), stdout.lock())?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = super::read_text(&args.program)?;
    let evaluator = match &args.config {
        Some(path) => EvaluatorConfig::load(path)?,
        None => EvaluatorConfig::default(),
    };
    let name = args.task;
    if name == TaskName::Command && evaluator.command.is_none() {
        anyhow::bail!("--task command needs --config FILE with a [command] section");
    }
    // `eval.toml` has the parent "", which means the current directory.
    let dir = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let task = TaskConfig {
        name,
        timeout_seconds: args.timeout.unwrap_or(f64::INFINITY),
        evaluator,
    };
    let task: Arc<dyn Task> = match args.timeout {
        Some(seconds) if name.is_akl() => {
            anyhow::ensure!(
                seconds.is_finite() && seconds > 0.0,
                "--timeout must be a positive number of seconds"
            );
            let command = worker_command(std::env::current_exe()?, &task, &dir)?;
            Arc::new(Isolated::new(
                name.name(),
                command,
                Duration::from_secs_f64(seconds),
            ))
        }
        _ => task_for(&task, &dir)?,
    };
    let evaluation = task.evaluate(&source, args.trial)?;
    let confirmation = match (args.confirm, evaluation.passed) {
        (true, true) => Some(confirm(
            task.as_ref(),
            &source,
            &evaluation,
            &ConfirmOptions::default(),
        )?),
        (true, false) => {
            eprintln!("not confirming: the evaluation did not pass");
            None
        }
        (false, _) => None,
    };
    if args.json {
        let json = match &confirmation {
            Some(c) => serde_json::json!({"evaluation": evaluation, "confirmation": c}),
            None => serde_json::to_value(&evaluation)?,
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_report(&args.program, &evaluation);
        if let Some(c) = &confirmation {
            println!(
                "confirmation: {} ({})",
                if c.holds { "holds" } else { "does not hold" },
                c.reason
            );
        }
    }
    // A script can tell a candidate that failed from one that passed by the exit status.
    if !evaluation.passed {
        anyhow::bail!(
            "the candidate did not pass: it stopped at the {} stage",
            evaluation.stage_reached.name()
        );
    }
    Ok(())
}

/// The stage table, the headline numbers and the feedback.
fn print_report(program: &std::path::Path, e: &Evaluation) {
    println!(
        "{} on {} (trial {}): {}",
        program.display(),
        e.task,
        e.provenance.trial,
        match e.score {
            Some(score) if e.passed => format!("passed, score {score:.4}"),
            _ => format!("failed at {}", e.stage_reached.name()),
        }
    );
    println!("{:<12} {:>8}  result", "stage", "seconds");
    for timing in &e.timings {
        let failed = !e.passed && timing.stage == e.stage_reached;
        println!(
            "{:<12} {:>8.2}  {}",
            timing.stage.name(),
            timing.seconds,
            if failed { "FAILED" } else { "ok" }
        );
    }
    if !e.passed && e.timings.last().is_some_and(|t| t.stage != e.stage_reached) {
        println!("{:<12} {:>8}  FAILED", e.stage_reached.name(), "");
    }
    println!("{:<12} {:>8.2}", "total", e.seconds());
    let headline = [
        "kl_mean",
        "kl_max_mean",
        "ppl_ratio_max",
        "attn_flops_ratio",
        "kv_bytes_held_ratio",
        "kv_bytes_held_measured_ratio",
        "attention_speedup",
        "forward_speedup",
        "ndcg@10",
        "hr@10",
        "latency_ms_p50",
        "train_seconds",
    ];
    for name in headline {
        if let Some(value) = e.metrics.get(name) {
            println!("  {name:<20} {value:.4}");
        }
    }
    println!("{}", e.feedback);
}
