//! Content-dependent sparse attention: each query row attends to the `k` KV pages whose
//! summaries promise the largest scores (Quest, Tang et al. 2024; MoBA, Lu et al. 2025).
//!
//! Positions are cut into pages of `page` keys. For the query at position `p` (page
//! `o = p / page`) of query head `h`:
//! 1. Candidates are the complete past pages `j < o` that hold at least one key the layer's
//!    mask and the base rule (if any) let `p` see. A page partly in the future (only the
//!    query's own page can be) is never summarised, so no future key leaks into a choice.
//! 2. Each candidate gets an upper bound or estimate of `q·k` over its keys, in f64 and in
//!    channel order, from a summary of all its keys:
//!    - `MinMax` (Quest): `Σ_c max(q_c·min_c, q_c·max_c)` with the per-channel minimum and
//!      maximum of the page's keys;
//!    - `Mean` (MoBA): `q · mean key`.
//! 3. The row attends to its own page and the `k - 1` best candidates (higher score first,
//!    then lower page index), with exact softmax over the keys of those pages that the
//!    mask and base rule show it. A row that sees no key gets zeros.
//!
//! Scores for the choice are f64 so that the f64 twin makes the same choice bit for bit;
//! the attention itself runs in f32.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::{
    AttentionInput, AttentionKernel, CachePolicy, Coverage, KeyRule, LayerAttention, Mask,
    TiledAttention,
};
use crate::{Error, Result};

/// How a page of keys is summarised for the choice of pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSummary {
    /// Per-channel minimum and maximum (Quest): an upper bound on `q·k` over the page.
    MinMax,
    /// The mean key (MoBA): `q · mean` is the mean score over the page.
    Mean,
}

/// Top-k page attention (see the module documentation for the exact definition).
#[derive(Clone, Debug)]
pub struct TopKPages {
    page: usize,
    k: usize,
    summary: PageSummary,
    base: Option<Arc<dyn KeyRule>>,
    name: String,
    engine: TiledAttention,
}

impl TopKPages {
    /// Pages of `page` keys, `k` pages per row (its own included).
    pub fn new(page: usize, k: usize, summary: PageSummary) -> Result<TopKPages> {
        if page == 0 || k == 0 {
            return Err(Error::InvalidRequest(format!(
                "top-k pages: page size and k must be at least 1, got page {page} and k {k} \
                 (k counts the query's own page)"
            )));
        }
        let kind = match summary {
            PageSummary::MinMax => "quest",
            PageSummary::Mean => "moba",
        };
        Ok(TopKPages {
            page,
            k,
            summary,
            base: None,
            name: format!("top_k_pages({kind},{page},{k})"),
            engine: TiledAttention::default(),
        })
    }

    /// Chooses and attends only among keys `rule` also shows (on top of the layer's mask).
    pub fn with_base_rule(self, rule: Arc<dyn KeyRule>) -> Result<TopKPages> {
        rule.validate()?;
        Ok(TopKPages {
            base: Some(rule),
            ..self
        })
    }

    /// The same kernel with another engine's micro-kernels (portable code, key tile size).
    pub fn with_engine(self, engine: TiledAttention) -> TopKPages {
        TopKPages { engine, ..self }
    }

    /// Keys per page.
    pub fn page(&self) -> usize {
        self.page
    }

    /// Pages each row attends to, its own included.
    pub fn k(&self) -> usize {
        self.k
    }

    /// How pages are summarised for the choice.
    pub fn summary(&self) -> PageSummary {
        self.summary
    }

    /// The rule that, with the layer's mask, limits which keys are chosen among and seen.
    pub fn base_rule(&self) -> Option<&dyn KeyRule> {
        self.base.as_deref()
    }

    /// Whether the layer's mask and the base rule let query `q` see key `k`.
    fn visible(&self, mask: Mask, q: usize, k: usize) -> bool {
        mask.allows(q, k) && self.base.as_ref().is_none_or(|rule| rule.allows(q, k))
    }

