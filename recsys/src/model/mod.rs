//! A SASRec-style causal transformer over item tokens: item and position embeddings, pre-norm
//! blocks of attention (through an AKL kernel) and a feed-forward layer, a final norm, and
//! scores as the dot product of the last hidden state with every item embedding (tied).
//!
//! Sequences are right-padded: position 0 is a sequence's first item, as the kernel's
//! position arithmetic expects, and padding sits after the last item, where a causal rule
//! never lets a real position see it. Every op is a plain differentiable candle op (the fused
//! softmax and norms drop gradients), so `train` can fit every parameter.

mod checkpoint;
mod infer;
mod kernel;
mod train;

use candle_core::{DType, Device, Tensor, Var, D};
use kernels::trainable::attention_ops::softmax_last_dim;
use kernels::trainable::Params;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use checkpoint::{load_weights, save_weights, write_atomically, Checkpoint, KernelSource};
pub use infer::Inference;
pub use kernel::{KernelRules, LayerRule, EXACT};
pub(crate) use train::windows as item_windows;
pub use train::{fit, train, EpochReport, TrainConfig, TrainReport, Window};

use crate::{Error, Result};

/// The shape of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SasRecConfig {
    pub n_items: usize,
    /// The longest history the model reads; longer ones keep their most recent items.
    pub max_len: usize,
    pub d_model: usize,
    pub n_blocks: usize,
    pub n_heads: usize,
    /// Width of the feed-forward layer.
    pub d_ff: usize,
    /// Dropout on embeddings and on each residual branch while training.
    pub dropout: f64,
}

impl Default for SasRecConfig {
    fn default() -> Self {
        SasRecConfig {
            n_items: 0,
            max_len: 50,
            d_model: 64,
            n_blocks: 2,
            n_heads: 1,
            d_ff: 256,
            dropout: 0.2,
        }
    }
}

impl SasRecConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidRequest(format!("model config: {what}")));
        if self.n_items == 0 || self.max_len == 0 || self.n_blocks == 0 || self.d_ff == 0 {
            return bad(format!(
                "n_items {}, max_len {}, n_blocks {} and d_ff {} must be positive",
                self.n_items, self.max_len, self.n_blocks, self.d_ff
            ));
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) || self.d_model == 0 {
            return bad(format!(
                "d_model {} must be a positive multiple of n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must lie in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

/// Layer norm with a gain and a bias, in plain ops.
#[derive(Debug)]
struct Norm {
    weight: Var,
    bias: Var,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + 1e-6)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(self.weight.as_tensor())?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: Norm,
    wq: Var,
    wk: Var,
    wv: Var,
    wo: Var,
    ffn_norm: Norm,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
}

/// How a fresh parameter starts.
#[derive(Clone, Copy)]
enum Init {
    Normal(f64),
    Ones,
    Zeros,
}

/// Zeroes activations with probability `p` (scaling the rest by 1/(1-p)), drawing from a
/// seeded generator so that training runs repeat.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    rng: StdRng,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Dropout {
        Dropout {
            p,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.random::<f64>() < self.p {
                    0.0
                } else {
                    keep as f32
                }
            })
            .collect();
        Ok(x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)?)
    }
}

/// A sequence already run through the model: its keys and values at every layer (each
/// `[1, heads, len, head_dim]`), so that continuations of it cost only their own tokens.
#[derive(Debug)]
pub struct Prefix {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl Prefix {
    /// How many tokens the prefix holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `x` `[batch, t, in]` times `w` `[in, out]` as one 2-D product: a broadcast batched
/// product would copy `w` per sequence and sum that many gradients back.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let out = w.dim(1)?;
    Ok(x.reshape((b * t, i))?.matmul(w)?.reshape((b, t, out))?)
}

fn drop(dropout: &mut Option<&mut Dropout>, x: Tensor) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

/// The model: its parameters and its compiled attention kernel.
#[derive(Debug)]
pub struct SasRec {
    pub config: SasRecConfig,
    pub kernel: KernelRules,
    params: Params,
    item_emb: Var,
    pos_emb: Var,
    blocks: Vec<Block>,
    final_norm: Norm,
    /// Per position, which tokens may come next: `[max_len, n_items]`, 0 where allowed and
    /// a large negative number elsewhere, added to the logits (none: every token).
    allowed_next: Option<Tensor>,
}

impl SasRec {
    /// A freshly initialised model (N(0, 0.02²) weights, unit norms) running `kernel_text`.
    pub fn new(config: SasRecConfig, kernel_text: &str, seed: u64) -> Result<SasRec> {
        let mut params = Params::new(seed, &Device::Cpu);
        SasRec::build(config, kernel_text, |name, shape, init| {
            Ok(match init {
                Init::Normal(std) => params.normal(name, shape, std)?,
                Init::Ones => params.constant(name, shape, 1.0)?,
                Init::Zeros => params.constant(name, shape, 0.0)?,
            })
        })
        .map(|model| model.with_params(params))
    }

