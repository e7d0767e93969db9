//! From a checked program to what a model runs: one attention kernel per layer (a `HeadMix`
//! where query heads differ), and the one model-level change a mechanism can ask for (MLA's
//! latent keys and values, which replace the K and V projections).

use std::ops::Range;
use std::sync::Arc;

use super::ast::{OptionValue, Summary};
use super::check::CheckedProgram;
use super::compile::{compile, HeadSpec};
use super::cost::ModelShape;
use super::mask::ScaledScore;
use crate::attention::top_k_pages::PageSummary;
use crate::attention::{
    AttentionKernel, DifferentialKernel, HeadMix, KeyRule, MultiTokenKernel, RuleAttention,
    ScoreModifier, StarAttention, TiledAttention, TopKPages,
};
use crate::trainable::linear::{LinearDropIn, LinearVariant};
use crate::trainable::log_linear::{LogLinearDropIn, LogLinearVariant};
use crate::{Error, Result};

/// A program made ready to run inside one model.
#[derive(Debug)]
pub struct DropIn {
    /// One kernel per layer, in layer order.
    pub kernels: Vec<Arc<dyn AttentionKernel>>,
    /// Set when the program asks for MLA: every layer's keys and values come from a latent
    /// of this rank, which the caller applies to its copy of the model
    /// (`trainable::mla::convert_model_kv`); attention itself stays exact.
    pub kv_rank: Option<usize>,
}

/// Builds the kernels `checked` describes for a model of `shape` whose attention scales
/// scores by `attention_scale`.
pub fn instantiate(
    checked: &CheckedProgram,
    shape: &ModelShape,
    attention_scale: f32,
) -> Result<DropIn> {
    let plans = compile(checked, shape.n_layers, shape.n_q_heads)?;
    let exact: Arc<dyn AttentionKernel> = Arc::new(TiledAttention::default());
    let mut kv_ranks = Vec::new();
    let mut kernels = Vec::with_capacity(plans.len());
    for plan in plans {
        let mut parts = Vec::with_capacity(plan.groups.len());
        for group in plan.groups {
            let kernel = match &group.spec {
                HeadSpec::Mechanism { name, options } if name == "mla" => {
                    if group.heads != (0..shape.n_q_heads) {
                        return Err(Error::InvalidRequest(format!(
                            "layer {}: MLA replaces a whole layer's keys and values, so it \
                             cannot run on heads {:?} only",
                            plan.layer, group.heads
                        )));
                    }
                    kv_ranks.push(int_option(name, options, "kv_rank")?);
                    exact.clone()
                }
                spec => head_kernel(spec, &group.heads, attention_scale, &exact)?,
            };
            parts.push((group.heads, kernel));
        }
        kernels.push(match parts.len() {
            1 => parts.pop().expect("one part").1,
            _ => Arc::new(HeadMix::new(parts)?),
        });
    }
    let kv_rank = match kv_ranks.split_first() {
        None => None,
        Some((&rank, rest))
            if rest.iter().all(|&r| r == rank) && kv_ranks.len() == kernels.len() =>
        {
            Some(rank)
        }
        Some(_) => {
            return Err(Error::InvalidRequest(
                "MLA must use one kv_rank in every layer (the conversion is model-wide)".into(),
            ))
        }
    };
    Ok(DropIn { kernels, kv_rank })
}

