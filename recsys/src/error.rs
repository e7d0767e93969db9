//! The one error type of the recommender. Every variant names what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A dataset line that does not parse: the file, the 1-based line and what is wrong.
    #[error("{path}:{line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A dataset directory or file set we cannot use as a whole.
    #[error("{path}: {reason}")]
    BadDataset { path: PathBuf, reason: String },
    /// A checkpoint that is missing a part or does not match its own config.
    #[error("checkpoint {path}: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    /// A request or setting the recommender cannot honour.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Kernels(#[from] kernels::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
