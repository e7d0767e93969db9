//! The linear-attention family: the core's recurrent and chunkwise paths against an f64
//! recurrence written as the papers state it, the mixer's chunkwise forward against its
//! decode steps, causality, gradients, and the drop-in kernel's decode against its prefill.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use kernels::attention::{AttentionInput, AttentionKernel, LayerAttention, Mask};
use kernels::trainable::linear::{
    LinearAttention, LinearConfig, LinearDropIn, LinearVariant, Mixing, UpdateRule,
};
use kernels::trainable::log_linear::{LogLinearDropIn, LogLinearVariant};
use kernels::trainable::{missing_gradients, Mixer};
use kernels::{Error, Logits, Model, WeightFormat};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which decay and write rule a core case exercises.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Plain,
    ScalarDecay,
    ChannelDecay,
    Delta,
    GatedDelta,
}

/// Core inputs in f64, `[batch, heads, seq, ·]` row-major.
#[derive(Clone, Debug)]
struct CoreCase {
    batch: usize,
    heads: usize,
    seq: usize,
    d_k: usize,
    d_v: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    /// Log-decays, `[batch, heads, seq, decay_width]`.
    log_decay: Option<(usize, Vec<f64>)>,
    beta: Option<Vec<f64>>,
}

impl CoreCase {
    fn random(
        seed: u64,
        kind: Kind,
        batch: usize,
        heads: usize,
        seq: usize,
        d_k: usize,
        d_v: usize,
    ) -> CoreCase {
        let mut rng = StdRng::seed_from_u64(seed);
        let rows = batch * heads * seq;
        let mut uniform = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        let q = uniform(rows * d_k, -1.0, 1.0);
        let mut k = uniform(rows * d_k, -1.0, 1.0);
        let v = uniform(rows * d_v, -1.0, 1.0);
        let log_decay = match kind {
            Kind::Plain | Kind::Delta => None,
            Kind::ScalarDecay | Kind::GatedDelta => Some((1, uniform(rows, -2.0, 0.0))),
            Kind::ChannelDecay => Some((d_k, uniform(rows * d_k, -2.0, 0.0))),
        };
        let beta = match kind {
            Kind::Delta | Kind::GatedDelta => {
                // The delta rule is stable for unit keys, as the mixers make them.
                for key in k.chunks_exact_mut(d_k) {
                    let norm = key.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-3);
                    key.iter_mut().for_each(|x| *x /= norm);
                }
                Some(uniform(rows, 0.0, 1.0))
            }
            _ => None,
        };
        CoreCase {
            batch,
            heads,
            seq,
            d_k,
            d_v,
            q,
            k,
            v,
            log_decay,
            beta,
        }
    }

    fn tensor(&self, values: &[f64], width: usize) -> Tensor {
        let values: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        Tensor::from_vec(
            values,
            (self.batch, self.heads, self.seq, width),
            &Device::Cpu,
        )
        .unwrap()
    }

    fn mixing(&self) -> Mixing {
        Mixing {
            q: self.tensor(&self.q, self.d_k),
            k: self.tensor(&self.k, self.d_k),
            v: self.tensor(&self.v, self.d_v),
            log_decay: self
                .log_decay
                .as_ref()
                .map(|(width, values)| self.tensor(values, *width)),
            rule: match &self.beta {
                Some(beta) => UpdateRule::Delta {
                    beta: self.tensor(beta, 1),
                },
                None => UpdateRule::Additive,
            },
        }
    }

    /// The recurrence, one (batch, head) and one token at a time:
    /// `S_t = diag(α_t) S_{t−1} + k_tᵀ v_t`, or for the delta rule
    /// `S_t = α_t (I − β_t k_tᵀ k_t) S_{t−1} + β_t k_tᵀ v_t`; `o_t = q_t S_t`.
    fn reference(&self) -> Vec<f64> {
        let (d_k, d_v) = (self.d_k, self.d_v);
        let mut out = vec![0.0; self.batch * self.heads * self.seq * d_v];
        for sequence in 0..self.batch * self.heads {
            let mut state = vec![vec![0.0f64; d_v]; d_k];
            for t in 0..self.seq {
                let row = sequence * self.seq + t;
                let q = &self.q[row * d_k..(row + 1) * d_k];
                let k = &self.k[row * d_k..(row + 1) * d_k];
                let v = &self.v[row * d_v..(row + 1) * d_v];
                if let Some((width, log_decay)) = &self.log_decay {
                    for (i, state_row) in state.iter_mut().enumerate() {
                        let alpha = log_decay[row * width + if *width == 1 { 0 } else { i }].exp();
                        state_row.iter_mut().for_each(|s| *s *= alpha);
                    }
                }
                let beta = self.beta.as_ref().map(|beta| beta[row]);
                let written: Vec<f64> = match beta {
                    Some(beta) => (0..d_v)
                        .map(|j| {
                            let predicted: f64 = (0..d_k).map(|i| k[i] * state[i][j]).sum();
                            beta * (v[j] - predicted)
                        })
                        .collect(),
                    None => v.to_vec(),
                };
                for i in 0..d_k {
                    for j in 0..d_v {
                        state[i][j] += k[i] * written[j];
                    }
                }
                for j in 0..d_v {
                    out[row * d_v + j] = (0..d_k).map(|i| q[i] * state[i][j]).sum();
                }
            }
        }
        out
    }
}

