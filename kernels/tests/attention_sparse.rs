//! The training-free sparse kernels against their f64 twins, against themselves (decode vs
//! prefill) and against causality; every rule's `coverage` against brute force.

mod attention_case;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use attention_case::{
    case_strategy, check_causal, check_decode_equals_prefill, check_only_visible_keys_change_rows,
    max_error, tiles_strategy, Case,
};
use kernels::attention::{
    merge_partial, AttentionInput, AttentionKernel, Coverage, HeadMix, KeyRule, Mask,
    NaiveAttention, PageSummary, RuleAttention, ScoreModifier, SinkWindow, StarAttention, StarRule,
    TiledAttention, TopKPages,
};
use kernels::Error;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Keys whose position modulo `period` is below `shown`: a rule with many holes, under which
/// a row can see no key at all. Its coverage is brute force, so exact.
#[derive(Debug)]
struct Stripes {
    period: usize,
    shown: usize,
}

impl KeyRule for Stripes {
    fn allows(&self, _q: usize, k: usize) -> bool {
        k % self.period < self.shown
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        brute_force_coverage(self, queries, keys)
    }
}

/// Keys in any of the ranges, for every query.
#[derive(Debug)]
struct KeyRanges(Vec<Range<usize>>);

impl KeyRule for KeyRanges {
    fn allows(&self, _q: usize, k: usize) -> bool {
        self.0.iter().any(|range| range.contains(&k))
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        brute_force_coverage(self, queries, keys)
    }
}

/// ALiBi-like bias with a slope per head, then soft-capping: a modifier that depends on
/// the head and both positions.
#[derive(Debug)]
struct BiasAndCap;

impl ScoreModifier for BiasAndCap {
    fn modify(&self, head: usize, q: usize, k: usize, score: f32) -> f32 {
        let biased = score - 0.05 * (head + 1) as f32 * (q - k) as f32;
        4.0 * (biased / 4.0).tanh()
    }
}

fn brute_force_coverage(rule: &dyn KeyRule, queries: Range<usize>, keys: Range<usize>) -> Coverage {
    let pairs: Vec<bool> = queries
        .flat_map(|q| keys.clone().map(move |k| (q, k)))
        .map(|(q, k)| rule.allows(q, k))
        .collect();
    if pairs.iter().all(|&allowed| allowed) {
        Coverage::Full
    } else if pairs.iter().any(|&allowed| allowed) {
        Coverage::Partial
    } else {
        Coverage::Empty
    }
}

/// Every position-only rule these kernels run, with the parameter ranges tests draw.
fn rule_strategy() -> impl Strategy<Value = Arc<dyn KeyRule>> {
    prop_oneof![
        (0usize..12, 1usize..40).prop_map(|(sinks, window)| {
            Arc::new(SinkWindow::new(sinks, window).unwrap()) as Arc<dyn KeyRule>
        }),
        (1usize..40)
            .prop_map(|window| Arc::new(Mask::SlidingWindow { window }) as Arc<dyn KeyRule>),
        (1usize..40).prop_map(|chunk| Arc::new(Mask::Chunked { chunk }) as Arc<dyn KeyRule>),
        (1usize..20, 0usize..80).prop_map(|(block, context_len)| {
            Arc::new(StarRule::new(block, context_len).unwrap()) as Arc<dyn KeyRule>
        }),
        (1usize..9, 0usize..9).prop_map(|(period, shown)| {
            Arc::new(Stripes {
                period,
                shown: shown.min(period),
            }) as Arc<dyn KeyRule>
        }),
    ]
}

fn rule_kernel(rule: Arc<dyn KeyRule>, modified: bool, engine: TiledAttention) -> RuleAttention {
    let modifier = modified.then(|| Arc::new(BiasAndCap) as Arc<dyn ScoreModifier>);
    RuleAttention::new("rule", rule, modifier)
        .unwrap()
        .with_engine(engine)
}

