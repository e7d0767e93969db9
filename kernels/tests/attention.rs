//! Attention kernels against the f64 oracle, against themselves (decode vs prefill), and
//! against the mask (perturbing hidden keys changes nothing).

use std::time::Instant;

mod attention_case;

use attention_case::{
    case_strategy, check_decode_equals_prefill, check_only_visible_keys_change_rows, mask_strategy,
    max_error, tiles_strategy, Case,
};
use kernels::attention::{AttentionKernel, Mask, NaiveAttention, TiledAttention};
use proptest::prelude::*;

/// `ln Σ exp(scale · q·k)` over the keys each row sees, in f64.
fn reference_lse(case: &Case) -> Vec<f64> {
    let input = case.input();
    let d = case.head_dim;
    let mut lse = Vec::new();
    for h in 0..case.n_q_heads {
        let keys = input.k_head(h / input.group_size());
        for (i, query) in input.q_head(h).chunks_exact(d).enumerate() {
            let position = input.query_position(i);
            let scores: Vec<f64> = keys
                .chunks_exact(d)
                .enumerate()
                .filter(|&(k, _)| case.layer.mask.allows(position, k))
                .map(|(_, key)| {
                    let dot: f64 = query
                        .iter()
                        .zip(key)
                        .map(|(&q, &k)| f64::from(q) * f64::from(k))
                        .sum();
                    dot * f64::from(case.layer.scale)
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            lse.push(max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln());
        }
    }
    lse
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tiled_matches_naive(case in case_strategy(200), tiled in tiles_strategy()) {
        let want = case.run(&NaiveAttention);
        let got = case.run(&tiled);
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "error {error} with {tiled:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tiled_lse_matches_f64_reference(case in case_strategy(80), tiled in tiles_strategy()) {
        let mut out = vec![0.0; case.out_len()];
        let mut lse = vec![f32::NAN; case.n_q_heads * case.n_queries];
        tiled.forward_with_lse(&case.input(), &case.layer, &mut out, &mut lse).unwrap();
        prop_assert_eq!(&out, &case.run(&tiled));
        for (got, want) in lse.iter().zip(reference_lse(&case)) {
            let error = (f64::from(*got) - want).abs();
            prop_assert!(error <= 1e-4 * want.abs().max(1.0), "lse {got}, want {want}");
        }
    }

    #[test]
    fn decode_equals_prefill(case in case_strategy(60), tiled in tiles_strategy()) {
        let kernels: [(&dyn AttentionKernel, f32); 2] = [(&NaiveAttention, 0.0), (&tiled, 1e-5)];
        for (kernel, tolerance) in kernels {
            check_decode_equals_prefill(&case, kernel, tolerance)?;
        }
    }

    /// Changing the key and value at one cache position changes exactly the rows whose mask
    /// shows them that position; positions past `kv_len` are invisible to every row.
    #[test]
    fn only_visible_keys_change_a_row(
        case in case_strategy(24),
        tiled in tiles_strategy(),
        kv_head_seed in any::<u64>(),
    ) {
        let kv_head = (kv_head_seed % case.n_kv_heads as u64) as usize;
        let mask = case.layer.mask;
        let kernels: [&dyn AttentionKernel; 2] = [&NaiveAttention, &tiled];
        for kernel in kernels {
            check_only_visible_keys_change_rows(&case, kernel, kv_head, &|_, q, k| mask.allows(q, k))?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn masks_are_causal_and_visible_keys_agree(mask in mask_strategy()) {
        for q in 0..100 {
            let visible = mask.visible_keys(q);
            for k in 0..110 {
                let allowed = mask.allows(q, k);
                prop_assert!(!allowed || k <= q, "{mask:?} lets {q} see the future key {k}");
                prop_assert_eq!(visible.contains(&k), allowed, "{:?} q {} k {}", mask, q, k);
            }
            prop_assert!(mask.allows(q, q), "{mask:?} hides {q} from itself");
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let good = Case::random(7, 4, 2, 8, 3, 5, 6, Mask::Causal, 1.0);
    let broken = |what: &'static str, change: fn(&mut Case)| {
        let mut case = good.clone();
        change(&mut case);
        (what, case)
    };
    let bad_cases = [
        broken("short q", |c| c.q.truncate(c.q.len() - 1)),
        broken("short k", |c| c.k.truncate(c.k.len() - 1)),
        broken("short v", |c| c.v.truncate(c.v.len() - 1)),
        broken("3 q heads on 2 kv heads", |c| c.n_q_heads = 3),
        broken("no kv heads", |c| c.n_kv_heads = 0),
        broken("no q heads", |c| (c.n_q_heads, c.q) = (0, Vec::new())),
        broken("head_dim 0", |c| {
            (c.head_dim, c.q, c.k, c.v) = (0, vec![], vec![], vec![])
        }),
        broken("more queries than keys", |c| c.n_queries = 6),
        broken("kv_len past capacity", |c| c.kv_len = 7),
        broken("window 0", |c| {
            c.layer.mask = Mask::SlidingWindow { window: 0 }
        }),
        broken("chunk 0", |c| c.layer.mask = Mask::Chunked { chunk: 0 }),
    ];
    let kernels: [&dyn AttentionKernel; 2] = [&NaiveAttention, &TiledAttention::default()];
    for kernel in kernels {
        let mut out = vec![0.0; good.out_len()];
        kernel
            .forward(&good.input(), &good.layer, &mut out)
            .unwrap();
        let mut short_out = vec![0.0; good.out_len() - 1];
        assert!(kernel
            .forward(&good.input(), &good.layer, &mut short_out)
            .is_err());
        for (what, case) in &bad_cases {
            let mut out = vec![0.0; case.out_len()];
            let result = kernel.forward(&case.input(), &case.layer, &mut out);
            let error = result.expect_err(what).to_string();
            assert!(error.starts_with("attention"), "{what}: {error}");
        }
    }
    let mut out = vec![0.0; good.out_len()];
    let mut lse = vec![0.0; good.n_q_heads * good.n_queries + 1];
    let tiled = TiledAttention::default();
    assert!(tiled
        .forward_with_lse(&good.input(), &good.layer, &mut out, &mut lse)
        .is_err());
    assert!(TiledAttention::with_tiles(0, 64).is_err());
    assert!(TiledAttention::with_tiles(32, 0).is_err());
}

/// Prints median times for a causal prefill of 1024 tokens, 9 query heads on 3 KV heads,
/// head_dim 64. Run with `cargo test --release -p kernels --test attention -- --ignored
/// --nocapture`.
#[test]
#[ignore = "timing; run in release"]
fn prefill_speed() {
    let (t, heads, kv_heads, d) = (1024, 9, 3, 64);
    let case = Case::random(1, heads, kv_heads, d, t, t, t, Mask::Causal, 1.0);
    let median = |kernel: &dyn AttentionKernel, runs: usize| {
        let mut out = vec![0.0; case.out_len()];
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                kernel
                    .forward(&case.input(), &case.layer, &mut out)
                    .unwrap();
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        (times[runs / 2], out)
    };
    let (naive, want) = median(&NaiveAttention, 3);
    let flops = 4.0 * (t * t) as f64 / 2.0 * d as f64 * heads as f64;
    println!("naive: {:.2} ms", naive * 1e3);
    for (name, kernel) in [
        ("tiled", TiledAttention::default()),
        ("tiled portable", TiledAttention::default().portable()),
    ] {
        let (time, got) = median(&kernel, 21);
        println!(
            "{name}: {:.2} ms, {:.1} GFLOP/s, {:.0}x naive",
            time * 1e3,
            flops / time / 1e9,
            naive / time
        );
        assert!(max_error(&case, &got, &want) <= 1e-4);
    }
}
