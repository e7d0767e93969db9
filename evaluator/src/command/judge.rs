//! Deciding the stages from what an evaluation's runs did, and the feedback for the
//! candidate's author.

use super::config::{CommandConfig, Direction};
use super::metrics::{Correctness, Reported};
use super::sandbox::{LimitHit, RunReport};
use super::Role;
use crate::{Evaluation, Stage};

/// What an evaluation's runs did.
pub(super) struct Runs {
    pub candidate: Option<RunReport>,
    /// Links and special files the candidate left, removed before the command ran.
    pub scrubbed: usize,
    /// The command's run and what it reported; `None` when the candidate's run failed.
    pub grader: Option<(RunReport, Reading)>,
}

/// What the command left for us to read, read before its directory goes.
pub(super) struct Reading {
    pub correctness: Result<Option<Correctness>, String>,
    pub metrics: Result<Reported, String>,
}

/// Decides the stages from the runs and the metrics; returns the score when every stage
/// passed. Fills the evaluation's metrics, descriptors and stage, and the feedback.
pub(super) fn judge(
    config: &CommandConfig,
    runs: &Runs,
    evaluation: &mut Evaluation,
    feedback: &mut Feedback,
) -> Option<f64> {
    let Some((report, reading)) = &runs.grader else {
        let candidate = runs.candidate.as_ref()?;
        feedback.headline = run_failure(config, candidate, Role::Candidate)?;
        return None;
    };
    // Whatever the outcome, keep what the command managed to report.
    if let Ok(reported) = &reading.metrics {
        feedback.absorb(reported);
        evaluation.metrics = reported.metrics.clone();
    }
    let incorrect = match &reading.correctness {
        Ok(Some(Correctness {
            correct: false,
            error,
        })) => Some(match error {
            Some(error) => format!("the evaluator judged the program incorrect: {error}"),
            None => {
                "the evaluator judged the program incorrect (correct.json gave no error)".into()
            }
        }),
        Ok(_) => None,
        Err(problem) => Some(problem.clone()),
    };
    if let Some(headline) = run_failure(config, report, Role::Grader) {
        feedback.headline = headline;
        if report.limit_hit.is_none() {
            feedback.sections.extend(incorrect);
        }
        return None;
    }
    if let Some(incorrect) = incorrect {
        feedback.headline = format!("Run failed: {incorrect}");
        return None;
    }
    let reported = match &reading.metrics {
        Ok(reported) => reported,
        Err(problem) => {
            feedback.headline = format!("Run failed: the metrics could not be read: {problem}");
            return None;
        }
    };

    evaluation.stage_reached = Stage::Score;
    let name = &config.score_metric;
    let value = match (reported.metrics.get(name), reported.non_finite.get(name)) {
        (Some(&value), _) => value,
        (None, Some(token)) => {
            feedback.headline =
                format!("Score failed: `{name}` is {token}; a score must be a finite number.");
            return None;
        }
        (None, None) => {
            feedback.headline = format!(
                "Score failed: the metrics from {} have no `{name}` (found: {}).",
                reported.source,
                listing(reported.metrics.keys())
            );
            return None;
        }
    };
    for descriptor in &config.descriptors {
        match reported.metrics.get(descriptor) {
            Some(&x) => {
                evaluation.descriptors.insert(descriptor.clone(), x);
            }
            None => {
                feedback.headline = format!(
                    "Score failed: the descriptor `{descriptor}` is missing or not a finite number \
                     (found: {}).",
                    listing(reported.metrics.keys())
                );
                return None;
            }
        }
    }
    let score = match config.direction {
        Direction::Maximize => value,
        Direction::Minimize => -value,
    };
    feedback.headline = format!("Passed: `{name}` = {value}.");
    Some(score)
}

/// The headline for a run that hit a limit or did not exit 0, `None` for one that did.
pub(super) fn run_failure(
    config: &CommandConfig,
    report: &RunReport,
    role: Role,
) -> Option<String> {
    let noun = role.noun();
    let exit = report.exit;
    let headline = match report.limit_hit {
        Some(LimitHit::WallClock) => format!(
            "Run failed: {noun} ran past the wall-clock limit of {} s and every process it \
             started was killed. Look for an infinite loop or a blocking wait, or make it faster.",
            config.timeout_seconds
        ),
        Some(LimitHit::CpuTime) => format!(
            "Run failed: a process of {noun} used more than the CPU limit of {} s and was \
             killed ({exit}). Do less work or look for an infinite loop.",
            config.cpu_seconds
        ),
        Some(LimitHit::Memory) => format!(
            "Run failed: {noun} ran out of memory under the address-space limit of {} MiB \
             and ended with {exit}. Use less memory.",
            config.memory_bytes >> 20
        ),
        Some(LimitHit::FileSize) => format!(
            "Run failed: a file grew past the file-size limit of {} MiB ({exit}).",
            config.file_bytes >> 20
        ),
        Some(LimitHit::PrivateDirFull) => format!(
            "Run failed: the private directory is full (at most {} MiB in {} files and \
             directories) and {noun} ended with {exit}. Write less.",
            config.private_dir_bytes >> 20,
            config.private_dir_files
        ),
        None if !exit.success() => format!("Run failed: {noun} ended with {exit}."),
        None => return None,
    };
    Some(headline)
}

fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "no numeric metrics".into()
    } else {
        names.join(", ")
    }
}

/// The sandbox's own measurements of a run, recorded beside whatever the command reported.
pub(super) fn run_metrics(report: &RunReport, prefix: &str) -> [(String, f64); 3] {
    [
        (format!("{prefix}wall_seconds"), report.wall.as_secs_f64()),
        (format!("{prefix}cpu_seconds"), report.cpu.as_secs_f64()),
        (
            format!("{prefix}peak_rss_bytes"),
            report.peak_rss_bytes as f64,
        ),
    ]
}

/// Feedback for the candidate's author, assembled in sections.
#[derive(Default)]
pub(super) struct Feedback {
    pub headline: String,
    pub sections: Vec<String>,
}

impl Feedback {
    pub fn absorb(&mut self, reported: &Reported) {
        if !reported.text.is_empty() {
            self.sections
                .push(format!("The evaluator says:\n{}", reported.text.join("\n")));
        }
        if !reported.notes.is_empty() {
            self.sections
                .push(format!("Metrics not used: {}.", reported.notes.join("; ")));
        }
    }

    pub fn run_notes(&mut self, report: &RunReport, role: Role, feedback_bytes: usize) {
        let noun = role.noun();
        if report.strays_killed > 0 {
            self.sections.push(format!(
                "{} process(es) left running by {noun} were killed.",
                report.strays_killed
            ));
        }
        if report.output_held_open {
            self.sections.push(
                "A process that escaped the sandbox kept the output open; the output may be \
                 incomplete."
                    .into(),
            );
        }
        let stream = match role {
            Role::Candidate => "the candidate's ",
            Role::Grader => "",
        };
        if report.stdout.cut_bytes() > 0 {
            self.sections.push(format!(
                "{stream}stdout was {} bytes; only the last {} were kept.",
                report.stdout.total_bytes(),
                report.stdout.bytes().len()
            ));
        }
        if report.stderr.total_bytes() > 0 && feedback_bytes > 0 {
            self.sections.push(format!(
                "{stream}stderr:\n{}",
                report.stderr.tail_for_feedback(feedback_bytes)
            ));
        }
    }

    pub fn text(self) -> String {
        std::iter::once(self.headline)
            .chain(self.sections)
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}