/// The f64 twin of a rule kernel, with log-sum-exp.
fn reference(case: &Case, kernel: &RuleAttention) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![f32::NAN; case.out_len()];
    let mut lse = vec![f32::NAN; case.n_q_heads * case.n_queries];
    NaiveAttention
        .forward_rule(
            &case.input(),
            &case.layer,
            kernel.rule(),
            kernel.modifier(),
            &mut out,
            Some(&mut lse),
        )
        .unwrap();
    (out, lse)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Sound for every rule (Full ⇒ all pairs allowed, Empty ⇒ none), and exact for
    /// `SinkWindow`.
    #[test]
    fn coverage_is_sound(
        rule in rule_strategy(),
        rectangles in prop::collection::vec((0usize..80, 1usize..40, 0usize..80, 1usize..40), 32),
    ) {
        for (q0, q_len, k0, k_len) in rectangles {
            let (queries, keys) = (q0..q0 + q_len, k0..k0 + k_len);
            let claimed = rule.coverage(queries.clone(), keys.clone());
            let truth = brute_force_coverage(rule.as_ref(), queries.clone(), keys.clone());
            prop_assert!(
                claimed == Coverage::Partial || claimed == truth,
                "{rule:?} over {queries:?} × {keys:?}: claims {claimed:?}, truth {truth:?}"
            );
        }
    }

    #[test]
    fn sink_window_coverage_is_exact(
        sinks in 0usize..12,
        window in 1usize..40,
        rectangles in prop::collection::vec((0usize..80, 1usize..40, 0usize..80, 1usize..40), 32),
    ) {
        let rule = SinkWindow::new(sinks, window).unwrap();
        for (q0, q_len, k0, k_len) in rectangles {
            let (queries, keys) = (q0..q0 + q_len, k0..k0 + k_len);
            prop_assert_eq!(
                rule.coverage(queries.clone(), keys.clone()),
                brute_force_coverage(&rule, queries, keys)
            );
        }
    }

    /// Under the causal mask no rule shows a future key, and a rule only hides keys.
    #[test]
    fn rules_under_causal_mask_never_show_the_future(rule in rule_strategy()) {
        for q in 0..90 {
            for k in q + 1..100 {
                prop_assert!(!(Mask::Causal.allows(q, k) && rule.allows(q, k)));
            }
        }
    }

    #[test]
    fn rule_kernel_matches_f64_twin(
        case in case_strategy(150),
        rule in rule_strategy(),
        modified in any::<bool>(),
        engine in tiles_strategy(),
    ) {
        let kernel = rule_kernel(rule, modified, engine);
        let (want, want_lse) = reference(&case, &kernel);
        let mut got = vec![f32::NAN; case.out_len()];
        let mut lse = vec![f32::NAN; case.n_q_heads * case.n_queries];
        kernel.forward_with_lse(&case.input(), &case.layer, &mut got, &mut lse).unwrap();
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "error {error} with {kernel:?}");
        prop_assert_eq!(&got, &case.run(&kernel));
        for (got, want) in lse.iter().zip(&want_lse) {
            if *want == f32::NEG_INFINITY {
                prop_assert_eq!(*got, f32::NEG_INFINITY);
            } else {
                let error = (got - want).abs();
                prop_assert!(error <= 1e-4 * want.abs().max(1.0), "lse {got}, want {want}");
            }
        }
    }

    #[test]
    fn rule_kernel_decode_equals_prefill_and_is_causal(
        case in case_strategy(60),
        rule in rule_strategy(),
        modified in any::<bool>(),
        engine in tiles_strategy(),
        cut_share in 0usize..=100,
    ) {
        let kernel = rule_kernel(rule.clone(), modified, engine);
        check_decode_equals_prefill(&case, &kernel, 1e-5)?;
        check_causal(&case, &kernel, case.kv_len * cut_share / 100)?;
    }

    /// Exactly the keys the mask and the rule both show move a row.
    #[test]
    fn rule_kernel_rows_move_with_exactly_their_visible_keys(
        case in case_strategy(24),
        rule in rule_strategy(),
        engine in tiles_strategy(),
        kv_head_seed in any::<usize>(),
    ) {
        let kernel = rule_kernel(rule.clone(), false, engine);
        let mask = case.layer.mask;
        let visible = |_: usize, q: usize, k: usize| mask.allows(q, k) && rule.allows(q, k);
        let kv_head = kv_head_seed % case.n_kv_heads;
        check_only_visible_keys_change_rows(&case, &kernel, kv_head, &visible)?;
        let star = StarAttention::new(1 + kv_head_seed % 7, kv_head_seed % 30)
            .unwrap()
            .with_engine(engine);
        let star_rule = star.rule();
        let visible = |_: usize, q: usize, k: usize| mask.allows(q, k) && star_rule.allows(q, k);
        check_only_visible_keys_change_rows(&case, &star, kv_head, &visible)?;
    }
}

