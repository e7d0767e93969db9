//! Multi-head Latent Attention (DeepSeek-AI 2024, "DeepSeek-V2"): keys and values are
//! rebuilt per head from one small latent per token, so the KV cache holds `kv_rank` numbers
//! per token (plus one shared rotary key) instead of keys and values for every head.
//!
//! ```text
//! c_t   = x_t W_DKV                        latent, kv_rank wide (cached)
//! k^C_h = c W_UK^h,  v_h = c W_UV^h        per-head keys (no RoPE) and values
//! q^C_h = x W_Q^h,   q^R_h = RoPE(x W_QR^h),   k^R = RoPE(x W_KR)   (k^R shared, cached)
//! out   = Σ_h softmax((q^C_h·k^C_h + q^R_h·k^R) / √(head_dim + rope_dim)) v_h  W_O^h
//! ```
//! RoPE lives only in the decoupled `q^R`/`k^R` part, so that `W_UK` can be folded into the
//! query and `W_UV` into the output: the absorbed decode path ([`AbsorbedMla`]) attends over
//! the cached latents directly and never rebuilds a key or value. The query is projected
//! directly (DeepSeek-V2's optional query compression and latent norm are left out).
//!
//! [`convert_model_kv`] applies the same idea to a pretrained model without training: the
//! stacked key and value projections of each layer are cut to rank r by SVD.

use candle_core::{Device, Tensor, Var};

use super::attention_ops::{
    append, causal_softmax, fan_in_std, merge_heads, project, split_heads, to_candle,
};
use super::svd::Svd;
use super::{Mixer, Params};
use crate::model::Model;
use crate::{Error, Result};
use rayon::prelude::*;

/// Sizes of an MLA mixer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlaConfig {
    pub d_model: usize,
    pub n_heads: usize,
    /// Width of each head's position-free query and key part.
    pub head_dim: usize,
    /// Width of the decoupled rotary part (even).
    pub rope_dim: usize,
    pub value_dim: usize,
    /// Width of the cached latent (`d_c` in the paper).
    pub kv_rank: usize,
    pub rope_base: f64,
}

impl MlaConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidRequest(format!("MLA: {what}")));
        let sizes = [
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("head_dim", self.head_dim),
            ("rope_dim", self.rope_dim),
            ("value_dim", self.value_dim),
            ("kv_rank", self.kv_rank),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be at least 1"));
        }
        if !self.rope_dim.is_multiple_of(2) {
            return bad(format!("rope_dim {} must be even", self.rope_dim));
        }
        if self.kv_rank > self.d_model {
            return bad(format!(
                "kv_rank {} exceeds d_model {}: a latent cannot carry more than its input",
                self.kv_rank, self.d_model
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            return bad(format!(
                "rope_base {} must be finite and above 1",
                self.rope_base
            ));
        }
        Ok(())
    }

    fn scale(&self) -> f64 {
        1.0 / ((self.head_dim + self.rope_dim) as f64).sqrt()
    }
}

/// Multi-head Latent Attention as a trainable mixer.
#[derive(Debug)]
pub struct Mla {
    config: MlaConfig,
    params: Params,
    w_q: Var,
    w_qr: Var,
    w_dkv: Var,
    w_uk: Var,
    w_uv: Var,
    w_kr: Var,
    w_o: Var,
}

/// What MLA caches per token: the latent and the rotated shared key, nothing per head.
#[derive(Clone, Debug, Default)]
pub struct MlaCache {
    /// `[batch, len, kv_rank]`.
    latents: Option<Tensor>,
    /// `[batch, len, rope_dim]`, RoPE already applied.
    rope_keys: Option<Tensor>,
    len: usize,
}

impl MlaCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The new tokens' queries and their cached parts, shared by both decode paths.
struct Prepared {
    /// `[batch, heads, n, rope_dim]`, rotated.
    rope_queries: Tensor,
    /// `[batch, len, kv_rank]` and `[batch, 1, rope_dim, len]`, the new tokens appended.
    latents: Tensor,
    rope_keys_t: Tensor,
    first: usize,
}

