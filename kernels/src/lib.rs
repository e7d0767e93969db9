//! The inference core: GGUF models on candle-core, tokenizers from GGUF metadata, one
//! attention interface with swappable kernels, and generation.
//!
//! This crate knows nothing of SQLite, HTTP or evolution.

pub mod akl;
pub mod assets;
pub mod attention;
pub mod constrain;
mod error;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod perplexity;
pub mod profile;
pub mod quant;
pub mod stats;
pub mod tokenizer;
pub mod trainable;

pub use error::{Error, Result};
pub use model::{KvCache, Logits, Model, ModelConfig, WeightFormat};
