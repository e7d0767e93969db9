//! A checked program becomes a neutral plan: for each layer, runs of query heads and what
//! they run. The runtime maps each `HeadSpec` onto a kernel; this module knows none of them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::ast::*;
use super::check::CheckedProgram;
use super::library;
use super::mask::{CompiledMask, CompiledScore, Env};
use super::mechanism;
use crate::{Error, Result};

/// What a run of query heads computes.
#[derive(Clone, Debug)]
pub enum HeadSpec {
    /// Causal softmax attention with the plain `s·scale` score.
    Exact,
    /// Softmax attention over the keys `mask` allows, with an optional score modifier. With
    /// `keep`, the cache may drop keys the rule no longer keeps (the checker proved the mask
    /// never shows them again).
    Rule {
        mask: Arc<CompiledMask>,
        score: Option<Arc<CompiledScore>>,
        keep: Option<Arc<CompiledMask>>,
        q_tile: usize,
        kv_tile: usize,
    },
    /// Top-`top` pages of `page` keys by summary score, among the keys `mask` allows.
    Select {
        page: usize,
        top: usize,
        summary: Summary,
        mask: Arc<CompiledMask>,
        score: Option<Arc<CompiledScore>>,
    },
    /// Star Attention: anchor-block prefill up to `context`, exact afterwards and in decode.
    Star { block: usize, context: usize },
    /// A trainable mechanism with every option filled in (table order).
    Mechanism {
        name: String,
        options: Vec<(String, OptionValue)>,
    },
}

/// A run of query heads sharing one spec.
#[derive(Clone, Debug)]
pub struct HeadGroup {
    pub heads: Range<usize>,
    pub spec: HeadSpec,
}

/// One layer's plan: head groups covering `0..n_q_heads` in order.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    pub layer: usize,
    pub groups: Vec<HeadGroup>,
}

/// The rule a (layer, head) runs and the parameter values it reads.
#[derive(Clone, Copy)]
struct Resolved<'a> {
    rule: &'a Rule,
    env: &'a Env,
}

impl Resolved<'_> {
    /// Identity of the rule, so equal rules share compiled masks.
    fn key(&self) -> (usize, usize) {
        (
            self.rule as *const Rule as usize,
            self.env as *const Env as usize,
        )
    }
}

fn body<'a>(body: &'a Body, env: &'a Env) -> Result<Resolved<'a>> {
    match body {
        Body::Rule(rule) => Ok(Resolved { rule, env }),
        Body::Library(name) => {
            let library = library::checked(name).map_err(Error::InvalidRequest)?;
            Ok(Resolved {
                rule: &library.program.rule,
                env: &library.env,
            })
        }
    }
}

fn resolve<'a>(checked: &'a CheckedProgram, layer: usize, head: usize) -> Result<Resolved<'a>> {
    let top = Resolved {
        rule: &checked.program.rule,
        env: &checked.env,
    };
    let for_layer = match checked
        .program
        .layers
        .iter()
        .rev()
        .find(|o| o.selector.matches(layer))
    {
        Some(o) => body(&o.body, &checked.env)?,
        None => top,
    };
    match for_layer
        .rule
        .heads
        .iter()
        .rev()
        .find(|o| o.selector.matches(head))
    {
        Some(o) => body(&o.body, for_layer.env),
        None => Ok(for_layer),
    }
}

/// The mask Star Attention applies in prefill: before `context`, a query sees its own block
/// and the anchor block (the first); from `context` on, every earlier key.
pub fn star_mask(block: usize, context: usize) -> Result<CompiledMask> {
    let int = |v: usize| IntExpr::Lit(v as i64);
    let block_of = |e: IntExpr| IntExpr::Binary(IntOp::Div, Box::new(e), Box::new(int(block)));
    let expr = MaskExpr::And(vec![
        MaskExpr::Causal,
        MaskExpr::Or(vec![
            MaskExpr::Compare(CmpOp::Ge, IntExpr::Q, int(context)),
            MaskExpr::Compare(CmpOp::Lt, IntExpr::Kv, int(block)),
            MaskExpr::Compare(CmpOp::Eq, block_of(IntExpr::Kv), block_of(IntExpr::Q)),
        ]),
    ]);
    CompiledMask::new(&expr, &Env::new()).map_err(|e| {
        Error::InvalidRequest(format!(
            "Star attention block {block}, context {context}: {e}"
        ))
    })
}

