//! Transformer models loaded from GGUF. One `Model` type runs every family: each family's
//! module reads its `ModelConfig` from the metadata, and the shared blocks below do the rest.
//! Attention goes through `crate::attention::AttentionKernel`, chosen per layer.

pub mod blocks;
pub mod config;
pub mod gemma3;
mod kv_cache;
pub mod linear;
pub mod llama;
pub mod llama4;
pub mod qwen2;
pub mod qwen3;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::attention::{
    AttentionInput, AttentionKernel, CachePolicy, LayerAttention, Mask, TiledAttention,
};
use crate::gguf::GgufFile;
use crate::profile::{timed, Op};
use crate::tokenizer::{ChatTemplate, Tokenizer};
use crate::{Error, Result};
use blocks::{add_assign, gated, l2_norm, rms_norm, softmax, to_head_major, to_row_major};
pub use config::{Architecture, ModelConfig};
use config::{Gating, MoeConfig, QkNorm};
pub use kv_cache::KvCache;
pub use linear::WeightFormat;
use linear::{to_f32_vec, Linear};

/// Which positions' logits `Model::forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position: `[vocab]`.
    Last,
    /// Every position of the call: `[n_tokens, vocab]`.
    All,
    /// Positions `row..` of the call: `[n_tokens - row, vocab]`.
    From(usize),
}

/// A loaded model: weights, tokenizer, and one attention kernel per layer.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    /// None when the file carries no chat template (base models other than Gemma).
    pub chat_template: Option<ChatTemplate>,
    token_embedding: QTensor,
    blocks: Vec<Block>,
    final_norm: Vec<f32>,
    output: Linear,
    kernels: Vec<Arc<dyn AttentionKernel>>,
}

#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn: FeedForward,
    post_ffn_norm: Option<Vec<f32>>,
}

#[derive(Debug)]
enum FeedForward {
    Dense(GatedFfn),
    Moe(Moe),
}

#[derive(Debug)]
struct GatedFfn {
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug)]
struct Moe {
    config: MoeConfig,
    router: Linear,
    experts: Vec<GatedFfn>,
    shared: Option<GatedFfn>,
}