fn values(tensor: &Tensor) -> Vec<f64> {
    tensor
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `actual` equals `expected` to 1e-4 relative to the size of `expected`.
fn assert_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let scale = expected.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-4 * scale,
            "{what}: element {i} is {a}, expected {e} (scale {scale})"
        );
    }
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop::sample::select(vec![
        Kind::Plain,
        Kind::ScalarDecay,
        Kind::ChannelDecay,
        Kind::Delta,
        Kind::GatedDelta,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Both candle paths reproduce the f64 recurrence, over chunk sizes that do and do not
    /// divide the sequence, and chunkwise equals recurrent.
    #[test]
    fn core_paths_match_the_recurrence(
        seed in any::<u64>(),
        kind in kind_strategy(),
        batch in 1usize..=2,
        heads in 1usize..=3,
        seq in 1usize..=29,
        d_k in prop::sample::select(vec![1usize, 3, 8]),
        d_v in prop::sample::select(vec![1usize, 4, 8]),
        chunk in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 16, 32]),
    ) {
        let case = CoreCase::random(seed, kind, batch, heads, seq, d_k, d_v);
        let expected = case.reference();
        let mixing = case.mixing();
        let zero = mixing.zero_state().unwrap();
        let (recurrent, recurrent_state) = mixing.recurrent(&zero).unwrap();
        let (chunkwise, chunkwise_state) = mixing.chunkwise(chunk, &zero).unwrap();
        assert_close(&values(&recurrent), &expected, "recurrent vs reference");
        assert_close(&values(&chunkwise), &expected, "chunkwise vs reference");
        assert_close(&values(&chunkwise), &values(&recurrent), "chunkwise vs recurrent");
        assert_close(&values(&chunkwise_state), &values(&recurrent_state), "final states");
    }

    /// A sequence cut in two, the second half starting from the first half's state, gives
    /// the outputs of the whole: the state carries everything.
    #[test]
    fn chunkwise_resumes_from_a_state(
        seed in any::<u64>(),
        kind in kind_strategy(),
        seq in 2usize..=24,
        cut_share in 1usize..100,
        chunk in prop::sample::select(vec![2usize, 3, 4, 7]),
    ) {
        let case = CoreCase::random(seed, kind, 1, 2, seq, 4, 3);
        let mixing = case.mixing();
        let cut = (seq * cut_share / 100).clamp(1, seq - 1);
        let (first, state) = mixing.narrow(0, cut).unwrap().chunkwise(chunk, &mixing.zero_state().unwrap()).unwrap();
        let (second, _) = mixing.narrow(cut, seq - cut).unwrap().chunkwise(chunk, &state).unwrap();
        let resumed = Tensor::cat(&[first, second], 2).unwrap();
        assert_close(&values(&resumed), &case.reference(), "resumed chunkwise vs reference");
    }
}

