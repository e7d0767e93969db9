//! The linear-attention family as one mechanism: a per-head state `S ∈ R^{d_k×d_v}` that
//! every token decays and writes into, and that every query reads (`o_t = q_t S_t`, rows are
//! vectors). The members differ only in their decay and their write rule:
//!
//! | variant          | decay before token `t` writes             | write                                  |
//! |------------------|-------------------------------------------|----------------------------------------|
//! | `Linear`         | none                                      | `S += k_tᵀ v_t`                        |
//! | `RetNet`         | fixed `γ_h` per head                      | `S += k_tᵀ v_t`                        |
//! | `Gla`            | `diag(α_t)`, one gate per key channel     | `S += k_tᵀ v_t`                        |
//! | `Mamba2`         | data-dependent scalar `α_t` per head      | `S += k_tᵀ v_t`                        |
//! | `DeltaNet`       | none                                      | `S += β_t k_tᵀ (v_t − k_t S)` (delta)  |
//! | `GatedDeltaNet`  | data-dependent scalar `α_t` per head      | `S += β_t k_tᵀ (v_t − k_t S)` (delta)  |
//!
//! `Mixing` holds the per-token inputs (q, k, v, log-decay, β) and has the two paths:
//! `recurrent` (token by token, the decode path) and `chunkwise` (prefill and training).
//! Within a chunk of `C` tokens with cumulative log-decay `b_i`, the chunkwise form is
//!
//! ```text
//! o   = (q ⊙ e^b) S₀ + ((q kᵀ) ⊙ D) W          D[i,j] = e^{b_i − b_j} for j ≤ i, else 0
//! S_C = e^{b_C} S₀ + (k ⊙ e^{b_C − b})ᵀ W
//! ```
//!
//! where `W = V` for the additive rule. For the delta rule `W` holds the "new values"
//! `w_t = β_t (v_t − α_t k_t S_{t−1})`, which satisfy the unit-lower-triangular system
//! `(I + A) W = β V − (β e^b K) S₀` with `A[t,s] = β_t (k_t·k_s) e^{b_t − b_s}` for `s < t`
//! (the WY / UT-transform form of Yang et al. 2024). It is solved by forward substitution
//! with differentiable ops. Every exponent above is `≤ 0`, so nothing overflows.
//!
//! The mixer (`LinearAttention`) and the drop-in kernel for pretrained models
//! (`LinearDropIn`) are built on this core.

mod drop_in;
mod mixer;
pub(crate) mod ops;

pub use drop_in::LinearDropIn;
pub(crate) use drop_in::{mamba_log_decays, CacheHeads};
pub(crate) use mixer::ScalarDecay;
pub use mixer::{LinearAttention, LinearConfig, LinearState};

use candle_core::{bail, Result, Tensor, D};

/// A member of the linear-attention family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearVariant {
    /// Katharopoulos et al. 2020: `elu + 1` features, normalised by `φ(q)·Σ φ(k)`.
    Linear,
    /// Sun et al. 2023: a fixed decay `γ_h = 1 − 2^(−5−h)` per head.
    RetNet,
    /// Yang et al. 2023, Gated Linear Attention: per-key-channel gates from `x` through a
    /// low-rank projection and `logsigmoid`.
    Gla,
    /// Dao & Gu 2024 (SSD): a data-dependent scalar decay per head and token,
    /// `α_t = exp(−softplus(x W_dt + b) · e^{A_log})`.
    Mamba2,
    /// Schlag et al. 2021, Yang et al. 2024: the delta rule with `β_t = σ(x W_β)` and
    /// L2-normalised queries and keys.
    DeltaNet,
    /// Yang et al. 2024, Gated DeltaNet: the delta rule with a Mamba-2 style decay `α_t`.
    GatedDeltaNet,
}

impl LinearVariant {
    /// Every member, in the order of the table above.
    pub const ALL: [LinearVariant; 6] = [
        LinearVariant::Linear,
        LinearVariant::RetNet,
        LinearVariant::Gla,
        LinearVariant::Mamba2,
        LinearVariant::DeltaNet,
        LinearVariant::GatedDeltaNet,
    ];

