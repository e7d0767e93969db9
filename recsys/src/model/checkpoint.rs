//! A checkpoint directory: `model.safetensors` (the weights), `checkpoint.json` (model
//! config, the kernel's canonical text, its SHA-256 and, for a kernel from the
//! discovered-kernel database, its program id and campaign; the dataset with its item mapping
//! and histories, and the training report). The dataset travels with the model so that
//! `eval` rebuilds the same split and `serve` can answer by user id without the original
//! files.

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
    /// SHA-256 of `kernel`, the hash the discovered-kernel database keys programs by.
    /// Checkpoints written before it was recorded lack it.
    #[serde(default)]
    kernel_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kernel_source: Option<KernelSource>,
    dataset: Dataset,
    report: Option<TrainReport>,
}

/// Where a kernel came from, when a campaign found it: its program in the discovered-kernel
/// database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSource {
    pub program_id: i64,
    pub campaign: String,
}

/// A trained model with its data.
#[derive(Debug)]
pub struct Checkpoint {
    pub model: SasRec,
    pub dataset: Dataset,
    pub report: Option<TrainReport>,
    /// Where the model's kernel came from (none: a file, the library or the default).
    pub kernel_source: Option<KernelSource>,
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
        Checkpoint::write(
            dir,
            &self.model,
            &self.dataset,
            self.report.as_ref(),
            self.kernel_source.as_ref(),
        )
    }

    /// Writes a checkpoint from its parts (during training, before a `Checkpoint` exists).
    pub fn write(
        dir: &Path,
        model: &SasRec,
        dataset: &Dataset,
        report: Option<&TrainReport>,
        kernel_source: Option<&KernelSource>,
    ) -> Result<()> {
        save_weights(dir, model)?;
        let meta = Meta {
            config: model.config.clone(),
            kernel: model.kernel.text.clone(),
            kernel_sha256: Some(model.kernel.hash.clone()),
            kernel_source: kernel_source.cloned(),
            dataset: dataset.clone(),
            report: report.cloned(),
        };
        let json = serde_json::to_string(&meta).map_err(|e| bad(dir, e.to_string()))?;
        write_atomically(&dir.join(META), json.as_bytes())
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
        let model = load_weights(dir, meta.config, &meta.kernel)?;
        if let Some(recorded) = meta.kernel_sha256.filter(|h| *h != model.kernel.hash) {
            return Err(bad(
                dir,
                format!(
                    "{META} records kernel_sha256 {recorded}, but its kernel text hashes to {}: \
                     the file was edited; restore it or train again",
                    model.kernel.hash
                ),
            ));
        }
        Ok(Checkpoint {
            model,
            dataset: meta.dataset,
            report: meta.report,
            kernel_source: meta.kernel_source,
        })
    }
}

/// Writes `model`'s weights to `model.safetensors` in `dir` (created if missing).
pub fn save_weights(dir: &Path, model: &SasRec) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = model
        .params()
        .named()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    // Written aside and renamed into place, so a run killed mid-write leaves the previous
    // best whole.
    let tmp = dir.join(format!("{WEIGHTS}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, dir.join(WEIGHTS)).map_err(|source| Error::Io {
        path: dir.join(WEIGHTS),
        source,
    })
}

/// A model of `config` running `kernel` with the weights in `dir`'s `model.safetensors`,
/// each checked against the config.
pub fn load_weights(dir: &Path, config: SasRecConfig, kernel: &str) -> Result<SasRec> {
    let tensors = candle_core::safetensors::load(dir.join(WEIGHTS), &candle_core::Device::Cpu)
        .map_err(|e| bad(dir, format!("{WEIGHTS}: {e}")))?;
    SasRec::from_tensors(config, kernel, tensors).map_err(|e| bad(dir, e.to_string()))
}

/// Writes `bytes` to `path` through a file beside it and a rename, so that a reader never
/// sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
