//! Read-only views across tables for the query commands: a program with its results, the
//! best programs by any metric, metric pairs for Pareto fronts, ancestry, campaign progress.
//!
//! A program's value of a metric is the mean over its trials, and a program counts as
//! passed only when every trial passed: elite confirmation reruns a candidate on fresh
//! data, and its results stand together.

use serde::Serialize;

use super::evaluations::indexed_metric;
use super::{Campaign, Db, Error, Result};
use crate::pareto::Direction;

/// A program with its results, as `kernels list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct ProgramSummary {
    pub id: i64,
    pub hash: String,
    pub campaign: String,
    pub island: i64,
    pub generation: i64,
    pub mutator: String,
    pub parent_id: Option<i64>,
    pub second_parent_id: Option<i64>,
    /// Evaluations stored so far (0 while the first is in flight).
    pub trials: i64,
    pub passed: bool,
    /// The stage the latest trial reached.
    pub stage_reached: Option<String>,
    pub score: Option<f64>,
    /// The drop-in task's fidelity, `kl_max_mean`, averaged over the trials.
    pub kl_max_mean: Option<f64>,
    /// The drop-in task's measured `attention_speedup`, averaged over the trials.
    pub attention_speedup: Option<f64>,
    /// The upper end of its confidence interval, the largest over the trials: below 1, the
    /// program is measurably slower than exact attention.
    pub attention_speedup_hi: Option<f64>,
    pub created_at: String,
}

impl ProgramSummary {
    /// Whether its measured attention time is slower than exact attention's beyond the
    /// measurement's noise, in every trial.
    pub fn slower_than_exact(&self) -> bool {
        self.attention_speedup_hi.is_some_and(|hi| hi < 1.0)
    }
}

/// A passed program's value of one or two metrics.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct MetricValue {
    pub program_id: i64,
    pub hash: String,
    pub campaign: String,
    pub value: f64,
    /// Second metric, for Pareto fronts.
    pub other: Option<f64>,
    pub trials: i64,
}

/// One program in an ancestry.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct LineageNode {
    pub id: i64,
    pub hash: String,
    pub parent_id: Option<i64>,
    pub second_parent_id: Option<i64>,
    pub generation: i64,
    pub mutator: String,
    pub score: Option<f64>,
}

/// How far a campaign has got.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CampaignProgress {
    pub campaign: Campaign,
    pub programs: i64,
    pub evaluations: i64,
    /// Evaluations that passed every stage.
    pub passed: i64,
    pub best_score: Option<f64>,
    pub best_program_id: Option<i64>,
    pub llm_tokens: u64,
    /// Seconds spent inside the evaluator, summed over evaluations.
    pub evaluation_seconds: f64,
    /// Seconds spent waiting for language models, summed over calls.
    pub llm_seconds: f64,
}

const SUMMARY_SELECT: &str = "SELECT p.id, p.hash, c.name AS campaign, p.island, p.generation, \
     p.mutator, p.parent_id, p.second_parent_id, count(e.id) AS trials, \
     coalesce(min(e.passed), 0) AS passed, \
     (SELECT stage_reached FROM evaluations WHERE program_id = p.id ORDER BY trial DESC LIMIT 1) \
         AS stage_reached, \
     CASE WHEN min(e.passed) = 1 THEN avg(e.score) END AS score, \
     CASE WHEN min(e.passed) = 1 THEN avg(e.kl_max_mean) END AS kl_max_mean, \
     CASE WHEN min(e.passed) = 1 THEN avg(e.attention_speedup) END AS attention_speedup, \
     CASE WHEN min(e.passed) = 1 THEN \
         max(json_extract(e.metrics_json, '$.attention_speedup_hi')) END \
         AS attention_speedup_hi, p.created_at \
     FROM programs p JOIN campaigns c ON c.id = p.campaign_id \
     LEFT JOIN evaluations e ON e.program_id = p.id";

