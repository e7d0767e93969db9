//! The evaluations table: every result the evaluator returned, one row per trial.

use std::collections::BTreeMap;

use evaluator::{Evaluation, Provenance, Stage, StageTiming};
use serde::Serialize;

use super::{Db, Error, MutatorOutcome, Result};

/// A registered metric (`evaluator::metric`) with a column of its own, so that sorting by it
/// can use an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedMetric {
    /// The name in `Evaluation::metrics`, or `score`.
    pub name: &'static str,
    pub column: &'static str,
}

/// The metrics copied into columns of their own (each has one in `migrations/`).
pub const INDEXED_METRICS: &[IndexedMetric] = &[
    IndexedMetric {
        name: "score",
        column: "score",
    },
    IndexedMetric {
        name: "kl_max_mean",
        column: "kl_max_mean",
    },
    IndexedMetric {
        name: "attention_speedup",
        column: "attention_speedup",
    },
    IndexedMetric {
        name: "attn_flops_ratio",
        column: "attn_flops_ratio",
    },
    IndexedMetric {
        name: "kv_bytes_held_ratio",
        column: "kv_bytes_held_ratio",
    },
    IndexedMetric {
        name: "ndcg@10",
        column: "ndcg_at_10",
    },
];

/// The indexed column of a metric, if it has one.
pub(super) fn indexed_metric(name: &str) -> Option<&'static IndexedMetric> {
    INDEXED_METRICS.iter().find(|m| m.name == name)
}

/// An evaluation as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredEvaluation {
    pub id: i64,
    pub program_id: i64,
    pub created_at: String,
    pub evaluation: Evaluation,
}

#[derive(sqlx::FromRow)]
struct EvaluationRow {
    id: i64,
    program_id: i64,
    hash: String,
    task: String,
    passed: bool,
    stage_reached: String,
    score: Option<f64>,
    metrics_json: String,
    descriptors_json: String,
    feedback: String,
    timings_json: String,
    provenance_json: String,
    created_at: String,
}

impl TryFrom<EvaluationRow> for StoredEvaluation {
    type Error = Error;

    fn try_from(row: EvaluationRow) -> Result<StoredEvaluation> {
        let corrupt = |detail: String| Error::Corrupt {
            table: "evaluations",
            row: row.id,
            detail,
        };
        fn json<T: serde::de::DeserializeOwned>(
            column: &str,
            text: &str,
        ) -> std::result::Result<T, String> {
            serde_json::from_str(text).map_err(|e| format!("{column}: {e}"))
        }
        let stage_reached: Stage =
            json("stage_reached", &format!("\"{}\"", row.stage_reached)).map_err(&corrupt)?;
        let metrics: BTreeMap<String, f64> =
            json("metrics_json", &row.metrics_json).map_err(&corrupt)?;
        let descriptors: BTreeMap<String, f64> =
            json("descriptors_json", &row.descriptors_json).map_err(&corrupt)?;
        let timings: Vec<StageTiming> =
            json("timings_json", &row.timings_json).map_err(&corrupt)?;
        let provenance: Provenance =
            json("provenance_json", &row.provenance_json).map_err(&corrupt)?;
        Ok(StoredEvaluation {
            id: row.id,
            program_id: row.program_id,
            created_at: row.created_at,
            evaluation: Evaluation {
                task: row.task,
                candidate_hash: row.hash,
                stage_reached,
                passed: row.passed,
                score: row.score,
                metrics,
                descriptors,
                feedback: row.feedback,
                timings,
                provenance,
            },
        })
    }
}

const EVALUATION_COLUMNS: &str = "e.id, e.program_id, p.hash, e.task, e.passed, e.stage_reached, \
     e.score, e.metrics_json, e.descriptors_json, e.feedback, e.timings_json, e.provenance_json, \
     e.created_at";

/// Rejects NaN and infinities, which JSON cannot hold and SQLite would turn into NULL.
fn check_finite(evaluation: &Evaluation) -> Result<()> {
    let named = |what: &'static str, map: &BTreeMap<String, f64>| {
        map.iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(name, &value)| Error::NonFinite {
                what,
                name: name.clone(),
                value,
            })
    };
    if let Some(value) = evaluation.score.filter(|s| !s.is_finite()) {
        return Err(Error::NonFinite {
            what: "score",
            name: "score".into(),
            value,
        });
    }
    match named("metric", &evaluation.metrics)
        .or_else(|| named("descriptor", &evaluation.descriptors))
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// JSON text of a value whose serialization cannot fail (maps of finite numbers, plain structs).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("string keys and finite numbers always serialize")
}

