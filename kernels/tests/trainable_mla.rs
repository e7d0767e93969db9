//! MLA against an f64 reference of the paper's equations; forward, naive decode and absorbed
//! decode against each other; causality and gradients.

mod mechanisms;

use candle_core::{Device, Tensor};
use kernels::trainable::mla::{Mla, MlaCache, MlaConfig};
use kernels::trainable::Mixer;
use mechanisms::*;
use proptest::prelude::*;

/// RoPE on the two halves of `x`, at `position`.
fn rope(x: &[f64], position: usize, base: f64) -> Vec<f64> {
    let half = x.len() / 2;
    let mut out = x.to_vec();
    for i in 0..half {
        let angle = position as f64 * base.powf(-(2.0 * i as f64) / x.len() as f64);
        let (cos, sin) = (angle.cos(), angle.sin());
        out[i] = x[i] * cos - x[i + half] * sin;
        out[i + half] = x[i + half] * cos + x[i] * sin;
    }
    out
}

/// MLA in f64 on `x` `[batch, seq, d_model]`, rebuilding keys and values from latents.
fn reference(mla: &Mla, x: &[f64], batch: usize, seq: usize) -> Vec<f64> {
    let c = *mla.config();
    let p = mla.parameters();
    let w = |n: &str| param(p, n);
    let (dm, h, dh, dr, dv, r) = (
        c.d_model,
        c.n_heads,
        c.head_dim,
        c.rope_dim,
        c.value_dim,
        c.kv_rank,
    );
    let scale = 1.0 / ((dh + dr) as f64).sqrt();
    let mut out = Vec::new();
    for b in 0..batch {
        let xb = &x[b * seq * dm..(b + 1) * seq * dm];
        let latents = matmul(xb, seq, dm, &w("w_dkv"), r);
        let keys = matmul(&latents, seq, r, &w("w_uk"), h * dh);
        let values = matmul(&latents, seq, r, &w("w_uv"), h * dv);
        let queries = matmul(xb, seq, dm, &w("w_q"), h * dh);
        let rope_queries = matmul(xb, seq, dm, &w("w_qr"), h * dr);
        let rope_keys = matmul(xb, seq, dm, &w("w_kr"), dr);
        let mut heads = vec![0.0; seq * h * dv];
        for hi in 0..h {
            for i in 0..seq {
                let qr = rope(&rope_queries[(i * h + hi) * dr..][..dr], i, c.rope_base);
                let mut scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kr = rope(&rope_keys[j * dr..][..dr], j, c.rope_base);
                        (dot(
                            &queries[(i * h + hi) * dh..][..dh],
                            &keys[(j * h + hi) * dh..][..dh],
                        ) + dot(&qr, &kr))
                            * scale
                    })
                    .collect();
                softmax(&mut scores);
                for (j, s) in scores.iter().enumerate() {
                    for e in 0..dv {
                        heads[(i * h + hi) * dv + e] += s * values[(j * h + hi) * dv + e];
                    }
                }
            }
        }
        out.extend(matmul(&heads, seq, h * dv, &w("w_o"), dm));
    }
    out
}

