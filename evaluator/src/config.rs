//! The evaluator's settings file: one TOML file, one section per task.
//!
//! ```toml
//! [drop_in]
//! contexts = [512, 1024]
//! score = { objective = "flops_reduction", kl_epsilon = 0.05 }
//!
//! [command]
//! command = ["python3", "{config_dir}/evaluate.py", "{program}", "{results_dir}"]
//! ```
//!
//! Unknown sections and fields are errors that name the field and the file.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[cfg(target_os = "linux")]
use crate::command::CommandConfig;
use crate::drop_in::DropInConfig;
use crate::recommender::RecsysConfig;
use crate::{Error, Result};

/// Every task's settings; a missing section takes its defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorConfig {
    pub drop_in: DropInConfig,
    pub recsys: RecsysConfig,
    /// The command task's settings; it has no defaults, since it needs a command.
    #[cfg(target_os = "linux")]
    pub command: Option<CommandConfig>,
}

impl EvaluatorConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<EvaluatorConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        EvaluatorConfig::parse(&text).map_err(|e| match e {
            Error::Invalid(message) => Error::Config {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<EvaluatorConfig> {
        let config: EvaluatorConfig =
            toml::from_str(text).map_err(|e| Error::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot, section by section (for configs read as part of another
    /// file, such as a campaign's).
    pub fn validate(&self) -> Result<()> {
        self.drop_in.validate()?;
        self.recsys.validate()?;
        #[cfg(target_os = "linux")]
        if let Some(command) = &self.command {
            command
                .validate()
                .map_err(|e| Error::Invalid(format!("[command]: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drop_in::Objective;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(
            EvaluatorConfig::parse("").unwrap(),
            EvaluatorConfig::default()
        );
    }

    #[test]
    fn a_section_sets_what_it_names() {
        let config = EvaluatorConfig::parse(
            "[drop_in]\ncontexts = [512, 1024]\n\
             score = { objective = \"flops_reduction\", kl_epsilon = 0.05 }\n",
        )
        .unwrap();
        assert_eq!(config.drop_in.contexts, vec![512, 1024]);
        assert_eq!(config.drop_in.score.objective, Objective::FlopsReduction);
        assert_eq!(config.drop_in.timing_context(), 1024);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let unknown = EvaluatorConfig::parse("[drop_in]\ncontext = [512]\n").unwrap_err();
        assert!(unknown.to_string().contains("context"), "{unknown}");
        let section = EvaluatorConfig::parse("[dropin]\n").unwrap_err();
        assert!(section.to_string().contains("dropin"), "{section}");
        let objective =
            EvaluatorConfig::parse("[drop_in.score]\nobjective = \"speed\"\n").unwrap_err();
        assert!(objective.to_string().contains("speed"), "{objective}");
        let empty = EvaluatorConfig::parse("[drop_in]\ncontexts = []\n").unwrap_err();
        assert!(empty.to_string().contains("drop_in.contexts"), "{empty}");
        let timing = EvaluatorConfig::parse("[drop_in]\ncontexts = [512]\ntiming_context = 1024\n")
            .unwrap_err();
        assert!(
            timing.to_string().contains("drop_in.timing_context"),
            "{timing}"
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("evk-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("eval.toml");
        std::fs::write(&path, "[drop_in]\nslices_per_source = 0\n").unwrap();
        let e = EvaluatorConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("eval.toml") && e.contains("slices_per_source"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
