//! Sliding-window perplexity and the candidate-against-exact comparison, on a tiny model.

mod common;

use std::sync::Arc;

use common::{write_model, Spec};
use kernels::attention::{AttentionInput, AttentionKernel, LayerAttention};
use kernels::perplexity::{compare_kernels, kl_divergence, perplexity, PerplexityOptions};
use kernels::Model;

/// Attends only to the query's own position: far from exact, so KL must be clearly positive.
#[derive(Debug)]
struct SelfOnly;

impl AttentionKernel for SelfOnly {
    fn name(&self) -> &str {
        "self-only"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        _: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        let d = input.head_dim;
        for h in 0..input.n_q_heads {
            let values = input.v_head(h / input.group_size());
            for i in 0..input.n_queries {
                let p = input.query_position(i);
                let o = (h * input.n_queries + i) * d;
                out[o..o + d].copy_from_slice(&values[p * d..(p + 1) * d]);
            }
        }
        Ok(())
    }
}

/// A tiny Llama written to a file of its own per test (tests run in parallel in one process).
fn tiny_model(test: &str) -> (Model, Vec<u32>) {
    let spec = Spec::llama();
    let path = write_model(&spec, test);
    let model = Model::load(&path).expect("load the tiny model");
    let tokens = (0..60)
        .map(|i| (i * 7 + 3) % common::VOCAB as u32)
        .collect();
    (model, tokens)
}

#[test]
fn comparing_exact_with_itself_gives_zero_kl_and_the_plain_perplexity() {
    let (model, tokens) =
        tiny_model("comparing_exact_with_itself_gives_zero_kl_and_the_plain_perplexity");
    let options = PerplexityOptions {
        ctx: 24,
        stride: 10,
        max_tokens: None,
    };
    let plain = perplexity(&model, &tokens, options).unwrap();
    let same =
        compare_kernels(&model, &model, model.attention_kernels(), &tokens, options).unwrap();
    assert_eq!(same.tokens, plain.tokens);
    assert_eq!(
        same.tokens,
        tokens.len() - 1,
        "every token after the first is scored once"
    );
    assert!(
        (same.ppl_exact / plain.ppl - 1.0).abs() < 1e-4,
        "{same:?} vs {plain:?}"
    );
    assert_eq!(same.ppl, same.ppl_exact);
    assert!(
        same.kl_vs_exact.abs() < 1e-12 && same.kl_max < 1e-12,
        "{same:?}"
    );
}

#[test]
fn a_kernel_that_ignores_context_moves_the_distribution() {
    let (model, tokens) = tiny_model("a_kernel_that_ignores_context_moves_the_distribution");
    let options = PerplexityOptions {
        ctx: 30,
        stride: 30,
        max_tokens: Some(50),
    };
    let self_only: Arc<dyn AttentionKernel> = Arc::new(SelfOnly);
    let candidate = vec![self_only; model.attention_kernels().len()];
    let report = compare_kernels(&model, &model, &candidate, &tokens, options).unwrap();
    // Two windows of 30; the second cannot score its first token, which has no context.
    assert_eq!(report.tokens, 29 + 19);
    assert_eq!(
        perplexity(&model, &tokens, options).unwrap().tokens,
        report.tokens
    );
    assert!(report.kl_vs_exact > 1e-4, "{report:?}");
    assert!(report.kl_max >= report.kl_vs_exact);
    assert!(report.ppl != report.ppl_exact);
}

#[test]
fn a_wrong_number_of_candidate_kernels_is_an_error() {
    let (model, tokens) = tiny_model("a_wrong_number_of_candidate_kernels_is_an_error");
    let options = PerplexityOptions {
        ctx: 24,
        stride: 12,
        max_tokens: None,
    };
    let err = compare_kernels(&model, &model, &[Arc::new(SelfOnly)], &tokens, options).unwrap_err();
    assert!(err.to_string().contains("attention kernels given"), "{err}");
}

#[test]
fn kl_is_zero_for_equal_rows_and_positive_otherwise() {
    let p = [1.0f32, 2.0, 3.0];
    assert!(kl_divergence(&p, &p).abs() < 1e-12);
    assert!(kl_divergence(&p, &[3.0, 2.0, 1.0]) > 0.1);
    // Adding a constant to every logit leaves the distribution alone.
    assert!(kl_divergence(&p, &[11.0, 12.0, 13.0]).abs() < 1e-9);
}