impl Mla {
    /// Seeded random projections.
    pub fn new(config: MlaConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let MlaConfig {
            d_model: dm,
            n_heads: h,
            head_dim,
            rope_dim,
            value_dim,
            kv_rank,
            ..
        } = config;
        let mut params = Params::new(seed, device);
        let w_q = params.normal("w_q", &[dm, h * head_dim], fan_in_std(dm))?;
        let w_qr = params.normal("w_qr", &[dm, h * rope_dim], fan_in_std(dm))?;
        let w_dkv = params.normal("w_dkv", &[dm, kv_rank], fan_in_std(dm))?;
        let w_uk = params.normal("w_uk", &[kv_rank, h * head_dim], fan_in_std(kv_rank))?;
        let w_uv = params.normal("w_uv", &[kv_rank, h * value_dim], fan_in_std(kv_rank))?;
        let w_kr = params.normal("w_kr", &[dm, rope_dim], fan_in_std(dm))?;
        let w_o = params.normal("w_o", &[h * value_dim, dm], fan_in_std(h * value_dim))?;
        Ok(Self {
            config,
            params,
            w_q,
            w_qr,
            w_dkv,
            w_uk,
            w_uv,
            w_kr,
            w_o,
        })
    }

    pub fn config(&self) -> &MlaConfig {
        &self.config
    }

    /// Decode by rebuilding every cached token's keys and values from its latent: runs the
    /// tokens `x` `[batch, n, d_model]` after what `cache` holds and appends them to it.
    pub fn step(&self, x: &Tensor, cache: &mut MlaCache) -> Result<Tensor> {
        let c = &self.config;
        let p = self.prepare(x, cache)?;
        let queries = split_heads(&project(x, &self.w_q)?, c.n_heads)?;
        let keys = split_heads(&project(&p.latents, &self.w_uk)?, c.n_heads)?;
        let values = split_heads(&project(&p.latents, &self.w_uv)?, c.n_heads)?;
        let scores =
            (queries.matmul(&keys.t()?)? + p.rope_queries.broadcast_matmul(&p.rope_keys_t)?)?;
        let weights = causal_softmax(&(scores * c.scale())?, p.first)?;
        Ok(project(
            &merge_heads(&weights.matmul(&values)?)?,
            &self.w_o,
        )?)
    }

    /// The decode path with `W_UK` folded into the query and `W_UV` into the output.
    pub fn absorbed(&self) -> Result<AbsorbedMla<'_>> {
        let MlaConfig {
            d_model: dm,
            n_heads: h,
            head_dim,
            value_dim,
            kv_rank: r,
            ..
        } = self.config;
        // Per head: W_Q^h [dm, head_dim] · (W_UK^h)ᵀ [head_dim, r].
        let w_q = self.w_q.reshape((dm, h, head_dim))?.transpose(0, 1)?;
        let w_uk = self.w_uk.reshape((r, h, head_dim))?.permute((1, 2, 0))?;
        let query_to_latent = w_q.contiguous()?.matmul(&w_uk.contiguous()?)?.detach();
        // Per head: W_UV^h [r, value_dim] · W_O^h [value_dim, dm].
        let w_uv = self.w_uv.reshape((r, h, value_dim))?.transpose(0, 1)?;
        let w_o = self.w_o.reshape((h, value_dim, dm))?;
        let latent_to_output = w_uv.contiguous()?.matmul(&w_o)?.detach();
        Ok(AbsorbedMla {
            mla: self,
            query_to_latent,
            latent_to_output,
        })
    }

    /// Projects the new tokens, appends their latents and rotary keys to `cache`.
    fn prepare(&self, x: &Tensor, cache: &mut MlaCache) -> Result<Prepared> {
        let c = &self.config;
        let (_, n, d_model) = x.dims3()?;
        if d_model != c.d_model || n == 0 {
            return Err(Error::InvalidRequest(format!(
                "MLA: input must be [batch, n >= 1, {}], got {:?}",
                c.d_model,
                x.dims()
            )));
        }
        let first = cache.len;
        let rope = RotaryTable::new(c.rope_dim, c.rope_base, first, n, x.device())?;
        let rope_queries = rope.apply(&split_heads(&project(x, &self.w_qr)?, c.n_heads)?)?;
        let rope_keys = rope.apply(&project(x, &self.w_kr)?)?;
        let latents = append(&cache.latents, &project(x, &self.w_dkv)?, 1)?;
        let rope_keys = append(&cache.rope_keys, &rope_keys, 1)?;
        let rope_keys_t = rope_keys.unsqueeze(1)?.t()?;
        cache.latents = Some(latents.clone());
        cache.rope_keys = Some(rope_keys);
        cache.len += n;
        Ok(Prepared {
            rope_queries,
            latents,
            rope_keys_t,
            first,
        })
    }
}