/// Chunks longer than GLA's sub-blocks of 16 positions: per-channel decays across sub-blocks,
/// with strong decays that would overflow a naive `e^{−b}` factorisation.
#[test]
fn channel_decay_across_sub_blocks_matches_the_recurrence() {
    for (seed, seq, chunk) in [(1, 40, 32), (2, 70, 64), (3, 33, 17)] {
        let mut case = CoreCase::random(seed, Kind::ChannelDecay, 1, 2, seq, 5, 3);
        if let Some((_, log_decay)) = &mut case.log_decay {
            log_decay.iter_mut().for_each(|g| *g *= 4.0);
        }
        let mixing = case.mixing();
        let (chunkwise, _) = mixing
            .chunkwise(chunk, &mixing.zero_state().unwrap())
            .unwrap();
        assert_close(
            &values(&chunkwise),
            &case.reference(),
            &format!("seq {seq}, chunk {chunk}"),
        );
    }
}

fn small_mixer(variant: LinearVariant, chunk: usize) -> LinearAttention {
    let config = LinearConfig {
        chunk,
        gate_rank: 4,
        ..LinearConfig::new(variant, 12, 3)
    };
    LinearAttention::new(config, 7, &Device::Cpu).unwrap()
}

fn random_x(seed: u64, batch: usize, seq: usize, d_model: usize) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..batch * seq * d_model)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    Tensor::from_vec(values, (batch, seq, d_model), &Device::Cpu).unwrap()
}

#[test]
fn mixer_forward_equals_its_decode_steps() {
    for variant in LinearVariant::ALL {
        for chunk in [4, 5] {
            let mixer = small_mixer(variant, chunk);
            let x = random_x(1, 2, 13, 12);
            let forward = mixer.forward(&x).unwrap();
            let recurrent = mixer.forward_recurrent(&x).unwrap();
            assert_close(
                &values(&forward),
                &values(&recurrent),
                &format!("{variant:?} chunk {chunk}: forward vs recurrent"),
            );
            let mut state = mixer.new_state(2).unwrap();
            for t in 0..13 {
                let step = mixer
                    .step(&x.narrow(1, t, 1).unwrap().squeeze(1).unwrap(), &mut state)
                    .unwrap();
                let row = forward.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
                assert_close(
                    &values(&step),
                    &values(&row),
                    &format!("{variant:?} chunk {chunk}: step {t}"),
                );
            }
        }
    }
}

#[test]
fn mixer_is_causal() {
    for variant in LinearVariant::ALL {
        let mixer = small_mixer(variant, 4);
        let x = random_x(2, 1, 11, 12);
        let before = values(&mixer.forward(&x).unwrap());
        for changed in [0, 5, 10] {
            let bump = Tensor::zeros((1, 11, 12), candle_core::DType::F32, &Device::Cpu)
                .unwrap()
                .slice_assign(
                    &[0..1, changed..changed + 1, 0..12],
                    &(Tensor::ones((1, 1, 12), candle_core::DType::F32, &Device::Cpu).unwrap()
                        * 5.0)
                        .unwrap(),
                )
                .unwrap();
            let after = values(&mixer.forward(&(&x + bump).unwrap()).unwrap());
            let past = changed * 12;
            assert_close(
                &after[..past],
                &before[..past],
                &format!("{variant:?}: rows before {changed}"),
            );
            let moved = after[past..past + 12]
                .iter()
                .zip(&before[past..past + 12])
                .any(|(a, b)| (a - b).abs() > 1e-3);
            assert!(
                moved,
                "{variant:?}: changing row {changed} must change its own output"
            );
        }
    }
}

