//! Our core against an independent implementation, candle-transformers' quantized models,
//! on the three real GGUF files: logits on a real prompt of a few hundred tokens, and 32
//! greedily generated tokens, token for token.
//!
//! Tolerance: both engines run the same quantized matmuls, so what differs is our own code
//! (norms, RoPE, attention, softmax order). The max abs logit difference must stay below
//! `LOGIT_TOLERANCE` times the largest |logit|, and the top-1 token must agree.

use kernels::assets::{self, Asset};
use kernels::generate::argmax;
use kernels::{Logits, Model};

use agent::peer::PeerModel;

const LOGIT_TOLERANCE: f32 = 0.01;
const GENERATED: usize = 32;

/// The opening of Pride and Prejudice, about 300 tokens: real prose, not a toy prompt.
fn prompt_text() -> String {
    let dir = assets::AUSTEN.require().expect("austen asset");
    let text = std::fs::read_to_string(dir.join("pride-and-prejudice.txt")).expect("read novel");
    let start = text.find("It is a truth universally acknowledged").expect("opening line");
    text[start..].chars().take(1400).collect()
}

struct Comparison {
    max_abs_diff: f32,
    max_abs_logit: f32,
    top1_agree: bool,
}

fn compare(ours: &[f32], theirs: &[f32]) -> Comparison {
    assert_eq!(ours.len(), theirs.len(), "vocabulary sizes differ");
    Comparison {
        max_abs_diff: ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max),
        max_abs_logit: theirs.iter().map(|v| v.abs()).fold(0.0, f32::max),
        top1_agree: argmax(ours) == argmax(theirs),
    }
}

fn check_against_peer(asset: Asset) {
    let path = asset.require().unwrap_or_else(|e| panic!("{e}"));
    let model = Model::load(&path).expect("our model loads");
    let mut peer = PeerModel::load(&path).expect("candle-transformers model loads");
    let prompt = model.tokenizer.encode_with_bos(&prompt_text()).unwrap();
    assert!(prompt.len() >= 200, "prompt has only {} tokens", prompt.len());

    let mut cache = model.new_cache();
    let mut ours = model.forward(&mut cache, &prompt, Logits::Last).unwrap();
    let mut theirs = peer.forward(&prompt, 0).unwrap();
    let prefill = compare(&ours, &theirs);

    let (mut ours_tokens, mut their_tokens) = (Vec::new(), Vec::new());
    let mut worst_decode: f32 = 0.0;
    for step in 0..GENERATED {
        let (a, b) = (argmax(&ours), argmax(&theirs));
        ours_tokens.push(a);
        their_tokens.push(b);
        if step + 1 < GENERATED {
            ours = model.forward(&mut cache, &[a], Logits::Last).unwrap();
            theirs = peer.forward(&[b], prompt.len() + step).unwrap();
            let c = compare(&ours, &theirs);
            worst_decode = worst_decode.max(c.max_abs_diff / c.max_abs_logit);
        }
    }
    eprintln!(
        "{}: prompt {} tokens; prefill max |Δlogit| {:.5} (max |logit| {:.2}, relative {:.2e}), top-1 agree {}; \
         decode worst relative {:.2e}; {} greedy tokens identical: {}",
        asset.name,
        prompt.len(),
        prefill.max_abs_diff,
        prefill.max_abs_logit,
        prefill.max_abs_diff / prefill.max_abs_logit,
        prefill.top1_agree,
        worst_decode,
        GENERATED,
        ours_tokens == their_tokens,
    );
    assert!(prefill.top1_agree, "{}: top-1 token differs after the prompt", asset.name);
    assert!(
        prefill.max_abs_diff <= LOGIT_TOLERANCE * prefill.max_abs_logit,
        "{}: prefill logits differ by {} (max |logit| {})",
        asset.name,
        prefill.max_abs_diff,
        prefill.max_abs_logit
    );
    assert!(worst_decode <= LOGIT_TOLERANCE, "{}: decode logits differ by {worst_decode} relative", asset.name);
    assert_eq!(
        model.tokenizer.decode(&ours_tokens).unwrap(),
        model.tokenizer.decode(&their_tokens).unwrap(),
        "{}: greedy generations differ",
        asset.name
    );
    assert_eq!(ours_tokens, their_tokens, "{}: greedy token ids differ", asset.name);
}

#[test]
fn smollm2_matches_candle_transformers() {
    check_against_peer(assets::SMOLLM2);
}

#[test]
fn qwen_coder_matches_candle_transformers() {
    check_against_peer(assets::QWEN_CODER);
}

#[test]
fn gemma3_matches_candle_transformers() {
    check_against_peer(assets::GEMMA3);
}
