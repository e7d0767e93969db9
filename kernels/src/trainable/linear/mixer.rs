//! `LinearAttention`: the linear family as a trainable token mixer with its own projections.

use candle_core::{Result, Tensor, Var};

use super::ops;
use super::{LinearVariant, Mixing, UpdateRule};
use crate::trainable::{Mixer, Params};
use crate::Error;

/// GLA's gate temperature: `log α = logsigmoid(·) / 16` keeps gates near 1 at the start of
/// training, as in Yang et al. 2023.
const GLA_GATE_TEMPERATURE: f64 = 16.0;

/// The shape of a `LinearAttention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearConfig {
    pub variant: LinearVariant,
    pub d_model: usize,
    /// Heads; each has `d_model / n_heads` query, key and value channels.
    pub n_heads: usize,
    /// Tokens per chunk of the chunkwise (prefill and training) path.
    pub chunk: usize,
    /// Rank of GLA's gate projection `d_model → rank → d_model` (unused by the others).
    pub gate_rank: usize,
}

impl LinearConfig {
    /// A config with chunks of 16 tokens and a GLA gate rank of 16.
    pub fn new(variant: LinearVariant, d_model: usize, n_heads: usize) -> LinearConfig {
        LinearConfig {
            variant,
            d_model,
            n_heads,
            chunk: 16,
            gate_rank: 16,
        }
    }

    /// Rejects zero sizes and a `d_model` the heads do not divide.
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
        if self.chunk == 0 {
            return bad("the chunk size must be at least 1".to_string());
        }
        if self.variant == LinearVariant::Gla && self.gate_rank == 0 {
            return bad("the gate rank must be at least 1".to_string());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}

/// Mamba-2's decay `log α_t = −softplus(x W_dt + b_dt) · e^{A_log}`, one per head and token.
#[derive(Debug)]
pub(crate) struct ScalarDecay {
    w_dt: Var,
    dt_bias: Var,
    a_log: Var,
}

impl ScalarDecay {
    /// Mamba-2's initialisation in spirit: step sizes near `softplus(−4) ≈ 0.018` and rates
    /// `A = e^{A_log}` spread from 1 to `n_heads`.
    pub(crate) fn new(params: &mut Params, d_model: usize, n_heads: usize) -> Result<ScalarDecay> {
        let rates: Vec<f32> = (0..n_heads).map(|h| ((h + 1) as f32).ln()).collect();
        Ok(ScalarDecay {
            w_dt: params.normal("w_dt", &[d_model, n_heads], 0.02)?,
            dt_bias: params.constant("dt_bias", &[n_heads], -4.0)?,
            a_log: params.push("a_log", Tensor::from_vec(rates, n_heads, params.device())?)?,
        })
    }

    /// `[batch, seq, d_model]` → log-decays `[batch, heads, seq, 1]`.
    pub(crate) fn log_decay(&self, x: &Tensor) -> Result<Tensor> {
        let step = ops::softplus(
            &x.broadcast_matmul(&self.w_dt)?
                .broadcast_add(&self.dt_bias)?,
        )?;
        let log_decay = step.broadcast_mul(&self.a_log.exp()?)?.neg()?;
        log_decay.transpose(1, 2)?.unsqueeze(3)
    }
}

/// GLA's per-key-channel gates: a low-rank projection of `x`, then `logsigmoid / 16`.
#[derive(Debug)]
struct ChannelGates {
    down: Var,
    up: Var,
    bias: Var,
}

/// The linear family as a `Mixer`: projections `W_q, W_k, W_v, W_o` plus the variant's gate
/// parameters. Per head, the mixed output is RMS-normalised (no gain) before `W_o`, as GLA,
/// RetNet, Mamba-2 and Gated DeltaNet do with their output norms.
///
/// Feature maps: `Linear` uses `elu + 1` on q and k and divides by the normaliser
/// `φ(q_t)·Σ_s φ(k_s)`; `DeltaNet` and `GatedDeltaNet` L2-normalise q and k (the delta rule
/// needs unit keys to stay stable); the others use q scaled by `1/√d` and k as they are.
#[derive(Debug)]
pub struct LinearAttention {
    config: LinearConfig,
    params: Params,
    w_q: Var,
    w_k: Var,
    w_v: Var,
    w_o: Var,
    channel_gates: Option<ChannelGates>,
    scalar_decay: Option<ScalarDecay>,
    w_beta: Option<Var>,
}

/// The decode state of a `LinearAttention`: one `[d_k, d_v]` matrix per batch row and head
/// (`d_v + 1` columns for `Linear`, whose last column is the normaliser).
#[derive(Clone, Debug)]
pub struct LinearState {
    state: Tensor,
}

impl LinearState {
    /// `[batch, heads, d_k, d_v]` (or `d_v + 1`).
    pub fn tensor(&self) -> &Tensor {
        &self.state
    }
}

impl LinearAttention {
    /// A mixer with parameters drawn from `seed`.
    pub fn new(
        config: LinearConfig,
        seed: u64,
        device: &candle_core::Device,
    ) -> crate::Result<LinearAttention> {
        config.validate()?;
        let (d, heads) = (config.d_model, config.n_heads);
        let std = (d as f64).powf(-0.5);
        let mut params = Params::new(seed, device);
        let w_q = params.normal("w_q", &[d, d], std)?;
        let w_k = params.normal("w_k", &[d, d], std)?;
        let w_v = params.normal("w_v", &[d, d], std)?;
        let w_o = params.normal("w_o", &[d, d], std)?;
        let channel_gates = match config.variant {
            LinearVariant::Gla => Some(ChannelGates {
                down: params.normal("gate_down", &[d, config.gate_rank], std)?,
                up: params.normal(
                    "gate_up",
                    &[config.gate_rank, d],
                    (config.gate_rank as f64).powf(-0.5),
                )?,
                bias: params.constant("gate_bias", &[d], 2.0)?,
            }),
            _ => None,
        };
        let scalar_decay = match config.variant {
            LinearVariant::Mamba2 | LinearVariant::GatedDeltaNet => {
                Some(ScalarDecay::new(&mut params, d, heads)?)
            }
            _ => None,
        };
        let w_beta = match config.variant.uses_delta_rule() {
            true => Some(params.normal("w_beta", &[d, heads], std)?),
            false => None,
        };
        Ok(LinearAttention {
            config,
            params,
            w_q,
            w_k,
            w_v,
            w_o,
            channel_gates,
            scalar_decay,
            w_beta,
        })
    }

