use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The cascade's stages, cheapest first. Each task runs the subset that applies to it, in
/// this order, and stops at the first failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The text parses (AKL programs).
    Parse,
    /// Static checks: the mask is provably within causal, parameters lie in their ranges.
    Static,
    /// Changing real input tokens after position p leaves every output at positions ≤ p alone.
    Causality,
    /// No NaN or infinity anywhere in the outputs.
    Finite,
    /// Two runs on the same input agree bit for bit.
    Determinism,
    /// Closeness to exact attention (KL, perplexity change).
    Fidelity,
    /// Training the candidate inside the recommender (recsys task).
    Train,
    /// Running the external command (command task).
    Run,
    /// Measured time and memory, and the cost model.
    Cost,
    /// The scalar score and the archive descriptors.
    Score,
    /// The evaluation ran past its wall-clock limit and was stopped (any stage).
    Timeout,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Static => "static",
            Stage::Causality => "causality",
            Stage::Finite => "finite",
            Stage::Determinism => "determinism",
            Stage::Fidelity => "fidelity",
            Stage::Train => "train",
            Stage::Run => "run",
            Stage::Cost => "cost",
            Stage::Score => "score",
            Stage::Timeout => "timeout",
        }
    }
}

/// Wall time spent in one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: Stage,
    pub seconds: f64,
}

/// What is needed to reproduce an evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub evaluator_version: String,
    /// SHA-256 of the model file the candidate ran in, where there is one.
    pub model_sha256: Option<String>,
    /// Ids of the data slices used (for example `austen/persuasion.txt@120000+4096`).
    pub slices: Vec<String>,
    pub seeds: Vec<u64>,
    /// 0 for a first evaluation; confirmation runs use later trials.
    pub trial: u32,
    /// The command task's sandbox; absent for the other tasks and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxKind>,
}

/// How the command task isolated a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxKind {
    /// bubblewrap's namespaces: its own file-system view, PID namespace and network.
    Namespaces,
    /// rlimits, a process group and a `/proc` sweep only (where namespaces are unavailable
    /// or the config turns them off).
    ProcessGroup,
}

/// The result of evaluating one candidate on one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The task's name (`drop-in`, `recsys`, `command`).
    pub task: String,
    /// The candidate's identity: the SHA-256 of its canonical text (AKL) or of its bytes.
    pub candidate_hash: String,
    /// The last stage run: the one that failed, or [`Stage::Score`] when every stage passed.
    pub stage_reached: Stage,
    pub passed: bool,
    /// The scalar the search maximises; `None` unless every stage passed.
    pub score: Option<f64>,
    /// Every measured number, by name (`kl_vs_exact`, `speedup`, `ndcg@10`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Coordinates in the archive's descriptor space (for MAP-Elites cells).
    pub descriptors: BTreeMap<String, f64>,
    /// Written for an LLM to act on: what failed, where, and what to change.
    pub feedback: String,
    pub timings: Vec<StageTiming>,
    pub provenance: Provenance,
}

impl Evaluation {
    /// Total wall time over all stages, in seconds.
    pub fn seconds(&self) -> f64 {
        self.timings.iter().map(|t| t.seconds).sum()
    }
}
