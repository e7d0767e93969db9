//! Llama (SmolLM2, Mistral): pre-norm blocks, GQA, SwiGLU, interleaved RoPE.
//!
//! llama.cpp's converter permutes Q and K so that GGUF Llama weights use adjacent-pair
//! ("normal") RoPE rather than the Hugging Face halves.

use crate::gguf::GgufFile;
use crate::model::blocks::{Rope, RopeStyle};
use crate::model::config::{Architecture, CommonKeys, ModelConfig};
use crate::Result;

pub fn config(gguf: &GgufFile) -> Result<ModelConfig> {
    let keys = CommonKeys::read(gguf, Architecture::Llama)?;
    let rope = Rope::new(RopeStyle::Interleaved, keys.rope_dims, keys.rope_base, 1.0);
    Ok(keys.uniform(Architecture::Llama, rope))
}
