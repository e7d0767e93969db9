//! `LinearDropIn`: a member of the linear family in place of softmax attention in a
//! pretrained model, on the model's own per-head q, k and v.

use candle_core::{Device, Tensor};

use super::mixer::retnet_log_decay;
use super::{ops, LinearVariant, Mixing, UpdateRule};
use crate::attention::{AttentionInput, AttentionKernel, LayerAttention, Mask};
use crate::{Error, Result};

/// The delta rule's write strength when there is no `x` to compute `β_t` from: a half step
/// towards each new value.
const DEFAULT_BETA: f64 = 0.5;
/// Mamba-2's step size `dt` when there is no `x` to compute it from; with rates
/// `A_h = h + 1` (Mamba-2's initial range) it gives decays from 0.99 down.
const DEFAULT_MAMBA_STEP: f64 = 0.01;

/// A linear-family kernel for a pretrained model, with fixed default gates since the hidden
/// states `x` the trained gates read are not available to an attention kernel:
///
/// - `Linear`: `elu + 1` features on `q · scale` and `k`, normalised (a convex mix of values).
/// - `RetNet`: the same, decayed by `γ_h = 1 − 2^(−5−h)` per query head.
/// - `Gla`: the same, decayed per key channel `d` of `D` by `1 − 2^(−5 − 8d/D)`, so each head
///   mixes timescales from about 32 to 8000 tokens.
/// - `Mamba2`: the same, decayed per query head by `exp(−0.01 · (h + 1))`.
/// - `DeltaNet`: L2-normalised q and k, the delta rule with `β = 0.5`.
/// - `GatedDeltaNet`: as `DeltaNet`, decayed as `Mamba2`.
///
/// The state has no cache of its own, so every call recomputes it over the whole KV cache
/// (chunkwise): decode costs O(context) per token rather than O(1), which is acceptable for
/// evaluating fidelity and keeps decode equal to prefill by construction.
#[derive(Clone, Copy, Debug)]
pub struct LinearDropIn {
    variant: LinearVariant,
    chunk: usize,
}

impl LinearDropIn {
    /// The kernel for `variant` with chunks of 64 tokens.
    pub fn new(variant: LinearVariant) -> Result<LinearDropIn> {
        LinearDropIn::with_chunk(variant, 64)
    }

    pub fn with_chunk(variant: LinearVariant, chunk: usize) -> Result<LinearDropIn> {
        if chunk == 0 {
            return Err(Error::InvalidRequest(format!(
                "{}: the chunk size must be at least 1",
                variant.name()
            )));
        }
        Ok(LinearDropIn { variant, chunk })
    }

    pub fn variant(&self) -> LinearVariant {
        self.variant
    }

    fn mixing(&self, heads: &CacheHeads) -> candle_core::Result<Mixing> {
        let (n_heads, seq, head_dim) = (heads.n_heads, heads.seq, heads.head_dim);
        let device = heads.q.device();
        let per_head = |values: Vec<f32>| -> candle_core::Result<Tensor> {
            Tensor::from_vec(values, (1, n_heads, 1, 1), device)?
                .broadcast_as((1, n_heads, seq, 1))?
                .contiguous()
        };
        let (q, k, v) = (&heads.q, &heads.k, &heads.v);
        if self.variant.uses_delta_rule() {
            let log_decay = match self.variant {
                LinearVariant::GatedDeltaNet => Some(per_head(mamba_log_decays(n_heads))?),
                _ => None,
            };
            let beta = per_head(vec![DEFAULT_BETA as f32; n_heads])?;
            return Ok(Mixing {
                q: ops::l2_normalize(q)?,
                k: ops::l2_normalize(k)?,
                v: v.clone(),
                log_decay,
                rule: UpdateRule::Delta { beta },
            });
        }
        let log_decay = match self.variant {
            LinearVariant::RetNet => Some(
                retnet_log_decay(n_heads, device)?
                    .broadcast_as((1, n_heads, seq, 1))?
                    .contiguous()?,
            ),
            LinearVariant::Mamba2 => Some(per_head(mamba_log_decays(n_heads))?),
            LinearVariant::Gla => {
                let channels: Vec<f32> = (0..head_dim)
                    .map(|d| (1.0 - 2f64.powf(-5.0 - 8.0 * d as f64 / head_dim as f64)).ln() as f32)
                    .collect();
                Some(
                    Tensor::from_vec(channels, (1, 1, 1, head_dim), device)?
                        .broadcast_as((1, n_heads, seq, head_dim))?
                        .contiguous()?,
                )
            }
            _ => None,
        };
        Ok(Mixing {
            q: ops::elu_plus_one(q)?,
            k: ops::elu_plus_one(k)?,
            v: ops::append_ones(v)?,
            log_decay,
            rule: UpdateRule::Additive,
        })
    }
}

