//! The recommender: MovieLens-style data, a SASRec-style causal transformer over item tokens
//! whose attention is any AKL kernel, full-ranking evaluation against popularity and item-kNN
//! baselines, and an HTTP server.
//!
//! The rooms: `data` (loaders, k-core, the chronological leave-one-out split), `model` (the
//! transformer, its training loop and checkpoints), `eval` (metrics and baselines), `fused`
//! (RecGPT's tag-aware fused scoring), `semantic` (semantic IDs and generative retrieval by
//! trie-constrained beam search), `serve` (the axum server). Nothing here touches the
//! network except `serve`, which only listens.

pub mod data;
mod error;
pub mod eval;
pub mod fused;
pub mod model;
pub mod semantic;
pub mod serve;

pub use error::{Error, Result};
