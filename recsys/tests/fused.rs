//! Tag-aware fused scoring: α = 1 is the plain model's ranking exactly, α = 0 ranks by tag
//! match, the formula matches an f64 twin, and tag matching counts shared words.

use proptest::prelude::*;
use recsys::data::EvalCase;
use recsys::eval::{report_of, top_k};
use recsys::fused::{evaluate_fused, fuse, min_max, tag_words, Alpha, TagMatcher};
use recsys::model::{SasRec, SasRecConfig, EXACT};

const N_ITEMS: usize = 40;

fn model() -> SasRec {
    let config = SasRecConfig {
        n_items: N_ITEMS,
        max_len: 8,
        d_model: 16,
        n_blocks: 1,
        n_heads: 2,
        d_ff: 32,
        dropout: 0.0,
    };
    SasRec::new(config, EXACT, 5).unwrap()
}

const WORDS: [&str; 6] = ["comedy", "dark", "drama", "space", "heist", "family"];

/// Item i gets one or two tags drawn from WORDS by its id; every fifth item has none.
fn item_tags() -> Vec<Vec<String>> {
    (0..N_ITEMS)
        .map(|i| match i % 5 {
            0 => Vec::new(),
            _ => vec![
                WORDS[i % 6].to_string(),
                format!("{} {}", WORDS[(i / 2) % 6], WORDS[(i / 3) % 6]),
            ],
        })
        .collect()
}

fn cases() -> Vec<EvalCase> {
    (0..12)
        .map(|u| EvalCase {
            user: u,
            history: (0..5).map(|s| ((u * 7 + s * 3) % N_ITEMS) as u32).collect(),
            target: ((u * 11 + 1) % N_ITEMS) as u32,
        })
        .collect()
}

fn user_tags(u: usize) -> Vec<String> {
    vec![
        WORDS[u % 6].to_string(),
        format!("{} film", WORDS[(u + 2) % 6]),
    ]
}

#[test]
fn alpha_one_is_the_plain_models_ranking_exactly() {
    let model = model();
    let cases = cases();
    let histories: Vec<&[u32]> = cases.iter().map(|c| c.history.as_slice()).collect();
    let scores = model.score_histories(&histories).unwrap();
    let tags: Vec<Vec<String>> = cases.iter().map(|c| user_tags(c.user)).collect();
    let tag_refs: Vec<&[String]> = tags.iter().map(Vec::as_slice).collect();
    let matcher = TagMatcher::new(&item_tags());
    let alphas = [Alpha::new(1.0).unwrap(), Alpha::new(0.5).unwrap()];
    let reports = evaluate_fused(&cases, &scores, &tag_refs, &matcher, &alphas);
    assert_eq!(reports[0], report_of(&cases, &scores));
    for (case, (row, user)) in cases.iter().zip(scores.iter().zip(&tags)) {
        let fused = fuse(row, &matcher.matches(user), alphas[0]);
        assert_eq!(
            top_k(&fused, N_ITEMS, &[]),
            top_k(row, N_ITEMS, &[]),
            "user {}",
            case.user
        );
        // And the tags do move something at α = 0.5, so the test above could fail.
        let half = fuse(row, &matcher.matches(user), alphas[1]);
        assert_ne!(top_k(&half, N_ITEMS, &[]), top_k(row, N_ITEMS, &[]));
    }
}

#[test]
fn alpha_zero_ranks_by_tag_match() {
    let matcher = TagMatcher::new(&item_tags());
    let user = ["dark comedy".to_string()];
    let matches = matcher.matches(&user);
    let model: Vec<f32> = (0..N_ITEMS).map(|i| i as f32).collect();
    let fused = fuse(&model, &matches, Alpha::new(0.0).unwrap());
    assert_eq!(fused, matches);
}

#[test]
fn tag_match_is_the_share_of_an_item_s_words_the_user_has() {
    let matcher = TagMatcher::new(&[
        vec!["Comedy".to_string(), "dark comedy".into()],
        vec!["space opera".into(), "drama".into()],
        vec![],
        vec!["a film".into()],
    ]);
    assert_eq!(matcher.tagged(), 2, "filler and short words are no tags");
    let m = matcher.matches(&["dark comedy films".to_string()]);
    assert_eq!(m, [1.0, 0.0, 0.0, 0.0]);
    let m = matcher.matches(&["Space westerns".to_string(), "drama".into()]);
    assert_eq!(m, [0.0, 2.0 / 3.0, 0.0, 0.0]);
    assert_eq!(
        tag_words(&["Sci-Fi / the FILM", "x"])
            .into_iter()
            .collect::<Vec<_>>(),
        ["sci"]
    );
}

#[test]
fn alpha_outside_zero_to_one_is_refused() {
    for bad in [-0.1, 1.01, f32::NAN] {
        let error = Alpha::new(bad).unwrap_err().to_string();
        assert!(
            error.contains("alpha") && error.contains("[0, 1]"),
            "{error}"
        );
    }
}

#[test]
fn min_max_scales_to_the_unit_interval() {
    assert_eq!(min_max(&[2.0, 4.0, 3.0]), [0.0, 1.0, 0.5]);
    assert_eq!(min_max(&[7.0, 7.0]), [0.0, 0.0]);
    let with_nan = min_max(&[1.0, f32::NAN, 3.0]);
    assert_eq!((with_nan[0], with_nan[2]), (0.0, 1.0));
    assert!(with_nan[1].is_nan());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The fused score equals α·(s − min)/(max − min) + (1 − α)·match computed in f64.
    #[test]
    fn fuse_matches_its_f64_twin(
        scores in prop::collection::vec(-50f32..50.0, 2..40),
        seed in 0u64..1000,
        alpha in 0f32..1.0,
    ) {
        let matches: Vec<f32> = (0..scores.len())
            .map(|i| ((seed + i as u64 * 7) % 5) as f32 / 4.0)
            .collect();
        let fused = fuse(&scores, &matches, Alpha::new(alpha).unwrap());
        let lo = scores.iter().fold(f64::INFINITY, |m, &s| m.min(f64::from(s)));
        let hi = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(f64::from(s)));
        for i in 0..scores.len() {
            let norm = if hi > lo { (f64::from(scores[i]) - lo) / (hi - lo) } else { 0.0 };
            let a = f64::from(alpha);
            let twin = a * norm + (1.0 - a) * f64::from(matches[i]);
            prop_assert!((f64::from(fused[i]) - twin).abs() < 1e-5, "{} vs {}", fused[i], twin);
        }
    }
}
