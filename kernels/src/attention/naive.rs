//! The test oracle: attention as the formula reads, in f64, one query row at a time.
//!
//! It masks with `allows` rather than `Mask::visible_keys` or `coverage`, so that it checks
//! the ranges and tiles the fast kernels skip by instead of sharing them.

use super::{AttentionInput, AttentionKernel, KeyRule, LayerAttention, ScoreModifier};
use crate::{Error, Result};

/// Slow, obvious attention: the reference every other kernel is tested against.
#[derive(Clone, Copy, Debug, Default)]
pub struct NaiveAttention;

impl NaiveAttention {
    /// The f64 twin of `TiledAttention::forward_rule`: a key is visible iff the layer's mask
    /// and `rule` both allow it; `modifier` changes each visible pair's scaled score. A row
    /// that sees no key gets zeros and a log-sum-exp of `-inf`.
    pub fn forward_rule(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        rule: &dyn KeyRule,
        modifier: Option<&dyn ScoreModifier>,
        out: &mut [f32],
        mut lse: Option<&mut [f32]>,
    ) -> Result<()> {
        input.validate(out.len())?;
        layer.mask.validate()?;
        rule.validate()?;
        let rows = input.n_q_heads * input.n_queries;
        let lse_len = lse.as_deref().map_or(rows, |lse| lse.len());
        if lse_len != rows {
            return Err(Error::InvalidRequest(format!(
                "attention lse has {lse_len} values, expected {rows} (one per query head and row)"
            )));
        }
        let d = input.head_dim;
        let scale = f64::from(layer.scale);
        let mut weights = vec![0.0f64; input.kv_len];
        let mut row = vec![0.0f64; d];
        for h in 0..input.n_q_heads {
            let kv_head = h / input.group_size();
            let keys = input.k_head(kv_head);
            let values = input.v_head(kv_head);
            for (i, query) in input.q_head(h).chunks_exact(d).enumerate() {
                let position = input.query_position(i);
                for (k, (weight, key)) in weights.iter_mut().zip(keys.chunks_exact(d)).enumerate() {
                    *weight = if layer.mask.allows(position, k) && rule.allows(position, k) {
                        let dot: f64 = query
                            .iter()
                            .zip(key)
                            .map(|(&q, &k)| f64::from(q) * f64::from(k))
                            .sum();
                        let score = dot * scale;
                        match modifier {
                            Some(modifier) => {
                                f64::from(modifier.modify(h, position, k, score as f32))
                            }
                            None => score,
                        }
                    } else {
                        f64::NEG_INFINITY
                    };
                }
                let max = weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for weight in &mut weights {
                    *weight = if *weight == f64::NEG_INFINITY {
                        0.0
                    } else {
                        (*weight - max).exp()
                    };
                    sum += *weight;
                }
                row.fill(0.0);
                for (&weight, value) in weights.iter().zip(values.chunks_exact(d)) {
                    for (r, &v) in row.iter_mut().zip(value) {
                        *r += weight * f64::from(v);
                    }
                }
                let row_index = h * input.n_queries + i;
                let start = row_index * d;
                // A row that sees no key has sum 0: its output is defined as zeros.
                let inverse = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                for (o, r) in out[start..start + d].iter_mut().zip(&row) {
                    *o = (r * inverse) as f32;
                }
                if let Some(lse) = lse.as_deref_mut() {
                    lse[row_index] = (max + sum.ln()) as f32;
                }
            }
        }
        Ok(())
    }
}

impl AttentionKernel for NaiveAttention {
    fn name(&self) -> &str {
        "naive"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        // The layer's own mask as the rule: the pair is checked twice, harmlessly.
        self.forward_rule(input, layer, &layer.mask, None, out, None)
    }
}
