//! AKL's byte-level grammar against the parser, the vocabulary walk against brute force,
//! and constrained generation on a real model.

use kernels::akl::prefix::{AklGrammar, AklState};
use kernels::akl::{generate, library, parse, print, GenConfig};
use kernels::assets;
use kernels::constrain::{ByteGrammar, GrammarConstraint, TokenTrie};
use kernels::generate::{generate_constrained, GenerateOptions, Sampling, StopReason};
use kernels::tokenizer::{ChatMessage, Tokenizer};
use kernels::Model;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The state after `text`, or the byte offset the grammar refused.
fn read(text: &str) -> Result<AklState, usize> {
    let mut state = AklGrammar.start();
    for (at, byte) in text.bytes().enumerate() {
        state = AklGrammar.advance(&state, byte).ok_or(at)?;
    }
    Ok(state)
}

fn assert_accepted(text: &str) {
    match read(text) {
        Ok(state) => assert!(AklGrammar.is_complete(&state), "incomplete: {text}"),
        Err(at) => panic!("refused at byte {at}: {:?}\n{text}", &text[..=at]),
    }
}

#[test]
fn every_library_program_is_accepted_byte_by_byte() {
    for (name, text) in library::LIBRARY {
        assert!(parse(text).is_ok(), "{name}");
        assert_accepted(text);
    }
}

#[test]
fn generated_programs_are_accepted_in_canonical_form() {
    let mut rng = StdRng::seed_from_u64(7);
    let config = GenConfig {
        mechanisms: true,
        ..GenConfig::default()
    };
    for _ in 0..200 {
        assert_accepted(&print(&generate(&mut rng, &config)));
    }
}

/// Bytes a random walk draws from: everything AKL spells, and some it does not.
const ALPHABET: &[u8] = b"() \n;kernelparamintfloatpow2layersheadsmaskscorenormsoftmaxselectpagetopsummaryminmaxmeanstarblockcontextcachekeepallmechanismtilelistrangeeverycausaltruefalseandornotqvsdivmod+-*/<>=0123456789.e_xyzW\t#\"'{}";

/// A random walk through the grammar: each step draws a byte among those it allows,
/// leaning towards closing lists as the text grows, until the program is complete.
fn random_walk(rng: &mut StdRng) -> String {
    let mut state = AklGrammar.start();
    let mut text = Vec::new();
    while !AklGrammar.is_complete(&state) {
        let mut allowed: Vec<(u8, AklState)> = ALPHABET
            .iter()
            .chain(b"abcdfghjlmnoqrtuwy".iter())
            .filter_map(|&b| AklGrammar.advance(&state, b).map(|s| (b, s)))
            .collect();
        assert!(
            !allowed.is_empty(),
            "dead end after {:?}",
            String::from_utf8_lossy(&text)
        );
        let closing = allowed.iter().position(|(b, _)| *b == b')');
        let hurry = text.len() as f64 / 400.0;
        let pick = match closing {
            Some(i) if rng.random::<f64>() < hurry => i,
            _ => rng.random_range(0..allowed.len()),
        };
        let (byte, next) = allowed.swap_remove(pick);
        text.push(byte);
        state = next;
        assert!(text.len() < 20_000, "the walk does not end");
    }
    String::from_utf8(text).expect("ASCII")
}

#[test]
fn every_text_the_grammar_completes_parses() {
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..300 {
        let text = random_walk(&mut rng);
        if let Err(e) = parse(&text) {
            panic!("the grammar completed a text the parser refuses: {e}\n{text}");
        }
    }
}

#[test]
fn the_grammar_refuses_what_the_parser_refuses() {
    for bad in [
        "(kernel k (mask causal) (mask causal))",
        "(kernel k (mask (< kv W)))",
        "(kernel k (tile q 1.5 kv 4))",
        "(kernel k (mechanism gla (chunk 8) (chunk 8)))",
        "(kernel k (layers all window (mask causal)))",
        "(kernel k) (kernel j)",
        "(kernel k (norm softmax extra))",
    ] {
        assert!(
            read(bad).is_err() || !AklGrammar.is_complete(&read(bad).unwrap()),
            "{bad}"
        );
    }
}

fn smollm2() -> std::path::PathBuf {
    assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_vocabulary_walk_finds_exactly_the_tokens_brute_force_finds() {
    let tokenizer = Tokenizer::from_gguf_file(&smollm2()).unwrap();
    let trie = TokenTrie::new(&tokenizer);
    let text = library::source("sink_window").unwrap();
    // States at several places of a real program: between clauses, inside words and
    // numbers, inside a comment.
    for cut in [0, 1, 3, 8, 20, 40, text.len() / 2, text.len() - 3] {
        let state = read(&text[..cut]).unwrap();
        let fast = trie.allowed(&AklGrammar, &state);
        let brute: Vec<u32> = (0..tokenizer.vocab_size() as u32)
            .filter(|&id| trie.advance(&AklGrammar, &state, id).is_some())
            .collect();
        let mut fast_sorted = fast.clone();
        fast_sorted.sort_unstable();
        assert_eq!(fast_sorted, brute, "after {:?}", &text[..cut]);
        assert!(!fast.is_empty());
    }
}

#[test]
fn constrained_samples_from_a_real_model_always_parse() {
    let model = Model::load(&smollm2()).unwrap();
    let trie = TokenTrie::new(&model.tokenizer);
    let template = model.chat_template.as_ref().expect("an instruct model");
    let prompt = template
        .render(
            &[ChatMessage::user(format!(
                "Write a new attention kernel in AKL, like this one:\n{}",
                library::source("window").unwrap()
            ))],
            true,
        )
        .unwrap();
    let prompt = model.tokenizer.encode_with_bos(&prompt).unwrap();
    let mut completed = 0;
    for seed in 0..3 {
        let options = GenerateOptions {
            max_tokens: 160,
            sampling: Sampling {
                temperature: 0.8,
                top_k: Some(40),
                top_p: None,
                seed,
            },
            stop_tokens: model.tokenizer.stop_ids().to_vec(),
        };
        let mut constraint = GrammarConstraint::new(AklGrammar, &trie, &options.stop_tokens);
        let generation =
            generate_constrained(&model, &prompt, &options, Some(&mut constraint), |_| {}).unwrap();
        // Whatever stopped it, the text is a prefix the grammar accepts.
        assert!(read(&generation.text).is_ok(), "{}", generation.text);
        if generation.stop_reason == StopReason::Complete {
            completed += 1;
            if let Err(e) = parse(&generation.text) {
                panic!("a complete sample does not parse: {e}\n{}", generation.text);
            }
        }
    }
    assert!(completed > 0, "no sample completed in 160 tokens");
}