impl Mixer for Mla {
    fn name(&self) -> &str {
        "mla"
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.step(x, &mut MlaCache::new()).map_err(to_candle)
    }

    fn parameters(&self) -> &Params {
        &self.params
    }
}

/// MLA's absorbed decode: scores and outputs computed against the cached latents, with
/// `W_Q^h (W_UK^h)ᵀ` and `W_UV^h W_O^h` folded ahead of time. The folded weights are a
/// snapshot of the mixer's parameters when [`Mla::absorbed`] ran.
#[derive(Debug)]
pub struct AbsorbedMla<'a> {
    mla: &'a Mla,
    /// `[heads, d_model, kv_rank]`.
    query_to_latent: Tensor,
    /// `[heads, kv_rank, d_model]`.
    latent_to_output: Tensor,
}

impl AbsorbedMla<'_> {
    /// Runs the tokens `x` `[batch, n, d_model]` after what `cache` holds and appends them.
    pub fn step(&self, x: &Tensor, cache: &mut MlaCache) -> Result<Tensor> {
        let c = &self.mla.config;
        let p = self.mla.prepare(x, cache)?;
        let latents_t = p.latents.unsqueeze(1)?.t()?;
        let latent_queries = x.unsqueeze(1)?.broadcast_matmul(&self.query_to_latent)?;
        let scores = (latent_queries.broadcast_matmul(&latents_t)?
            + p.rope_queries.broadcast_matmul(&p.rope_keys_t)?)?;
        let weights = causal_softmax(&(scores * c.scale())?, p.first)?;
        let latent_out = weights.broadcast_matmul(&p.latents.unsqueeze(1)?)?;
        Ok(latent_out
            .broadcast_matmul(&self.latent_to_output)?
            .sum(1)?)
    }
}

/// RoPE for positions `first..first + n` over `dims` features, rotating the two halves
/// (NeoX style), written with plain ops so that gradients flow.
struct RotaryTable {
    /// `[n, dims / 2]` each.
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    fn new(dims: usize, base: f64, first: usize, n: usize, device: &Device) -> Result<Self> {
        let half = dims / 2;
        let angles: Vec<f64> = (first..first + n)
            .flat_map(|position| {
                (0..half).map(move |i| position as f64 * base.powf(-(2.0 * i as f64) / dims as f64))
            })
            .collect();
        let table = |f: fn(f64) -> f64| -> Result<Tensor> {
            let values: Vec<f32> = angles.iter().map(|&a| f(a) as f32).collect();
            Ok(Tensor::from_vec(values, (n, half), device)?)
        };
        Ok(Self {
            cos: table(f64::cos)?,
            sin: table(f64::sin)?,
        })
    }

    /// `x` `[.., n, dims]`, rotated.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let last = x.rank() - 1;
        let half = x.dim(last)? / 2;
        let (x1, x2) = (x.narrow(last, 0, half)?, x.narrow(last, half, half)?);
        let rotated_1 = (x1.broadcast_mul(&self.cos)? - x2.broadcast_mul(&self.sin)?)?;
        let rotated_2 = (x2.broadcast_mul(&self.cos)? + x1.broadcast_mul(&self.sin)?)?;
        Ok(Tensor::cat(&[rotated_1, rotated_2], last)?)
    }
}

