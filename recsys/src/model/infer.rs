//! Serving's forward pass: one history at a time, in plain `f32` loops over weights copied
//! out of the trained model, with no tensor graph. candle spends most of a single 50-item
//! history's time in per-op overhead; here the work is the arithmetic, and the last block
//! computes only the last position, the one that scores the items.
//!
//! It runs the same rule as training: the layer's visibility table, the kernel's score term
//! (`ScoreTerm::eval`, else `s · scale`), hidden keys at −1e9 before the softmax. The loops
//! are compiled twice, for the baseline target and with AVX2 and FMA, chosen at run time.
//! `SasRec::score_histories` (candle) is its reference in the tests.

use kernels::akl::mask::ScoreTerm;
use kernels::model::blocks::exp_of_nonpositive;

use super::{Norm, SasRec};
use crate::{Error, Result};

/// The logit of a hidden key, as `attention_ops::hide` fills it.
const HIDDEN: f32 = -1e9;

/// A trained model's weights, laid out for single-history inference.
#[derive(Debug)]
pub struct Inference {
    n_items: usize,
    max_len: usize,
    d: usize,
    heads: usize,
    d_ff: usize,
    /// `[n_items, d]`: embeds items and scores them.
    item_emb: Vec<f32>,
    /// `[max_len, d]`.
    pos_emb: Vec<f32>,
    blocks: Vec<BlockWeights>,
    final_norm: NormWeights,
}