impl Model {
    /// Loads a GGUF model and its tokenizer; every layer starts with the exact tiled kernel.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, WeightFormat::AsStored)
    }

    /// Loads with the weights held in `format`.
    pub fn load_with(path: &Path, format: WeightFormat) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        let arch_name = gguf.string("general.architecture")?;
        let architecture =
            Architecture::from_gguf_name(&arch_name).ok_or_else(|| Error::UnknownArchitecture {
                path: path.to_path_buf(),
                arch: arch_name.clone(),
                supported: Architecture::SUPPORTED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let config = match architecture {
            Architecture::Llama => llama::config(&gguf)?,
            Architecture::Qwen2 => qwen2::config(&gguf)?,
            Architecture::Qwen3 => qwen3::config(&gguf)?,
            Architecture::Gemma3 => gemma3::config(&gguf)?,
            Architecture::Llama4 => llama4::config(&gguf)?,
        };
        validate_config(&config, path)?;
        let tokenizer = Tokenizer::from_gguf(gguf.content(), path)?;
        let chat_template = match ChatTemplate::from_gguf(gguf.content(), path) {
            Ok(template) => Some(template),
            Err(Error::MissingMetadata { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut model = Self::from_weights(config, tokenizer, &mut gguf, format)?;
        model.chat_template = chat_template;
        Ok(model)
    }

    fn from_weights(
        config: ModelConfig,
        tokenizer: Tokenizer,
        gguf: &mut GgufFile,
        format: WeightFormat,
    ) -> Result<Self> {
        let c = &config;
        let (d, q_dim, kv_dim) = (c.d_model, c.q_dim(), c.kv_dim());
        let token_embedding = gguf.tensor("token_embd.weight", &[c.vocab_size, d])?;
        let output = match gguf.optional_tensor("output.weight", &[c.vocab_size, d])? {
            Some(t) => Linear::new(t, format)?,
            None => Linear::new(
                gguf.tensor("token_embd.weight", &[c.vocab_size, d])?,
                format,
            )?,
        };
        let final_norm = to_f32_vec(&gguf.tensor("output_norm.weight", &[d])?)?;

        let mut blocks = Vec::with_capacity(c.n_layers());
        for (i, layer) in c.layers.iter().enumerate() {
            let name = |t: &str| format!("blk.{i}.{t}");
            let mut vector = |t: &str, len: usize| -> Result<Vec<f32>> {
                to_f32_vec(&gguf.tensor(&name(t), &[len])?)
            };
            let attn_norm = vector("attn_norm.weight", d)?;
            let ffn_norm = vector("ffn_norm.weight", d)?;
            let (q_bias, k_bias, v_bias) = if c.qkv_bias {
                (
                    Some(vector("attn_q.bias", q_dim)?),
                    Some(vector("attn_k.bias", kv_dim)?),
                    Some(vector("attn_v.bias", kv_dim)?),
                )
            } else {
                (None, None, None)
            };
            let (q_norm, k_norm) = if c.qk_norm == QkNorm::Rms {
                (
                    Some(vector("attn_q_norm.weight", c.head_dim)?),
                    Some(vector("attn_k_norm.weight", c.head_dim)?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = if c.sandwich_norms {
                (
                    Some(vector("post_attention_norm.weight", d)?),
                    Some(vector("post_ffw_norm.weight", d)?),
                )
            } else {
                (None, None)
            };
            let mut matrix = |t: &str, rows: usize, cols: usize| -> Result<Linear> {
                Linear::new(gguf.tensor(&name(t), &[rows, cols])?, format)
            };
            let q = matrix("attn_q.weight", q_dim, d)?;
            let k = matrix("attn_k.weight", kv_dim, d)?;
            let v = matrix("attn_v.weight", kv_dim, d)?;
            let o = matrix("attn_output.weight", d, q_dim)?;
            let ffn = match (layer.moe, c.moe) {
                (true, Some(moe)) => FeedForward::Moe(load_moe(gguf, i, d, moe, format)?),
                _ => FeedForward::Dense(GatedFfn {
                    gate: matrix("ffn_gate.weight", c.ffn_hidden, d)?,
                    up: matrix("ffn_up.weight", c.ffn_hidden, d)?,
                    down: matrix("ffn_down.weight", d, c.ffn_hidden)?,
                }),
            };
            blocks.push(Block {
                attn_norm,
                q,
                k,
                v,
                o,
                q_bias,
                k_bias,
                v_bias,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm,
                ffn,
                post_ffn_norm,
            });
        }
        let kernels =
            vec![Arc::new(TiledAttention::default()) as Arc<dyn AttentionKernel>; blocks.len()];
        Ok(Self {
            config,
            tokenizer,
            chat_template: None,
            token_embedding,
            blocks,
            final_norm,
            output,
            kernels,
        })
    }

    /// Replaces the attention kernel of one layer.
    pub fn set_attention_kernel(
        &mut self,
        layer: usize,
        kernel: Arc<dyn AttentionKernel>,
    ) -> Result<()> {
        let n = self.kernels.len();
        let slot = self.kernels.get_mut(layer).ok_or_else(|| {
            Error::InvalidRequest(format!("layer {layer} does not exist (the model has {n})"))
        })?;
        *slot = kernel;
        Ok(())
    }

    /// Uses one kernel in every layer.
    pub fn set_attention_kernel_everywhere(&mut self, kernel: Arc<dyn AttentionKernel>) {
        self.kernels.iter_mut().for_each(|k| *k = kernel.clone());
    }

    /// The key and value projection weights of `layer`, `[kv_dim, d_model]` each, row-major,
    /// as f32 (dequantized if stored quantized). Biases are not included.
    pub fn kv_projection_f32(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let block = self.block(layer)?;
        Ok((block.k.to_f32()?, block.v.to_f32()?))
    }

    /// Replaces the key and value projection weights of `layer` by f32 weights
    /// `[kv_dim, d_model]`, row-major; biases stay as they are. This is how a low-rank
    /// factorisation `W = U · D` runs in the model: `W h = U (D h)`, so keys and values from
    /// the product weights are those rebuilt from the latent `D h`, up to float rounding.
    pub fn set_kv_projection(&mut self, layer: usize, w_k: Vec<f32>, w_v: Vec<f32>) -> Result<()> {
        let (kv_dim, d) = (self.config.kv_dim(), self.config.d_model);
        self.block(layer)?;
        for (name, weights) in [("keys", &w_k), ("values", &w_v)] {
            if weights.len() != kv_dim * d {
                return Err(Error::InvalidRequest(format!(
                    "layer {layer}: {name} projection needs [{kv_dim}, {d}] = {} weights, got {}",
                    kv_dim * d,
                    weights.len()
                )));
            }
        }
        let block = &mut self.blocks[layer];
        block.k = Linear::from_f32(w_k, kv_dim, d)?;
        block.v = Linear::from_f32(w_v, kv_dim, d)?;
        Ok(())
    }

    fn block(&self, layer: usize) -> Result<&Block> {
        self.blocks.get(layer).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "layer {layer} does not exist (the model has {})",
                self.blocks.len()
            ))
        })
    }

    pub fn attention_kernel(&self, layer: usize) -> Option<&Arc<dyn AttentionKernel>> {
        self.kernels.get(layer)
    }

    /// Every layer's attention kernel, in layer order.
    pub fn attention_kernels(&self) -> &[Arc<dyn AttentionKernel>] {
        &self.kernels
    }

    /// The attention settings the model gives layer `layer`'s kernel.
    pub fn layer_attention(&self, layer: usize) -> Option<LayerAttention> {
        self.config.layers.get(layer).map(|l| LayerAttention {
            scale: self.config.attention_scale,
            mask: l.mask,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.config.n_layers(),
            self.config.n_kv_heads,
            self.config.head_dim,
        )
    }

    /// Runs `tokens` after what `cache` already holds, appends their keys and values to it,
    /// and returns logits. Prefill is one call with the prompt; decode is one call per token.
    /// After the call, each layer whose kernel has a keep policy drops the keys it no longer
    /// keeps (`AttentionKernel::cache_policy`).
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], logits: Logits) -> Result<Vec<f32>> {
        self.forward_with(cache, tokens, logits, &self.kernels)
    }

    /// Like `forward`, with `kernels[layer]` in place of the model's own attention kernels:
    /// a candidate and exact attention can then run side by side on one model.
    pub fn forward_with(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
        kernels: &[Arc<dyn AttentionKernel>],
    ) -> Result<Vec<f32>> {
        let first_row = match logits {
            Logits::Last => tokens.len().saturating_sub(1),
            Logits::All => 0,
            Logits::From(row) => row.min(tokens.len().saturating_sub(1)),
        };
        let hidden = self.hidden_rows(cache, tokens, first_row, kernels)?;
        self.output_head(&hidden)
    }

    /// Like `forward_with`, but returns the final hidden states of every position of the call
    /// (after the final norm), `[n_tokens, d_model]`, instead of logits. `output_head` turns
    /// them into the logits `forward_with` gives, row by row and bit for bit; a caller that
    /// needs many positions' logits later keeps `d_model` floats a row rather than `vocab`.
    pub fn forward_hidden_with(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        kernels: &[Arc<dyn AttentionKernel>],
    ) -> Result<Vec<f32>> {
        self.hidden_rows(cache, tokens, 0, kernels)
    }

    /// Logits `[rows, vocab]` from final hidden states `[rows, d_model]` (as
    /// `forward_hidden_with` returns them): the output projection, applied to each row alone.
    pub fn output_head(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        if !hidden.len().is_multiple_of(self.config.d_model) {
            return Err(Error::InvalidRequest(format!(
                "output head: {} values are not whole rows of d_model {}",
                hidden.len(),
                self.config.d_model
            )));
        }
        timed(Op::LmHead, || self.output.forward(hidden))
    }

    /// Runs the blocks and returns the final-normed hidden states of rows `first_row..`.
    fn hidden_rows(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        first_row: usize,
        kernels: &[Arc<dyn AttentionKernel>],
    ) -> Result<Vec<f32>> {
        if kernels.len() != self.kernels.len() {
            return Err(Error::InvalidRequest(format!(
                "forward: {} attention kernels given for {} layers",
                kernels.len(),
                self.kernels.len()
            )));
        }
        if tokens.is_empty() {
            return Err(Error::InvalidRequest("forward: no tokens given".into()));
        }
        // Run on a worker of the compute pool: each parallel matmul and attention call then
        // starts its tasks from inside the pool, which costs far less than handing them over
        // from an outside thread at every call.
        rayon::scope(|_| self.forward_in_pool(cache, tokens, first_row, kernels))
    }

    fn forward_in_pool(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        first_row: usize,
        kernels: &[Arc<dyn AttentionKernel>],
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        if !cache.fits(c.n_layers(), c.n_kv_heads, c.head_dim) {
            return Err(Error::InvalidRequest(
                "forward: the KV cache was made for another model; use Model::new_cache".into(),
            ));
        }
        let start = cache.len();
        let end = start + tokens.len();
        if end > c.context_length {
            return Err(Error::InvalidRequest(format!(
                "{end} tokens ({start} cached + {} new) exceed the model's context length of {}",
                tokens.len(),
                c.context_length
            )));
        }
        let policies: Vec<CachePolicy> = kernels.iter().map(|k| k.cache_policy()).collect();
        for (layer, policy) in policies.iter().enumerate() {
            cache.layer_mut(layer).prepare(tokens.len(), policy);
        }

        let mut x = timed(Op::Embedding, || -> Result<Vec<f32>> {
            let ids = Tensor::new(tokens, &Device::Cpu)?;
            let mut x = self
                .token_embedding
                .embedding(&ids)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if let Some(scale) = c.embedding_scale {
                x.iter_mut().for_each(|v| *v *= scale);
            }
            Ok(x)
        })?;
        let mut blocks = self.blocks.iter().zip(kernels).enumerate();
        let ran = blocks.try_for_each(|(i, (block, kernel))| {
            self.block_forward(i, block, kernel.as_ref(), &mut x, cache.layer_mut(i), start)
        });
        if let Err(e) = ran {
            // A call that fails leaves the cache as it found it.
            cache.forget_rows_from(start);
            return Err(e);
        }
        cache.set_len(end);
        timed(Op::KvLayout, || {
            for (layer, policy) in policies.iter().enumerate() {
                if let Some(keep) = &policy.keep {
                    cache.drop_keys(layer, keep.as_ref());
                }
            }
        });

        let mut rows = x.split_off(first_row * c.d_model);
        timed(Op::Norm, || {
            rms_norm(&mut rows, &self.final_norm, c.rms_eps)
        });
        Ok(rows)
    }

    /// One block over the new tokens at positions `start..`, whose keys and values it
    /// appends to `layer_cache`.
    fn block_forward(
        &self,
        layer: usize,
        block: &Block,
        kernel: &dyn AttentionKernel,
        x: &mut [f32],
        layer_cache: &mut kv_cache::LayerCache,
        start: usize,
    ) -> Result<()> {
        let c = &self.config;
        let lc = &c.layers[layer];
        let n = x.len() / c.d_model;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);

        let h = timed(Op::Norm, || {
            let mut h = x.to_vec();
            rms_norm(&mut h, &block.attn_norm, c.rms_eps);
            h
        });
        let mut q = block.q.forward_timed(&h)?;
        let mut k = block.k.forward_timed(&h)?;
        let mut v = block.v.forward_timed(&h)?;
        timed(Op::Norm, || {
            for (t, bias) in [
                (&mut q, &block.q_bias),
                (&mut k, &block.k_bias),
                (&mut v, &block.v_bias),
            ] {
                if let Some(bias) = bias {
                    t.chunks_exact_mut(bias.len())
                        .for_each(|row| add_assign(row, bias));
                }
            }
            if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                rms_norm(&mut q, qn, c.rms_eps);
                rms_norm(&mut k, kn, c.rms_eps);
            }
        });
        if let Some(rope) = &lc.rope {
            timed(Op::Rope, || {
                rope.apply(&mut q, nh, hd, start);
                rope.apply(&mut k, nkv, hd, start);
                if c.qk_norm == QkNorm::L2 {
                    l2_norm(&mut q, hd, c.rms_eps);
                    l2_norm(&mut k, hd, c.rms_eps);
                }
            });
        }
        if let Some(tuning) = &lc.temperature_tuning {
            for (t, row) in q.chunks_exact_mut(nh * hd).enumerate() {
                let factor = tuning.factor(start + t);
                row.iter_mut().for_each(|v| *v *= factor);
            }
        }

        let q = timed(Op::KvLayout, || {
            layer_cache.write(start, &k, &v);
            to_head_major(&q, n, nh, hd)
        });
        let mut attn = vec![0f32; q.len()];
        let input = AttentionInput {
            q: &q,
            k: &layer_cache.k,
            v: &layer_cache.v,
            n_q_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            n_queries: n,
            kv_len: layer_cache.rows(),
            kv_capacity: layer_cache.capacity(),
            key_positions: layer_cache.positions(),
            page_summaries: layer_cache.page_summaries(),
        };
        let settings = LayerAttention {
            scale: c.attention_scale,
            mask: lc.mask,
        };
        timed(Op::Attention, || {
            kernel.forward(&input, &settings, &mut attn)
        })?;
        let attn = timed(Op::KvLayout, || to_row_major(&attn, n, nh, hd));
        let mut out = block.o.forward_timed(&attn)?;
        let h = timed(Op::Norm, || {
            if let Some(norm) = &block.post_attn_norm {
                rms_norm(&mut out, norm, c.rms_eps);
            }
            add_assign(x, &out);
            let mut h = x.to_vec();
            rms_norm(&mut h, &block.ffn_norm, c.rms_eps);
            h
        });
        let mut out = match &block.ffn {
            FeedForward::Dense(ffn) => ffn.forward(&h, c.activation)?,
            FeedForward::Moe(moe) => moe.forward(&h, c.d_model, c.activation)?,
        };
        timed(Op::Norm, || {
            if let Some(norm) = &block.post_ffn_norm {
                rms_norm(&mut out, norm, c.rms_eps);
            }
            add_assign(x, &out);
        });
        Ok(())
    }
}

