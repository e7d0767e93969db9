//! Full-ranking evaluation: every item is a candidate, and a case scores by the rank of its
//! held-out target. HR@10, NDCG@10 and NDCG@20 are reported twice: with the items already in
//! the case's history removed from the candidates ("seen filtered", our headline, as for
//! RecBole's general recommenders) and with nothing removed ("unfiltered", as RecBole scores
//! its sequential ones, SASRec among them). The target itself is
//! never removed. Ties are broken against the target by item id: an item with an equal
//! score ranks above the target if its id is lower, so a constant scorer earns nothing
//! for free.
//!
//! Baselines fitted on the same training sequences: popularity and item-kNN.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::EvalCase;
use crate::model::SasRec;
use crate::Result;

/// Anything that scores every item after a history.
pub trait Recommender: Sync {
    /// One row of `n_items` scores per history; higher is better.
    fn score(&self, histories: &[&[u32]]) -> Result<Vec<Vec<f32>>>;
}

impl Recommender for SasRec {
    fn score(&self, histories: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.score_histories(histories)
    }
}

/// Metrics averaged over cases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub hr_10: f64,
    pub ndcg_10: f64,
    pub ndcg_20: f64,
    pub cases: usize,
}

/// Metrics under both seen-item conventions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Items of the history removed from the candidates (the headline numbers).
    pub seen_filtered: Metrics,
    /// Every item a candidate.
    pub unfiltered: Metrics,
}

/// The 0-based rank of `target` among the candidates: the items not in `excluded` (the target
/// always stays). A NaN target score ranks last.
pub fn rank_of(scores: &[f32], target: u32, excluded: &[u32]) -> usize {
    let t = target as usize;
    let target_score = scores[t];
    if target_score.is_nan() {
        return scores.len();
    }
    let mut hidden = vec![false; scores.len()];
    for &e in excluded {
        if e != target {
            hidden[e as usize] = true;
        }
    }
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &s)| {
            !hidden[j] && j != t && (s > target_score || (s == target_score && j < t))
        })
        .count()
}

/// NDCG@k of a single relevant item at 0-based `rank`.
pub fn ndcg_at(rank: usize, k: usize) -> f64 {
    if rank < k {
        1.0 / ((rank + 2) as f64).log2()
    } else {
        0.0
    }
}

fn metrics(ranks: &[usize]) -> Metrics {
    let n = ranks.len().max(1) as f64;
    Metrics {
        hr_10: ranks.iter().filter(|&&r| r < 10).count() as f64 / n,
        ndcg_10: ranks.iter().map(|&r| ndcg_at(r, 10)).sum::<f64>() / n,
        ndcg_20: ranks.iter().map(|&r| ndcg_at(r, 20)).sum::<f64>() / n,
        cases: ranks.len(),
    }
}

/// The targets' ranks under both conventions, gathered case by case.
#[derive(Default)]
struct Ranks {
    filtered: Vec<usize>,
    unfiltered: Vec<usize>,
}

impl Ranks {
    fn add(&mut self, cases: &[EvalCase], scores: &[Vec<f32>]) {
        for (case, row) in cases.iter().zip(scores) {
            self.filtered.push(rank_of(row, case.target, &case.history));
            self.unfiltered.push(rank_of(row, case.target, &[]));
        }
    }

    fn report(&self) -> Report {
        Report {
            seen_filtered: metrics(&self.filtered),
            unfiltered: metrics(&self.unfiltered),
        }
    }
}

/// Ranks every case's target under both conventions.
pub fn evaluate(recommender: &dyn Recommender, cases: &[EvalCase]) -> Result<Report> {
    let mut ranks = Ranks::default();
    for chunk in cases.chunks(256) {
        let histories: Vec<&[u32]> = chunk.iter().map(|c| c.history.as_slice()).collect();
        ranks.add(chunk, &recommender.score(&histories)?);
    }
    Ok(ranks.report())
}

