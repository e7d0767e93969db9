//! Elite confirmation: before a candidate becomes the new best, it is evaluated again on
//! fresh slices and seeds, and its claimed score must hold there.

use serde::{Deserialize, Serialize};

use crate::{Error, Evaluation, Result, Task};

/// How strict confirmation is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfirmOptions {
    /// Fresh trials to run (each with its own slices and seeds).
    pub trials: u32,
    /// The score holds when every trial passes and scores at least
    /// `claimed − tolerance · |claimed|`.
    pub tolerance: f64,
}

impl Default for ConfirmOptions {
    fn default() -> Self {
        ConfirmOptions {
            trials: 1,
            tolerance: 0.1,
        }
    }
}

/// The verdict of a confirmation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    pub holds: bool,
    pub claimed: f64,
    /// The lowest score of the fresh trials (`None` if one failed a stage).
    pub confirmed: Option<f64>,
    /// The lowest score that would have held.
    pub threshold: f64,
    /// Why it holds or not, in a sentence.
    pub reason: String,
    /// The fresh evaluations, in trial order.
    pub evaluations: Vec<Evaluation>,
}

/// Re-evaluates `source` on trials after the one `claimed` came from, and says whether its
/// score holds. `claimed` must be a passing evaluation of the same candidate on `task`.
pub fn confirm(
    task: &dyn Task,
    source: &str,
    claimed: &Evaluation,
    options: &ConfirmOptions,
) -> Result<Confirmation> {
    let Some(claimed_score) = claimed.score.filter(|_| claimed.passed) else {
        return Err(Error::Invalid(
            "confirm: the claimed evaluation did not pass, so it has no score to confirm".into(),
        ));
    };
    if claimed.task != task.name() {
        return Err(Error::Invalid(format!(
            "confirm: the claimed evaluation is for task {}, not {}",
            claimed.task,
            task.name()
        )));
    }
    if options.trials == 0 || !(options.tolerance.is_finite() && options.tolerance >= 0.0) {
        return Err(Error::Invalid(
            "confirm: trials must be at least 1 and tolerance a finite number >= 0".into(),
        ));
    }
    let threshold = claimed_score - options.tolerance * claimed_score.abs();
    let first = claimed.provenance.trial + 1;
    let mut evaluations = Vec::new();
    for trial in first..first + options.trials {
        let evaluation = task.evaluate(source, trial)?;
        if evaluation.candidate_hash != claimed.candidate_hash {
            return Err(Error::Invalid(format!(
                "confirm: the source hashes to {}, but the claim is for {}",
                evaluation.candidate_hash, claimed.candidate_hash
            )));
        }
        evaluations.push(evaluation);
    }
    let failed = evaluations.iter().find(|e| !e.passed);
    let confirmed = match failed {
        Some(_) => None,
        None => evaluations
            .iter()
            .filter_map(|e| e.score)
            .min_by(f64::total_cmp),
    };
    let (holds, reason) = match (failed, confirmed) {
        (Some(e), _) => (
            false,
            format!(
                "trial {} failed at {}: {}",
                e.provenance.trial,
                e.stage_reached.name(),
                e.feedback
            ),
        ),
        (None, Some(score)) if score >= threshold => (
            true,
            format!("fresh trials scored at least {score:.4}, within tolerance of the claimed {claimed_score:.4}"),
        ),
        (None, score) => (
            false,
            format!(
                "fresh trials scored {}, below {threshold:.4} (the claimed {claimed_score:.4} \
                 less the tolerance)",
                score.map_or("nothing".into(), |s| format!("{s:.4}"))
            ),
        ),
    };
    Ok(Confirmation {
        holds,
        claimed: claimed_score,
        confirmed,
        threshold,
        reason,
        evaluations,
    })
}