    /// A model with the named tensors of a checkpoint, each checked against the config.
    pub(crate) fn from_tensors(
        config: SasRecConfig,
        kernel_text: &str,
        mut tensors: std::collections::HashMap<String, Tensor>,
    ) -> Result<SasRec> {
        let mut params = Params::new(0, &Device::Cpu);
        SasRec::build(config, kernel_text, |name, shape, _| {
            let tensor = tensors.remove(name).ok_or_else(|| {
                Error::InvalidRequest(format!("the weights have no tensor `{name}`"))
            })?;
            if tensor.dims() != shape {
                return Err(Error::InvalidRequest(format!(
                    "tensor `{name}` has shape {:?}, the config needs {shape:?}",
                    tensor.dims()
                )));
            }
            Ok(params.push(name, tensor.to_dtype(DType::F32)?)?)
        })
        .map(|model| model.with_params(params))
    }

    fn with_params(mut self, params: Params) -> SasRec {
        self.params = params;
        self
    }

    fn build(
        config: SasRecConfig,
        kernel_text: &str,
        mut param: impl FnMut(&str, &[usize], Init) -> Result<Var>,
    ) -> Result<SasRec> {
        config.validate()?;
        let kernel = KernelRules::compile(
            kernel_text,
            config.n_blocks,
            config.n_heads,
            config.max_len,
            &Device::Cpu,
        )?;
        let (d, f) = (config.d_model, config.d_ff);
        let std = Init::Normal(0.02);
        let mut norm = |name: &str| -> Result<Norm> {
            Ok(Norm {
                weight: param(&format!("{name}.weight"), &[d], Init::Ones)?,
                bias: param(&format!("{name}.bias"), &[d], Init::Zeros)?,
            })
        };
        let final_norm = norm("final_norm")?;
        let mut blocks = Vec::with_capacity(config.n_blocks);
        let item_emb = param("item_emb", &[config.n_items, d], std)?;
        let pos_emb = param("pos_emb", &[config.max_len, d], std)?;
        for i in 0..config.n_blocks {
            let name = |part: &str| format!("blocks.{i}.{part}");
            let attn_norm = Norm {
                weight: param(&name("attn_norm.weight"), &[d], Init::Ones)?,
                bias: param(&name("attn_norm.bias"), &[d], Init::Zeros)?,
            };
            let ffn_norm = Norm {
                weight: param(&name("ffn_norm.weight"), &[d], Init::Ones)?,
                bias: param(&name("ffn_norm.bias"), &[d], Init::Zeros)?,
            };
            blocks.push(Block {
                attn_norm,
                wq: param(&name("wq"), &[d, d], std)?,
                wk: param(&name("wk"), &[d, d], std)?,
                wv: param(&name("wv"), &[d, d], std)?,
                wo: param(&name("wo"), &[d, d], std)?,
                ffn_norm,
                w1: param(&name("w1"), &[d, f], std)?,
                b1: param(&name("b1"), &[f], Init::Zeros)?,
                w2: param(&name("w2"), &[f, d], std)?,
                b2: param(&name("b2"), &[d], Init::Zeros)?,
            });
        }
        Ok(SasRec {
            config,
            kernel,
            params: Params::new(0, &Device::Cpu),
            item_emb,
            pos_emb,
            blocks,
            final_norm,
            allowed_next: None,
        })
    }

    /// Restricts the token that may follow position `p` to `allowed(p)` (training and
    /// `logits` alike): the generative retriever's per-position vocabularies.
    pub fn restrict_next(
        &mut self,
        allowed: impl Fn(usize) -> std::ops::Range<usize>,
    ) -> Result<()> {
        let (len, n) = (self.config.max_len, self.config.n_items);
        let mut bias = vec![-1e9f32; len * n];
        for p in 0..len {
            let range = allowed(p);
            if range.is_empty() || range.end > n {
                return Err(Error::InvalidRequest(format!(
                    "position {p} allows tokens {range:?} of {n}"
                )));
            }
            bias[p * n + range.start..p * n + range.end].fill(0.0);
        }
        self.allowed_next = Some(Tensor::from_vec(bias, (len, n), &Device::Cpu)?);
        Ok(())
    }

