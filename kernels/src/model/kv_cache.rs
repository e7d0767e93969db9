//! The key/value cache: per layer, `[n_kv_heads, capacity, head_dim]` for keys and for
//! values, so each head's keys are contiguous for the attention kernel.
//!
//! A layer whose kernel has a keep policy (`CachePolicy::keep`) drops, after each forward
//! call, the keys the policy no longer keeps: the held rows move together, so they stay
//! contiguous per KV head, and the layer records each row's absolute position. Such a layer
//! sizes its allocation by the rows it holds plus the incoming tokens, so the memory a keep
//! policy saves is memory the process does not hold.

use std::ops::Range;

use crate::attention::{CachePolicy, Coverage, KeyRule, PageStore};
use crate::{Error, Result};

/// The smallest allocation, in rows.
const MIN_CAPACITY: usize = 256;
/// A layer under a keep policy allocates rows in multiples of this.
const ROW_GRANULE: usize = 64;
/// Bytes of one f32.
const F32: usize = std::mem::size_of::<f32>();

/// Keys and values of every layer for the tokens seen so far.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions seen: the absolute position of the next token.
    len: usize,
    /// The newest position when some layer last dropped a key. Queries from there on never
    /// need a dropped key, earlier ones might: truncating to less is refused.
    last_drop: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct LayerCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    /// Rows held per KV head.
    rows: usize,
    /// The absolute position of each held row, once a row was dropped; `None` while row `j`
    /// holds position `j`.
    positions: Option<Vec<usize>>,
    /// Per KV head, the page summaries the layer's kernel asks for.
    pages: Vec<Vec<PageStore>>,
}

impl KvCache {
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        let layer = LayerCache {
            k: Vec::new(),
            v: Vec::new(),
            n_kv_heads,
            head_dim,
            capacity: 0,
            rows: 0,
            positions: None,
            pages: Vec::new(),
        };
        Self {
            layers: vec![layer; n_layers],
            len: 0,
            last_drop: None,
        }
    }

    /// Whether this cache has the shape of a model with these dimensions.
    pub fn fits(&self, n_layers: usize, n_kv_heads: usize, head_dim: usize) -> bool {
        self.layers.len() == n_layers
            && self
                .layers
                .iter()
                .all(|l| l.n_kv_heads == n_kv_heads && l.head_dim == head_dim)
    }

    /// Number of positions seen (held or dropped): the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
        self.last_drop = None;
        for layer in &mut self.layers {
            layer.rows = 0;
            layer.positions = None;
            layer.pages.clear();
        }
    }

    /// Drops positions from `len` on, e.g. to reuse a shared prompt prefix. Refused when a
    /// keep policy already dropped keys that positions from `len` on may need: under a keep
    /// policy, only back to the newest position of the last forward call.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        if let Some(newest) = self.last_drop.filter(|&newest| len < newest) {
            return Err(Error::InvalidRequest(format!(
                "KV cache: cannot go back to {len} positions: keys were dropped while the newest \
                 position was {newest}, and a query before it may need them"
            )));
        }
        self.len = len;
        self.forget_rows_from(len);
        Ok(())
    }

    /// Forgets the rows of positions from `len` on in every layer: what a forward call that
    /// failed part way had appended, or what `truncate` drops.
    pub(crate) fn forget_rows_from(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.rows = match &mut layer.positions {
                None => layer.rows.min(len),
                Some(positions) => {
                    positions.truncate(positions.partition_point(|&p| p < len));
                    positions.len()
                }
            };
            for store in layer.pages.iter_mut().flatten() {
                store.truncate(layer.rows / store.page());
            }
        }
    }

    /// Bytes of the keys and values held: every layer's held rows, f32.
    pub fn bytes_held(&self) -> usize {
        self.layers
            .iter()
            .map(|l| 2 * l.rows * l.n_kv_heads * l.head_dim * F32)
            .sum()
    }

    /// Bytes allocated: the capacity of every layer's key, value, position and page summary
    /// buffers.
    pub fn bytes_allocated(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let positions = l.positions.as_ref().map_or(0, Vec::capacity);
                let pages: usize = l.pages.iter().flatten().map(PageStore::bytes).sum();
                (l.k.capacity() + l.v.capacity()) * F32
                    + positions * std::mem::size_of::<usize>()
                    + pages
            })
            .sum()
    }

    /// The absolute positions whose keys layer `layer` holds, in order.
    pub fn held_positions(&self, layer: usize) -> Result<Vec<usize>> {
        let layer = self.layers.get(layer).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "KV cache: layer {layer} does not exist (the cache has {})",
                self.layers.len()
            ))
        })?;
        Ok((0..layer.rows).map(|row| layer.position(row)).collect())
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerCache {
        &mut self.layers[layer]
    }

    /// Drops from layer `layer` the keys `keep` no longer keeps now that the newest position
    /// is `len() - 1`.
    pub(crate) fn drop_keys(&mut self, layer: usize, keep: &dyn KeyRule) {
        let Some(newest) = self.len.checked_sub(1) else {
            return;
        };
        if self.layers[layer].drop_keys(keep, newest) {
            self.last_drop = Some(newest);
        }
    }
}

