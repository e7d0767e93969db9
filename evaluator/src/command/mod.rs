//! The command task: a program in any language, scored by an external command.
//!
//! Each evaluation writes the candidate into a fresh private directory, runs the configured
//! command there under the sandbox's limits (`sandbox`), reads the metrics it reports
//! (`metrics`), and removes the directory. The stages are [`Stage::Run`] (the command ran,
//! within its limits, exited 0, reported readable metrics, and `correct.json` did not say
//! otherwise) and [`Stage::Score`] (the score metric is present and finite, and so is every
//! descriptor). Linux only: the sweep for stray processes reads `/proc`.

mod capture;
mod config;
pub mod metrics;
pub mod sandbox;
mod scratch;
mod sweep;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use capture::Captured;
pub use config::{CommandConfig, Direction};
use metrics::{Correctness, Reported};
use sandbox::{Job, LimitHit, Limits, RunReport};
use scratch::ScratchDir;

use crate::{Error, Evaluation, Provenance, Result, Stage, StageTiming, Task, EVALUATOR_VERSION};

/// The results directory's name inside the run's private directory.
const RESULTS_DIR: &str = "results";

/// Scores candidates with an external command (see the module docs).
#[derive(Clone, Debug)]
pub struct CommandTask {
    config: CommandConfig,
    /// What `{config_dir}` expands to: absolute, since the command runs elsewhere.
    config_dir: PathBuf,
}

impl CommandTask {
    /// A task from a checked config; `config_dir` is what `{config_dir}` stands for.
    pub fn new(config: CommandConfig, config_dir: &Path) -> Result<CommandTask> {
        config.validate().map_err(Error::Invalid)?;
        Ok(CommandTask {
            config,
            config_dir: std::path::absolute(config_dir)?,
        })
    }

    /// Reads the config from a TOML file; `{config_dir}` is the file's directory.
    pub fn from_file(path: &Path) -> Result<CommandTask> {
        let config_error = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let config = CommandConfig::from_toml(&text).map_err(config_error)?;
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
        CommandTask::new(config, dir.unwrap_or(Path::new(".")))
    }

    pub fn config(&self) -> &CommandConfig {
        &self.config
    }

    fn limits(&self) -> Limits {
        Limits {
            wall: Duration::from_secs_f64(self.config.timeout_seconds),
            cpu_seconds: self.config.cpu_seconds,
            memory_bytes: self.config.memory_bytes,
            file_bytes: self.config.file_bytes,
            output_bytes: self.config.output_bytes,
        }
    }

    fn argv(&self, program: &Path, results: &Path, trial: u32) -> Vec<String> {
        let replacements = [
            ("{program}", program.display().to_string()),
            ("{results_dir}", results.display().to_string()),
            ("{config_dir}", self.config_dir.display().to_string()),
            ("{trial}", trial.to_string()),
        ];
        self.config
            .command
            .iter()
            .map(|arg| {
                replacements
                    .iter()
                    .fold(arg.clone(), |arg, (from, to)| arg.replace(from, to))
            })
            .collect()
    }

    fn environment(
        &self,
        dir: &Path,
        program: &Path,
        results: &Path,
        trial: u32,
    ) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = self
            .config
            .inherit_env
            .iter()
            .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
            .collect();
        env.extend(self.config.env.clone());
        for (name, value) in [
            ("TMPDIR", dir.display().to_string()),
            ("EVOKERNEL_PROGRAM", program.display().to_string()),
            ("EVOKERNEL_RESULTS_DIR", results.display().to_string()),
            ("EVOKERNEL_TRIAL", trial.to_string()),
        ] {
            env.insert(name.into(), value);
        }
        env.into_iter().collect()
    }

    /// Runs the command on the candidate in a fresh directory and reads what it reported.
    fn run_in_scratch(&self, source: &str, trial: u32) -> Result<(RunReport, Reading)> {
        let scratch = ScratchDir::create()?;
        let program = scratch.path().join(&self.config.program_file);
        let results = scratch.path().join(RESULTS_DIR);
        fs::write(&program, source)?;
        fs::create_dir(&results)?;
        let argv = self.argv(&program, &results, trial);
        let env = self.environment(scratch.path(), &program, &results, trial);
        let limits = self.limits();
        let job = Job {
            argv: &argv,
            env: &env,
            dir: scratch.path(),
            limits: &limits,
        };
        let report = sandbox::run(&job).map_err(|e| {
            Error::Invalid(format!(
                "cannot run the command {:?}: {e}; check `command` in the config",
                argv[0]
            ))
        })?;
        let reading = Reading {
            correctness: metrics::read_correctness(&results),
            metrics: metrics::read_metrics(&report.stdout.text(), &results),
        };
        scratch.remove()?;
        Ok((report, reading))
    }
}

/// What the command left for us to read, read before its directory goes.
struct Reading {
    correctness: std::result::Result<Option<Correctness>, String>,
    metrics: std::result::Result<Reported, String>,
}

