//! The command task: a program in any language, scored by an external command.
//!
//! Each evaluation writes the candidate into a fresh private area (`area`), runs the
//! configured command in a sandbox, reads the metrics it reports (`metrics`), and removes the
//! area. With `candidate_command`, the candidate runs first in a sandbox of its own and the
//! command then grades what it left. The stages are [`Stage::Run`] (the commands ran, within
//! their limits, exited 0, reported readable metrics, and `correct.json` did not say
//! otherwise) and [`Stage::Score`] (the score metric is present and finite, and so is every
//! descriptor).
//!
//! The sandbox is bubblewrap's namespaces where it can run (`bubblewrap`, `holder`): each run
//! sees the system directories, the programs it names and the paths the config lists, all
//! read-only, and its own directories on a quota-bounded tmpfs, with no network and a PID
//! namespace that dies with it. Elsewhere (`isolation = "off"`, or `"auto"` without
//! bubblewrap) it is the process-group sandbox (`sandbox`, `sweep`): rlimits, a process group
//! and a `/proc` sweep, and a warning. Linux only.

mod area;
mod bubblewrap;
mod capture;
mod config;
mod holder;
mod judge;
pub mod metrics;
mod program;
pub mod sandbox;
mod scratch;
mod sweep;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use area::{Area, Part, Quota};
use bubblewrap::{Bubblewrap, View};
pub use capture::Captured;
use config::Placeholder;
pub use config::{CommandConfig, Direction, Isolation};
use judge::{judge, run_failure, run_metrics, Feedback, Reading, Runs};
use sandbox::{Enclosure, Job, LimitHit, Limits, RunReport};

use crate::{
    Error, Evaluation, Provenance, Result, SandboxKind, Stage, StageTiming, Task, EVALUATOR_VERSION,
};

/// Scores candidates with an external command (see the module docs).
#[derive(Clone, Debug)]
pub struct CommandTask {
    config: CommandConfig,
    /// What `{config_dir}` expands to: absolute, since the command runs elsewhere.
    config_dir: PathBuf,
    /// `read_only_paths`, absolute.
    read_only_paths: Vec<PathBuf>,
    /// The sandbox, chosen at the first evaluation: bubblewrap, the process-group sandbox
    /// (`None`), or a refusal saying why namespaces cannot run (`isolation = "required"`).
    sandbox: OnceLock<std::result::Result<Option<Bubblewrap>, String>>,
}

/// Whether the namespace sandbox can run on this machine; `Err` says why not and what to
/// install. It starts a private tmpfs in a user namespace and runs bubblewrap there.
pub fn probe_namespaces() -> std::result::Result<(), String> {
    Bubblewrap::probe().map(|_| ())
}

/// One of an evaluation's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `candidate_command`: the candidate alone.
    Candidate,
    /// `command`: the grader (and in the one-command shape the candidate inside it).
    Grader,
}

impl Role {
    fn noun(self) -> &'static str {
        match self {
            Role::Candidate => "the candidate command",
            Role::Grader => "the command",
        }
    }

    fn config_key(self) -> &'static str {
        match self {
            Role::Candidate => "candidate_command",
            Role::Grader => "command",
        }
    }

    fn workdir(self) -> Part {
        match self {
            Role::Candidate => Part::Candidate,
            Role::Grader => Part::Grader,
        }
    }

    fn shm(self) -> Part {
        match self {
            Role::Candidate => Part::CandidateShm,
            Role::Grader => Part::GraderShm,
        }
    }
}