/// The SQL expression for a metric of evaluation `e`, and the JSON path to bind when it is
/// not an indexed column.
fn metric_expression(metric: &str) -> Result<(String, Option<String>)> {
    if let Some(m) = indexed_metric(metric) {
        return Ok((format!("e.{}", m.column), None));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@.-/:".contains(c);
    if metric.is_empty() || !metric.chars().all(plain) {
        return Err(Error::BadMetric(metric.to_string()));
    }
    Ok((
        "json_extract(e.metrics_json, ?)".to_string(),
        Some(format!("$.\"{metric}\"")),
    ))
}

impl Db {
    /// The newest programs first, with their results; all campaigns unless one is given.
    pub async fn program_summaries(
        &self,
        campaign_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ProgramSummary>> {
        let filter = if campaign_id.is_some() {
            "WHERE p.campaign_id = ?"
        } else {
            ""
        };
        let sql = format!("{SUMMARY_SELECT} {filter} GROUP BY p.id ORDER BY p.id DESC LIMIT ?");
        let mut query = sqlx::query_as(&sql);
        if let Some(id) = campaign_id {
            query = query.bind(id);
        }
        Ok(query.bind(limit).fetch_all(&self.pool).await?)
    }

    /// One program with its results.
    pub async fn program_summary(&self, program_id: i64) -> Result<ProgramSummary> {
        sqlx::query_as(&format!("{SUMMARY_SELECT} WHERE p.id = ? GROUP BY p.id"))
            .bind(program_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NoProgram(program_id.to_string()))
    }

    /// The passed programs with the best values of `metric` (any key of the evaluations'
    /// metrics, or `score`), best first.
    pub async fn best_programs(
        &self,
        metric: &str,
        direction: Direction,
        campaign_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<MetricValue>> {
        self.metric_values(&[metric], Some((direction, limit)), campaign_id)
            .await
    }

    /// Every passed program's values of two metrics (for a Pareto front).
    pub async fn metric_pairs(
        &self,
        x: &str,
        y: &str,
        campaign_id: Option<i64>,
    ) -> Result<Vec<MetricValue>> {
        self.metric_values(&[x, y], None, campaign_id).await
    }

    async fn metric_values(
        &self,
        metrics: &[&str],
        order: Option<(Direction, u32)>,
        campaign_id: Option<i64>,
    ) -> Result<Vec<MetricValue>> {
        let expressions = metrics
            .iter()
            .map(|m| metric_expression(m))
            .collect::<Result<Vec<_>>>()?;
        let value = &expressions[0].0;
        let other = expressions
            .get(1)
            .map_or("NULL".to_string(), |(e, _)| format!("avg({e})"));
        let filter = if campaign_id.is_some() {
            "WHERE p.campaign_id = ?"
        } else {
            ""
        };
        let other_present = if metrics.len() > 1 {
            "AND other IS NOT NULL"
        } else {
            ""
        };
        let tail = match order {
            Some((Direction::Max, _)) => "ORDER BY value DESC, p.id LIMIT ?",
            Some((Direction::Min, _)) => "ORDER BY value ASC, p.id LIMIT ?",
            None => "ORDER BY p.id",
        };
        let sql = format!(
            "SELECT p.id AS program_id, p.hash, c.name AS campaign, avg({value}) AS value, \
             {other} AS other, count(e.id) AS trials \
             FROM programs p JOIN campaigns c ON c.id = p.campaign_id \
             JOIN evaluations e ON e.program_id = p.id {filter} GROUP BY p.id \
             HAVING min(e.passed) = 1 AND value IS NOT NULL {other_present} {tail}"
        );
        let mut query = sqlx::query_as(&sql);
        for path in expressions.iter().filter_map(|(_, path)| path.as_ref()) {
            query = query.bind(path);
        }
        if let Some(id) = campaign_id {
            query = query.bind(id);
        }
        if let Some((_, limit)) = order {
            query = query.bind(limit);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// A program and all its ancestors, through both parents of crossovers.
    pub async fn lineage(&self, program_id: i64) -> Result<Vec<LineageNode>> {
        let nodes: Vec<LineageNode> = sqlx::query_as(
            "WITH RECURSIVE ancestry (id) AS ( \
               SELECT ?1 \
               UNION SELECT p.parent_id FROM programs p JOIN ancestry a ON p.id = a.id \
                 WHERE p.parent_id IS NOT NULL \
               UNION SELECT p.second_parent_id FROM programs p JOIN ancestry a ON p.id = a.id \
                 WHERE p.second_parent_id IS NOT NULL) \
             SELECT p.id, p.hash, p.parent_id, p.second_parent_id, p.generation, p.mutator, \
               (SELECT CASE WHEN min(e.passed) = 1 THEN avg(e.score) END FROM evaluations e \
                WHERE e.program_id = p.id) AS score \
             FROM programs p JOIN ancestry a ON p.id = a.id ORDER BY p.id",
        )
        .bind(program_id)
        .fetch_all(&self.pool)
        .await?;
        if nodes.is_empty() {
            return Err(Error::NoProgram(program_id.to_string()));
        }
        Ok(nodes)
    }

    /// Counts and the best score of a campaign.
    pub async fn campaign_progress(&self, campaign_id: i64) -> Result<CampaignProgress> {
        let campaign = self.campaign(campaign_id).await?;
        let (programs, evaluations, passed, evaluation_seconds, llm_seconds): (
            i64,
            i64,
            i64,
            f64,
            f64,
        ) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM programs WHERE campaign_id = ?1), \
               count(e.id), coalesce(sum(e.passed), 0), coalesce(sum(e.seconds), 0.0), \
               (SELECT coalesce(sum(latency_seconds), 0.0) FROM llm_calls \
                WHERE campaign_id = ?1) \
             FROM evaluations e JOIN programs p ON p.id = e.program_id WHERE p.campaign_id = ?1",
        )
        .bind(campaign_id)
        .fetch_one(&self.pool)
        .await?;
        let best = self
            .best_programs("score", Direction::Max, Some(campaign_id), 1)
            .await?;
        let llm_tokens = self.campaign_llm_tokens(campaign_id).await?;
        Ok(CampaignProgress {
            campaign,
            programs,
            evaluations,
            passed,
            best_score: best.first().map(|b| b.value),
            best_program_id: best.first().map(|b| b.program_id),
            llm_tokens,
            evaluation_seconds,
            llm_seconds,
        })
    }
}