impl Task for CommandTask {
    fn name(&self) -> &'static str {
        "command"
    }

    fn evaluate(&self, source: &str, trial: u32) -> Result<Evaluation> {
        let started = Instant::now();
        let (report, reading) = self.run_in_scratch(source, trial)?;
        let mut evaluation = Evaluation {
            task: self.name().into(),
            candidate_hash: kernels::akl::sha256_hex(source.as_bytes()),
            stage_reached: Stage::Run,
            passed: false,
            score: None,
            metrics: BTreeMap::new(),
            descriptors: BTreeMap::new(),
            feedback: String::new(),
            timings: vec![StageTiming {
                stage: Stage::Run,
                seconds: started.elapsed().as_secs_f64(),
            }],
            provenance: Provenance {
                evaluator_version: EVALUATOR_VERSION.into(),
                trial,
                ..Provenance::default()
            },
        };
        let scoring = Instant::now();
        let mut feedback = Feedback::default();
        let verdict = judge(
            &self.config,
            &report,
            reading,
            &mut evaluation,
            &mut feedback,
        );
        feedback.run_notes(&report, self.config.feedback_bytes);
        evaluation.metrics.extend(run_metrics(&report));
        if evaluation.stage_reached == Stage::Score {
            evaluation.timings.push(StageTiming {
                stage: Stage::Score,
                seconds: scoring.elapsed().as_secs_f64(),
            });
        }
        evaluation.passed = verdict.is_some();
        evaluation.score = verdict;
        evaluation.feedback = feedback.text();
        Ok(evaluation)
    }
}

/// Decides the stages from the run and its metrics; returns the score when every stage
/// passed. Fills the evaluation's metrics, descriptors and stage, and the feedback.
fn judge(
    config: &CommandConfig,
    report: &RunReport,
    reading: Reading,
    evaluation: &mut Evaluation,
    feedback: &mut Feedback,
) -> Option<f64> {
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
    if let Some(limit) = report.limit_hit {
        feedback.headline = limit_headline(limit, report, config);
        return None;
    }
    if !report.exit.success() {
        feedback.headline = format!("Run failed: the command ended with {}.", report.exit);
        feedback.sections.extend(incorrect);
        return None;
    }
    if let Some(incorrect) = incorrect {
        feedback.headline = format!("Run failed: {incorrect}");
        return None;
    }
    let reported = match reading.metrics {
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

fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "no numeric metrics".into()
    } else {
        names.join(", ")
    }
}

fn limit_headline(limit: LimitHit, report: &RunReport, config: &CommandConfig) -> String {
    match limit {
        LimitHit::WallClock => format!(
            "Run failed: the command ran past the wall-clock limit of {} s and its whole process \
             group was killed. Look for an infinite loop or a blocking wait, or make it faster.",
            config.timeout_seconds
        ),
        LimitHit::CpuTime => format!(
            "Run failed: a process used more than the CPU limit of {} s and was killed ({}). \
             Do less work or look for an infinite loop.",
            config.cpu_seconds, report.exit
        ),
        LimitHit::Memory => format!(
            "Run failed: the program ran out of memory under the address-space limit of {} MiB \
             and ended with {}. Use less memory.",
            config.memory_bytes >> 20,
            report.exit
        ),
        LimitHit::FileSize => format!(
            "Run failed: a file grew past the file-size limit of {} MiB ({}).",
            config.file_bytes >> 20,
            report.exit
        ),
    }
}

/// The sandbox's own measurements, recorded beside whatever the command reported.
fn run_metrics(report: &RunReport) -> [(String, f64); 3] {
    [
        ("run.wall_seconds".into(), report.wall.as_secs_f64()),
        ("run.cpu_seconds".into(), report.cpu.as_secs_f64()),
        ("run.peak_rss_bytes".into(), report.peak_rss_bytes as f64),
    ]
}

/// Feedback for the candidate's author, assembled in sections.
#[derive(Default)]
struct Feedback {
    headline: String,
    sections: Vec<String>,
}

impl Feedback {
    fn absorb(&mut self, reported: &Reported) {
        if !reported.text.is_empty() {
            self.sections
                .push(format!("The evaluator says:\n{}", reported.text.join("\n")));
        }
        if !reported.notes.is_empty() {
            self.sections
                .push(format!("Metrics not used: {}.", reported.notes.join("; ")));
        }
    }

    fn run_notes(&mut self, report: &RunReport, feedback_bytes: usize) {
        if report.strays_killed > 0 {
            self.sections.push(format!(
                "{} process(es) left running by the command were killed.",
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
        if report.stdout.cut_bytes() > 0 {
            self.sections.push(format!(
                "stdout was {} bytes; only the last {} were kept.",
                report.stdout.total_bytes(),
                report.stdout.bytes().len()
            ));
        }
        if report.stderr.total_bytes() > 0 && feedback_bytes > 0 {
            self.sections.push(format!(
                "stderr:\n{}",
                report.stderr.tail_for_feedback(feedback_bytes)
            ));
        }
    }

    fn text(self) -> String {
        std::iter::once(self.headline)
            .chain(self.sections)
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}
