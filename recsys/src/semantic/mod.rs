//! Semantic IDs and generative retrieval, the recommender's second retriever.
//!
//! The path: each item's text (title, year, genres) through the local language model on our
//! core, mean-pooled final hidden states as its embedding (`embed`, cached in a file);
//! residual k-means in levels over the embeddings (`kmeans`), each item's codes plus a
//! disambiguation code making a unique ID (`ids`); a causal transformer over the code tokens
//! of a history trained to predict the next item's codes, and beam search constrained to the
//! trie of valid IDs to recommend (`trie`, `retriever`).

pub mod embed;
pub mod ids;
pub mod kmeans;
pub mod retriever;
pub mod trie;

pub use embed::{item_text, EmbeddingKey, ItemEmbeddings};
pub use ids::{Collisions, ItemId, SemanticIds};
pub use kmeans::{KMeans, LevelReport, Points, ResidualKMeans, RqConfig};
pub use retriever::{
    train_generative, GenerativeCheckpoint, GenerativeConfig, GenerativeRetriever, RANKED,
};
pub use trie::{beam_search, Beam, Trie};
