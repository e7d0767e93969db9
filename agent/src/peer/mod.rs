//! candle-transformers' quantized models on the same GGUF files: the independent
//! implementation our core is checked against (`tests/oracle.rs`) and timed against
//! (`evokernel bench core`), and llama.cpp's `llama-bench`, the peer users actually run
//! (`llama_cpp`).

pub mod llama_cpp;

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Result, Tensor};
use candle_transformers::models::{
    quantized_gemma3, quantized_llama, quantized_qwen2, quantized_qwen3,
};

/// candle-transformers' quantized model for a GGUF's architecture.
pub enum PeerModel {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
}

impl PeerModel {
    /// Loads the GGUF at `path` with the candle-transformers model of its architecture.
    pub fn load(path: &Path) -> Result<Self> {
        let mut file = File::open(path)?;
        let content = gguf_file::Content::read(&mut file)?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let device = Device::Cpu;
        Ok(match arch.as_str() {
            "llama" => Self::Llama(quantized_llama::ModelWeights::from_gguf(
                content, &mut file, &device,
            )?),
            "qwen2" => Self::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
                content, &mut file, &device,
            )?),
            "qwen3" => Self::Qwen3(quantized_qwen3::ModelWeights::from_gguf(
                content, &mut file, &device,
            )?),
            "gemma3" => Self::Gemma3(quantized_gemma3::ModelWeights::from_gguf(
                content, &mut file, &device,
            )?),
            other => {
                candle_core::bail!("candle-transformers peer: no quantized model for `{other}`")
            }
        })
    }

    /// Runs `tokens` at positions `index_pos..` (0 starts a new sequence) and returns the
    /// logits of the last position.
    pub fn forward(&mut self, tokens: &[u32], index_pos: usize) -> Result<Vec<f32>> {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = match self {
            Self::Llama(m) => m.forward(&input, index_pos)?,
            Self::Qwen2(m) => m.forward(&input, index_pos)?,
            Self::Qwen3(m) => m.forward(&input, index_pos)?,
            Self::Gemma3(m) => m.forward(&input, index_pos)?,
        };
        logits.flatten_all()?.to_vec1::<f32>()
    }
}
