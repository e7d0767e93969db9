//! Multi-Token Attention against an f64 reference written from the paper's formula, decode
//! against forward, causality, gradients, and the identity kernel against plain attention.

mod mechanisms;

use candle_core::{Device, Tensor};
use kernels::trainable::mta::{MtaCache, MtaConfig, MultiTokenAttention};
use kernels::trainable::Mixer;
use mechanisms::*;
use proptest::prelude::*;

/// Multi-Token Attention in f64, loop by loop, on `x` `[batch, seq, d_model]`.
fn reference(mta: &MultiTokenAttention, x: &[f64], batch: usize, seq: usize) -> Vec<f64> {
    let c = *mta.config();
    let p = mta.parameters();
    let (dm, h, dh) = (c.d_model, c.n_heads, c.head_dim);
    let (w_q, w_k, w_v, w_o) = (
        param(p, "w_q"),
        param(p, "w_k"),
        param(p, "w_v"),
        param(p, "w_o"),
    );
    let (conv, mix) = (param(p, "conv"), param(p, "mix"));
    let (cq, ck, g) = (c.query_kernel, c.key_kernel, c.mix_group);
    let half = ck as isize / 2;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = Vec::new();
    for b in 0..batch {
        let xb = &x[b * seq * dm..(b + 1) * seq * dm];
        let (q, k, v) = (
            matmul(xb, seq, dm, &w_q, h * dh),
            matmul(xb, seq, dm, &w_k, h * dh),
            matmul(xb, seq, dm, &w_v, h * dh),
        );
        let head = |m: &[f64], t: usize, head: usize| m[t * h * dh + head * dh..][..dh].to_vec();
        // Zero-masked scores, zero outside the map too.
        let s0 = |head_i: usize, i: isize, j: isize| -> f64 {
            if i < 0 || j < 0 || j > i || i >= seq as isize {
                0.0
            } else {
                dot(&head(&q, i as usize, head_i), &head(&k, j as usize, head_i)) * scale
            }
        };
        // weights[head][i][j]
        let mut weights = vec![vec![vec![0.0; seq]; seq]; h];
        for (hi, head_weights) in weights.iter_mut().enumerate() {
            for (i, row) in head_weights.iter_mut().enumerate() {
                let mut scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let mut sum = 0.0;
                        for a in 0..cq {
                            for bk in 0..ck {
                                let theta = conv[(hi * cq + a) * ck + bk];
                                sum += theta
                                    * s0(
                                        hi,
                                        i as isize - a as isize,
                                        j as isize + half - bk as isize,
                                    );
                            }
                        }
                        sum
                    })
                    .collect();
                softmax(&mut scores);
                row[..=i].copy_from_slice(&scores);
            }
        }
        let mut heads_out = vec![0.0; seq * h * dh];
        for hi in 0..h {
            // Consecutive groups of g heads, the last one of the remaining heads; `mix` holds
            // each group's size × size matrix in turn.
            let (first, row) = (hi / g * g, hi % g);
            let size = g.min(h - first);
            for i in 0..seq {
                for j in 0..seq {
                    let w: f64 = (0..size)
                        .map(|col| mix[first * g + row * size + col] * weights[first + col][i][j])
                        .sum();
                    for e in 0..dh {
                        heads_out[i * h * dh + hi * dh + e] += w * v[j * h * dh + hi * dh + e];
                    }
                }
            }
        }
        out.extend(matmul(&heads_out, seq, h * dh, &w_o, dm));
    }
    out
}

/// Plain softmax attention in f64 with the same projections.
fn standard_attention(mta: &MultiTokenAttention, x: &[f64], batch: usize, seq: usize) -> Vec<f64> {
    let c = *mta.config();
    let p = mta.parameters();
    let (dm, h, dh) = (c.d_model, c.n_heads, c.head_dim);
    let w = |n: &str| param(p, n);
    let mut out = Vec::new();
    for b in 0..batch {
        let xb = &x[b * seq * dm..(b + 1) * seq * dm];
        let (q, k, v) = (
            matmul(xb, seq, dm, &w("w_q"), h * dh),
            matmul(xb, seq, dm, &w("w_k"), h * dh),
            matmul(xb, seq, dm, &w("w_v"), h * dh),
        );
        let mut heads_out = vec![0.0; seq * h * dh];
        for hi in 0..h {
            for i in 0..seq {
                let qi = &q[i * h * dh + hi * dh..][..dh];
                let mut scores: Vec<f64> = (0..=i)
                    .map(|j| dot(qi, &k[j * h * dh + hi * dh..][..dh]) / (dh as f64).sqrt())
                    .collect();
                softmax(&mut scores);
                for (j, s) in scores.iter().enumerate() {
                    for e in 0..dh {
                        heads_out[i * h * dh + hi * dh + e] += s * v[j * h * dh + hi * dh + e];
                    }
                }
            }
        }
        out.extend(matmul(&heads_out, seq, h * dh, &w("w_o"), dm));
    }
    out
}

fn config_strategy() -> impl Strategy<Value = MtaConfig> {
    (
        1usize..6,
        1usize..4,
        1usize..6,
        1usize..4,
        1usize..6,
        1usize..9,
    )
        .prop_map(
            |(n_heads, group, head_dim, query_kernel, key_kernel, d_model)| MtaConfig {
                d_model,
                n_heads,
                head_dim,
                query_kernel,
                key_kernel,
                mix_group: group,
            },
        )
}

