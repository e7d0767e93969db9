use std::path::PathBuf;

/// Why an evaluation could not run at all. A candidate that fails a stage is not an error:
/// it is an [`crate::Evaluation`] with `passed: false`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Kernels(#[from] kernels::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;