#[derive(Debug)]
struct NormWeights {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// One block; matrices `[in, out]` as the model multiplies them.
#[derive(Debug)]
struct BlockWeights {
    attn_norm: NormWeights,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    ffn_norm: NormWeights,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    /// `[heads, max_len, max_len]`: 1 where a query position sees a key position.
    visible: Vec<u8>,
    scores: Vec<Option<ScoreTerm>>,
}

impl SasRec {
    /// The model's weights and kernel as an `Inference`.
    pub fn inference(&self) -> Result<Inference> {
        let flat = |v: &candle_core::Var| -> Result<Vec<f32>> {
            Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?)
        };
        let norm = |n: &Norm| -> Result<NormWeights> {
            Ok(NormWeights {
                weight: flat(&n.weight)?,
                bias: flat(&n.bias)?,
            })
        };
        let blocks = self
            .blocks
            .iter()
            .zip(&self.kernel.layers)
            .map(|(b, rule)| {
                Ok(BlockWeights {
                    attn_norm: norm(&b.attn_norm)?,
                    wq: flat(&b.wq)?,
                    wk: flat(&b.wk)?,
                    wv: flat(&b.wv)?,
                    wo: flat(&b.wo)?,
                    ffn_norm: norm(&b.ffn_norm)?,
                    w1: flat(&b.w1)?,
                    b1: flat(&b.b1)?,
                    w2: flat(&b.w2)?,
                    b2: flat(&b.b2)?,
                    visible: rule.visible.flatten_all()?.to_vec1::<u8>()?,
                    scores: rule.scores.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let c = &self.config;
        Ok(Inference {
            n_items: c.n_items,
            max_len: c.max_len,
            d: c.d_model,
            heads: c.n_heads,
            d_ff: c.d_ff,
            item_emb: flat(&self.item_emb)?,
            pos_emb: flat(&self.pos_emb)?,
            blocks,
            final_norm: norm(&self.final_norm)?,
        })
    }
}

impl Inference {
    /// Every item's score after `history` (its last `max_len` items), as
    /// `SasRec::score_histories` gives it.
    pub fn scores(&self, history: &[u32]) -> Result<Vec<f32>> {
        let tail = &history[history.len().saturating_sub(self.max_len)..];
        if tail.is_empty() {
            return Err(Error::InvalidRequest(
                "the history is empty: the model needs at least one item".into(),
            ));
        }
        if let Some(&item) = tail.iter().find(|&&i| i as usize >= self.n_items) {
            return Err(Error::InvalidRequest(format!(
                "item id {item} is not below the model's {} items",
                self.n_items
            )));
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: both features were detected just above.
            return Ok(unsafe { self.scores_avx2_fma(tail) });
        }
        Ok(self.scores_of(tail))
    }

    /// `scores_of` compiled with AVX2 and FMA, so its loops vectorise eight wide.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_avx2_fma(&self, tail: &[u32]) -> Vec<f32> {
        self.scores_of(tail)
    }

    #[inline(always)]
    fn scores_of(&self, tail: &[u32]) -> Vec<f32> {
        let (t, d) = (tail.len(), self.d);
        let mut x = vec![0f32; t * d];
        for (p, (&item, row)) in tail.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            let item = &self.item_emb[item as usize * d..][..d];
            let pos = &self.pos_emb[p * d..][..d];
            for ((x, &i), &p) in row.iter_mut().zip(item).zip(pos) {
                *x = i + p;
            }
        }
        let last_block = self.blocks.len() - 1;
        for (b, block) in self.blocks.iter().enumerate() {
            // Past the last block only the last position counts: there its queries, output
            // projection and feed-forward layer run for that row alone.
            let queries = if b == last_block { t - 1..t } else { 0..t };
            x = self.block(block, &x, t, queries);
        }
        let last = layer_norm(&x[x.len() - d..], &self.final_norm);
        let mut scores = vec![0f32; self.n_items];
        for (score, item) in scores.iter_mut().zip(self.item_emb.chunks_exact(d)) {
            *score = dot(&last, item);
        }
        scores
    }

    /// One block over positions `0..t`, returning the rows `queries` of its output.
    #[inline(always)]
    fn block(
        &self,
        w: &BlockWeights,
        x: &[f32],
        t: usize,
        queries: std::ops::Range<usize>,
    ) -> Vec<f32> {
        let (d, heads) = (self.d, self.heads);
        let head_dim = d / heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let h: Vec<f32> = x
            .chunks_exact(d)
            .flat_map(|row| layer_norm(row, &w.attn_norm))
            .collect();
        let own = &h[queries.start * d..queries.end * d];
        let q = matmul(own, &w.wq, d, d);
        let k = matmul(&h, &w.wk, d, d);
        let v = matmul(&h, &w.wv, d, d);
        let mut mixed = vec![0f32; queries.len() * d];
        let mut logits = vec![0f32; t];
        for (r, query) in queries.clone().enumerate() {
            for head in 0..heads {
                let cols = head * head_dim..(head + 1) * head_dim;
                let q_row = &q[r * d..][cols.clone()];
                let visible = &w.visible[(head * self.max_len + query) * self.max_len..][..t];
                for (key, logit) in logits.iter_mut().enumerate() {
                    *logit = if visible[key] == 0 {
                        HIDDEN
                    } else {
                        let s = dot(q_row, &k[key * d..][cols.clone()]);
                        match &w.scores[head] {
                            None => (f64::from(s) * scale) as f32,
                            Some(term) => term.eval(head, query, key, f64::from(s), scale) as f32,
                        }
                    };
                }
                softmax(&mut logits);
                let out = &mut mixed[r * d..][cols.clone()];
                for (key, &weight) in logits.iter().enumerate() {
                    axpy(out, weight, &v[key * d..][cols.clone()]);
                }
            }
        }
        let mut x: Vec<f32> = x[queries.start * d..queries.end * d].to_vec();
        add(&mut x, &matmul(&mixed, &w.wo, d, d));
        let h: Vec<f32> = x
            .chunks_exact(d)
            .flat_map(|row| layer_norm(row, &w.ffn_norm))
            .collect();
        let mut up = matmul(&h, &w.w1, d, self.d_ff);
        for row in up.chunks_exact_mut(self.d_ff) {
            for (u, &b) in row.iter_mut().zip(&w.b1) {
                *u = gelu_erf(*u + b);
            }
        }
        let mut down = matmul(&up, &w.w2, self.d_ff, d);
        for row in down.chunks_exact_mut(d) {
            add(row, &w.b2);
        }
        add(&mut x, &down);
        x
    }
}

/// `x · w` for rows `x` of `n_in` and `w` of `[n_in, n_out]`, row by row as sums of `w`'s
/// rows (so the inner loop runs along memory and vectorises).
#[inline(always)]
fn matmul(x: &[f32], w: &[f32], n_in: usize, n_out: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len() / n_in * n_out];
    for (x, y) in x.chunks_exact(n_in).zip(y.chunks_exact_mut(n_out)) {
        for (&xi, w_row) in x.iter().zip(w.chunks_exact(n_out)) {
            axpy(y, xi, w_row);
        }
    }
    y
}

/// `y += a · x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[inline(always)]
fn add(x: &mut [f32], y: &[f32]) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// `Σ a·b` in eight lanes, so it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in a8.zip(b8) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Layer norm as the model's `Norm`: `(x − mean) / sqrt(var + 1e-6) · weight + bias`.
#[inline(always)]
fn layer_norm(x: &[f32], norm: &NormWeights) -> Vec<f32> {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inverse = 1.0 / (var + 1e-6).sqrt();
    x.iter()
        .zip(&norm.weight)
        .zip(&norm.bias)
        .map(|((&v, &w), &b)| (v - mean) * inverse * w + b)
        .collect()
}

/// Softmax in place, the row maximum subtracted.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = exp_of_nonpositive(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// GELU with the exact `erf`, as candle's `gelu_erf`.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf` as `1 − erfc`, with Numerical Recipes' `erfc` (fractional error below 1.2e-7):
/// `t · exp(−z² + P(t))`, `t = 1 / (1 + z/2)`, `z = |x|`; the exponent is never positive.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let coefficients = [
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let series = coefficients.iter().rev().fold(0f32, |acc, &c| acc * t + c);
    let exponent = -z * z - 1.265_512_2 + t * series;
    let erfc = t * exp_of_nonpositive(exponent.min(0.0));
    (1.0 - erfc).copysign(x)
}
