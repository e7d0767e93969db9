//! Closeness to exact attention on one slice: mean next-token KL and both perplexities.

use kernels::perplexity::{kl_divergence, log_prob};
use kernels::Model;

use crate::Result;

/// Rows of logits made at once (two `[rows, vocab]` blocks): bounds memory at any length.
const ROWS_PER_BLOCK: usize = 256;

/// A candidate against exact attention on one slice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceFidelity {
    /// Mean over predicted tokens of KL(exact ‖ candidate), nats.
    pub kl_mean: f64,
    /// The largest per-token KL.
    pub kl_max: f64,
    pub ppl: f64,
    pub ppl_exact: f64,
}

/// Compares the candidate's final hidden states with exact attention's on `tokens`: row `r`
/// predicts token `r + 1`. Logits come from each model's output head, a block of rows at
/// a time. `Ok(Err(row))` names the first row whose candidate logits are not all finite
/// (KL itself would hide a NaN: it is clamped at zero).
pub fn compare(
    exact_model: &Model,
    exact_hidden: &[f32],
    candidate_model: &Model,
    candidate_hidden: &[f32],
    tokens: &[u32],
) -> Result<std::result::Result<SliceFidelity, usize>> {
    let d = exact_model.config.d_model;
    let vocab = exact_model.config.vocab_size;
    let rows = tokens.len() - 1;
    let (mut kl, mut kl_max, mut nll, mut nll_exact) = (0f64, 0f64, 0f64, 0f64);
    for start in (0..rows).step_by(ROWS_PER_BLOCK) {
        let end = (start + ROWS_PER_BLOCK).min(rows);
        let p = exact_model.output_head(&exact_hidden[start * d..end * d])?;
        let q = candidate_model.output_head(&candidate_hidden[start * d..end * d])?;
        if let Some(i) = q.iter().position(|v| !v.is_finite()) {
            return Ok(Err(start + i / vocab));
        }
        for ((p, q), &target) in p
            .chunks_exact(vocab)
            .zip(q.chunks_exact(vocab))
            .zip(&tokens[start + 1..end + 1])
        {
            let divergence = kl_divergence(p, q);
            kl_max = kl_max.max(divergence);
            kl += divergence;
            nll -= log_prob(q, target);
            nll_exact -= log_prob(p, target);
        }
    }
    let n = rows as f64;
    Ok(Ok(SliceFidelity {
        kl_mean: kl / n,
        kl_max,
        ppl: (nll / n).exp(),
        ppl_exact: (nll_exact / n).exp(),
    }))
}
