//! The command task's settings, read from TOML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Whether a larger or a smaller score metric is better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    #[serde(alias = "maximise")]
    Maximize,
    #[serde(alias = "minimise")]
    Minimize,
}

/// How a run is isolated from the machine (see the module docs of `command`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Namespaces where bubblewrap can run, else the process-group sandbox with a warning.
    #[default]
    Auto,
    /// Namespaces, or no evaluation at all.
    Required,
    /// The process-group sandbox only.
    Off,
}

/// How to score a candidate with an external command. Only `command` is required:
///
/// ```toml
/// command = ["python3", "{config_dir}/evaluate.py", "{program}", "{results_dir}"]
/// program_file = "program.py"
/// timeout_seconds = 60
/// ```
///
/// In `command`, `{program}` becomes the path of the candidate's file, `{results_dir}` an empty
/// directory for `metrics.json` / `correct.json`, `{config_dir}` the directory of the config
/// file, and `{trial}` the trial number (also in `EVOKERNEL_TRIAL`). The command runs in the
/// run's private directory, so a script beside the config is named through `{config_dir}`.
///
/// With `candidate_command`, the candidate runs first, in a sandbox of its own that sees
/// neither the config's directory nor the results; `command` then grades what it left, seen
/// read-only at `{candidate_dir}`, with the tail of its stdout in the file `{candidate_stdout}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The argv template. No shell is involved unless it names one (`["sh", "-c", "..."]`).
    pub command: Vec<String>,
    /// The candidate's file name inside the run's private directory.
    #[serde(default = "defaults::program_file")]
    pub program_file: String,
    /// Wall-clock limit of each run; at it every process of the run is killed.
    #[serde(default = "defaults::timeout_seconds")]
    pub timeout_seconds: f64,
    /// CPU-time limit per process (RLIMIT_CPU).
    #[serde(default = "defaults::cpu_seconds")]
    pub cpu_seconds: u64,
    /// Address-space limit per process (RLIMIT_AS), in bytes.
    #[serde(default = "defaults::memory_bytes")]
    pub memory_bytes: u64,
    /// Largest file a process may write (RLIMIT_FSIZE), in bytes.
    #[serde(default = "defaults::file_bytes")]
    pub file_bytes: u64,
    /// The metric that becomes the score.
    #[serde(default = "defaults::score_metric")]
    pub score_metric: String,
    #[serde(default)]
    pub direction: Direction,
    /// Metrics copied into the evaluation's descriptors (for MAP-Elites cells); each must be
    /// reported.
    #[serde(default)]
    pub descriptors: Vec<String>,
    /// Variables set for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables passed through from our environment; nothing else is inherited.
    #[serde(default = "defaults::inherit_env")]
    pub inherit_env: Vec<String>,
    /// How much of each of stdout and stderr is kept (the tail), in bytes.
    #[serde(default = "defaults::output_bytes")]
    pub output_bytes: usize,
    /// How much of stderr's tail goes into the feedback, in bytes.
    #[serde(default = "defaults::feedback_bytes")]
    pub feedback_bytes: usize,
    /// Runs the candidate in a sandbox of its own before `command` grades it.
    #[serde(default)]
    pub candidate_command: Option<Vec<String>>,
    /// Namespaces (bubblewrap) or the process-group sandbox.
    #[serde(default)]
    pub isolation: Isolation,
    /// Whether runs may use the network (in namespaces they get none by default).
    #[serde(default)]
    pub network: bool,
    /// Paths every run sees read-only in namespaces, besides the system directories, the
    /// programs the commands name and (for `command`) the config's directory. Relative paths
    /// are taken from the config's directory.
    #[serde(default)]
    pub read_only_paths: Vec<PathBuf>,
    /// The private directory's size limit (a tmpfs in namespaces), in bytes.
    #[serde(default = "defaults::private_dir_bytes")]
    pub private_dir_bytes: u64,
    /// How many files and directories the private directory may hold (in namespaces).
    #[serde(default = "defaults::private_dir_files")]
    pub private_dir_files: u64,
}

/// A week: longer than any evaluation should take, and short enough for every clock.
const MAX_TIMEOUT_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

mod defaults {
    pub fn program_file() -> String {
        "program.py".into()
    }
    pub fn timeout_seconds() -> f64 {
        60.0
    }
    pub fn cpu_seconds() -> u64 {
        60
    }
    pub fn memory_bytes() -> u64 {
        4 << 30
    }
    pub fn file_bytes() -> u64 {
        1 << 30
    }
    pub fn score_metric() -> String {
        "combined_score".into()
    }
    pub fn inherit_env() -> Vec<String> {
        ["PATH", "HOME", "LANG"].map(String::from).to_vec()
    }
    pub fn output_bytes() -> usize {
        1 << 20
    }
    pub fn feedback_bytes() -> usize {
        4000
    }
    pub fn private_dir_bytes() -> u64 {
        1 << 30
    }
    pub fn private_dir_files() -> u64 {
        100_000
    }
}