/// Positions for the slots of `case` as a cache that dropped keys holds them: increasing,
/// with gaps of up to `max_gap` before each key, the queries' slots consecutive at the end.
fn held_positions(case: &Case, seed: u64, max_gap: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let first_query = case.kv_len - case.n_queries;
    let mut next = 0;
    (0..case.kv_len)
        .map(|slot| {
            if slot <= first_query {
                next += rng.random_range(0..=max_gap);
            }
            next += 1;
            next - 1
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// On a cache that dropped keys, the tiled engine (with a rule, and exact with the
    /// layer's mask alone) matches the f64 twin, which reads each slot's position key by
    /// key: tiles planned over slots with the coverage of the positions they span.
    #[test]
    fn kernels_over_held_keys_match_f64_twin(
        case in case_strategy(150),
        rule in rule_strategy(),
        modified in any::<bool>(),
        engine in tiles_strategy(),
        seed in any::<u64>(),
        max_gap in 0usize..40,
    ) {
        let positions = held_positions(&case, seed, max_gap);
        let input = AttentionInput {
            key_positions: Some(&positions),
            ..case.input()
        };
        let kernel = rule_kernel(rule.clone(), modified, engine);
        let (mut got, mut want) = (vec![f32::NAN; case.out_len()], vec![f32::NAN; case.out_len()]);
        kernel.forward(&input, &case.layer, &mut got).unwrap();
        NaiveAttention
            .forward_rule(&input, &case.layer, kernel.rule(), kernel.modifier(), &mut want, None)
            .unwrap();
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "rule: error {error} with {kernel:?}");

        engine.forward(&input, &case.layer, &mut got).unwrap();
        NaiveAttention.forward(&input, &case.layer, &mut want).unwrap();
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "exact: error {error}");
    }
}

/// Star Attention with its context reaching from before the queries to past the cache.
fn star_strategy() -> impl Strategy<Value = StarAttention> {
    (1usize..24, 0usize..160, tiles_strategy()).prop_map(|(block, context_len, engine)| {
        StarAttention::new(block, context_len)
            .unwrap()
            .with_engine(engine)
    })
}

/// `NaiveAttention::forward_rule` with `rule` (and no modifier): the f64 twin of a kernel.
fn naive_with_rule(case: &Case, rule: &dyn KeyRule) -> Vec<f32> {
    let mut out = vec![f32::NAN; case.out_len()];
    NaiveAttention
        .forward_rule(&case.input(), &case.layer, rule, None, &mut out, None)
        .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The context phase is the anchor-plus-own-block rule; the query phase, merged host by
    /// host, is exact attention.
    #[test]
    fn star_matches_anchor_rule_and_exact_attention(
        case in case_strategy(150),
        star in star_strategy(),
    ) {
        let got = case.run(&star);
        let want = naive_with_rule(&case, &star.rule());
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "error {error} with {star:?}");
        let exact = case.run(&NaiveAttention);
        let input = case.input();
        let d = case.head_dim;
        for h in 0..case.n_q_heads {
            for i in 0..case.n_queries {
                let row = (h * case.n_queries + i) * d..(h * case.n_queries + i + 1) * d;
                let in_query_phase = input.query_position(i) >= star.rule().context_len();
                if in_query_phase {
                    let error = max_error(&case, &got[row.clone()], &exact[row]);
                    prop_assert!(error <= 1e-4, "query row {i} head {h}: error {error}");
                }
            }
        }
    }

    #[test]
    fn star_decode_equals_prefill_and_is_causal(
        case in case_strategy(60),
        star in star_strategy(),
        cut_share in 0usize..=100,
    ) {
        check_decode_equals_prefill(&case, &star, 1e-5)?;
        check_causal(&case, &star, case.kv_len * cut_share / 100)?;
    }
}