/// Every parameter receives a gradient through the chunkwise path, and it is the gradient
/// the plain recurrent path gives (so the chunkwise backward, forward substitution
/// included, is right, not merely connected).
#[test]
fn every_parameter_gets_the_recurrent_gradient() {
    for variant in LinearVariant::ALL {
        let mixer = small_mixer(variant, 4);
        let x = random_x(3, 2, 9, 12);
        let loss = |output: Tensor| output.sqr().unwrap().sum_all().unwrap();
        let chunkwise = loss(mixer.forward(&x).unwrap()).backward().unwrap();
        let recurrent = loss(mixer.forward_recurrent(&x).unwrap())
            .backward()
            .unwrap();
        let missing = missing_gradients(mixer.parameters(), &chunkwise).unwrap();
        assert!(
            missing.is_empty(),
            "{variant:?}: no gradient reaches {missing:?}"
        );
        for (name, var) in mixer.parameters().named() {
            let gradient = |grads: &candle_core::backprop::GradStore| {
                values(grads.get(var.as_tensor()).unwrap())
            };
            assert_close(
                &gradient(&chunkwise),
                &gradient(&recurrent),
                &format!("{variant:?}: gradient of {name}"),
            );
        }
    }
}

#[test]
fn bad_configs_are_rejected_with_the_fix() {
    let device = Device::Cpu;
    let cases = [
        (LinearConfig::new(LinearVariant::Gla, 12, 0), "n_heads"),
        (
            LinearConfig::new(LinearVariant::Gla, 12, 5),
            "not divisible",
        ),
        (
            LinearConfig {
                chunk: 0,
                ..LinearConfig::new(LinearVariant::DeltaNet, 12, 3)
            },
            "chunk",
        ),
        (
            LinearConfig {
                gate_rank: 0,
                ..LinearConfig::new(LinearVariant::Gla, 12, 3)
            },
            "gate rank",
        ),
    ];
    for (config, needle) in cases {
        match LinearAttention::new(config, 0, &device) {
            Err(Error::InvalidRequest(message)) => assert!(message.contains(needle), "{message}"),
            other => panic!("{config:?} should be rejected, got {other:?}"),
        }
    }
    assert!(matches!(
        LinearDropIn::with_chunk(LinearVariant::RetNet, 0),
        Err(Error::InvalidRequest(_))
    ));
    let case = CoreCase::random(0, Kind::Plain, 1, 1, 4, 2, 2);
    let mixing = case.mixing();
    assert!(mixing.chunkwise(0, &mixing.zero_state().unwrap()).is_err());
    let per_key_delta = Mixing {
        rule: CoreCase::random(0, Kind::Delta, 1, 1, 4, 2, 2)
            .mixing()
            .rule,
        ..CoreCase::random(0, Kind::ChannelDecay, 1, 1, 4, 2, 2).mixing()
    };
    assert!(
        per_key_delta.dims().is_err(),
        "the delta rule takes one decay per head"
    );
}

#[test]
fn variant_names_round_trip() {
    for variant in LinearVariant::ALL {
        assert_eq!(LinearVariant::from_name(variant.name()), Some(variant));
    }
    assert_eq!(LinearVariant::from_name("softmax"), None);
}

