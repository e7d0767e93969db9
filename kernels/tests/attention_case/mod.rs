//! The attention tests' shared case: one layer's queries and KV cache with random contents,
//! the strategies that draw them, and the checks every kernel must pass (f64 reference,
//! decode against prefill, causality).
#![allow(dead_code)]

use kernels::attention::{AttentionInput, AttentionKernel, LayerAttention, Mask, TiledAttention};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One layer's queries and KV cache, owned, with random contents.
#[derive(Clone, Debug)]
pub struct Case {
    pub n_q_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_queries: usize,
    pub kv_len: usize,
    pub kv_capacity: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub layer: LayerAttention,
}

impl Case {
    /// Random values in `[-1, 1)`; `sharpness` scales the scores, so a large one makes the
    /// softmax peaked (and the running max move).
    #[allow(clippy::too_many_arguments)]
    pub fn random(
        seed: u64,
        n_q_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_queries: usize,
        kv_len: usize,
        kv_capacity: usize,
        mask: Mask,
        sharpness: f32,
    ) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let q = values(n_q_heads * n_queries * head_dim);
        let k = values(n_kv_heads * kv_capacity * head_dim);
        let v = values(n_kv_heads * kv_capacity * head_dim);
        Case {
            n_q_heads,
            n_kv_heads,
            head_dim,
            n_queries,
            kv_len,
            kv_capacity,
            q,
            k,
            v,
            layer: LayerAttention {
                scale: sharpness / (head_dim as f32).sqrt(),
                mask,
            },
        }
    }

    pub fn input(&self) -> AttentionInput<'_> {
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

    pub fn out_len(&self) -> usize {
        self.n_q_heads * self.n_queries * self.head_dim
    }

    pub fn run(&self, kernel: &dyn AttentionKernel) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.out_len()];
        kernel
            .forward(&self.input(), &self.layer, &mut out)
            .unwrap();
        out
    }

    /// The decode call for query row `i`: the cache cut at that row's position.
    pub fn decode_step(&self, i: usize) -> Case {
        let position = self.kv_len - self.n_queries + i;
        let d = self.head_dim;
        let q = (0..self.n_q_heads)
            .flat_map(|h| {
                let start = (h * self.n_queries + i) * d;
                self.q[start..start + d].iter().copied()
            })
            .collect();
        Case {
            n_queries: 1,
            kv_len: position + 1,
            q,
            ..self.clone()
        }
    }
}

pub fn mask_strategy() -> impl Strategy<Value = Mask> {
    prop_oneof![
        Just(Mask::Causal),
        (1usize..40).prop_map(|window| Mask::SlidingWindow { window }),
        (1usize..40).prop_map(|chunk| Mask::Chunked { chunk }),
    ]
}

/// Shapes the kernels must handle: odd head dims, GQA ratios 1 to 4, lengths that are not
/// multiples of any tile, spare cache capacity.
pub fn case_strategy(max_kv_len: usize) -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        1usize..=3,
        prop::sample::select(vec![1usize, 2, 3, 4]),
        prop::sample::select(vec![1usize, 3, 8, 24, 64, 80]),
        1..=max_kv_len,
        0usize..=100,
        0usize..4,
        mask_strategy(),
        prop::sample::select(vec![0.5f32, 1.0, 8.0]),
    )
        .prop_map(
            |(seed, n_kv_heads, ratio, head_dim, kv_len, query_share, spare, mask, sharpness)| {
                let n_queries = (kv_len * query_share / 100).max(1);
                Case::random(
                    seed,
                    n_kv_heads * ratio,
                    n_kv_heads,
                    head_dim,
                    n_queries,
                    kv_len,
                    kv_len + spare,
                    mask,
                    sharpness,
                )
            },
        )
}

/// The default tiles and odd ones, each with the run-time chosen SIMD and portable.
pub fn tiles_strategy() -> impl Strategy<Value = TiledAttention> {
    let tiles = prop_oneof![
        Just(TiledAttention::default()),
        (1usize..40, 1usize..70)
            .prop_map(|(q_tile, kv_tile)| TiledAttention::with_tiles(q_tile, kv_tile).unwrap()),
    ];
    (tiles, any::<bool>()).prop_map(
        |(kernel, portable)| {
            if portable {
                kernel.portable()
            } else {
                kernel
            }
        },
    )
}

