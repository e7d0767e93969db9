//! `LogLinearDropIn`: Log-Linear attention in place of softmax attention in a pretrained
//! model, on the model's own per-head q, k and v.

use candle_core::Tensor;

use super::{levels_for, LogLinearMixing, LogLinearVariant};
use crate::attention::{AttentionInput, AttentionKernel, LayerAttention};
use crate::trainable::linear::{mamba_log_decays, ops, CacheHeads};
use crate::{Error, Result};

/// A Log-Linear kernel for a pretrained model, with fixed default weights since the hidden
/// states `x` the trained weights read are not available to an attention kernel:
///
/// - features `elu + 1` on `q · scale` and `k`, output divided by its normaliser (a convex
///   mix of the values);
/// - level weights `λ^(ℓ) = 1 / (ℓ + 1)`: a key counts less the coarser its bucket, so
///   recent keys dominate without older ones vanishing;
/// - `Mamba2` additionally decays per query head by `exp(−0.01 · (h + 1))`, Mamba-2's
///   default step size and initial rates.
///
/// Every call recomputes the level states over the whole KV cache (chunkwise), so decode
/// costs O(context) per token rather than O(log context); decode equals prefill by
/// construction.
#[derive(Clone, Copy, Debug)]
pub struct LogLinearDropIn {
    variant: LogLinearVariant,
    chunk: usize,
}

impl LogLinearDropIn {
    /// The kernel for `variant` with chunks of 64 tokens.
    pub fn new(variant: LogLinearVariant) -> Result<LogLinearDropIn> {
        LogLinearDropIn::with_chunk(variant, 64)
    }

    /// `chunk` must be a power of two.
    pub fn with_chunk(variant: LogLinearVariant, chunk: usize) -> Result<LogLinearDropIn> {
        if !chunk.is_power_of_two() {
            return Err(Error::InvalidRequest(format!(
                "{}: the chunk size must be a power of two (1, 2, 4, ...), got {chunk}",
                variant.name()
            )));
        }
        Ok(LogLinearDropIn { variant, chunk })
    }

    pub fn variant(&self) -> LogLinearVariant {
        self.variant
    }
}

impl AttentionKernel for LogLinearDropIn {
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
        let (n_heads, seq) = (heads.n_heads, heads.seq);
        let device = heads.q.device();
        let levels = levels_for(seq);
        let weights: Vec<f32> = (0..levels).map(|level| 1.0 / (level + 1) as f32).collect();
        let level_weights = Tensor::from_vec(weights, (1, 1, 1, levels), device)?
            .broadcast_as((1, n_heads, seq, levels))?
            .contiguous()?;
        let log_decay = match self.variant {
            LogLinearVariant::Mamba2 => Some(
                Tensor::from_vec(mamba_log_decays(n_heads), (1, n_heads, 1, 1), device)?
                    .broadcast_as((1, n_heads, seq, 1))?
                    .contiguous()?,
            ),
            LogLinearVariant::Plain => None,
        };
        let mixing = LogLinearMixing {
            q: ops::elu_plus_one(&heads.q)?,
            k: ops::elu_plus_one(&heads.k)?,
            v: ops::append_ones(&heads.v)?,
            level_weights,
            log_decay,
        };
        let mixed = ops::divide_by_normalizer(&mixing.chunkwise(self.chunk)?)?;
        heads.write_queries(&mixed, out)
    }
}