    /// Whether page `j` holds a key query `q` may see: settled by coverage where it can be.
    fn page_visible(&self, mask: Mask, q: usize, j: usize) -> bool {
        let keys = self.page_keys(j);
        let mut coverage = KeyRule::coverage(&mask, q..q + 1, keys.clone());
        if let Some(rule) = &self.base {
            coverage = coverage.and(rule.coverage(q..q + 1, keys.clone()));
        }
        match coverage {
            Coverage::Empty => false,
            Coverage::Full => true,
            Coverage::Partial => keys.into_iter().any(|k| self.visible(mask, q, k)),
        }
    }

    fn page_keys(&self, j: usize) -> Range<usize> {
        j * self.page..(j + 1) * self.page
    }
}

/// The summaries of one KV head's complete pages of `page` keys, in f64: `[pages, width, d]`
/// with width 2 (min, max) or 1 (mean). The KV cache keeps one up to date for a kernel that
/// asks (`CachePolicy::page_summaries`), so a decode step summarises only the pages it
/// completes; the kernel summarises the keys itself when handed none.
#[derive(Clone, Debug)]
pub struct PageStore {
    page: usize,
    summary: PageSummary,
    d: usize,
    values: Vec<f64>,
}

impl PageStore {
    /// An empty store for pages of `page` keys of `d` channels.
    pub fn new(page: usize, summary: PageSummary, d: usize) -> PageStore {
        PageStore {
            page,
            summary,
            d,
            values: Vec::new(),
        }
    }

    /// Whether this store summarises pages of `page` keys as `summary`.
    pub fn is_for(&self, page: usize, summary: PageSummary) -> bool {
        self.page == page && self.summary == summary
    }

    /// Keys per page.
    pub fn page(&self) -> usize {
        self.page
    }

    /// Complete pages summarised.
    pub fn pages(&self) -> usize {
        self.values.len() / (self.width() * self.d)
    }

    /// Bytes the summaries take.
    pub fn bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<f64>()
    }

    fn width(&self) -> usize {
        match self.summary {
            PageSummary::MinMax => 2,
            PageSummary::Mean => 1,
        }
    }

    /// Summarises the complete pages of `keys` (`[n, d]`, the head's keys from position 0)
    /// that are not summarised yet.
    pub fn update(&mut self, keys: &[f32]) {
        let (page, d) = (self.page, self.d);
        let pages = keys.len() / d / page;
        for page_keys in keys.chunks_exact(page * d).take(pages).skip(self.pages()) {
            match self.summary {
                PageSummary::MinMax => {
                    let mut min = vec![f64::INFINITY; d];
                    let mut max = vec![f64::NEG_INFINITY; d];
                    for key in page_keys.chunks_exact(d) {
                        for c in 0..d {
                            min[c] = min[c].min(f64::from(key[c]));
                            max[c] = max[c].max(f64::from(key[c]));
                        }
                    }
                    self.values.extend(min);
                    self.values.extend(max);
                }
                PageSummary::Mean => self.values.extend(mean_key(page_keys, d)),
            }
        }
    }

    /// Keeps the first `pages` pages only.
    pub fn truncate(&mut self, pages: usize) {
        self.values.truncate(pages * self.width() * self.d);
    }

    /// The page's score for `query`.
    fn score(&self, j: usize, query: &[f32]) -> f64 {
        let width = self.width();
        let summary = &self.values[j * width * self.d..(j + 1) * width * self.d];
        if width == 2 {
            let (min, max) = summary.split_at(self.d);
            minmax_score(query, min, max)
        } else {
            mean_score(query, summary)
        }
    }
}

/// The mean of `[n, d]` keys, summed in key order.
pub(super) fn mean_key(keys: &[f32], d: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; d];
    let n = keys.len() / d;
    for key in keys.chunks_exact(d) {
        for (s, &x) in sum.iter_mut().zip(key) {
            *s += f64::from(x);
        }
    }
    sum.iter().map(|s| s / n as f64).collect()
}

