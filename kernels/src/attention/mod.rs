//! One attention interface that every transformer block calls.
//!
//! A block computes Q, K and V, applies RoPE, appends K and V to its cache, and hands the
//! kernel a view of the queries and of the cache. Kernels are swapped per layer through
//! `Arc<dyn AttentionKernel>`; layouts are head-major so that a kernel can hand a range of
//! heads to another kernel (per-head mixes) without copying.

pub mod differential;
pub mod head_mix;
pub mod multi_token;
pub mod naive;
pub mod rule;
pub mod sink_window;
pub mod star;
pub mod tiled;
pub mod top_k_pages;

pub use differential::DifferentialKernel;
pub use head_mix::HeadMix;
pub use multi_token::MultiTokenKernel;
pub use naive::NaiveAttention;
pub use rule::RuleAttention;
pub use sink_window::SinkWindow;
pub use star::{StarAttention, StarRule};
pub use tiled::{merge_partial, TiledAttention};
pub use top_k_pages::{PageStore, PageSummary, TopKPages};

use std::ops::Range;
use std::sync::Arc;

use crate::{Error, Result};

/// Which keys a query may see. Positions are absolute token positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Key `k` is visible to query `q` iff `k <= q`.
    Causal,
    /// Causal, and only the last `window` positions: `q - window < k <= q`.
    SlidingWindow { window: usize },
    /// Causal within fixed chunks (Llama 4): `k <= q` and `k / chunk == q / chunk`.
    Chunked { chunk: usize },
}

impl Mask {
    /// Rejects a window or chunk of zero, which would hide every key (and divide by zero).
    pub fn validate(self) -> Result<()> {
        match self {
            Mask::SlidingWindow { window: 0 } | Mask::Chunked { chunk: 0 } => Err(
                Error::InvalidRequest(format!("attention mask {self:?}: size must be at least 1")),
            ),
            _ => Ok(()),
        }
    }

    /// Whether query position `q` may attend to key position `k`.
    pub fn allows(self, q: usize, k: usize) -> bool {
        if k > q {
            return false;
        }
        match self {
            Mask::Causal => true,
            Mask::SlidingWindow { window } => q - k < window,
            Mask::Chunked { chunk } => k / chunk == q / chunk,
        }
    }

    /// The visible key positions for query `q`, as a half-open range (every mask here is one
    /// contiguous range, which lets kernels skip whole tiles).
    pub fn visible_keys(self, q: usize) -> std::ops::Range<usize> {
        match self {
            Mask::Causal => 0..q + 1,
            Mask::SlidingWindow { window } => (q + 1).saturating_sub(window)..q + 1,
            Mask::Chunked { chunk } => (q / chunk) * chunk..q + 1,
        }
    }
}

/// How a rectangle of (query, key) position pairs relates to a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// No pair is visible: the tile is skipped.
    Empty,
    /// Every pair is visible: the tile runs without a mask.
    Full,
    /// Some pairs may be visible and some not: the tile is masked element by element.
    Partial,
}

impl Coverage {
    /// The coverage of the intersection of two rules over the same rectangle: Empty if
    /// either is, Full if both are.
    pub fn and(self, other: Coverage) -> Coverage {
        match (self, other) {
            (Coverage::Empty, _) | (_, Coverage::Empty) => Coverage::Empty,
            (Coverage::Full, Coverage::Full) => Coverage::Full,
            _ => Coverage::Partial,
        }
    }
}

/// A rule over absolute positions saying which keys a query may see, that can also be
/// reasoned about over whole rectangles, so that kernels plan which tiles to visit without
/// ever materialising a position mask.
///
/// A kernel applies a rule on top of its layer's own `Mask`: a rule can only hide more.
pub trait KeyRule: Send + Sync + std::fmt::Debug {
    /// Whether query position `q` may attend to key position `k`.
    fn allows(&self, q: usize, k: usize) -> bool;

    /// The relation of every pair in `queries × keys` to the rule. It must be sound:
    /// `Full` only if every pair is allowed, `Empty` only if none is. `Partial` is always a
    /// correct answer, only a slower one. Both ranges are non-empty.
    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage;

    /// Rejects parameters under which `allows` would be meaningless (kernels call it before
    /// running a rule). Rules built by checked constructors need not override it.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl KeyRule for Mask {
    fn validate(&self) -> Result<()> {
        Mask::validate(*self)
    }

