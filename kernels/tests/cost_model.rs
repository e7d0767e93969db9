//! The cost model against measured time: library programs and adversarial shapes run
//! through the real kernels on SmolLM2's attention shape, and the model's FLOPs must rank
//! them as their measured times do.

use std::sync::Arc;
use std::time::Instant;

use kernels::akl::{self, cost, parse_and_check, CheckedProgram, ModelShape};
use kernels::attention::{AttentionInput, AttentionKernel, LayerAttention, Mask};
use kernels::stats::{median, spearman};

/// SmolLM2-135M's attention, one layer.
const SHAPE: ModelShape = ModelShape {
    n_layers: 1,
    n_q_heads: 9,
    n_kv_heads: 3,
    head_dim: 64,
};

fn scale() -> f32 {
    1.0 / (SHAPE.head_dim as f32).sqrt()
}

/// Deterministic values in [-1, 1).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Random queries, keys and values of one prefill of `len` tokens.
struct Prefill {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
}

impl Prefill {
    fn new(len: usize) -> Prefill {
        let d = SHAPE.head_dim;
        Prefill {
            q: random(SHAPE.n_q_heads * len * d, 1),
            k: random(SHAPE.n_kv_heads * len * d, 2),
            v: random(SHAPE.n_kv_heads * len * d, 3),
            len,
        }
    }

    /// Seconds one forward of `kernel` takes.
    fn time(&self, kernel: &dyn AttentionKernel) -> f64 {
        let input = AttentionInput {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            n_q_heads: SHAPE.n_q_heads,
            n_kv_heads: SHAPE.n_kv_heads,
            head_dim: SHAPE.head_dim,
            n_queries: self.len,
            kv_len: self.len,
            kv_capacity: self.len,
            key_positions: None,
            page_summaries: &[],
        };
        let layer = LayerAttention {
            scale: scale(),
            mask: Mask::Causal,
        };
        let mut out = vec![0.0; self.q.len()];
        let started = Instant::now();
        kernel.forward(&input, &layer, &mut out).unwrap();
        started.elapsed().as_secs_f64()
    }

    /// Median seconds of each kernel over `repeats` rounds that run every kernel once: a
    /// load spike (or the first round's cold caches) hits one round of every kernel, and
    /// the median drops it.
    fn median_times(&self, kernels: &[Arc<dyn AttentionKernel>], repeats: usize) -> Vec<f64> {
        let mut times = vec![Vec::new(); kernels.len()];
        for _ in 0..repeats {
            for (kernel, times) in kernels.iter().zip(&mut times) {
                times.push(self.time(kernel.as_ref()));
            }
        }
        times.iter().map(|t| median(t)).collect()
    }
}

