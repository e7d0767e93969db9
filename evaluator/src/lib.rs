//! Scoring of candidate kernels: a cascade of checks that stops at the first failure.
//!
//! The evaluator sits outside the program being evolved: a candidate is only ever text, and
//! every number in an [`Evaluation`] is measured here, by code the candidate cannot touch.
//! A [`Task`] runs the cascade for one kind of candidate; a failed stage is an ordinary
//! result (`passed: false` with feedback for the mutator), while an [`Error`] means the
//! evaluation itself could not run (a missing model, a bad config) and says nothing of the
//! candidate.
//!
//! - [`drop_in`]: an AKL program in place of a pretrained model's attention;
//! - [`recommender`]: an AKL program as the attention of the recommender, trained for a budget;
//! - `command` (Linux): any program scored by an external command in a sandbox;
//! - [`probe`]: the run-time probes (causality, finite, determinism) on any kernels;
//! - [`confirm()`]: elite confirmation on fresh slices and seeds;
//! - [`worker`]: evaluations in worker processes under a wall-clock limit;
//! - [`config`]: the evaluator's TOML file.

mod cascade;
#[cfg(target_os = "linux")]
pub mod command;
pub mod config;
mod confirm;
pub mod drop_in;
mod error;
mod evaluation;
pub mod metric;
pub mod probe;
pub mod recommender;
pub mod seeds;
pub mod worker;

pub use confirm::{confirm, ConfirmOptions, Confirmation};
pub use error::{Error, Result};
pub use evaluation::{Evaluation, Provenance, SandboxKind, Stage, StageTiming};

/// The version recorded in every evaluation, so that a stored row names the code that scored it.
pub const EVALUATOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One kind of evaluation: the cascade, its settings and its data.
pub trait Task: Send + Sync {
    /// The task's name as the CLI and the database spell it (`drop-in`, `recsys`, `command`).
    fn name(&self) -> &'static str;

    /// Runs the cascade on `source` (the candidate's text).
    ///
    /// Trial 0 uses the task's standard slices and seeds; every later trial draws fresh ones,
    /// deterministically from the trial number, so that elite confirmation measures the
    /// candidate on data it was not selected on and any trial can be reproduced.
    fn evaluate(&self, source: &str, trial: u32) -> Result<Evaluation>;
}
