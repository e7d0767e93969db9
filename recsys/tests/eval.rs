//! Metrics and baselines on hand-built data with answers worked out by hand.

use recsys::data::EvalCase;
use recsys::eval::{evaluate, ndcg_at, rank_of, ItemKnn, Popularity, Recommender};

#[test]
fn rank_counts_better_items_and_breaks_ties_against_the_target() {
    let scores = [0.5, 0.9, 0.5, 0.1, 0.7];
    assert_eq!(
        rank_of(&scores, 2, &[]),
        3,
        "1 and 4 score higher, 0 ties with a lower id"
    );
    assert_eq!(rank_of(&scores, 0, &[]), 2, "2 ties but has a higher id");
    assert_eq!(rank_of(&scores, 2, &[1, 4]), 1, "filtering removes 1 and 4");
    assert_eq!(rank_of(&scores, 2, &[2]), 3, "the target is never filtered");
    assert_eq!(
        rank_of(&[f32::NAN, 0.0], 0, &[]),
        2,
        "a NaN target ranks last"
    );
}

#[test]
fn ndcg_of_one_relevant_item() {
    assert_eq!(ndcg_at(0, 10), 1.0);
    assert!((ndcg_at(1, 10) - 1.0 / 3f64.log2()).abs() < 1e-12);
    assert_eq!(ndcg_at(10, 10), 0.0);
    assert!(ndcg_at(10, 20) > 0.0);
}

/// Fixed scores whatever the history.
struct Fixed(Vec<f32>);

impl Recommender for Fixed {
    fn score(&self, histories: &[&[u32]]) -> recsys::Result<Vec<Vec<f32>>> {
        Ok(vec![self.0.clone(); histories.len()])
    }
}

#[test]
fn both_conventions_on_known_ranks() {
    // Item scores fall with the id: item i ranks i-th unfiltered.
    let scorer = Fixed((0..30).map(|i| 30.0 - i as f32).collect());
    let cases = [
        // Rank 12 unfiltered; its history holds 3 better items, so rank 9 filtered.
        EvalCase {
            user: 0,
            history: vec![0, 1, 2],
            target: 12,
        },
        // Rank 0 either way.
        EvalCase {
            user: 1,
            history: vec![5],
            target: 0,
        },
    ];
    let report = evaluate(&scorer, &cases).unwrap();
    let unfiltered = report.unfiltered;
    assert_eq!(unfiltered.hr_10, 0.5);
    assert!((unfiltered.ndcg_10 - 0.5).abs() < 1e-12);
    assert!((unfiltered.ndcg_20 - (1.0 + 1.0 / 14f64.log2()) / 2.0).abs() < 1e-12);
    let filtered = report.seen_filtered;
    assert_eq!(filtered.hr_10, 1.0);
    assert!((filtered.ndcg_10 - (1.0 + 1.0 / 11f64.log2()) / 2.0).abs() < 1e-12);
    assert_eq!(filtered.cases, 2);
}

#[test]
fn popularity_counts_training_interactions() {
    let train = vec![vec![0, 1], vec![1, 2], vec![1]];
    let pop = Popularity::fit(&train, 4);
    assert_eq!(pop.score(&[&[0]]).unwrap()[0], [1.0, 3.0, 1.0, 0.0]);
}

#[test]
fn item_knn_is_cosine_over_co_occurrence() {
    // Item 0 is held by users a, b; item 1 by a, b, c; item 2 by c only.
    // cos(0, 1) = 2 / sqrt(2 · 3); cos(0, 2) = 0; cos(1, 2) = 1 / sqrt(3 · 1).
    let train = vec![vec![0, 1], vec![1, 0], vec![1, 2]];
    let knn = ItemKnn::fit(&train, 3, 10);
    let expect01 = 2.0 / 6f32.sqrt();
    let expect12 = 1.0 / 3f32.sqrt();
    assert_eq!(knn.neighbours(0).len(), 1);
    assert!((knn.neighbours(0)[0].1 - expect01).abs() < 1e-6);
    let scores = &knn.score(&[&[0, 2]]).unwrap()[0];
    assert!((scores[1] - (expect01 + expect12)).abs() < 1e-6);
    assert_eq!(scores[0], 0.0, "an item is not its own neighbour");
    // With k = 1 each item keeps only its best neighbour: 1's is 0, not 2.
    let top1 = ItemKnn::fit(&train, 3, 1);
    let best = top1.neighbours(1);
    assert_eq!(best.len(), 1);
    assert_eq!(best[0].0, 0);
    assert!((best[0].1 - expect01).abs() < 1e-6);
}

/// The baselines on the real MovieLens-100K split: pinned hit counts (out of 943 test users),
/// so that a change to the loader, the split or the metrics shows here.
#[test]
fn baselines_on_ml100k() {
    use recsys::data::{Dataset, LoadOptions, Split};
    let dir = kernels::assets::MOVIELENS_100K
        .require()
        .unwrap_or_else(|e| panic!("{e}"));
    let data = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    let split = Split::leave_one_out(&data);
    assert_eq!(split.test.len(), 943);
    let hits = |r: recsys::eval::Metrics| (r.hr_10 * r.cases as f64).round() as usize;
    let popular = evaluate(&Popularity::fit(&split.train, split.n_items), &split.test).unwrap();
    assert_eq!(hits(popular.seen_filtered), 81);
    assert_eq!(hits(popular.unfiltered), 47);
    let knn = evaluate(&ItemKnn::fit(&split.train, split.n_items, 100), &split.test).unwrap();
    assert_eq!(hits(knn.seen_filtered), 96);
    assert!(knn.seen_filtered.ndcg_10 > popular.seen_filtered.ndcg_10);
}
