//! Multi-Token Attention (Golovneva et al. 2025, "Multi-Token Attention"): each head's
//! attention scores are convolved over neighbouring queries and keys before the softmax, and
//! the attention maps of a group of heads are mixed after it, so one weight can depend on
//! several query–key pairs at once.
//!
//! For head `h`, with `S = Q Kᵀ · scale` and `half = ⌊c_k / 2⌋`:
//! ```text
//! S0[i, j]  = S[i, j] if j <= i else 0                     (no future key leaks into the conv)
//! C[i, j]   = Σ_{a < c_q} Σ_{b < c_k} θ_h[a, b] · S0[i - a, j + half - b]   (out of range: 0)
//! A         = softmax over j of (C[i, j] if j <= i else -inf)
//! A'_h      = Σ_{h' in h's group} M[h, h'] · A_h'          (head mixing)
//! out_h     = A'_h V_h
//! ```
//! The query axis looks only backwards (`a >= 0`), the key axis both ways, but every key it
//! reads beyond the query is zero, so the whole is causal. With `θ_h` = 1 at `[0, half]` and
//! `M` = identity it is standard attention; both start there. Heads are mixed after the
//! softmax; the paper's group normalisation of the head outputs is left out.

use candle_core::{Device, IndexOp, Tensor, Var};

use super::attention_ops::{
    append, causal_softmax, fan_in_std, hide, merge_heads, project, split_heads, to_candle, visible,
};
use super::{Mixer, Params};
use crate::{Error, Result};

/// Sizes of a Multi-Token Attention mixer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtaConfig {
    pub d_model: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    /// `c_q`: how many queries (this one and earlier ones) the score convolution spans.
    pub query_kernel: usize,
    /// `c_k`: how many neighbouring keys the score convolution spans.
    pub key_kernel: usize,
    /// Heads per mixing group (1: no mixing). Groups are consecutive; when `n_heads` is not a
    /// multiple of it, the last group is smaller and holds the remaining heads.
    pub mix_group: usize,
}

impl MtaConfig {
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("head_dim", self.head_dim),
            ("query_kernel", self.query_kernel),
            ("key_kernel", self.key_kernel),
            ("mix_group", self.mix_group),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::InvalidRequest(format!(
                "multi-token attention: {name} must be at least 1"
            )));
        }
        Ok(())
    }
}

/// Multi-Token Attention as a trainable mixer.
#[derive(Debug)]
pub struct MultiTokenAttention {
    config: MtaConfig,
    params: Params,
    w_q: Var,
    w_k: Var,
    w_v: Var,
    w_o: Var,
    /// `[n_heads, c_q, c_k]`, the per-head score convolution.
    conv: Var,
    /// Flat: `[n_heads / group, group, group]` for the full groups, then `[r, r]` for a last
    /// group of `r` remaining heads (the layout of `attention::MultiTokenKernel`'s mix). Row
    /// `h` of a group mixes that group's maps into head `h`.
    mix: Var,
}

/// What decoding needs from the tokens already seen: all keys and values, and the last
/// `c_q - 1` queries, whose scores the query-axis convolution reads.
#[derive(Clone, Debug, Default)]
pub struct MtaCache {
    /// `[batch, n_heads, len, head_dim]`.
    keys: Option<Tensor>,
    values: Option<Tensor>,
    /// `[batch, n_heads, min(len, c_q - 1), head_dim]`.
    recent_queries: Option<Tensor>,
    len: usize,
}

impl MtaCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl MultiTokenAttention {
    /// Random projections (seeded), identity convolution and identity head mixing.
    pub fn new(config: MtaConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let MtaConfig {
            d_model,
            n_heads,
            head_dim,
            query_kernel,
            key_kernel,
            mix_group,
        } = config;
        let inner = n_heads * head_dim;
        let mut params = Params::new(seed, device);
        let w_q = params.normal("w_q", &[d_model, inner], fan_in_std(d_model))?;
        let w_k = params.normal("w_k", &[d_model, inner], fan_in_std(d_model))?;
        let w_v = params.normal("w_v", &[d_model, inner], fan_in_std(d_model))?;
        let w_o = params.normal("w_o", &[inner, d_model], fan_in_std(inner))?;
        let mut identity_conv = vec![0f32; n_heads * query_kernel * key_kernel];
        for h in 0..n_heads {
            identity_conv[h * query_kernel * key_kernel + key_kernel / 2] = 1.0;
        }
        let conv = params.push(
            "conv",
            Tensor::from_vec(identity_conv, (n_heads, query_kernel, key_kernel), device)?,
        )?;
        // An identity matrix per group (its diagonal is every `size + 1`-th entry).
        let (full_groups, rest) = (n_heads / mix_group, n_heads % mix_group);
        let mut identity_mix = Vec::with_capacity(full_groups * mix_group.pow(2) + rest.pow(2));
        for size in std::iter::repeat_n(mix_group, full_groups).chain((rest > 0).then_some(rest)) {
            identity_mix.extend((0..size * size).map(|i| f32::from(u8::from(i % (size + 1) == 0))));
        }
        let mix_len = identity_mix.len();
        let mix = params.push("mix", Tensor::from_vec(identity_mix, mix_len, device)?)?;
        Ok(Self {
            config,
            params,
            w_q,
            w_k,
            w_v,
            w_o,
            conv,
            mix,
        })
    }