/// Largest difference, relative to the largest value in V (outputs are convex mixes of V).
pub fn max_error(case: &Case, got: &[f32], want: &[f32]) -> f32 {
    let value_scale = case.v.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
    diff / value_scale.max(f32::MIN_POSITIVE)
}

impl Case {
    /// Row `i` of every query head, `[n_q_heads, head_dim]`: the shape of its decode call.
    pub fn row_of(&self, out: &[f32], i: usize) -> Vec<f32> {
        let d = self.head_dim;
        (0..self.n_q_heads)
            .flat_map(|h| {
                let start = (h * self.n_queries + i) * d;
                out[start..start + d].iter().copied()
            })
            .collect()
    }

    /// The case with the key and value at every cache position from `cut` on changed.
    pub fn with_future_changed(&self, cut: usize) -> Case {
        let mut changed = self.clone();
        let d = self.head_dim;
        for kv_head in 0..self.n_kv_heads {
            for position in cut..self.kv_capacity {
                let start = (kv_head * self.kv_capacity + position) * d;
                for x in start..start + d {
                    changed.k[x] += 0.75;
                    changed.v[x] -= 3.0;
                }
            }
        }
        changed
    }
}

/// Decoding one query at a time over the growing cache gives the prefill's rows.
pub fn check_decode_equals_prefill(
    case: &Case,
    kernel: &dyn AttentionKernel,
    tolerance: f32,
) -> Result<(), TestCaseError> {
    let prefill = case.run(kernel);
    for i in 0..case.n_queries {
        let decoded = case.decode_step(i).run(kernel);
        let error = max_error(case, &decoded, &case.row_of(&prefill, i));
        prop_assert!(
            error <= tolerance,
            "{} row {i}: decode differs from prefill by {error}",
            kernel.name()
        );
    }
    Ok(())
}

/// Changing every key and value from position `cut` on leaves the rows of earlier queries
/// exactly as they were.
pub fn check_causal(
    case: &Case,
    kernel: &dyn AttentionKernel,
    cut: usize,
) -> Result<(), TestCaseError> {
    let before = case.run(kernel);
    let after = case.with_future_changed(cut).run(kernel);
    let input = case.input();
    let d = case.head_dim;
    for h in 0..case.n_q_heads {
        for i in 0..case.n_queries {
            if input.query_position(i) < cut {
                let row = (h * case.n_queries + i) * d..(h * case.n_queries + i + 1) * d;
                prop_assert!(
                    before[row.clone()] == after[row],
                    "{}: head {h} row {i} (position {}) moved when keys from {cut} changed",
                    kernel.name(),
                    input.query_position(i)
                );
            }
        }
    }
    Ok(())
}

/// Changing the key and value at one position of KV head `kv_head` changes exactly the rows
/// that `visible(query head, query position, key position)` says see it; positions past
/// `kv_len` are invisible to every row. The layer's scale is made small first, so that every
/// visible key's weight is large enough for the change to show.
pub fn check_only_visible_keys_change_rows(
    case: &Case,
    kernel: &dyn AttentionKernel,
    kv_head: usize,
    visible: &dyn Fn(usize, usize, usize) -> bool,
) -> Result<(), TestCaseError> {
    let flat = Case {
        layer: LayerAttention {
            scale: 0.1,
            ..case.layer
        },
        ..case.clone()
    };
    let input = flat.input();
    let d = flat.head_dim;
    let before = flat.run(kernel);
    for position in 0..flat.kv_capacity {
        let mut perturbed = flat.clone();
        let start = (kv_head * flat.kv_capacity + position) * d;
        for x in start..start + d {
            perturbed.k[x] += 0.5;
            perturbed.v[x] += 4.0;
        }
        let after = perturbed.run(kernel);
        for h in 0..flat.n_q_heads {
            for i in 0..flat.n_queries {
                let row = (h * flat.n_queries + i) * d..(h * flat.n_queries + i + 1) * d;
                let shown = h / input.group_size() == kv_head
                    && position < flat.kv_len
                    && visible(h, input.query_position(i), position);
                let changed = before[row.clone()] != after[row];
                prop_assert_eq!(
                    changed,
                    shown,
                    "{}: head {} row {} key {}",
                    kernel.name(),
                    h,
                    i,
                    position
                );
            }
        }
    }
    Ok(())
}
