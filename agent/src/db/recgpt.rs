//! The RecGPT enrichment cache: user interest profiles, item tags and explanation sentences
//! written by the local LLM. Every row lives under an [`EnrichmentKey`] (dataset fingerprint,
//! model, prompt version) and is read only under the same key.

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{Db, Error, Result};

/// What produced a row: rows made by another model, dataset or prompt are never read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnrichmentKey {
    /// The dataset's fingerprint (`recgpt::dataset_fingerprint`).
    pub dataset: String,
    /// The model's name (its GGUF file name).
    pub model: String,
    pub prompt_version: i64,
}

/// A user's interest profile, as the model wrote it and as it was parsed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UserProfile {
    /// The dataset's raw user id.
    pub user_id: String,
    /// Empty when the reply had no profile.
    pub profile: String,
    /// Normalised tags; empty when the reply had none usable.
    pub tags: Vec<String>,
    /// The reply exactly as it came.
    pub reply: String,
    /// Why the reply was not (fully) usable; `None` when it parsed.
    pub problem: Option<String>,
    /// Seconds the model took.
    pub seconds: f64,
}

/// An item's tags.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemTags {
    /// The dataset's raw item id.
    pub item_id: String,
    pub tags: Vec<String>,
    pub reply: String,
    pub problem: Option<String>,
    pub seconds: f64,
}

/// Why a user might like an item, in one sentence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub user_id: String,
    pub item_id: String,
    /// Empty when the reply had no usable sentence.
    pub sentence: String,
    pub reply: String,
    pub problem: Option<String>,
    pub seconds: f64,
}

/// How many rows the cache holds under one key, and how many of them are unusable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EnrichmentCounts {
    pub profiles: u64,
    pub profiles_unusable: u64,
    pub item_tags: u64,
    pub item_tags_unusable: u64,
    pub explanations: u64,
    pub explanations_unusable: u64,
}

fn finite(what: &'static str, name: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NonFinite {
            what,
            name: name.to_string(),
            value,
        })
    }
}

fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).expect("a list of strings serialises")
}

/// The tags column of a row, or an error naming the row.
fn read_tags(table: &'static str, row: &SqliteRow) -> Result<Vec<String>> {
    let text: String = row.try_get("tags_json")?;
    serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        table,
        row: row.try_get("rowid").unwrap_or(-1),
        detail: format!("tags_json is not a JSON list of strings: {e}"),
    })
}

impl Db {
    /// Stores a profile; `false` if the user already has one under this key (the stored one
    /// is kept).
    pub async fn insert_profile(&self, key: &EnrichmentKey, p: &UserProfile) -> Result<bool> {
        let seconds = finite("seconds of the profile of user", &p.user_id, p.seconds)?;
        let done = sqlx::query(
            "INSERT INTO recgpt_profiles (dataset, model, prompt_version, user_id, profile, \
             tags_json, reply, problem, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.dataset)
        .bind(&key.model)
        .bind(key.prompt_version)
        .bind(&p.user_id)
        .bind(&p.profile)
        .bind(tags_json(&p.tags))
        .bind(&p.reply)
        .bind(&p.problem)
        .bind(seconds)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every profile under `key`, in the order they were made.
    pub async fn profiles(&self, key: &EnrichmentKey) -> Result<Vec<UserProfile>> {
        let rows = sqlx::query(
            "SELECT rowid, user_id, profile, tags_json, reply, problem, seconds \
             FROM recgpt_profiles WHERE dataset = ? AND model = ? AND prompt_version = ? \
             ORDER BY rowid",
        )
        .bind(&key.dataset)
        .bind(&key.model)
        .bind(key.prompt_version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UserProfile {
                    user_id: row.try_get("user_id")?,
                    profile: row.try_get("profile")?,
                    tags: read_tags("recgpt_profiles", row)?,
                    reply: row.try_get("reply")?,
                    problem: row.try_get("problem")?,
                    seconds: row.try_get("seconds")?,
                })
            })
            .collect()
    }

