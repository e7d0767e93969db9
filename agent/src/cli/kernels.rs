//! `evokernel kernels ...`: query the discovered-kernel database.

use std::path::{Path, PathBuf};

use agent::db::{short_hash, Db, MetricValue, ProgramSummary};
use agent::diff::unified_diff;
use agent::lineage::Lineage;
use agent::pareto::{pareto_front, Direction};
use anyhow::Context;
use clap::{Args, Subcommand};
use evaluator::metric;
use serde_json::json;

use super::table::{number, render};
use super::{block_on, campaign_filter};

#[derive(Subcommand)]
pub enum Command {
    /// The newest programs with their results.
    List {
        /// Only this campaign (name or id).
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// A program's text, evaluations (metrics, feedback) and parents.
    Show {
        /// Program id or a unique hash prefix.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The passed programs with the best value of a metric.
    Best(BestArgs),
    /// The programs no other beats on both of two metrics.
    Pareto {
        /// The first metric, as NAME or NAME:max / NAME:min.
        #[arg(long, default_value = "attention_speedup")]
        x: String,
        /// The second metric, as NAME or NAME:max / NAME:min.
        #[arg(long, default_value = "kl_max_mean")]
        y: String,
        /// Only this campaign (name or id).
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A program's ancestry, crossover parents included.
    Lineage {
        /// Program id or a unique hash prefix.
        id: String,
        /// Graphviz DOT instead of a text tree.
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        #[arg(long)]
        json: bool,
    },
    /// A unified line diff of two programs' canonical texts.
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// A program's canonical AKL text.
    Export {
        id: String,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct BestArgs {
    /// Any metric the evaluations recorded, or `score`.
    #[arg(long, default_value = "score")]
    metric: String,
    /// Smaller is better (default: the registered metric's direction; a metric of your own
    /// task needs --min or --max).
    #[arg(long, conflicts_with = "max")]
    min: bool,
    /// Larger is better.
    #[arg(long)]
    max: bool,
    /// Only this campaign (name or id).
    #[arg(long)]
    campaign: Option<String>,
    #[arg(long, default_value_t = 10)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

pub fn run(db_path: &Path, command: Command) -> anyhow::Result<()> {
    block_on(async {
        let db = Db::open_existing(db_path).await?;
        let result = dispatch(&db, command).await;
        db.close().await?;
        result
    })
}

async fn dispatch(db: &Db, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List {
            campaign,
            limit,
            json,
        } => list(db, campaign, limit, json).await,
        Command::Show { id, json } => show(db, &id, json).await,
        Command::Best(args) => best(db, args).await,
        Command::Pareto {
            x,
            y,
            campaign,
            json,
        } => pareto(db, &x, &y, campaign, json).await,
        Command::Lineage { id, dot, json } => lineage(db, &id, dot, json).await,
        Command::Diff { a, b, json } => diff(db, &a, &b, json).await,
        Command::Export { id, out, json } => export(db, &id, out, json).await,
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn list(db: &Db, campaign: Option<String>, limit: u32, json: bool) -> anyhow::Result<()> {
    let campaign_id = campaign_filter(db, campaign.as_deref()).await?;
    let programs = db.program_summaries(campaign_id, limit).await?;
    if json {
        return print_json(&programs);
    }
    let rows: Vec<Vec<String>> = programs
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                short_hash(&p.hash).to_string(),
                p.campaign.clone(),
                p.island.to_string(),
                p.generation.to_string(),
                p.mutator.clone(),
                match (p.trials, p.passed) {
                    (0, _) => "pending".to_string(),
                    (_, true) => "passed".to_string(),
                    (_, false) => format!("failed: {}", p.stage_reached.as_deref().unwrap_or("?")),
                },
                number(p.score),
                number(p.kl_max_mean),
                speed_cell(p),
            ]
        })
        .collect();
    let headers = [
        "id",
        "hash",
        "campaign",
        "island",
        "gen",
        "mutator",
        "result",
        "score",
        "kl_max_mean",
        "attention_speedup",
    ];
    print!("{}", render(&headers, &rows));
    Ok(())
}

async fn show(db: &Db, reference: &str, json: bool) -> anyhow::Result<()> {
    let program = db.resolve_program(reference).await?;
    let summary = db.program_summary(program.id).await?;
    let evaluations = db.program_evaluations(program.id).await?;
    if json {
        return print_json(&json!({
            "program": program,
            "campaign": summary.campaign,
            "passed": summary.passed,
            "score": summary.score,
            "evaluations": evaluations,
        }));
    }
    let mut out = format!(
        "program #{} in campaign {}\nhash        {}\nisland {}, generation {}, made by {}\n",
        program.id,
        summary.campaign,
        program.hash,
        program.island,
        program.generation,
        program.mutator
    );
    for (label, parent) in [
        ("parent", program.parent_id),
        ("2nd parent", program.second_parent_id),
    ] {
        if let Some(id) = parent {
            let parent = db.program(id).await?;
            out.push_str(&format!("{label:<11} #{id} {}\n", short_hash(&parent.hash)));
        }
    }
    out.push_str(&format!("created     {}\n", program.created_at));
    if let Some(proposal) = &program.proposal {
        out.push_str(&format!("proposal    {}\n", proposal.trim()));
    }
    if evaluations.is_empty() {
        out.push_str("\nnot evaluated yet\n");
    }
    for stored in &evaluations {
        let e = &stored.evaluation;
        let verdict = if e.passed {
            "passed".to_string()
        } else {
            format!("failed at {}", e.stage_reached.name())
        };
        out.push_str(&format!(
            "\ntrial {} ({}): {verdict}, score {}, {:.1} s\n",
            e.provenance.trial,
            e.task,
            number(e.score),
            e.seconds()
        ));
        for (name, value) in &e.metrics {
            let note = match metric::lookup(name) {
                Some(m) if m.estimate => format!("  {} (cost-model estimate)", m.unit),
                Some(m) => format!("  {}", m.unit),
                None => String::new(),
            };
            out.push_str(&format!("  {name:<24} {}{note}\n", number(Some(*value))));
        }
        if !e.feedback.trim().is_empty() {
            out.push_str("  feedback:\n");
            for line in e.feedback.trim().lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out.push_str(&format!("\n{}\n", program.canonical_text.trim_end()));
    print!("{out}");
    Ok(())
}

/// A metric and its direction from `NAME`, `NAME:max` or `NAME:min`; without a suffix,
/// the registered metric's direction (an unregistered metric needs the suffix).
pub(super) fn metric_spec(spec: &str) -> anyhow::Result<(String, Direction)> {
    let (name, direction) = match spec.rsplit_once(':') {
        Some((name, "max")) => (name, Direction::Max),
        Some((name, "min")) => (name, Direction::Min),
        Some((_, other)) => {
            anyhow::bail!("`{spec}`: the direction after `:` must be `max` or `min`, not `{other}`")
        }
        None => (spec, metric::direction(spec)?),
    };
    Ok((name.to_string(), direction))
}

/// The measured speed-up as a cell: `1.45×`, or `0.73× slower` when it is slower than exact
/// attention beyond noise, or `-` when the task measures none.
fn speed_cell(p: &ProgramSummary) -> String {
    match p.attention_speedup {
        Some(s) if p.slower_than_exact() => format!("{s:.2}× slower"),
        Some(s) => format!("{s:.2}×"),
        None => "-".to_string(),
    }
}

/// A program's measured speed-up and fidelity as a phrase (empty when it has neither):
/// what a user deploys for, beside whatever it was ranked by.
pub(super) fn measured(p: &ProgramSummary) -> String {
    match (p.attention_speedup, p.kl_max_mean) {
        (Some(_), Some(kl)) => format!("; attention {} exact's speed, KL {kl:.4}", speed_cell(p)),
        (Some(_), None) => format!("; attention {} exact's speed", speed_cell(p)),
        (None, Some(kl)) => format!("; KL {kl:.4}"),
        (None, None) => String::new(),
    }
}

async fn best(db: &Db, args: BestArgs) -> anyhow::Result<()> {
    let direction = match (args.min, args.max) {
        (true, _) => Direction::Min,
        (_, true) => Direction::Max,
        _ => metric::direction(&args.metric)?,
    };
    let campaign_id = campaign_filter(db, args.campaign.as_deref()).await?;
    let best = db
        .best_programs(&args.metric, direction, campaign_id, args.limit)
        .await?;
    let mut summaries = Vec::with_capacity(best.len());
    for v in &best {
        summaries.push(db.program_summary(v.program_id).await?);
    }
    if args.json {
        return print_json(&json!({
            "metric": args.metric,
            "direction": direction,
            "programs": best.iter().zip(&summaries).map(|(v, p)| json!({
                "program_id": v.program_id,
                "hash": v.hash,
                "campaign": v.campaign,
                "trials": v.trials,
                "value": v.value,
                "kl_max_mean": p.kl_max_mean,
                "attention_speedup": p.attention_speedup,
                "slower_than_exact": p.slower_than_exact(),
            })).collect::<Vec<_>>(),
        }));
    }
    if best.is_empty() {
        println!("no passed program has a value for `{}`", args.metric);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = value_rows(&best, |v| vec![number(Some(v.value))])
        .into_iter()
        .zip(&summaries)
        .map(|(mut row, p)| {
            row.extend([number(p.kl_max_mean), speed_cell(p)]);
            row
        })
        .collect();
    let headers = [
        "id",
        "hash",
        "campaign",
        "trials",
        args.metric.as_str(),
        "kl_max_mean",
        "attention_speedup",
    ];
    print!("{}", render(&headers, &rows));
    if summaries[0].slower_than_exact() {
        println!(
            "#{} ranks first by {} but runs measurably slower than exact attention: it is \
             not a faster kernel.",
            summaries[0].id, args.metric
        );
    }
    Ok(())
}

/// Table rows for metric values: id, hash, campaign, trials, then `values`.
fn value_rows(
    values: &[MetricValue],
    cells: impl Fn(&MetricValue) -> Vec<String>,
) -> Vec<Vec<String>> {
    values
        .iter()
        .map(|v| {
            let mut row = vec![
                v.program_id.to_string(),
                short_hash(&v.hash).to_string(),
                v.campaign.clone(),
                v.trials.to_string(),
            ];
            row.extend(cells(v));
            row
        })
        .collect()
}

async fn pareto(
    db: &Db,
    x: &str,
    y: &str,
    campaign: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (x, x_direction) = metric_spec(x)?;
    let (y, y_direction) = metric_spec(y)?;
    let campaign_id = campaign_filter(db, campaign.as_deref()).await?;
    let values = db.metric_pairs(&x, &y, campaign_id).await?;
    let points: Vec<[f64; 2]> = values
        .iter()
        .map(|v| [v.value, v.other.unwrap_or(f64::NAN)])
        .collect();
    let front: Vec<MetricValue> = pareto_front(&points, [x_direction, y_direction])
        .into_iter()
        .map(|i| values[i].clone())
        .collect();
    if json {
        return print_json(&json!({
            "x": {"metric": x, "direction": x_direction},
            "y": {"metric": y, "direction": y_direction},
            "candidates": values.len(),
            "front": front.iter().map(|v| json!({
                "program_id": v.program_id,
                "hash": v.hash,
                "campaign": v.campaign,
                "trials": v.trials,
                "x": v.value,
                "y": v.other,
            })).collect::<Vec<_>>(),
        }));
    }
    println!(
        "Pareto front of {} passed programs: {x} ({}) against {y} ({})",
        values.len(),
        x_direction.name(),
        y_direction.name()
    );
    let rows = value_rows(&front, |v| vec![number(Some(v.value)), number(v.other)]);
    print!(
        "{}",
        render(&["id", "hash", "campaign", "trials", &x, &y], &rows)
    );
    Ok(())
}

async fn lineage(db: &Db, reference: &str, dot: bool, json: bool) -> anyhow::Result<()> {
    let program = db.resolve_program(reference).await?;
    let nodes = db.lineage(program.id).await?;
    if json {
        return print_json(&json!({ "program_id": program.id, "ancestry": nodes }));
    }
    let lineage = Lineage::new(nodes, program.id)
        .with_context(|| format!("program #{} is missing from its own lineage", program.id))?;
    if dot {
        print!("{}", lineage.to_dot());
    } else {
        print!("{}", lineage.to_tree());
    }
    Ok(())
}

async fn diff(db: &Db, a: &str, b: &str, json: bool) -> anyhow::Result<()> {
    let a = db.resolve_program(a).await?;
    let b = db.resolve_program(b).await?;
    let text = unified_diff(
        &a.canonical_text,
        &b.canonical_text,
        &format!("#{} {}", a.id, short_hash(&a.hash)),
        &format!("#{} {}", b.id, short_hash(&b.hash)),
        3,
    );
    if json {
        return print_json(&json!({ "a": a.id, "b": b.id, "diff": text }));
    }
    print!("{text}");
    Ok(())
}

async fn export(db: &Db, reference: &str, out: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let program = db.resolve_program(reference).await?;
    let mut text = program.canonical_text.clone();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if let Some(path) = &out {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        return print_json(&json!({
            "id": program.id,
            "hash": program.hash,
            "text": program.canonical_text,
            "written_to": out,
        }));
    }
    if out.is_none() {
        print!("{text}");
    }
    Ok(())
}
