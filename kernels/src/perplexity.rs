//! Perplexity of a model on a text, with the sliding-window method: windows of `ctx` tokens
//! advance by `stride`, and each token is scored once, by the first window that holds it
//! with some context before it.

use std::time::Instant;

use crate::model::{Logits, Model};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerplexityOptions {
    /// Tokens per window.
    pub ctx: usize,
    /// How far each window advances (at most `ctx`).
    pub stride: usize,
    /// Stop after this many tokens of text (None: all).
    pub max_tokens: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PerplexityReport {
    /// Tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll: f64,
    pub ppl: f64,
    /// Tokens run through the model per second (windows overlap, so this exceeds `tokens`
    /// divided by the wall time when stride < ctx).
    pub tok_per_s: f64,
}

/// `ln Σ exp(logits)`, in f64.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// Natural-log softmax probability of `target` under `logits`, in f64.
pub fn log_prob(logits: &[f32], target: u32) -> f64 {
    logits[target as usize] as f64 - log_sum_exp(logits)
}

pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    options: PerplexityOptions,
) -> Result<PerplexityReport> {
    let PerplexityOptions {
        ctx,
        stride,
        max_tokens,
    } = options;
    if ctx < 2 || stride == 0 || stride > ctx {
        return Err(Error::InvalidRequest(format!(
            "perplexity needs ctx >= 2 and 1 <= stride <= ctx (got ctx {ctx}, stride {stride})"
        )));
    }
    if ctx > model.config.context_length {
        return Err(Error::InvalidRequest(format!(
            "--ctx {ctx} exceeds the model's context length of {}",
            model.config.context_length
        )));
    }
    let tokens = &tokens[..max_tokens.map_or(tokens.len(), |m| m.min(tokens.len()))];
    if tokens.len() < 2 {
        return Err(Error::InvalidRequest(format!(
            "the text has {} tokens; perplexity needs at least 2",
            tokens.len()
        )));
    }
    let vocab = model.config.vocab_size;
    let started = Instant::now();
    let (mut nll, mut scored, mut processed) = (0f64, 0usize, 0usize);
    // `next` is the first token not yet scored; window [begin, end) scores next..end.
    let mut next = 1;
    let mut begin = 0;
    while next < tokens.len() {
        let end = (begin + ctx).min(tokens.len());
        let window = &tokens[begin..end];
        let mut cache = model.new_cache();
        // Logits only for the rows that predict unscored tokens.
        let first_row = next - 1 - begin;
        let logits = model.forward(&mut cache, window, Logits::From(first_row))?;
        processed += window.len();
        // Row r of `logits` predicts token begin + first_row + r + 1.
        for (row, &target) in logits.chunks_exact(vocab).zip(&tokens[next..end]) {
            nll -= log_prob(row, target);
            scored += 1;
        }
        next = end;
        if end == tokens.len() {
            break;
        }
        begin += stride;
    }
    let mean = nll / scored as f64;
    Ok(PerplexityReport {
        tokens: scored,
        nll: mean,
        ppl: mean.exp(),
        tok_per_s: processed as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}
