//! The evolution engine and the discovered-kernel database, and the peer engine the
//! `bench` command measures our core against.

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
