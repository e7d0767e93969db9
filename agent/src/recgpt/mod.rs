//! RecGPT-style enrichment of the recommender by the local LLM on our core: a user's history
//! becomes an interest profile with tags, an item's catalogue entry becomes tags, and a
//! (profile, item) pair becomes one explanation sentence. `prompt` writes the requests,
//! `parse` reads the replies leniently, `runner` runs them as a resumable batch job whose
//! every result is committed to the database as it is made.
//!
//! Rows are keyed by [`EnrichmentKey`]: the dataset's fingerprint, the model's name and
//! [`PROMPT_VERSION`], so that nothing made for another dataset, model or prompt is read.
//! Decoding is greedy with a fixed seed, so a rerun asks the same questions and gets the same
//! answers.

pub mod parse;
mod plan;
pub mod prompt;
pub mod runner;

use recsys::data::Dataset;

pub use crate::db::EnrichmentKey;
pub use plan::{Plan, PlanConfig};
pub use runner::{Enricher, RunOptions, RunReport, StageReport};

/// Bump when a prompt or the parsing changes: rows made by older prompts are then not read.
/// Version 2: explanations show similar watched movies and the item's tags, not the profile sentence.
pub const PROMPT_VERSION: i64 = 2;

/// The seed every request carries (decoding is greedy, so it only matters if that changes).
pub const SEED: u64 = 0;

/// The most recent items of a history that a profile prompt shows.
pub const MAX_PROFILE_ITEMS: usize = 20;

/// The name rows of `model` (a short name such as `smollm2`, or a GGUF path) are stored
/// under: the file's name, as `LocalLlm` calls itself. Needs no model file, so that cached
/// rows can be read where the model is not fetched.
pub fn model_name(name_or_path: &str) -> String {
    match kernels::assets::MODELS
        .iter()
        .find(|a| a.name == name_or_path)
    {
        Some(asset) => crate::llm::model_name(&asset.path()),
        None => crate::llm::model_name(std::path::Path::new(name_or_path)),
    }
}

/// Identifies a dataset by its content: its name and the first 16 hex digits of the SHA-256
/// of its items (ids and metadata), users and histories.
pub fn dataset_fingerprint(dataset: &Dataset) -> String {
    let bytes = serde_json::to_vec(dataset).expect("a dataset serialises");
    let hash = kernels::akl::sha256_hex(&bytes);
    format!("{}@{}", dataset.name, &hash[..16])
}

/// The key of the rows `model` makes (or made) for `dataset` with today's prompts.
pub fn enrichment_key(dataset: &Dataset, model: &str) -> EnrichmentKey {
    EnrichmentKey {
        dataset: dataset_fingerprint(dataset),
        model: model.to_string(),
        prompt_version: PROMPT_VERSION,
    }
}

/// The part of a user's history a profile is written from: everything but the last item
/// (the leave-one-out test target, which evaluation must not see) when the user has a test
/// case, the whole history otherwise; then its most recent [`MAX_PROFILE_ITEMS`].
pub fn profile_history(dataset: &Dataset, user: usize) -> &[u32] {
    let history = &dataset.histories[user];
    let seen = if history.len() >= 3 {
        &history[..history.len() - 1]
    } else {
        &history[..]
    };
    &seen[seen.len().saturating_sub(MAX_PROFILE_ITEMS)..]
}
