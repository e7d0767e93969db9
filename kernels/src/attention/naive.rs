//! The test oracle: attention as the formula reads, in f64, one query row at a time.
//!
//! It masks with `allows` rather than `Mask::visible_keys` or `coverage`, so that it checks
//! the ranges and tiles the fast kernels skip by instead of sharing them.

use super::top_k_pages::{mean_key, mean_score, minmax_score};
use super::{
    AttentionInput, AttentionKernel, KeyRule, LayerAttention, PageSummary, ScoreModifier, TopKPages,
};
use crate::{Error, Result};

/// Slow, obvious attention: the reference every other kernel is tested against.
#[derive(Clone, Copy, Debug, Default)]
pub struct NaiveAttention;

impl NaiveAttention {
    /// The f64 twin of `TiledAttention::forward_rule`: a key is visible iff the layer's mask
    /// and `rule` both allow its position; `modifier` changes each visible pair's scaled
    /// score. A row that sees no key gets zeros and a log-sum-exp of `-inf`.
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
                for (slot, (weight, key)) in
                    weights.iter_mut().zip(keys.chunks_exact(d)).enumerate()
                {
                    let k = input.key_position(slot);
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

impl NaiveAttention {
    /// The f64 twin of `TopKPages`: the same choice of pages, made row by row with a full
    /// sort, then softmax attention in f64 over the chosen pages' visible keys.
    pub fn forward_top_k_pages(
        &self,
        pages: &TopKPages,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        input.validate(out.len())?;
        input.require_every_key(pages.name())?;
        layer.mask.validate()?;
        if let Some(rule) = pages.base_rule() {
            rule.validate()?;
        }
        let d = input.head_dim;
        let page = pages.page();
        let scale = f64::from(layer.scale);
        for h in 0..input.n_q_heads {
            let kv_head = h / input.group_size();
            let keys = input.k_head(kv_head);
            let values = input.v_head(kv_head);
            for (i, query) in input.q_head(h).chunks_exact(d).enumerate() {
                let position = input.query_position(i);
                let visible = |k: usize| {
                    layer.mask.allows(position, k)
                        && pages
                            .base_rule()
                            .is_none_or(|rule| rule.allows(position, k))
                };
                let own = position / page;
                let mut candidates: Vec<(usize, f64)> = (0..own)
                    .filter(|&j| (j * page..(j + 1) * page).any(visible))
                    .map(|j| {
                        let page_keys = &keys[j * page * d..(j + 1) * page * d];
                        let score = match pages.summary() {
                            PageSummary::MinMax => {
                                let channel = |c: usize| {
                                    page_keys.iter().skip(c).step_by(d).map(|&x| f64::from(x))
                                };
                                let min: Vec<f64> = (0..d)
                                    .map(|c| channel(c).fold(f64::INFINITY, f64::min))
                                    .collect();
                                let max: Vec<f64> = (0..d)
                                    .map(|c| channel(c).fold(f64::NEG_INFINITY, f64::max))
                                    .collect();
                                minmax_score(query, &min, &max)
                            }
                            PageSummary::Mean => mean_score(query, &mean_key(page_keys, d)),
                        };
                        (j, score)
                    })
                    .collect();
                candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let chosen: Vec<usize> = candidates
                    .iter()
                    .take(pages.k() - 1)
                    .map(|&(j, _)| j)
                    .chain([own])
                    .collect();
                let seen: Vec<usize> = (0..=position)
                    .filter(|&k| chosen.contains(&(k / page)) && visible(k))
                    .collect();
                let scores: Vec<f64> = seen
                    .iter()
                    .map(|&k| {
                        let key = &keys[k * d..(k + 1) * d];
                        let dot: f64 = query
                            .iter()
                            .zip(key)
                            .map(|(&q, &k)| f64::from(q) * f64::from(k))
                            .sum();
                        dot * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut row = vec![0.0f64; d];
                let mut sum = 0.0;
                for (&k, &score) in seen.iter().zip(&scores) {
                    let weight = (score - max).exp();
                    sum += weight;
                    for (r, &v) in row.iter_mut().zip(&values[k * d..(k + 1) * d]) {
                        *r += weight * f64::from(v);
                    }
                }
                let start = (h * input.n_queries + i) * d;
                let inverse = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                for (o, r) in out[start..start + d].iter_mut().zip(&row) {
                    *o = (r * inverse) as f32;
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