impl CommandTask {
    /// A task from a checked config; `config_dir` is what `{config_dir}` stands for, and what
    /// relative `read_only_paths` are taken from. Each of those must exist.
    pub fn new(config: CommandConfig, config_dir: &Path) -> Result<CommandTask> {
        config.validate().map_err(Error::Invalid)?;
        let config_dir = std::path::absolute(config_dir)?;
        let read_only_paths = config
            .read_only_paths
            .iter()
            .map(|path| {
                let path = config_dir.join(path);
                match path.try_exists() {
                    Ok(true) => Ok(path),
                    _ => Err(Error::Invalid(format!(
                        "`read_only_paths` names {}, which does not exist",
                        path.display()
                    ))),
                }
            })
            .collect::<Result<_>>()?;
        Ok(CommandTask {
            config,
            config_dir,
            read_only_paths,
            sandbox: OnceLock::new(),
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

    /// The sandbox for this task's runs, chosen (and warned about) once: bubblewrap, or
    /// `None` for the process-group sandbox.
    fn sandbox(&self) -> Result<Option<&Bubblewrap>> {
        let chosen = self.sandbox.get_or_init(|| match self.config.isolation {
            Isolation::Off => Ok(None),
            Isolation::Required => Bubblewrap::probe().map(Some),
            Isolation::Auto => Ok(Bubblewrap::probe().map_or_else(
                |reason| {
                    eprintln!(
                        "evokernel: WARNING: the command task runs WITHOUT namespace isolation: \
                     {reason}.\nevokernel: WARNING: each run is confined only by rlimits and a \
                     process-group sweep: a candidate can read and write whatever this user \
                     can, use the network, forge its results and leave processes behind. Set \
                     `isolation = \"required\"` to refuse to run like this."
                    );
                    None
                },
                Some,
            )),
        });
        match chosen {
            Ok(bwrap) => Ok(bwrap.as_ref()),
            Err(reason) => Err(Error::Invalid(format!(
                "isolation = \"required\", but the namespace sandbox cannot run here: {reason}"
            ))),
        }
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

    /// Where the candidate's file is: in its own directory when it runs alone.
    fn program_part(&self) -> Part {
        match self.config.candidate_command {
            Some(_) => Part::Candidate,
            None => Part::Grader,
        }
    }

    fn argv(&self, template: &[String], area: &Area, trial: u32) -> Vec<String> {
        let value = |placeholder| match placeholder {
            Placeholder::Program => self.program_path(area),
            Placeholder::Trial => trial.to_string(),
            Placeholder::ResultsDir => area.path(Part::Results).display().to_string(),
            Placeholder::ConfigDir => self.config_dir.display().to_string(),
            Placeholder::CandidateDir => area.path(Part::Candidate).display().to_string(),
            Placeholder::CandidateStdout => area.path(Part::CandidateStdout).display().to_string(),
        };
        let replacements: Vec<(&str, String)> = Placeholder::ALL
            .into_iter()
            .map(|placeholder| (placeholder.token(), value(placeholder)))
            .collect();
        template
            .iter()
            .map(|arg| {
                replacements
                    .iter()
                    .fold(arg.clone(), |arg, (from, to)| arg.replace(from, to))
            })
            .collect()
    }

    fn program_path(&self, area: &Area) -> String {
        area.path(self.program_part())
            .join(&self.config.program_file)
            .display()
            .to_string()
    }

    fn environment(&self, area: &Area, role: Role, trial: u32) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = self
            .config
            .inherit_env
            .iter()
            .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
            .collect();
        env.extend(self.config.env.clone());
        let shown = |part| area.path(part).display().to_string();
        env.insert("TMPDIR".into(), shown(role.workdir()));
        env.insert("EVOKERNEL_PROGRAM".into(), self.program_path(area));
        env.insert("EVOKERNEL_TRIAL".into(), trial.to_string());
        if role == Role::Grader {
            env.insert("EVOKERNEL_RESULTS_DIR".into(), shown(Part::Results));
            if self.config.candidate_command.is_some() {
                env.insert("EVOKERNEL_CANDIDATE_DIR".into(), shown(Part::Candidate));
                env.insert(
                    "EVOKERNEL_CANDIDATE_STDOUT".into(),
                    shown(Part::CandidateStdout),
                );
            }
        }
        env.into_iter().collect()
    }

    /// What a run sees in namespaces besides the system directories.
    fn view(&self, area: &Area, role: Role, needs: Vec<PathBuf>) -> View {
        // A program in the area itself (`{program}` run directly) is bound with its directory.
        let mut read_only: Vec<PathBuf> = needs
            .into_iter()
            .filter(|path| !area.contains(path))
            .collect();
        read_only.extend(self.read_only_paths.iter().cloned());
        let mut writable = vec![area.path(role.workdir())];
        if role == Role::Grader {
            read_only.push(self.config_dir.clone());
            writable.push(area.path(Part::Results));
            if self.config.candidate_command.is_some() {
                read_only.push(area.path(Part::Candidate));
                read_only.push(area.path(Part::CandidateStdout));
            }
        }
        View {
            read_only,
            writable,
            shm: area.path(role.shm()),
            workdir: area.path(role.workdir()),
            network: self.config.network,
        }
    }

    /// Runs one of the commands in its sandbox; its working directory must exist.
    fn run(
        &self,
        bwrap: Option<&Bubblewrap>,
        area: &Area,
        role: Role,
        template: &[String],
        trial: u32,
    ) -> Result<RunReport> {
        let mut argv = self.argv(template, area, trial);
        let env = self.environment(area, role, trial);
        let path_var = env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.as_str());
        let outside = |path: &Path| area.outside(path);
        let named = argv[0].clone();
        let cannot_run = |problem: String| {
            Error::Invalid(format!(
                "cannot run {} {named:?}: {problem}; check `{}` in the config",
                role.noun(),
                role.config_key()
            ))
        };
        let program = program::find(&named, path_var, outside).map_err(&cannot_run)?;
        argv[0] = program.display().to_string();
        let limits = self.limits();
        let dir = area.path(role.workdir());
        let job = Job {
            argv: &argv,
            env: &env,
            dir: &dir,
            limits: &limits,
        };
        let report = match bwrap {
            Some(bwrap) => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let needs = program::needs(&program, path_var, home.as_deref(), outside);
                let view = self.view(area, role, needs);
                area.fresh_dir(role.shm())?;
                let enclosure = Enclosure {
                    bwrap,
                    view: &view,
                    holder: area.holder().expect("a namespace area has a holder"),
                };
                sandbox::run_enclosed(&job, &enclosure)
            }
            None => sandbox::run(&job),
        };
        let mut report = report.map_err(|e| cannot_run(e.to_string()))?;
        if !report.exit.success() && report.limit_hit.is_none() && area.is_full() {
            report.limit_hit = Some(LimitHit::PrivateDirFull);
        }
        Ok(report)
    }

    /// Runs the candidate (where it runs alone) and the command, and reads what the command
    /// reported; the command does not run when the candidate failed.
    fn run_all(
        &self,
        bwrap: Option<&Bubblewrap>,
        area: &Area,
        source: &str,
        trial: u32,
    ) -> Result<Runs> {
        let program_dir = area.fresh_dir(self.program_part())?;
        fs::write(program_dir.join(&self.config.program_file), source)?;
        let mut scrubbed = 0;
        let candidate = match &self.config.candidate_command {
            Some(template) => {
                let report = self.run(bwrap, area, Role::Candidate, template, trial)?;
                if run_failure(&self.config, &report, Role::Candidate).is_some() {
                    return Ok(Runs {
                        candidate: Some(report),
                        scrubbed,
                        grader: None,
                    });
                }
                scrubbed = area.scrub(Part::Candidate)?;
                area.fresh_file(Part::CandidateStdout, report.stdout.bytes())?;
                area.fresh_dir(Part::Grader)?;
                Some(report)
            }
            None => None,
        };
        let results = area.fresh_dir(Part::Results)?;
        let report = self.run(bwrap, area, Role::Grader, &self.config.command, trial)?;
        let reading = Reading {
            correctness: metrics::read_correctness(&results),
            metrics: metrics::read_metrics(&report.stdout.text(), &results),
        };
        Ok(Runs {
            candidate,
            scrubbed,
            grader: Some((report, reading)),
        })
    }
}

impl Task for CommandTask {
    fn name(&self) -> &'static str {
        "command"
    }