/// The kernel one run of query heads executes.
fn head_kernel(
    spec: &HeadSpec,
    heads: &Range<usize>,
    attention_scale: f32,
    exact: &Arc<dyn AttentionKernel>,
) -> Result<Arc<dyn AttentionKernel>> {
    let modifier = |score: &Option<Arc<super::CompiledScore>>| {
        score.clone().map(|score| {
            Arc::new(ScaledScore {
                score,
                scale: attention_scale,
            }) as Arc<dyn ScoreModifier>
        })
    };
    Ok(match spec {
        HeadSpec::Exact => exact.clone(),
        HeadSpec::Rule {
            mask,
            score,
            q_tile,
            kv_tile,
            keep,
        } => {
            let rule: Arc<dyn KeyRule> = mask.clone();
            let kernel = RuleAttention::new("akl rule", rule, modifier(score))?
                .with_engine(TiledAttention::with_tiles(*q_tile, *kv_tile)?);
            Arc::new(match keep {
                // The checker proved the mask never shows a key `keep` drops.
                Some(keep) => kernel.with_keep(keep.clone())?,
                None => kernel,
            })
        }
        HeadSpec::Select {
            page,
            top,
            summary,
            mask,
            score,
        } => {
            if score.is_some() {
                return Err(Error::InvalidRequest(
                    "select: page selection runs with the plain score (* s scale) only".into(),
                ));
            }
            let summary = match summary {
                Summary::MinMax => PageSummary::MinMax,
                Summary::Mean => PageSummary::Mean,
            };
            let rule: Arc<dyn KeyRule> = mask.clone();
            Arc::new(TopKPages::new(*page, *top, summary)?.with_base_rule(rule)?)
        }
        HeadSpec::Star { block, context } => Arc::new(StarAttention::new(*block, *context)?),
        HeadSpec::Mechanism { name, options } => mechanism_kernel(name, options, heads.len())?,
    })
}

/// The drop-in form of a trainable mechanism: it runs on the pretrained model's queries,
/// keys and values with default (untrained) settings of its own parameters.
fn mechanism_kernel(
    name: &str,
    options: &[(String, OptionValue)],
    n_heads: usize,
) -> Result<Arc<dyn AttentionKernel>> {
    let chunk = || int_option(name, options, "chunk");
    if let Some(variant) = LinearVariant::from_name(name) {
        return Ok(Arc::new(LinearDropIn::with_chunk(variant, chunk()?)?));
    }
    Ok(match name {
        "log_linear" => {
            let variant = match symbol_option(name, options, "base")? {
                "linear" => LogLinearVariant::Plain,
                "mamba2" => LogLinearVariant::Mamba2,
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "log_linear: base {other} has no runtime; use linear or mamba2"
                    )))
                }
            };
            Arc::new(LogLinearDropIn::with_chunk(variant, chunk()?)?)
        }
        // The drop-in convolves along keys only (c_q = 1): the KV cache keeps no past
        // queries. `q_kernel` sizes the trainable mixer's query axis.
        "mta" => Arc::new(MultiTokenKernel::identity(
            n_heads,
            int_option(name, options, "k_kernel")?,
            int_option(name, options, "head_kernel")?,
        )?),
        "differential" => {
            let lambda = match option(name, options, "lambda_init")? {
                OptionValue::Float(v) => *v as f32,
                other => return Err(bad_option(name, "lambda_init", other)),
            };
            Arc::new(DifferentialKernel::new(lambda)?)
        }
        other => {
            return Err(Error::InvalidRequest(format!(
                "mechanism {other} has no drop-in kernel"
            )))
        }
    })
}

fn option<'a>(
    mechanism: &str,
    options: &'a [(String, OptionValue)],
    key: &str,
) -> Result<&'a OptionValue> {
    options
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value)
        .ok_or_else(|| Error::InvalidRequest(format!("mechanism {mechanism}: no option {key}")))
}

fn int_option(mechanism: &str, options: &[(String, OptionValue)], key: &str) -> Result<usize> {
    match option(mechanism, options, key)? {
        OptionValue::Int(v) if *v >= 0 => Ok(*v as usize),
        other => Err(bad_option(mechanism, key, other)),
    }
}

fn symbol_option<'a>(
    mechanism: &str,
    options: &'a [(String, OptionValue)],
    key: &str,
) -> Result<&'a str> {
    match option(mechanism, options, key)? {
        OptionValue::Symbol(s) => Ok(s),
        other => Err(bad_option(mechanism, key, other)),
    }
}

fn bad_option(mechanism: &str, key: &str, value: &OptionValue) -> Error {
    Error::InvalidRequest(format!(
        "mechanism {mechanism}: option {key} has the wrong kind of value {value:?}"
    ))
}
