//! The language models a campaign asks for programs: a GGUF model on our own core, in
//! process ([`local`]), or any OpenAI-compatible endpoint ([`remote`]). Both answer a
//! [`Request`] with a [`Reply`] that holds what the database records of a call, so that a
//! campaign can be replayed without any model ([`replay`]).

pub mod extract;
pub mod kernel;
pub mod local;
pub mod remote;
pub mod replay;

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a local model is called in replies and records: its file name.
pub fn model_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// One chat turn to a model: a system message and a user message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub system: String,
    pub user: String,
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: u64,
}

/// A model's answer and what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    /// The model that answered, as it names itself (a file name or the endpoint's id).
    pub model: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub seconds: f64,
}