impl Db {
    /// Stores an evaluation of a program, in a transaction of its own that is committed
    /// before this returns. The evaluation's hash must be the program's.
    pub async fn insert_evaluation(&self, program_id: i64, evaluation: &Evaluation) -> Result<i64> {
        self.store_evaluation(program_id, evaluation, None).await
    }

    /// Stores an evaluation and, in the same transaction, what it taught the mutator
    /// bandit, so that a campaign killed at any moment has statistics that match its
    /// evaluations.
    pub async fn store_evaluation(
        &self,
        program_id: i64,
        evaluation: &Evaluation,
        outcome: Option<&MutatorOutcome<'_>>,
    ) -> Result<i64> {
        check_finite(evaluation)?;
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads first
        // cannot wait for another writer and fails with SQLITE_BUSY instead.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let stored: Option<String> = sqlx::query_scalar("SELECT hash FROM programs WHERE id = ?")
            .bind(program_id)
            .fetch_optional(&mut *tx)
            .await?;
        let stored = stored.ok_or_else(|| Error::NoProgram(program_id.to_string()))?;
        if stored != evaluation.candidate_hash {
            return Err(Error::HashMismatch {
                program_id,
                stored,
                evaluated: evaluation.candidate_hash.clone(),
            });
        }
        let trial = evaluation.provenance.trial;
        // The indexed columns come from the one list, so a new one needs only a migration
        // and an entry there.
        let indexed_columns: Vec<&str> = INDEXED_METRICS.iter().map(|m| m.column).collect();
        let sql = format!(
            "INSERT INTO evaluations (program_id, trial, task, passed, stage_reached, {}, \
             metrics_json, descriptors_json, feedback, timings_json, provenance_json, seconds) \
             VALUES (?, ?, ?, ?, ?, {}?, ?, ?, ?, ?, ?) \
             ON CONFLICT (program_id, trial) DO NOTHING RETURNING id",
            indexed_columns.join(", "),
            "?, ".repeat(indexed_columns.len())
        );
        let mut insert = sqlx::query_scalar(&sql)
            .bind(program_id)
            .bind(trial)
            .bind(&evaluation.task)
            .bind(evaluation.passed)
            .bind(evaluation.stage_reached.name());
        for m in INDEXED_METRICS {
            insert = insert.bind(match m.name {
                "score" => evaluation.score,
                name => evaluation.metrics.get(name).copied(),
            });
        }
        let id: Option<i64> = insert
            .bind(to_json(&evaluation.metrics))
            .bind(to_json(&evaluation.descriptors))
            .bind(&evaluation.feedback)
            .bind(to_json(&evaluation.timings))
            .bind(to_json(&evaluation.provenance))
            .bind(evaluation.seconds())
            .fetch_optional(&mut *tx)
            .await?;
        let id = id.ok_or(Error::DuplicateTrial { program_id, trial })?;
        if let Some(outcome) = outcome {
            let campaign_id: i64 =
                sqlx::query_scalar("SELECT campaign_id FROM programs WHERE id = ?")
                    .bind(program_id)
                    .fetch_one(&mut *tx)
                    .await?;
            super::search_state::record_outcome(&mut tx, campaign_id, outcome).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// A program's evaluations, by trial.
    pub async fn program_evaluations(&self, program_id: i64) -> Result<Vec<StoredEvaluation>> {
        let rows: Vec<EvaluationRow> = sqlx::query_as(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations e JOIN programs p ON p.id = e.program_id \
             WHERE e.program_id = ? ORDER BY e.trial"
        ))
        .bind(program_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredEvaluation::try_from).collect()
    }

    /// Every evaluation of a campaign, in the order they were stored.
    pub async fn campaign_evaluations(&self, campaign_id: i64) -> Result<Vec<StoredEvaluation>> {
        let rows: Vec<EvaluationRow> = sqlx::query_as(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations e JOIN programs p ON p.id = e.program_id \
             WHERE p.campaign_id = ? ORDER BY e.id"
        ))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredEvaluation::try_from).collect()
    }
}
