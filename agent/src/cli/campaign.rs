//! `evokernel campaign ...`: run, resume, replay and compare campaigns, and show their
//! progress.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use agent::campaign::config::Budget;
use agent::campaign::{CampaignConfig, Strategy};
use agent::db::{
    short_hash, Campaign, CampaignProgress, CampaignStatus, Db, MetricValue, ProgramSummary,
};
use agent::engine::run::{self, Options, Summary};
use agent::llm::replay::ReplayBook;
use agent::pareto::{hypervolume, pareto_front, Direction};
use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use super::block_on;
use super::kernels::metric_spec;
use super::table::{number, render};

#[derive(Subcommand)]
pub enum Command {
    /// Start a campaign from its TOML config and run it until a budget is spent.
    Run {
        /// The campaign config (not needed with --replay, which reuses the recorded one).
        config: Option<PathBuf>,
        /// Store it under this name instead of the config's.
        #[arg(long)]
        name: Option<String>,
        /// Override the config's strategy: `random` is the baseline at the same budget.
        #[arg(long, value_parser = ["evolve", "random"])]
        strategy: Option<String>,
        /// Rerun a stored campaign with every LLM call answered from its recording (no
        /// model is loaded).
        #[arg(long, value_name = "CAMPAIGN")]
        replay: Option<String>,
    },
    /// Continue a campaign that was interrupted or killed, losing at most the work that was
    /// in flight.
    Resume {
        /// The campaign's name or id.
        campaign: String,
    },
    /// Evaluations done and passed, the best score, and each budget used.
    Status {
        /// One campaign (name or id); every campaign otherwise.
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Two campaigns' Pareto fronts and hypervolumes, against the same reference point.
    Compare {
        a: String,
        b: String,
        /// The first objective: a metric, optionally `:max` or `:min`.
        #[arg(long, default_value = "score")]
        x: String,
        /// The second objective.
        #[arg(long, default_value = "kl_max_mean")]
        y: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(db_path: &Path, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            name,
            strategy,
            replay,
        } => run_campaign(db_path, config, name, strategy, replay),
        Command::Resume { campaign } => drive(db_path, |db| async move {
            let campaign = db.campaign_by_name(&campaign).await?;
            if campaign.status == CampaignStatus::Finished {
                bail!(
                    "campaign `{}` has finished: its budget is spent (start another with \
                     `campaign run CONFIG --name NEW`)",
                    campaign.name
                );
            }
            Ok((campaign, None))
        }),
        Command::Status { campaign, json } => block_on(async {
            let db = Db::open_existing(db_path).await?;
            let result = status(&db, campaign.as_deref(), json).await;
            db.close().await?;
            result
        }),
        Command::Compare { a, b, x, y, json } => block_on(async {
            let db = Db::open_existing(db_path).await?;
            let result = compare(&db, [&a, &b], &x, &y, json).await;
            db.close().await?;
            result
        }),
    }
}

fn run_campaign(
    db_path: &Path,
    config_path: Option<PathBuf>,
    name: Option<String>,
    strategy: Option<String>,
    replay: Option<String>,
) -> anyhow::Result<()> {
    // A config file is read and its seeds checked before the database is touched.
    let loaded = match &config_path {
        Some(path) => {
            let config = CampaignConfig::load(path)?;
            config.seed_programs(path)?;
            Some((config, super::read_text(path)?))
        }
        None => None,
    };
    drive(db_path, |db| async move {
        let source = match &replay {
            Some(source) => Some(db.campaign_by_name(source).await?),
            None => None,
        };
        let (config, text) = match (loaded, &source) {
            (Some(loaded), _) => loaded,
            (None, Some(source)) => (run::stored_config(source)?, source.config_toml.clone()),
            (None, None) => bail!("give the campaign config file (or --replay CAMPAIGN)"),
        };
        let strategy = match (&strategy, &source) {
            (Some(s), _) => Strategy::parse(s).expect("clap checked it"),
            (None, Some(source)) => source.strategy,
            (None, None) => config.strategy,
        };
        let name = name.unwrap_or_else(|| match (&source, strategy) {
            (Some(source), _) => format!("{}-replay", source.name),
            (None, s) if s != config.strategy => format!("{}-{}", config.name, s.name()),
            (None, _) => config.name.clone(),
        });
        if let Ok(existing) = db.campaign_by_name(&name).await {
            bail!(
                "a campaign named `{name}` already exists in {} ({}); give another --name{}",
                db.path().display(),
                existing.status.name(),
                if existing.status == CampaignStatus::Finished {
                    String::new()
                } else {
                    format!(", or continue it with `evokernel campaign resume {name}`")
                }
            );
        }
        let book = match &source {
            Some(source) => Some(ReplayBook::new(
                &source.name,
                db.campaign_llm_calls(source.id).await?,
            )),
            None => None,
        };
        let campaign = run::create(&db, &config, &text, &name, strategy).await?;
        Ok((campaign, book))
    })
}

/// Opens the database, decides which campaign to run, and runs it with a progress bar and
/// logs, on a runtime whose blocking evaluations are abandoned (not awaited) on Ctrl-C.
fn drive<F, Fut>(db_path: &Path, choose: F) -> anyhow::Result<()>
where
    F: FnOnce(Db) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Campaign, Option<ReplayBook>)>>,
{
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} evaluations  {msg}",
        )
        .expect("a valid template"),
    );
    init_logs(&progress);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let result = runtime.block_on(async {
        let db = Db::open(db_path).await?;
        let (campaign, replay) = choose(db.clone()).await?;
        tracing::info!(
            "campaign `{}` ({}) in {}",
            campaign.name,
            campaign.strategy.name(),
            db.path().display()
        );
        let summary = run::run(
            &db,
            &campaign,
            Options {
                progress,
                replay,
                worker: Some(std::env::current_exe()?),
            },
        )
        .await;
        let best = match &summary {
            Ok(Summary {
                best: Some((id, _)),
                ..
            }) => Some(db.program_summary(*id).await?),
            _ => None,
        };
        db.close().await?;
        summary.map(|s| (s, best))
    });
    runtime.shutdown_background();
    let (summary, best) = result?;
    print_summary(&summary, best.as_ref());
    Ok(())
}