    fn evaluate(&self, source: &str, trial: u32) -> Result<Evaluation> {
        let started = Instant::now();
        let bwrap = self.sandbox()?;
        let (quota, kind) = match bwrap {
            Some(_) => {
                let quota = Quota {
                    bytes: self.config.private_dir_bytes,
                    files: self.config.private_dir_files,
                };
                (Some(quota), SandboxKind::Namespaces)
            }
            None => (None, SandboxKind::ProcessGroup),
        };
        let area = Area::create(quota).map_err(|e| {
            Error::Invalid(format!("cannot make the private directory of a run: {e}"))
        })?;
        let runs = self.run_all(bwrap, &area, source, trial);
        area.remove()?;
        let runs = runs?;
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
                sandbox: Some(kind),
                ..Provenance::default()
            },
        };
        let scoring = Instant::now();
        let mut feedback = Feedback::default();
        let verdict = judge(&self.config, &runs, &mut evaluation, &mut feedback);
        if runs.scrubbed > 0 {
            feedback.sections.push(format!(
                "{} symbolic link(s) or special file(s) the candidate left were removed before \
                 grading; leave regular files only.",
                runs.scrubbed
            ));
        }
        if let Some(report) = &runs.candidate {
            feedback.run_notes(report, Role::Candidate, self.config.feedback_bytes);
            evaluation
                .metrics
                .extend(run_metrics(report, "run.candidate."));
        }
        if let Some((report, _)) = &runs.grader {
            feedback.run_notes(report, Role::Grader, self.config.feedback_bytes);
            evaluation.metrics.extend(run_metrics(report, "run."));
        }
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
