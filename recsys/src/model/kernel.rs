//! An AKL kernel as the transformer's attention rule: per layer and head, which earlier items
//! a position may attend to (a `[max_len, max_len]` visibility table built from the compiled
//! `KeyRule`) and, optionally, how the raw score `s = q·k` becomes the logit, written with
//! differentiable candle ops so that training sees the same rule serving runs.

use candle_core::{DType, Device, Tensor};
use kernels::akl::mask::ScoreTerm;
use kernels::akl::{self, HeadSpec};
use kernels::attention::KeyRule;

use crate::{Error, Result};

/// The kernel every layer and head runs when none is given.
pub const EXACT: &str = "(kernel exact (mask causal) (score (* s scale)) (norm softmax))";

/// One layer's attention rule for every head.
#[derive(Debug)]
pub struct LayerRule {
    /// `[heads, max_len, max_len]` u8: 1 where query position `q` may see key position `k`.
    pub visible: Tensor,
    /// Per head, a score expression other than the plain `s · scale`.
    pub scores: Vec<Option<ScoreTerm>>,
}

/// A checked AKL program compiled for a model of `n_layers` × `n_heads` over `max_len` items.
#[derive(Debug)]
pub struct KernelRules {
    /// The program's canonical text: what a checkpoint stores.
    pub text: String,
    /// The kernel's identity, the SHA-256 of `text`.
    pub hash: String,
    pub layers: Vec<LayerRule>,
}

impl KernelRules {
    /// Parses, checks and compiles `text`. Kernels whose heads are not a mask and a score over
    /// a softmax (top-k page selection, Star, trainable mechanisms) are refused by name.
    pub fn compile(
        text: &str,
        n_layers: usize,
        n_heads: usize,
        max_len: usize,
        device: &Device,
    ) -> Result<KernelRules> {
        let checked = akl::parse_and_check(text)?;
        let plans = akl::compile(&checked, n_layers, n_heads)?;
        let mut layers = Vec::with_capacity(n_layers);
        for plan in plans {
            let mut visible = vec![0u8; n_heads * max_len * max_len];
            let mut scores = vec![None; n_heads];
            for group in &plan.groups {
                for head in group.heads.clone() {
                    let table = &mut visible[head * max_len * max_len..][..max_len * max_len];
                    let allows = |q: usize, k: usize| -> Result<bool> {
                        Ok(match &group.spec {
                            HeadSpec::Exact => k <= q,
                            HeadSpec::Rule { mask, .. } => mask.allows(q, k),
                            other => return Err(unsupported(plan.layer, head, other)),
                        })
                    };
                    for q in 0..max_len {
                        for k in 0..max_len {
                            table[q * max_len + k] = u8::from(allows(q, k)?);
                        }
                    }
                    if let HeadSpec::Rule {
                        score: Some(score), ..
                    } = &group.spec
                    {
                        scores[head] = Some(score.term.clone());
                    }
                }
            }
            layers.push(LayerRule {
                visible: Tensor::from_vec(visible, (n_heads, max_len, max_len), device)?,
                scores,
            });
        }
        Ok(KernelRules {
            text: checked.program.canonical_text(),
            hash: checked.program.canonical_hash(),
            layers,
        })
    }
}

fn unsupported(layer: usize, head: usize, spec: &HeadSpec) -> Error {
    let what = match spec {
        HeadSpec::Select { .. } => "top-k page selection".to_string(),
        HeadSpec::Star { .. } => "Star attention".to_string(),
        HeadSpec::Mechanism { name, .. } => format!("the trainable mechanism `{name}`"),
        HeadSpec::Exact | HeadSpec::Rule { .. } => "a mask rule".to_string(),
    };
    Error::InvalidRequest(format!(
        "layer {layer} head {head} runs {what}; the recommender trains softmax kernels whose \
         heads are a mask and a score (write them with `mask` and `score`)"
    ))
}

