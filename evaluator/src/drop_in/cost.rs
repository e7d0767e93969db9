//! The cost stage: the cost model's ratios to exact attention at every context length, and
//! measured prefill and attention time of the candidate against exact attention.

use std::collections::BTreeMap;

use kernels::akl::{self, ModelShape};

use super::{could_not_run, Candidate, DropInTask, TrialData};
use crate::cascade::Stop;
use crate::probe::{time_forward, ForwardTime};
use crate::{Evaluation, Stage};

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
                let cost = akl::cost(program, &shape, ctx).map_err(crate::Error::from)?;
                let exact = akl::exact_cost(&shape, ctx).map_err(crate::Error::from)?;
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
                let value = 1.0 / metrics[ratio];
                metrics.insert(reduction.into(), value);
            }
        }
        self.time(candidate, data, timing_ctx, metrics)
    }

    /// Interleaved timed prefills of one slice at `ctx`, exact and candidate in alternating
    /// order so that drifting machine load falls on both.
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
            .tokens;
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
        record_kv_held(&ours, &theirs, ctx, metrics);
        let summary = |times: Vec<f64>| -> (f64, f64) {
            let median = median(&times);
            let (lo, hi) = times
                .iter()
                .fold((f64::INFINITY, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
            (median, (hi - lo) / median.max(1e-12))
        };
        let (forward, forward_spread) =
            summary(ours.iter().map(|t| t.forward.as_secs_f64()).collect());
        let (attention, attention_spread) =
            summary(ours.iter().map(|t| t.attention.as_secs_f64()).collect());
        let (forward_exact, forward_exact_spread) =
            summary(theirs.iter().map(|t| t.forward.as_secs_f64()).collect());
        let (attention_exact, attention_exact_spread) =
            summary(theirs.iter().map(|t| t.attention.as_secs_f64()).collect());
        for (name, value) in [
            ("timing_context", ctx as f64),
            ("timing_repeats", self.config.timing_repeats as f64),
            ("forward_seconds", forward),
            ("forward_seconds_spread", forward_spread),
            ("forward_seconds_exact", forward_exact),
            ("forward_seconds_exact_spread", forward_exact_spread),
            ("attention_seconds", attention),
            ("attention_seconds_spread", attention_spread),
            ("attention_seconds_exact", attention_exact),
            ("attention_seconds_exact_spread", attention_exact_spread),
            ("forward_speedup", forward_exact / forward.max(1e-12)),
            ("attention_speedup", attention_exact / attention.max(1e-12)),
        ] {
            metrics.insert(name.into(), value);
        }
        Ok(())
    }
}

/// The bytes of keys and values the candidate's cache and exact attention's hold after the
/// timed prefills of `ctx` tokens, measured: `kv_bytes_held_measured` per token, and its
/// ratio to exact's, beside the cost model's `kv_bytes_held_ratio`.
fn record_kv_held(
    ours: &[ForwardTime],
    theirs: &[ForwardTime],
    ctx: usize,
    metrics: &mut BTreeMap<String, f64>,
) {
    let (Some(ours), Some(theirs)) = (ours.last(), theirs.last()) else {
        return;
    };
    let held = ours.kv_bytes_held as f64;
    metrics.insert("kv_bytes_held_measured".into(), held / ctx.max(1) as f64);
    metrics.insert(
        "kv_bytes_held_measured_ratio".into(),
        held / (theirs.kv_bytes_held as f64).max(1.0),
    );
}

/// The median (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
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

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
