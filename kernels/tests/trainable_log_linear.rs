//! Log-Linear attention: the Fenwick levels, the recurrent (Fenwick merge) and chunkwise
//! paths against the quadratic form `O = (Q Kᵀ ⊙ M) V` in f64, the mixer's forward against
//! its decode steps, causality, gradients, and the drop-in kernel.

use candle_core::{DType, Device, Tensor};
use kernels::attention::{AttentionInput, AttentionKernel, LayerAttention, Mask};
use kernels::trainable::log_linear::{
    level, levels_for, FenwickState, LogLinearAttention, LogLinearConfig, LogLinearDropIn,
    LogLinearMixing, LogLinearVariant,
};
use kernels::trainable::{missing_gradients, Mixer};
use kernels::Error;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Core inputs in f64, `[batch, heads, seq, ·]` row-major.
#[derive(Clone, Debug)]
struct CoreCase {
    batch: usize,
    heads: usize,
    seq: usize,
    d_k: usize,
    d_v: usize,
    levels: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    level_weights: Vec<f64>,
    log_decay: Option<Vec<f64>>,
}

impl CoreCase {
    #[allow(clippy::too_many_arguments)]
    fn random(
        seed: u64,
        gated: bool,
        batch: usize,
        heads: usize,
        seq: usize,
        d_k: usize,
        d_v: usize,
        levels: usize,
    ) -> CoreCase {
        let mut rng = StdRng::seed_from_u64(seed);
        let rows = batch * heads * seq;
        let mut uniform = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        CoreCase {
            batch,
            heads,
            seq,
            d_k,
            d_v,
            levels,
            q: uniform(rows * d_k, -1.0, 1.0),
            k: uniform(rows * d_k, -1.0, 1.0),
            v: uniform(rows * d_v, -1.0, 1.0),
            level_weights: uniform(rows * levels, 0.0, 2.0),
            log_decay: gated.then(|| uniform(rows, -1.0, 0.0)),
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

    fn mixing(&self) -> LogLinearMixing {
        LogLinearMixing {
            q: self.tensor(&self.q, self.d_k),
            k: self.tensor(&self.k, self.d_k),
            v: self.tensor(&self.v, self.d_v),
            level_weights: self.tensor(&self.level_weights, self.levels),
            log_decay: self.log_decay.as_ref().map(|values| self.tensor(values, 1)),
        }
    }

    /// The quadratic form, one query at a time:
    /// `o_t = Σ_{s ≤ t} λ_t^(ℓ(t,s)) (Π_{r=s+1..t} α_r) (q_t·k_s) v_s`.
    fn reference(&self) -> Vec<f64> {
        let (d_k, d_v) = (self.d_k, self.d_v);
        let mut out = vec![0.0; self.batch * self.heads * self.seq * d_v];
        for sequence in 0..self.batch * self.heads {
            let row = |t: usize| sequence * self.seq + t;
            for t in 0..self.seq {
                let q = &self.q[row(t) * d_k..(row(t) + 1) * d_k];
                let mut log_decay_sum = 0.0f64;
                for s in (0..=t).rev() {
                    let k = &self.k[row(s) * d_k..(row(s) + 1) * d_k];
                    let v = &self.v[row(s) * d_v..(row(s) + 1) * d_v];
                    let weight = self.level_weights[row(t) * self.levels + level(t, s)]
                        * log_decay_sum.exp()
                        * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>();
                    for j in 0..d_v {
                        out[row(t) * d_v + j] += weight * v[j];
                    }
                    if let Some(log_decay) = &self.log_decay {
                        log_decay_sum += log_decay[row(s)];
                    }
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

/// The levels cut the prefix `[0, t]` into the Fenwick blocks of `t`: `t` alone at level 0,
/// and for each set bit `b` of `t` one contiguous block of `2^b` keys at level `b + 1`,
/// coarser levels further back.
#[test]
fn levels_are_the_fenwick_partition() {
    for t in 0..130usize {
        let mut end = t; // keys below `end` are still to be covered, walking backwards
        assert_eq!(level(t, t), 0);
        for bit in 0..usize::BITS as usize {
            if t >> bit & 1 == 0 {
                continue;
            }
            let block = end - (1 << bit)..end;
            for s in block.clone() {
                assert_eq!(level(t, s), bit + 1, "t {t}, s {s}");
            }
            end = block.start;
        }
        assert_eq!(end, 0, "t {t}: the blocks cover the whole prefix");
        assert!((0..=t).all(|s| level(t, s) < levels_for(t + 1)));
    }
    assert_eq!(levels_for(1), 1);
    assert_eq!(levels_for(2), 2);
    assert_eq!(levels_for(1024), 11);
    assert_eq!(levels_for(1025), 12);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The Fenwick recurrence and the chunkwise form reproduce the quadratic form, for
    /// power-of-two chunks that do and do not divide the sequence.
    #[test]
    fn paths_match_the_quadratic_form(
        seed in any::<u64>(),
        gated in any::<bool>(),
        batch in 1usize..=2,
        heads in 1usize..=2,
        seq in 1usize..=40,
        d_k in prop::sample::select(vec![1usize, 3, 8]),
        d_v in prop::sample::select(vec![1usize, 4]),
        chunk in prop::sample::select(vec![1usize, 2, 4, 8, 16]),
        spare_levels in 0usize..=2,
    ) {
        let case = CoreCase::random(seed, gated, batch, heads, seq, d_k, d_v, levels_for(seq) + spare_levels);
        let expected = case.reference();
        let mixing = case.mixing();
        let mut state = FenwickState::new();
        let recurrent = values(&mixing.recurrent(&mut state).unwrap());
        let chunkwise = values(&mixing.chunkwise(chunk).unwrap());
        assert_close(&recurrent, &expected, "recurrent vs quadratic form");
        assert_close(&chunkwise, &expected, "chunkwise vs quadratic form");
        assert_close(&chunkwise, &recurrent, "chunkwise vs recurrent");
        // After T tokens the buckets seen from position T are T's set bits: O(log T) states.
        assert_eq!(state.position(), seq);
        assert_eq!(state.live_states(), seq.count_ones() as usize);
    }
}

#[test]
fn core_rejects_what_it_cannot_compute() {
    let case = CoreCase::random(1, false, 1, 1, 9, 2, 2, levels_for(9));
    let mixing = case.mixing();
    for chunk in [0, 3, 6] {
        assert!(mixing.chunkwise(chunk).is_err(), "chunk {chunk}");
    }
    let short = CoreCase::random(1, false, 1, 1, 9, 2, 2, levels_for(9) - 1).mixing();
    let message = short.chunkwise(4).unwrap_err().to_string();
    assert!(message.contains("levels"), "{message}");
    let error = short.recurrent(&mut FenwickState::new()).unwrap_err();
    assert!(error.to_string().contains("levels"), "{error}");
}

fn small_mixer(variant: LogLinearVariant, chunk: usize) -> LogLinearAttention {
    let config = LogLinearConfig {
        chunk,
        levels: 6,
        ..LogLinearConfig::new(variant, 12, 3)
    };
    LogLinearAttention::new(config, 9, &Device::Cpu).unwrap()
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
    for variant in LogLinearVariant::ALL {
        for chunk in [2, 4] {
            let mixer = small_mixer(variant, chunk);
            let x = random_x(1, 2, 19, 12);
            let forward = mixer.forward(&x).unwrap();
            let recurrent = mixer.forward_recurrent(&x).unwrap();
            let what = format!("{variant:?} chunk {chunk}");
            assert_close(&values(&forward), &values(&recurrent), &what);
            let mut state = mixer.new_state();
            for t in 0..19 {
                let x_t = x.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
                let step = mixer.step(&x_t, &mut state).unwrap();
                let row = forward.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
                assert_close(&values(&step), &values(&row), &format!("{what}: step {t}"));
            }
            assert_eq!(state.fenwick().live_states(), 19usize.count_ones() as usize);
        }
    }
}

#[test]
fn mixer_is_causal() {
    for variant in LogLinearVariant::ALL {
        let mixer = small_mixer(variant, 4);
        let x = random_x(2, 1, 11, 12);
        let before = values(&mixer.forward(&x).unwrap());
        for changed in [0, 5, 10] {
            let bump = Tensor::zeros((1, 11, 12), DType::F32, &Device::Cpu)
                .unwrap()
                .slice_assign(
                    &[0..1, changed..changed + 1, 0..12],
                    &Tensor::full(5.0f32, (1, 1, 12), &Device::Cpu).unwrap(),
                )
                .unwrap();
            let after = values(&mixer.forward(&(&x + bump).unwrap()).unwrap());
            let past = changed * 12;
            let what = format!("{variant:?}: rows before {changed}");
            assert_close(&after[..past], &before[..past], &what);
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
/// the Fenwick recurrence gives.
#[test]
fn every_parameter_gets_the_recurrent_gradient() {
    for variant in LogLinearVariant::ALL {
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
    let plain = LogLinearConfig::new(LogLinearVariant::Plain, 12, 3);
    let cases = [
        (
            LogLinearConfig {
                n_heads: 0,
                ..plain
            },
            "n_heads",
        ),
        (
            LogLinearConfig {
                n_heads: 5,
                ..plain
            },
            "not divisible",
        ),
        (LogLinearConfig { chunk: 0, ..plain }, "power of two"),
        (LogLinearConfig { chunk: 12, ..plain }, "power of two"),
        (LogLinearConfig { levels: 0, ..plain }, "levels"),
    ];
    for (config, needle) in cases {
        match LogLinearAttention::new(config, 0, &Device::Cpu) {
            Err(Error::InvalidRequest(message)) => assert!(message.contains(needle), "{message}"),
            other => panic!("{config:?} should be rejected, got {other:?}"),
        }
    }
    // Six levels cover 32 tokens; 33 need a seventh.
    let mixer = small_mixer(LogLinearVariant::Plain, 4);
    assert!(mixer.forward(&random_x(4, 1, 32, 12)).is_ok());
    let message = mixer
        .forward(&random_x(4, 1, 33, 12))
        .unwrap_err()
        .to_string();
    assert!(message.contains("levels"), "{message}");
    assert!(matches!(
        LogLinearDropIn::with_chunk(LogLinearVariant::Plain, 48),
        Err(Error::InvalidRequest(_))
    ));
    for variant in LogLinearVariant::ALL {
        assert_eq!(LogLinearVariant::from_name(variant.name()), Some(variant));
    }
}

/// One layer's queries and cache for the drop-in kernel.
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

    /// Runs `kernel` for the queries at positions `first..=last` (the cache cut at `last`).
    fn run(&self, kernel: &dyn AttentionKernel, first: usize, last: usize) -> Vec<f64> {
        let d = self.head_dim;
        let q: Vec<f32> = (0..self.n_q_heads)
            .flat_map(|h| {
                let row = h * self.kv_len;
                self.q[(row + first) * d..(row + last + 1) * d]
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
            n_queries: last + 1 - first,
            kv_len: last + 1,
            kv_capacity: self.kv_len,
            key_positions: None,
            page_summaries: &[],
        };
        let layer = LayerAttention {
            scale: (d as f32).powf(-0.5),
            mask: Mask::Causal,
        };
        let mut out = vec![f32::NAN; q.len()];
        kernel.forward(&input, &layer, &mut out).unwrap();
        out.into_iter().map(f64::from).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// One decode call per position gives the rows of one prefill, over GQA ratios and
    /// lengths that are not multiples of the chunk.
    #[test]
    fn drop_in_decode_equals_prefill(
        seed in any::<u64>(),
        variant in prop::sample::select(LogLinearVariant::ALL.to_vec()),
        n_kv_heads in 1usize..=2,
        group in 1usize..=3,
        head_dim in prop::sample::select(vec![2usize, 5, 8]),
        kv_len in 1usize..=21,
        chunk in prop::sample::select(vec![2usize, 4, 8]),
    ) {
        let cache = Cache::random(seed, n_kv_heads, group, head_dim, kv_len);
        let kernel = LogLinearDropIn::with_chunk(variant, chunk).unwrap();
        let prefill = cache.run(&kernel, 0, kv_len - 1);
        for position in 0..kv_len {
            let decode = cache.run(&kernel, position, position);
            let rows: Vec<f64> = (0..cache.n_q_heads)
                .flat_map(|h| {
                    let row = h * kv_len + position;
                    prefill[row * head_dim..(row + 1) * head_dim].to_vec()
                })
                .collect();
            assert_close(&decode, &rows, &format!("{variant:?} position {position}"));
        }
    }
}

/// The plain drop-in is the normalised weighted average with `w_ts = φ(q_t·scale)·φ(k_s) /
/// (ℓ(t,s) + 1)`, each query head reading its group's KV head.
#[test]
fn plain_drop_in_matches_the_weighted_average() {
    let elu_plus_one = |x: f64| if x > 0.0 { x + 1.0 } else { x.exp() };
    let (group, d, kv_len) = (3, 4, 21);
    let cache = Cache::random(13, 1, group, d, kv_len);
    let scale = (d as f64).powf(-0.5);
    let kernel = LogLinearDropIn::with_chunk(LogLinearVariant::Plain, 4).unwrap();
    let out = cache.run(&kernel, 0, kv_len - 1);
    for h in 0..cache.n_q_heads {
        for t in 0..kv_len {
            let query = &cache.q[(h * kv_len + t) * d..(h * kv_len + t + 1) * d];
            let (mut numerator, mut denominator) = (vec![0.0f64; d], 0.0f64);
            for s in 0..=t {
                let key = &cache.k[s * d..(s + 1) * d];
                let features: f64 = (0..d)
                    .map(|i| {
                        elu_plus_one(f64::from(query[i]) * scale) * elu_plus_one(f64::from(key[i]))
                    })
                    .sum();
                let weight = features / (level(t, s) + 1) as f64;
                denominator += weight;
                for (n, &x) in numerator.iter_mut().zip(&cache.v[s * d..(s + 1) * d]) {
                    *n += weight * f64::from(x);
                }
            }
            let expected: Vec<f64> = numerator.iter().map(|n| n / denominator).collect();
            let row = h * kv_len + t;
            assert_close(
                &out[row * d..(row + 1) * d],
                &expected,
                &format!("head {h} position {t}"),
            );
        }
    }
}