/// The report of scores already computed: `scores[i]` is the row of `cases[i]`.
pub fn report_of(cases: &[EvalCase], scores: &[Vec<f32>]) -> Report {
    assert_eq!(cases.len(), scores.len(), "one score row per case");
    let mut ranks = Ranks::default();
    ranks.add(cases, scores);
    ranks.report()
}

/// The best `k` items by score, skipping `excluded` and NaN scores, best first; equal scores
/// go to the lower id, as `rank_of` breaks ties.
pub fn top_k(scores: &[f32], k: usize, excluded: &[u32]) -> Vec<(u32, f32)> {
    let mut hidden = vec![false; scores.len()];
    for &e in excluded {
        hidden[e as usize] = true;
    }
    let mut ranked: Vec<(u32, f32)> = scores
        .iter()
        .enumerate()
        .filter(|&(i, s)| !hidden[i] && !s.is_nan())
        .map(|(i, &s)| (i as u32, s))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if ranked.len() > k {
        ranked.select_nth_unstable_by(k, order);
        ranked.truncate(k);
    }
    ranked.sort_by(order);
    ranked
}

/// Scores every item by how many training sequences contain it.
#[derive(Clone, Debug)]
pub struct Popularity {
    counts: Vec<f32>,
}

impl Popularity {
    pub fn fit(train: &[Vec<u32>], n_items: usize) -> Popularity {
        let mut counts = vec![0f32; n_items];
        for &item in train.iter().flatten() {
            counts[item as usize] += 1.0;
        }
        Popularity { counts }
    }
}

impl Recommender for Popularity {
    fn score(&self, histories: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        Ok(vec![self.counts.clone(); histories.len()])
    }
}

/// Item-based k-nearest neighbours: cosine similarity of items over the users whose
/// training sequences hold both, each item keeping its `k` most similar; a history scores an
/// item by the sum of its similarities to the history's items.
#[derive(Clone, Debug)]
pub struct ItemKnn {
    n_items: usize,
    neighbours: Vec<Vec<(u32, f32)>>,
}

impl ItemKnn {
    pub fn fit(train: &[Vec<u32>], n_items: usize, k: usize) -> ItemKnn {
        let mut users_of: Vec<Vec<u32>> = vec![Vec::new(); n_items];
        let sets: Vec<Vec<u32>> = train
            .iter()
            .map(|seq| {
                let mut set = seq.clone();
                set.sort_unstable();
                set.dedup();
                set
            })
            .collect();
        for (user, set) in sets.iter().enumerate() {
            for &item in set {
                users_of[item as usize].push(user as u32);
            }
        }
        let neighbours = (0..n_items)
            .into_par_iter()
            .map(|i| {
                let mut common = vec![0u32; n_items];
                for &user in &users_of[i] {
                    for &j in &sets[user as usize] {
                        common[j as usize] += 1;
                    }
                }
                let norm_i = (users_of[i].len() as f32).sqrt();
                let mut row: Vec<(u32, f32)> = common
                    .iter()
                    .enumerate()
                    .filter(|&(j, &c)| j != i && c > 0)
                    .map(|(j, &c)| {
                        let norm_j = (users_of[j].len() as f32).sqrt();
                        (j as u32, c as f32 / (norm_i * norm_j))
                    })
                    .collect();
                row.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                row.truncate(k);
                row
            })
            .collect();
        ItemKnn {
            n_items,
            neighbours,
        }
    }

    /// The neighbours of `item`, most similar first.
    pub fn neighbours(&self, item: u32) -> &[(u32, f32)] {
        &self.neighbours[item as usize]
    }
}

impl Recommender for ItemKnn {
    fn score(&self, histories: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        Ok(histories
            .iter()
            .map(|history| {
                let mut row = vec![0f32; self.n_items];
                for &h in *history {
                    for &(j, sim) in &self.neighbours[h as usize] {
                        row[j as usize] += sim;
                    }
                }
                row
            })
            .collect())
    }
}
