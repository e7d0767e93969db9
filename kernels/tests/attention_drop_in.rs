//! The drop-in Multi-Token and Differential kernels against f64 references, decode against
//! prefill, the mask (changing hidden keys and values moves nothing), the identity
//! Multi-Token kernel against exact attention, and both inside models: tiny synthetic ones
//! and SmolLM2 (real-asset test: a missing asset fails with the fetch command to run).

mod common;

use std::sync::Arc;

use common::{write_model, Spec};
use kernels::akl::{self, library, ModelShape};
use kernels::assets;
use kernels::attention::{
    AttentionInput, AttentionKernel, DifferentialKernel, LayerAttention, Mask, MultiTokenKernel,
    NaiveAttention, TiledAttention,
};
use kernels::{Logits, Model, WeightFormat};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One layer's queries and KV cache, owned.
#[derive(Clone, Debug)]
struct Case {
    n_q_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    n_queries: usize,
    kv_len: usize,
    kv_capacity: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    layer: LayerAttention,
}

fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn random(
        seed: u64,
        n_q_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_queries: usize,
        kv_len: usize,
        mask: Mask,
    ) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let kv_capacity = kv_len + 3;
        Case {
            n_q_heads,
            n_kv_heads,
            head_dim,
            n_queries,
            kv_len,
            kv_capacity,
            q: uniform(&mut rng, n_q_heads * n_queries * head_dim, 1.5),
            k: uniform(&mut rng, n_kv_heads * kv_capacity * head_dim, 1.5),
            v: uniform(&mut rng, n_kv_heads * kv_capacity * head_dim, 1.0),
            layer: LayerAttention {
                scale: 1.0 / (head_dim as f32).sqrt(),
                mask,
            },
        }
    }

    fn input(&self) -> AttentionInput<'_> {
        AttentionInput {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            n_q_heads: self.n_q_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            n_queries: self.n_queries,
            kv_len: self.kv_len,
            kv_capacity: self.kv_capacity,
            key_positions: None,
            page_summaries: &[],
        }
    }

    fn run(&self, kernel: &dyn AttentionKernel) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.n_q_heads * self.n_queries * self.head_dim];
        kernel
            .forward(&self.input(), &self.layer, &mut out)
            .unwrap();
        out
    }

    fn query(&self, h: usize, i: usize) -> &[f32] {
        &self.q[(h * self.n_queries + i) * self.head_dim..][..self.head_dim]
    }

    fn key(&self, kv_head: usize, k: usize) -> &[f32] {
        &self.k[(kv_head * self.kv_capacity + k) * self.head_dim..][..self.head_dim]
    }

    fn value(&self, kv_head: usize, k: usize) -> &[f32] {
        &self.v[(kv_head * self.kv_capacity + k) * self.head_dim..][..self.head_dim]
    }

    fn position(&self, i: usize) -> usize {
        self.kv_len - self.n_queries + i
    }

    /// The decode call for query row `i`: the cache cut at that row's position.
    fn decode_step(&self, i: usize) -> Case {
        let q = (0..self.n_q_heads)
            .flat_map(|h| self.query(h, i).to_vec())
            .collect();
        Case {
            n_queries: 1,
            kv_len: self.position(i) + 1,
            q,
            ..self.clone()
        }
    }

    /// Runs every query row as its own decode call and lays the rows out as prefill does.
    fn run_decoded(&self, kernel: &dyn AttentionKernel) -> Vec<f32> {
        let d = self.head_dim;
        let mut out = vec![f32::NAN; self.n_q_heads * self.n_queries * d];
        for i in 0..self.n_queries {
            let row = self.decode_step(i).run(kernel);
            for h in 0..self.n_q_heads {
                out[(h * self.n_queries + i) * d..][..d].copy_from_slice(&row[h * d..][..d]);
            }
        }
        out
    }
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

fn softmax64(x: &mut [f64]) {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = x
        .iter_mut()
        .map(|v| {
            *v = (*v - max).exp();
            *v
        })
        .sum();
    x.iter_mut().for_each(|v| *v /= sum);
}

/// `weights(h, i)` over keys `0..kv_len`, applied to the head's values, as head-major f64.
fn attend64(case: &Case, weights: impl Fn(usize, usize) -> Vec<f64>) -> Vec<f64> {
    let d = case.head_dim;
    let group = case.n_q_heads / case.n_kv_heads;
    let mut out = vec![0.0; case.n_q_heads * case.n_queries * d];
    for h in 0..case.n_q_heads {
        for i in 0..case.n_queries {
            for (k, w) in weights(h, i).iter().enumerate() {
                for (e, v) in case.value(h / group, k).iter().enumerate() {
                    out[(h * case.n_queries + i) * d + e] += w * f64::from(*v);
                }
            }
        }
    }
    out
}

