//! The campaigns table: one row per run of the engine, with its config.

use serde::Serialize;

use super::{Db, Error, Result};
use crate::campaign::Strategy;

/// How a campaign ended, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Running,
    /// A budget ran out.
    Finished,
    /// Interrupted (Ctrl-C); it can be resumed.
    Stopped,
    Failed,
}

impl CampaignStatus {
    pub fn name(self) -> &'static str {
        match self {
            CampaignStatus::Running => "running",
            CampaignStatus::Finished => "finished",
            CampaignStatus::Stopped => "stopped",
            CampaignStatus::Failed => "failed",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            CampaignStatus::Running,
            CampaignStatus::Finished,
            CampaignStatus::Stopped,
            CampaignStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// A campaign to create.
#[derive(Clone, Debug)]
pub struct NewCampaign<'a> {
    pub name: &'a str,
    /// The TOML text the campaign was started from.
    pub config_toml: &'a str,
    pub seed: u64,
    pub strategy: Strategy,
    /// The directory the config file was in (relative paths in the config start there).
    pub config_dir: Option<&'a str>,
}

/// A stored campaign.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Campaign {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub config_toml: String,
    pub seed: u64,
    pub strategy: Strategy,
    #[serde(skip)]
    pub config_dir: Option<String>,
    pub status: CampaignStatus,
    pub elapsed_seconds: f64,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CampaignRow {
    id: i64,
    name: String,
    config_toml: String,
    seed: i64,
    strategy: String,
    config_dir: Option<String>,
    status: String,
    elapsed_seconds: f64,
    created_at: String,
    finished_at: Option<String>,
}

impl TryFrom<CampaignRow> for Campaign {
    type Error = Error;

    fn try_from(row: CampaignRow) -> Result<Campaign> {
        let status = CampaignStatus::parse(&row.status).ok_or_else(|| Error::Corrupt {
            table: "campaigns",
            row: row.id,
            detail: format!("unknown status `{}`", row.status),
        })?;
        let strategy = Strategy::parse(&row.strategy).ok_or_else(|| Error::Corrupt {
            table: "campaigns",
            row: row.id,
            detail: format!("unknown strategy `{}`", row.strategy),
        })?;
        Ok(Campaign {
            id: row.id,
            name: row.name,
            config_toml: row.config_toml,
            // Stored bit for bit: SQLite integers are signed.
            seed: row.seed as u64,
            strategy,
            config_dir: row.config_dir,
            status,
            elapsed_seconds: row.elapsed_seconds,
            created_at: row.created_at,
            finished_at: row.finished_at,
        })
    }
}

const CAMPAIGN_COLUMNS: &str =
    "id, name, config_toml, seed, strategy, config_dir, status, elapsed_seconds, created_at, \
     finished_at";

impl Db {
    /// Creates a running campaign and returns its id.
    pub async fn create_campaign(&self, campaign: &NewCampaign<'_>) -> Result<i64> {
        let inserted = sqlx::query_scalar(
            "INSERT INTO campaigns (name, config_toml, seed, strategy, config_dir) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(campaign.name)
        .bind(campaign.config_toml)
        .bind(campaign.seed as i64)
        .bind(campaign.strategy.name())
        .bind(campaign.config_dir)
        .fetch_optional(&self.pool)
        .await?;
        inserted.ok_or_else(|| Error::CampaignExists(campaign.name.to_string()))
    }

    /// The campaign with this id.
    pub async fn campaign(&self, id: i64) -> Result<Campaign> {
        let row: Option<CampaignRow> = sqlx::query_as(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or_else(|| Error::NoCampaign(id.to_string()))?
            .try_into()
    }

    /// The campaign called `name`, or with id `name` when it is a number no campaign is called.
    pub async fn campaign_by_name(&self, name: &str) -> Result<Campaign> {
        let row: Option<CampaignRow> = sqlx::query_as(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE name = ?1 \
             OR (CAST(id AS TEXT) = ?1 AND NOT EXISTS (SELECT 1 FROM campaigns WHERE name = ?1))"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or_else(|| Error::NoCampaign(name.to_string()))?
            .try_into()
    }

    /// Every campaign, oldest first.
    pub async fn campaigns(&self) -> Result<Vec<Campaign>> {
        let rows: Vec<CampaignRow> = sqlx::query_as(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Campaign::try_from).collect()
    }

    /// Adds to the wall time a campaign has run (the loop calls this as it goes, so that
    /// the wall-time budget holds across resumes).
    pub async fn add_campaign_elapsed(&self, id: i64, seconds: f64) -> Result<()> {
        let updated =
            sqlx::query("UPDATE campaigns SET elapsed_seconds = elapsed_seconds + ? WHERE id = ?")
                .bind(seconds)
                .bind(id)
                .execute(&self.pool)
                .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::NoCampaign(id.to_string()));
        }
        Ok(())
    }

    /// Records how a campaign ended; `Running` reopens it (resume) and clears `finished_at`.
    pub async fn set_campaign_status(&self, id: i64, status: CampaignStatus) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE campaigns SET status = ?1, finished_at = CASE WHEN ?1 = 'running' THEN NULL \
             ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END WHERE id = ?2",
        )
        .bind(status.name())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::NoCampaign(id.to_string()));
        }
        Ok(())
    }
}