impl LayerRule {
    /// Attention logits from raw dot products `s` `[batch, heads, t_q, t_k]` of queries at
    /// positions `q_start..q_start + t_q` against keys at `0..t_k`: each head's score
    /// expression (default `s · scale`), then hidden pairs set to a large negative number.
    /// A finite fill keeps rows that see nothing (padding) free of NaN; their outputs are
    /// never used. A whole sequence has `q_start = 0` and `t_q = t_k`; a continuation of a
    /// cached prefix starts its queries after it.
    pub fn logits(&self, s: &Tensor, scale: f64, q_start: usize) -> Result<Tensor> {
        let (_, heads, t_q, t_k) = s.dims4()?;
        let logits = if self.scores.iter().all(Option::is_none) {
            (s * scale)?
        } else {
            let positions = |from: usize, n: usize| -> Result<Tensor> {
                Ok(Tensor::arange(from as u32, (from + n) as u32, s.device())?
                    .to_dtype(DType::F32)?)
            };
            let q = positions(q_start, t_q)?
                .reshape((t_q, 1))?
                .broadcast_as((t_q, t_k))?
                .contiguous()?;
            let kv = positions(0, t_k)?
                .reshape((1, t_k))?
                .broadcast_as((t_q, t_k))?
                .contiguous()?;
            let per_head = (0..heads)
                .map(|h| {
                    let s = s.narrow(1, h, 1)?;
                    match &self.scores[h] {
                        None => Ok((s * scale)?),
                        Some(term) => {
                            let at = Operands {
                                s: &s,
                                scale,
                                head: h,
                                q: &q,
                                kv: &kv,
                            };
                            at.eval(term)?.into_tensor(&s)
                        }
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&per_head, 1)?
        };
        let visible = self.visible.narrow(1, q_start, t_q)?.narrow(2, 0, t_k)?;
        Ok(kernels::trainable::attention_ops::hide(
            &logits, &visible, -1e9,
        )?)
    }
}

/// What a score expression's leaves stand for, for one head.
struct Operands<'a> {
    s: &'a Tensor,
    scale: f64,
    head: usize,
    q: &'a Tensor,
    kv: &'a Tensor,
}

/// A score subexpression: a number or a tensor broadcastable to the scores.
enum Value {
    Number(f64),
    Tensor(Tensor),
}

impl Value {
    fn into_tensor(self, like: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Value::Tensor(t) => t.broadcast_as(like.shape())?.contiguous()?,
            Value::Number(c) => Tensor::full(c as f32, like.shape(), like.device())?,
        })
    }
}

impl Operands<'_> {
    fn eval(&self, term: &ScoreTerm) -> Result<Value> {
        use kernels::akl::ast::ScoreOp::*;
        Ok(match term {
            ScoreTerm::S => Value::Tensor(self.s.clone()),
            ScoreTerm::Scale => Value::Number(self.scale),
            ScoreTerm::Head => Value::Number(self.head as f64),
            ScoreTerm::Const(c) => Value::Number(*c),
            ScoreTerm::Q => Value::Tensor(self.q.clone()),
            ScoreTerm::Kv => Value::Tensor(self.kv.clone()),
            ScoreTerm::Tanh(inner) => match self.eval(inner)? {
                Value::Number(c) => Value::Number(c.tanh()),
                Value::Tensor(t) => Value::Tensor(t.tanh()?),
            },
            ScoreTerm::Binary(op, a, b) => match (self.eval(a)?, self.eval(b)?) {
                (Value::Number(a), Value::Number(b)) => Value::Number(match op {
                    Add => a + b,
                    Sub => a - b,
                    Mul => a * b,
                    Div => a / b,
                    Min => a.min(b),
                    Max => a.max(b),
                }),
                (Value::Tensor(t), Value::Number(c)) => Value::Tensor(match op {
                    Add => (t + c)?,
                    Sub => (t - c)?,
                    Mul => (t * c)?,
                    Div => (t / c)?,
                    Min => t.minimum(c as f32)?,
                    Max => t.maximum(c as f32)?,
                }),
                (Value::Number(c), Value::Tensor(t)) => Value::Tensor(match op {
                    Add => (t + c)?,
                    Sub => t.affine(-1.0, c)?,
                    Mul => (t * c)?,
                    // The checker only admits constant divisors, so c / tensor cannot occur;
                    // it is still computed correctly.
                    Div => (t.recip()? * c)?,
                    Min => t.minimum(c as f32)?,
                    Max => t.maximum(c as f32)?,
                }),
                (Value::Tensor(a), Value::Tensor(b)) => Value::Tensor(match op {
                    Add => a.broadcast_add(&b)?,
                    Sub => a.broadcast_sub(&b)?,
                    Mul => a.broadcast_mul(&b)?,
                    Div => a.broadcast_div(&b)?,
                    Min => a.broadcast_minimum(&b)?,
                    Max => a.broadcast_maximum(&b)?,
                }),
            },
        })
    }
}
