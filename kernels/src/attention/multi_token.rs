//! Multi-Token Attention as a drop-in kernel for pretrained models: each head's scores are
//! convolved along the key axis and the heads' attention maps are mixed within groups, as in
//! `crate::trainable::mta`, over the model's own KV cache.
//!
//! The convolution spans keys only (`c_q = 1`). A query-axis convolution needs the scores
//! of earlier queries, whose query vectors the model's KV cache does not keep, so decode
//! could not equal prefill; the trainable mixer, which keeps them, has both axes.
//!
//! For a query at position `p` and head `h`, with `half = ⌊c_k / 2⌋`:
//! ```text
//! S0[j] = q·k_j · scale if the mask shows key j, else 0
//! C[j]  = Σ_b θ_h[b] · S0[j + half − b]            (outside 0..kv_len: 0)
//! A_h   = softmax over the visible j of C[j];   A'_h = Σ_{h' in h's group} M[h, h'] A_h'
//! ```
//! Every key the convolution reads beyond `p` is hidden and so zero: the kernel stays within
//! the layer's mask. [`MultiTokenKernel::identity`] is standard attention.
//!
//! Heads are mixed in consecutive groups of `mix_group`; when the head count is not a
//! multiple of it (SmolLM2 has 9 query heads), the last group is smaller and holds the
//! remaining heads.

use rayon::prelude::*;

use super::{AttentionInput, AttentionKernel, LayerAttention};
use crate::model::blocks::softmax;
use crate::{Error, Result};

/// Key-axis score convolution and head mixing over a pretrained model's attention.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiTokenKernel {
    n_heads: usize,
    key_kernel: usize,
    /// `[n_heads, key_kernel]`.
    conv: Vec<f32>,
    mix_group: usize,
    /// Per head in order, one weight per head of its group (see [`MultiTokenKernel::new`]).
    mix: Vec<f32>,
}

impl MultiTokenKernel {
    /// The identity convolution and mixing: the kernel starts as exact attention.
    pub fn identity(n_heads: usize, key_kernel: usize, mix_group: usize) -> Result<Self> {
        check_sizes(n_heads, key_kernel, mix_group)?;
        let mut conv = vec![0.0; n_heads * key_kernel];
        (0..n_heads).for_each(|h| conv[h * key_kernel + key_kernel / 2] = 1.0);
        let mut mix = vec![0.0; mix_len(n_heads, mix_group)];
        for h in 0..n_heads {
            let (first, _) = mix_group_of(h, n_heads, mix_group);
            mix[mix_row(h, n_heads, mix_group).start + (h - first)] = 1.0;
        }
        Self::new(n_heads, key_kernel, conv, mix_group, mix)
    }

    /// `conv` is `[n_heads, key_kernel]`. `mix` holds, for every head in order, one weight per
    /// head of its mixing group: `[n_heads / mix_group, mix_group, mix_group]` when the groups
    /// are even, followed by `[r, r]` for a last group of the `r` remaining heads.
    pub fn new(
        n_heads: usize,
        key_kernel: usize,
        conv: Vec<f32>,
        mix_group: usize,
        mix: Vec<f32>,
    ) -> Result<Self> {
        check_sizes(n_heads, key_kernel, mix_group)?;
        if conv.len() != n_heads * key_kernel || mix.len() != mix_len(n_heads, mix_group) {
            return Err(Error::InvalidRequest(format!(
                "multi-token kernel: conv needs {} weights and mix {}, got {} and {}",
                n_heads * key_kernel,
                mix_len(n_heads, mix_group),
                conv.len(),
                mix.len()
            )));
        }
        if conv.iter().chain(&mix).any(|w| !w.is_finite()) {
            return Err(Error::InvalidRequest(
                "multi-token kernel: weights must be finite".into(),
            ));
        }
        Ok(Self {
            n_heads,
            key_kernel,
            conv,
            mix_group,
            mix,
        })
    }