/// What the argv templates may contain, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placeholder {
    Program,
    Trial,
    ResultsDir,
    ConfigDir,
    CandidateDir,
    CandidateStdout,
}

impl Placeholder {
    pub(crate) const ALL: [Placeholder; 6] = [
        Placeholder::Program,
        Placeholder::Trial,
        Placeholder::ResultsDir,
        Placeholder::ConfigDir,
        Placeholder::CandidateDir,
        Placeholder::CandidateStdout,
    ];

    pub(crate) fn token(self) -> &'static str {
        match self {
            Placeholder::Program => "{program}",
            Placeholder::Trial => "{trial}",
            Placeholder::ResultsDir => "{results_dir}",
            Placeholder::ConfigDir => "{config_dir}",
            Placeholder::CandidateDir => "{candidate_dir}",
            Placeholder::CandidateStdout => "{candidate_stdout}",
        }
    }

    /// Whether the placeholder means anything in `candidate_command` (the candidate sees
    /// neither the grader's directory nor the results).
    fn in_candidate_command(self) -> bool {
        matches!(
            self,
            Placeholder::Program | Placeholder::Trial | Placeholder::CandidateDir
        )
    }

    /// Whether the placeholder needs a candidate run before `command`.
    fn needs_candidate_run(self) -> bool {
        matches!(
            self,
            Placeholder::CandidateDir | Placeholder::CandidateStdout
        )
    }
}

/// The largest tmpfs inode count we ask for; far beyond any sensible task.
const MAX_PRIVATE_DIR_FILES: u64 = 1 << 32;

impl CommandConfig {
    /// A config with `command` and every default.
    pub fn new(command: Vec<String>) -> CommandConfig {
        CommandConfig {
            command,
            program_file: defaults::program_file(),
            timeout_seconds: defaults::timeout_seconds(),
            cpu_seconds: defaults::cpu_seconds(),
            memory_bytes: defaults::memory_bytes(),
            file_bytes: defaults::file_bytes(),
            score_metric: defaults::score_metric(),
            direction: Direction::default(),
            descriptors: Vec::new(),
            env: BTreeMap::new(),
            inherit_env: defaults::inherit_env(),
            output_bytes: defaults::output_bytes(),
            feedback_bytes: defaults::feedback_bytes(),
            candidate_command: None,
            isolation: Isolation::default(),
            network: false,
            read_only_paths: Vec::new(),
            private_dir_bytes: defaults::private_dir_bytes(),
            private_dir_files: defaults::private_dir_files(),
        }
    }

