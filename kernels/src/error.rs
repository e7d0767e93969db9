//! The one error type of the inference core. Every variant names what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a GGUF model we can read (truncated, corrupt, wrong magic).
    #[error("{path}: not a readable GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: unknown architecture `{arch}` (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },
    #[error("{path}: missing metadata key `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}`: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, but the config needs {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request the model cannot serve, such as a prompt longer than the context.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{path}: not UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    /// An asset `scripts/fetch-assets` should have put in place is missing.
    #[error(
        "missing asset {path}: run `scripts/fetch-assets --only {name}` (or set EVOKERNEL_ASSETS)"
    )]
    MissingAsset { path: PathBuf, name: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
