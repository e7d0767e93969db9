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
fn a_score_that_overflows_f32_is_refused_before_it_runs() {
    // Each factor is within the checker's ±1e9, but the product sends every score past what
    // f32 holds; the checker's bound on the score sees it from the text.
    let e = evaluate(
        "(kernel overflow
           (score (* (* (* (* (* (* s scale) 1e9) 1e9) 1e9) 1e9) 1e9))
           (tile q 32 kv 16))",
    );
    assert_rejected(&e, Stage::Static, "past what f32 holds");
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

/// One cheat: what it tries, its text, and where it must be stopped with what feedback.
struct Cheat {
    tries: &'static str,
    source: String,
    stage: Stage,
    phrase: &'static str,
}

fn cheat(tries: &'static str, source: &str, stage: Stage, phrase: &'static str) -> Cheat {
    Cheat {
        tries,
        source: source.to_string(),
        stage,
        phrase,
    }
}

/// The written bank, by class: every case is stopped at its stage with feedback that names
/// what to fix. (The hand-made run-time kernels have tests of their own above.)
#[test]
fn the_cheat_bank_is_stopped_at_the_right_stages() {
    let params: String = (0..33)
        .map(|i| format!("(param p{i} int 1 (0 8))"))
        .collect();
    let comparisons: String = (0..33)
        .map(|i| format!(" (> kv (- q {}))", 100 + i))
        .collect();
    let overrides: String = (0..33)
        .map(|i| format!("(layers (list {i}) window)"))
        .collect();
    let huge = "(* (* 16777216 16777216) 16777216)";
    let bank = [
        // Size: every limit holds before any proof or allocation.
        cheat(
            "a program too long to check quickly",
            &format!("(kernel big){}", " ".repeat(20_000)),
            Stage::Parse,
            "at most 16384 bytes",
        ),
        cheat(
            "a program of very many expressions",
            &format!("(kernel many {})", "(tile q 32 kv 128) ".repeat(500)),
            Stage::Parse,
            "expressions",
        ),
        cheat(
            "lists nested past the stack's depth",
            &format!("(kernel deep (mask {}causal{}))", "(not ".repeat(80), ")".repeat(80)),
            Stage::Parse,
            "nested lists",
        ),
        cheat(
            "more parameters than the checker's search is bounded for",
            &format!("(kernel p {params})"),
            Stage::Static,
            "at most 32",
        ),
        cheat(
            "a mask of very many comparisons",
            &format!("(kernel c (mask (and causal (or{comparisons}))))"),
            Stage::Static,
            "at most 32",
        ),
        cheat(
            "very many overrides",
            &format!("(kernel o {overrides})"),
            Stage::Static,
            "at most 32",
        ),
        cheat(
            "a score of very many nodes, slow on every pair",
            &format!("(kernel s (score {}s{}))", "(+ 1 ".repeat(40), ")".repeat(40)),
            Stage::Static,
            "at most 64",
        ),
        cheat(
            "a mask whose normal form explodes",
            &format!(
                "(kernel dnf (mask (and (<= kv q) {})))",
                (0..10)
                    .map(|i| format!("(or (< kv {i}) (> kv (- q {})))", i + 9))
                    .collect::<String>()
            ),
            Stage::Static,
            "more than 256 cases",
        ),
        // Arithmetic: documented bounds hold in release builds too.
        cheat(
            "a parameter at i64::MIN, whose abs() wraps",
            &format!("(kernel m (param W int {min} ({min} 0)))", min = i64::MIN),
            Stage::Static,
            "absurd size",
        ),
        cheat(
            "an integer literal past the lexer's range",
            "(kernel l (mask (and causal (> kv 99999999999999999999))))",
            Stage::Parse,
            "an integer within",
        ),
        cheat(
            "constant folding past 2^52, cancelled out",
            &format!("(kernel f (mask (and causal (> kv (- {huge} {huge})))))"),
            Stage::Static,
            "2^52",
        ),
        cheat(
            "a score finite in the evaluated context, infinite beyond it",
            "(kernel far (score (* (* s scale) (* (* q q) (* (* q q) (* q q))))))",
            Stage::Static,
            "past what f32 holds",
        ),
        cheat(
            "a score divided by a tiny constant",
            "(kernel tiny (score (/ (* s scale) 1e-38)))",
            Stage::Static,
            "past what f32 holds",
        ),
        cheat(
            "a float too large to be a number",
            "(kernel inf (score (* s 1e999)))",
            Stage::Parse,
            "a finite number",
        ),
        // Causality, proven for every mask written anywhere.
        cheat(
            "a peek hidden behind a double negation",
            "(kernel n (mask (not (not (<= kv (+ q 1))))))",
            Stage::Static,
            "not provably within causal",
        ),
        cheat(
            "a chunk mask without causal: the whole chunk, future included",
            "(kernel ch (mask (== (div kv 64) (div q 64))))",
            Stage::Static,
            "not provably within causal",
        ),
        cheat(
            "a peek in a heads override inside a layers override",
            "(kernel h (layers (list 2) (mask causal) (heads (list 1) (mask (< kv (+ q 2))))))",
            Stage::Static,
            "not provably within causal",
        ),
        cheat(
            "a keep policy that evicts keys the mask still shows",
            "(kernel k (mask (and causal (> kv (- q 64)))) (cache (keep (> kv (- q 16)))))",
            Stage::Static,
            "may drop a key",
        ),
        // Shape: what the runtime cannot honour is refused before any work.
        cheat(
            "a mechanism option past the model's shape (an MLA rank beyond its keys)",
            "(kernel r (mechanism mla (kv_rank 4096)))",
            Stage::Static,
            "kv_rank 4096 is beyond this model's largest",
        ),
        cheat(
            "an option no runtime reads",
            "(kernel u (mechanism linear (chunk 64) (speed 9)))",
            Stage::Static,
            "speed",
        ),
        cheat(
            "a tile of zero keys",
            "(kernel t (tile q 32 kv 0))",
            Stage::Static,
            "kv tile 0",
        ),
        cheat(
            "Star attention with a mask of its own",
            "(kernel st (star (block 64) (context 128)) (mask (and causal (> kv (- q 8)))))",
            Stage::Static,
            "Star attention brings its own mask",
        ),
        cheat(
            "a selection with a keep policy it cannot honour",
            "(kernel sel (select (page 16) (top 2) (summary minmax)) (cache (keep (> kv (- q 8)))))",
            Stage::Static,
            "drop the keep policy",
        ),
        // Fidelity: skipping work is measured, whatever the mask's shape.
        cheat(
            "a mask that shows no key at all",
            "(kernel none (mask false))",
            Stage::Fidelity,
            "above the limit",
        ),
        cheat(
            "a strided mask that drops most keys",
            "(kernel stride (mask (and causal (== (mod (- q kv) 16) 0))))",
            Stage::Fidelity,
            "above the limit",
        ),
        cheat(
            "a sink-only mask",
            "(kernel sinks (mask (and causal (or (< kv 4) (== kv q)))))",
            Stage::Fidelity,
            "above the limit",
        ),
    ];
    let mut escaped = Vec::new();
    for cheat in &bank {
        let e = evaluate(&cheat.source);
        // What the text alone refutes is refused before any expensive work.
        let cheap = !matches!(cheat.stage, Stage::Parse | Stage::Static) || e.seconds() < 1.0;
        let stopped = !e.passed
            && e.score.is_none()
            && e.stage_reached == cheat.stage
            && e.feedback.contains(cheat.phrase)
            && cheap;
        eprintln!(
            "{:<5} {:<70} {} {:.3}s: {}",
            if stopped { "ok" } else { "ESCAPED" },
            cheat.tries,
            e.stage_reached.name(),
            e.seconds(),
            e.feedback.chars().take(120).collect::<String>()
        );
        if !stopped {
            escaped.push(cheat.tries);
        }
    }
    assert!(escaped.is_empty(), "not stopped as expected: {escaped:?}");
}