    pub fn config(&self) -> &MtaConfig {
        &self.config
    }

    /// Runs the tokens `x` `[batch, n, d_model]` that follow what `cache` holds, appends them
    /// to it, and returns their outputs. Decode is one call per token; `forward` is one call
    /// on an empty cache.
    pub fn step(&self, x: &Tensor, cache: &mut MtaCache) -> Result<Tensor> {
        let c = &self.config;
        let (_, n, d_model) = x.dims3()?;
        if d_model != c.d_model || n == 0 {
            return Err(Error::InvalidRequest(format!(
                "multi-token attention: input must be [batch, n >= 1, {}], got {:?}",
                c.d_model,
                x.dims()
            )));
        }
        let q = split_heads(&project(x, &self.w_q)?, c.n_heads)?;
        let k = split_heads(&project(x, &self.w_k)?, c.n_heads)?;
        let v = split_heads(&project(x, &self.w_v)?, c.n_heads)?;
        let keys = append(&cache.keys, &k, 2)?;
        let values = append(&cache.values, &v, 2)?;
        let query_rows = append(&cache.recent_queries, &q, 2)?;
        let out = self.attend(&query_rows, &keys, &values, cache.len, n)?;

        let rows = query_rows.dim(2)?;
        let keep = rows.min(c.query_kernel - 1);
        cache.recent_queries = (keep > 0)
            .then(|| query_rows.narrow(2, rows - keep, keep))
            .transpose()?;
        cache.keys = Some(keys);
        cache.values = Some(values);
        cache.len += n;
        Ok(project(&merge_heads(&out)?, &self.w_o)?)
    }

    /// Attention for the last `n` rows of `query_rows` (`[batch, heads, m + n, head_dim]`,
    /// the first `m` being earlier queries kept for the convolution), the first of them at
    /// absolute position `first`, over `keys`/`values` `[batch, heads, first + n, head_dim]`.
    fn attend(
        &self,
        query_rows: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        first: usize,
        n: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let device = query_rows.device();
        let (b, h, rows, _) = query_rows.dims4()?;
        let earlier = rows - n;
        let s = keys.dim(2)?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let scores = (query_rows.matmul(&keys.t()?)? * scale)?;
        let scores = hide(&scores, &visible(rows, s, first - earlier, device)?, 0.0)?;

        // Zero rows above position 0 and zero columns on both sides, so that every shifted
        // view below is in range.
        let (cq, ck) = (c.query_kernel, c.key_kernel);
        let half = ck / 2;
        let padded = scores
            .pad_with_zeros(2, cq - 1 - earlier, 0)?
            .pad_with_zeros(3, ck - 1 - half, half)?;
        let mut convolved = Tensor::zeros((b, h, n, s), scores.dtype(), device)?;
        for a in 0..cq {
            for bk in 0..ck {
                let weight = self.conv.i((.., a, bk))?.reshape((1, h, 1, 1))?;
                let shifted = padded.narrow(2, cq - 1 - a, n)?.narrow(3, ck - 1 - bk, s)?;
                convolved = (convolved + shifted.broadcast_mul(&weight)?)?;
            }
        }
        let weights = causal_softmax(&convolved, first)?;

        // Each group's mixing matrix times its heads' maps: the full groups in one batched
        // matmul, then the smaller last group, if any.
        let group = c.mix_group;
        let (full_groups, rest) = (h / group, h % group);
        let full_weights = full_groups * group * group;
        let mut parts = Vec::with_capacity(2);
        if full_groups > 0 {
            let mix = self
                .mix
                .narrow(0, 0, full_weights)?
                .reshape((full_groups, group, group))?;
            let maps = weights.narrow(1, 0, full_groups * group)?.reshape((
                b,
                full_groups,
                group,
                n * s,
            ))?;
            parts.push(
                mix.broadcast_matmul(&maps)?
                    .reshape((b, full_groups * group, n, s))?,
            );
        }
        if rest > 0 {
            let mix = self
                .mix
                .narrow(0, full_weights, rest * rest)?
                .reshape((rest, rest))?;
            let maps = weights
                .narrow(1, full_groups * group, rest)?
                .reshape((b, rest, n * s))?;
            parts.push(mix.broadcast_matmul(&maps)?.reshape((b, rest, n, s))?);
        }
        let mixed = Tensor::cat(&parts, 1)?;
        Ok(mixed.matmul(values)?)
    }
}

impl Mixer for MultiTokenAttention {
    fn name(&self) -> &str {
        "multi_token"
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.step(x, &mut MtaCache::new()).map_err(to_candle)
    }

    fn parameters(&self) -> &Params {
        &self.params
    }
}
