//! The test oracle: attention as the formula reads, in f64, one query row at a time.
//!
//! It masks with `Mask::allows` rather than `Mask::visible_keys`, so that it checks the
//! ranges the fast kernels skip by instead of sharing them.

use super::{AttentionInput, AttentionKernel, LayerAttention};
use crate::Result;

/// Slow, obvious attention: the reference every other kernel is tested against.
#[derive(Clone, Copy, Debug, Default)]
pub struct NaiveAttention;

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
        input.validate(out.len())?;
        layer.mask.validate()?;
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
                    *weight = if layer.mask.allows(position, k) {
                        let dot: f64 = query
                            .iter()
                            .zip(key)
                            .map(|(&q, &k)| f64::from(q) * f64::from(k))
                            .sum();
                        dot * scale
                    } else {
                        f64::NEG_INFINITY
                    };
                }
                let max = weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for weight in &mut weights {
                    *weight = (*weight - max).exp();
                    sum += *weight;
                }
                row.fill(0.0);
                for (&weight, value) in weights.iter().zip(values.chunks_exact(d)) {
                    for (r, &v) in row.iter_mut().zip(value) {
                        *r += weight * f64::from(v);
                    }
                }
                let start = (h * input.n_queries + i) * d;
                for (o, r) in out[start..start + d].iter_mut().zip(&row) {
                    *o = (r / sum) as f32;
                }
            }
        }
        Ok(())
    }
}