/// One layer's queries and cache for the drop-in kernels.
struct Cache {
    n_q_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    kv_len: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Cache {
    fn random(seed: u64, n_kv_heads: usize, group: usize, head_dim: usize, kv_len: usize) -> Cache {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let n_q_heads = n_kv_heads * group;
        Cache {
            n_q_heads,
            n_kv_heads,
            head_dim,
            kv_len,
            q: values(n_q_heads * kv_len * head_dim),
            k: values(n_kv_heads * kv_len * head_dim),
            v: values(n_kv_heads * kv_len * head_dim),
        }
    }

    /// Runs `kernel` for the queries at positions `first..last + 1` (the cache cut at `last`).
    fn run(
        &self,
        kernel: &dyn AttentionKernel,
        first: usize,
        last: usize,
        mask: Mask,
    ) -> kernels::Result<Vec<f32>> {
        let d = self.head_dim;
        let n_queries = last + 1 - first;
        let q: Vec<f32> = (0..self.n_q_heads)
            .flat_map(|h| {
                self.q[(h * self.kv_len + first) * d..(h * self.kv_len + last + 1) * d]
                    .iter()
                    .copied()
            })
            .collect();
        let input = AttentionInput {
            q: &q,
            k: &self.k,
            v: &self.v,
            n_q_heads: self.n_q_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: d,
            n_queries,
            kv_len: last + 1,
            kv_capacity: self.kv_len,
            key_positions: None,
            page_summaries: &[],
        };
        let layer = LayerAttention {
            scale: (d as f32).powf(-0.5),
            mask,
        };
        let mut out = vec![f32::NAN; q.len()];
        kernel.forward(&input, &layer, &mut out)?;
        Ok(out)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// One decode call per position gives the rows of one prefill, over GQA ratios and
    /// lengths that are not multiples of the chunk.
    #[test]
    fn drop_in_decode_equals_prefill(
        seed in any::<u64>(),
        variant in prop::sample::select(LinearVariant::ALL.to_vec()),
        n_kv_heads in 1usize..=2,
        group in 1usize..=3,
        head_dim in prop::sample::select(vec![2usize, 5, 8]),
        kv_len in 1usize..=21,
        chunk in prop::sample::select(vec![3usize, 4, 8]),
    ) {
        let cache = Cache::random(seed, n_kv_heads, group, head_dim, kv_len);
        let kernel = LinearDropIn::with_chunk(variant, chunk).unwrap();
        let prefill: Vec<f64> = cache.run(&kernel, 0, kv_len - 1, Mask::Causal).unwrap().into_iter().map(f64::from).collect();
        for position in 0..kv_len {
            let decode: Vec<f64> = cache.run(&kernel, position, position, Mask::Causal).unwrap().into_iter().map(f64::from).collect();
            let rows: Vec<f64> = (0..cache.n_q_heads)
                .flat_map(|h| prefill[(h * kv_len + position) * head_dim..(h * kv_len + position + 1) * head_dim].to_vec())
                .collect();
            assert_close(&decode, &rows, &format!("{variant:?} position {position}"));
        }
    }
}

/// The `Linear` and `RetNet` drop-ins are normalised kernel attention,
/// `o_t = Σ_s w_ts v_s / Σ_s w_ts` with `w_ts = γ^{t−s} φ(q_t·scale)·φ(k_s)`: checked
/// directly, with each query head reading its group's KV head.
#[test]
fn normalised_drop_ins_match_the_weighted_average() {
    let elu_plus_one = |x: f64| if x > 0.0 { x + 1.0 } else { x.exp() };
    let (n_kv_heads, group, d, kv_len) = (2, 2, 4, 9);
    let cache = Cache::random(11, n_kv_heads, group, d, kv_len);
    let scale = (d as f64).powf(-0.5);
    for variant in [LinearVariant::Linear, LinearVariant::RetNet] {
        let out = cache
            .run(
                &LinearDropIn::with_chunk(variant, 4).unwrap(),
                0,
                kv_len - 1,
                Mask::Causal,
            )
            .unwrap();
        for h in 0..cache.n_q_heads {
            let gamma = match variant {
                LinearVariant::RetNet => 1.0 - 2f64.powi(-5 - h as i32),
                _ => 1.0,
            };
            let kv = h / group;
            for t in 0..kv_len {
                let query = &cache.q[(h * kv_len + t) * d..(h * kv_len + t + 1) * d];
                let (mut numerator, mut denominator) = (vec![0.0f64; d], 0.0f64);
                for s in 0..=t {
                    let key = &cache.k[(kv * kv_len + s) * d..(kv * kv_len + s + 1) * d];
                    let value = &cache.v[(kv * kv_len + s) * d..(kv * kv_len + s + 1) * d];
                    let weight = gamma.powi((t - s) as i32)
                        * (0..d)
                            .map(|i| {
                                elu_plus_one(f64::from(query[i]) * scale)
                                    * elu_plus_one(f64::from(key[i]))
                            })
                            .sum::<f64>();
                    denominator += weight;
                    numerator
                        .iter_mut()
                        .zip(value)
                        .for_each(|(n, &x)| *n += weight * f64::from(x));
                }
                let expected: Vec<f64> = numerator.iter().map(|n| n / denominator).collect();
                let actual: Vec<f64> = out[(h * kv_len + t) * d..(h * kv_len + t + 1) * d]
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect();
                assert_close(
                    &actual,
                    &expected,
                    &format!("{variant:?} head {h} position {t}"),
                );
            }
        }
    }
}

#[test]
fn drop_in_refuses_masks_it_cannot_honour() {
    let cache = Cache::random(5, 1, 1, 4, 6);
    let kernel = LinearDropIn::new(LinearVariant::Gla).unwrap();
    for mask in [
        Mask::SlidingWindow { window: 3 },
        Mask::Chunked { chunk: 2 },
    ] {
        match cache.run(&kernel, 0, 5, mask) {
            Err(Error::InvalidRequest(message)) => assert!(message.contains("causal"), "{message}"),
            other => panic!("{mask:?} should be refused, got {other:?}"),
        }
    }
}

/// Every linear and Log-Linear drop-in replaces attention in all layers of SmolLM2: the
/// logits stay finite, differ from exact attention's (the kernel really ran), and decoding
/// the prompt token by token ends at the logits of one prefill. With f32 weights: quantized
/// activations turn float-level differences into rounding flips (exact tiled and naive
/// attention already differ by 0.5 in a logit there).
#[test]
fn every_drop_in_runs_inside_smollm2() {
    let path = kernels::assets::SMOLLM2
        .require()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut model = Model::load_with(&path, WeightFormat::F32).unwrap();
    let text = "It is a truth universally acknowledged, that a single man";
    let tokens = model.tokenizer.encode(text, false).unwrap();
    let exact = model
        .forward(&mut model.new_cache(), &tokens, Logits::Last)
        .unwrap();
    let mut drop_ins: Vec<Arc<dyn AttentionKernel>> = Vec::new();
    for variant in LinearVariant::ALL {
        drop_ins.push(Arc::new(LinearDropIn::new(variant).unwrap()));
    }
    for variant in LogLinearVariant::ALL {
        drop_ins.push(Arc::new(LogLinearDropIn::new(variant).unwrap()));
    }
    for kernel in drop_ins {
        model.set_attention_kernel_everywhere(kernel.clone());
        let prefill = model
            .forward(&mut model.new_cache(), &tokens, Logits::Last)
            .unwrap();
        let mut cache = model.new_cache();
        let mut decode = Vec::new();
        for &token in &tokens {
            decode = model.forward(&mut cache, &[token], Logits::Last).unwrap();
        }
        let name = kernel.name();
        assert!(
            prefill.iter().all(|x| x.is_finite()),
            "{name}: logits must be finite"
        );
        let moved = prefill
            .iter()
            .zip(&exact)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            moved > 1e-2,
            "{name}: logits equal exact attention's, so the kernel did not run"
        );
        let scale = prefill.iter().fold(1f32, |m, x| m.max(x.abs()));
        let worst = decode
            .iter()
            .zip(&prefill)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-3 * scale,
            "{name}: decode logits differ from prefill by {worst} (scale {scale})"
        );
    }
}