impl GatedFfn {
    fn forward(&self, x: &[f32], activation: blocks::Activation) -> Result<Vec<f32>> {
        let mut gate = self.gate.forward_timed(x)?;
        let up = self.up.forward_timed(x)?;
        timed(Op::Activation, || gated(&mut gate, &up, activation));
        self.down.forward_timed(&gate)
    }
}

impl Moe {
    /// Routes each token to its top-k experts; the shared expert sees every token.
    fn forward(&self, x: &[f32], d: usize, activation: blocks::Activation) -> Result<Vec<f32>> {
        let logits = self.router.forward(x)?;
        let mut out = match &self.shared {
            Some(shared) => shared.forward(x, activation)?,
            None => vec![0f32; x.len()],
        };
        let n_experts = self.config.n_experts;
        for (t, row) in x.chunks_exact(d).enumerate() {
            let mut scores = logits[t * n_experts..(t + 1) * n_experts].to_vec();
            let mut order: Vec<usize> = (0..n_experts).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            if self.config.gating == Gating::Softmax {
                softmax(&mut scores);
            }
            let out_row = &mut out[t * d..(t + 1) * d];
            for &e in &order[..self.config.n_experts_used] {
                let expert_out = match self.config.gating {
                    Gating::Softmax => {
                        let mut y = self.experts[e].forward(row, activation)?;
                        y.iter_mut().for_each(|v| *v *= scores[e]);
                        y
                    }
                    Gating::SigmoidBeforeExpert => {
                        let weight = 1.0 / (1.0 + (-scores[e]).exp());
                        let scaled: Vec<f32> = row.iter().map(|v| v * weight).collect();
                        self.experts[e].forward(&scaled, activation)?
                    }
                };
                add_assign(out_row, &expert_out);
            }
        }
        Ok(out)
    }
}