/// Logs go to stderr above the progress bar; `RUST_LOG` overrides the `info` default.
pub(super) fn init_logs(progress: &ProgressBar) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let bar = progress.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(move || BarWriter {
            bar: bar.clone(),
            line: Vec::new(),
        })
        .try_init();
}

/// Writes a log line with the progress bar lifted out of the way.
struct BarWriter {
    bar: ProgressBar,
    line: Vec<u8>,
}

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarWriter {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.line);
        self.bar.suspend(|| {
            let _ = std::io::stderr().write_all(&line);
        });
    }
}

fn print_summary(s: &Summary, best: Option<&ProgramSummary>) {
    println!(
        "campaign {}: {} ({})",
        s.campaign,
        s.status.name(),
        s.reason
    );
    println!(
        "  evaluations  {} this run, {} in all; {:.0} per hour",
        s.evaluations_this_run,
        s.evaluations_total,
        s.evaluations_per_hour()
    );
    match (s.best, best) {
        (Some((id, score)), Some(program)) => {
            let label = if program.slower_than_exact() {
                "top score"
            } else {
                "best"
            };
            println!(
                "  {label:<12} #{id}, score {score:.4}{} (`evokernel kernels show {id}`)",
                super::kernels::measured(program)
            );
            if program.slower_than_exact() {
                println!(
                    "               it runs measurably slower than exact attention: no \
                     program of this run is a faster kernel"
                );
            }
        }
        _ => println!("  best         none passed"),
    }
    let share = |x: f64| 100.0 * x / s.wall_seconds.max(1e-9);
    println!(
        "  wall         {:.0} s: evaluator {:.0} s ({:.0}%), models {:.0} s ({:.0}%), \
         engine and waiting {:.1}%",
        s.wall_seconds,
        s.evaluation_seconds,
        share(s.evaluation_seconds),
        s.llm_seconds,
        share(s.llm_seconds),
        100.0 * s.overhead_share()
    );
}

/// A campaign's progress beside its budgets.
#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    progress: CampaignProgress,
    /// `None` when the stored config no longer parses.
    budget: Option<Budget>,
}

