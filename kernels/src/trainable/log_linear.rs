//! Log-Linear attention (Guo, Yang et al. 2025): linear attention whose prefix is cut into
//! Fenwick-tree buckets, each with its own state and its own data-dependent weight.
//!
//! For query `t` and key `s ≤ t`, the level is `ℓ(t, s) = 0` if `s = t`, else
//! `⌊log₂(t ⊕ s)⌋ + 1`: the keys of level `ℓ ≥ 1` are the block of `2^(ℓ−1)` positions that
//! share `t`'s bits above bit `ℓ − 1` and have that bit clear (a set bit of `t`). So the
//! prefix `[0, t]` falls into at most `⌊log₂ t⌋ + 2` buckets, recent keys in small ones. The
//! output is
//!
//! ```text
//! o_t = Σ_ℓ λ_t^(ℓ) q_t S_t^(ℓ),   S_t^(ℓ) = Σ_{s: ℓ(t,s) = ℓ} (Π_{r=s+1..t} α_r) k_sᵀ v_s
//! ```
//!
//! i.e. `O = (Q Kᵀ ⊙ M) V` with the hierarchical mask `M[t, s] = λ_t^(ℓ(t,s)) · Π α`. The
//! plain variant has `α = 1`; the Mamba-2 variant has a data-dependent decay per head.
//!
//! Two paths, held equal by the tests:
//! - `FenwickState::step` (decode): O(log T) states per head. After token `t`, the buckets
//!   seen from `t + 1` are those seen from `t` with levels `0..=z` merged into level `z + 1`,
//!   where `z` is the number of trailing zeros of `t + 1` (the carry of a binary increment).
//! - `LogLinearMixing::chunkwise` (prefill, training): chunks of `C = 2^c` tokens. A pair
//!   within one chunk has level `≤ c`, so the intra-chunk part is a masked matmul; a pair in
//!   chunks `n' < n` has level `c + ⌊log₂(n ⊕ n')⌋ + 1`, so whole chunks form the same
//!   Fenwick structure one level up, and each query chunk reads O(log(T/C)) level states.

mod drop_in;
mod mixer;

pub use drop_in::LogLinearDropIn;
pub use mixer::{LogLinearAttention, LogLinearConfig, LogLinearState};

use candle_core::{bail, Result, Tensor};

use crate::trainable::linear::ops;

/// Which Log-Linear mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogLinearVariant {
    /// Log-Linear over plain linear attention: no decay.
    Plain,
    /// Log-Linear Mamba-2: every state decays by a data-dependent scalar per head and token.
    Mamba2,
}

impl LogLinearVariant {
    pub const ALL: [LogLinearVariant; 2] = [LogLinearVariant::Plain, LogLinearVariant::Mamba2];

    /// The name AKL programs use for this mechanism.
    pub fn name(self) -> &'static str {
        match self {
            LogLinearVariant::Plain => "log_linear",
            LogLinearVariant::Mamba2 => "log_linear_mamba2",
        }
    }

    pub fn from_name(name: &str) -> Option<LogLinearVariant> {
        LogLinearVariant::ALL
            .into_iter()
            .find(|variant| variant.name() == name)
    }
}

/// The Fenwick level of key position `s` for query position `t` (`s ≤ t`).
pub fn level(t: usize, s: usize) -> usize {
    match t ^ s {
        0 => 0,
        bits => bits.ilog2() as usize + 1,
    }
}

/// How many levels (`0..levels_for(n)`) the positions `0..n` use.
pub fn levels_for(n: usize) -> usize {
    match n {
        0 | 1 => 1,
        _ => level(n - 1, 0) + 1,
    }
}

/// The per-token inputs of Log-Linear attention, head-major.
#[derive(Clone, Debug)]
pub struct LogLinearMixing {
    /// `[batch, heads, seq, d_k]`, feature map already applied.
    pub q: Tensor,
    /// `[batch, heads, seq, d_k]`, feature map already applied.
    pub k: Tensor,
    /// `[batch, heads, seq, d_v]`.
    pub v: Tensor,
    /// `λ`, `[batch, heads, seq, levels]`: the weight query `t` gives each level.
    pub level_weights: Tensor,
    /// Log of the decay applied to every state before token `t` writes, `[batch, heads, seq,
    /// 1]`, all `≤ 0`. `None`: no decay.
    pub log_decay: Option<Tensor>,
}

