//! Which users, items and (user, item) pairs a run enriches.

use std::collections::BTreeSet;

use recsys::data::Dataset;
use recsys::eval::top_k;
use recsys::model::SasRec;

use super::profile_history;

/// What to enrich, by dense ids of the run's dataset, in the order it is done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub items: Vec<u32>,
    pub users: Vec<usize>,
    /// (user, item) pairs to explain; a pair whose user has no usable profile is skipped.
    pub explanations: Vec<(usize, u32)>,
}

/// How big a plan to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Profile the first this many users (dense ids, the order users first appear in the data).
    pub users: usize,
    /// Tag the first this many items instead of the items the users touch.
    pub items: Option<usize>,
    /// Recommendations per user, with a model.
    pub k: usize,
    /// Explain only the first this many of the profiled users' recommendations.
    pub explain_users: Option<usize>,
}

impl Plan {
    /// The first `config.users` users; the items their profile prompts show (or the first
    /// `config.items`); and with `model`, the items it recommends to each of them (top k,
    /// seen items left out) after the history evaluation uses (all but the held-out item)
    /// and after the whole history (what the server answers for the user), the latter also
    /// to be explained. Items come in id order, users in id order, pairs by user then rank.
    pub fn build(
        dataset: &Dataset,
        config: &PlanConfig,
        model: Option<&SasRec>,
    ) -> recsys::Result<Plan> {
        let users: Vec<usize> = (0..config.users.min(dataset.users.len())).collect();
        let mut items: BTreeSet<u32> = match config.items {
            Some(n) => (0..n.min(dataset.items.len()) as u32).collect(),
            None => users
                .iter()
                .flat_map(|&u| profile_history(dataset, u).iter().copied())
                .collect(),
        };
        let mut explanations = Vec::new();
        if let Some(model) = model {
            let evaluated: Vec<&[u32]> = users
                .iter()
                .map(|&u| {
                    let h = &dataset.histories[u];
                    if h.len() >= 3 {
                        &h[..h.len() - 1]
                    } else {
                        &h[..]
                    }
                })
                .collect();
            let whole: Vec<&[u32]> = users
                .iter()
                .map(|&u| dataset.histories[u].as_slice())
                .collect();
            let explained = config.explain_users.unwrap_or(users.len());
            for (histories, serving) in [(&evaluated, false), (&whole, true)] {
                let scores = model.score_histories(histories)?;
                for ((&user, history), row) in users.iter().zip(histories.iter()).zip(&scores) {
                    let picked = top_k(row, config.k, history);
                    if config.items.is_none() {
                        items.extend(picked.iter().map(|&(i, _)| i));
                    }
                    if serving && user < explained {
                        explanations.extend(picked.iter().map(|&(i, _)| (user, i)));
                    }
                }
            }
        }
        Ok(Plan {
            items: items.into_iter().collect(),
            users,
            explanations,
        })
    }
}
