//! `evokernel campaign ...`: campaign progress (running and resuming arrive with the loop).

use std::path::Path;

use agent::campaign::config::Budget;
use agent::campaign::CampaignConfig;
use agent::db::{CampaignProgress, Db};
use clap::Subcommand;
use serde::Serialize;

use super::block_on;
use super::table::{number, render};

#[derive(Subcommand)]
pub enum Command {
    /// Evaluations done and passed, the best score, and each budget used.
    Status {
        /// One campaign (name or id); every campaign otherwise.
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// A campaign's progress beside its budgets.
#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    progress: CampaignProgress,
    /// `None` when the stored config no longer parses.
    budget: Option<Budget>,
}

pub fn run(db_path: &Path, command: Command) -> anyhow::Result<()> {
    let Command::Status { campaign, json } = command;
    block_on(async {
        let db = Db::open_existing(db_path).await?;
        let result = status(&db, campaign.as_deref(), json).await;
        db.close().await?;
        result
    })
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
    ];
    print!("{}", render(&headers, &rows));
    Ok(())
}