impl LayerCache {
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows held per KV head.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The absolute position of each held row; `None` while row `j` holds position `j`.
    pub fn positions(&self) -> Option<&[usize]> {
        self.positions.as_deref()
    }

    /// Per KV head, the page summaries kept up to date (see `update_summaries`).
    pub fn page_summaries(&self) -> &[Vec<PageStore>] {
        &self.pages
    }

    fn position(&self, row: usize) -> usize {
        self.positions
            .as_ref()
            .map_or(row, |positions| positions[row])
    }

    /// Readies the layer for `incoming` rows under `policy`: room for them, and a page
    /// summary store per KV head for each kind the kernel asks for (others are forgotten).
    /// A layer that dropped keys keeps no summaries: no kernel that reads them runs there.
    pub(crate) fn prepare(&mut self, incoming: usize, policy: &CachePolicy) {
        self.reserve(incoming, policy.keep.is_some());
        let wanted = &policy.page_summaries;
        if self.positions.is_some() || wanted.is_empty() {
            self.pages.clear();
            return;
        }
        self.pages.resize_with(self.n_kv_heads, Vec::new);
        for stores in &mut self.pages {
            stores.retain(|s| wanted.iter().any(|&(page, kind)| s.is_for(page, kind)));
            for &(page, kind) in wanted {
                if !stores.iter().any(|s| s.is_for(page, kind)) {
                    stores.push(PageStore::new(page, kind, self.head_dim));
                }
            }
        }
    }

    /// Makes room for `incoming` more rows. A layer that drops keys (`dropping`) grows to
    /// what it holds plus the incoming rows (by at least a quarter, to amortise growth);
    /// one that keeps every key doubles.
    fn reserve(&mut self, incoming: usize, dropping: bool) {
        let needed = self.rows + incoming;
        if needed <= self.capacity {
            return;
        }
        let capacity = if dropping {
            needed
                .max(self.capacity + self.capacity / 4)
                .next_multiple_of(ROW_GRANULE)
        } else {
            needed.next_power_of_two()
        };
        self.reallocate(capacity.max(MIN_CAPACITY));
    }

    /// Moves the held rows into buffers of `capacity` rows per KV head.
    fn reallocate(&mut self, capacity: usize) {
        let (h, d) = (self.n_kv_heads, self.head_dim);
        for buf in [&mut self.k, &mut self.v] {
            let mut moved = vec![0f32; h * capacity * d];
            for head in 0..h {
                let held = head * self.capacity * d..(head * self.capacity + self.rows) * d;
                moved[head * capacity * d..][..held.len()].copy_from_slice(&buf[held]);
            }
            *buf = moved;
        }
        self.capacity = capacity;
    }