/// Quest's bound `Σ_c max(q_c·min_c, q_c·max_c)`, summed in channel order.
pub(super) fn minmax_score(query: &[f32], min: &[f64], max: &[f64]) -> f64 {
    let mut score = 0.0;
    for ((&q, &lo), &hi) in query.iter().zip(min).zip(max) {
        let q = f64::from(q);
        score += (q * lo).max(q * hi);
    }
    score
}

/// `q · mean`, summed in channel order.
pub(super) fn mean_score(query: &[f32], mean: &[f64]) -> f64 {
    let mut score = 0.0;
    for (&q, &m) in query.iter().zip(mean) {
        score += f64::from(q) * m;
    }
    score
}

/// Keeps the `keep` best of `scored` (higher score, then lower page), returned in page order.
fn best_pages(scored: &mut Vec<(usize, f64)>, keep: usize) {
    let order = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > keep {
        if keep > 0 {
            scored.select_nth_unstable_by(keep - 1, order);
        }
        scored.truncate(keep);
    }
    scored.sort_unstable_by_key(|&(j, _)| j);
}

/// Per-thread buffers of one row.
#[derive(Default)]
struct RowScratch {
    scored: Vec<(usize, f64)>,
    /// Runs of consecutive visible keys in the chosen pages.
    spans: Vec<Range<usize>>,
}

/// Appends `key` to the last span if it continues it, else starts a new span.
fn push_key(spans: &mut Vec<Range<usize>>, key: usize) {
    match spans.last_mut() {
        Some(last) if last.end == key => last.end += 1,
        _ => spans.push(key..key + 1),
    }
}

impl AttentionKernel for TopKPages {
    fn name(&self) -> &str {
        &self.name
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy {
            keep: None,
            page_summaries: vec![(self.page, self.summary)],
        }
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        input.validate(out.len())?;
        layer.mask.validate()?;
        if let Some(rule) = &self.base {
            rule.validate()?;
        }
        input.require_every_key(self.name())?;
        let d = input.head_dim;
        if input.n_queries == 0 {
            return Ok(());
        }
        let complete = input.kv_len / self.page;
        let summaries: Vec<Cow<PageStore>> = (0..input.n_kv_heads)
            .into_par_iter()
            .map(|h| {
                let kept = input.page_summaries.get(h).and_then(|stores| {
                    stores
                        .iter()
                        .find(|s| s.is_for(self.page, self.summary) && s.pages() >= complete)
                });
                kept.map_or_else(
                    || {
                        let mut store = PageStore::new(self.page, self.summary, d);
                        store.update(input.k_head(h));
                        Cow::Owned(store)
                    },
                    Cow::Borrowed,
                )
            })
            .collect();
        out.par_chunks_mut(d).enumerate().for_each_init(
            RowScratch::default,
            |scratch, (row, out)| {
                let (head, i) = (row / input.n_queries, row % input.n_queries);
                let kv_head = head / input.group_size();
                let query = &input.q_head(head)[i * d..(i + 1) * d];
                let position = input.query_position(i);
                let own = position / self.page;

                scratch.scored.clear();
                scratch.scored.extend(
                    (0..own)
                        .filter(|&j| self.page_visible(layer.mask, position, j))
                        .map(|j| (j, summaries[kv_head].score(j, query))),
                );
                best_pages(&mut scratch.scored, self.k - 1);
                scratch.spans.clear();
                let pages = scratch.scored.iter().map(|&(j, _)| j).chain([own]);
                for j in pages {
                    let keys = j * self.page..((j + 1) * self.page).min(position + 1);
                    for key in keys.filter(|&k| self.visible(layer.mask, position, k)) {
                        push_key(&mut scratch.spans, key);
                    }
                }
                let (keys, values) = (input.k_head(kv_head), input.v_head(kv_head));
                self.engine
                    .attend_row(query, layer.scale, keys, values, &scratch.spans, out);
            },
        );
        Ok(())
    }
}
