//! `LogLinearAttention`: Log-Linear attention as a trainable token mixer.

use candle_core::{Result, Tensor, Var};

use super::{FenwickState, LogLinearMixing, LogLinearVariant};
use crate::trainable::linear::{ops, ScalarDecay};
use crate::trainable::{Mixer, Params};
use crate::Error;

/// The shape of a `LogLinearAttention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLinearConfig {
    pub variant: LogLinearVariant,
    pub d_model: usize,
    /// Heads; each has `d_model / n_heads` query, key and value channels.
    pub n_heads: usize,
    /// Tokens per chunk of the chunkwise path: a power of two.
    pub chunk: usize,
    /// Fenwick levels with a weight each; sequences may hold up to `2^(levels − 1)` tokens.
    pub levels: usize,
}

impl LogLinearConfig {
    /// A config with chunks of 16 tokens and 16 levels (sequences up to 32768 tokens).
    pub fn new(variant: LogLinearVariant, d_model: usize, n_heads: usize) -> LogLinearConfig {
        LogLinearConfig {
            variant,
            d_model,
            n_heads,
            chunk: 16,
            levels: 16,
        }
    }

    /// Rejects zero sizes, a `d_model` the heads do not divide, a chunk that is not a power
    /// of two, and a level count outside `1..=40`.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: String| {
            Err(Error::InvalidRequest(format!(
                "{}: {what}",
                self.variant.name()
            )))
        };
        if self.n_heads == 0 || self.d_model == 0 {
            return bad(format!(
                "d_model {} and n_heads {} must be positive",
                self.d_model, self.n_heads
            ));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "d_model {} is not divisible by n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        if !self.chunk.is_power_of_two() {
            return bad(format!(
                "the chunk size must be a power of two (1, 2, 4, ...), got {}",
                self.chunk
            ));
        }
        if !(1..=40).contains(&self.levels) {
            return bad(format!(
                "levels must be in 1..=40 (16 covers 32768 tokens), got {}",
                self.levels
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// The longest sequence the level weights cover.
    pub fn max_len(&self) -> usize {
        1 << (self.levels - 1)
    }
}

/// Log-Linear attention as a `Mixer`: projections `W_q, W_k, W_v, W_o`, level weights
/// `λ = softplus(x W_λ + b_λ)` per head and level, and for the Mamba-2 variant its decay.
///
/// Queries and keys go through `elu + 1` and the output is divided by the matching
/// normaliser `Σ_s M[t,s] φ(q_t)·φ(k_s)` (all weights are positive, so it is too), then
/// RMS-normalised per head before `W_o`.
#[derive(Debug)]
pub struct LogLinearAttention {
    config: LogLinearConfig,
    params: Params,
    w_q: Var,
    w_k: Var,
    w_v: Var,
    w_o: Var,
    w_level: Var,
    level_bias: Var,
    decay: Option<ScalarDecay>,
}

/// The decode state of a `LogLinearAttention`: its Fenwick level states.
#[derive(Clone, Debug, Default)]
pub struct LogLinearState {
    fenwick: FenwickState,
}

impl LogLinearState {
    pub fn fenwick(&self) -> &FenwickState {
        &self.fenwick
    }
}

impl LogLinearAttention {
    /// A mixer with parameters drawn from `seed`.
    pub fn new(
        config: LogLinearConfig,
        seed: u64,
        device: &candle_core::Device,
    ) -> crate::Result<LogLinearAttention> {
        config.validate()?;
        let (d, heads) = (config.d_model, config.n_heads);
        let std = (d as f64).powf(-0.5);
        let mut params = Params::new(seed, device);
        let w_q = params.normal("w_q", &[d, d], std)?;
        let w_k = params.normal("w_k", &[d, d], std)?;
        let w_v = params.normal("w_v", &[d, d], std)?;
        let w_o = params.normal("w_o", &[d, d], std)?;
        let w_level = params.normal("w_level", &[d, heads * config.levels], std)?;
        let level_bias = params.constant("level_bias", &[heads * config.levels], 0.0)?;
        let decay = match config.variant {
            LogLinearVariant::Mamba2 => Some(ScalarDecay::new(&mut params, d, heads)?),
            LogLinearVariant::Plain => None,
        };
        Ok(LogLinearAttention {
            config,
            params,
            w_q,
            w_k,
            w_v,
            w_o,
            w_level,
            level_bias,
            decay,
        })
    }

    pub fn config(&self) -> &LogLinearConfig {
        &self.config
    }

    /// The state before the first token.
    pub fn new_state(&self) -> LogLinearState {
        LogLinearState::default()
    }

    /// One decode step: `x_t` `[batch, d_model]` → `[batch, d_model]`, advancing `state`.
    /// Equals row `t` of `forward` after steps over rows `0..t`.
    pub fn step(&self, x_t: &Tensor, state: &mut LogLinearState) -> Result<Tensor> {
        let mixing = self.mixing(&x_t.unsqueeze(1)?)?;
        let mixed = state.fenwick.step(&mixing)?;
        self.output(&mixed)?.squeeze(1)
    }

    /// The whole sequence through the recurrent path (what `step` computes, in one call).
    pub fn forward_recurrent(&self, x: &Tensor) -> Result<Tensor> {
        let mixed = self.mixing(x)?.recurrent(&mut FenwickState::new())?;
        self.output(&mixed)
    }

    /// The per-token inputs of the core for `x` `[batch, seq, d_model]`.
    pub fn mixing(&self, x: &Tensor) -> Result<LogLinearMixing> {
        let heads = self.config.n_heads;
        let project = |w: &Var| ops::split_heads(&x.broadcast_matmul(w)?, heads);
        let level_logits = x
            .broadcast_matmul(&self.w_level)?
            .broadcast_add(&self.level_bias)?;
        Ok(LogLinearMixing {
            q: ops::elu_plus_one(&project(&self.w_q)?)?,
            k: ops::elu_plus_one(&project(&self.w_k)?)?,
            v: ops::append_ones(&project(&self.w_v)?)?,
            level_weights: ops::split_heads(&ops::softplus(&level_logits)?, heads)?,
            log_decay: match &self.decay {
                Some(decay) => Some(decay.log_decay(x)?),
                None => None,
            },
        })
    }

    fn output(&self, mixed: &Tensor) -> Result<Tensor> {
        ops::project_heads(&ops::divide_by_normalizer(mixed)?, &self.w_o)
    }
}

impl Mixer for LogLinearAttention {
    fn name(&self) -> &str {
        self.config.variant.name()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mixed = self.mixing(x)?.chunkwise(self.config.chunk)?;
        self.output(&mixed)
    }

    fn parameters(&self) -> &Params {
        &self.params
    }
}