/// The Multi-Token kernel as its formula reads, in f64.
fn multi_token_reference(
    case: &Case,
    conv: &[f32],
    key_kernel: usize,
    mix: &[f32],
    mix_group: usize,
) -> Vec<f64> {
    let group = case.n_q_heads / case.n_kv_heads;
    let half = key_kernel / 2;
    let maps = |h: usize, i: usize| -> Vec<f64> {
        let p = case.position(i);
        let visible = |k: usize| case.layer.mask.allows(p, k);
        let s0 = |k: isize| -> f64 {
            if k < 0 || k as usize >= case.kv_len || !visible(k as usize) {
                0.0
            } else {
                dot64(case.query(h, i), case.key(h / group, k as usize))
                    * f64::from(case.layer.scale)
            }
        };
        let mut row: Vec<f64> = (0..case.kv_len)
            .map(|j| {
                if !visible(j) {
                    return f64::NEG_INFINITY;
                }
                (0..key_kernel)
                    .map(|b| {
                        f64::from(conv[h * key_kernel + b])
                            * s0(j as isize + half as isize - b as isize)
                    })
                    .sum()
            })
            .collect();
        softmax64(&mut row);
        row
    };
    attend64(case, |h, i| {
        // Consecutive groups of `mix_group` heads, the last one possibly smaller; `mix`
        // holds each head's weights over its own group, full groups first.
        let first = h / mix_group * mix_group;
        let size = mix_group.min(case.n_q_heads - first);
        let weights = &mix[first * mix_group + (h - first) * size..][..size];
        let group_maps: Vec<Vec<f64>> = (0..size).map(|g| maps(first + g, i)).collect();
        (0..case.kv_len)
            .map(|j| {
                (0..size)
                    .map(|g| f64::from(weights[g]) * group_maps[g][j])
                    .sum()
            })
            .collect()
    })
}

/// How many mixing weights `n_heads` in groups of `mix_group` take.
fn mix_len(n_heads: usize, mix_group: usize) -> usize {
    let (full, rest) = (n_heads / mix_group, n_heads % mix_group);
    full * mix_group * mix_group + rest * rest
}