    /// Appends rows `[n, n_kv_heads * head_dim]` of keys and values for positions `start..`,
    /// and summarises the pages they complete.
    pub(crate) fn write(&mut self, start: usize, k: &[f32], v: &[f32]) {
        let (h, d, cap, first) = (self.n_kv_heads, self.head_dim, self.capacity, self.rows);
        let mut n = 0;
        for (t, (k_row, v_row)) in k.chunks_exact(h * d).zip(v.chunks_exact(h * d)).enumerate() {
            for head in 0..h {
                let dst = (head * cap + first + t) * d;
                self.k[dst..dst + d].copy_from_slice(&k_row[head * d..(head + 1) * d]);
                self.v[dst..dst + d].copy_from_slice(&v_row[head * d..(head + 1) * d]);
            }
            n += 1;
        }
        if let Some(positions) = &mut self.positions {
            positions.extend(start..start + n);
        }
        self.rows += n;
        for (head, stores) in self.pages.iter_mut().enumerate() {
            let keys = &self.k[head * cap * d..(head * cap + self.rows) * d];
            stores.iter_mut().for_each(|store| store.update(keys));
        }
    }

    /// Drops the rows `keep` does not keep while the newest position is `newest`; returns
    /// whether any went. Shrinks the allocation when it has become more than twice what the
    /// held rows and one more need.
    fn drop_keys(&mut self, keep: &dyn KeyRule, newest: usize) -> bool {
        let mut runs = Vec::new();
        self.kept_runs(keep, newest, 0..self.rows, &mut runs);
        if runs.iter().map(Range::len).sum::<usize>() == self.rows {
            return false;
        }
        let (h, d, cap) = (self.n_kv_heads, self.head_dim, self.capacity);
        for buf in [&mut self.k, &mut self.v] {
            for head in 0..h {
                let base = head * cap * d;
                let mut to = base;
                for run in &runs {
                    buf.copy_within(base + run.start * d..base + run.end * d, to);
                    to += run.len() * d;
                }
            }
        }
        let positions: Vec<usize> = runs
            .iter()
            .flat_map(|run| run.clone().map(|row| self.position(row)))
            .collect();
        self.rows = positions.len();
        self.positions = Some(positions);
        self.pages.clear();
        let fit = (self.rows + 1)
            .next_multiple_of(ROW_GRANULE)
            .max(MIN_CAPACITY);
        if self.capacity > 2 * fit {
            self.reallocate(fit);
        }
        true
    }

    /// Appends to `runs` the rows of `rows` that `keep` keeps at `newest`, as runs of
    /// consecutive rows: a stretch the rule keeps or drops whole is settled by one coverage
    /// call over the positions it spans (sound, as its rows hold a subset of them).
    fn kept_runs(
        &self,
        keep: &dyn KeyRule,
        newest: usize,
        rows: Range<usize>,
        runs: &mut Vec<Range<usize>>,
    ) {
        const BY_ROW: usize = 8;
        if rows.is_empty() {
            return;
        }
        let spanned = self.position(rows.start)..self.position(rows.end - 1) + 1;
        match keep.coverage(newest..newest + 1, spanned) {
            Coverage::Empty => {}
            Coverage::Full => push_run(runs, rows),
            Coverage::Partial if rows.len() <= BY_ROW => {
                for row in rows.filter(|&row| keep.allows(newest, self.position(row))) {
                    push_run(runs, row..row + 1);
                }
            }
            Coverage::Partial => {
                let middle = rows.start + rows.len() / 2;
                self.kept_runs(keep, newest, rows.start..middle, runs);
                self.kept_runs(keep, newest, middle..rows.end, runs);
            }
        }
    }
}

/// Appends `run` to `runs`, merged into the last run if it continues it.
fn push_run(runs: &mut Vec<Range<usize>>, run: Range<usize>) {
    match runs.last_mut() {
        Some(last) if last.end == run.start => last.end = run.end,
        _ => runs.push(run),
    }
}