/// Loads a mixture-of-experts layer. GGUF stores the experts stacked in 3-D tensors;
/// each expert's slice of the quantized bytes becomes its own matrix.
fn load_moe(
    gguf: &mut GgufFile,
    layer: usize,
    d: usize,
    config: MoeConfig,
    format: WeightFormat,
) -> Result<Moe> {
    let name = |t: &str| format!("blk.{layer}.{t}");
    let (ne, ff) = (config.n_experts, config.expert_ffn);
    let router = Linear::new(gguf.tensor(&name("ffn_gate_inp.weight"), &[ne, d])?, format)?;
    let gate = split_experts(
        gguf.tensor(&name("ffn_gate_exps.weight"), &[ne, ff, d])?,
        format,
    )?;
    let up = split_experts(
        gguf.tensor(&name("ffn_up_exps.weight"), &[ne, ff, d])?,
        format,
    )?;
    let down = split_experts(
        gguf.tensor(&name("ffn_down_exps.weight"), &[ne, d, ff])?,
        format,
    )?;
    let experts = gate
        .into_iter()
        .zip(up)
        .zip(down)
        .map(|((gate, up), down)| GatedFfn { gate, up, down })
        .collect();
    let shared = match config.shared_expert_ffn {
        Some(sff) => Some(GatedFfn {
            gate: Linear::new(
                gguf.tensor(&name("ffn_gate_shexp.weight"), &[sff, d])?,
                format,
            )?,
            up: Linear::new(
                gguf.tensor(&name("ffn_up_shexp.weight"), &[sff, d])?,
                format,
            )?,
            down: Linear::new(
                gguf.tensor(&name("ffn_down_shexp.weight"), &[d, sff])?,
                format,
            )?,
        }),
        None => None,
    };
    Ok(Moe {
        config,
        router,
        experts,
        shared,
    })
}