    fn allows(&self, q: usize, k: usize) -> bool {
        Mask::allows(*self, q, k)
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        // Every mask here shows each query one contiguous range whose both ends never move
        // backwards as the query advances, so the first and last queries bound the rest.
        let (first, last) = (queries.start, queries.end - 1);
        let (lo, hi) = (self.visible_keys(first), self.visible_keys(last));
        let all_see = |q: usize| {
            let seen = self.visible_keys(q);
            seen.start <= keys.start && keys.end <= seen.end
        };
        if keys.end <= lo.start || keys.start >= hi.end {
            Coverage::Empty
        } else if all_see(first) && all_see(last) {
            Coverage::Full
        } else {
            Coverage::Partial
        }
    }
}

/// Changes a score after scaling and before the softmax (soft-capping, position biases).
/// `head` is the query head; `q` and `k` are absolute positions.
pub trait ScoreModifier: Send + Sync + std::fmt::Debug {
    fn modify(&self, head: usize, q: usize, k: usize, score: f32) -> f32;
}

/// How one layer attends: the fixed settings a model gives its kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerAttention {
    /// Multiplies q·k before the softmax (usually 1/sqrt(head_dim)).
    pub scale: f32,
    pub mask: Mask,
}

/// Queries and the KV cache of one layer, head-major.
///
/// The cache holds `kv_len` key slots; the `n_queries` queries are the tokens of the last
/// `n_queries` slots (the cache already holds their own keys and values). Prefill has
/// `n_queries == kv_len` (or a chunk of the prompt after earlier chunks), decode has
/// `n_queries == 1`. Slot `j` holds position `j` unless the cache dropped keys under a keep
/// policy: `key_positions` then gives each slot's absolute position.
#[derive(Clone, Copy, Debug)]
pub struct AttentionInput<'a> {
    /// `[n_q_heads, n_queries, head_dim]`, RoPE already applied, not scaled.
    pub q: &'a [f32],
    /// `[n_kv_heads, kv_capacity, head_dim]`; slots `0..kv_len` are valid.
    pub k: &'a [f32],
    /// Same layout as `k`.
    pub v: &'a [f32],
    pub n_q_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_queries: usize,
    pub kv_len: usize,
    pub kv_capacity: usize,
    /// The absolute position of each slot `0..kv_len`, increasing; `None` when slot `j`
    /// holds position `j` (nothing was dropped).
    pub key_positions: Option<&'a [usize]>,
    /// Summaries of complete pages of keys that the cache keeps up to date, indexed by KV
    /// head (empty when it keeps none; see `AttentionKernel::cache_policy`).
    pub page_summaries: &'a [Vec<PageStore>],
}

impl AttentionInput<'_> {
    /// Absolute position of query row `i`.
    pub fn query_position(&self, i: usize) -> usize {
        self.key_position(self.kv_len - self.n_queries + i)
    }

    /// Absolute position of the key in slot `j`.
    pub fn key_position(&self, j: usize) -> usize {
        self.key_positions.map_or(j, |positions| positions[j])
    }

    /// The slots whose keys lie at positions `positions`: one range, as slots are in
    /// position order.
    pub fn slots(&self, positions: Range<usize>) -> Range<usize> {
        match self.key_positions {
            None => positions.start.min(self.kv_len)..positions.end.min(self.kv_len),
            Some(held) => {
                let start = held.partition_point(|&p| p < positions.start);
                start..held.partition_point(|&p| p < positions.end).max(start)
            }
        }
    }

    /// Refuses a cache that dropped keys: for kernels that read keys by position.
    pub fn require_every_key(&self, kernel: &str) -> Result<()> {
        match self.key_positions {
            None => Ok(()),
            Some(_) => Err(Error::InvalidRequest(format!(
                "{kernel}: the KV cache dropped keys under a keep policy, and this kernel needs \
                 every key; only softmax rule kernels run on such a cache"
            ))),
        }
    }

    /// Query heads that share one KV head (grouped-query attention).
    pub fn group_size(&self) -> usize {
        self.n_q_heads / self.n_kv_heads
    }

    pub fn q_head(&self, h: usize) -> &[f32] {
        let n = self.n_queries * self.head_dim;
        &self.q[h * n..(h + 1) * n]
    }

    /// Keys `0..kv_len` of KV head `h`, `[kv_len, head_dim]`.
    pub fn k_head(&self, h: usize) -> &[f32] {
        let start = h * self.kv_capacity * self.head_dim;
        &self.k[start..start + self.kv_len * self.head_dim]
    }

    pub fn v_head(&self, h: usize) -> &[f32] {
        let start = h * self.kv_capacity * self.head_dim;
        &self.v[start..start + self.kv_len * self.head_dim]
    }

    /// Checks every length and ratio, so kernels can index without bounds surprises.
    pub fn validate(&self, out_len: usize) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidRequest(format!("attention input: {what}")));
        if self.head_dim == 0 || self.n_q_heads == 0 {
            return bad(format!(
                "head_dim {} and n_q_heads {} must be positive",
                self.head_dim, self.n_q_heads
            ));
        }
        if self.n_kv_heads == 0 || !self.n_q_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} query heads are not a multiple of {} KV heads",
                self.n_q_heads, self.n_kv_heads
            ));
        }
        if self.n_queries > self.kv_len || self.kv_len > self.kv_capacity {
            return bad(format!(
                "need n_queries {} <= kv_len {} <= kv_capacity {}",
                self.n_queries, self.kv_len, self.kv_capacity
            ));
        }
        let q_len = self.n_q_heads * self.n_queries * self.head_dim;
        let kv_len = self.n_kv_heads * self.kv_capacity * self.head_dim;
        if self.q.len() != q_len || out_len != q_len {
            return bad(format!(
                "q has {} values and out {out_len}, expected {q_len}",
                self.q.len()
            ));
        }
        if self.k.len() != kv_len || self.v.len() != kv_len {
            return bad(format!(
                "k has {} and v {} values, expected {kv_len}",
                self.k.len(),
                self.v.len()
            ));
        }
        if let Some(positions) = self.key_positions {
            if positions.len() != self.kv_len || !positions.is_sorted_by(|a, b| a < b) {
                return bad(format!(
                    "{} key positions for {} slots, or not increasing",
                    positions.len(),
                    self.kv_len
                ));
            }
        }
        Ok(())
    }
}

