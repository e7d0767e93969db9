//! The drop-in task's settings, as the `[drop_in]` section of the evaluator's TOML file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Settings of the drop-in task. Every field has a default, so `[drop_in]` may be empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropInConfig {
    /// A model short name (`smollm2`, `qwen-coder`, `gemma3`) or a GGUF path.
    pub model: String,
    /// Context lengths (tokens per slice) at which fidelity and cost are measured.
    pub contexts: Vec<usize>,
    /// Where the text slices come from.
    pub sources: Vec<Source>,
    /// Slices per source and context length.
    pub slices_per_source: usize,
    /// Causality probes: each changes every token after one seeded position.
    pub probe_cuts: usize,
    /// Tokens in the probe sequence (default: the shortest context, at most 1024).
    pub probe_tokens: Option<usize>,
    /// Timed prefills of each of the candidate and exact attention, interleaved.
    pub timing_repeats: usize,
    /// The context length the timings run at (default: the longest).
    pub timing_context: Option<usize>,
    /// Where exact-attention references and model hashes are kept (default:
    /// `$XDG_CACHE_HOME/evokernel`, `~/.cache/evokernel`, else `<assets>/cache`).
    pub cache_dir: Option<PathBuf>,
    pub score: ScoreRule,
}

impl Default for DropInConfig {
    fn default() -> Self {
        DropInConfig {
            model: kernels::assets::SMOLLM2.name.to_string(),
            contexts: vec![1024, 4096, 8192],
            sources: vec![Source::Austen, Source::Humaneval],
            slices_per_source: 1,
            probe_cuts: 2,
            probe_tokens: None,
            timing_repeats: 3,
            timing_context: None,
            cache_dir: None,
            score: ScoreRule::default(),
        }
    }
}

/// A text collection from the assets that slices are cut from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Jane Austen's six novels (`data/austen/*.txt`): prose.
    Austen,
    /// HumanEval's prompts and reference solutions (`data/humaneval`): Python code.
    Humaneval,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Austen => "austen",
            Source::Humaneval => "humaneval",
        }
    }
}

/// How the scalar score is made from the measurements.
///
/// A candidate passes fidelity when `kl_max_mean <= kl_epsilon`, where `kl_max_mean` is the
/// largest, over every slice at every context length, of the slice's mean next-token
/// KL(exact ‖ candidate) in nats; and, when `max_ppl_ratio` is set, when no slice's
/// perplexity exceeds `max_ppl_ratio` times exact attention's. A candidate that passes
/// scores the `objective`'s value (higher is better), taken at the timing context:
///
/// - `attention_speedup`: exact attention time / candidate attention time (the time inside
///   the attention kernels of one prefill), the geometric mean over `timing_repeats`
///   interleaved pairs; it counts only beyond noise: when its 95% confidence interval
///   holds 1, the score is exactly 1.0;
/// - `forward_speedup`: the same for the whole prefill;
/// - `flops_reduction`: 1 / `attn_flops_ratio` (cost model, deterministic);
/// - `kv_held_reduction`: 1 / `kv_bytes_held_ratio` (cost model, deterministic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreRule {
    pub objective: Objective,
    pub kl_epsilon: f64,
    pub max_ppl_ratio: Option<f64>,
}

impl Default for ScoreRule {
    fn default() -> Self {
        ScoreRule {
            objective: Objective::AttentionSpeedup,
            kl_epsilon: 0.1,
            max_ppl_ratio: None,
        }
    }
}

/// What a passing candidate is scored by; see [`ScoreRule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    AttentionSpeedup,
    ForwardSpeedup,
    FlopsReduction,
    KvHeldReduction,
}

impl Objective {
    /// The metric (at the timing context) the objective reads.
    pub fn metric(self) -> &'static str {
        match self {
            Objective::AttentionSpeedup => "attention_speedup",
            Objective::ForwardSpeedup => "forward_speedup",
            Objective::FlopsReduction => "flops_reduction",
            Objective::KvHeldReduction => "kv_held_reduction",
        }
    }
}

impl DropInConfig {
    /// Rejects settings the task cannot run with, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::Invalid(format!("drop_in.{field}: {why}")));
        if self.contexts.is_empty() {
            return bad("contexts", "give at least one context length".into());
        }
        if let Some(&c) = self.contexts.iter().find(|&&c| c < 16) {
            return bad(
                "contexts",
                format!("{c} is too short; use at least 16 tokens"),
            );
        }
        if self.sources.is_empty() {
            return bad(
                "sources",
                "give at least one of \"austen\", \"humaneval\"".into(),
            );
        }
        if self.slices_per_source == 0 {
            return bad("slices_per_source", "must be at least 1".into());
        }
        if self.probe_cuts == 0 {
            return bad("probe_cuts", "must be at least 1".into());
        }
        if let Some(n) = self.probe_tokens.filter(|&n| n < 16) {
            return bad("probe_tokens", format!("{n} is too short; use at least 16"));
        }
        if self.timing_repeats == 0 {
            return bad("timing_repeats", "must be at least 1".into());
        }
        if let Some(t) = self.timing_context.filter(|t| !self.contexts.contains(t)) {
            return bad(
                "timing_context",
                format!("{t} is not one of the contexts {:?}", self.contexts),
            );
        }
        let rule = &self.score;
        let timed = matches!(
            rule.objective,
            Objective::AttentionSpeedup | Objective::ForwardSpeedup
        );
        if timed && self.timing_repeats < 3 {
            return bad(
                "timing_repeats",
                format!(
                    "{} is too few for the measured objective {}: its confidence interval \
                     needs at least 3 interleaved pairs (5 or more for a tight one)",
                    self.timing_repeats,
                    rule.objective.metric()
                ),
            );
        }
        if !(rule.kl_epsilon.is_finite() && rule.kl_epsilon >= 0.0) {
            return bad(
                "score.kl_epsilon",
                format!("{} must be a finite number >= 0", rule.kl_epsilon),
            );
        }
        if let Some(r) = rule.max_ppl_ratio.filter(|r| !(r.is_finite() && *r >= 1.0)) {
            return bad(
                "score.max_ppl_ratio",
                format!("{r} must be a finite number >= 1"),
            );
        }
        Ok(())
    }

    /// The context the timings run at.
    pub fn timing_context(&self) -> usize {
        self.timing_context
            .or_else(|| self.contexts.iter().copied().max())
            .unwrap_or(1024)
    }

    /// Tokens in the probe sequence.
    pub fn probe_tokens(&self) -> usize {
        self.probe_tokens.unwrap_or_else(|| {
            self.contexts
                .iter()
                .copied()
                .min()
                .unwrap_or(1024)
                .min(1024)
        })
    }

    /// The cache directory this configuration uses.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        let home_cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        match home_cache {
            Some(dir) => dir.join("evokernel"),
            None => kernels::assets::assets_dir().join("cache"),
        }
    }
}