    /// The name AKL programs use for this member.
    pub fn name(self) -> &'static str {
        match self {
            LinearVariant::Linear => "linear",
            LinearVariant::RetNet => "retnet",
            LinearVariant::Gla => "gla",
            LinearVariant::Mamba2 => "mamba2",
            LinearVariant::DeltaNet => "deltanet",
            LinearVariant::GatedDeltaNet => "gated_deltanet",
        }
    }

    /// The member called `name` (see `name`), if any.
    pub fn from_name(name: &str) -> Option<LinearVariant> {
        LinearVariant::ALL
            .into_iter()
            .find(|variant| variant.name() == name)
    }

    /// Whether the member writes with the delta rule.
    pub fn uses_delta_rule(self) -> bool {
        matches!(self, LinearVariant::DeltaNet | LinearVariant::GatedDeltaNet)
    }
}

/// How a token writes into the state (after the decay).
#[derive(Clone, Debug)]
pub enum UpdateRule {
    /// `S ← S + k_tᵀ v_t`.
    Additive,
    /// `S ← S + β_t k_tᵀ (v_t − k_t S)`, with `beta` of shape `[batch, heads, seq, 1]`.
    Delta { beta: Tensor },
}

/// The per-token inputs of the linear family, head-major, ready for either path.
#[derive(Clone, Debug)]
pub struct Mixing {
    /// `[batch, heads, seq, d_k]`, feature map already applied.
    pub q: Tensor,
    /// `[batch, heads, seq, d_k]`, feature map already applied.
    pub k: Tensor,
    /// `[batch, heads, seq, d_v]`.
    pub v: Tensor,
    /// Log of the decay applied to the state before token `t` writes, all `≤ 0`:
    /// `[batch, heads, seq, 1]` (one per head) or `[batch, heads, seq, d_k]` (one per key
    /// channel, GLA; additive rule only). `None`: no decay.
    pub log_decay: Option<Tensor>,
    pub rule: UpdateRule,
}

impl Mixing {
    /// `(batch, heads, seq, d_k, d_v)`, after checking that every tensor agrees.
    pub fn dims(&self) -> Result<(usize, usize, usize, usize, usize)> {
        let (batch, heads, seq, d_k) = self.q.dims4()?;
        if self.k.dims() != self.q.dims() {
            bail!(
                "linear attention: k {:?} must match q {:?}",
                self.k.dims(),
                self.q.dims()
            );
        }
        let d_v = self.v.dim(3)?;
        if self.v.dims() != [batch, heads, seq, d_v] {
            bail!(
                "linear attention: v {:?} must be [batch, heads, seq, d_v] like q {:?}",
                self.v.dims(),
                self.q.dims()
            );
        }
        if let Some(log_decay) = &self.log_decay {
            let width = log_decay.dim(D::Minus1)?;
            let per_key = width == d_k && width != 1;
            if log_decay.dims() != [batch, heads, seq, width] || !(width == 1 || per_key) {
                bail!(
                    "linear attention: log_decay {:?} must be [batch, heads, seq, 1 or d_k]",
                    log_decay.dims()
                );
            }
            if per_key && matches!(self.rule, UpdateRule::Delta { .. }) {
                bail!("linear attention: the delta rule takes one decay per head, not per key channel");
            }
        }
        if let UpdateRule::Delta { beta } = &self.rule {
            if beta.dims() != [batch, heads, seq, 1] {
                bail!(
                    "linear attention: beta {:?} must be [batch, heads, seq, 1]",
                    beta.dims()
                );
            }
        }
        Ok((batch, heads, seq, d_k, d_v))
    }

    /// An all-zero state `[batch, heads, d_k, d_v]`, the state before the first token.
    pub fn zero_state(&self) -> Result<Tensor> {
        let (batch, heads, _, d_k, d_v) = self.dims()?;
        Tensor::zeros((batch, heads, d_k, d_v), self.q.dtype(), self.q.device())
    }