impl<'a> AttentionInput<'a> {
    /// Query rows `rows` (non-empty, within `0..n_queries`) as an input of their own: the
    /// queries are copied, the cache is shared.
    pub fn query_rows(&self, rows: Range<usize>) -> QueryRows<'a> {
        let d = self.head_dim;
        let q = (0..self.n_q_heads)
            .flat_map(|h| &self.q_head(h)[rows.start * d..rows.end * d])
            .copied()
            .collect();
        QueryRows {
            whole: *self,
            rows,
            q,
        }
    }
}

/// Some query rows of an input, copied out of the head-major queries (see
/// `AttentionInput::query_rows`).
#[derive(Clone, Debug)]
pub struct QueryRows<'a> {
    whole: AttentionInput<'a>,
    rows: Range<usize>,
    q: Vec<f32>,
}

impl QueryRows<'_> {
    /// The rows as an input: the cache cut after the last row's slot.
    pub fn input(&self) -> AttentionInput<'_> {
        let kv_len = self.whole.kv_len - self.whole.n_queries + self.rows.end;
        AttentionInput {
            q: &self.q,
            n_queries: self.rows.len(),
            kv_len,
            key_positions: self.whole.key_positions.map(|p| &p[..kv_len]),
            ..self.whole
        }
    }

    /// Values in the rows' output, `[n_q_heads, rows, head_dim]`.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether there are no output values (no query heads or no head dimension).
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Copies the rows' output into their places in the whole input's output.
    pub fn scatter(&self, rows_out: &[f32], out: &mut [f32]) {
        let d = self.whole.head_dim;
        let head_rows = self.rows.len() * d;
        let head_out = self.whole.n_queries * d;
        for (h, rows) in rows_out.chunks_exact(head_rows).enumerate() {
            let start = h * head_out + self.rows.start * d;
            out[start..start + head_rows].copy_from_slice(rows);
        }
    }
}

/// What a kernel asks of its layer's KV cache.
#[derive(Clone, Debug, Default)]
pub struct CachePolicy {
    /// While the newest position is `q`, the key at position `k` stays iff
    /// `keep.allows(q, k)`; `None` keeps every key. The cache drops keys after each forward
    /// call, so a call still sees every key it brought.
    pub keep: Option<Arc<dyn KeyRule>>,
    /// Page summaries the cache keeps up to date for the kernel: (keys per page, kind).
    pub page_summaries: Vec<(usize, PageSummary)>,
}

/// An attention kernel. Implementations must give the same result for a prefill of `n`
/// queries as for `n` single-query decode calls over the growing cache.
pub trait AttentionKernel: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;

    /// What this kernel asks of the cache: by default, keep every key and no summaries.
    /// A kernel that sets `keep` must read keys by `AttentionInput::key_positions`.
    fn cache_policy(&self) -> CachePolicy {
        CachePolicy::default()
    }

    /// Writes `[n_q_heads, n_queries, head_dim]` into `out`.
    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()>;
}
