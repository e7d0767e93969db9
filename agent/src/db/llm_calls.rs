//! The llm_calls table: every request to a language model and its reply, enough to replay
//! a campaign with no model at all.

use serde::Serialize;

use super::{Db, Result};

/// An LLM call to record.
#[derive(Clone, Debug)]
pub struct NewLlmCall<'a> {
    pub campaign_id: i64,
    /// The program the call worked on, once it exists.
    pub program_id: Option<i64>,
    /// DeepEvolve stage: `research`, `code` or `debug`.
    pub stage: &'a str,
    pub model: &'a str,
    /// Sampling settings (temperature, max tokens, seed) as a JSON object.
    pub params_json: &'a str,
    pub prompt: &'a str,
    /// `None` when the call failed.
    pub response: Option<&'a str>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_seconds: f64,
    pub error: Option<&'a str>,
}

/// A recorded LLM call.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct LlmCall {
    pub id: i64,
    pub campaign_id: i64,
    pub program_id: Option<i64>,
    pub stage: String,
    pub model: String,
    pub params_json: String,
    pub prompt: String,
    pub response: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_seconds: f64,
    pub error: Option<String>,
    pub created_at: String,
}

impl Db {
    /// Records a call and returns its id.
    pub async fn insert_llm_call(&self, call: &NewLlmCall<'_>) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO llm_calls (campaign_id, program_id, stage, model, params_json, prompt, \
             response, prompt_tokens, completion_tokens, latency_seconds, error) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(call.campaign_id)
        .bind(call.program_id)
        .bind(call.stage)
        .bind(call.model)
        .bind(call.params_json)
        .bind(call.prompt)
        .bind(call.response)
        .bind(call.prompt_tokens)
        .bind(call.completion_tokens)
        .bind(call.latency_seconds)
        .bind(call.error)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Links a call to the program it produced (known only after the program is stored).
    pub async fn set_llm_call_program(&self, call_id: i64, program_id: i64) -> Result<()> {
        sqlx::query("UPDATE llm_calls SET program_id = ? WHERE id = ?")
            .bind(program_id)
            .bind(call_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A campaign's calls in the order they were made (what `--replay` reads).
    pub async fn campaign_llm_calls(&self, campaign_id: i64) -> Result<Vec<LlmCall>> {
        Ok(sqlx::query_as(
            "SELECT id, campaign_id, program_id, stage, model, params_json, prompt, response, \
             prompt_tokens, completion_tokens, latency_seconds, error, created_at \
             FROM llm_calls WHERE campaign_id = ? ORDER BY id",
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Prompt plus completion tokens a campaign has spent (the token budget counts this).
    pub async fn campaign_llm_tokens(&self, campaign_id: i64) -> Result<u64> {
        let tokens: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM llm_calls \
             WHERE campaign_id = ?",
        )
        .bind(campaign_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(tokens.max(0) as u64)
    }
}
