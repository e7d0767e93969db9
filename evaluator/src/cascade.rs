//! Runs a task's stages in order, timing each, and stops at the first failure.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::{Error, Evaluation, Provenance, Stage, StageTiming};

/// Why a stage ended without passing.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The candidate failed `stage` (usually the one running; a probe may find that an
    /// earlier symptom belongs to a later stage), with feedback for the mutator.
    Failed { stage: Stage, feedback: String },
    /// The evaluation itself could not run.
    Error(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Error(e)
    }
}

/// The candidate failed `stage`, for the reason in `feedback`.
pub(crate) fn failed(stage: Stage, feedback: impl Into<String>) -> Stop {
    Stop::Failed {
        stage,
        feedback: feedback.into(),
    }
}

/// An evaluation under way.
pub(crate) struct Cascade {
    evaluation: Evaluation,
    stopped: bool,
}

impl Cascade {
    pub fn new(task: &str, candidate_hash: String, provenance: Provenance) -> Cascade {
        Cascade {
            evaluation: Evaluation {
                task: task.to_string(),
                candidate_hash,
                stage_reached: Stage::Parse,
                passed: false,
                score: None,
                metrics: BTreeMap::new(),
                descriptors: BTreeMap::new(),
                feedback: String::new(),
                timings: Vec::new(),
                provenance,
            },
            stopped: false,
        }
    }

    pub fn provenance_mut(&mut self) -> &mut Provenance {
        &mut self.evaluation.provenance
    }

    /// Runs `stage` unless an earlier one failed. `Ok(Some(value))`: it passed;
    /// `Ok(None)`: this or an earlier stage failed and the cascade is over.
    pub fn run<T>(
        &mut self,
        stage: Stage,
        body: impl FnOnce(&mut Evaluation) -> Result<T, Stop>,
    ) -> crate::Result<Option<T>> {
        if self.stopped {
            return Ok(None);
        }
        self.evaluation.stage_reached = stage;
        let started = Instant::now();
        let result = body(&mut self.evaluation);
        self.evaluation.timings.push(StageTiming {
            stage,
            seconds: started.elapsed().as_secs_f64(),
        });
        match result {
            Ok(value) => Ok(Some(value)),
            Err(Stop::Failed { stage, feedback }) => {
                self.stopped = true;
                self.evaluation.stage_reached = stage;
                self.evaluation.feedback = format!("{} failed: {feedback}", stage.name());
                Ok(None)
            }
            Err(Stop::Error(e)) => Err(e),
        }
    }

    /// The evaluation: passed if no stage failed, with `score` and `feedback` set by the
    /// score stage.
    pub fn finish(mut self) -> Evaluation {
        if !self.stopped {
            self.evaluation.passed = true;
        } else {
            self.evaluation.score = None;
        }
        self.evaluation
    }
}

impl From<kernels::Error> for Stop {
    fn from(e: kernels::Error) -> Stop {
        Stop::Error(e.into())
    }
}

/// The static stage's AKL checks, with feedback that says what to change.
pub(crate) fn static_check(
    program: &kernels::akl::Program,
) -> Result<kernels::akl::CheckedProgram, Stop> {
    kernels::akl::check(program).map_err(|e| {
        failed(
            Stage::Static,
            format!("{e}. Change that clause so the check can prove it."),
        )
    })
}
