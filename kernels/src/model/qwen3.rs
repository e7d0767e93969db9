//! Qwen 3: no QKV biases, an explicit head_dim (`attention.key_length`, which need not be
//! d_model / n_heads), and RMS QK-norm per head before NeoX RoPE.

use crate::gguf::GgufFile;
use crate::model::blocks::{Rope, RopeStyle};
use crate::model::config::{Architecture, CommonKeys, ModelConfig, QkNorm};
use crate::Result;

pub fn config(gguf: &GgufFile) -> Result<ModelConfig> {
    let keys = CommonKeys::read(gguf, Architecture::Qwen3)?;
    let rope = Rope::new(RopeStyle::Neox, keys.rope_dims, keys.rope_base, 1.0);
    let mut config = keys.uniform(Architecture::Qwen3, rope);
    config.qk_norm = QkNorm::Rms;
    Ok(config)
}