fn config_strategy() -> impl Strategy<Value = MlaConfig> {
    (
        2usize..10,
        1usize..4,
        1usize..5,
        1usize..3,
        1usize..5,
        1usize..10,
    )
        .prop_map(
            |(d_model, n_heads, head_dim, rope_pairs, value_dim, kv_rank)| MlaConfig {
                d_model,
                n_heads,
                head_dim,
                rope_dim: 2 * rope_pairs,
                value_dim,
                kv_rank: kv_rank.min(d_model),
                rope_base: 10_000.0,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn forward_matches_the_reference(
        config in config_strategy(), batch in 1usize..3, seq in 1usize..11, seed in 0u64..1000,
    ) {
        let mla = Mla::new(config, seed, &Device::Cpu).unwrap();
        let (x, x64) = random_input(batch, seq, config.d_model, seed + 1);
        let y = to_f64(&mla.forward(&x).unwrap());
        assert_close(&y, &reference(&mla, &x64, batch, seq), 1e-4, "forward vs reference");
    }

    #[test]
    fn naive_and_absorbed_decode_match_forward(
        config in config_strategy(), batch in 1usize..3, seq in 1usize..11, seed in 0u64..1000,
    ) {
        let mla = Mla::new(config, seed, &Device::Cpu).unwrap();
        let (x, _) = random_input(batch, seq, config.d_model, seed + 1);
        let forward = mla.forward(&x).unwrap();
        let mut cache = MlaCache::new();
        assert_decode_matches(
            &forward,
            &x,
            |token| mla.step(token, &mut cache).unwrap(),
            "naive decode vs forward",
        );
        let absorbed = mla.absorbed().unwrap();
        let mut cache = MlaCache::new();
        assert_decode_matches(
            &forward,
            &x,
            |token| absorbed.step(token, &mut cache).unwrap(),
            "absorbed decode vs forward",
        );
        prop_assert_eq!(cache.len(), seq);
    }

    #[test]
    fn later_tokens_do_not_move_earlier_outputs(
        config in config_strategy(), seq in 2usize..11, position in 1usize..10, seed in 0u64..1000,
    ) {
        let position = position.min(seq - 1);
        let mla = Mla::new(config, seed, &Device::Cpu).unwrap();
        let (x, _) = random_input(2, seq, config.d_model, seed + 1);
        assert_causal(|x| mla.forward(x).unwrap(), &x, position);
    }
}

#[test]
fn absorbed_prefill_in_chunks_matches_forward() {
    let config = MlaConfig {
        d_model: 16,
        n_heads: 3,
        head_dim: 4,
        rope_dim: 4,
        value_dim: 5,
        kv_rank: 6,
        rope_base: 100.0,
    };
    let mla = Mla::new(config, 3, &Device::Cpu).unwrap();
    let absorbed = mla.absorbed().unwrap();
    let (x, _) = random_input(2, 12, 16, 4);
    let mut cache = MlaCache::new();
    let chunks: Vec<Tensor> = [(0, 5), (5, 1), (6, 6)]
        .iter()
        .map(|&(start, len)| {
            absorbed
                .step(&x.narrow(1, start, len).unwrap(), &mut cache)
                .unwrap()
        })
        .collect();
    assert_close(
        &to_f64(&Tensor::cat(&chunks, 1).unwrap()),
        &to_f64(&mla.forward(&x).unwrap()),
        1e-4,
        "absorbed chunks vs forward",
    );
}

#[test]
fn gradients_reach_every_parameter() {
    let config = MlaConfig {
        d_model: 8,
        n_heads: 2,
        head_dim: 3,
        rope_dim: 2,
        value_dim: 3,
        kv_rank: 4,
        rope_base: 10_000.0,
    };
    let (x, _) = random_input(2, 6, 8, 5);
    assert_gradients_reach_every_parameter(&Mla::new(config, 1, &Device::Cpu).unwrap(), &x);
}

#[test]
fn bad_configs_are_rejected_with_the_field_to_fix() {
    let good = MlaConfig {
        d_model: 8,
        n_heads: 2,
        head_dim: 3,
        rope_dim: 2,
        value_dim: 3,
        kv_rank: 4,
        rope_base: 10_000.0,
    };
    let cases = [
        (
            MlaConfig { n_heads: 0, ..good },
            "n_heads must be at least 1",
        ),
        (
            MlaConfig { kv_rank: 0, ..good },
            "kv_rank must be at least 1",
        ),
        (
            MlaConfig { kv_rank: 9, ..good },
            "kv_rank 9 exceeds d_model 8",
        ),
        (
            MlaConfig {
                rope_dim: 3,
                ..good
            },
            "rope_dim 3 must be even",
        ),
        (
            MlaConfig {
                rope_base: 0.5,
                ..good
            },
            "rope_base",
        ),
    ];
    for (config, expected) in cases {
        let err = Mla::new(config, 0, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(expected), "{config:?}: {err}");
    }
    let mixer = Mla::new(good, 0, &Device::Cpu).unwrap();
    let (wrong_width, _) = random_input(1, 3, 5, 0);
    let err = mixer
        .step(&wrong_width, &mut MlaCache::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, n >= 1, 8]"), "{err}");
    let mut cache = MlaCache::new();
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
