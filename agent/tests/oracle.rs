//! Our core against candle-transformers' quantized models as users run them: quantized
//! weights on both sides. Each engine quantizes activations to 8 bits inside its matmuls in
//! its own way, so logits differ by that rounding (see `oracle_exact.rs` for the comparison
//! to float precision, where 32 greedy tokens match token for token). Here, fed the same
//! tokens, the next-token distributions must stay close (KL ≤ 0.05 nats at every step) and
//! the top-1 token must agree at 29 or more of 32 greedy steps: where the two best tokens
//! are nearly tied, rounding noise may pick either.

mod common;

use kernels::assets::{self, Asset};
use kernels::model::blocks::Activation;
use kernels::Model;

use agent::peer::PeerModel;

const MAX_KL: f64 = 0.05;
const GENERATED: usize = 32;
const MIN_TOP1_AGREEMENT: usize = 29;

fn check(asset: Asset, adjust: impl FnOnce(&mut Model)) {
    let _turn = common::one_at_a_time();
    let path = asset.require().unwrap_or_else(|e| panic!("{e}"));
    let mut model = Model::load(&path).expect("our model loads");
    adjust(&mut model);
    let mut peer = PeerModel::load(&path).expect("candle-transformers model loads");
    let run = common::run_both(asset, &model, &mut peer, GENERATED);
    assert!(
        run.prefill.kl <= MAX_KL,
        "{}: prefill KL {}",
        asset.name,
        run.prefill.kl
    );
    assert!(
        run.worst_decode.kl <= MAX_KL,
        "{}: decode KL {}",
        asset.name,
        run.worst_decode.kl
    );
    let agree = run
        .ours
        .iter()
        .zip(&run.theirs)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        agree >= MIN_TOP1_AGREEMENT,
        "{}: top-1 agrees at only {agree} of {GENERATED} steps",
        asset.name
    );
}

#[test]
fn smollm2_matches_candle_transformers() {
    check(assets::SMOLLM2, |_| {});
}

#[test]
fn qwen_coder_matches_candle_transformers() {
    check(assets::QWEN_CODER, |_| {});
}

/// With candle's SiLU; see `oracle_exact.rs`.
#[test]
fn gemma3_matches_candle_transformers_but_for_its_activation() {
    check(assets::GEMMA3, |model| {
        model.config.activation = Activation::Silu
    });
}