async fn status(db: &Db, campaign: Option<&str>, json: bool) -> anyhow::Result<()> {
    let campaigns = match campaign {
        Some(name) => vec![db.campaign_by_name(name).await?],
        None => db.campaigns().await?,
    };
    let mut statuses = Vec::with_capacity(campaigns.len());
    for c in campaigns {
        let origin = Path::new("(stored with the campaign)");
        let budget = CampaignConfig::from_toml(&c.config_toml, origin)
            .ok()
            .map(|config| config.budget);
        statuses.push(Status {
            progress: db.campaign_progress(c.id).await?,
            budget,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(());
    }
    if statuses.is_empty() {
        println!("no campaigns in {}", db.path().display());
        return Ok(());
    }
    let of = |used: String, budget: Option<u64>| match budget {
        Some(b) => format!("{used}/{b}"),
        None => used,
    };
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let p = &s.progress;
            let budget = s.budget.as_ref();
            vec![
                p.campaign.id.to_string(),
                p.campaign.name.clone(),
                p.campaign.strategy.name().to_string(),
                p.campaign.status.name().to_string(),
                p.programs.to_string(),
                of(p.evaluations.to_string(), budget.map(|b| b.evaluations)),
                p.passed.to_string(),
                match p.best_program_id {
                    Some(id) => format!("{} (#{id})", number(p.best_score)),
                    None => "-".to_string(),
                },
                of(
                    format!("{:.0}", p.campaign.elapsed_seconds),
                    budget.and_then(|b| b.wall_seconds),
                ),
                of(p.llm_tokens.to_string(), budget.and_then(|b| b.llm_tokens)),
                format!("{:.0}", p.evaluation_seconds),
                format!("{:.0}", p.llm_seconds),
            ]
        })
        .collect();
    let headers = [
        "id",
        "campaign",
        "strategy",
        "status",
        "programs",
        "evaluations",
        "passed",
        "best score",
        "wall s",
        "llm tokens",
        "eval s",
        "llm s",
    ];
    print!("{}", render(&headers, &rows));
    Ok(())
}

/// One campaign's side of a comparison.
#[derive(Serialize)]
struct Side {
    campaign: String,
    strategy: &'static str,
    evaluations: i64,
    passed: i64,
    best_score: Option<f64>,
    front: Vec<MetricValue>,
    hypervolume: f64,
}

async fn compare(db: &Db, names: [&str; 2], x: &str, y: &str, json: bool) -> anyhow::Result<()> {
    let (x, x_direction) = metric_spec(x)?;
    let (y, y_direction) = metric_spec(y)?;
    let directions = [x_direction, y_direction];
    let mut campaigns = Vec::new();
    for name in names {
        let campaign = db.campaign_by_name(name).await?;
        let values = db.metric_pairs(&x, &y, Some(campaign.id)).await?;
        campaigns.push((campaign, values));
    }
    // One reference point for both: the worst value of each objective over both campaigns,
    // so that the hypervolumes measure the same region.
    let all: Vec<[f64; 2]> = campaigns
        .iter()
        .flat_map(|(_, values)| values.iter().map(point))
        .filter(|p| p.iter().all(|v| v.is_finite()))
        .collect();
    let worst = |axis: usize| {
        let values = all.iter().map(|p| p[axis]);
        match directions[axis] {
            Direction::Max => values.fold(f64::INFINITY, f64::min),
            Direction::Min => values.fold(f64::NEG_INFINITY, f64::max),
        }
    };
    let reference = [worst(0), worst(1)];
    let mut sides = Vec::new();
    for (campaign, values) in campaigns {
        let progress = db.campaign_progress(campaign.id).await?;
        let points: Vec<[f64; 2]> = values.iter().map(point).collect();
        let front = pareto_front(&points, directions)
            .into_iter()
            .map(|i| values[i].clone())
            .collect();
        let volume = if all.is_empty() {
            0.0
        } else {
            hypervolume(&points, directions, reference)
        };
        sides.push(Side {
            campaign: campaign.name,
            strategy: campaign.strategy.name(),
            evaluations: progress.evaluations,
            passed: progress.passed,
            best_score: progress.best_score,
            front,
            hypervolume: volume,
        });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "x": {"metric": x, "direction": x_direction},
                "y": {"metric": y, "direction": y_direction},
                "reference": reference,
                "campaigns": sides,
            }))?
        );
        return Ok(());
    }
    for side in &sides {
        println!(
            "{} ({}): {} evaluations, {} passed, best score {}; hypervolume {:.6}",
            side.campaign,
            side.strategy,
            side.evaluations,
            side.passed,
            number(side.best_score),
            side.hypervolume
        );
        let rows: Vec<Vec<String>> = side
            .front
            .iter()
            .map(|v| {
                vec![
                    v.program_id.to_string(),
                    short_hash(&v.hash).to_string(),
                    number(Some(v.value)),
                    number(v.other),
                ]
            })
            .collect();
        print!("{}", render(&["id", "hash", &x, &y], &rows));
        println!();
    }
    println!(
        "hypervolume of {x} ({}) against {y} ({}), reference point ({}, {})",
        x_direction.name(),
        y_direction.name(),
        number(Some(reference[0])),
        number(Some(reference[1]))
    );
    Ok(())
}

fn point(v: &MetricValue) -> [f64; 2] {
    [v.value, v.other.unwrap_or(f64::NAN)]
}
