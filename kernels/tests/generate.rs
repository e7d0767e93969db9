//! Sampling against its definitions (greedy is argmax, top-k 1 and a tiny top-p are greedy,
//! draws follow the tempered softmax, seeds reproduce), and generation on a tiny synthetic
//! model: greedy generation against full forwards, stop tokens, the context limit, and the
//! streamed text against the returned text and the tokenizer's decode.
//!
//! Every random draw is seeded, so the frequency bounds are deterministic: the chi-square
//! bounds are the 0.1% critical values, which a correct sampler passes for all but one seed
//! in a thousand, and which a wrong distribution fails by orders of magnitude.

mod common;

use common::{write_model, Spec, EOS};
use kernels::generate::{
    argmax, generate, GenerateOptions, Generation, Sampler, Sampling, StopReason,
};
use kernels::{Error, Logits, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn sampler(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampler {
    Sampler::new(Sampling {
        temperature,
        top_k,
        top_p,
        seed,
    })
    .expect("valid sampling")
}

fn random_logits(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-5.0f32..5.0)).collect()
}

/// The index of the largest value, the first one on ties.
fn first_max(values: &[f32]) -> u32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    values.iter().position(|&v| v == max).expect("non-empty") as u32
}

/// Softmax of `logits / temperature`, in f64.
fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - f64::from(max)) / temperature).exp())
        .collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

/// `n` draws from `sampler`, counted per token.
fn counts(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
    let mut counts = vec![0; logits.len()];
    for _ in 0..n {
        counts[sampler.sample(logits) as usize] += 1;
    }
    counts
}

/// Pearson's chi-square statistic of `observed` against `probabilities`, over the tokens
/// with positive probability; tokens with none must never be drawn.
fn chi_square(observed: &[usize], probabilities: &[f64]) -> f64 {
    let n: usize = observed.iter().sum();
    observed
        .iter()
        .zip(probabilities)
        .map(|(&o, &p)| {
            if p == 0.0 {
                assert_eq!(o, 0, "a token outside the candidates was drawn");
                0.0
            } else {
                let expected = n as f64 * p;
                (o as f64 - expected).powi(2) / expected
            }
        })
        .sum()
}

/// 0.1% critical values of chi-square by degrees of freedom.
const CHI_SQUARE_999: [f64; 5] = [0.0, 10.83, 13.82, 16.27, 18.47];

#[test]
fn greedy_is_argmax_with_the_lowest_id_on_ties() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut greedy = Sampler::new(Sampling::greedy()).expect("greedy");
    for _ in 0..200 {
        let logits = random_logits(&mut rng, 50);
        assert_eq!(greedy.sample(&logits), first_max(&logits));
        assert_eq!(argmax(&logits), first_max(&logits));
    }
    assert_eq!(greedy.sample(&[1.0, 3.0, -2.0, 3.0]), 1);
    assert_eq!(greedy.sample(&[0.0; 7]), 0);
}

#[test]
fn same_seed_gives_same_draws_and_other_seeds_other_draws() {
    let flat = vec![0.0f32; 1000];
    let draws = |seed| {
        let mut s = sampler(1.0, None, None, seed);
        (0..50).map(|_| s.sample(&flat)).collect::<Vec<u32>>()
    };
    assert_eq!(draws(7), draws(7));
    assert_ne!(draws(7), draws(8));
    let mut distinct = draws(7);
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 40,
        "50 draws from 1000 flat tokens gave {} distinct",
        distinct.len()
    );
}

#[test]
fn top_k_of_one_is_greedy() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut top1 = sampler(1.5, Some(1), None, 3);
    for _ in 0..200 {
        let logits = random_logits(&mut rng, 50);
        assert_eq!(top1.sample(&logits), first_max(&logits));
    }
}

#[test]
fn tiny_top_p_is_greedy() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut nucleus = sampler(1.5, None, Some(1e-6), 5);
    for _ in 0..200 {
        let logits = random_logits(&mut rng, 50);
        assert_eq!(nucleus.sample(&logits), first_max(&logits));
    }
}

#[test]
fn temperature_sampling_follows_the_tempered_softmax() {
    let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0];
    for (seed, temperature) in [(10, 0.7f32), (11, 1.0), (12, 2.0)] {
        let observed = counts(&mut sampler(temperature, None, None, seed), &logits, 20_000);
        let stat = chi_square(&observed, &softmax(&logits, f64::from(temperature)));
        eprintln!("temperature {temperature}: {observed:?}, chi-square {stat:.2}");
        assert!(
            stat < CHI_SQUARE_999[4],
            "temperature {temperature}: chi-square {stat:.2}"
        );
    }
    // A uniform draw fails the same bound by far: the test can tell the distributions apart.
    let uniform = vec![4000usize; 5];
    assert!(chi_square(&uniform, &softmax(&logits, 0.7)) > 100.0 * CHI_SQUARE_999[4]);
}

