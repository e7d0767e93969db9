//! A campaign's TOML config. Every table rejects fields it does not know, and every error
//! names the file and the field, so that a typo never silently falls back to a default.
//!
//! ```toml
//! name = "quickstart"
//! strategy = "evolve"          # or "random": the baseline at the same budget
//! seed = 7
//! concurrency = 1
//!
//! [task]
//! name = "drop-in"             # drop-in | recsys | command
//! timeout_seconds = 1800       # one evaluation's wall-clock limit (drop-in, recsys)
//! [task.evaluator]             # the evaluator's own settings (evaluator::config)
//! model = "smollm2"
//!
//! [[seeds]]
//! path = "../kernels/library/sink_window.akl"   # relative to this file
//! [[seeds]]
//! text = "(kernel ...)"
//!
//! [islands]
//! count = 2
//! migration_interval = 10      # evaluations between migrations
//! migrants = 1
//!
//! [[archive.descriptors]]
//! name = "attn_flops_ratio"
//! range = [0.0, 1.0]
//! bins = 5
//!
//! [mutators.perturb]
//! weight = 2.0
//! [mutators.local_llm]
//! weight = 1.0
//! model = "qwen-coder"
//! kernel = "best"              # optional: the attention it runs (default exact)
//! kernel_kl_max = 0.05         # the kernel's fidelity gate, nats
//!
//! [search]                    # all optional
//! parent_mix = { cells = 0.4, pareto = 0.2, fitness = 0.4, rank_decay = 0.8 }
//! inspirations = 3             # programs an LLM prompt shows beside the parent
//! debug_retries = 2            # debug rounds for a refused LLM program
//! confirm = { trials = 1, tolerance = 0.1 }   # fresh trials for a would-be best
//!
//! [budget]
//! evaluations = 40
//! wall_seconds = 840
//! llm_tokens = 200000
//! ```

use std::path::{Path, PathBuf};

use evaluator::ConfirmOptions;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::engine::population::ParentMix;
use crate::llm::kernel::KernelChoice;
use crate::mutate::{self, Mutator, Which};

/// What can be wrong with a campaign config; each error names the file, and the field
/// or seed at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the campaign config {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "campaign config {}: {}{message}",
        path.display(),
        field.as_ref().map(|f| format!("in `{f}`: ")).unwrap_or_default()
    )]
    Parse {
        path: PathBuf,
        /// The dotted path of the field at fault, where the error points at one.
        field: Option<String>,
        message: String,
    },
    #[error("campaign config {}: `{field}` {why}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        why: String,
    },
    #[error("campaign config {}: seed program {seed}: {message}", path.display())]
    Seed {
        path: PathBuf,
        seed: String,
        message: String,
    },
}

/// How new candidates are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Islands, archives and mutators.
    #[default]
    Evolve,
    /// Random valid programs: the baseline that shows what evolution added.
    Random,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Evolve => "evolve",
            Strategy::Random => "random",
        }
    }

    /// The strategy a name spells.
    pub fn parse(name: &str) -> Option<Strategy> {
        [Strategy::Evolve, Strategy::Random]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// A campaign, as its TOML file describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    /// The name the campaign is stored under.
    pub name: String,
    #[serde(default)]
    pub strategy: Strategy,
    /// Seeds every random choice of the campaign.
    #[serde(default)]
    pub seed: u64,
    /// Evaluations run at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    pub task: TaskConfig,
    /// The programs the search starts from.
    pub seeds: Vec<SeedProgram>,
    #[serde(default)]
    pub islands: Islands,
    #[serde(default)]
    pub archive: Archive,
    #[serde(default)]
    pub mutators: Mutators,
    #[serde(default)]
    pub search: Search,
    pub budget: Budget,
    /// The directory relative seed paths are read from (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_concurrency() -> u32 {
    1
}

/// What is evaluated, and the evaluator's settings for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: TaskName,
    /// The wall-clock limit of one evaluation of a drop-in or recsys candidate, which runs in
    /// a worker process killed at the limit (the command task has its own limit).
    #[serde(default = "default_evaluation_timeout")]
    pub timeout_seconds: f64,
    /// The evaluator's own settings (its `[drop_in]`, `[command]` sections).
    #[serde(default)]
    pub evaluator: evaluator::config::EvaluatorConfig,
}

fn default_evaluation_timeout() -> f64 {
    1800.0
}

