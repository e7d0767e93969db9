//! Qwen 2 / 2.5 (Qwen2.5-Coder): Llama's block with biases on Q, K and V and NeoX RoPE.

use crate::gguf::GgufFile;
use crate::model::blocks::{Rope, RopeStyle};
use crate::model::config::{Architecture, CommonKeys, ModelConfig};
use crate::Result;

pub fn config(gguf: &GgufFile) -> Result<ModelConfig> {
    let keys = CommonKeys::read(gguf, Architecture::Qwen2)?;
    let rope = Rope::new(RopeStyle::Neox, keys.rope_dims, keys.rope_base, 1.0);
    let mut config = keys.uniform(Architecture::Qwen2, rope);
    config.qkv_bias = true;
    Ok(config)
}
