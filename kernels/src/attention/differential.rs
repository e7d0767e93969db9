//! Differential attention as a drop-in kernel for pretrained models: each head's query and
//! key are split into halves, each half gives its own softmax map, and the head attends with
//! their difference (after Ye et al. 2024; the trainable form is
//! `crate::trainable::differential`).
//!
//! Choices a pretrained model forces, since it has no weights for the rest:
//! - The halves are the first and second `head_dim / 2` features, scored with the layer's
//!   own scale, so the two maps share the pretrained score `q·k = q₁·k₁ + q₂·k₂` between
//!   them. With adjacent-pair RoPE (Llama, SmolLM2) each half holds whole rotation pairs and
//!   stays a function of relative position; with NeoX halves (Qwen, Gemma) the split
//!   separates rotation pairs, and the maps are no longer relative-position only.
//! - The weights `A₁ − λ A₂` are divided by `1 − λ`, their row sum, in place of the paper's
//!   learned per-head RMSNorm and `(1 − λ_init)` scale: the output projection then sees
//!   values at the scale it was trained on. So `λ` must be below 1.

use rayon::prelude::*;

use super::multi_token::{dot, scatter_rows};
use super::{AttentionInput, AttentionKernel, LayerAttention};
use crate::model::blocks::softmax;
use crate::{Error, Result};

/// Two half-head softmax maps per head, attending with `(A₁ − λ A₂) / (1 − λ)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DifferentialKernel {
    lambda: f32,
}

impl DifferentialKernel {
    /// `lambda` must be finite and below 1.
    pub fn new(lambda: f32) -> Result<Self> {
        if !lambda.is_finite() || lambda >= 1.0 {
            return Err(Error::InvalidRequest(format!(
                "differential kernel: λ {lambda} must be finite and below 1"
            )));
        }
        Ok(Self { lambda })
    }

    pub fn lambda(&self) -> f32 {
        self.lambda
    }

    /// `[n_heads, head_dim]`: every head's output for query row `i`.
    fn query_row(&self, input: &AttentionInput, layer: &LayerAttention, i: usize) -> Vec<f32> {
        let (d, n_keys) = (input.head_dim, input.kv_len);
        let half = d / 2;
        let position = input.query_position(i);
        let mut row = vec![0f32; input.n_q_heads * d];
        let mut first = vec![0f32; n_keys];
        let mut second = vec![0f32; n_keys];
        for (h, out) in row.chunks_exact_mut(d).enumerate() {
            let query = &input.q_head(h)[i * d..(i + 1) * d];
            let kv_head = h / input.group_size();
            let keys = input.k_head(kv_head).chunks_exact(d);
            for (k, key) in keys.enumerate() {
                (first[k], second[k]) = if layer.mask.allows(position, k) {
                    (
                        dot(&query[..half], &key[..half]) * layer.scale,
                        dot(&query[half..], &key[half..]) * layer.scale,
                    )
                } else {
                    (f32::NEG_INFINITY, f32::NEG_INFINITY)
                };
            }
            softmax(&mut first);
            softmax(&mut second);
            let normalizer = 1.0 - self.lambda;
            for ((a1, a2), value) in first
                .iter()
                .zip(&second)
                .zip(input.v_head(kv_head).chunks_exact(d))
            {
                let weight = (a1 - self.lambda * a2) / normalizer;
                if weight != 0.0 {
                    out.iter_mut()
                        .zip(value)
                        .for_each(|(o, v)| *o += weight * v);
                }
            }
        }
        row
    }
}

impl AttentionKernel for DifferentialKernel {
    fn name(&self) -> &str {
        "differential"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        input.validate(out.len())?;
        input.require_every_key(self.name())?;
        layer.mask.validate()?;
        if !input.head_dim.is_multiple_of(2) {
            return Err(Error::InvalidRequest(format!(
                "differential kernel: head_dim {} must be even to split into two halves",
                input.head_dim
            )));
        }
        let rows: Vec<Vec<f32>> = (0..input.n_queries)
            .into_par_iter()
            .map(|i| self.query_row(input, layer, i))
            .collect();
        scatter_rows(&rows, input, out);
        Ok(())
    }
}