/// The evaluator's tasks (also `evokernel eval --task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum TaskName {
    /// The kernel replaces attention in a pretrained model.
    #[serde(rename = "drop-in")]
    DropIn,
    /// The kernel is trained inside the recommender.
    #[serde(rename = "recsys")]
    Recsys,
    /// Any program, scored by an external command.
    #[serde(rename = "command")]
    Command,
}

impl TaskName {
    pub fn name(self) -> &'static str {
        match self {
            TaskName::DropIn => "drop-in",
            TaskName::Recsys => "recsys",
            TaskName::Command => "command",
        }
    }

    /// Whether candidates are AKL programs (the command task takes any text).
    pub fn is_akl(self) -> bool {
        !matches!(self, TaskName::Command)
    }
}

/// A seed program: a file, or the text itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedProgram {
    /// Relative to the config file's directory.
    pub path: Option<PathBuf>,
    pub text: Option<String>,
}

/// A seed program's text and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Seed {
    /// The file, or `seeds[i]` for inline text.
    pub origin: String,
    pub text: String,
}

/// Separate populations that exchange their best programs now and then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Islands {
    pub count: u32,
    /// Evaluations between migrations.
    pub migration_interval: u32,
    /// Programs each island sends its neighbour at a migration.
    pub migrants: u32,
}

impl Default for Islands {
    fn default() -> Self {
        Islands {
            count: 1,
            migration_interval: 50,
            migrants: 1,
        }
    }
}

/// The MAP-Elites archive: the best program per cell of a grid over descriptors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    #[serde(default)]
    pub descriptors: Vec<Descriptor>,
}

/// One axis of the archive: an evaluation descriptor cut into equal bins over a range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub name: String,
    pub range: [f64; 2],
    pub bins: u32,
}

/// The mutators a campaign may use; absent ones are off. The bandit chooses among those
/// present, starting from their weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutators {
    /// Perturbs a numeric parameter within its range.
    pub perturb: Option<Structural>,
    /// Swaps a clause for one from `kernels/library` (`subtree_swap` in older configs).
    #[serde(alias = "subtree_swap")]
    pub library_swap: Option<Structural>,
    /// Adds or removes an arm of the mask's `or`/`and`.
    pub mask_arm: Option<Structural>,
    /// Adds, retargets or removes the rule of a range of layers or heads.
    pub rule_edit: Option<Structural>,
    /// Combines two parents.
    pub crossover: Option<Structural>,
    /// A GGUF model run in process, decoding constrained by AKL's grammar.
    pub local_llm: Option<LocalLlm>,
    /// An OpenAI-compatible endpoint.
    pub remote_llm: Option<RemoteLlm>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Structural {
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLlm {
    pub weight: f64,
    /// A model short name (`qwen-coder`, `smollm2`, ...) or a GGUF path.
    #[serde(default = "default_local_model")]
    pub model: String,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// The attention the model runs: `"best"` (the database's best passed drop-in program
    /// that passes the fidelity gate), a program id or hash prefix, or a `.akl` file
    /// relative to the config; absent, exact attention. See [`crate::llm::kernel`].
    pub kernel: Option<String>,
    /// The fidelity gate's bound on the mean next-token KL(exact ‖ kernel) over the
    /// mutator's own prompts, in nats.
    #[serde(default = "default_kernel_kl_max")]
    pub kernel_kl_max: f64,
}

impl LocalLlm {
    /// The kernel choice, if any; the error names the bad value.
    pub fn kernel_choice(&self) -> Result<Option<KernelChoice>, String> {
        self.kernel.as_deref().map(KernelChoice::parse).transpose()
    }

    /// Checks the kernel settings: the field at fault (under `mutators.local_llm`) and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        self.kernel_choice().map_err(|why| ("kernel", why))?;
        if !(self.kernel_kl_max.is_finite() && self.kernel_kl_max >= 0.0) {
            return Err((
                "kernel_kl_max",
                "must be a finite number of nats >= 0".to_string(),
            ));
        }
        Ok(())
    }
}

fn default_kernel_kl_max() -> f64 {
    0.05
}

fn default_local_model() -> String {
    kernels::assets::QWEN_CODER.name.to_string()
}

fn default_temperature() -> f64 {
    0.7
}

fn default_max_tokens() -> u32 {
    768
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteLlm {
    pub weight: f64,
    /// The API's base URL, up to and including `/v1`.
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key; none for endpoints that need none.
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u32,
    /// Retries after a failed request, with exponential backoff.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
}

fn default_timeout_seconds() -> u32 {
    120
}

fn default_retries() -> u32 {
    3
}

/// How the loop draws parents, shows context to LLMs, and guards its elites.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Search {
    /// Where parents come from: cell elites, the Pareto front, or by rank.
    pub parent_mix: ParentMix,
    /// Other programs an LLM prompt shows beside the parent.
    pub inspirations: u32,
    /// Debug rounds an LLM mutation gets after its program is refused.
    pub debug_retries: u32,
    /// Fresh trials a would-be island best must pass before it counts (0: none).
    pub confirm: ConfirmOptions,
}