    /// Stores an item's tags; `false` if it already has them under this key.
    pub async fn insert_item_tags(&self, key: &EnrichmentKey, t: &ItemTags) -> Result<bool> {
        let seconds = finite("seconds of the tags of item", &t.item_id, t.seconds)?;
        let done = sqlx::query(
            "INSERT INTO recgpt_item_tags (dataset, model, prompt_version, item_id, tags_json, \
             reply, problem, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&key.dataset)
        .bind(&key.model)
        .bind(key.prompt_version)
        .bind(&t.item_id)
        .bind(tags_json(&t.tags))
        .bind(&t.reply)
        .bind(&t.problem)
        .bind(seconds)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every item's tags under `key`, in the order they were made.
    pub async fn item_tags(&self, key: &EnrichmentKey) -> Result<Vec<ItemTags>> {
        let rows = sqlx::query(
            "SELECT rowid, item_id, tags_json, reply, problem, seconds FROM recgpt_item_tags \
             WHERE dataset = ? AND model = ? AND prompt_version = ? ORDER BY rowid",
        )
        .bind(&key.dataset)
        .bind(&key.model)
        .bind(key.prompt_version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ItemTags {
                    item_id: row.try_get("item_id")?,
                    tags: read_tags("recgpt_item_tags", row)?,
                    reply: row.try_get("reply")?,
                    problem: row.try_get("problem")?,
                    seconds: row.try_get("seconds")?,
                })
            })
            .collect()
    }

    /// Stores an explanation; `false` if the (user, item) pair already has one under this key.
    pub async fn insert_explanation(&self, key: &EnrichmentKey, e: &Explanation) -> Result<bool> {
        let pair = format!("{} / {}", e.user_id, e.item_id);
        let seconds = finite(
            "seconds of the explanation for user / item",
            &pair,
            e.seconds,
        )?;
        let done = sqlx::query(
            "INSERT INTO recgpt_explanations (dataset, model, prompt_version, user_id, item_id, \
             sentence, reply, problem, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.dataset)
        .bind(&key.model)
        .bind(key.prompt_version)
        .bind(&e.user_id)
        .bind(&e.item_id)
        .bind(&e.sentence)
        .bind(&e.reply)
        .bind(&e.problem)
        .bind(seconds)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every explanation under `key`, in the order they were made.
    pub async fn explanations(&self, key: &EnrichmentKey) -> Result<Vec<Explanation>> {
        Ok(sqlx::query(
            "SELECT user_id, item_id, sentence, reply, problem, seconds \
             FROM recgpt_explanations WHERE dataset = ? AND model = ? AND prompt_version = ? \
             ORDER BY rowid",
        )
        .bind(&key.dataset)
        .bind(&key.model)
        .bind(key.prompt_version)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok::<_, sqlx::Error>(Explanation {
                user_id: row.try_get("user_id")?,
                item_id: row.try_get("item_id")?,
                sentence: row.try_get("sentence")?,
                reply: row.try_get("reply")?,
                problem: row.try_get("problem")?,
                seconds: row.try_get("seconds")?,
            })
        })
        .collect::<std::result::Result<_, _>>()?)
    }

    /// Rows under `key` per table, and how many of them hold an unusable reply.
    pub async fn enrichment_counts(&self, key: &EnrichmentKey) -> Result<EnrichmentCounts> {
        let mut counts = EnrichmentCounts::default();
        for (table, all, unusable) in [
            (
                "recgpt_profiles",
                &mut counts.profiles,
                &mut counts.profiles_unusable,
            ),
            (
                "recgpt_item_tags",
                &mut counts.item_tags,
                &mut counts.item_tags_unusable,
            ),
            (
                "recgpt_explanations",
                &mut counts.explanations,
                &mut counts.explanations_unusable,
            ),
        ] {
            // The table name is one of three literals above, never user input.
            let (n, bad): (i64, i64) = sqlx::query_as(&format!(
                "SELECT count(*), count(problem) FROM {table} \
                 WHERE dataset = ? AND model = ? AND prompt_version = ?"
            ))
            .bind(&key.dataset)
            .bind(&key.model)
            .bind(key.prompt_version)
            .fetch_one(&self.pool)
            .await?;
            *all = n.max(0) as u64;
            *unusable = bad.max(0) as u64;
        }
        Ok(counts)
    }
}