/// Ranges tiling `0..n_heads`, cut at the given seeds' positions.
fn head_ranges(n_heads: usize, cut_seeds: &[usize]) -> Vec<Range<usize>> {
    let mut cuts: Vec<usize> = cut_seeds
        .iter()
        .map(|seed| seed % n_heads)
        .filter(|&cut| cut > 0)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts.push(n_heads);
    let mut start = 0;
    cuts.into_iter()
        .map(|end| {
            let range = start..end;
            start = end;
            range
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Each range of heads gets what its own kernel gives on those heads, including ranges
    /// that cut through a GQA group.
    #[test]
    fn head_mix_matches_its_parts_twins(
        case in case_strategy(100),
        rules in prop::collection::vec(rule_strategy(), 1..4),
        cut_seeds in prop::collection::vec(any::<usize>(), 3),
        engine in tiles_strategy(),
        cut_share in 0usize..=100,
    ) {
        let ranges = head_ranges(case.n_q_heads, &cut_seeds[..rules.len() - 1]);
        let parts: Vec<(Range<usize>, Arc<dyn AttentionKernel>)> = ranges
            .iter()
            .zip(&rules)
            .map(|(heads, rule)| {
                let kernel = rule_kernel(rule.clone(), false, engine);
                (heads.clone(), Arc::new(kernel) as Arc<dyn AttentionKernel>)
            })
            .collect();
        let mix = HeadMix::new(parts).unwrap();
        let got = case.run(&mix);
        let head_out = case.n_queries * case.head_dim;
        let mut want = vec![f32::NAN; case.out_len()];
        for (heads, rule) in ranges.iter().zip(&rules) {
            let rows = heads.start * head_out..heads.end * head_out;
            want[rows.clone()].copy_from_slice(&naive_with_rule(&case, rule.as_ref())[rows]);
        }
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "error {error} with {}", mix.name());
        check_decode_equals_prefill(&case, &mix, 1e-5)?;
        check_causal(&case, &mix, case.kv_len * cut_share / 100)?;
    }
}

#[test]
fn head_ranges_that_do_not_tile_the_heads_are_errors() {
    let kernel: Arc<dyn AttentionKernel> = Arc::new(TiledAttention::default());
    let message = |ranges: Vec<Range<usize>>| {
        let parts = ranges
            .into_iter()
            .map(|heads| (heads, kernel.clone()))
            .collect();
        invalid_request(HeadMix::new(parts))
    };
    assert!(message(vec![]).contains("at least one range"));
    assert!(message(vec![0..2, 3..4]).contains("starting at head 2, got 3..4"));
    assert!(message(vec![0..2, 1..4]).contains("starting at head 2, got 1..4"));
    assert!(message(vec![1..3, 3..4]).contains("starting at head 0"));
    assert!(message(vec![0..2, 2..2, 2..4]).contains("non-empty"));
    let short = HeadMix::new(vec![(0..4, kernel.clone())]).unwrap();
    let case = Case::random(2, 6, 2, 8, 3, 5, 5, Mask::Causal, 1.0);
    let mut out = vec![0.0; case.out_len()];
    let message = invalid_request(short.forward(&case.input(), &case.layer, &mut out));
    assert!(
        message.contains("cover query heads 0..4, but the layer has 6"),
        "{message}"
    );
}

fn top_k_strategy() -> impl Strategy<Value = TopKPages> {
    (
        1usize..12,
        1usize..5,
        prop_oneof![Just(PageSummary::MinMax), Just(PageSummary::Mean)],
        prop::option::of(rule_strategy()),
        tiles_strategy(),
    )
        .prop_map(|(page, k, summary, base, engine)| {
            let pages = TopKPages::new(page, k, summary)
                .unwrap()
                .with_engine(engine);
            match base {
                Some(rule) => pages.with_base_rule(rule).unwrap(),
                None => pages,
            }
        })
}

fn naive_top_k(case: &Case, pages: &TopKPages) -> Vec<f32> {
    let mut out = vec![f32::NAN; case.out_len()];
    NaiveAttention
        .forward_top_k_pages(pages, &case.input(), &case.layer, &mut out)
        .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn top_k_pages_matches_f64_twin(case in case_strategy(120), pages in top_k_strategy()) {
        let got = case.run(&pages);
        let want = naive_top_k(&case, &pages);
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "error {error} with {pages:?}");
    }

    #[test]
    fn top_k_pages_decode_equals_prefill_and_is_causal(
        case in case_strategy(60),
        pages in top_k_strategy(),
        cut_share in 0usize..=100,
    ) {
        check_decode_equals_prefill(&case, &pages, 1e-5)?;
        check_causal(&case, &pages, case.kv_len * cut_share / 100)?;
    }

    /// With room for every page, the choice keeps them all: exact attention under the base
    /// rule.
    #[test]
    fn top_k_pages_with_every_page_is_exact(
        case in case_strategy(80),
        page in 1usize..12,
        summary in prop_oneof![Just(PageSummary::MinMax), Just(PageSummary::Mean)],
        base in prop::option::of(rule_strategy()),
    ) {
        let every_page = case.kv_len / page + 1;
        let mut pages = TopKPages::new(page, every_page, summary).unwrap();
        let rule: Arc<dyn KeyRule> = base.unwrap_or_else(|| Arc::new(Mask::Causal));
        pages = pages.with_base_rule(rule.clone()).unwrap();
        let got = case.run(&pages);
        let want = naive_with_rule(&case, rule.as_ref());
        let error = max_error(&case, &got, &want);
        prop_assert!(error <= 1e-4, "error {error}");
    }
}

