//! Llama 4 features: chunked attention with RoPE on most layers, NoPE layers with global
//! attention and temperature tuning every `no_rope_layer_step` layers, L2 QK-norm on RoPE
//! layers, and mixture-of-experts feed-forward layers (top-k, sigmoid gating applied to
//! the expert's input, plus an always-on shared expert).

use crate::attention::Mask;
use crate::gguf::GgufFile;
use crate::model::blocks::{Rope, RopeStyle};
use crate::model::config::{
    Architecture, CommonKeys, Gating, ModelConfig, MoeConfig, QkNorm, TemperatureTuning,
};
use crate::Result;

const DEFAULT_CHUNK: usize = 8192;
const DEFAULT_NO_ROPE_STEP: usize = 4;
const TEMPERATURE_FLOOR_SCALE: f32 = 8192.0;
const TEMPERATURE_SCALE: f32 = 0.1;

pub fn config(gguf: &GgufFile) -> Result<ModelConfig> {
    let keys = CommonKeys::read(gguf, Architecture::Llama4)?;
    let chunk = gguf
        .optional_usize("llama4.attention.chunk_size")?
        .unwrap_or(DEFAULT_CHUNK);
    let no_rope_step = gguf
        .optional_usize("llama4.no_rope_layer_step")?
        .unwrap_or(DEFAULT_NO_ROPE_STEP);
    let moe_step = gguf
        .optional_usize("llama4.interleave_moe_layer_step")?
        .unwrap_or(1);
    let floor_scale = gguf
        .optional_f32("llama4.attention.temperature_floor_scale")?
        .unwrap_or(TEMPERATURE_FLOOR_SCALE);
    let temperature_scale = gguf
        .optional_f32("llama4.attention.temperature_scale")?
        .unwrap_or(TEMPERATURE_SCALE);
    let rope = Rope::new(RopeStyle::Interleaved, keys.rope_dims, keys.rope_base, 1.0);

    let mut config = keys.uniform(Architecture::Llama4, rope);
    config.qk_norm = QkNorm::L2;
    if let Some(n_experts) = gguf.optional_usize("llama4.expert_count")? {
        config.moe = Some(MoeConfig {
            n_experts,
            n_experts_used: gguf.usize("llama4.expert_used_count")?,
            expert_ffn: gguf.usize("llama4.expert_feed_forward_length")?,
            shared_expert_ffn: gguf.optional_usize("llama4.expert_shared_feed_forward_length")?,
            gating: Gating::SigmoidBeforeExpert,
        });
    }
    for (i, layer) in config.layers.iter_mut().enumerate() {
        if no_rope_step > 0 && (i + 1).is_multiple_of(no_rope_step) {
            layer.rope = None;
            layer.temperature_tuning = Some(TemperatureTuning {
                floor_scale,
                scale: temperature_scale,
            });
        } else {
            layer.mask = Mask::Chunked { chunk };
        }
        layer.moe = config.moe.is_some() && moe_step > 0 && (i + 1).is_multiple_of(moe_step);
    }
    Ok(config)
}