    pub fn config(&self) -> &LinearConfig {
        &self.config
    }

    /// The state before the first token, for `batch` sequences.
    pub fn new_state(&self, batch: usize) -> Result<LinearState> {
        let head_dim = self.config.head_dim();
        let d_v = head_dim + usize::from(self.normalized());
        let state = Tensor::zeros(
            (batch, self.config.n_heads, head_dim, d_v),
            candle_core::DType::F32,
            self.params.device(),
        )?;
        Ok(LinearState { state })
    }

    /// One decode step: `x_t` `[batch, d_model]` → `[batch, d_model]`, advancing `state`.
    /// Equals row `t` of `forward` after steps over rows `0..t`.
    pub fn step(&self, x_t: &Tensor, state: &mut LinearState) -> Result<Tensor> {
        let mixing = self.mixing(&x_t.unsqueeze(1)?)?;
        let (mixed, next) = mixing.recurrent(&state.state)?;
        state.state = next;
        self.output(&mixed)?.squeeze(1)
    }

    /// The whole sequence through the recurrent path (what `step` computes, in one call).
    pub fn forward_recurrent(&self, x: &Tensor) -> Result<Tensor> {
        let mixing = self.mixing(x)?;
        let (mixed, _) = mixing.recurrent(&mixing.zero_state()?)?;
        self.output(&mixed)
    }

    /// The per-token inputs of the core for `x` `[batch, seq, d_model]`.
    pub fn mixing(&self, x: &Tensor) -> Result<Mixing> {
        let heads = self.config.n_heads;
        let project = |w: &Var| ops::split_heads(&x.broadcast_matmul(w)?, heads);
        let (q, k, v) = (
            project(&self.w_q)?,
            project(&self.w_k)?,
            project(&self.w_v)?,
        );
        let (q, k) = match self.config.variant {
            LinearVariant::Linear => (ops::elu_plus_one(&q)?, ops::elu_plus_one(&k)?),
            LinearVariant::DeltaNet | LinearVariant::GatedDeltaNet => {
                (ops::l2_normalize(&q)?, ops::l2_normalize(&k)?)
            }
            _ => ((q * (self.config.head_dim() as f64).powf(-0.5))?, k),
        };
        let v = if self.normalized() {
            ops::append_ones(&v)?
        } else {
            v
        };
        let log_decay = if let Some(gates) = &self.channel_gates {
            let logits = x
                .broadcast_matmul(&gates.down)?
                .broadcast_matmul(&gates.up)?
                .broadcast_add(&gates.bias)?;
            Some(ops::split_heads(
                &(ops::log_sigmoid(&logits)? / GLA_GATE_TEMPERATURE)?,
                heads,
            )?)
        } else if let Some(decay) = &self.scalar_decay {
            Some(decay.log_decay(x)?)
        } else if self.config.variant == LinearVariant::RetNet {
            let (batch, seq, _) = x.dims3()?;
            Some(
                retnet_log_decay(heads, x.device())?
                    .broadcast_as((batch, heads, seq, 1))?
                    .contiguous()?,
            )
        } else {
            None
        };
        let rule = match &self.w_beta {
            Some(w_beta) => UpdateRule::Delta {
                beta: ops::sigmoid(&x.broadcast_matmul(w_beta)?)?
                    .transpose(1, 2)?
                    .unsqueeze(3)?
                    .contiguous()?,
            },
            None => UpdateRule::Additive,
        };
        Ok(Mixing {
            q,
            k,
            v,
            log_decay,
            rule,
        })
    }

    /// Whether the values carry a normaliser column (`Linear` only).
    fn normalized(&self) -> bool {
        self.config.variant == LinearVariant::Linear
    }

    /// Mixed heads `[batch, heads, seq, d_v(+1)]` → `[batch, seq, d_model]`.
    fn output(&self, mixed: &Tensor) -> Result<Tensor> {
        let mixed = if self.normalized() {
            ops::divide_by_normalizer(mixed)?
        } else {
            mixed.clone()
        };
        ops::project_heads(&mixed, &self.w_o)
    }
}

/// RetNet's fixed decays `log γ_h`, `γ_h = 1 − 2^(−5−h)`, as `[1, heads, 1, 1]`.
pub(crate) fn retnet_log_decay(heads: usize, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..heads)
        .map(|h| (1.0 - 2f64.powi(-5 - h as i32)).ln() as f32)
        .collect();
    Tensor::from_vec(values, (1, heads, 1, 1), device)
}

impl Mixer for LinearAttention {
    fn name(&self) -> &str {
        self.config.variant.name()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mixing = self.mixing(x)?;
        let (mixed, _) = mixing.chunkwise(self.config.chunk, &mixing.zero_state()?)?;
        self.output(&mixed)
    }

    fn parameters(&self) -> &Params {
        &self.params
    }
}