    /// Runs `kernel_text` in place of the kernel the weights were trained with (a drop-in:
    /// the same weights, another attention rule).
    pub fn set_kernel(&mut self, kernel_text: &str) -> Result<()> {
        let c = &self.config;
        self.kernel =
            KernelRules::compile(kernel_text, c.n_blocks, c.n_heads, c.max_len, &Device::Cpu)?;
        Ok(())
    }

    /// Every trainable parameter, named.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Hidden states `[batch, t, d_model]` of right-padded item ids `[batch, t]` (u32).
    pub fn hidden(&self, tokens: &Tensor, dropout: Option<&mut Dropout>) -> Result<Tensor> {
        self.run(tokens, None, None, dropout)
    }

    /// The keys and values of one unpadded sequence at every layer, and its hidden states
    /// `[1, t, d_model]`: continuations of it then run with `hidden_after` without
    /// recomputing it (what beam search over a history does).
    pub fn prefix(&self, tokens: &[u32]) -> Result<(Prefix, Tensor)> {
        let input = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu)?;
        let mut layers = Vec::with_capacity(self.blocks.len());
        let hidden = self.run(&input, None, Some(&mut layers), None)?;
        let prefix = Prefix {
            layers,
            len: tokens.len(),
        };
        Ok((prefix, hidden))
    }

    /// Hidden states `[batch, t, d_model]` of `batch` continuations `[batch, t]` (u32, all of
    /// length `t`) of the same `prefix`, at positions after it: equal to running each whole
    /// sequence through `hidden` and keeping its last `t` rows.
    pub fn hidden_after(&self, prefix: &Prefix, tokens: &Tensor) -> Result<Tensor> {
        self.run(tokens, Some(prefix), None, None)
    }

