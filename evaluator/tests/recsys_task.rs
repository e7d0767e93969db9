//! The recsys task on the fetched MovieLens-100K, at a budget small enough for a test: an
//! honest kernel trains and scores, a trial draws other users and seeds, and kernels the
//! recommender cannot take stop at the static stage with a reason.

use evaluator::config::EvaluatorConfig;
use evaluator::recommender::{RecsysConfig, RecsysTask};
use evaluator::{Stage, Task};
use kernels::akl::library;

fn task() -> RecsysTask {
    let config = RecsysConfig {
        users: Some(120),
        max_len: 30,
        d_model: 32,
        epochs: 1,
        latency_requests: 8,
        ..RecsysConfig::default()
    };
    RecsysTask::new(config).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_honest_kernel_trains_and_scores_and_a_trial_draws_other_users() {
    let task = task();
    let window = "(kernel recent (mask (and causal (> kv (- q 8)))))";
    let first = task.evaluate(window, 0).unwrap();
    assert!(first.passed, "{}", first.feedback);
    assert_eq!(first.stage_reached, Stage::Score);
    let score = first.score.unwrap();
    assert!(score > 0.0 && score <= 1.0, "{score}");
    assert_eq!(first.metrics["ndcg@10"], score);
    assert!(first.metrics["hr@10"] >= score);
    // The cost model prices the tiled CPU engine; at 30 items one tile holds every key, so
    // a window saves nothing there, and the ratio is only required to be a real number.
    let ratio = first.metrics["attn_flops_ratio"];
    assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
    assert!(first.descriptors.contains_key("latency_ms_p50"));
    let stages: Vec<Stage> = first.timings.iter().map(|t| t.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Parse,
            Stage::Static,
            Stage::Causality,
            Stage::Finite,
            Stage::Determinism,
            Stage::Train,
            Stage::Cost,
            Stage::Score
        ]
    );
    let again = task.evaluate(window, 1).unwrap();
    assert_ne!(again.provenance.seeds, first.provenance.seeds);
    assert_ne!(again.provenance.slices, first.provenance.slices);
    assert_eq!(again.candidate_hash, first.candidate_hash);
}

#[test]
fn kernels_the_recommender_cannot_take_stop_at_the_static_stage() {
    let task = task();
    let peek = task
        .evaluate("(kernel peek (mask (<= kv (+ q 1))))", 0)
        .unwrap();
    assert!(!peek.passed);
    assert_eq!(peek.stage_reached, Stage::Static);
    let linear = task
        .evaluate(library::source("linear").unwrap(), 0)
        .unwrap();
    assert_eq!(linear.stage_reached, Stage::Static);
    assert!(
        linear.feedback.contains("cannot train this kernel"),
        "{}",
        linear.feedback
    );
    let broken = task.evaluate("(kernel broken (mask causal", 0).unwrap();
    assert_eq!(broken.stage_reached, Stage::Parse);
}

#[test]
fn the_recsys_section_is_checked() {
    let config = EvaluatorConfig::parse("[recsys]\nusers = 50\nepochs = 2\n").unwrap();
    assert_eq!(config.recsys.users, Some(50));
    let unknown = EvaluatorConfig::parse("[recsys]\nepoch = 2\n").unwrap_err();
    assert!(unknown.to_string().contains("epoch"), "{unknown}");
    let zero = EvaluatorConfig::parse("[recsys]\nusers = 0\n").unwrap_err();
    assert!(zero.to_string().contains("users"), "{zero}");
}