fn split_experts(stacked: QTensor, format: WeightFormat) -> Result<Vec<Linear>> {
    let (n, rows, cols) = stacked.shape().dims3()?;
    let dtype = stacked.dtype();
    let data = stacked.data()?;
    let per_expert = data.len() / n;
    data.chunks_exact(per_expert)
        .map(|bytes| {
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(bytes),
                &Device::Cpu,
                dtype,
            )?;
            Linear::new(QTensor::new(storage, (rows, cols))?, format)
        })
        .collect()
}

/// Rejects configs that would make the forward pass divide by zero or index out of range.
fn validate_config(c: &ModelConfig, path: &Path) -> Result<()> {
    let bad = |key: &str, reason: String| {
        Err(Error::BadMetadata {
            path: path.to_path_buf(),
            key: format!("{}.{key}", c.architecture.gguf_name()),
            reason,
        })
    };
    if c.d_model == 0 || c.head_dim == 0 || c.n_layers() == 0 || c.vocab_size == 0 {
        return bad(
            "embedding_length",
            "embedding length, head dim, block count and vocabulary must be positive".into(),
        );
    }
    for layer in &c.layers {
        if let Some(rope) = &layer.rope {
            if rope.dims > c.head_dim || !rope.dims.is_multiple_of(2) {
                return bad(
                    "rope.dimension_count",
                    format!(
                        "{} rotated dims do not fit head dim {}",
                        rope.dims, c.head_dim
                    ),
                );
            }
        }
        match layer.mask {
            Mask::SlidingWindow { window: 0 } => {
                return bad("attention.sliding_window", "must be positive".into())
            }
            Mask::Chunked { chunk: 0 } => {
                return bad("attention.chunk_size", "must be positive".into())
            }
            _ => {}
        }
    }
    if let Some(moe) = &c.moe {
        if moe.n_experts_used == 0 || moe.n_experts_used > moe.n_experts {
            return bad(
                "expert_used_count",
                format!("{} used of {} experts", moe.n_experts_used, moe.n_experts),
            );
        }
    }
    Ok(())
}