fn program(text: &str) -> CheckedProgram {
    parse_and_check(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn kernel(checked: &CheckedProgram) -> Arc<dyn AttentionKernel> {
    akl::instantiate(checked, &SHAPE, scale())
        .unwrap()
        .kernels
        .remove(0)
}

fn rule(mask: &str, score: &str) -> CheckedProgram {
    program(&format!(
        "(kernel k (mask {mask}) (score {score}) (norm softmax))"
    ))
}

/// Exact attention's rule with page selection on top.
fn select(page: usize, top: usize, summary: &str) -> CheckedProgram {
    program(&format!(
        "(kernel k (mask causal) (score (* s scale)) (norm softmax) \
         (select (page {page}) (top {top}) (summary {summary})))"
    ))
}

/// Training-free library programs and shapes an adversary would pick: a score that is
/// expensive per pair, masks that leave every tile partial, pages far too large or small.
fn programs() -> Vec<(String, CheckedProgram)> {
    let library = [
        "exact",
        "window",
        "sink_window",
        "head_mix",
        "star",
        "quest",
        "moba",
    ];
    let plain = "(* s scale)";
    let adversarial = [
        (
            "soft_cap",
            rule("causal", "(* 30 (tanh (/ (* s scale) 30)))"),
        ),
        (
            "dilated_4",
            rule("(and causal (== (mod (- q kv) 4) 0))", plain),
        ),
        (
            "dilated_window",
            rule(
                "(and causal (> kv (- q 512)) (== (mod (- q kv) 2) 0))",
                plain,
            ),
        ),
        ("huge_pages", select(1024, 2, "mean")),
        ("tiny_pages", select(4, 64, "minmax")),
    ];
    library
        .iter()
        .map(|&name| {
            let checked = akl::library::checked(name).unwrap().clone();
            (name.to_string(), checked)
        })
        .chain(adversarial.into_iter().map(|(n, c)| (n.to_string(), c)))
        .collect()
}

fn flops(checked: &CheckedProgram, len: usize) -> f64 {
    cost(checked, &SHAPE, len).unwrap().flops
}

#[test]
fn per_pair_work_beyond_the_score_and_value_loop_is_charged() {
    let t = 1024;
    let exact = flops(akl::library::checked("exact").unwrap(), t);
    let plain = "(* s scale)";
    // `(* s scale)` is the fast path; any other score runs per visible pair, and costs more
    // with more operations and more with tanh than with an addition.
    assert_eq!(flops(&rule("causal", plain), t), exact);
    let add = flops(&rule("causal", "(+ (* s scale) 0)"), t);
    let add_twice = flops(&rule("causal", "(+ (+ (* s scale) 0) 0)"), t);
    let tanh = flops(&rule("causal", "(tanh (+ (* s scale) 0))"), t);
    assert!(
        exact < add && add < add_twice && add_twice < tanh,
        "{add} {add_twice} {tanh}"
    );
    // Half the pairs visible, but every tile partial: each pair is scored and checked.
    let even = flops(&rule("(and causal (== (mod kv 2) 0))", plain), t);
    assert!(even > exact, "{even} vs {exact}");
    // A window's partial tiles are its edges: checks stay a small part of its cost.
    let window = "(and causal (> kv (- q 256)))";
    let window_flops = flops(&rule(window, plain), t);
    let visible = (256 * 257 / 2 + (t - 256) * 256) as f64;
    let dense = 4.0 * 64.0 * visible * 9.0;
    assert!(
        window_flops > dense && window_flops < 1.5 * dense,
        "{window_flops} vs {dense}"
    );
}

#[test]
fn page_selection_pays_for_scoring_pages() {
    let t = 4096;
    // The same 1024-key budget: small pages mean many more pages to score per row.
    let (small, large) = (
        flops(&select(4, 256, "minmax"), t),
        flops(&select(64, 16, "minmax"), t),
    );
    assert!(small > 2.0 * large, "{small} vs {large}");
}

#[test]
fn cost_model_ranks_programs_as_measured_time_does() {
    const T: usize = 2048;
    let programs = programs();
    let kernels: Vec<_> = programs.iter().map(|(_, c)| kernel(c)).collect();
    let flops: Vec<f64> = programs
        .iter()
        .map(|(_, c)| cost(c, &SHAPE, T).unwrap().flops)
        .collect();
    let seconds = Prefill::new(T).median_times(&kernels, 3);
    for (((name, _), f), s) in programs.iter().zip(&flops).zip(&seconds) {
        println!("{name:<16} {:>8.3} GFLOP  {:>8.2} ms", f / 1e9, s * 1e3);
    }
    let rho = spearman(&flops, &seconds);
    println!("Spearman's rho, cost-model FLOPs against measured time: {rho:.3}");
    assert!(rho >= 0.8, "Spearman's rho {rho:.3} < 0.8");
}

/// Measures what the cost model's weights stand for: nanoseconds per pair of score
/// modifiers and partial-tile masks beyond exact attention, in exact attention's FLOPs.
/// Run with `cargo test -p kernels --test cost_model calibrate -- --ignored --nocapture`.
#[test]
#[ignore]
fn calibrate() {
    const T: usize = 2048;
    let plain = "(* s scale)";
    let cases = [
        ("exact", rule("causal", plain)),
        ("score 5 nodes", rule("causal", "(+ (* s scale) 0)")),
        (
            "score 9 nodes",
            rule("causal", "(+ (+ (+ (* s scale) 0) 0) 0)"),
        ),
        (
            "score 5 nodes 2 tanh",
            rule("causal", "(tanh (tanh (* s scale)))"),
        ),
        (
            "mask 8 nodes",
            rule("(and causal (== (mod kv 2) (mod kv 2)))", plain),
        ),
        (
            "mask 12 nodes",
            rule("(and causal (== (mod (+ kv 0) 2) (mod (+ kv 0) 2)))", plain),
        ),
        ("quest", akl::library::checked("quest").unwrap().clone()),
        ("moba", akl::library::checked("moba").unwrap().clone()),
        ("huge_pages", select(1024, 2, "mean")),
        ("tiny_pages", select(4, 64, "minmax")),
        ("tiny_pages_mean", select(4, 64, "mean")),
    ];
    let kernels: Vec<_> = cases.iter().map(|(_, c)| kernel(c)).collect();
    let seconds = Prefill::new(T).median_times(&kernels, 5);
    let pairs = (T * (T + 1) / 2 * SHAPE.n_q_heads) as f64;
    let exact_flops = 4.0 * SHAPE.head_dim as f64 * pairs;
    let ns_per_flop = seconds[0] * 1e9 / exact_flops;
    println!(
        "exact: {:.2} ms, {:.1} GFLOP/s",
        seconds[0] * 1e3,
        1.0 / ns_per_flop
    );
    for ((name, c), s) in cases.iter().zip(&seconds) {
        let extra = (s - seconds[0]) * 1e9 / pairs;
        let model = cost(c, &SHAPE, T).unwrap().flops;
        println!(
            "{name:<22} {:>8.2} ms  extra {extra:>6.2} ns/pair = {:>7.1} FLOPs/pair  \
             model {:.3} of exact",
            s * 1e3,
            extra / ns_per_flop,
            model / exact_flops
        );
    }
}