/// A mixer whose convolution and mixing are random, not the identity they start at.
fn random_mta(config: MtaConfig, seed: u64) -> MultiTokenAttention {
    let mta = MultiTokenAttention::new(config, seed, &Device::Cpu).unwrap();
    randomize(mta.parameters(), "conv", 0.8, seed + 1);
    randomize(mta.parameters(), "mix", 0.8, seed + 2);
    mta
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn forward_matches_the_reference(
        config in config_strategy(), batch in 1usize..3, seq in 1usize..11, seed in 0u64..1000,
    ) {
        let mta = random_mta(config, seed);
        let (x, x64) = random_input(batch, seq, config.d_model, seed + 3);
        let y = to_f64(&mta.forward(&x).unwrap());
        assert_close(&y, &reference(&mta, &x64, batch, seq), 1e-4, "forward vs reference");
    }

    #[test]
    fn decode_matches_forward(
        config in config_strategy(), batch in 1usize..3, seq in 1usize..11, seed in 0u64..1000,
    ) {
        let mta = random_mta(config, seed);
        let (x, _) = random_input(batch, seq, config.d_model, seed + 3);
        let mut cache = MtaCache::new();
        assert_decode_matches(
            &mta.forward(&x).unwrap(),
            &x,
            |token| mta.step(token, &mut cache).unwrap(),
            "token-by-token decode vs forward",
        );
        prop_assert_eq!(cache.len(), seq);
    }

    #[test]
    fn later_tokens_do_not_move_earlier_outputs(
        config in config_strategy(), seq in 2usize..11, position in 1usize..10, seed in 0u64..1000,
    ) {
        let position = position.min(seq - 1);
        let mta = random_mta(config, seed);
        let (x, _) = random_input(2, seq, config.d_model, seed + 3);
        assert_causal(|x| mta.forward(x).unwrap(), &x, position);
    }
}

#[test]
fn decoding_in_uneven_chunks_matches_forward() {
    let config = MtaConfig {
        d_model: 12,
        n_heads: 4,
        head_dim: 3,
        query_kernel: 3,
        key_kernel: 5,
        mix_group: 2,
    };
    let mta = random_mta(config, 5);
    let (x, _) = random_input(2, 13, 12, 6);
    let mut cache = MtaCache::new();
    let chunks: Vec<Tensor> = [(0, 1), (1, 5), (6, 2), (8, 5)]
        .iter()
        .map(|&(start, len)| {
            mta.step(&x.narrow(1, start, len).unwrap(), &mut cache)
                .unwrap()
        })
        .collect();
    let decoded = Tensor::cat(&chunks, 1).unwrap();
    assert_close(
        &to_f64(&decoded),
        &to_f64(&mta.forward(&x).unwrap()),
        1e-4,
        "chunked decode vs forward",
    );
}

#[test]
fn identity_kernel_and_mixing_give_standard_attention() {
    let config = MtaConfig {
        d_model: 10,
        // A full group of 4 and a last group of 1.
        n_heads: 5,
        head_dim: 4,
        query_kernel: 3,
        key_kernel: 4,
        mix_group: 4,
    };
    let mta = MultiTokenAttention::new(config, 11, &Device::Cpu).unwrap();
    let (x, x64) = random_input(2, 9, 10, 12);
    let y = to_f64(&mta.forward(&x).unwrap());
    assert_close(
        &y,
        &standard_attention(&mta, &x64, 2, 9),
        1e-5,
        "identity MTA",
    );
    // And the random kernel is not: the test above can tell them apart.
    let random = random_mta(config, 11);
    let y = to_f64(&random.forward(&x).unwrap());
    let standard = standard_attention(&random, &x64, 2, 9);
    let gap = y
        .iter()
        .zip(&standard)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        gap > 1e-3,
        "a random kernel left attention unchanged ({gap:.2e})"
    );
}

#[test]
fn gradients_reach_every_parameter() {
    let config = MtaConfig {
        d_model: 8,
        n_heads: 5,
        head_dim: 3,
        query_kernel: 2,
        key_kernel: 3,
        mix_group: 2,
    };
    let (x, _) = random_input(2, 7, 8, 3);
    assert_gradients_reach_every_parameter(
        &MultiTokenAttention::new(config, 1, &Device::Cpu).unwrap(),
        &x,
    );
    assert_gradients_reach_every_parameter(&random_mta(config, 2), &x);
}

#[test]
fn bad_configs_are_rejected_with_the_field_to_fix() {
    let good = MtaConfig {
        d_model: 8,
        n_heads: 4,
        head_dim: 2,
        query_kernel: 2,
        key_kernel: 3,
        mix_group: 2,
    };
    let cases = [
        (MtaConfig { n_heads: 0, ..good }, "n_heads"),
        (
            MtaConfig {
                query_kernel: 0,
                ..good
            },
            "query_kernel",
        ),
        (
            MtaConfig {
                key_kernel: 0,
                ..good
            },
            "key_kernel",
        ),
        (
            MtaConfig {
                mix_group: 0,
                ..good
            },
            "mix_group",
        ),
    ];
    for (config, expected) in cases {
        let err = MultiTokenAttention::new(config, 0, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{config:?}: {err}");
    }
    let mta = MultiTokenAttention::new(good, 0, &Device::Cpu).unwrap();
    let (wrong_width, _) = random_input(1, 3, 5, 0);
    let err = mta
        .step(&wrong_width, &mut MtaCache::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, n >= 1, 8]"), "{err}");
    let mut cache = MtaCache::new();
    mta.step(&random_input(2, 3, 8, 0).0, &mut cache).unwrap();
    let err = mta
        .step(&random_input(1, 1, 8, 0).0, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch of 2 sequences but the input has 1"),
        "{err}"
    );
}