    /// Tokens `start..start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Mixing> {
        Ok(Mixing {
            q: self.q.narrow(2, start, len)?,
            k: self.k.narrow(2, start, len)?,
            v: self.v.narrow(2, start, len)?,
            log_decay: match &self.log_decay {
                Some(log_decay) => Some(log_decay.narrow(2, start, len)?),
                None => None,
            },
            rule: match &self.rule {
                UpdateRule::Additive => UpdateRule::Additive,
                UpdateRule::Delta { beta } => UpdateRule::Delta {
                    beta: beta.narrow(2, start, len)?,
                },
            },
        })
    }

    /// The decode path: token by token from `state`. Returns the outputs
    /// `[batch, heads, seq, d_v]` and the state after the last token.
    pub fn recurrent(&self, state: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, seq, _, _) = self.dims()?;
        let mut state = state.clone();
        let mut outputs = Vec::with_capacity(seq);
        for t in 0..seq {
            let token = self.narrow(t, 1)?;
            state = token.write_one(&state)?;
            outputs.push(matmul(&token.q, &state)?);
        }
        Ok((Tensor::cat(&outputs, 2)?, state))
    }

    /// The prefill and training path: chunks of `chunk` tokens from `state` (the last chunk
    /// may be shorter). Same results as `recurrent`.
    pub fn chunkwise(&self, chunk: usize, state: &Tensor) -> Result<(Tensor, Tensor)> {
        if chunk == 0 {
            bail!("linear attention: the chunk size must be at least 1");
        }
        let (_, _, seq, _, _) = self.dims()?;
        let mut state = state.clone();
        let mut outputs = Vec::with_capacity(seq.div_ceil(chunk));
        for start in (0..seq).step_by(chunk) {
            let (out, next) = self
                .narrow(start, chunk.min(seq - start))?
                .one_chunk(&state)?;
            outputs.push(out);
            state = next;
        }
        Ok((Tensor::cat(&outputs, 2)?, state))
    }

    /// The state after this single token (seq 1) decays `state` and writes.
    fn write_one(&self, state: &Tensor) -> Result<Tensor> {
        let decayed = match &self.log_decay {
            // [b, h, 1, 1 or d_k] → [b, h, 1 or d_k, 1]: scales the rows of S.
            Some(log_decay) => state.broadcast_mul(&log_decay.exp()?.transpose(2, 3)?)?,
            None => state.clone(),
        };
        let key_column = self.k.transpose(2, 3)?;
        let value = match &self.rule {
            UpdateRule::Additive => self.v.clone(),
            UpdateRule::Delta { beta } => {
                let predicted = matmul(&self.k, &decayed)?;
                (&self.v - predicted)?.broadcast_mul(beta)?
            }
        };
        decayed + matmul(&key_column, &value)?
    }

    /// One chunk (all of `self`) from `state`: the formulas in the module comment.
    fn one_chunk(&self, state: &Tensor) -> Result<(Tensor, Tensor)> {
        let (batch, heads, len, _, _) = self.dims()?;
        let device = self.q.device();
        let causal = ops::causal_mask(len, device)?;
        let cumulative = match &self.log_decay {
            // A prefix sum as a product with the lower triangle (candle's `cumsum` needs a
            // contiguous input, and this chunk is a narrowed view).
            Some(log_decay) => matmul(&causal.broadcast_as((batch, heads, len, len))?, log_decay)?,
            None => Tensor::zeros((batch, heads, len, 1), self.q.dtype(), device)?,
        };
        let last = cumulative.narrow(2, len - 1, 1)?;
        let new_values = match &self.rule {
            UpdateRule::Additive => self.v.clone(),
            UpdateRule::Delta { beta } => {
                // Only the part below the diagonal is read by the substitution.
                let system =
                    decayed_scores(&self.k, &self.k, &cumulative, &causal)?.broadcast_mul(beta)?;
                let gamma = cumulative.exp()?;
                let right = Tensor::cat(
                    &[
                        self.v.broadcast_mul(beta)?,
                        self.k.broadcast_mul(&(beta * gamma)?)?,
                    ],
                    3,
                )?;
                let solved = forward_substitution(&system, &right)?;
                let d_v = self.v.dim(3)?;
                let values = solved.narrow(3, 0, d_v)?;
                let decayed_keys = solved.narrow(3, d_v, solved.dim(3)? - d_v)?;
                (values - matmul(&decayed_keys, state)?)?
            }
        };
        let scores = decayed_scores(&self.q, &self.k, &cumulative, &causal)?;
        let from_state = matmul(&self.q.broadcast_mul(&cumulative.exp()?)?, state)?;
        let out = (from_state + matmul(&scores, &new_values)?)?;
        let keys_to_end = self
            .k
            .broadcast_mul(&last.broadcast_sub(&cumulative)?.exp()?)?
            .transpose(2, 3)?;
        let carried = state.broadcast_mul(&last.exp()?.transpose(2, 3)?)?;
        let next = (carried + matmul(&keys_to_end, &new_values)?)?;
        Ok((out, next))
    }
}