/// Three identical past pages score the same: the lowest index wins, so with k = 2 the row
/// sees page 0 and its own page.
#[test]
fn top_k_pages_breaks_ties_toward_the_lower_page() {
    let (page, d) = (4, 8);
    let mut case = Case::random(9, 1, 1, d, 1, 15, 15, Mask::Causal, 1.0);
    for k in page..3 * page {
        let (from, to) = ((k % page) * d, k * d);
        let key: Vec<f32> = case.k[from..from + d].to_vec();
        case.k[to..to + d].copy_from_slice(&key);
    }
    for summary in [PageSummary::MinMax, PageSummary::Mean] {
        let pages = TopKPages::new(page, 2, summary).unwrap();
        let want = naive_with_rule(&case, &KeyRanges(vec![0..page, 3 * page..4 * page]));
        assert!(
            max_error(&case, &naive_top_k(&case, &pages), &want) <= 1e-6,
            "{summary:?} twin"
        );
        assert!(
            max_error(&case, &case.run(&pages), &want) <= 1e-5,
            "{summary:?}"
        );
    }
}

#[test]
fn a_row_that_sees_no_key_is_zeros_with_lse_minus_infinity() {
    // Keys 0, 3, 6, ... are shown: under a window of 1 only queries at those positions see any.
    let mut case = Case::random(3, 4, 2, 8, 7, 7, 7, Mask::SlidingWindow { window: 1 }, 1.0);
    case.layer.mask = Mask::SlidingWindow { window: 1 };
    let kernel = RuleAttention::new(
        "stripes",
        Arc::new(Stripes {
            period: 3,
            shown: 1,
        }),
        None,
    )
    .unwrap()
    .with_engine(TiledAttention::with_tiles(2, 3).unwrap());
    let (want, want_lse) = reference(&case, &kernel);
    let mut got = vec![f32::NAN; case.out_len()];
    let mut lse = vec![f32::NAN; case.n_q_heads * case.n_queries];
    kernel
        .forward_with_lse(&case.input(), &case.layer, &mut got, &mut lse)
        .unwrap();
    for (row, (&got_lse, &want_lse)) in lse.iter().zip(&want_lse).enumerate() {
        let position = row % case.n_queries;
        let out = &got[row * case.head_dim..(row + 1) * case.head_dim];
        if position.is_multiple_of(3) {
            assert!(got_lse.is_finite() && want_lse.is_finite(), "row {row}");
            assert!(out.iter().all(|x| x.is_finite()));
        } else {
            assert_eq!(
                (got_lse, want_lse),
                (f32::NEG_INFINITY, f32::NEG_INFINITY),
                "row {row}"
            );
            assert!(out.iter().all(|&x| x == 0.0), "row {row}: {out:?}");
        }
    }
    assert!(max_error(&case, &got, &want) <= 1e-5);
}

