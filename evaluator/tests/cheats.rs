//! The cheat bank: candidates that try to fool the drop-in task, each rejected at the right
//! stage with a reason an LLM can act on; and the honest programs that must pass.
//!
//! Real-asset tests on SmolLM2-135M (`scripts/fetch-assets --only smollm2,austen,humaneval`)
//! at short contexts, so the file runs in about a minute.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use evaluator::drop_in::{DropInConfig, DropInTask, Objective};
use evaluator::{confirm, ConfirmOptions, Evaluation, Stage, Task};
use kernels::attention::{AttentionInput, AttentionKernel, LayerAttention, TiledAttention};

/// Settings small enough for tests: one 192-token slice of prose and one of code, a probe
/// of 96 tokens.
fn test_config(cache_dir: PathBuf) -> DropInConfig {
    let mut config = DropInConfig {
        contexts: vec![192],
        probe_tokens: Some(96),
        timing_repeats: 1,
        cache_dir: Some(cache_dir),
        ..DropInConfig::default()
    };
    // A deterministic objective, so that confirmation is exact in tests.
    config.score.objective = Objective::FlopsReduction;
    config
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("evk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One task shared by the tests (the model loads once).
fn task() -> &'static DropInTask {
    static TASK: OnceLock<DropInTask> = OnceLock::new();
    TASK.get_or_init(|| {
        DropInTask::new(test_config(temp_dir("cheats"))).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn evaluate(source: &str) -> Evaluation {
    task().evaluate(source, 0).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts a rejection at `stage` whose feedback says `phrase`.
fn assert_rejected(evaluation: &Evaluation, stage: Stage, phrase: &str) {
    assert!(!evaluation.passed, "accepted: {evaluation:#?}");
    assert_eq!(evaluation.score, None);
    assert_eq!(
        evaluation.stage_reached, stage,
        "feedback: {}",
        evaluation.feedback
    );
    assert!(
        evaluation.feedback.contains(phrase),
        "feedback lacks {phrase:?}: {}",
        evaluation.feedback
    );
}

#[test]
fn a_mask_that_peeks_one_position_ahead_fails_the_static_checks() {
    let e = evaluate("(kernel peek (mask (<= kv (+ q 1))))");
    assert_rejected(&e, Stage::Static, "not provably within causal");
    assert!(e.feedback.contains("q=0 sees kv=1"), "{}", e.feedback);
}

#[test]
fn a_peek_hidden_in_a_per_layer_rule_fails_the_static_checks() {
    let e = evaluate(
        "(kernel layer_peek
           (mask (and causal (> kv (- q 128))))
           (layers (list 17) (mask (or causal (== kv (+ q 1))))))",
    );
    assert_rejected(&e, Stage::Static, "not provably within causal");
    assert!(e.feedback.contains("layers"), "{}", e.feedback);
}

#[test]
fn a_peek_in_one_head_only_fails_the_static_checks() {
    let e = evaluate(
        "(kernel head_peek
           (heads (range 4 5) (mask (or causal (== kv (+ q 1))))))",
    );
    assert_rejected(&e, Stage::Static, "not provably within causal");
    assert!(e.feedback.contains("heads"), "{}", e.feedback);
}

#[test]
fn a_score_that_overflows_to_nan_fails_the_finite_check() {
    // Each factor is within the checker's ±1e9, but the product sends every score to
    // ±infinity; with several key tiles per row the running maximum is infinite twice, and
    // the softmax's rescaling by exp(inf - inf) is NaN.
    let e = evaluate(
        "(kernel overflow
           (score (* (* (* (* (* (* s scale) 1e9) 1e9) 1e9) 1e9) 1e9))
           (tile q 32 kv 16))",
    );
    assert_rejected(&e, Stage::Finite, "is NaN");
    assert!(
        e.feedback.contains("layer 0's attention output"),
        "{}",
        e.feedback
    );
}

#[test]
fn malformed_text_fails_parsing_with_line_and_column() {
    let e = evaluate("(kernel broken\n  (mask (and causal foo)))");
    assert_rejected(&e, Stage::Parse, "2:21: expected a mask expression");
}

/// Exact attention plus a little of the next position's value: a look into the future
/// that only exists at run time, where no static check can see it.
#[derive(Debug)]
struct RunTimePeek;

impl AttentionKernel for RunTimePeek {
    fn name(&self) -> &str {
        "run_time_peek"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        TiledAttention::default().forward(input, layer, out)?;
        let d = input.head_dim;
        for head in 0..input.n_q_heads {
            let values = input.v_head(head / input.group_size());
            for row in 0..input.n_queries {
                let next = input.query_position(row) + 1;
                if next < input.kv_len {
                    let at = (head * input.n_queries + row) * d;
                    for i in 0..d {
                        out[at + i] += 0.01 * values[next * d + i];
                    }
                }
            }
        }
        Ok(())
    }
}

/// Exact attention with a different tiny offset on every call.
#[derive(Debug, Default)]
struct Nondeterministic {
    calls: AtomicU32,
}

impl AttentionKernel for Nondeterministic {
    fn name(&self) -> &str {
        "nondeterministic"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        TiledAttention::default().forward(input, layer, out)?;
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        out.iter_mut().for_each(|v| *v += (call % 7) as f32 * 1e-6);
        Ok(())
    }
}

/// Exact attention, except that query head 3 writes NaN from position `from` on.
#[derive(Debug)]
struct NanFrom {
    from: usize,
}

impl AttentionKernel for NanFrom {
    fn name(&self) -> &str {
        "nan_from"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        TiledAttention::default().forward(input, layer, out)?;
        let d = input.head_dim;
        for row in 0..input.n_queries {
            if input.query_position(row) >= self.from {
                let at = (3 * input.n_queries + row) * d;
                out[at..at + d].fill(f32::NAN);
            }
        }
        Ok(())
    }
}

fn everywhere(kernel: Arc<dyn AttentionKernel>) -> Vec<Arc<dyn AttentionKernel>> {
    vec![kernel; task().model().config.n_layers()]
}

#[test]
fn a_run_time_peek_fails_the_causality_probe() {
    let e = task()
        .evaluate_kernels("run_time_peek", &everywhere(Arc::new(RunTimePeek)), 0)
        .unwrap();
    assert_rejected(
        &e,
        Stage::Causality,
        "changing only the tokens after position",
    );
    assert!(
        e.feedback.contains("layer 0's attention output"),
        "{}",
        e.feedback
    );
}

#[test]
fn a_kernel_that_produces_nan_fails_the_finite_check() {
    let kernel = Arc::new(NanFrom { from: 60 });
    let e = task()
        .evaluate_kernels("nan", &everywhere(kernel), 0)
        .unwrap();
    assert_rejected(&e, Stage::Finite, "(query head 3) at position 60 is NaN");
}

#[test]
fn nan_past_the_probe_is_caught_when_fidelity_runs_longer_slices() {
    // The probe runs 96 tokens, the fidelity slices 192.
    let kernel = Arc::new(NanFrom { from: 150 });
    let e = task()
        .evaluate_kernels("late_nan", &everywhere(kernel), 0)
        .unwrap();
    // Exact attention multiplies hidden future values by a zero weight inside a tile, and
    // 0 · NaN is NaN, so the NaN may surface a few rows before 150: still past the probe.
    assert_rejected(&e, Stage::Finite, "(context 192) are not finite");
    assert!(
        e.feedback.contains("though the short probe's were"),
        "{}",
        e.feedback
    );
}

#[test]
fn a_nondeterministic_kernel_fails_the_determinism_check() {
    let kernel = Arc::new(Nondeterministic::default());
    let e = task()
        .evaluate_kernels("nondeterministic", &everywhere(kernel), 0)
        .unwrap();
    assert_rejected(
        &e,
        Stage::Determinism,
        "two runs on the same tokens disagree",
    );
}

#[test]
fn a_kernel_fast_because_it_skips_work_fails_fidelity() {
    let e = evaluate("(kernel tiny_window (mask (and causal (> kv (- q 8)))))");
    assert_rejected(&e, Stage::Fidelity, "above the limit of 0.1");
    assert!(e.metrics["kl_max_mean"] > 0.1);
}

#[test]
fn an_honest_library_program_passes_every_stage_and_is_confirmed() {
    let source = include_str!("../../kernels/library/sink_window.akl");
    let e = evaluate(source);
    assert!(e.passed, "{e:#?}");
    assert_eq!(e.stage_reached, Stage::Score);
    let stages: Vec<Stage> = e.timings.iter().map(|t| t.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Parse,
            Stage::Static,
            Stage::Causality,
            Stage::Finite,
            Stage::Determinism,
            Stage::Fidelity,
            Stage::Cost,
            Stage::Score
        ]
    );
    // At 192 tokens the 1024-key window sees everything: exact attention's work plus the
    // checks of its mask in the tiles it cuts, which the cost model charges.
    let score = e.score.unwrap();
    assert!(score > 0.5 && score <= 1.0, "{score}");
    assert!(e.metrics["kl_max_mean"] < 1e-3, "{:?}", e.metrics);
    assert!(e.metrics["attention_seconds"] > 0.0);
    assert_eq!(e.descriptors["kv_bytes_held_ratio"], 1.0);
    assert_eq!(e.provenance.trial, 0);
    assert_eq!(e.provenance.slices.len(), 4);
    assert!(e.provenance.slices.iter().any(|s| s.starts_with("austen/")));
    assert!(e
        .provenance
        .slices
        .iter()
        .any(|s| s.starts_with("humaneval/")));

    let options = ConfirmOptions::default();
    let confirmation = confirm(task(), source, &e, &options).unwrap();
    assert!(confirmation.holds, "{}", confirmation.reason);
    let fresh = &confirmation.evaluations[0];
    assert_eq!(fresh.provenance.trial, 1);
    assert!(
        fresh
            .provenance
            .slices
            .iter()
            .all(|s| !e.provenance.slices.contains(s)),
        "confirmation reused a slice: {:?}",
        fresh.provenance.slices
    );

    // A score the candidate cannot reproduce is not confirmed.
    let mut inflated = e.clone();
    inflated.score = Some(3.0);
    let refused = confirm(task(), source, &inflated, &options).unwrap();
    assert!(!refused.holds);
    assert!(refused.reason.contains("below"), "{}", refused.reason);
}

#[test]
fn exact_attention_matches_the_cached_reference_bit_for_bit() {
    let e = evaluate(include_str!("../../kernels/library/exact.akl"));
    assert!(e.passed, "{e:#?}");
    assert_eq!(e.metrics["kl_max"], 0.0);
    assert_eq!(e.metrics["ppl_ratio_max"], 1.0);
}

#[test]
fn the_reference_cache_is_reused_and_a_corrupt_file_is_recomputed() {
    let dir = temp_dir("cache");
    let mut config = test_config(dir.clone());
    config.sources = vec![evaluator::drop_in::Source::Austen];
    config.contexts = vec![128];
    config.probe_tokens = Some(64);
    let task = DropInTask::new(config).unwrap_or_else(|e| panic!("{e}"));
    let source = "(kernel w64 (mask (and causal (> kv (- q 64)))))";
    let metric = |e: &Evaluation, name: &str| e.metrics[name];

    let first = task.evaluate(source, 0).unwrap();
    assert_eq!(metric(&first, "reference_cache_misses"), 1.0, "{first:#?}");
    let second = task.evaluate(source, 0).unwrap();
    assert_eq!(metric(&second, "reference_cache_hits"), 1.0);
    assert_eq!(metric(&second, "reference_cache_misses"), 0.0);
    assert_eq!(first.metrics["kl_mean"], second.metrics["kl_mean"]);

    let slice_id = first
        .provenance
        .slices
        .iter()
        .find(|s| s.ends_with("+128"))
        .unwrap();
    let slice = evaluator::drop_in::Slice {
        id: slice_id.clone(),
        tokens: Vec::new(),
    };
    let path = task.references().path(task.model_sha256(), &slice);
    let original = std::fs::read(&path).unwrap();
    let mut bytes = original.clone();
    bytes[original.len() / 2] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let third = task.evaluate(source, 0).unwrap();
    assert_eq!(metric(&third, "reference_cache_rejected"), 1.0);
    assert_eq!(first.metrics["kl_mean"], third.metrics["kl_mean"]);
    // Recomputed and rewritten whole, bit for bit as before.
    assert_eq!(std::fs::read(&path).unwrap(), original);

    // A truncated file is refused too.
    std::fs::write(&path, &original[..original.len() / 3]).unwrap();
    let fourth = task.evaluate(source, 0).unwrap();
    assert_eq!(metric(&fourth, "reference_cache_rejected"), 1.0);
    assert_eq!(std::fs::read(&path).unwrap(), original);
    std::fs::remove_dir_all(&dir).unwrap();
}
