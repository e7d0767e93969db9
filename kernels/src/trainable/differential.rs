//! Differential attention (Ye et al. 2024, "Differential Transformer"): each head computes two
//! softmax maps from split queries and keys and attends with their difference, which cancels
//! the attention noise both maps share.
//!
//! For head `h`, with queries and keys split into two halves of `head_dim` each and values of
//! `2 · head_dim`:
//! ```text
//! A1 = softmax(Q1 K1ᵀ / √head_dim),  A2 = softmax(Q2 K2ᵀ / √head_dim)     (causal)
//! λ  = exp(λq1 · λk1) − exp(λq2 · λk2) + λ_init
//! out_h = (1 − λ_init) · RMSNorm((A1 − λ A2) V)
//! ```
//! As in the reference code, the two halves of head `h` are projected heads `2h` and `2h + 1`,
//! the λ vectors (length `head_dim`) are shared by the layer's heads, and the per-head RMSNorm
//! has a learned weight of length `2 · head_dim`.

use candle_core::{Device, Tensor, Var, D};

use super::attention_ops::{
    append, causal_softmax, fan_in_std, merge_heads, project, split_heads, to_candle,
};
use super::{Mixer, Params};
use crate::{Error, Result};

/// Where λ_init comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LambdaInit {
    /// The paper's schedule for layer `l` (counted from 1): `0.8 − 0.6 · exp(−0.3 · (l − 1))`.
    Layer(usize),
    /// A given value.
    Value(f64),
}

impl LambdaInit {
    pub fn value(self) -> Result<f64> {
        match self {
            LambdaInit::Layer(0) => Err(Error::InvalidRequest(
                "differential attention: layers are counted from 1 for λ_init".into(),
            )),
            LambdaInit::Layer(l) => Ok(0.8 - 0.6 * (-0.3 * (l as f64 - 1.0)).exp()),
            LambdaInit::Value(v) if v.is_finite() => Ok(v),
            LambdaInit::Value(v) => Err(Error::InvalidRequest(format!(
                "differential attention: λ_init {v} is not finite"
            ))),
        }
    }
}

/// Sizes of a differential attention mixer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DifferentialConfig {
    pub d_model: usize,
    pub n_heads: usize,
    /// Width of each of a head's two query/key halves; its values are twice as wide.
    pub head_dim: usize,
    pub lambda_init: LambdaInit,
    /// Epsilon of the per-head RMSNorm.
    pub rms_eps: f64,
}

impl DifferentialConfig {
    /// The paper's settings for layer `layer` (from 1).
    pub fn new(d_model: usize, n_heads: usize, head_dim: usize, layer: usize) -> Self {
        Self {
            d_model,
            n_heads,
            head_dim,
            lambda_init: LambdaInit::Layer(layer),
            rms_eps: 1e-5,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::InvalidRequest(format!(
                "differential attention: {name} must be at least 1"
            )));
        }
        if self.rms_eps.is_nan() || self.rms_eps <= 0.0 {
            return Err(Error::InvalidRequest(format!(
                "differential attention: rms_eps {} must be positive",
                self.rms_eps
            )));
        }
        self.lambda_init.value().map(|_| ())
    }
}

/// Differential attention as a trainable mixer.
#[derive(Debug)]
pub struct DifferentialAttention {
    config: DifferentialConfig,
    lambda_init: f64,
    params: Params,
    w_q: Var,
    w_k: Var,
    w_v: Var,
    w_o: Var,
    lambda_q1: Var,
    lambda_k1: Var,
    lambda_q2: Var,
    lambda_k2: Var,
    norm: Var,
}

/// Keys and values of the tokens seen so far.
#[derive(Clone, Debug, Default)]
pub struct DifferentialCache {
    /// `[batch, 2 · n_heads, len, head_dim]`.
    keys: Option<Tensor>,
    /// `[batch, n_heads, len, 2 · head_dim]`.
    values: Option<Tensor>,
    len: usize,
}