    /// The forward pass of `tokens` after `past` (or from position 0), optionally recording
    /// each layer's keys and values. One body serves training, scoring and continuations.
    fn run(
        &self,
        tokens: &Tensor,
        past: Option<&Prefix>,
        mut record: Option<&mut Vec<(Tensor, Tensor)>>,
        mut dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let c = &self.config;
        let start = past.map_or(0, |p| p.len);
        if start + t > c.max_len {
            return Err(Error::InvalidRequest(format!(
                "a sequence of {} tokens is longer than the model's max_len {}",
                start + t,
                c.max_len
            )));
        }
        let (d, heads) = (c.d_model, c.n_heads);
        let head_dim = d / heads;
        let items = self
            .item_emb
            .as_tensor()
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let mut x = items.broadcast_add(&self.pos_emb.as_tensor().narrow(0, start, t)?)?;
        x = drop(&mut dropout, x)?;
        let split = |x: Tensor| -> Result<Tensor> {
            Ok(x.reshape((b, t, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for (i, (block, rule)) in self.blocks.iter().zip(&self.kernel.layers).enumerate() {
            let h = block.attn_norm.forward(&x)?;
            let q = split(linear(&h, block.wq.as_tensor())?)?;
            let mut k = split(linear(&h, block.wk.as_tensor())?)?;
            let mut v = split(linear(&h, block.wv.as_tensor())?)?;
            if let Some(layers) = record.as_deref_mut() {
                layers.push((k.clone(), v.clone()));
            }
            if let Some(past) = past {
                let (past_k, past_v) = &past.layers[i];
                let shape = (b, heads, start, head_dim);
                k = Tensor::cat(&[&past_k.broadcast_as(shape)?, &k], 2)?.contiguous()?;
                v = Tensor::cat(&[&past_v.broadcast_as(shape)?, &v], 2)?.contiguous()?;
            }
            let s = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
            let logits = rule.logits(&s, 1.0 / (head_dim as f64).sqrt(), start)?;
            let weights = softmax_last_dim(&logits)?;
            let mixed = weights
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, d))?;
            let out = linear(&mixed, block.wo.as_tensor())?;
            x = (x + drop(&mut dropout, out)?)?;
            let h = block.ffn_norm.forward(&x)?;
            let up = linear(&h, block.w1.as_tensor())?
                .broadcast_add(block.b1.as_tensor())?
                .gelu_erf()?;
            let down = linear(&up, block.w2.as_tensor())?.broadcast_add(block.b2.as_tensor())?;
            x = (x + drop(&mut dropout, down)?)?;
        }
        self.final_norm.forward(&x)
    }

    /// Scores of every item at every position: `[batch, t, n_items]`.
    pub fn logits(&self, tokens: &Tensor, dropout: Option<&mut Dropout>) -> Result<Tensor> {
        let hidden = self.hidden(tokens, dropout)?;
        let (b, t, _) = hidden.dims3()?;
        let flat = hidden
            .flatten_to(1)?
            .matmul(&self.item_emb.as_tensor().t()?)?;
        let logits = flat.reshape((b, t, self.config.n_items))?;
        Ok(match &self.allowed_next {
            Some(bias) => logits.broadcast_add(&bias.narrow(0, 0, t)?)?,
            None => logits,
        })
    }

    /// Mean full-softmax cross-entropy of predicting `targets` (`[batch, t]` u32), weighted by
    /// `weights` (`[batch, t]` f32, 1 where a position trains, 0 for padding and context).
    /// Scores are computed only at positions with a weight: the full softmax over every item
    /// is most of a step's work, and padding or context positions would waste it.
    pub fn loss(
        &self,
        tokens: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let device = tokens.device();
        let flat_weights = weights.flatten_all()?.to_vec1::<f32>()?;
        let rows: Vec<u32> = (0..b * t)
            .filter(|&i| flat_weights[i] != 0.0)
            .map(|i| i as u32)
            .collect();
        if rows.is_empty() {
            return Ok(Tensor::zeros((), candle_core::DType::F32, device)?);
        }
        let n = rows.len();
        let positions: Vec<u32> = rows.iter().map(|&r| r % t as u32).collect();
        let rows = Tensor::from_vec(rows, n, device)?;
        let hidden = self
            .hidden(tokens, dropout)?
            .flatten_to(1)?
            .index_select(&rows, 0)?;
        let mut logits = self.scores_of_hidden(&hidden)?;
        if let Some(bias) = &self.allowed_next {
            let positions = Tensor::from_vec(positions, n, device)?;
            logits = (logits + bias.index_select(&positions, 0)?)?;
        }
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let targets = targets.flatten_all()?.index_select(&rows, 0)?;
        let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
        let nll = (log_z - picked)?.squeeze(1)?;
        let weights = weights.flatten_all()?.index_select(&rows, 0)?;
        let total = weights.sum_all()?.to_scalar::<f32>()?.max(1.0);
        Ok(((nll * weights)?.sum_all()? / f64::from(total))?)
    }

    /// Scores of every item after each history (most recent `max_len` items), one row per
    /// history. Histories must be non-empty and name items below `n_items`.
    pub fn score_histories(&self, histories: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let max_len = self.config.max_len;
        let mut rows = Vec::with_capacity(histories.len());
        for chunk in histories.chunks(256) {
            let tails: Vec<&[u32]> = chunk
                .iter()
                .map(|h| &h[h.len().saturating_sub(max_len)..])
                .collect();
            let t = tails.iter().map(|h| h.len()).max().unwrap_or(0);
            if let Some(bad) = tails.iter().position(|h| h.is_empty()) {
                return Err(Error::InvalidRequest(format!(
                    "history {bad} is empty: the model needs at least one item"
                )));
            }
            let mut tokens = vec![0u32; tails.len() * t];
            let mut last = Vec::with_capacity(tails.len());
            for (i, tail) in tails.iter().enumerate() {
                if let Some(&item) = tail
                    .iter()
                    .find(|&&item| item as usize >= self.config.n_items)
                {
                    return Err(Error::InvalidRequest(format!(
                        "item id {item} is not below the model's {} items",
                        self.config.n_items
                    )));
                }
                tokens[i * t..i * t + tail.len()].copy_from_slice(tail);
                last.push((i * t + tail.len() - 1) as u32);
            }
            let tokens = Tensor::from_vec(tokens, (tails.len(), t), &Device::Cpu)?;
            let hidden = self.hidden(&tokens, None)?.flatten_to(1)?;
            let last = Tensor::from_vec(last, tails.len(), &Device::Cpu)?;
            let scores = hidden
                .index_select(&last, 0)?
                .matmul(&self.item_emb.as_tensor().t()?)?;
            rows.extend(scores.to_vec2::<f32>()?);
        }
        Ok(rows)
    }

    /// Scores of every item `[rows, n_items]` from hidden states `[rows, d_model]`.
    pub fn scores_of_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.matmul(&self.item_emb.as_tensor().t()?)?)
    }

    /// The item embedding table `[n_items, d_model]`, which also scores items.
    pub fn item_embeddings(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.item_emb.as_tensor().to_vec2::<f32>()?)
    }
}
