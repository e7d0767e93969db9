//! The evolution engine and the discovered-kernel database (filled by the agent issue),
//! and the peer engine the `bench` command measures our core against.

pub mod engine;
pub mod knowledge;
pub mod llm;
pub mod mutate;
pub mod peer;