impl LogLinearMixing {
    /// `(batch, heads, seq, levels)`, after checking that every tensor agrees.
    pub fn dims(&self) -> Result<(usize, usize, usize, usize)> {
        let (batch, heads, seq, _) = self.q.dims4()?;
        let levels = self.level_weights.dim(3)?;
        let rows_agree =
            |tensor: &Tensor, width: usize| tensor.dims() == [batch, heads, seq, width];
        if self.k.dims() != self.q.dims() || !rows_agree(&self.v, self.v.dim(3)?) {
            bail!(
                "log-linear attention: q {:?}, k {:?} and v {:?} must be [batch, heads, seq, ·] alike",
                self.q.dims(),
                self.k.dims(),
                self.v.dims()
            );
        }
        if !rows_agree(&self.level_weights, levels) || levels == 0 {
            bail!(
                "log-linear attention: level weights {:?} must be [batch, heads, seq, levels ≥ 1]",
                self.level_weights.dims()
            );
        }
        if let Some(log_decay) = &self.log_decay {
            if !rows_agree(log_decay, 1) {
                bail!(
                    "log-linear attention: log_decay {:?} must be [batch, heads, seq, 1]",
                    log_decay.dims()
                );
            }
        }
        Ok((batch, heads, seq, levels))
    }

