//! A checkpoint directory: `model.safetensors` (the weights), `checkpoint.json` (model
//! config, the kernel's canonical text, the dataset with its item mapping and histories, and
//! the training report). The dataset travels with the model so that `eval` rebuilds the same
//! split and `serve` can answer by user id without the original files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{SasRec, SasRecConfig, TrainReport};
use crate::data::Dataset;
use crate::{Error, Result};

const WEIGHTS: &str = "model.safetensors";
const META: &str = "checkpoint.json";

/// Everything in `checkpoint.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    config: SasRecConfig,
    kernel: String,
    dataset: Dataset,
    report: Option<TrainReport>,
}

/// A trained model with its data.
#[derive(Debug)]
pub struct Checkpoint {
    pub model: SasRec,
    pub dataset: Dataset,
    pub report: Option<TrainReport>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// Writes the checkpoint into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        Checkpoint::write(dir, &self.model, &self.dataset, self.report.as_ref())
    }

    /// Writes a checkpoint from its parts (during training, before a `Checkpoint` exists).
    pub fn write(
        dir: &Path,
        model: &SasRec,
        dataset: &Dataset,
        report: Option<&TrainReport>,
    ) -> Result<()> {
        let io = |path: PathBuf| move |source| Error::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let tensors: std::collections::HashMap<String, candle_core::Tensor> = model
            .params()
            .named()
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        // Each file is written aside and renamed into place, so a run killed mid-write
        // leaves the previous best whole.
        let weights_tmp = dir.join(format!("{WEIGHTS}.tmp"));
        candle_core::safetensors::save(&tensors, &weights_tmp)?;
        std::fs::rename(&weights_tmp, dir.join(WEIGHTS)).map_err(io(dir.join(WEIGHTS)))?;
        let meta = Meta {
            config: model.config.clone(),
            kernel: model.kernel.text.clone(),
            dataset: dataset.clone(),
            report: report.cloned(),
        };
        let json = serde_json::to_string(&meta).map_err(|e| bad(dir, e.to_string()))?;
        let meta_tmp = dir.join(format!("{META}.tmp"));
        std::fs::write(&meta_tmp, json).map_err(io(meta_tmp.clone()))?;
        std::fs::rename(&meta_tmp, dir.join(META)).map_err(io(dir.join(META)))
    }

    /// Reads a checkpoint written by `save`, checking the weights against the config.
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let meta_path = dir.join(META);
        let text = std::fs::read_to_string(&meta_path).map_err(|e| {
            bad(
                dir,
                format!("cannot read {META} ({e}); is this a checkpoint directory?"),
            )
        })?;
        let meta: Meta = serde_json::from_str(&text)
            .map_err(|e| bad(dir, format!("{META} does not parse: {e}")))?;
        if meta.dataset.items.len() != meta.config.n_items {
            return Err(bad(
                dir,
                format!(
                    "{META} lists {} items but the model has {}",
                    meta.dataset.items.len(),
                    meta.config.n_items
                ),
            ));
        }
        let tensors = candle_core::safetensors::load(dir.join(WEIGHTS), &candle_core::Device::Cpu)
            .map_err(|e| bad(dir, format!("{WEIGHTS}: {e}")))?;
        let model = SasRec::from_tensors(meta.config, &meta.kernel, tensors)
            .map_err(|e| bad(dir, e.to_string()))?;
        Ok(Checkpoint {
            model,
            dataset: meta.dataset,
            report: meta.report,
        })
    }
}
