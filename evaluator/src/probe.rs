//! Run-time probes of a set of per-layer attention kernels inside a model: causality, finite
//! outputs and determinism. They take kernels rather than programs, so they judge what
//! actually runs, whatever produced it: an AKL program the static checks passed, or a
//! hand-written kernel that misbehaves only at run time.
//!
//! Every probe compares a [`Trace`]: each layer's attention output and the final hidden
//! states (the logits are a row-by-row function of these) of one prefill.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kernels::attention::{AttentionInput, AttentionKernel, CachePolicy, LayerAttention};
use kernels::Model;

use crate::Result;

/// What one prefill of a token sequence produced, layer by layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Per layer, the attention output `[n_q_heads, n_tokens, head_dim]`.
    pub attention: Vec<Vec<f32>>,
    /// The final hidden states `[n_tokens, d_model]`, after the final norm.
    pub hidden: Vec<f32>,
    pub n_tokens: usize,
    pub n_q_heads: usize,
    pub head_dim: usize,
    pub d_model: usize,
}

/// A place in a [`Trace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// The attention output of `layer`, query head `head`, at token `position`.
    Attention {
        layer: usize,
        head: usize,
        position: usize,
    },
    /// The final hidden state (hence the logits) at token `position`.
    Hidden { position: usize },
}

impl Location {
    pub fn position(self) -> usize {
        match self {
            Location::Attention { position, .. } | Location::Hidden { position } => position,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Attention {
                layer,
                head,
                position,
            } => write!(
                f,
                "layer {layer}'s attention output (query head {head}) at position {position}"
            ),
            Location::Hidden { position } => {
                write!(
                    f,
                    "the final hidden state (the logits) at position {position}"
                )
            }
        }
    }
}

/// Two traces that differ: the first place (earliest layer, then head, then position) and
/// the size of the change there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Difference {
    pub location: Location,
    pub before: f32,
    pub after: f32,
}

/// Positions ≤ `cut` moved when only tokens after `cut` changed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CausalityViolation {
    pub cut: usize,
    pub difference: Difference,
}