    /// `[n_heads, head_dim]`: every head's output for query row `i`.
    fn query_row(&self, input: &AttentionInput, layer: &LayerAttention, i: usize) -> Vec<f32> {
        let (d, n_keys, ck) = (input.head_dim, input.kv_len, self.key_kernel);
        let position = input.query_position(i);
        let visible = |k: usize| layer.mask.allows(position, k);
        let half = ck / 2;
        let mut weights = vec![0f32; self.n_heads * n_keys];
        let mut scores = vec![0f32; n_keys];
        for (h, head_weights) in weights.chunks_exact_mut(n_keys).enumerate() {
            let query = &input.q_head(h)[i * d..(i + 1) * d];
            let keys = input.k_head(h / input.group_size());
            for (k, (score, key)) in scores.iter_mut().zip(keys.chunks_exact(d)).enumerate() {
                *score = if visible(k) {
                    dot(query, key) * layer.scale
                } else {
                    0.0
                };
            }
            let theta = &self.conv[h * ck..(h + 1) * ck];
            for (j, weight) in head_weights.iter_mut().enumerate() {
                *weight = if visible(j) {
                    theta
                        .iter()
                        .enumerate()
                        .filter_map(|(b, t)| {
                            (j + half)
                                .checked_sub(b)
                                .and_then(|k| scores.get(k))
                                .map(|s| t * s)
                        })
                        .sum()
                } else {
                    f32::NEG_INFINITY
                };
            }
            softmax(head_weights);
        }
        let mut row = vec![0f32; self.n_heads * d];
        for (h, out) in row.chunks_exact_mut(d).enumerate() {
            let (first_in_group, _) = mix_group_of(h, self.n_heads, self.mix_group);
            let mixing = &self.mix[mix_row(h, self.n_heads, self.mix_group)];
            let values = input.v_head(h / input.group_size());
            for (j, value) in values.chunks_exact(d).enumerate() {
                let weight: f32 = mixing
                    .iter()
                    .enumerate()
                    .map(|(g, m)| m * weights[(first_in_group + g) * n_keys + j])
                    .sum();
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

fn check_sizes(n_heads: usize, key_kernel: usize, mix_group: usize) -> Result<()> {
    if n_heads == 0 || key_kernel == 0 || mix_group == 0 {
        return Err(Error::InvalidRequest(format!(
            "multi-token kernel: n_heads {n_heads}, key_kernel {key_kernel} and mix_group \
             {mix_group} must all be at least 1"
        )));
    }
    Ok(())
}

/// The first head and the size of head `h`'s mixing group.
fn mix_group_of(h: usize, n_heads: usize, mix_group: usize) -> (usize, usize) {
    let first = h / mix_group * mix_group;
    (first, mix_group.min(n_heads - first))
}

/// Where head `h`'s mixing weights lie in `mix`: every earlier group is full.
fn mix_row(h: usize, n_heads: usize, mix_group: usize) -> std::ops::Range<usize> {
    let (first, size) = mix_group_of(h, n_heads, mix_group);
    let start = first * mix_group + (h - first) * size;
    start..start + size
}

/// The number of mixing weights: the square of each group's size, summed.
fn mix_len(n_heads: usize, mix_group: usize) -> usize {
    let (first, size) = mix_group_of(n_heads - 1, n_heads, mix_group);
    first * mix_group + size * size
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl AttentionKernel for MultiTokenKernel {
    fn name(&self) -> &str {
        "multi_token"
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
        if input.n_q_heads != self.n_heads {
            return Err(Error::InvalidRequest(format!(
                "multi-token kernel made for {} heads, given {}",
                self.n_heads, input.n_q_heads
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

/// Writes per-query rows `[n_heads, head_dim]` into the head-major output.
pub(super) fn scatter_rows(rows: &[Vec<f32>], input: &AttentionInput, out: &mut [f32]) {
    let d = input.head_dim;
    for (i, row) in rows.iter().enumerate() {
        for (h, head) in row.chunks_exact(d).enumerate() {
            let start = (h * input.n_queries + i) * d;
            out[start..start + d].copy_from_slice(head);
        }
    }
}
