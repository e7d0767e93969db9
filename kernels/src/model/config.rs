//! What a model is, read from GGUF metadata: one `ModelConfig` that every family fills in,
//! with per-layer settings for the families whose layers differ (Gemma 3, Llama 4).

use crate::attention::Mask;
use crate::model::blocks::{Activation, Rope};

/// The model families we run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Llama4,
}

impl Architecture {
    /// The `general.architecture` values we accept.
    pub const SUPPORTED: [(&'static str, Architecture); 5] = [
        ("llama", Architecture::Llama),
        ("qwen2", Architecture::Qwen2),
        ("qwen3", Architecture::Qwen3),
        ("gemma3", Architecture::Gemma3),
        ("llama4", Architecture::Llama4),
    ];

    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Self::SUPPORTED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, arch)| *arch)
    }

    pub fn gguf_name(self) -> &'static str {
        Self::SUPPORTED
            .iter()
            .find(|(_, arch)| *arch == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }
}

/// How queries and keys are normalised per head before RoPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// RMSNorm with learned weights `attn_q_norm` / `attn_k_norm` (Qwen 3, Gemma 3).
    Rms,
    /// Weightless L2 norm after RoPE on RoPE layers (Llama 4).
    L2,
}

/// Llama 4's attention temperature tuning on NoPE layers: queries are scaled by
/// `log(floor((pos + 1) / floor_scale) + 1) * scale + 1`, which grows with position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TemperatureTuning {
    pub floor_scale: f32,
    pub scale: f32,
}

impl TemperatureTuning {
    pub fn factor(&self, position: usize) -> f32 {
        (((position as f32 + 1.0) / self.floor_scale).floor() + 1.0).ln() * self.scale + 1.0
    }
}

/// How the router turns expert logits into weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts, then top-k (Mixtral, Qwen-MoE).
    Softmax,
    /// Sigmoid of each chosen logit, applied to the expert's input (Llama 4).
    SigmoidBeforeExpert,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub n_experts_used: usize,
    pub expert_ffn: usize,
    /// Hidden size of the always-on shared expert, if any.
    pub shared_expert_ffn: Option<usize>,
    pub gating: Gating,
}

/// Settings that can differ from layer to layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerConfig {
    /// `None` for NoPE layers.
    pub rope: Option<Rope>,
    pub mask: Mask,
    pub temperature_tuning: Option<TemperatureTuning>,
    /// Whether the feed-forward of this layer is a mixture of experts.
    pub moe: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    pub rms_eps: f32,
    pub context_length: usize,
    pub activation: Activation,
    pub qk_norm: QkNorm,
    /// Whether Q, K and V projections carry biases (Qwen 2).
    pub qkv_bias: bool,
    /// Gemma's extra norms after attention and after the feed-forward.
    pub sandwich_norms: bool,
    /// Multiplies token embeddings (Gemma: sqrt(d_model)).
    pub embedding_scale: Option<f32>,
    /// Multiplies q·k (usually 1/sqrt(head_dim)).
    pub attention_scale: f32,
    pub moe: Option<MoeConfig>,
    pub layers: Vec<LayerConfig>,
}

impl ModelConfig {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// The hyperparameters every family stores under `{arch}.*` in the same way.
pub(crate) struct CommonKeys {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    pub rms_eps: f32,
    pub context_length: usize,
    pub rope_base: f32,
    pub rope_dims: usize,
}

impl CommonKeys {
    pub fn read(gguf: &crate::gguf::GgufFile, arch: Architecture) -> crate::Result<Self> {
        let key = |k: &str| format!("{}.{k}", arch.gguf_name());
        let d_model = gguf.usize(&key("embedding_length"))?;
        let n_layers = gguf.usize(&key("block_count"))?;
        let n_heads = gguf.usize(&key("attention.head_count"))?;
        let n_kv_heads = gguf.usize(&key("attention.head_count_kv"))?;
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(crate::Error::BadMetadata {
                path: gguf.path().to_path_buf(),
                key: key("attention.head_count_kv"),
                reason: format!(
                    "{n_heads} query heads are not a multiple of {n_kv_heads} KV heads"
                ),
            });
        }
        let head_dim = match gguf.optional_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => d_model / n_heads,
        };
        // The vocabulary size is the token list's length where no explicit key exists.
        let vocab_size = match gguf.optional_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => match gguf.content().metadata.get("tokenizer.ggml.tokens") {
                Some(candle_core::quantized::gguf_file::Value::Array(tokens)) => tokens.len(),
                _ => {
                    return Err(crate::Error::MissingMetadata {
                        path: gguf.path().to_path_buf(),
                        key: "tokenizer.ggml.tokens".into(),
                    })
                }
            },
        };
        Ok(Self {
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_hidden: gguf.usize(&key("feed_forward_length"))?,
            rms_eps: gguf.f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: gguf.usize(&key("context_length"))?,
            rope_base: gguf
                .optional_f32(&key("rope.freq_base"))?
                .unwrap_or(10_000.0),
            rope_dims: gguf
                .optional_usize(&key("rope.dimension_count"))?
                .unwrap_or(head_dim),
        })
    }

    /// A config with the same layer everywhere; families adjust what differs.
    pub fn uniform(&self, architecture: Architecture, rope: Rope) -> ModelConfig {
        ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            ffn_hidden: self.ffn_hidden,
            rms_eps: self.rms_eps,
            context_length: self.context_length,
            activation: Activation::Silu,
            qk_norm: QkNorm::None,
            qkv_bias: false,
            sandwich_norms: false,
            embedding_scale: None,
            attention_scale: 1.0 / (self.head_dim as f32).sqrt(),
            moe: None,
            layers: vec![
                LayerConfig {
                    rope: Some(rope),
                    mask: Mask::Causal,
                    temperature_tuning: None,
                    moe: false,
                };
                self.n_layers
            ],
        }
    }
}
