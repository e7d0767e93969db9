//! The metric registry: every metric a task reports, with the direction that is better,
//! its unit and what it means. Queries, defaults, plots and the search read directions
//! from here, so a metric has one name and one meaning everywhere.
//!
//! A drop-in metric may carry a context suffix (`attn_flops_ratio@4096`, `kl_mean@1024`):
//! it means the same at that context length. A command task's metrics are its author's
//! own; they are not registered, and whoever sorts by one says which way is better.

use serde::{Deserialize, Serialize};

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Min,
    Max,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Min => "min",
            Direction::Max => "max",
        }
    }

    /// The value as something to maximise.
    pub fn gain(self, value: f64) -> f64 {
        match self {
            Direction::Min => -value,
            Direction::Max => value,
        }
    }
}

/// A registered metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub direction: Direction,
    pub unit: &'static str,
    pub description: &'static str,
    /// Computed by a model (the cost model) rather than measured.
    pub estimate: bool,
}

const fn metric(
    name: &'static str,
    direction: Direction,
    unit: &'static str,
    description: &'static str,
) -> Metric {
    Metric {
        name,
        direction,
        unit,
        description,
        estimate: false,
    }
}

/// A metric the cost model computes (deterministic, never timed).
const fn estimated(
    name: &'static str,
    direction: Direction,
    unit: &'static str,
    description: &'static str,
) -> Metric {
    Metric {
        estimate: true,
        ..metric(name, direction, unit, description)
    }
}

use Direction::{Max, Min};

/// Every registered metric.
pub const METRICS: &[Metric] = &[
    metric("score", Max, "objective", "the search's scalar: the task's objective for a program that passed every stage"),
    // Drop-in fidelity.
    metric("kl_max_mean", Min, "nats", "worst slice's mean next-token KL(exact ‖ candidate); the fidelity gate"),
    metric("kl_mean", Min, "nats", "mean next-token KL(exact ‖ candidate) over every slice"),
    metric("kl_max", Min, "nats", "largest single next-token KL over every slice"),
    metric("ppl_ratio_max", Min, "ratio", "worst slice's perplexity over exact attention's"),
    metric("ppl_ratio", Min, "ratio", "mean perplexity over exact attention's"),
    // Drop-in measured speed.
    metric("attention_speedup", Max, "×", "exact attention time / candidate attention time in one prefill at the timing context (geometric mean of interleaved pairs)"),
    metric("attention_speedup_lo", Max, "×", "lower end of the 95% confidence interval of attention_speedup"),
    metric("attention_speedup_hi", Max, "×", "upper end of the 95% confidence interval of attention_speedup"),
    metric("forward_speedup", Max, "×", "exact prefill time / candidate prefill time at the timing context (geometric mean of interleaved pairs)"),
    metric("forward_speedup_lo", Max, "×", "lower end of the 95% confidence interval of forward_speedup"),
    metric("forward_speedup_hi", Max, "×", "upper end of the 95% confidence interval of forward_speedup"),
    metric("attention_seconds", Min, "s", "median candidate attention time in one prefill at the timing context"),
    metric("attention_seconds_exact", Min, "s", "median exact attention time in one prefill at the timing context"),
    metric("forward_seconds", Min, "s", "median candidate prefill time at the timing context"),
    metric("forward_seconds_exact", Min, "s", "median exact prefill time at the timing context"),
    metric("kv_bytes_held_measured", Min, "bytes/token", "KV bytes the candidate's cache really holds after a prefill at the timing context, per token"),
    metric("kv_bytes_held_measured_ratio", Min, "ratio", "kv_bytes_held_measured / exact attention's"),
    // Drop-in cost model (estimates, deterministic).
    estimated("attn_flops_ratio", Min, "ratio", "cost model: candidate attention FLOPs / exact's"),
    estimated("kv_bytes_read_ratio", Min, "ratio", "cost model: KV bytes read / exact's"),
    estimated("kv_bytes_held_ratio", Min, "ratio", "cost model: KV bytes held per token / exact's"),
    estimated("flops_reduction", Max, "×", "cost model: 1 / attn_flops_ratio"),
    estimated("kv_held_reduction", Max, "×", "cost model: 1 / kv_bytes_held_ratio"),
    // Recommender.
    metric("ndcg@10", Max, "NDCG", "validation NDCG@10 of the recommender trained with the candidate"),
    metric("ndcg@20", Max, "NDCG", "validation NDCG@20"),
    metric("hr@10", Max, "hit rate", "validation HR@10"),
    metric("train_loss", Min, "nats", "last epoch's training loss"),
    metric("train_seconds", Min, "s", "training wall time"),
    metric("latency_ms_p50", Min, "ms", "median single-history scoring latency"),
    metric("latency_ms_p99", Min, "ms", "99th-percentile single-history scoring latency"),
];

/// The registered metric `name` (a context suffix `@N` is allowed where the base name is
/// registered).
pub fn lookup(name: &str) -> Option<&'static Metric> {
    let find = |n: &str| METRICS.iter().find(|m| m.name == n);
    find(name).or_else(|| {
        let (base, ctx) = name.rsplit_once('@')?;
        ctx.parse::<usize>().ok()?;
        find(base)
    })
}

/// The better direction of `name`, or an error that lists the registered metrics.
pub fn direction(name: &str) -> Result<Direction, UnknownMetric> {
    lookup(name)
        .map(|m| m.direction)
        .ok_or_else(|| UnknownMetric(name.to_string()))
}

/// A metric the registry does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown metric `{0}`; the known ones are {known} (a context suffix such as @4096 is \
     allowed); for a metric of your own task, say which way is better",
    known = known_names()
)]
pub struct UnknownMetric(pub String);

fn known_names() -> String {
    METRICS.iter().map(|m| m.name).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, m) in METRICS.iter().enumerate() {
            assert!(
                METRICS[i + 1..].iter().all(|o| o.name != m.name),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn context_suffixes_take_the_base_metric() {
        assert_eq!(direction("attn_flops_ratio@4096"), Ok(Direction::Min));
        assert_eq!(direction("ndcg@10"), Ok(Direction::Max));
        assert!(direction("attn_flops_ratio@x").is_err());
    }

    #[test]
    fn an_unknown_metric_lists_the_known_ones() {
        let error = direction("speed").unwrap_err().to_string();
        assert!(
            error.contains("`speed`") && error.contains("attention_speedup"),
            "{error}"
        );
    }
}