/// Exact on every row fidelity scores, blind from the last row on: the cache it claims to
/// need at the evaluated length is priced where the last scored row reads it, so it holds
/// everything, and its score is no better than exact attention's.
#[test]
fn a_kernel_that_cheats_only_past_the_scored_rows_gains_nothing() {
    let ctx = 192;
    let last = ctx - 1;
    let source = format!(
        "(kernel tail (mask (and causal (or (< q {last}) (== kv q)))) \
         (cache (keep (or (< q {last}) (== kv q)))))"
    );
    let e = evaluate(&source);
    assert!(e.passed, "{}", e.feedback);
    assert!(e.metrics["kl_max_mean"] < 1e-3);
    let held = e.metrics["kv_bytes_held_ratio"];
    assert!(
        held > 0.99,
        "the cost model prices an emptied cache: {held}"
    );
    let measured = e.metrics["kv_bytes_held_measured_ratio"];
    assert!(measured > 0.99, "the measured cache is empty: {measured}");
    assert!(e.metrics["flops_reduction"] <= 1.0, "{:?}", e.metrics);
}

/// A score of +inf on one pair inside the evaluated context: the softmax must not clamp it
/// into a plausible average; the finite stage sees it.
#[test]
fn an_infinite_score_in_one_tile_fails_the_finite_check() {
    #[derive(Debug)]
    struct InfiniteOnce;
    impl kernels::attention::ScoreModifier for InfiniteOnce {
        fn modify(&self, _head: usize, q: usize, k: usize, score: f32) -> f32 {
            if (q, k) == (40, 3) {
                f32::INFINITY
            } else {
                score
            }
        }
    }
    let kernel = kernels::attention::RuleAttention::new(
        "infinite_once",
        Arc::new(kernels::attention::Mask::Causal),
        Some(Arc::new(InfiniteOnce)),
    )
    .unwrap();
    let e = task()
        .evaluate_kernels("infinite_once", &everywhere(Arc::new(kernel)), 0)
        .unwrap();
    assert_rejected(&e, Stage::Finite, "");
}
