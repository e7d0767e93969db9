//! The command task's settings, read from TOML.

use std::collections::BTreeMap;
use std::path::Path;

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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The argv template. No shell is involved unless it names one (`["sh", "-c", "..."]`).
    pub command: Vec<String>,
    /// The candidate's file name inside the run's private directory.
    #[serde(default = "defaults::program_file")]
    pub program_file: String,
    /// Wall-clock limit; at it the whole process group is killed.
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
}

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
        }
    }

    /// Parses TOML text; the error names the key or the line to fix.
    pub fn from_toml(text: &str) -> Result<CommandConfig, String> {
        let config: CommandConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: values in range, a plain file name, a usable command.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            return Err("`command` needs at least the program to run, for example \
                        [\"python3\", \"evaluate.py\", \"{program}\"]"
                .into());
        }
        if self.command.iter().any(|arg| arg.contains('\0')) {
            return Err("`command` arguments cannot contain NUL".into());
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
}