/// One layer's stacked key and value projection `[W_K; W_V]` (`[2 · kv_dim, d_model]`),
/// decomposed once by SVD and ready to be cut to any rank.
#[derive(Clone, Debug)]
pub struct KvFactorization {
    kv_dim: usize,
    d_model: usize,
    svd: Svd,
}

impl KvFactorization {
    /// `w_k` and `w_v` are `[kv_dim, d_model]`, row-major.
    pub fn new(w_k: &[f32], w_v: &[f32], kv_dim: usize, d_model: usize) -> Result<Self> {
        if w_k.len() != kv_dim * d_model || w_v.len() != kv_dim * d_model {
            return Err(Error::InvalidRequest(format!(
                "KV factorization: W_K has {} and W_V {} weights, expected [{kv_dim}, {d_model}]",
                w_k.len(),
                w_v.len()
            )));
        }
        let stacked: Vec<f64> = w_k.iter().chain(w_v).map(|&w| f64::from(w)).collect();
        Ok(Self {
            kv_dim,
            d_model,
            svd: Svd::new(&stacked, 2 * kv_dim, d_model)?,
        })
    }

    /// The factorization of `model`'s layer `layer`.
    pub fn of_layer(model: &Model, layer: usize) -> Result<Self> {
        let (w_k, w_v) = model.kv_projection_f32(layer)?;
        Self::new(&w_k, &w_v, model.config.kv_dim(), model.config.d_model)
    }

    /// The largest useful rank, `min(2 · kv_dim, d_model)`: there the latent form is exact.
    pub fn max_rank(&self) -> usize {
        self.svd.singular_values.len()
    }

    pub fn singular_values(&self) -> &[f64] {
        &self.svd.singular_values
    }

    /// The best rank-`rank` latent form (Eckart–Young): `c = Σ_r V_rᵀ h`, `[k; v] = U_r c`.
    pub fn latent_kv(&self, rank: usize) -> Result<LatentKv> {
        let (up, down) = self.svd.rank_factors(rank).map_err(|_| {
            Error::InvalidRequest(format!(
                "KV latent rank {rank} must be between 1 and {} (min of 2 · kv_dim and d_model)",
                self.max_rank()
            ))
        })?;
        Ok(LatentKv {
            rank,
            kv_dim: self.kv_dim,
            d_model: self.d_model,
            down,
            up,
        })
    }
}

/// A layer's keys and values rebuilt from an `rank`-wide latent per token, MLA style: only
/// the latent would be cached, `rank` floats per token instead of `2 · kv_dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentKv {
    pub rank: usize,
    pub kv_dim: usize,
    pub d_model: usize,
    /// `Σ_r V_rᵀ`, `[rank, d_model]`: hidden state → latent.
    pub down: Vec<f64>,
    /// `U_r`, `[2 · kv_dim, rank]`: latent → keys (first `kv_dim` rows), then values.
    pub up: Vec<f64>,
}

impl LatentKv {
    /// Latents of `hidden` rows (`[n, d_model]`, after the block's input norm): `[n, rank]`.
    pub fn latents(&self, hidden: &[f32]) -> Result<Vec<f64>> {
        if !hidden.len().is_multiple_of(self.d_model) {
            return Err(Error::InvalidRequest(format!(
                "KV latents: {} values are not whole rows of {}",
                hidden.len(),
                self.d_model
            )));
        }
        Ok(hidden
            .chunks_exact(self.d_model)
            .flat_map(|h| {
                self.down.chunks_exact(self.d_model).map(move |row| {
                    row.iter()
                        .zip(h)
                        .map(|(w, &x)| w * f64::from(x))
                        .sum::<f64>()
                })
            })
            .collect())
    }