#[test]
fn top_k_and_top_p_draw_from_the_renormalised_candidates() {
    let logits = [3.0f32, 2.0, 1.0, 0.0, -1.0];
    let full = softmax(&logits, 1.0);
    let renormalised = |keep: usize| -> Vec<f64> {
        let kept: f64 = full[..keep].iter().sum();
        (0..full.len())
            .map(|i| if i < keep { full[i] / kept } else { 0.0 })
            .collect()
    };

    let observed = counts(&mut sampler(1.0, Some(2), None, 20), &logits, 20_000);
    let stat = chi_square(&observed, &renormalised(2));
    assert!(
        stat < CHI_SQUARE_999[1],
        "top-k 2: {observed:?}, chi-square {stat:.2}"
    );

    // The nucleus: the fewest most likely tokens whose probability reaches p.
    let p = 0.9;
    let keep = 1 + full
        .iter()
        .scan(0.0, |sum, q| {
            *sum += q;
            Some(*sum)
        })
        .position(|sum| sum >= p)
        .expect("probabilities sum to 1");
    assert_eq!(keep, 3, "the test's logits should give a nucleus of three");
    let observed = counts(&mut sampler(1.0, None, Some(p as f32), 21), &logits, 20_000);
    let stat = chi_square(&observed, &renormalised(keep));
    assert!(
        stat < CHI_SQUARE_999[keep - 1],
        "top-p {p}: {observed:?}, chi-square {stat:.2}"
    );
}

#[test]
fn invalid_sampling_settings_are_named() {
    let cases = [
        (-1.0, None, None, "temperature"),
        (f32::NAN, None, None, "temperature"),
        (f32::INFINITY, None, None, "temperature"),
        (1.0, Some(0), None, "top-k"),
        (1.0, None, Some(0.0), "top-p"),
        (1.0, None, Some(1.5), "top-p"),
        (1.0, None, Some(f32::NAN), "top-p"),
    ];
    for (temperature, top_k, top_p, what) in cases {
        let error = Sampler::new(Sampling {
            temperature,
            top_k,
            top_p,
            seed: 0,
        })
        .expect_err("invalid sampling");
        assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
        assert!(error.to_string().contains(what), "`{what}` not in: {error}");
    }
}

// ---------------------------------------------------------------------------------------
// Generation on a tiny model
// ---------------------------------------------------------------------------------------

const PROMPT: [u32; 5] = [72, 101, 108, 108, 111];

fn options(max_tokens: usize, sampling: Sampling, stop_tokens: Vec<u32>) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling,
        stop_tokens,
    }
}

/// Generates, and checks that the streamed pieces add up to the returned text.
fn generate_streamed(model: &Model, prompt: &[u32], options: &GenerateOptions) -> Generation {
    let mut streamed = String::new();
    let generation = generate(model, prompt, options, |piece| {
        assert!(!piece.is_empty(), "an empty piece was streamed");
        streamed.push_str(piece);
    })
    .expect("generate");
    assert_eq!(
        streamed, generation.text,
        "streamed text differs from the returned text"
    );
    generation
}

#[test]
fn greedy_generation_is_argmax_of_a_full_forward() {
    let model = Model::load(&write_model(&Spec::qwen3(), "generate-greedy")).expect("load");
    let generation = generate_streamed(&model, &PROMPT, &options(8, Sampling::greedy(), vec![]));
    assert_eq!(generation.stop_reason, StopReason::MaxTokens);
    assert_eq!(generation.tokens.len(), 8);
    assert_eq!(generation.prompt_tokens, PROMPT.len());
    for i in 0..generation.tokens.len() {
        let context: Vec<u32> = PROMPT
            .iter()
            .chain(&generation.tokens[..i])
            .copied()
            .collect();
        let logits = model
            .forward(&mut model.new_cache(), &context, Logits::Last)
            .expect("forward");
        assert_eq!(generation.tokens[i], argmax(&logits), "token {i}");
    }
    assert_eq!(
        generation.text,
        model.tokenizer.decode(&generation.tokens).expect("decode")
    );
}

#[test]
fn stop_token_ends_generation_without_its_text() {
    let model = Model::load(&write_model(&Spec::llama(), "generate-stop")).expect("load");
    assert!(
        model.tokenizer.stop_ids().contains(&EOS),
        "EOS should stop generation by default"
    );
    let sampling = Sampling {
        temperature: 1.0,
        seed: 9,
        ..Sampling::greedy()
    };
    let free = generate_streamed(&model, &PROMPT, &options(12, sampling.clone(), vec![]));
    // The last token that had not appeared before becomes the stop token.
    let stop_at = (1..free.tokens.len())
        .rev()
        .find(|&j| !free.tokens[..j].contains(&free.tokens[j]))
        .expect("a new token among the generated ones");
    let stop = free.tokens[stop_at];

    let stopped = generate_streamed(&model, &PROMPT, &options(12, sampling, vec![stop]));
    assert_eq!(stopped.stop_reason, StopReason::StopToken);
    assert_eq!(
        stopped.tokens,
        free.tokens[..=stop_at],
        "same seed, same draws until the stop"
    );
    let before_stop = model
        .tokenizer
        .decode(&free.tokens[..stop_at])
        .expect("decode");
    assert_eq!(
        stopped.text, before_stop,
        "the text stops before the stop token"
    );
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let spec = Spec {
        context_length: 12,
        ..Spec::llama()
    };
    let model = Model::load(&write_model(&spec, "generate-context")).expect("load");
    let generation = generate_streamed(&model, &PROMPT, &options(100, Sampling::greedy(), vec![]));
    assert_eq!(generation.stop_reason, StopReason::ContextFull);
    assert_eq!(PROMPT.len() + generation.tokens.len(), spec.context_length);
}

#[test]
fn sampled_generation_is_reproducible_by_seed() {
    let model = Model::load(&write_model(&Spec::gemma3(), "generate-seed")).expect("load");
    let run = |seed| {
        let sampling = Sampling {
            temperature: 1.0,
            top_k: Some(50),
            top_p: Some(0.95),
            seed,
        };
        generate_streamed(&model, &PROMPT, &options(10, sampling, vec![])).tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}