impl Default for Search {
    fn default() -> Self {
        Search {
            parent_mix: ParentMix::default(),
            inspirations: 3,
            debug_retries: 2,
            confirm: ConfirmOptions::default(),
        }
    }
}

/// When the campaign stops: whichever budget runs out first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Evaluations, confirmations included.
    pub evaluations: u64,
    /// Wall time spent running, summed over resumes.
    pub wall_seconds: Option<u64>,
    /// Prompt plus completion tokens over all LLM calls.
    pub llm_tokens: Option<u64>,
}

impl CampaignConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<CampaignConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and checks config text; `path` names it in errors and anchors relative
    /// seed paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<CampaignConfig, ConfigError> {
        let mut config: CampaignConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            field: e.span().and_then(|span| field_at(text, span.start)),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.validate(path)?;
        Ok(config)
    }

    /// Checks what types cannot: ranges, counts, and that the search has something to do.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, why: &str| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                field: field.to_string(),
                why: why.to_string(),
            })
        };
        if self.name.trim().is_empty() {
            return invalid("name", "must not be empty");
        }
        if self.concurrency == 0 {
            return invalid("concurrency", "must be at least 1");
        }
        if let Err(e) = self.task.evaluator.validate() {
            return invalid("task.evaluator", &e.to_string());
        }
        if !(self.task.timeout_seconds.is_finite() && self.task.timeout_seconds >= 1.0) {
            return invalid(
                "task.timeout_seconds",
                "must be a number of seconds, at least 1",
            );
        }
        if self.seeds.is_empty() {
            return invalid("seeds", "must list at least one seed program");
        }
        for (i, seed) in self.seeds.iter().enumerate() {
            if seed.path.is_some() == seed.text.is_some() {
                return invalid(
                    &format!("seeds[{i}]"),
                    "needs exactly one of `path` and `text`",
                );
            }
        }
        if self.islands.count == 0 {
            return invalid("islands.count", "must be at least 1");
        }
        if self.islands.count > 1 && self.islands.migration_interval == 0 {
            return invalid("islands.migration_interval", "must be at least 1");
        }
        for (i, d) in self.archive.descriptors.iter().enumerate() {
            if self.archive.descriptors[..i]
                .iter()
                .any(|e| e.name == d.name)
            {
                return invalid(
                    &format!("archive.descriptors[{i}].name"),
                    &format!("repeats the descriptor `{}`", d.name),
                );
            }
            let [lo, hi] = d.range;
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return invalid(
                    &format!("archive.descriptors[{i}].range"),
                    "must be two finite numbers, the first below the second",
                );
            }
            if d.bins == 0 {
                return invalid(
                    &format!("archive.descriptors[{i}].bins"),
                    "must be at least 1",
                );
            }
        }
        let weights = self.mutator_weights();
        for (mutator, weight) in &weights {
            if !(weight.is_finite() && *weight >= 0.0) {
                return invalid(
                    &format!("mutators.{}.weight", mutator.name()),
                    "must be a finite number >= 0",
                );
            }
        }
        if self.strategy == Strategy::Evolve && !weights.iter().any(|(_, w)| *w > 0.0) {
            return invalid(
                "mutators",
                "needs at least one mutator with a positive weight for strategy \"evolve\"",
            );
        }
        let temperatures = [
            self.mutators
                .local_llm
                .as_ref()
                .map(|m| ("local_llm", m.temperature)),
            self.mutators
                .remote_llm
                .as_ref()
                .map(|m| ("remote_llm", m.temperature)),
        ];
        for (name, t) in temperatures.into_iter().flatten() {
            if !(t.is_finite() && t >= 0.0) {
                return invalid(
                    &format!("mutators.{name}.temperature"),
                    "must be a finite number >= 0",
                );
            }
        }
        if let Some(Err((field, why))) = self.mutators.local_llm.as_ref().map(LocalLlm::check) {
            return invalid(&format!("mutators.local_llm.{field}"), &why);
        }
        if let Some(remote) = &self.mutators.remote_llm {
            if !(remote.base_url.starts_with("http://") || remote.base_url.starts_with("https://"))
            {
                return invalid(
                    "mutators.remote_llm.base_url",
                    "must start with http:// or https://",
                );
            }
            if remote.timeout_seconds == 0 {
                return invalid("mutators.remote_llm.timeout_seconds", "must be at least 1");
            }
        }
        let mix = self.search.parent_mix;
        if ![mix.cells, mix.pareto, mix.fitness]
            .iter()
            .all(|w| w.is_finite() && *w >= 0.0)
            || mix.cells + mix.pareto + mix.fitness <= 0.0
        {
            return invalid(
                "search.parent_mix",
                "needs finite weights >= 0 with a positive sum",
            );
        }
        if !(mix.rank_decay > 0.0 && mix.rank_decay <= 1.0) {
            return invalid("search.parent_mix.rank_decay", "must be in (0, 1]");
        }
        let confirm = &self.search.confirm;
        if !(confirm.tolerance.is_finite() && confirm.tolerance >= 0.0) {
            return invalid("search.confirm.tolerance", "must be a finite number >= 0");
        }
        if self.budget.evaluations == 0 {
            return invalid("budget.evaluations", "must be at least 1");
        }
        Ok(())
    }

    /// The mutators present, with their weights.
    pub fn mutator_weights(&self) -> Vec<(Mutator, f64)> {
        let m = &self.mutators;
        let structural = [
            (mutate::Structural::Perturb, &m.perturb),
            (mutate::Structural::LibrarySwap, &m.library_swap),
            (mutate::Structural::MaskArm, &m.mask_arm),
            (mutate::Structural::RuleEdit, &m.rule_edit),
            (mutate::Structural::Crossover, &m.crossover),
        ];
        structural
            .into_iter()
            .filter_map(|(kind, s)| s.as_ref().map(|s| (Mutator::Structural(kind), s.weight)))
            .chain(
                m.local_llm
                    .as_ref()
                    .map(|l| (Mutator::Llm(Which::Local), l.weight)),
            )
            .chain(
                m.remote_llm
                    .as_ref()
                    .map(|r| (Mutator::Llm(Which::Remote), r.weight)),
            )
            .collect()
    }

    /// Reads the seed programs; for AKL tasks each must parse and pass the static checks.
    /// `config_path` names the config in errors.
    pub fn seed_programs(&self, config_path: &Path) -> Result<Vec<Seed>, ConfigError> {
        let seed_error = |seed: String, message: String| ConfigError::Seed {
            path: config_path.to_path_buf(),
            seed,
            message,
        };
        self.seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| {
                let (origin, text) = match (&seed.path, &seed.text) {
                    (Some(path), None) => {
                        let full = self.base_dir.join(path);
                        let text = std::fs::read_to_string(&full).map_err(|e| {
                            seed_error(full.display().to_string(), format!("cannot read it: {e}"))
                        })?;
                        (full.display().to_string(), text)
                    }
                    (None, Some(text)) => (format!("seeds[{i}]"), text.clone()),
                    _ => {
                        return Err(seed_error(
                            format!("seeds[{i}]"),
                            "needs exactly one of `path` and `text`".into(),
                        ))
                    }
                };
                if self.task.name.is_akl() {
                    kernels::akl::parse_and_check(&text)
                        .map_err(|e| seed_error(origin.clone(), e.to_string()))?;
                }
                Ok(Seed { origin, text })
            })
            .collect()
    }
}

/// The dotted path (`budget.evaluations`, `seeds[1].path`) of the deepest field whose key
/// or value covers byte `offset` of `text`: serde's errors name only the last key.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    field_in_table(document.get_ref(), offset)
}

fn field_in_table(table: &DeTable<'_>, offset: usize) -> Option<String> {
    // A table's span covers only its `[header]`, so every subtable is searched.
    table.iter().find_map(|(key, value)| {
        let covers = key.span().contains(&offset) || value.span().contains(&offset);
        let key = key.get_ref();
        match field_in_value(value.get_ref(), offset) {
            Some(inner) if inner.starts_with('[') => Some(format!("{key}{inner}")),
            Some(inner) => Some(format!("{key}.{inner}")),
            None => covers.then(|| key.to_string()),
        }
    })
}

fn field_in_value(value: &DeValue<'_>, offset: usize) -> Option<String> {
    match value {
        DeValue::Table(table) => field_in_table(table, offset),
        DeValue::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| {
                match field_in_value(item.get_ref(), offset) {
                    Some(inner) => Some(format!("[{i}].{inner}")),
                    None => item.span().contains(&offset).then(|| format!("[{i}]")),
                }
            })
        }
        _ => None,
    }
}