    /// Tokens `start..start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<LogLinearMixing> {
        Ok(LogLinearMixing {
            q: self.q.narrow(2, start, len)?,
            k: self.k.narrow(2, start, len)?,
            v: self.v.narrow(2, start, len)?,
            level_weights: self.level_weights.narrow(2, start, len)?,
            log_decay: match &self.log_decay {
                Some(log_decay) => Some(log_decay.narrow(2, start, len)?),
                None => None,
            },
        })
    }

    /// The decode path over the whole sequence, continuing from `state` (whose position is
    /// the absolute position of the first token here). Returns `[batch, heads, seq, d_v]`.
    pub fn recurrent(&self, state: &mut FenwickState) -> Result<Tensor> {
        let (_, _, seq, _) = self.dims()?;
        let outputs = (0..seq)
            .map(|t| state.step(&self.narrow(t, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outputs, 2)
    }

    /// The prefill and training path, from position 0, in chunks of `chunk` tokens (a power
    /// of two, so that chunks align with the Fenwick blocks). Same results as `recurrent`.
    pub fn chunkwise(&self, chunk: usize) -> Result<Tensor> {
        if !chunk.is_power_of_two() {
            bail!("log-linear attention: the chunk size must be a power of two, got {chunk}");
        }
        let (batch, heads, seq, levels) = self.dims()?;
        if levels < levels_for(seq) {
            bail!(
                "log-linear attention: {seq} tokens need {} levels, the weights have {levels}",
                levels_for(seq)
            );
        }
        let chunk_bits = chunk.trailing_zeros() as usize;
        let device = self.q.device();
        // Index m ≥ 1: the state of chunk-level m (token level chunk_bits + m), as of the end
        // of the previous chunk.
        let mut chunk_levels: Vec<Option<Tensor>> = Vec::new();
        let mut outputs = Vec::with_capacity(seq.div_ceil(chunk));
        for (index, start) in (0..seq).step_by(chunk).enumerate() {
            let len = chunk.min(seq - start);
            let part = self.narrow(start, len)?;
            let causal = ops::causal_mask(len, device)?;
            let (decay, decay_to_query, decay_to_end, decay_over_chunk) = match &part.log_decay {
                Some(log_decay) => {
                    let cumulative = causal
                        .broadcast_as((batch, heads, len, len))?
                        .contiguous()?
                        .matmul(&log_decay.contiguous()?)?;
                    let last = cumulative.narrow(2, len - 1, 1)?;
                    let exponent = cumulative
                        .broadcast_sub(&cumulative.transpose(2, 3)?)?
                        .broadcast_mul(&causal)?;
                    (
                        exponent.exp()?.broadcast_mul(&causal)?,
                        Some(cumulative.exp()?),
                        Some(last.broadcast_sub(&cumulative)?.exp()?),
                        Some(last.exp()?),
                    )
                }
                None => (
                    causal
                        .broadcast_as((batch, heads, len, len))?
                        .contiguous()?,
                    None,
                    None,
                    None,
                ),
            };
            let mask = (intra_chunk_weights(&part.level_weights, len)? * decay)?;
            let scores = (part
                .q
                .contiguous()?
                .matmul(&part.k.transpose(2, 3)?.contiguous()?)?
                * mask)?;
            let mut out = scores.matmul(&part.v.contiguous()?)?;
            let queries = match &decay_to_query {
                Some(decay) => part.q.broadcast_mul(decay)?,
                None => part.q.contiguous()?,
            };
            for (chunk_level, state) in chunk_levels.iter().enumerate() {
                if let Some(state) = state {
                    let weight = part.level_weights.narrow(3, chunk_bits + chunk_level, 1)?;
                    out = (out + queries.matmul(state)?.broadcast_mul(&weight)?)?;
                }
            }
            outputs.push(out);
            let keys = match &decay_to_end {
                Some(decay) => part.k.broadcast_mul(decay)?,
                None => part.k.clone(),
            };
            let own = keys
                .transpose(2, 3)?
                .contiguous()?
                .matmul(&part.v.contiguous()?)?;
            if let Some(decay) = &decay_over_chunk {
                for state in chunk_levels.iter_mut().flatten() {
                    *state = state.broadcast_mul(decay)?;
                }
            }
            merge_into_next(&mut chunk_levels, own, index + 1)?;
        }
        Tensor::cat(&outputs, 2)
    }
}

/// `[b, h, len, len]`: `λ_i^(ℓ(i, j))` for `j ≤ i`, else 0, for a chunk that starts at a
/// multiple of its power-of-two size (so that levels depend only on in-chunk offsets).
fn intra_chunk_weights(level_weights: &Tensor, len: usize) -> Result<Tensor> {
    let device = level_weights.device();
    let weighted_level = |target: usize| -> Result<Tensor> {
        let indicator: Vec<f32> = (0..len * len)
            .map(|index| {
                let (i, j) = (index / len, index % len);
                f32::from(u8::from(j <= i && level(i, j) == target))
            })
            .collect();
        let indicator = Tensor::from_vec(indicator, (len, len), device)?;
        level_weights
            .narrow(3, target, 1)?
            .broadcast_mul(&indicator)
    };
    let mut weights = weighted_level(0)?;
    for target in 1..levels_for(len) {
        weights = (weights + weighted_level(target)?)?;
    }
    Ok(weights)
}

/// The Fenwick merge before position `next` (a token or chunk index): levels `1..=z` and the
/// newest entry `own` become level `z + 1`, where `z` is the number of trailing zeros of
/// `next`. Level `z + 1` is empty before the merge, since bit `z` of `next − 1` is clear.
fn merge_into_next(levels: &mut Vec<Option<Tensor>>, own: Tensor, next: usize) -> Result<()> {
    let carry = next.trailing_zeros() as usize;
    if levels.len() < carry + 2 {
        levels.resize(carry + 2, None);
    }
    let mut merged = own;
    for slot in &mut levels[1..=carry] {
        if let Some(state) = slot.take() {
            merged = (merged + state)?;
        }
    }
    levels[carry + 1] = Some(merged);
    Ok(())
}

/// The decode state of Log-Linear attention: the position of the next token and one state
/// `[batch, heads, d_k, d_v]` per non-empty Fenwick level, at most `⌊log₂ T⌋ + 1`.
#[derive(Clone, Debug, Default)]
pub struct FenwickState {
    position: usize,
    /// Index `ℓ ≥ 1`: the bucket of level `ℓ` as seen from `position`; index 0 is unused.
    levels: Vec<Option<Tensor>>,
}

impl FenwickState {
    /// The state before the first token.
    pub fn new() -> FenwickState {
        FenwickState::default()
    }

    /// The absolute position of the next token.
    pub fn position(&self) -> usize {
        self.position
    }

    /// How many level states are held now.
    pub fn live_states(&self) -> usize {
        self.levels.iter().flatten().count()
    }

    /// One token (`token` has seq 1) at `position()`: decays every level, reads them and the
    /// token's own level 0, then merges for the next position. Returns `[batch, heads, 1, d_v]`.
    pub fn step(&mut self, token: &LogLinearMixing) -> Result<Tensor> {
        let (_, _, seq, levels) = token.dims()?;
        if seq != 1 {
            bail!("log-linear attention: a decode step takes one token, got {seq}");
        }
        let needed = levels_for(self.position + 1);
        if levels < needed {
            bail!("log-linear attention: position {} needs {needed} levels, the weights have {levels}", self.position);
        }
        if let Some(log_decay) = &token.log_decay {
            let decay = log_decay.exp()?;
            for state in self.levels.iter_mut().flatten() {
                *state = state.broadcast_mul(&decay)?;
            }
        }
        let own = token
            .k
            .transpose(2, 3)?
            .contiguous()?
            .matmul(&token.v.contiguous()?)?;
        let q = token.q.contiguous()?;
        let weight = |level: usize| token.level_weights.narrow(3, level, 1);
        let mut out = q.matmul(&own)?.broadcast_mul(&weight(0)?)?;
        for (level, state) in self.levels.iter().enumerate() {
            if let Some(state) = state {
                out = (out + q.matmul(state)?.broadcast_mul(&weight(level)?)?)?;
            }
        }
        self.position += 1;
        merge_into_next(&mut self.levels, own, self.position)?;
        Ok(out)
    }
}
