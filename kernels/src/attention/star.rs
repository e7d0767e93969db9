//! Star Attention (Acharya et al., NVIDIA 2024): block-sparse context encoding, then exact
//! attention for the query computed host by host and merged by log-sum-exp.
//!
//! The context (positions `< context_len`) is cut into blocks of `block` tokens, one per
//! host. In the context phase each host encodes its block with the first block (the anchor)
//! prepended, so a context query sees the anchor and its own block, causally. In the query
//! phase every host attends the query to its block and returns the output with its
//! log-sum-exp; the query's host adds the keys after the context, and the partial results
//! merge into exact attention over every earlier key.

use std::ops::Range;

use super::{
    merge_partial, AttentionInput, AttentionKernel, Coverage, KeyRule, LayerAttention, Mask,
    TiledAttention,
};
use crate::{Error, Result};

/// What Star Attention lets query `q` see: below `context_len`, key `k <= q` iff `k` is in
/// the anchor block (`k < block`) or in `q`'s own block (`k / block == q / block`); from
/// `context_len` on, every `k <= q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StarRule {
    block: usize,
    context_len: usize,
}

impl StarRule {
    /// `block` is the tokens per host and must be at least 1.
    pub fn new(block: usize, context_len: usize) -> Result<StarRule> {
        if block == 0 {
            return Err(Error::InvalidRequest(format!(
                "star attention: block must be at least 1 token per host, got 0 (context_len \
                 {context_len})"
            )));
        }
        Ok(StarRule { block, context_len })
    }

    /// Tokens per host.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Positions below this are context; the rest are queries.
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// The context phase's rule over `q0..=q1`, all below `context_len`.
    fn context_coverage(&self, (q0, q1): (usize, usize), keys: Range<usize>) -> Coverage {
        let causal = KeyRule::coverage(&Mask::Causal, q0..q1 + 1, keys.clone());
        let (k0, k1) = (keys.start, keys.end - 1);
        let first_query_block = q0 / self.block * self.block;
        let one_block = q0 / self.block == q1 / self.block;
        if causal == Coverage::Empty || k1 < self.block || (one_block && k0 >= first_query_block) {
            // Only anchor keys, or keys in the one block all queries are in: plain causal.
            causal
        } else if k0 >= self.block && k1 < first_query_block {
            // Past the anchor and before every query's own block.
            Coverage::Empty
        } else {
            Coverage::Partial
        }
    }
}

impl KeyRule for StarRule {
    fn allows(&self, q: usize, k: usize) -> bool {
        k <= q && (q >= self.context_len || k < self.block || k / self.block == q / self.block)
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        let (q0, q1) = (queries.start, queries.end - 1);
        let context = (q0 < self.context_len)
            .then(|| self.context_coverage((q0, q1.min(self.context_len - 1)), keys.clone()));
        let query = (q1 >= self.context_len)
            .then(|| KeyRule::coverage(&Mask::Causal, q0.max(self.context_len)..q1 + 1, keys));
        match (context, query) {
            (Some(a), Some(b)) if a == b => a,
            (Some(_), Some(_)) => Coverage::Partial,
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => unreachable!("queries are non-empty"),
        }
    }
}

/// The keys one host holds (or, past the context, the query's host adds).
#[derive(Debug)]
struct HostKeys(Range<usize>);

impl KeyRule for HostKeys {
    fn allows(&self, _q: usize, k: usize) -> bool {
        self.0.contains(&k)
    }

    fn coverage(&self, _queries: Range<usize>, keys: Range<usize>) -> Coverage {
        if keys.start >= self.0.end || keys.end <= self.0.start {
            Coverage::Empty
        } else if self.0.start <= keys.start && keys.end <= self.0.end {
            Coverage::Full
        } else {
            Coverage::Partial
        }
    }
}

/// Star Attention on the tiled engine. Its f64 twin is `NaiveAttention::forward_rule` with
/// `rule()`.
#[derive(Clone, Copy, Debug)]
pub struct StarAttention {
    rule: StarRule,
    engine: TiledAttention,
}

impl StarAttention {
    /// Hosts of `block` tokens over a context of `context_len` tokens.
    pub fn new(block: usize, context_len: usize) -> Result<StarAttention> {
        Ok(StarAttention {
            rule: StarRule::new(block, context_len)?,
            engine: TiledAttention::default(),
        })
    }

    /// The same kernel on another engine (tile sizes, portable code).
    pub fn with_engine(self, engine: TiledAttention) -> StarAttention {
        StarAttention { engine, ..self }
    }

    /// The visibility this kernel computes.
    pub fn rule(&self) -> StarRule {
        self.rule
    }

    /// The query phase for every row of `input` (all at or past the context): each host's
    /// block and the keys after the context, attended separately and merged.
    fn query_phase(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        let StarRule { block, context_len } = self.rule;
        let context_end = context_len.min(input.kv_len);
        let hosts = (0..context_end)
            .step_by(block)
            .map(|start| start..(start + block).min(context_end));
        let mut parts = hosts.chain(std::iter::once(context_end..input.kv_len));
        let rows = input.n_q_heads * input.n_queries;
        let mut lse = vec![0.0; rows];
        let first = parts.next().expect("one part at least");
        self.engine
            .forward_rule(input, layer, &HostKeys(first), None, out, Some(&mut lse))?;
        let mut part_out = vec![0.0; out.len()];
        let mut part_lse = vec![0.0; rows];
        for keys in parts.filter(|keys| !keys.is_empty()) {
            self.engine.forward_rule(
                input,
                layer,
                &HostKeys(keys),
                None,
                &mut part_out,
                Some(&mut part_lse),
            )?;
            merge_partial(out, &mut lse, &part_out, &part_lse, input.head_dim)?;
        }
        Ok(())
    }
}

impl AttentionKernel for StarAttention {
    fn name(&self) -> &str {
        "star"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        input.validate(out.len())?;
        input.require_every_key(self.name())?;
        layer.mask.validate()?;
        // Rows before `split` are context queries, the rest query-phase ones.
        let first_position = input.kv_len - input.n_queries;
        let split = self
            .rule
            .context_len
            .saturating_sub(first_position)
            .min(input.n_queries);
        if split == input.n_queries {
            return self
                .engine
                .forward_rule(input, layer, &self.rule, None, out, None);
        }
        if split == 0 {
            return self.query_phase(input, layer, out);
        }
        let context = input.query_rows(0..split);
        let mut context_out = vec![0.0; context.len()];
        self.engine.forward_rule(
            &context.input(),
            layer,
            &self.rule,
            None,
            &mut context_out,
            None,
        )?;
        let queries = input.query_rows(split..input.n_queries);
        let mut query_out = vec![0.0; queries.len()];
        self.query_phase(&queries.input(), layer, &mut query_out)?;
        context.scatter(&context_out, out);
        queries.scatter(&query_out, out);
        Ok(())
    }
}
