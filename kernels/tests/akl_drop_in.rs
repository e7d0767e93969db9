//! Every program in `kernels/library/` runs as a drop-in inside SmolLM2 (a real-asset test):
//! it parses, checks, becomes one kernel per layer, and scores text beside exact attention
//! with finite results. Programs that cannot differ from exact attention on a short text
//! (their masks hide nothing there) must give a KL of exactly zero.

use kernels::akl::{self, ModelShape};
use kernels::perplexity::{compare_kernels, PerplexityOptions};
use kernels::{assets, Model};

/// Tokens scored per program: short enough for CI, long enough to cross several pages,
/// Star blocks and linear-attention chunks.
const TOKENS: usize = 320;

#[test]
fn every_library_program_runs_inside_smollm2() {
    let path = assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let model = Model::load(&path).unwrap();
    let text =
        std::fs::read_to_string(assets::AUSTEN.require().unwrap().join("persuasion.txt")).unwrap();
    let tokens = model.tokenizer.encode_with_bos(&text).unwrap();
    let options = PerplexityOptions {
        ctx: TOKENS,
        stride: TOKENS,
        max_tokens: Some(TOKENS),
    };
    let shape = ModelShape::of(&model.config);
    let names: Vec<&str> = akl::library::names().collect();
    assert!(names.len() >= 19, "the library lost programs: {names:?}");
    for name in names {
        let checked = akl::library::checked(name).unwrap();
        let drop_in = akl::instantiate(checked, &shape, model.config.attention_scale)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(drop_in.kernels.len(), model.config.n_layers(), "{name}");
        let converted = drop_in.kv_rank.map(|rank| {
            let mut copy = Model::load(&path).unwrap();
            kernels::trainable::mla::convert_model_kv(&mut copy, rank).unwrap();
            copy
        });
        let candidate = converted.as_ref().unwrap_or(&model);
        let report = compare_kernels(&model, candidate, &drop_in.kernels, &tokens, options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        println!(
            "{name:>16}: KL {:.5}, ppl {:.2} (exact {:.2})",
            report.kl_vs_exact, report.ppl, report.ppl_exact
        );
        assert_eq!(report.tokens, TOKENS - 1, "{name}");
        assert!(
            report.ppl.is_finite() && report.kl_vs_exact.is_finite(),
            "{name}: {report:?}"
        );
        // Windows of 1024 and chunks of 8192 hide nothing in 320 tokens; exact is exact.
        if ["exact", "window", "chunked", "sink_window", "gemma3"].contains(&name) {
            assert_eq!(
                report.kl_vs_exact, 0.0,
                "{name} must equal exact attention here"
            );
        } else {
            assert!(report.kl_vs_exact >= 0.0, "{name}: {report:?}");
        }
    }
}

/// SmolLM2's attention shape, for programs instantiated without loading the model.
const SMOLLM2_SHAPE: ModelShape = ModelShape {
    n_layers: 30,
    n_q_heads: 9,
    n_kv_heads: 3,
    head_dim: 64,
};

fn instantiate_text(text: &str) -> kernels::Result<akl::DropIn> {
    let checked = akl::parse_and_check(text)?;
    akl::instantiate(&checked, &SMOLLM2_SHAPE, 0.125)
}

#[test]
fn heads_that_differ_become_one_head_mix_per_layer_and_mla_a_model_wide_rank() {
    let mixed = instantiate_text("(kernel m (mask causal) (heads (range 0 2) window))").unwrap();
    assert_eq!(mixed.kernels.len(), 30);
    assert!(
        format!("{:?}", mixed.kernels[0]).contains("HeadMix"),
        "{:?}",
        mixed.kernels[0]
    );
    assert_eq!(mixed.kv_rank, None);
    let mla = instantiate_text("(kernel m (mechanism mla (kv_rank 96)))").unwrap();
    assert_eq!(mla.kv_rank, Some(96));
}

#[test]
fn mla_on_part_of_a_model_is_refused_with_the_reason() {
    let some_layers = instantiate_text("(kernel m (layers (list 0) (mechanism mla)))").unwrap_err();
    assert!(
        some_layers.to_string().contains("every layer"),
        "{some_layers}"
    );
    let some_heads =
        instantiate_text("(kernel m (heads (range 0 3) (mechanism mla)))").unwrap_err();
    assert!(
        some_heads.to_string().contains("whole layer"),
        "{some_heads}"
    );
}
