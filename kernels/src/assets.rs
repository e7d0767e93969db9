//! Where fetched models and data live: `$EVOKERNEL_ASSETS`, or `assets/` at the workspace root.
//! `scripts/fetch-assets` puts every file named here in place.

use std::path::PathBuf;

use crate::{Error, Result};

/// A file that `scripts/fetch-assets` provides, by the name that script's `--only` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asset {
    /// The `--only` name in `scripts/fetch-assets`.
    pub name: &'static str,
    /// Path below the assets directory.
    pub relative: &'static str,
}

pub const SMOLLM2: Asset = Asset {
    name: "smollm2",
    relative: "models/smollm2-135m-instruct-q4_1.gguf",
};
pub const QWEN_CODER: Asset = Asset {
    name: "qwen-coder",
    relative: "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
};
pub const GEMMA3: Asset = Asset {
    name: "gemma3",
    relative: "models/gemma-3-270m-q4_k_m.gguf",
};
pub const AUSTEN: Asset = Asset {
    name: "austen",
    relative: "data/austen",
};
pub const MOVIELENS_100K: Asset = Asset {
    name: "movielens",
    relative: "data/ml-100k",
};
pub const HUMANEVAL: Asset = Asset {
    name: "humaneval",
    relative: "data/humaneval/HumanEval.jsonl",
};
/// Gemma 3's published `tokenizer.json`, the oracle for our SentencePiece tokenizer.
pub const GEMMA3_TOKENIZER_JSON: Asset = Asset {
    name: "gemma3-tokenizer",
    relative: "tokenizers/gemma3/tokenizer.json",
};

/// The models `--model` accepts by short name.
pub const MODELS: [Asset; 3] = [SMOLLM2, QWEN_CODER, GEMMA3];

/// The assets directory: `$EVOKERNEL_ASSETS` if set, else `assets/` at the workspace root.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("EVOKERNEL_ASSETS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|root| root.join("assets"))
            .unwrap_or_else(|| PathBuf::from("assets")),
    }
}

impl Asset {
    pub fn path(&self) -> PathBuf {
        assets_dir().join(self.relative)
    }

    /// The path, or an error that tells the user which fetch to run.
    pub fn require(&self) -> Result<PathBuf> {
        let path = self.path();
        if path.exists() {
            Ok(path)
        } else {
            Err(Error::MissingAsset {
                path,
                name: self.name.to_string(),
            })
        }
    }
}

/// Resolves `--model`: a short name from [`MODELS`] or a path to a GGUF file.
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf> {
    match MODELS.iter().find(|asset| asset.name == name_or_path) {
        Some(asset) => asset.require(),
        None => Ok(PathBuf::from(name_or_path)),
    }
}