/// A rule that counts the `coverage` calls made on it.
#[derive(Debug)]
struct Counted<R> {
    rule: R,
    calls: AtomicUsize,
}

impl<R: KeyRule> KeyRule for Counted<R> {
    fn allows(&self, q: usize, k: usize) -> bool {
        self.rule.allows(q, k)
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.rule.coverage(queries, keys)
    }
}

/// Planning a decode step at T = 32k under sinks + window bisects to the few tiles where
/// visibility changes: a few coverage calls per boundary and level, not one per KV tile.
#[test]
fn sink_window_plans_in_logarithmic_coverage_calls() {
    let t = 32 * 1024;
    let case = Case::random(5, 1, 1, 8, 1, t, t, Mask::Causal, 1.0);
    let counted = Arc::new(Counted {
        rule: SinkWindow::new(4, 1000).unwrap(),
        calls: AtomicUsize::new(0),
    });
    let kernel = RuleAttention::new("counted", counted.clone(), None).unwrap();
    let got = case.run(&kernel);
    let tiles = t / 128;
    let levels = tiles.ilog2() as usize + 1;
    let calls = counted.calls.load(Ordering::Relaxed);
    // Bisection: a few calls per level for each of the 3 boundaries (sinks, window start,
    // the query); trimming a partly shown tile: 2 per halving from 128 keys down to 16;
    // then the row's own slice of each of the (at most 3) partly shown tiles, bisected down
    // to 8 keys: at most 2 calls per halving from 128 keys.
    let trimming = 2 * 2 * 3;
    let rows = 3 * (1 + 2 * 4);
    assert!(
        calls <= 4 * levels + trimming + rows,
        "{calls} coverage calls for {tiles} tiles"
    );
    let mut want = vec![0.0; case.out_len()];
    NaiveAttention
        .forward_rule(
            &case.input(),
            &case.layer,
            kernel.rule(),
            None,
            &mut want,
            None,
        )
        .unwrap();
    assert!(max_error(&case, &got, &want) <= 1e-5);
}

/// The message of an `InvalidRequest`; any other outcome fails the test.
fn invalid_request<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::InvalidRequest(message)) => message,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[test]
fn a_zero_window_is_an_error() {
    let message = invalid_request(RuleAttention::sink_window(4, 0));
    assert!(message.contains("window must be at least 1"), "{message}");
    invalid_request(SinkWindow::new(0, 0));
    let message = invalid_request(RuleAttention::mask(Mask::SlidingWindow { window: 0 }));
    assert!(message.contains("size must be at least 1"), "{message}");
}

#[test]
fn a_zero_chunk_is_an_error_at_build_and_at_run() {
    let message = invalid_request(RuleAttention::mask(Mask::Chunked { chunk: 0 }));
    assert!(message.contains("size must be at least 1"), "{message}");
    let zero_chunk: Arc<dyn KeyRule> = Arc::new(Mask::Chunked { chunk: 0 });
    invalid_request(RuleAttention::new("bad", zero_chunk.clone(), None));
    let case = Case::random(1, 2, 1, 8, 2, 4, 4, Mask::Causal, 1.0);
    let mut out = vec![0.0; case.out_len()];
    invalid_request(TiledAttention::default().forward_rule(
        &case.input(),
        &case.layer,
        zero_chunk.as_ref(),
        None,
        &mut out,
        None,
    ));
}

#[test]
fn a_zero_star_block_is_an_error() {
    let message = invalid_request(StarAttention::new(0, 16));
    assert!(message.contains("block must be at least 1"), "{message}");
}

#[test]
fn a_zero_page_or_k_is_an_error() {
    for (page, k) in [(0, 2), (4, 0)] {
        let message = invalid_request(TopKPages::new(page, k, PageSummary::MinMax));
        assert!(
            message.contains("page size and k must be at least 1"),
            "{message}"
        );
    }
}

#[test]
fn merging_partials_of_different_shapes_is_an_error() {
    let (mut out, mut lse) = (vec![0.0; 8], vec![0.0; 2]);
    let message = invalid_request(merge_partial(&mut out, &mut lse, &[0.0; 8], &[0.0; 3], 4));
    assert!(message.contains("do not match head_dim 4"), "{message}");
}
