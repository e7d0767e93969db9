//! Tag-aware fused scoring, RecGPT's last stage:
//! `score = α · model + (1 − α) · tag_match(user tags, item tags)`.
//!
//! The model's scores are scaled per user to [0, 1] by min-max over the catalogue, so that
//! α weighs two quantities on the same scale. `tag_match` is the share of an item's tag words
//! that also occur in the user's tags (words of at least three letters, singular, filler words
//! such as "film" left out), so that "dark comedy" and "comedies" meet; an item without tags matches
//! nothing. α = 1 returns the model's scores untouched: the scaling is monotone, but f32
//! rounding could merge two near-equal scores and move a tie.

use std::collections::BTreeSet;

use crate::data::EvalCase;
use crate::eval::{report_of, Report};
use crate::{Error, Result};

/// Words that say nothing about taste.
const FILLER: [&str; 8] = [
    "the", "and", "for", "with", "film", "films", "movie", "movies",
];

/// The words of a list of tags: lowercase runs of letters and digits, three or more long,
/// filler left out, plurals made singular ("comedies" → "comedy", "thrillers" → "thriller").
pub fn tag_words<S: AsRef<str>>(tags: &[S]) -> BTreeSet<String> {
    tags.iter()
        .flat_map(|t| {
            t.as_ref()
                .split(|c: char| !c.is_alphanumeric())
                .map(|w| singular(&w.to_lowercase()))
                .filter(|w| w.chars().count() >= 3 && !FILLER.contains(&w.as_str()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// English plural to singular, for the regular cases only.
fn singular(word: &str) -> String {
    if let Some(stem) = word.strip_suffix("ies").filter(|s| s.len() >= 2) {
        format!("{stem}y")
    } else if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") {
        word[..word.len() - 1].to_string()
    } else {
        word.to_string()
    }
}

/// Every item's tag words, by dense item id, ready to be matched against users.
#[derive(Clone, Debug, Default)]
pub struct TagMatcher {
    items: Vec<BTreeSet<String>>,
}

impl TagMatcher {
    /// `item_tags[i]` are the tags of item `i` (empty for an item never tagged).
    pub fn new<S: AsRef<str>>(item_tags: &[Vec<S>]) -> TagMatcher {
        TagMatcher {
            items: item_tags.iter().map(|t| tag_words(t)).collect(),
        }
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the catalogue is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items that have at least one tag word.
    pub fn tagged(&self) -> usize {
        self.items.iter().filter(|w| !w.is_empty()).count()
    }

    /// `tag_match` of every item for a user with `user_tags`, in [0, 1].
    pub fn matches<S: AsRef<str>>(&self, user_tags: &[S]) -> Vec<f32> {
        let user = tag_words(user_tags);
        self.items
            .iter()
            .map(|item| {
                if item.is_empty() {
                    0.0
                } else {
                    item.intersection(&user).count() as f32 / item.len() as f32
                }
            })
            .collect()
    }
}

/// The model's share of the fused score, checked to lie in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alpha(f32);

impl Alpha {
    pub fn new(alpha: f32) -> Result<Alpha> {
        if (0.0..=1.0).contains(&alpha) {
            Ok(Alpha(alpha))
        } else {
            Err(Error::InvalidRequest(format!(
                "alpha is {alpha}; it must lie in [0, 1] (1 = the model alone, 0 = tags alone)"
            )))
        }
    }

    pub fn get(self) -> f32 {
        self.0
    }
}

/// Scores scaled to [0, 1] by min-max (all zeros when every score is equal); NaN stays NaN.
pub fn min_max(scores: &[f32]) -> Vec<f32> {
    let finite = scores.iter().copied().filter(|s| !s.is_nan());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
        (lo.min(s), hi.max(s))
    });
    let range = f64::from(hi) - f64::from(lo);
    scores
        .iter()
        .map(|&s| {
            if range > 0.0 && range.is_finite() {
                ((f64::from(s) - f64::from(lo)) / range) as f32
            } else if s.is_nan() {
                s
            } else {
                0.0
            }
        })
        .collect()
}

/// `α · min_max(model) + (1 − α) · tag_match`, item by item; α = 1 is `model` itself.
pub fn fuse(model: &[f32], tag_match: &[f32], alpha: Alpha) -> Vec<f32> {
    assert_eq!(model.len(), tag_match.len(), "one tag match per item");
    let a = alpha.get();
    if a == 1.0 {
        return model.to_vec();
    }
    min_max(model)
        .iter()
        .zip(tag_match)
        .map(|(m, t)| a * m + (1.0 - a) * t)
        .collect()
}

/// Full-ranking reports of fused scoring at each α, on `cases` whose model scores are
/// `model_scores` (one row per case) and whose users' tags are `user_tags` (one per case).
pub fn evaluate_fused<S: AsRef<str>>(
    cases: &[EvalCase],
    model_scores: &[Vec<f32>],
    user_tags: &[&[S]],
    matcher: &TagMatcher,
    alphas: &[Alpha],
) -> Vec<Report> {
    assert_eq!(cases.len(), model_scores.len(), "one score row per case");
    assert_eq!(cases.len(), user_tags.len(), "one tag list per case");
    let matches: Vec<Vec<f32>> = user_tags.iter().map(|t| matcher.matches(t)).collect();
    alphas
        .iter()
        .map(|&alpha| {
            let fused: Vec<Vec<f32>> = model_scores
                .iter()
                .zip(&matches)
                .map(|(row, m)| fuse(row, m, alpha))
                .collect();
            report_of(cases, &fused)
        })
        .collect()
}
