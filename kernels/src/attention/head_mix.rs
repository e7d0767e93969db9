//! Different kernels for different query heads (some heads exact, others sinks + window).

use std::ops::Range;
use std::sync::Arc;

use super::{AttentionInput, AttentionKernel, CachePolicy, Coverage, KeyRule, LayerAttention};
use crate::{Error, Result};

/// Runs each range of query heads with its own kernel. The ranges tile `0..n_q_heads` in
/// order. A range may cut through a GQA group: it then runs as per-group pieces, each an
/// input over some query heads and the one KV head they share (the head-major layout makes
/// the cache part of that copy-free).
///
/// A `ScoreModifier` inside a part sees head indices relative to its piece.
#[derive(Clone, Debug)]
pub struct HeadMix {
    name: String,
    parts: Vec<(Range<usize>, Arc<dyn AttentionKernel>)>,
}

impl HeadMix {
    /// The ranges must be non-empty and follow each other from head 0 without gap or
    /// overlap; that they end at the layer's head count is checked when it runs.
    pub fn new(parts: Vec<(Range<usize>, Arc<dyn AttentionKernel>)>) -> Result<HeadMix> {
        let bad = |what: String| Err(Error::InvalidRequest(format!("head mix: {what}")));
        if parts.is_empty() {
            return bad("needs at least one range of query heads".to_string());
        }
        let mut next = 0;
        for (heads, _) in &parts {
            if heads.start != next || heads.is_empty() {
                return bad(format!(
                    "head ranges must tile the query heads in order: expected a non-empty \
                     range starting at head {next}, got {heads:?}"
                ));
            }
            next = heads.end;
        }
        let name = parts
            .iter()
            .map(|(heads, kernel)| format!("{heads:?}:{}", kernel.name()))
            .collect::<Vec<_>>()
            .join(",");
        Ok(HeadMix {
            name: format!("head_mix({name})"),
            parts,
        })
    }

    /// The query-head ranges and their kernels, in head order.
    pub fn parts(&self) -> &[(Range<usize>, Arc<dyn AttentionKernel>)] {
        &self.parts
    }
}

impl AttentionKernel for HeadMix {
    fn name(&self) -> &str {
        &self.name
    }

    /// A key is dropped only if every part drops it, and every part's summaries are kept.
    fn cache_policy(&self) -> CachePolicy {
        let policies: Vec<CachePolicy> = self.parts.iter().map(|(_, k)| k.cache_policy()).collect();
        let keeps: Option<Vec<Arc<dyn KeyRule>>> =
            policies.iter().map(|p| p.keep.clone()).collect();
        let mut page_summaries: Vec<_> = Vec::new();
        for kind in policies.into_iter().flat_map(|p| p.page_summaries) {
            if !page_summaries.contains(&kind) {
                page_summaries.push(kind);
            }
        }
        CachePolicy {
            keep: keeps.map(|rules| Arc::new(AnyOf(rules)) as Arc<dyn KeyRule>),
            page_summaries,
        }
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        input.validate(out.len())?;
        let covered = self.parts.last().map_or(0, |(heads, _)| heads.end);
        if covered != input.n_q_heads {
            return Err(Error::InvalidRequest(format!(
                "head mix: ranges cover query heads 0..{covered}, but the layer has {}",
                input.n_q_heads
            )));
        }
        let head_out = input.n_queries * input.head_dim;
        for (heads, kernel) in &self.parts {
            for piece in group_pieces(heads.clone(), input.group_size()) {
                let piece_input = head_slice(input, piece.clone());
                let piece_out = &mut out[piece.start * head_out..piece.end * head_out];
                kernel.forward(&piece_input, layer, piece_out)?;
            }
        }
        Ok(())
    }
}

/// Allows a pair iff some rule does.
#[derive(Debug)]
struct AnyOf(Vec<Arc<dyn KeyRule>>);

impl KeyRule for AnyOf {
    fn allows(&self, q: usize, k: usize) -> bool {
        self.0.iter().any(|rule| rule.allows(q, k))
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        let mut all_empty = true;
        for rule in &self.0 {
            match rule.coverage(queries.clone(), keys.clone()) {
                Coverage::Full => return Coverage::Full,
                Coverage::Partial => all_empty = false,
                Coverage::Empty => {}
            }
        }
        if all_empty {
            Coverage::Empty
        } else {
            Coverage::Partial
        }
    }
}

/// Cuts a range of query heads where it crosses a GQA group's edge without taking the whole
/// group; runs of whole groups stay together.
fn group_pieces(heads: Range<usize>, group_size: usize) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = heads.start;
    while start < heads.end {
        let whole_groups = (heads.end - start) / group_size * group_size;
        let end = if start.is_multiple_of(group_size) && whole_groups > 0 {
            start + whole_groups
        } else {
            heads.end.min((start / group_size + 1) * group_size)
        };
        pieces.push(start..end);
        start = end;
    }
    pieces
}

/// The input over query heads `heads` (whole groups, or part of one group) and their KV
/// heads, borrowing the same memory.
fn head_slice<'a>(input: &AttentionInput<'a>, heads: Range<usize>) -> AttentionInput<'a> {
    let group_size = input.group_size();
    let kv_heads = heads.start / group_size..(heads.end - 1) / group_size + 1;
    let q_stride = input.n_queries * input.head_dim;
    let kv_stride = input.kv_capacity * input.head_dim;
    let kv = kv_heads.start * kv_stride..kv_heads.end * kv_stride;
    AttentionInput {
        q: &input.q[heads.start * q_stride..heads.end * q_stride],
        k: &input.k[kv.clone()],
        v: &input.v[kv],
        n_q_heads: heads.len(),
        n_kv_heads: kv_heads.len(),
        page_summaries: input.page_summaries.get(kv_heads).unwrap_or_default(),
        ..*input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_keep_whole_groups_together_and_cut_partial_ones() {
        assert_eq!(group_pieces(0..8, 2), vec![0..8]);
        assert_eq!(group_pieces(1..8, 2), vec![1..2, 2..8]);
        assert_eq!(group_pieces(1..7, 3), vec![1..3, 3..6, 6..7]);
        assert_eq!(group_pieces(4..5, 3), vec![4..5]);
        assert_eq!(group_pieces(2..5, 1), vec![2..5]);
    }
}