/// Mamba-2's default decays `log α_h = −dt · (h + 1)`.
pub(crate) fn mamba_log_decays(n_heads: usize) -> Vec<f32> {
    (0..n_heads)
        .map(|h| (-DEFAULT_MAMBA_STEP * (h + 1) as f64) as f32)
        .collect()
}

impl AttentionKernel for LinearDropIn {
    fn name(&self) -> &str {
        self.variant.name()
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        let heads = CacheHeads::new(input, layer, out.len(), self.variant.name())?;
        let mixing = self.mixing(&heads)?;
        let (mixed, _) = mixing.chunkwise(self.chunk, &mixing.zero_state()?)?;
        let mixed = if self.variant.uses_delta_rule() {
            mixed
        } else {
            ops::divide_by_normalizer(&mixed)?
        };
        heads.write_queries(&mixed, out)
    }
}

/// The whole KV cache of one layer as tensors `[1, n_q_heads, kv_len, head_dim]`, each KV head
/// repeated for the query heads of its group, and the queries at their positions (zeros at
/// the earlier positions, whose outputs nobody reads). The queries are multiplied by the
/// layer's scale.
pub(crate) struct CacheHeads {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub n_heads: usize,
    pub seq: usize,
    pub head_dim: usize,
    n_queries: usize,
}

impl CacheHeads {
    /// Checks the input and that the layer's mask is plain causal: a linear state holds the
    /// whole prefix and cannot forget keys outside a window or chunk.
    pub(crate) fn new(
        input: &AttentionInput,
        layer: &LayerAttention,
        out_len: usize,
        kernel: &str,
    ) -> Result<CacheHeads> {
        input.validate(out_len)?;
        input.require_every_key(kernel)?;
        if layer.mask != Mask::Causal {
            return Err(Error::InvalidRequest(format!(
                "{kernel}: the layer's mask is {:?}, but this kernel only runs on causal layers; \
                 keep exact attention on sliding-window and chunked layers",
                layer.mask
            )));
        }
        let (n_heads, seq, head_dim, n_queries) = (
            input.n_q_heads,
            input.kv_len,
            input.head_dim,
            input.n_queries,
        );
        let mut q = vec![0.0f32; n_heads * seq * head_dim];
        let mut k = Vec::with_capacity(q.len());
        let mut v = Vec::with_capacity(q.len());
        for h in 0..n_heads {
            let first_query = (h * seq + seq - n_queries) * head_dim;
            for (slot, &value) in q[first_query..first_query + n_queries * head_dim]
                .iter_mut()
                .zip(input.q_head(h))
            {
                *slot = value * layer.scale;
            }
            let kv_head = h / input.group_size();
            k.extend_from_slice(input.k_head(kv_head));
            v.extend_from_slice(input.v_head(kv_head));
        }
        let shape = (1, n_heads, seq, head_dim);
        Ok(CacheHeads {
            q: Tensor::from_vec(q, shape, &Device::Cpu)?,
            k: Tensor::from_vec(k, shape, &Device::Cpu)?,
            v: Tensor::from_vec(v, shape, &Device::Cpu)?,
            n_heads,
            seq,
            head_dim,
            n_queries,
        })
    }

    /// Copies the rows of the queries out of `mixed` `[1, n_q_heads, kv_len, head_dim]`.
    pub(crate) fn write_queries(&self, mixed: &Tensor, out: &mut [f32]) -> Result<()> {
        let rows = mixed.narrow(2, self.seq - self.n_queries, self.n_queries)?;
        // `new` checked that `out` holds exactly `n_q_heads × n_queries × head_dim` values.
        out.copy_from_slice(&rows.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