impl DifferentialCache {
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

impl DifferentialAttention {
    /// Seeded random projections, λ vectors drawn from N(0, 0.1²) as in the reference code,
    /// and a norm weight of ones.
    pub fn new(config: DifferentialConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let DifferentialConfig {
            d_model,
            n_heads,
            head_dim,
            ..
        } = config;
        let inner = 2 * n_heads * head_dim;
        let mut params = Params::new(seed, device);
        let w_q = params.normal("w_q", &[d_model, inner], fan_in_std(d_model))?;
        let w_k = params.normal("w_k", &[d_model, inner], fan_in_std(d_model))?;
        let w_v = params.normal("w_v", &[d_model, inner], fan_in_std(d_model))?;
        let w_o = params.normal("w_o", &[inner, d_model], fan_in_std(inner))?;
        let lambda_q1 = params.normal("lambda_q1", &[head_dim], 0.1)?;
        let lambda_k1 = params.normal("lambda_k1", &[head_dim], 0.1)?;
        let lambda_q2 = params.normal("lambda_q2", &[head_dim], 0.1)?;
        let lambda_k2 = params.normal("lambda_k2", &[head_dim], 0.1)?;
        let norm = params.constant("norm", &[2 * head_dim], 1.0)?;
        Ok(Self {
            lambda_init: config.lambda_init.value()?,
            config,
            params,
            w_q,
            w_k,
            w_v,
            w_o,
            lambda_q1,
            lambda_k1,
            lambda_q2,
            lambda_k2,
            norm,
        })
    }

    pub fn config(&self) -> &DifferentialConfig {
        &self.config
    }

    pub fn lambda_init(&self) -> f64 {
        self.lambda_init
    }

    /// λ = exp(λq1 · λk1) − exp(λq2 · λk2) + λ_init, a scalar tensor.
    pub fn lambda(&self) -> candle_core::Result<Tensor> {
        let first = (self.lambda_q1.as_tensor() * self.lambda_k1.as_tensor())?
            .sum_all()?
            .exp()?;
        let second = (self.lambda_q2.as_tensor() * self.lambda_k2.as_tensor())?
            .sum_all()?
            .exp()?;
        (first - second)? + self.lambda_init
    }

    /// Runs the tokens `x` `[batch, n, d_model]` that follow what `cache` holds, appends them
    /// to it, and returns their outputs.
    pub fn step(&self, x: &Tensor, cache: &mut DifferentialCache) -> Result<Tensor> {
        let c = &self.config;
        let (b, n, d_model) = x.dims3()?;
        if d_model != c.d_model || n == 0 {
            return Err(Error::InvalidRequest(format!(
                "differential attention: input must be [batch, n >= 1, {}], got {:?}",
                c.d_model,
                x.dims()
            )));
        }
        let (h, d) = (c.n_heads, c.head_dim);
        let q = split_heads(&project(x, &self.w_q)?, 2 * h)?;
        let k = split_heads(&project(x, &self.w_k)?, 2 * h)?;
        let v = split_heads(&project(x, &self.w_v)?, h)?;
        let keys = append(&cache.keys, &k, 2)?;
        let values = append(&cache.values, &v, 2)?;
        let s = keys.dim(2)?;

        let scores = (q.matmul(&keys.t()?)? * (1.0 / (d as f64).sqrt()))?;
        let maps = causal_softmax(&scores, cache.len)?.reshape((b, h, 2, n, s))?;
        let first = maps.narrow(2, 0, 1)?.squeeze(2)?;
        let second = maps.narrow(2, 1, 1)?.squeeze(2)?;
        let weights = (first - second.broadcast_mul(&self.lambda()?)?)?;
        let heads = weights.matmul(&values)?;

        // Per-head RMSNorm by hand: candle's fused norms drop gradients.
        let mean_square = heads.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = heads
            .broadcast_div(&(mean_square + c.rms_eps)?.sqrt()?)?
            .broadcast_mul(self.norm.as_tensor())?;
        let scaled = (normed * (1.0 - self.lambda_init))?;

        cache.keys = Some(keys);
        cache.values = Some(values);
        cache.len += n;
        Ok(project(&merge_heads(&scaled)?, &self.w_o)?)
    }
}

impl Mixer for DifferentialAttention {
    fn name(&self) -> &str {
        "differential"
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.step(x, &mut DifferentialCache::new())
            .map_err(to_candle)
    }

    fn parameters(&self) -> &Params {
        &self.params
    }
}
