//! An opt-in timer for the steps of `Model::forward`: where the time goes per token.
//!
//! Off by default, when each timed step costs one relaxed atomic load. `enable(true)` starts
//! it; the forward pass then adds each step's wall time to a process-wide total, which
//! `snapshot` reads. The forward pass calls every step from one thread (the steps parallelise
//! inside), so the totals add up to the forward pass's wall time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::quant::BlockFormat;

/// A step of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Looking up the input tokens' embeddings.
    Embedding,
    /// A weight matrix inside a layer, by its storage format (`None`: candle's `QMatMul`).
    Matmul(Option<BlockFormat>),
    /// The output projection to the vocabulary, with the final norm.
    LmHead,
    /// The attention kernel itself.
    Attention,
    /// Writing keys and values to the cache and moving heads between layouts.
    KvLayout,
    /// RMS norms, biases and residual additions.
    Norm,
    /// Rotary position embeddings.
    Rope,
    /// The feed-forward gate (SwiGLU, GeGLU).
    Activation,
}

impl Op {
    /// Every step, in report order.
    pub fn all() -> Vec<Op> {
        let mut ops = vec![Op::Embedding];
        ops.extend(BlockFormat::ALL.map(|f| Op::Matmul(Some(f))));
        ops.extend([
            Op::Matmul(None),
            Op::LmHead,
            Op::Attention,
            Op::KvLayout,
            Op::Norm,
            Op::Rope,
            Op::Activation,
        ]);
        ops
    }

    /// A short name for reports, e.g. `matmul Q4_K`.
    pub fn name(self) -> String {
        match self {
            Op::Embedding => "embedding".into(),
            Op::Matmul(Some(format)) => format!("matmul {}", format.name()),
            Op::Matmul(None) => "matmul (candle)".into(),
            Op::LmHead => "lm_head".into(),
            Op::Attention => "attention".into(),
            Op::KvLayout => "kv cache + layout".into(),
            Op::Norm => "norms, biases, residuals".into(),
            Op::Rope => "rope".into(),
            Op::Activation => "ffn activation".into(),
        }
    }

    fn index(self) -> usize {
        const FORMATS: usize = BlockFormat::ALL.len();
        match self {
            Op::Embedding => 0,
            Op::Matmul(Some(format)) => {
                1 + BlockFormat::ALL
                    .iter()
                    .position(|&f| f == format)
                    .expect("every format is in ALL")
            }
            Op::Matmul(None) => 1 + FORMATS,
            Op::LmHead => 2 + FORMATS,
            Op::Attention => 3 + FORMATS,
            Op::KvLayout => 4 + FORMATS,
            Op::Norm => 5 + FORMATS,
            Op::Rope => 6 + FORMATS,
            Op::Activation => 7 + FORMATS,
        }
    }
}

const SLOTS: usize = 8 + BlockFormat::ALL.len();

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static CALLS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

/// Turns the timer on or off for the whole process.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Zeroes every total.
pub fn reset() {
    for (nanos, calls) in NANOS.iter().zip(&CALLS) {
        nanos.store(0, Ordering::Relaxed);
        calls.store(0, Ordering::Relaxed);
    }
}

/// The time spent in one step since the last `reset`.
#[derive(Clone, Copy, Debug)]
pub struct OpTime {
    pub op: Op,
    pub time: Duration,
    pub calls: u64,
}

/// Every step that ran since the last `reset`, in `Op::all` order.
pub fn snapshot() -> Vec<OpTime> {
    Op::all()
        .into_iter()
        .map(|op| OpTime {
            op,
            time: Duration::from_nanos(NANOS[op.index()].load(Ordering::Relaxed)),
            calls: CALLS[op.index()].load(Ordering::Relaxed),
        })
        .filter(|t| t.calls > 0)
        .collect()
}

/// Runs `f`, adding its wall time to `op`'s total when the timer is on.
#[inline]
pub(crate) fn timed<T>(op: Op, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let started = Instant::now();
    let value = f();
    let nanos = started.elapsed().as_nanos() as u64;
    NANOS[op.index()].fetch_add(nanos, Ordering::Relaxed);
    CALLS[op.index()].fetch_add(1, Ordering::Relaxed);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_its_own_slot() {
        let mut indices: Vec<usize> = Op::all().into_iter().map(Op::index).collect();
        assert_eq!(indices.len(), SLOTS);
        indices.sort();
        indices.dedup();
        assert_eq!(indices, (0..SLOTS).collect::<Vec<_>>());
    }
}