    /// Parses TOML text; the error names the key or the line to fix.
    pub fn from_toml(text: &str) -> Result<CommandConfig, String> {
        let config: CommandConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: values in range, a plain file name, usable commands.
    pub fn validate(&self) -> Result<(), String> {
        check_argv("command", &self.command)?;
        for placeholder in Placeholder::ALL {
            let token = placeholder.token();
            let used = self.command.iter().any(|arg| arg.contains(token));
            if used && placeholder.needs_candidate_run() && self.candidate_command.is_none() {
                return Err(format!(
                    "`command` uses {token}, which only exists with `candidate_command`"
                ));
            }
        }
        if let Some(candidate) = &self.candidate_command {
            check_argv("candidate_command", candidate)?;
            for placeholder in Placeholder::ALL {
                let token = placeholder.token();
                if !placeholder.in_candidate_command()
                    && candidate.iter().any(|arg| arg.contains(token))
                {
                    return Err(format!(
                        "`candidate_command` cannot use {token}: the candidate's sandbox sees \
                         neither the grader's directory nor the results; list what the \
                         candidate needs in `read_only_paths`"
                    ));
                }
            }
        }
        if let Some(bad) = self.read_only_paths.iter().find(|path| {
            path.as_os_str().is_empty()
                || path.as_os_str().as_encoded_bytes().contains(&0)
                || path.as_path() == Path::new("/")
        }) {
            return Err(format!(
                "`read_only_paths` entry {bad:?} must name a file or directory (not empty, \
                 not `/`, no NUL)"
            ));
        }
        if self.private_dir_bytes < 1 << 20 {
            return Err(format!(
                "`private_dir_bytes` = {} is below 1 MiB; the program alone needs room",
                self.private_dir_bytes
            ));
        }
        if !(16..=MAX_PRIVATE_DIR_FILES).contains(&self.private_dir_files) {
            return Err(format!(
                "`private_dir_files` must be between 16 and {MAX_PRIVATE_DIR_FILES}, not {}",
                self.private_dir_files
            ));
        }
        let name = Path::new(&self.program_file);
        let plain = name
            .file_name()
            .is_some_and(|file| file == name.as_os_str());
        if !plain || self.program_file.contains('\0') {
            return Err(format!(
                "`program_file` must be a plain file name such as \"program.py\", not {:?}",
                self.program_file
            ));
        }
        if !(self.timeout_seconds > 0.0 && self.timeout_seconds <= MAX_TIMEOUT_SECONDS) {
            return Err(format!(
                "`timeout_seconds` must be a positive number of seconds up to \
                 {MAX_TIMEOUT_SECONDS} (a week), not {}",
                self.timeout_seconds
            ));
        }
        if self.cpu_seconds == 0 {
            return Err("`cpu_seconds` must be at least 1".into());
        }
        if self.memory_bytes < 1 << 20 {
            return Err(format!(
                "`memory_bytes` = {} is below 1 MiB; no program starts in that",
                self.memory_bytes
            ));
        }
        if self.output_bytes == 0 {
            return Err("`output_bytes` must be positive: the metrics may come on stdout".into());
        }
        if self.score_metric.is_empty() {
            return Err("`score_metric` cannot be empty".into());
        }
        let names = self.env.keys().chain(&self.inherit_env);
        if let Some(bad) = names
            .into_iter()
            .find(|name| name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(format!(
                "environment variable name {bad:?} is empty or contains '=' or NUL"
            ));
        }
        Ok(())
    }
}

fn check_argv(key: &str, argv: &[String]) -> Result<(), String> {
    if argv.first().is_none_or(|program| program.is_empty()) {
        return Err(format!(
            "`{key}` needs at least the program to run, for example \
             [\"python3\", \"evaluate.py\", \"{{program}}\"]"
        ));
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(format!("`{key}` arguments cannot contain NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_takes_every_default() {
        let config = CommandConfig::from_toml("command = [\"./score\", \"{program}\"]").unwrap();
        assert_eq!(
            config,
            CommandConfig::new(vec!["./score".into(), "{program}".into()])
        );
        assert_eq!(config.direction, Direction::Maximize);
    }

    #[test]
    fn both_spellings_of_the_direction() {
        let config = CommandConfig::from_toml(
            "command = [\"x\"]\ndirection = \"minimise\"\nscore_metric = \"loss\"",
        )
        .unwrap();
        assert_eq!(config.direction, Direction::Minimize);
        assert_eq!(config.score_metric, "loss");
    }

    #[test]
    fn mistakes_are_named() {
        let error = CommandConfig::from_toml("command = [\"x\"]\ntimeout = 3").unwrap_err();
        assert!(error.contains("unknown field `timeout`"), "{error}");
        let error = CommandConfig::from_toml("program_file = \"a.py\"").unwrap_err();
        assert!(error.contains("missing field `command`"), "{error}");
        let error =
            CommandConfig::from_toml("command = [\"x\"]\nprogram_file = \"../a.py\"").unwrap_err();
        assert!(error.contains("plain file name"), "{error}");
        let error = CommandConfig::from_toml("command = []").unwrap_err();
        assert!(error.contains("at least the program"), "{error}");
        for bad in ["-1", "0", "nan", "inf", "1e300"] {
            let text = format!("command = [\"x\"]\ntimeout_seconds = {bad}");
            let error = CommandConfig::from_toml(&text).unwrap_err();
            assert!(error.contains("positive number"), "{bad}: {error}");
        }
        let error =
            CommandConfig::from_toml("command = [\"x\"]\n[env]\n\"A=B\" = \"1\"").unwrap_err();
        assert!(error.contains("contains '='"), "{error}");
    }

    #[test]
    fn sandbox_keys_are_read_and_checked() {
        let config = CommandConfig::from_toml(
            "command = [\"python3\", \"{config_dir}/grade.py\", \"{candidate_dir}\"]\n\
             candidate_command = [\"python3\", \"{program}\"]\n\
             isolation = \"required\"\nnetwork = true\nread_only_paths = [\"data\"]\n\
             private_dir_bytes = 2000000\nprivate_dir_files = 500",
        )
        .unwrap();
        assert_eq!(config.isolation, Isolation::Required);
        assert!(config.network);
        assert_eq!(config.read_only_paths, vec![PathBuf::from("data")]);
        assert_eq!(
            (config.private_dir_bytes, config.private_dir_files),
            (2000000, 500)
        );

        for (text, phrase) in [
            ("isolation = \"strict\"", "unknown variant `strict`"),
            ("private_dir_bytes = 1000", "below 1 MiB"),
            ("private_dir_files = 3", "between 16 and"),
            ("read_only_paths = [\"/\"]", "not `/`"),
            (
                "candidate_command = []",
                "`candidate_command` needs at least",
            ),
            (
                "candidate_command = [\"sh\", \"{config_dir}/run.sh\"]",
                "cannot use {config_dir}",
            ),
            (
                "candidate_command = [\"sh\", \"-c\", \"echo > {results_dir}/m\"]",
                "cannot use {results_dir}",
            ),
        ] {
            let error =
                CommandConfig::from_toml(&format!("command = [\"x\"]\n{text}")).unwrap_err();
            assert!(error.contains(phrase), "{text}: {error}");
        }
        let error =
            CommandConfig::from_toml("command = [\"cat\", \"{candidate_stdout}\"]").unwrap_err();
        assert!(
            error.contains("only exists with `candidate_command`"),
            "{error}"
        );
    }
}