    /// Keys and values (`[n, kv_dim]` each) rebuilt from `latents` (`[n, rank]`).
    pub fn keys_values(&self, latents: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        if !latents.len().is_multiple_of(self.rank) {
            return Err(Error::InvalidRequest(format!(
                "KV latents: {} values are not whole rows of rank {}",
                latents.len(),
                self.rank
            )));
        }
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for c in latents.chunks_exact(self.rank) {
            for (o, row) in self.up.chunks_exact(self.rank).enumerate() {
                let out = row.iter().zip(c).map(|(u, c)| u * c).sum::<f64>();
                if o < self.kv_dim {
                    keys.push(out);
                } else {
                    values.push(out);
                }
            }
        }
        Ok((keys, values))
    }

    /// The product weights `U_r Σ_r V_rᵀ` as `(W_K, W_V)`, `[kv_dim, d_model]` each: what
    /// [`Model::set_kv_projection`] takes, and the same map as the latent form.
    pub fn projection_weights(&self) -> (Vec<f32>, Vec<f32>) {
        let (r, d) = (self.rank, self.d_model);
        let mut product = vec![0f64; 2 * self.kv_dim * d];
        for (out_row, up_row) in product.chunks_exact_mut(d).zip(self.up.chunks_exact(r)) {
            for (u, down_row) in up_row.iter().zip(self.down.chunks_exact(d)) {
                out_row
                    .iter_mut()
                    .zip(down_row)
                    .for_each(|(o, w)| *o += u * w);
            }
        }
        let mut w_k: Vec<f32> = product.iter().map(|&w| w as f32).collect();
        let w_v = w_k.split_off(self.kv_dim * d);
        (w_k, w_v)
    }
}

/// What a model-wide KV conversion did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvConversion {
    pub rank: usize,
    /// f32 KV cache bytes per token over all layers, before (full keys and values).
    pub kv_bytes_per_token_before: usize,
    /// The same with only the latents cached.
    pub kv_bytes_per_token_latent: usize,
}

/// Decomposes every layer's key and value projections (in parallel over layers).
pub fn factorize_model_kv(model: &Model) -> Result<Vec<KvFactorization>> {
    (0..model.config.n_layers())
        .into_par_iter()
        .map(|layer| KvFactorization::of_layer(model, layer))
        .collect()
}

/// Puts the rank-`rank` cut of `factors` (one per layer, from [`factorize_model_kv`] on the
/// original weights) into `model`, as f32 product weights.
pub fn apply_kv_rank(
    model: &mut Model,
    factors: &[KvFactorization],
    rank: usize,
) -> Result<KvConversion> {
    let n_layers = model.config.n_layers();
    if factors.len() != n_layers {
        return Err(Error::InvalidRequest(format!(
            "KV conversion: {} factorizations for a model of {n_layers} layers",
            factors.len()
        )));
    }
    for (layer, factor) in factors.iter().enumerate() {
        let (w_k, w_v) = factor.latent_kv(rank)?.projection_weights();
        model.set_kv_projection(layer, w_k, w_v)?;
    }
    let f32_bytes = std::mem::size_of::<f32>();
    Ok(KvConversion {
        rank,
        kv_bytes_per_token_before: n_layers * 2 * model.config.kv_dim() * f32_bytes,
        kv_bytes_per_token_latent: n_layers * rank * f32_bytes,
    })
}

/// The largest latent rank a model's keys and values can take, `min(2 · kv_dim, d_model)`:
/// known from its config, before any factorisation.
pub fn max_kv_rank(config: &crate::ModelConfig) -> usize {
    (2 * config.kv_dim()).min(config.d_model)
}

/// Converts every layer of a pretrained model to rank-`rank` latent keys and values by SVD,
/// without training (the MLA idea applied to a GQA model). The model then runs the product
/// weights, which give the same keys and values as the latent form; the cache the latent
/// form needs is reported in the result.
pub fn convert_model_kv(model: &mut Model, rank: usize) -> Result<KvConversion> {
    let factors = factorize_model_kv(model)?;
    apply_kv_rank(model, &factors, rank)
}
