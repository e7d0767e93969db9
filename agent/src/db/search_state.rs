//! What a campaign learns as it goes and a resume must not forget: the MAP-Elites archive,
//! insights for the research stage, and the mutator bandit's statistics.

use serde::Serialize;

use super::{Db, Result};

/// The elite of one descriptor cell on one island.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct ArchiveCell {
    pub island: i64,
    pub cell_key: String,
    pub program_id: i64,
    pub updated_at: String,
}

/// A lesson the campaign wrote down, for later research prompts.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct Insight {
    pub id: i64,
    pub text: String,
    pub source_program_id: Option<i64>,
    pub created_at: String,
}

/// One use of a mutator: whether its child improved on its parent, and the reward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MutatorOutcome<'a> {
    pub mutator: &'a str,
    pub improved: bool,
    pub reward: f64,
}

pub(super) async fn record_outcome(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    campaign_id: i64,
    outcome: &MutatorOutcome<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO mutator_stats (campaign_id, mutator, uses, improvements, reward_sum) \
         VALUES (?, ?, 1, ?, ?) ON CONFLICT (campaign_id, mutator) DO UPDATE SET \
         uses = uses + 1, improvements = improvements + excluded.improvements, \
         reward_sum = reward_sum + excluded.reward_sum",
    )
    .bind(campaign_id)
    .bind(outcome.mutator)
    .bind(i64::from(outcome.improved))
    .bind(outcome.reward)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The bandit's running totals for one mutator.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct MutatorStats {
    pub mutator: String,
    pub uses: i64,
    pub improvements: i64,
    pub reward_sum: f64,
}

impl Db {
    /// Makes `program_id` the elite of a cell, replacing the one before.
    pub async fn set_archive_cell(
        &self,
        campaign_id: i64,
        island: u32,
        cell_key: &str,
        program_id: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO archive_cells (campaign_id, island, cell_key, program_id) \
             VALUES (?, ?, ?, ?) ON CONFLICT (campaign_id, island, cell_key) DO UPDATE SET \
             program_id = excluded.program_id, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        )
        .bind(campaign_id)
        .bind(island)
        .bind(cell_key)
        .bind(program_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A campaign's archive, by island and cell.
    pub async fn archive_cells(&self, campaign_id: i64) -> Result<Vec<ArchiveCell>> {
        Ok(sqlx::query_as(
            "SELECT island, cell_key, program_id, updated_at FROM archive_cells \
             WHERE campaign_id = ? ORDER BY island, cell_key",
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn insert_insight(
        &self,
        campaign_id: i64,
        text: &str,
        source_program_id: Option<i64>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO insights (campaign_id, text, source_program_id) VALUES (?, ?, ?) \
             RETURNING id",
        )
        .bind(campaign_id)
        .bind(text)
        .bind(source_program_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// A campaign's insights, oldest first.
    pub async fn insights(&self, campaign_id: i64) -> Result<Vec<Insight>> {
        Ok(sqlx::query_as(
            "SELECT id, text, source_program_id, created_at FROM insights \
             WHERE campaign_id = ? ORDER BY id",
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Counts one use of a mutator that produced nothing to evaluate (a failed or
    /// duplicate proposal); uses with an evaluation go through [`Db::store_evaluation`].
    pub async fn record_mutator_outcome(
        &self,
        campaign_id: i64,
        outcome: &MutatorOutcome<'_>,
    ) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        record_outcome(&mut tx, campaign_id, outcome).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A campaign's mutator statistics, by mutator name.
    pub async fn mutator_stats(&self, campaign_id: i64) -> Result<Vec<MutatorStats>> {
        Ok(sqlx::query_as(
            "SELECT mutator, uses, improvements, reward_sum FROM mutator_stats \
             WHERE campaign_id = ? ORDER BY mutator",
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