fn is_plain_score(score: &ScoreExpr) -> bool {
    use ScoreExpr::{Binary, Scale, S};
    matches!(score, Binary(ScoreOp::Mul, a, b)
        if matches!((a.as_ref(), b.as_ref()), (S, Scale) | (Scale, S)))
}

fn spec(resolved: Resolved) -> Result<HeadSpec> {
    let Resolved { rule, env } = resolved;
    let invalid = |e: String| Error::InvalidRequest(format!("AKL compile: {e}"));
    if let Some(m) = &rule.mechanism {
        return Ok(HeadSpec::Mechanism {
            name: m.name.clone(),
            options: mechanism::resolved_options(m),
        });
    }
    if let Some(star) = rule.star {
        return Ok(HeadSpec::Star {
            block: star.block as usize,
            context: star.context as usize,
        });
    }
    let mask = match &rule.mask {
        Some(mask) => CompiledMask::new(mask, env).map_err(invalid)?,
        None => CompiledMask::causal(),
    };
    let score = match &rule.score {
        Some(score) if !is_plain_score(score) => {
            Some(Arc::new(CompiledScore::new(score, env).map_err(invalid)?))
        }
        _ => None,
    };
    if let Some(select) = rule.select {
        return Ok(HeadSpec::Select {
            page: select.page as usize,
            top: select.top as usize,
            summary: select.summary,
            mask: Arc::new(mask),
            score,
        });
    }
    let keep = match &rule.cache {
        Some(CachePolicy::Keep(keep)) => {
            Some(Arc::new(CompiledMask::new(keep, env).map_err(invalid)?))
        }
        _ => None,
    };
    if mask.term == CompiledMask::causal().term && score.is_none() && keep.is_none() {
        return Ok(HeadSpec::Exact);
    }
    let tile = rule.tile.unwrap_or(Tile::DEFAULT);
    Ok(HeadSpec::Rule {
        mask: Arc::new(mask),
        score,
        keep,
        q_tile: tile.q as usize,
        kv_tile: tile.kv as usize,
    })
}

/// The plan of a checked program for a model with `n_layers` layers of `n_q_heads` query
/// heads. Selector indices the model lacks match nothing.
pub fn compile(
    checked: &CheckedProgram,
    n_layers: usize,
    n_q_heads: usize,
) -> Result<Vec<LayerPlan>> {
    if n_layers == 0 || n_q_heads == 0 {
        return Err(Error::InvalidRequest(format!(
            "AKL compile: need at least one layer and one head, got {n_layers} and {n_q_heads}"
        )));
    }
    let mut compiled: HashMap<(usize, usize), HeadSpec> = HashMap::new();
    let mut plans = Vec::with_capacity(n_layers);
    for layer in 0..n_layers {
        let mut groups: Vec<(Range<usize>, (usize, usize))> = Vec::new();
        for head in 0..n_q_heads {
            let resolved = resolve(checked, layer, head)?;
            let key = resolved.key();
            if let std::collections::hash_map::Entry::Vacant(slot) = compiled.entry(key) {
                slot.insert(spec(resolved)?);
            }
            match groups.last_mut() {
                Some((heads, last)) if *last == key => heads.end = head + 1,
                _ => groups.push((head..head + 1, key)),
            }
        }
        let groups: Vec<HeadGroup> = groups
            .into_iter()
            .map(|(heads, key)| HeadGroup {
                heads,
                spec: compiled[&key].clone(),
            })
            .collect();
        plans.push(LayerPlan { layer, groups });
    }
    Ok(plans)
}
