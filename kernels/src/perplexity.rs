//! Perplexity of a model on a text, with the sliding-window method: windows of `ctx` tokens
//! advance by `stride`, and each token is scored once, by the first window that holds it
//! with some context before it.

use std::sync::Arc;
use std::time::Instant;

use crate::attention::AttentionKernel;
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
    let tokens = scored_text(model, tokens, options)?;
    let vocab = model.config.vocab_size;
    let started = Instant::now();
    let (mut nll, mut scored, mut processed) = (0f64, 0usize, 0usize);
    for window in windows(tokens.len(), options) {
        let mut cache = model.new_cache();
        let logits = model.forward(
            &mut cache,
            &tokens[window.begin..window.end],
            Logits::From(window.first_row()),
        )?;
        processed += window.end - window.begin;
        for (row, &target) in logits
            .chunks_exact(vocab)
            .zip(&tokens[window.next..window.end])
        {
            nll -= log_prob(row, target);
            scored += 1;
        }
    }
    let mean = nll / scored as f64;
    Ok(PerplexityReport {
        tokens: scored,
        nll: mean,
        ppl: mean.exp(),
        tok_per_s: processed as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

/// A candidate attention against the model's own (exact) attention on the same windows.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelComparison {
    /// Tokens scored.
    pub tokens: usize,
    pub ppl_exact: f64,
    pub ppl: f64,
    /// Mean over scored tokens of KL(exact ‖ candidate) of the next-token distributions,
    /// in nats.
    pub kl_vs_exact: f64,
    /// The largest per-token KL seen.
    pub kl_max: f64,
}

/// Rows of a window run through both attentions per step: bounds the logits held at once
/// (two `[rows, vocab]` blocks) whatever the context length.
const COMPARE_ROWS: usize = 256;

/// Scores `tokens` twice on the same sliding windows, once with `model` and its own
/// attention kernels, and once with `candidate_model` (the same model, or a copy whose weights
/// a mechanism changed) running `candidate` (one kernel per layer), and measures how far the
/// candidate's next-token distributions move from exact attention's.
pub fn compare_kernels(
    model: &Model,
    candidate_model: &Model,
    candidate: &[Arc<dyn AttentionKernel>],
    tokens: &[u32],
    options: PerplexityOptions,
) -> Result<KernelComparison> {
    let tokens = scored_text(model, tokens, options)?;
    if candidate_model.config.vocab_size != model.config.vocab_size {
        return Err(Error::InvalidRequest(
            "compare_kernels: the two models have different vocabularies".into(),
        ));
    }
    let vocab = model.config.vocab_size;
    let (mut nll_exact, mut nll, mut kl, mut kl_max, mut scored) = (0f64, 0f64, 0f64, 0f64, 0);
    for window in windows(tokens.len(), options) {
        let mut exact_cache = model.new_cache();
        let mut candidate_cache = candidate_model.new_cache();
        for begin in (window.begin..window.end).step_by(COMPARE_ROWS) {
            let end = (begin + COMPARE_ROWS).min(window.end);
            let chunk = &tokens[begin..end];
            // Row r of this chunk predicts token begin + r + 1; score those not yet scored.
            let first_row = (window.next - 1).max(begin) - begin;
            if first_row >= chunk.len() {
                model.forward(&mut exact_cache, chunk, Logits::Last)?;
                candidate_model.forward_with(
                    &mut candidate_cache,
                    chunk,
                    Logits::Last,
                    candidate,
                )?;
                continue;
            }
            let rows = Logits::From(first_row);
            let exact = model.forward(&mut exact_cache, chunk, rows)?;
            let approx =
                candidate_model.forward_with(&mut candidate_cache, chunk, rows, candidate)?;
            let targets = &tokens[begin + first_row + 1..(end + 1).min(window.end)];
            for ((p, q), &target) in exact
                .chunks_exact(vocab)
                .zip(approx.chunks_exact(vocab))
                .zip(targets)
            {
                nll_exact -= log_prob(p, target);
                nll -= log_prob(q, target);
                let divergence = kl_divergence(p, q);
                kl += divergence;
                kl_max = kl_max.max(divergence);
                scored += 1;
            }
        }
    }
    let n = scored as f64;
    Ok(KernelComparison {
        tokens: scored,
        ppl_exact: (nll_exact / n).exp(),
        ppl: (nll / n).exp(),
        kl_vs_exact: kl / n,
        kl_max,
    })
}

/// KL(p ‖ q) in nats between the softmax distributions of two logit rows, in f64.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lse_p, lse_q) = (log_sum_exp(p_logits), log_sum_exp(q_logits));
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&p, &q)| {
            let log_p = p as f64 - lse_p;
            log_p.exp() * (log_p - (q as f64 - lse_q))
        })
        .sum::<f64>()
        .max(0.0)
}

/// The tokens to score, after checking the options against the model and the text.
fn scored_text<'a>(
    model: &Model,
    tokens: &'a [u32],
    options: PerplexityOptions,
) -> Result<&'a [u32]> {
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
    Ok(tokens)
}

/// One window of the sliding-window method: it runs `begin..end` and scores `next..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    begin: usize,
    end: usize,
    next: usize,
}

impl Window {
    /// The first row of the window's logits that predicts an unscored token.
    fn first_row(self) -> usize {
        self.next - 1 - self.begin
    }
}

/// The windows that score tokens `1..len` once each: windows of `ctx` advance by `stride`,
/// and each token is scored by the first window that holds it with context before it.
/// When `stride == ctx` no window holds the first token of the next with context, so those
/// tokens go unscored.
fn windows(len: usize, options: PerplexityOptions) -> Vec<Window> {
    let mut windows = Vec::new();
    let (mut begin, mut next) = (0, 1);
    while next < len {
        let end = (begin + options.ctx).min(len);
        next = next.max(begin + 1);
        windows.push(Window { begin, end, next });
        next = end;
        if end == len {
            break;
        }
        begin += options.stride;
    }
    windows
}
