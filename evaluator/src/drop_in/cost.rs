//! The cost stage: the cost model's ratios to exact attention at every context length, and
//! measured prefill and attention time of the candidate against exact attention.
//!
//! Every cost is priced where fidelity scores: a slice of `ctx` tokens scores the predictions
//! of rows `0..=ctx-2`, and the cache a row finds holds what the keep policy kept after the
//! row before it. So costs at context `ctx` are those of a prefill of [`priced_len`]`(ctx)`
//! tokens, whose work and whose final cache are both seen by scored rows. Pricing the last
//! row, or the cache after it, would reward a kernel that is exact on every scored row and
//! sees (and keeps) nothing from the evaluated length on.

use std::collections::BTreeMap;
use std::time::Duration;

use kernels::akl::{self, ModelShape};

use super::{could_not_run, Candidate, DropInTask, TrialData};
use crate::cascade::{failed, Stop};
use crate::probe::{time_forward, ForwardTime};
use crate::{Evaluation, Stage};
use kernels::stats::{median, Speedup};

impl DropInTask {
    pub(super) fn cost(
        &self,
        candidate: &Candidate,
        data: &TrialData,
        evaluation: &mut Evaluation,
    ) -> std::result::Result<(), Stop> {
        let metrics = &mut evaluation.metrics;
        let timing_ctx = self.config.timing_context();
        if let Some(program) = candidate.program {
            let shape = ModelShape::of(&self.model.config);
            for &ctx in &self.config.contexts {
                let priced = priced_len(ctx);
                let cost = akl::cost(program, &shape, priced).map_err(crate::Error::from)?;
                let exact = akl::exact_cost(&shape, priced).map_err(crate::Error::from)?;
                let ratios = [
                    ("attn_flops_ratio", cost.flops / exact.flops),
                    (
                        "kv_bytes_read_ratio",
                        cost.kv_bytes_read / exact.kv_bytes_read,
                    ),
                    (
                        "kv_bytes_held_ratio",
                        cost.kv_bytes_held_per_token / exact.kv_bytes_held_per_token,
                    ),
                ];
                for (name, ratio) in ratios {
                    metrics.insert(format!("{name}@{ctx}"), ratio);
                    if ctx == timing_ctx {
                        metrics.insert(name.into(), ratio);
                    }
                }
            }
            for (reduction, ratio) in [
                ("flops_reduction", "attn_flops_ratio"),
                ("kv_held_reduction", "kv_bytes_held_ratio"),
            ] {
                let value = metrics[ratio];
                if !(value.is_finite() && value > 0.0) {
                    return Err(failed(
                        Stage::Cost,
                        format!(
                            "the cost model prices {ratio} at {value} at {timing_ctx} tokens: \
                             a kernel that does no attention work or holds no cache is not a \
                             kernel. Keep every query's own key visible and in the cache."
                        ),
                    ));
                }
                metrics.insert(reduction.into(), 1.0 / value);
            }
        }
        self.time(candidate, data, timing_ctx, metrics)
    }

    /// Interleaved timed prefills of one slice at `ctx` (its first `priced_len(ctx)` tokens),
    /// exact and candidate in alternating order so that drifting machine load falls on both.
    fn time(
        &self,
        candidate: &Candidate,
        data: &TrialData,
        ctx: usize,
        metrics: &mut BTreeMap<String, f64>,
    ) -> std::result::Result<(), Stop> {
        let tokens = &data
            .fidelity
            .iter()
            .find(|(c, _)| *c == ctx)
            .expect("the timing context is one of the contexts")
            .1[0]
            .tokens[..priced_len(ctx)];
        let exact = self.model.attention_kernels();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for repeat in 0..self.config.timing_repeats {
            for candidate_turn in [repeat % 2 == 0, repeat % 2 == 1] {
                if candidate_turn {
                    ours.push(
                        time_forward(candidate.model, candidate.kernels, tokens)
                            .map_err(|e| could_not_run(Stage::Cost, e))?,
                    );
                } else {
                    theirs.push(time_forward(&self.model, exact, tokens)?);
                }
            }
        }
        record_kv_held(&ours, &theirs, tokens.len(), metrics);
        metrics.insert("timing_context".into(), ctx as f64);
        metrics.insert("timing_repeats".into(), self.config.timing_repeats as f64);
        let parts: [(&str, TimePart); 2] =
            [("forward", |t| t.forward), ("attention", |t| t.attention)];
        for (name, part) in parts {
            let seconds = |times: &[ForwardTime]| -> Vec<f64> {
                times.iter().map(|t| part(t).as_secs_f64()).collect()
            };
            let (ours, theirs) = (seconds(&ours), seconds(&theirs));
            for (suffix, times) in [("", &ours), ("_exact", &theirs)] {
                metrics.insert(format!("{name}_seconds{suffix}"), median(times));
                metrics.insert(format!("{name}_seconds{suffix}_spread"), spread(times));
            }
            let speedup = Speedup::from_pairs(&theirs, &ours);
            metrics.insert(format!("{name}_speedup"), speedup.estimate);
            if speedup.hi.is_finite() {
                metrics.insert(format!("{name}_speedup_lo"), speedup.lo);
                metrics.insert(format!("{name}_speedup_hi"), speedup.hi);
            }
        }
        Ok(())
    }
}

/// Which part of a timed prefill a speed-up is about.
type TimePart = fn(&ForwardTime) -> Duration;

/// (largest − smallest) / median.
fn spread(times: &[f64]) -> f64 {
    let (lo, hi) = times
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    (hi - lo) / median(times).max(1e-12)
}

/// How many tokens' prefill the costs at context `ctx` are priced and timed on (see the
/// module docs): the cache after them is what the last scored row finds.
pub(super) fn priced_len(ctx: usize) -> usize {
    ctx - 2
}

/// The bytes of keys and values the candidate's cache and exact attention's hold after the
/// timed prefills of `tokens` tokens, measured: `kv_bytes_held_measured` per token, and its
/// ratio to exact's, beside the cost model's `kv_bytes_held_ratio`.
fn record_kv_held(
    ours: &[ForwardTime],
    theirs: &[ForwardTime],
    tokens: usize,
    metrics: &mut BTreeMap<String, f64>,
) {
    let (Some(ours), Some(theirs)) = (ours.last(), theirs.last()) else {
        return;
    };
    let held = ours.kv_bytes_held as f64;
    metrics.insert("kv_bytes_held_measured".into(), held / tokens.max(1) as f64);
    metrics.insert(
        "kv_bytes_held_measured_ratio".into(),
        held / (theirs.kv_bytes_held as f64).max(1.0),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::probe::ForwardTime;

    #[test]
    fn measured_kv_held_is_per_token_and_against_exact() {
        let held = |kv_bytes_held| ForwardTime {
            forward: Duration::ZERO,
            attention: Duration::ZERO,
            kv_bytes_held,
        };
        let mut metrics = BTreeMap::new();
        super::record_kv_held(&[held(4096)], &[held(16384)], 1024, &mut metrics);
        assert_eq!(metrics["kv_bytes_held_measured"], 4.0);
        assert_eq!(metrics["kv_bytes_held_measured_ratio"], 0.25);
    }
}
