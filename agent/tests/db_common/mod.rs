//! Scratch databases and hand-made evaluations for the database and query-CLI tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use evaluator::{Evaluation, Provenance, Stage, StageTiming};

/// A directory under the system temp dir, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("evokernel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("evokernel.db")
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An evaluation of `hash` at `trial` with the given metrics; a passed one scores `score`.
pub fn evaluation(
    hash: &str,
    trial: u32,
    score: Option<f64>,
    metrics: &[(&str, f64)],
) -> Evaluation {
    let passed = score.is_some();
    Evaluation {
        task: "drop-in".into(),
        candidate_hash: hash.into(),
        stage_reached: if passed {
            Stage::Score
        } else {
            Stage::Fidelity
        },
        passed,
        score,
        metrics: metrics.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        descriptors: BTreeMap::from([("attn_flops_ratio".to_string(), 0.25)]),
        feedback: if passed {
            String::new()
        } else {
            "fidelity: KL 0.9 exceeds 0.1; widen the window".into()
        },
        timings: vec![
            StageTiming {
                stage: Stage::Parse,
                seconds: 0.5,
            },
            StageTiming {
                stage: Stage::Fidelity,
                seconds: 2.0,
            },
        ],
        provenance: Provenance {
            evaluator_version: "0.1.0".into(),
            model_sha256: Some("ab".repeat(32)),
            slices: vec!["austen/persuasion.txt@0+1024".into()],
            seeds: vec![7],
            trial,
            sandbox: None,
        },
    }
}

/// A library kernel's canonical text and hash.
pub fn library_program(name: &str) -> (String, String) {
    let (_, source) = kernels::akl::library::LIBRARY
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a library kernel");
    let program = kernels::akl::parse(source).expect("library kernels parse");
    (program.canonical_text(), program.canonical_hash())
}