/// Runs `tokens` through `model` with `kernels` (one per layer) in one prefill, recording
/// every layer's attention output.
pub fn trace(model: &Model, kernels: &[Arc<dyn AttentionKernel>], tokens: &[u32]) -> Result<Trace> {
    let recorders: Vec<Arc<Recorder>> = kernels
        .iter()
        .map(|inner| {
            Arc::new(Recorder {
                inner: inner.clone(),
                output: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let wrapped: Vec<Arc<dyn AttentionKernel>> = recorders
        .iter()
        .map(|r| r.clone() as Arc<dyn AttentionKernel>)
        .collect();
    let mut cache = model.new_cache();
    let hidden = model.forward_hidden_with(&mut cache, tokens, &wrapped)?;
    let attention = recorders
        .iter()
        .map(|r| std::mem::take(&mut *r.output.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    let c = &model.config;
    Ok(Trace {
        attention,
        hidden,
        n_tokens: tokens.len(),
        n_q_heads: c.n_heads,
        head_dim: c.head_dim,
        d_model: c.d_model,
    })
}

/// The first place where `a` and `b` differ bit for bit at a position in `positions`
/// (NaN equals NaN with the same bits, so a NaN is left to the finite check).
pub fn first_difference(
    a: &Trace,
    b: &Trace,
    positions: std::ops::Range<usize>,
) -> Option<Difference> {
    let n = a.n_tokens;
    let d = a.head_dim;
    for (layer, (x, y)) in a.attention.iter().zip(&b.attention).enumerate() {
        for head in 0..a.n_q_heads {
            for position in positions.clone() {
                let at = (head * n + position) * d;
                let found = (at..at + d).find(|&i| x[i].to_bits() != y[i].to_bits());
                if let Some(i) = found {
                    return Some(Difference {
                        location: Location::Attention {
                            layer,
                            head,
                            position,
                        },
                        before: x[i],
                        after: y[i],
                    });
                }
            }
        }
    }
    let width = a.d_model;
    for position in positions {
        let at = position * width;
        let found = (at..at + width).find(|&i| a.hidden[i].to_bits() != b.hidden[i].to_bits());
        if let Some(i) = found {
            return Some(Difference {
                location: Location::Hidden { position },
                before: a.hidden[i],
                after: b.hidden[i],
            });
        }
    }
    None
}

/// The causality probe: `perturbed` equals `tokens` up to position `cut` and differs after
/// it; every output at positions ≤ `cut` must stay as it was in `baseline` (the trace of
/// `tokens`), bit for bit.
pub fn check_causality(
    model: &Model,
    kernels: &[Arc<dyn AttentionKernel>],
    baseline: &Trace,
    perturbed: &[u32],
    cut: usize,
) -> Result<Option<CausalityViolation>> {
    let moved = trace(model, kernels, perturbed)?;
    Ok(first_difference(baseline, &moved, 0..cut + 1)
        .map(|difference| CausalityViolation { cut, difference }))
}

/// The first NaN or infinity in a trace, in layer order, and its value.
pub fn first_non_finite(trace: &Trace) -> Option<(Location, f32)> {
    let n = trace.n_tokens;
    let d = trace.head_dim;
    for (layer, output) in trace.attention.iter().enumerate() {
        if let Some(i) = output.iter().position(|v| !v.is_finite()) {
            let location = Location::Attention {
                layer,
                head: i / (n * d),
                position: i / d % n,
            };
            return Some((location, output[i]));
        }
    }
    trace.hidden.iter().position(|v| !v.is_finite()).map(|i| {
        let position = i / trace.d_model;
        (Location::Hidden { position }, trace.hidden[i])
    })
}

/// The determinism check: a second run of the same tokens must reproduce `baseline` bit
/// for bit.
pub fn check_determinism(
    model: &Model,
    kernels: &[Arc<dyn AttentionKernel>],
    baseline: &Trace,
    tokens: &[u32],
) -> Result<Option<Difference>> {
    let again = trace(model, kernels, tokens)?;
    Ok(first_difference(baseline, &again, 0..tokens.len()))
}

/// Wall time of one prefill: the whole forward pass and the part spent in attention; and
/// the bytes of keys and values the cache holds after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardTime {
    pub forward: Duration,
    pub attention: Duration,
    pub kv_bytes_held: usize,
}

/// Times one prefill of `tokens` with `kernels`, attention calls included separately, and
/// measures what its cache holds after it (less than every key under a keep policy).
pub fn time_forward(
    model: &Model,
    kernels: &[Arc<dyn AttentionKernel>],
    tokens: &[u32],
) -> Result<ForwardTime> {
    let watches: Vec<Arc<Stopwatch>> = kernels
        .iter()
        .map(|inner| {
            Arc::new(Stopwatch {
                inner: inner.clone(),
                spent: Mutex::new(Duration::ZERO),
            })
        })
        .collect();
    let wrapped: Vec<Arc<dyn AttentionKernel>> = watches
        .iter()
        .map(|w| w.clone() as Arc<dyn AttentionKernel>)
        .collect();
    let mut cache = model.new_cache();
    let started = Instant::now();
    model.forward_hidden_with(&mut cache, tokens, &wrapped)?;
    let forward = started.elapsed();
    let attention = watches
        .iter()
        .map(|w| *w.spent.lock().unwrap_or_else(|e| e.into_inner()))
        .sum();
    Ok(ForwardTime {
        forward,
        attention,
        kv_bytes_held: cache.bytes_held(),
    })
}

/// Runs a kernel and keeps a copy of what it wrote.
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn AttentionKernel>,
    output: Mutex<Vec<f32>>,
}

impl AttentionKernel for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn cache_policy(&self) -> CachePolicy {
        self.inner.cache_policy()
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        self.inner.forward(input, layer, out)?;
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(out);
        Ok(())
    }
}

/// Runs a kernel and adds up the time it takes.
#[derive(Debug)]
struct Stopwatch {
    inner: Arc<dyn AttentionKernel>,
    spent: Mutex<Duration>,
}

impl AttentionKernel for Stopwatch {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn cache_policy(&self) -> CachePolicy {
        self.inner.cache_policy()
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        let started = Instant::now();
        let result = self.inner.forward(input, layer, out);
        *self.spent.lock().unwrap_or_else(|e| e.into_inner()) += started.elapsed();
        result
    }
}
