//! The chronological leave-one-out split: per user, the last item is the test target, the
//! one before it the validation target, and the rest trains. Users with fewer than three
//! interactions only train.

use super::Dataset;

/// One ranking question: given `history`, where does the model put `target`?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalCase {
    pub user: usize,
    pub history: Vec<u32>,
    pub target: u32,
}

/// Training sequences and the validation and test questions of one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub n_items: usize,
    /// Per user, the items that train (history without the last two).
    pub train: Vec<Vec<u32>>,
    /// History = the training sequence, target = the second-to-last item.
    pub valid: Vec<EvalCase>,
    /// History = training sequence + validation item, target = the last item.
    pub test: Vec<EvalCase>,
}

impl Split {
    /// Leave-one-out over each user's time-ordered history.
    pub fn leave_one_out(data: &Dataset) -> Split {
        let mut split = Split {
            n_items: data.items.len(),
            train: Vec::with_capacity(data.histories.len()),
            valid: Vec::new(),
            test: Vec::new(),
        };
        for (user, history) in data.histories.iter().enumerate() {
            let n = history.len();
            if n < 3 {
                split.train.push(history.clone());
                continue;
            }
            split.train.push(history[..n - 2].to_vec());
            split.valid.push(EvalCase {
                user,
                history: history[..n - 2].to_vec(),
                target: history[n - 2],
            });
            split.test.push(EvalCase {
                user,
                history: history[..n - 1].to_vec(),
                target: history[n - 1],
            });
        }
        split
    }
}
