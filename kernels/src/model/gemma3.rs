//! Gemma 3: five sliding-window layers to one global layer, each kind with its own RoPE
//! base (local 10k, global from `rope.freq_base`, optionally linearly scaled); RMS QK-norm;
//! sandwich norms around attention and feed-forward; GeGLU; embeddings scaled by
//! sqrt(d_model). The `(1 + w)` norm weights arrive with the 1 already added by the converter.

use crate::attention::Mask;
use crate::gguf::GgufFile;
use crate::model::blocks::{Activation, Rope, RopeStyle};
use crate::model::config::{Architecture, CommonKeys, ModelConfig, QkNorm};
use crate::Result;

/// One global layer after every five local ones (layers 5, 11, 17, ... are global).
const SLIDING_WINDOW_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;

pub fn is_global_layer(layer: usize) -> bool {
    (layer + 1).is_multiple_of(SLIDING_WINDOW_PATTERN)
}

pub fn config(gguf: &GgufFile) -> Result<ModelConfig> {
    let keys = CommonKeys::read(gguf, Architecture::Gemma3)?;
    let window = gguf.usize("gemma3.attention.sliding_window")?;
    let global_scale = gguf
        .optional_f32("gemma3.rope.scaling.factor")?
        .unwrap_or(1.0);
    // Converters have written the local base under either key; real Gemma 3 uses 10k.
    let local_base = match gguf.optional_f32("gemma3.rope.freq_base_swa")? {
        Some(base) => base,
        None => gguf
            .optional_f32("gemma3.rope.local_freq_base")?
            .unwrap_or(LOCAL_ROPE_BASE),
    };
    let global_rope = Rope::new(
        RopeStyle::Neox,
        keys.rope_dims,
        keys.rope_base,
        global_scale,
    );
    let local_rope = Rope::new(RopeStyle::Neox, keys.rope_dims, local_base, 1.0);

    let mut config = keys.uniform(Architecture::Gemma3, global_rope.clone());
    config.activation = Activation::GeluTanh;
    config.qk_norm = QkNorm::Rms;
    config.sandwich_norms = true;
    config.embedding_scale = Some((keys.d_model as f32).sqrt());
    for (i, layer) in config.layers.iter_mut().enumerate() {
        if !is_global_layer(i) {
            layer.rope = Some(local_rope.clone());
            layer.mask = Mask::SlidingWindow { window };
        }
    }
    Ok(config)
}
