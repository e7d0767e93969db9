//! The evolution engine and the discovered-kernel database, the peer engine the `bench`
//! command measures our core against, and the recommender's RecGPT enrichment by the local LLM.

pub mod campaign;
pub mod db;
pub mod diff;
pub mod engine;
pub mod knowledge;
pub mod lineage;
pub mod llm;
pub mod mutate;
pub mod pareto;
pub mod peer;
pub mod recgpt;