/// The Differential kernel as its formula reads, in f64.
fn differential_reference(case: &Case, lambda: f32) -> Vec<f64> {
    let group = case.n_q_heads / case.n_kv_heads;
    let half = case.head_dim / 2;
    attend64(case, |h, i| {
        let p = case.position(i);
        let map = |range: std::ops::Range<usize>| {
            let mut row: Vec<f64> = (0..case.kv_len)
                .map(|k| {
                    if case.layer.mask.allows(p, k) {
                        dot64(
                            &case.query(h, i)[range.clone()],
                            &case.key(h / group, k)[range.clone()],
                        ) * f64::from(case.layer.scale)
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect();
            softmax64(&mut row);
            row
        };
        let (a1, a2) = (map(0..half), map(half..case.head_dim));
        let lambda = f64::from(lambda);
        a1.iter()
            .zip(&a2)
            .map(|(x, y)| (x - lambda * y) / (1.0 - lambda))
            .collect()
    })
}

fn assert_close(actual: &[f32], expected: &[f64], tolerance: f64, what: &str) {
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(&a, e)| (f64::from(a) - e).abs())
        .fold(0.0, f64::max);
    assert!(worst <= tolerance, "{what}: max difference {worst:.3e}");
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

fn mask_strategy() -> impl Strategy<Value = Mask> {
    prop_oneof![
        Just(Mask::Causal),
        (1usize..12).prop_map(|window| Mask::SlidingWindow { window }),
        (1usize..12).prop_map(|chunk| Mask::Chunked { chunk }),
    ]
}

/// Shapes with GQA ratios 1 to 3, prefill of a whole prompt or of its tail.
fn case_strategy(even_head_dim: bool) -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..4,
        1usize..5,
        1usize..16,
        0usize..6,
        mask_strategy(),
        any::<u64>(),
    )
        .prop_map(
            move |(n_kv_heads, ratio, half_dim, n_queries, earlier, mask, seed)| {
                let head_dim = if even_head_dim {
                    2 * half_dim
                } else {
                    half_dim + 1
                };
                Case::random(
                    seed,
                    n_kv_heads * ratio,
                    n_kv_heads,
                    head_dim,
                    n_queries,
                    n_queries + earlier,
                    mask,
                )
            },
        )
}

/// A Multi-Token kernel for `n_heads` with random weights.
fn random_multi_token(
    n_heads: usize,
    key_kernel: usize,
    mix_group: usize,
    seed: u64,
) -> (MultiTokenKernel, Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let conv = uniform(&mut rng, n_heads * key_kernel, 1.0);
    let mix = uniform(&mut rng, mix_len(n_heads, mix_group), 1.0);
    let kernel =
        MultiTokenKernel::new(n_heads, key_kernel, conv.clone(), mix_group, mix.clone()).unwrap();
    (kernel, conv, mix)
}

/// Changes every key and value at positions from `from` on; outputs of queries before
/// `from` must not move.
fn assert_future_hidden(case: &Case, kernel: &dyn AttentionKernel, from: usize) {
    let before = case.run(kernel);
    let mut changed = case.clone();
    let d = case.head_dim;
    for h in 0..case.n_kv_heads {
        for k in from..case.kv_len {
            for e in 0..d {
                changed.k[(h * case.kv_capacity + k) * d + e] += 5.0;
                changed.v[(h * case.kv_capacity + k) * d + e] -= 3.0;
            }
        }
    }
    let after = changed.run(kernel);
    for h in 0..case.n_q_heads {
        for i in (0..case.n_queries).filter(|&i| case.position(i) < from) {
            let at = (h * case.n_queries + i) * d;
            assert_eq!(
                &after[at..at + d],
                &before[at..at + d],
                "head {h} query {i} moved"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn multi_token_matches_its_reference_and_decode_matches_prefill(
        case in case_strategy(false), key_kernel in 1usize..6, mix_group in 1usize..5,
        seed in any::<u64>(),
    ) {
        let (kernel, conv, mix) = random_multi_token(case.n_q_heads, key_kernel, mix_group, seed);
        let prefill = case.run(&kernel);
        assert_close(&prefill, &multi_token_reference(&case, &conv, key_kernel, &mix, mix_group), 1e-4, "vs reference");
        assert_close(&case.run_decoded(&kernel), &to64(&prefill), 1e-5, "decode vs prefill");
        assert_future_hidden(&case, &kernel, case.position(case.n_queries / 2));
    }

    #[test]
    fn identity_multi_token_is_exact_attention(
        case in case_strategy(false), key_kernel in 1usize..6, mix_group in 1usize..5,
    ) {
        let kernel = MultiTokenKernel::identity(case.n_q_heads, key_kernel, mix_group).unwrap();
        assert_close(&case.run(&kernel), &to64(&case.run(&NaiveAttention)), 1e-5, "identity vs exact");
    }

    #[test]
    fn differential_matches_its_reference_and_decode_matches_prefill(
        case in case_strategy(true), lambda in -0.5f32..0.9,
    ) {
        let kernel = DifferentialKernel::new(lambda).unwrap();
        let prefill = case.run(&kernel);
        assert_close(&prefill, &differential_reference(&case, lambda), 1e-4, "vs reference");
        assert_close(&case.run_decoded(&kernel), &to64(&prefill), 1e-5, "decode vs prefill");
        assert_future_hidden(&case, &kernel, case.position(case.n_queries / 2));
    }
}

/// SmolLM2's 9 query heads (3 KV heads) with the library's mixing groups of 2: the last
/// group holds one head.
#[test]
fn multi_token_mixes_nine_heads_in_groups_of_two() {
    for (mask, seed) in [(Mask::Causal, 3), (Mask::SlidingWindow { window: 4 }, 4)] {
        let case = Case::random(seed, 9, 3, 4, 7, 10, mask);
        let identity = MultiTokenKernel::identity(9, 3, 2).unwrap();
        let exact = to64(&case.run(&NaiveAttention));
        assert_close(&case.run(&identity), &exact, 1e-5, "identity vs exact");
        assert_close(
            &case.run_decoded(&identity),
            &exact,
            1e-5,
            "identity decoded vs exact",
        );

        let (kernel, conv, mix) = random_multi_token(9, 3, 2, seed);
        assert_eq!(mix.len(), 4 * 4 + 1);
        let prefill = case.run(&kernel);
        let reference = multi_token_reference(&case, &conv, 3, &mix, 2);
        assert_close(&prefill, &reference, 1e-4, "vs reference");
        assert_close(
            &case.run_decoded(&kernel),
            &to64(&prefill),
            1e-5,
            "decode vs prefill",
        );
        // The lone last head mixes only with itself: scaling its weight scales its output.
        let mut doubled = mix.clone();
        *doubled.last_mut().unwrap() *= 2.0;
        let doubled = MultiTokenKernel::new(9, 3, conv, 2, doubled).unwrap();
        let (d, n) = (case.head_dim, case.n_queries);
        let (before, after) = (&prefill, case.run(&doubled));
        assert_eq!(
            &after[..8 * n * d],
            &before[..8 * n * d],
            "heads 0..8 moved"
        );
        let last: Vec<f64> = before[8 * n * d..]
            .iter()
            .map(|&x| 2.0 * f64::from(x))
            .collect();
        assert_close(&after[8 * n * d..], &last, 1e-5, "last head doubled");
    }
}

#[test]
fn bad_settings_and_inputs_are_rejected() {
    let err = |r: kernels::Result<MultiTokenKernel>| r.unwrap_err().to_string();
    assert!(err(MultiTokenKernel::identity(0, 3, 1)).contains("must all be at least 1"));
    assert!(err(MultiTokenKernel::identity(4, 0, 1)).contains("key_kernel 0"));
    // 3 heads in groups of 2: a full group (4 weights) and a group of one (1 weight).
    assert!(
        err(MultiTokenKernel::new(3, 1, vec![0.0; 3], 2, vec![1.0; 6]))
            .contains("mix 5, got 3 and 6")
    );
    assert!(
        err(MultiTokenKernel::new(2, 3, vec![0.0; 5], 1, vec![1.0; 2])).contains("conv needs 6")
    );
    assert!(err(MultiTokenKernel::new(1, 1, vec![f32::NAN], 1, vec![1.0])).contains("finite"));
    for lambda in [1.0, 2.0, f32::NAN] {
        let e = DifferentialKernel::new(lambda).unwrap_err().to_string();
        assert!(e.contains("must be finite and below 1"), "{e}");
    }

    let case = Case::random(1, 4, 2, 3, 5, 5, Mask::Causal);
    let mut out = vec![0.0; 4 * 5 * 3];
    let e = DifferentialKernel::new(0.5)
        .unwrap()
        .forward(&case.input(), &case.layer, &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("head_dim 3 must be even"), "{e}");
    let e = MultiTokenKernel::identity(2, 3, 1)
        .unwrap()
        .forward(&case.input(), &case.layer, &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("made for 2 heads, given 4"), "{e}");
}

fn all_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    model
        .forward(&mut model.new_cache(), tokens, Logits::All)
        .unwrap()
}

/// Logits of `tokens` fed one at a time.
fn decoded_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    tokens
        .iter()
        .flat_map(|&t| model.forward(&mut cache, &[t], Logits::Last).unwrap())
        .collect()
}

/// Both kernels in every layer of `model`: the library's `mta` program (identity Multi-Token,
/// mixing groups of 2 whatever the head count) gives the exact logits, and both kernels
/// decode as they prefill.
fn check_in_model(mut model: Model, tokens: &[u32], tolerance: f32) {
    let exact = all_logits(&model, tokens);
    let heads = model.config.n_heads;
    let group = 2;
    let mta = akl::instantiate(
        library::checked("mta").unwrap(),
        &ModelShape::of(&model.config),
        model.config.attention_scale,
    )
    .unwrap();
    assert_eq!(mta.kv_rank, None);
    for (layer, kernel) in mta.kernels.into_iter().enumerate() {
        model.set_attention_kernel(layer, kernel).unwrap();
    }
    let identity = all_logits(&model, tokens);
    assert_close(
        &identity,
        &to64(&exact),
        f64::from(tolerance),
        "identity multi-token vs exact",
    );

    let (random, _, _) = random_multi_token(heads, 3, group, 4);
    for kernel in [
        Arc::new(random) as Arc<dyn AttentionKernel>,
        Arc::new(DifferentialKernel::new(0.3).unwrap()),
    ] {
        model.set_attention_kernel_everywhere(kernel.clone());
        let prefill = all_logits(&model, tokens);
        assert!(
            prefill.iter().all(|l| l.is_finite()),
            "{}: non-finite logits",
            kernel.name()
        );
        assert_close(
            &decoded_logits(&model, tokens),
            &to64(&prefill),
            f64::from(tolerance),
            kernel.name(),
        );
        let moved = prefill
            .iter()
            .zip(&exact)
            .any(|(a, b)| (a - b).abs() > 1e-2);
        assert!(moved, "{}: logits equal exact attention's", kernel.name());
    }
    model.set_attention_kernel_everywhere(Arc::new(TiledAttention::default()));
}

#[test]
fn both_kernels_run_inside_synthetic_models() {
    for spec in [Spec::llama(), Spec::qwen2()] {
        let file = write_model(&spec, &format!("drop_in_{}", spec.arch));
        let model = Model::load_with(&file, WeightFormat::F32).unwrap();
        let tokens: Vec<u32> = (0..24).map(|i| (i * 41 + 7) % 256).collect();
        check_in_model(model, &tokens, 1e-3);
    }
}

/// Real-asset test: SmolLM2, a sentence of Austen. The weights are dequantized to f32: the
/// 8-bit rounding of activations in quantized matmuls would turn the kernels' float-order
/// differences into jumps.
#[test]
fn both_kernels_run_inside_smollm2() {
    let path = assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let model = Model::load_with(&path, WeightFormat::F32).unwrap();
    let tokens = model
        .tokenizer
        .encode("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.", false)
        .unwrap();
    // Logits reach ~20; prefill and decode run the model's matmuls with different row
    // counts, whose f32 rounding 30 layers grow to a few 1e-3.
    check_in_model(model, &tokens, 2e-2);
}