/// `[b, h, L, L]`: `Σ_d a_id c_jd e^{b_id − b_jd}` for `j ≤ i` (the mask `causal`), else 0.
/// With one decay per head (`cumulative` of width 1) that is `(a cᵀ) ⊙ e^{b_i − b_j}`.
fn decayed_scores(a: &Tensor, c: &Tensor, cumulative: &Tensor, causal: &Tensor) -> Result<Tensor> {
    if cumulative.dim(3)? == 1 {
        let exponent = cumulative
            .broadcast_sub(&cumulative.transpose(2, 3)?)?
            .broadcast_mul(causal)?;
        let decay = exponent.exp()?.broadcast_mul(causal)?;
        matmul(a, &c.transpose(2, 3)?)? * decay
    } else {
        channel_decayed_scores(a, c, cumulative)
    }
}

/// Positions per sub-block of `channel_decayed_scores`.
const CHANNEL_BLOCK: usize = 16;

/// `decayed_scores` with one decay per key channel (GLA), in sub-blocks of `CHANNEL_BLOCK`
/// positions (the secondary chunking of Yang et al. 2023). Keys `j` of an earlier sub-block
/// whose last position is `r` meet later queries `i` in one matmul,
/// `Σ_d (a_id e^{b_id − b_rd}) (c_jd e^{b_rd − b_jd})`, where both exponents are `≤ 0`; pairs
/// within a sub-block are scored element by element over `[n, n, d]`.
fn channel_decayed_scores(a: &Tensor, c: &Tensor, cumulative: &Tensor) -> Result<Tensor> {
    let (batch, heads, len, _) = a.dims4()?;
    let starts: Vec<usize> = (0..len).step_by(CHANNEL_BLOCK).collect();
    let size = |start: usize| CHANNEL_BLOCK.min(len - start);
    let mut rows = Vec::with_capacity(starts.len());
    for &query_start in &starts {
        let query_len = size(query_start);
        let queries = a.narrow(2, query_start, query_len)?;
        let query_decay = cumulative.narrow(2, query_start, query_len)?;
        let mut blocks = Vec::with_capacity(starts.len());
        for &key_start in &starts {
            let key_len = size(key_start);
            let keys = c.narrow(2, key_start, key_len)?;
            let key_decay = cumulative.narrow(2, key_start, key_len)?;
            let block = if key_start < query_start {
                let reference = cumulative.narrow(2, key_start + key_len - 1, 1)?;
                let queries =
                    queries.broadcast_mul(&query_decay.broadcast_sub(&reference)?.exp()?)?;
                let keys = keys.broadcast_mul(&reference.broadcast_sub(&key_decay)?.exp()?)?;
                matmul(&queries, &keys.transpose(2, 3)?)?
            } else if key_start == query_start {
                // [b, h, n, 1, d] against [b, h, 1, n, d]. Masking the exponent before `exp`
                // keeps the (positive) differences above the diagonal from overflowing.
                let causal = ops::causal_mask(query_len, a.device())?.unsqueeze(2)?;
                let exponent = query_decay
                    .unsqueeze(3)?
                    .broadcast_sub(&key_decay.unsqueeze(2)?)?
                    .broadcast_mul(&causal)?;
                let decay = exponent.exp()?.broadcast_mul(&causal)?;
                queries
                    .unsqueeze(3)?
                    .broadcast_mul(&keys.unsqueeze(2)?)?
                    .mul(&decay)?
                    .sum(4)?
            } else {
                Tensor::zeros((batch, heads, query_len, key_len), a.dtype(), a.device())?
            };
            blocks.push(block);
        }
        rows.push(Tensor::cat(&blocks, 3)?);
    }
    Tensor::cat(&rows, 2)
}

/// Solves `(I + A) X = R` for the strictly lower-triangular part of `A` `[b, h, L, L]` (the
/// rest is never read) and `R` `[b, h, L, n]`, row by row: `X_t = R_t − A[t, :t] X[:t]`.
fn forward_substitution(system: &Tensor, right: &Tensor) -> Result<Tensor> {
    let len = right.dim(2)?;
    let mut solved = right.narrow(2, 0, 1)?;
    for t in 1..len {
        let coefficients = system.narrow(2, t, 1)?.narrow(3, 0, t)?;
        let row = (right.narrow(2, t, 1)? - matmul(&coefficients, &solved)?)?;
        solved = Tensor::cat(&[&solved, &row], 2)?;
    }
    Ok(solved)
}

/// A batched matmul that first lays out strided views (narrowed, transposed) the way candle's
/// CPU matmul needs them.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.matmul(&b.contiguous()?)
}
