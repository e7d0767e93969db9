//! Differential attention against an f64 reference written from the paper's equations,
//! decode against forward, causality, gradients and the λ schedule.

mod mechanisms;

use candle_core::Device;
use kernels::trainable::differential::{
    DifferentialAttention, DifferentialCache, DifferentialConfig, LambdaInit,
};
use kernels::trainable::Mixer;
use mechanisms::*;
use proptest::prelude::*;

/// Differential attention in f64 on `x` `[batch, seq, d_model]`.
fn reference(diff: &DifferentialAttention, x: &[f64], batch: usize, seq: usize) -> Vec<f64> {
    let c = *diff.config();
    let p = diff.parameters();
    let (dm, h, d) = (c.d_model, c.n_heads, c.head_dim);
    let w = |n: &str| param(p, n);
    let lambda_init = diff.lambda_init();
    let lambda = dot(&w("lambda_q1"), &w("lambda_k1")).exp()
        - dot(&w("lambda_q2"), &w("lambda_k2")).exp()
        + lambda_init;
    let norm = w("norm");
    let width = 2 * h * d;
    let mut out = Vec::new();
    for b in 0..batch {
        let xb = &x[b * seq * dm..(b + 1) * seq * dm];
        let (q, k, v) = (
            matmul(xb, seq, dm, &w("w_q"), width),
            matmul(xb, seq, dm, &w("w_k"), width),
            matmul(xb, seq, dm, &w("w_v"), width),
        );
        // Sub-head `s` of width d (queries, keys) or head `hi` of width 2d (values).
        let sub = |m: &[f64], t: usize, s: usize| m[t * width + s * d..][..d].to_vec();
        let mut heads = vec![0.0; seq * width];
        for hi in 0..h {
            for i in 0..seq {
                let map = |s: usize| {
                    let mut scores: Vec<f64> = (0..=i)
                        .map(|j| dot(&sub(&q, i, s), &sub(&k, j, s)) / (d as f64).sqrt())
                        .collect();
                    softmax(&mut scores);
                    scores
                };
                let (a1, a2) = (map(2 * hi), map(2 * hi + 1));
                let mut row = vec![0.0; 2 * d];
                for j in 0..=i {
                    let weight = a1[j] - lambda * a2[j];
                    for (e, r) in row.iter_mut().enumerate() {
                        *r += weight * v[j * width + hi * 2 * d + e];
                    }
                }
                let rms =
                    (row.iter().map(|r| r * r).sum::<f64>() / (2 * d) as f64 + c.rms_eps).sqrt();
                for (e, r) in row.iter().enumerate() {
                    heads[i * width + hi * 2 * d + e] = r / rms * norm[e] * (1.0 - lambda_init);
                }
            }
        }
        out.extend(matmul(&heads, seq, width, &w("w_o"), dm));
    }
    out
}

/// Shapes from two hidden channels up: with one, every value is a multiple of one vector,
/// the per-head RMSNorm keeps only its sign, and a change of later tokens may move nothing,
/// which would make the causality test's "the change reached later outputs" check fail.
fn config_strategy() -> impl Strategy<Value = DifferentialConfig> {
    (2usize..9, 1usize..4, 1usize..5, 1usize..12).prop_map(|(d_model, n_heads, head_dim, layer)| {
        DifferentialConfig::new(d_model, n_heads, head_dim, layer)
    })
}

/// A mixer with a random norm weight and larger λ vectors than the paper's init, so that
/// every term of the formula shows in the output.
fn random_diff(config: DifferentialConfig, seed: u64) -> DifferentialAttention {
    let diff = DifferentialAttention::new(config, seed, &Device::Cpu).unwrap();
    for (i, name) in ["lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2", "norm"]
        .iter()
        .enumerate()
    {
        randomize(diff.parameters(), name, 0.7, seed + i as u64);
    }
    diff
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn forward_matches_the_reference(
        config in config_strategy(), batch in 1usize..3, seq in 1usize..11, seed in 0u64..1000,
    ) {
        let diff = random_diff(config, seed);
        let (x, x64) = random_input(batch, seq, config.d_model, seed + 9);
        let y = to_f64(&diff.forward(&x).unwrap());
        assert_close(&y, &reference(&diff, &x64, batch, seq), 1e-4, "forward vs reference");
    }

    #[test]
    fn decode_matches_forward(
        config in config_strategy(), batch in 1usize..3, seq in 1usize..11, seed in 0u64..1000,
    ) {
        let diff = random_diff(config, seed);
        let (x, _) = random_input(batch, seq, config.d_model, seed + 9);
        let mut cache = DifferentialCache::new();
        assert_decode_matches(
            &diff.forward(&x).unwrap(),
            &x,
            |token| diff.step(token, &mut cache).unwrap(),
            "token-by-token decode vs forward",
        );
        prop_assert_eq!(cache.len(), seq);
    }

    #[test]
    fn later_tokens_do_not_move_earlier_outputs(
        config in config_strategy(), seq in 2usize..11, position in 1usize..10, seed in 0u64..1000,
    ) {
        let position = position.min(seq - 1);
        let diff = random_diff(config, seed);
        let (x, _) = random_input(2, seq, config.d_model, seed + 9);
        assert_causal(|x| diff.forward(x).unwrap(), &x, position);
    }
}

#[test]
fn lambda_init_follows_the_paper_schedule() {
    let at = |layer| LambdaInit::Layer(layer).value().unwrap();
    assert!((at(1) - 0.2).abs() < 1e-12);
    assert!((at(2) - (0.8 - 0.6 * (-0.3f64).exp())).abs() < 1e-12);
    assert!(at(30) > 0.79 && at(30) < 0.8);
    assert_eq!(LambdaInit::Value(0.5).value().unwrap(), 0.5);
}

#[test]
fn gradients_reach_every_parameter() {
    let config = DifferentialConfig::new(8, 2, 3, 2);
    let (x, _) = random_input(2, 6, 8, 4);
    assert_gradients_reach_every_parameter(
        &DifferentialAttention::new(config, 1, &Device::Cpu).unwrap(),
        &x,
    );
}

#[test]
fn bad_configs_are_rejected_with_the_field_to_fix() {
    let good = DifferentialConfig::new(8, 2, 3, 1);
    let cases = [
        (DifferentialConfig { n_heads: 0, ..good }, "n_heads"),
        (
            DifferentialConfig {
                head_dim: 0,
                ..good
            },
            "head_dim",
        ),
        (
            DifferentialConfig {
                lambda_init: LambdaInit::Layer(0),
                ..good
            },
            "counted from 1",
        ),
        (
            DifferentialConfig {
                lambda_init: LambdaInit::Value(f64::NAN),
                ..good
            },
            "not finite",
        ),
        (
            DifferentialConfig {
                rms_eps: 0.0,
                ..good
            },
            "rms_eps",
        ),
    ];
    for (config, expected) in cases {
        let err = DifferentialAttention::new(config, 0, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{config:?}: {err}");
    }
    let mixer = DifferentialAttention::new(good, 0, &Device::Cpu).unwrap();
    let (wrong_width, _) = random_input(1, 3, 5, 0);
    let err = mixer
        .step(&wrong_width, &mut DifferentialCache::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, n >= 1, 8]"), "{err}");
    let mut cache = DifferentialCache::new();
    mixer.step(&random_input(2, 3, 8, 0).0, &mut cache).unwrap();
    let err = mixer
        .step(&random_input(1, 1, 8, 0).0, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch of 2 sequences but the input has 1"),
        "{err}"
    );
}
