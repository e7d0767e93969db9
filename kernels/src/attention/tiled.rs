//! Exact attention in tiles, flash-attention style.
//!
//! The queries of one KV group are cut into tiles of `q_tile` positions; each (group, query
//! tile) is one rayon work item, so every query head of a group reads a KV tile while it is
//! hot. Within an item the keys are walked in tiles of `kv_tile`, and each query row keeps a
//! running max and running sum (online softmax): when a later tile raises the max, the
//! accumulated output is rescaled by `exp(old_max - new_max)`. Keys no row of the item can
//! see are never visited, because `Mask::visible_keys` is one contiguous range per row.
//!
//! A `KeyRule` (and a `ScoreModifier`) can ride on top of the layer's mask: each item then
//! plans its KV tiles by bisecting the key axis with `coverage`, so a rule that shows a few
//! contiguous stretches costs O(log T) coverage calls per item. Tiles the rule fully shows
//! run unmasked; partly shown tiles ask `allows` per (row, key) of the tile.
//!
//! Where the cache dropped keys under a keep policy, tiles are cut over the held key slots,
//! and the mask and rule read each slot's position (`AttentionInput::key_positions`).
//!
//! When that gives too few items to keep every thread busy (decode, one query per head, on
//! few KV heads), an item takes fewer heads of its group, down to one.
//!
//! Rows are handled in blocks of `ROWS` by register-blocked micro-kernels: scores as dot
//! products of a block's rows with a few keys at a time (eight vector accumulators, summed
//! across lanes at the end, reading keys straight from the cache), and values as
//! `probability × value` sums over 16 columns at a time. They are written once against the
//! small `Simd` trait, which has a portable implementation on arrays and an AVX2/FMA one
//! on intrinsics chosen at run time. The loops stay ordinary Rust, so the portable twin
//! tests the same code the fast path runs.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::{
    AttentionInput, AttentionKernel, Coverage, KeyRule, LayerAttention, Mask, ScoreModifier,
};
use crate::{Error, Result};

/// Query rows per micro-kernel call.
const ROWS: usize = 4;
/// f32 lanes of one vector (AVX2).
const LANES: usize = 8;
/// Partly shown KV tiles are trimmed down to no fewer keys than this.
const MIN_TRIMMED_TILE: usize = 16;

/// Which compilation of the micro-kernels runs.
#[derive(Clone, Copy, Debug)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(Avx2Fma),
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if let Some(token) = Avx2Fma::detect() {
            return Isa::Avx2Fma(token);
        }
        Isa::Portable
    }
}

/// Flash-attention style exact kernel: tiled, online softmax, parallel over heads and tiles.
#[derive(Clone, Copy, Debug)]
pub struct TiledAttention {
    q_tile: usize,
    kv_tile: usize,
    isa: Isa,
}

impl Default for TiledAttention {
    /// 32 queries by 128 keys: on a 2-core Zen 4, 128 beat 64 and tied 256 on a 1024-token
    /// prefill, and 32 queries give enough work items for both cores.
    fn default() -> Self {
        TiledAttention {
            q_tile: 32,
            kv_tile: 128,
            isa: Isa::detect(),
        }
    }
}

impl TiledAttention {
    /// A kernel with `q_tile` query positions and `kv_tile` keys per tile.
    pub fn with_tiles(q_tile: usize, kv_tile: usize) -> Result<Self> {
        if q_tile == 0 || kv_tile == 0 {
            return Err(Error::InvalidRequest(format!(
                "attention tiles must be positive, got q_tile {q_tile} and kv_tile {kv_tile}"
            )));
        }
        Ok(TiledAttention {
            q_tile,
            kv_tile,
            ..TiledAttention::default()
        })
    }

    /// The same kernel without the run-time chosen AVX2/FMA code: the twin the tests hold
    /// the fast path to, and the baseline a measurement compares it with.
    pub fn portable(self) -> Self {
        TiledAttention {
            isa: Isa::Portable,
            ..self
        }
    }

    /// Like `forward`, and also writes each row's log-sum-exp into `lse`
    /// (`[n_q_heads, n_queries]`): `ln Σ_k exp(scale · q·k)` over the keys the row sees.
    ///
    /// Two partial results over disjoint key sets merge exactly:
    /// `out = (e₁·out₁ + e₂·out₂) / (e₁ + e₂)` with `eᵢ = exp(lseᵢ - max(lse₁, lse₂))`.
    pub fn forward_with_lse(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        check_lse_len(input, lse)?;
        self.run(input, layer, None, out, Some(lse))
    }

    /// Attention where a key is visible iff the layer's mask and `rule` both allow it, with
    /// `modifier` (if any) applied to each visible pair's scaled score before the softmax.
    /// `lse`, if given, receives each row's log-sum-exp as `forward_with_lse` describes.
    ///
    /// A row that sees no key gets zeros and a log-sum-exp of `-inf`.
    pub fn forward_rule(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        rule: &dyn KeyRule,
        modifier: Option<&dyn ScoreModifier>,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        rule.validate()?;
        if let Some(lse) = &lse {
            check_lse_len(input, lse)?;
        }
        self.run(input, layer, Some(Rules { rule, modifier }), out, lse)
    }

    fn run(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        rules: Option<Rules>,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        input.validate(out.len())?;
        layer.mask.validate()?;
        if input.n_queries == 0 {
            return Ok(());
        }
        let d = input.head_dim;
        let group_size = input.group_size();
        let q_tile = self.q_tile.min(input.n_queries);
        let n_q_tiles = input.n_queries.div_ceil(q_tile);

        // One piece per (query head, query tile), sorted into work-item order: group, query
        // tile, head within the group. Consecutive pieces then share a KV head.
        let mut pieces: Vec<Piece> = Vec::with_capacity(input.n_q_heads * n_q_tiles);
        for (h, head_out) in out.chunks_mut(input.n_queries * d).enumerate() {
            for (t, tile_out) in head_out.chunks_mut(q_tile * d).enumerate() {
                pieces.push(Piece {
                    order: ((h / group_size) * n_q_tiles + t) * group_size + h % group_size,
                    out: tile_out,
                    lse: &mut [],
                });
            }
        }
        if let Some(lse) = lse {
            let lse_tiles = lse
                .chunks_mut(input.n_queries)
                .flat_map(|head| head.chunks_mut(q_tile));
            for (piece, tile_lse) in pieces.iter_mut().zip(lse_tiles) {
                piece.lse = tile_lse;
            }
        }
        pieces.sort_unstable_by_key(|piece| piece.order);

        let job = Job {
            input,
            scale: layer.scale,
            mask: layer.mask,
            rules,
            q_tile,
            kv_tile: self.kv_tile,
            n_q_tiles,
        };
        let heads_per_item = heads_per_item(group_size, input.n_q_heads * n_q_tiles);
        pieces
            .par_chunks_mut(heads_per_item)
            .for_each(|item| SCRATCH.with_borrow_mut(|scratch| self.attend(&job, item, scratch)));
        Ok(())
    }

    fn attend(&self, job: &Job, item: &mut [Piece], scratch: &mut Scratch) {
        match self.isa {
            Isa::Portable => attend_item(Portable, job, item, scratch),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma(token) => attend_item(token, job, item, scratch),
        }
    }

    /// Softmax attention of one query row over the keys in `spans` (every one visible), with
    /// the same micro-kernels: for kernels that choose each row's keys themselves.
    /// `keys` and `values` are one KV head's `[kv_len, head_dim]`; a row with no key gets
    /// zeros.
    pub(super) fn attend_row(
        &self,
        query: &[f32],
        scale: f32,
        keys: &[f32],
        values: &[f32],
        spans: &[Range<usize>],
        out: &mut [f32],
    ) {
        let row = Row {
            query,
            scale,
            keys,
            values,
            spans,
            kv_tile: self.kv_tile,
        };
        SCRATCH.with_borrow_mut(|scratch| match self.isa {
            Isa::Portable => attend_one_row(Portable, &row, scratch, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma(token) => attend_one_row(token, &row, scratch, out),
        });
    }
}

/// One query row and the key spans it attends to (see `TiledAttention::attend_row`).
struct Row<'a> {
    query: &'a [f32],
    scale: f32,
    keys: &'a [f32],
    values: &'a [f32],
    spans: &'a [Range<usize>],
    kv_tile: usize,
}

fn attend_one_row<S: Simd>(simd: S, row: &Row, scratch: &mut Scratch, out: &mut [f32]) {
    let d = row.query.len();
    grow(&mut scratch.scores, ROWS * row.kv_tile);
    grow(&mut scratch.probs, ROWS * row.kv_tile);
    refill(&mut scratch.q, d, 0.0);
    refill(&mut scratch.acc, d, 0.0);
    refill(&mut scratch.max, 1, f32::NEG_INFINITY);
    refill(&mut scratch.sum, 1, 0.0);
    for (q, &x) in scratch.q.iter_mut().zip(row.query) {
        *q = x * row.scale;
    }
    for span in row.spans {
        for start in span.clone().step_by(row.kv_tile) {
            let tile = start..(start + row.kv_tile).min(span.end);
            let ctx = BlockCtx {
                d,
                stride: row.kv_tile,
                keys: &row.keys[tile.start * d..tile.end * d],
                values: &row.values[tile.start * d..tile.end * d],
                visible: std::array::from_fn(|r| if r == 0 { 0..tile.len() } else { 0..0 }),
                adjust: None,
            };
            let rows = BlockRows {
                q: &scratch.q,
                acc: &mut scratch.acc,
                max: &mut scratch.max,
                sum: &mut scratch.sum,
                scores: &mut scratch.scores,
                probs: &mut scratch.probs,
            };
            simd.attend_block::<1, 8>(&ctx, rows);
        }
    }
    let sum = scratch.sum[0];
    let inverse = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    for (o, &a) in out.iter_mut().zip(&scratch.acc) {
        *o = a * inverse;
    }
}

impl AttentionKernel for TiledAttention {
    fn name(&self) -> &str {
        "tiled"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> Result<()> {
        self.run(input, layer, None, out, None)
    }
}

fn check_lse_len(input: &AttentionInput, lse: &[f32]) -> Result<()> {
    let rows = input.n_q_heads * input.n_queries;
    if lse.len() != rows {
        return Err(Error::InvalidRequest(format!(
            "attention lse has {} values, expected {rows} (one per query head and row)",
            lse.len()
        )));
    }
    Ok(())
}

/// Merges a partial attention result over one key set into another over a disjoint key set,
/// exactly: `out = (e₁·out₁ + e₂·out₂) / (e₁ + e₂)` with `eᵢ = exp(lseᵢ - max(lse₁, lse₂))`,
/// and `lse = max + ln(e₁ + e₂)`. Rows are `head_dim` long; `lse` has one value per row.
/// A row whose both parts saw nothing (`-inf`) stays zeros with `-inf`.
pub fn merge_partial(
    out: &mut [f32],
    lse: &mut [f32],
    part_out: &[f32],
    part_lse: &[f32],
    head_dim: usize,
) -> Result<()> {
    if head_dim == 0
        || out.len() != lse.len() * head_dim
        || part_out.len() != out.len()
        || part_lse.len() != lse.len()
    {
        return Err(Error::InvalidRequest(format!(
            "attention merge: outputs of {} and {} values with {} and {} log-sum-exps do not \
             match head_dim {head_dim}",
            out.len(),
            part_out.len(),
            lse.len(),
            part_lse.len()
        )));
    }
    let rows = out
        .chunks_exact_mut(head_dim)
        .zip(part_out.chunks_exact(head_dim));
    for ((row, part_row), (lse, &part_lse)) in rows.zip(lse.iter_mut().zip(part_lse)) {
        let max = lse.max(part_lse);
        if max == f32::NEG_INFINITY {
            continue;
        }
        let (mine, theirs) = ((*lse - max).exp(), (part_lse - max).exp());
        let total = mine + theirs;
        for (o, &p) in row.iter_mut().zip(part_row) {
            *o = (mine * *o + theirs * p) / total;
        }
        *lse = max + total.ln();
    }
    Ok(())
}

/// How many query heads of a group one work item takes: the whole group, unless that leaves
/// too few items to keep every thread busy (decode on few KV heads).
fn heads_per_item(group_size: usize, pieces: usize) -> usize {
    let wanted_items = 4 * rayon::current_num_threads();
    (1..=group_size)
        .rev()
        .filter(|&heads| group_size.is_multiple_of(heads))
        .find(|heads| pieces / heads >= wanted_items)
        .unwrap_or(1)
}

/// The output of one query head over one query tile.
struct Piece<'a> {
    /// Position in work-item order; also says which group, tile and head this is.
    order: usize,
    out: &'a mut [f32],
    /// Empty unless the caller asked for log-sum-exp.
    lse: &'a mut [f32],
}

/// A rule on top of the layer's mask, and a score modifier.
#[derive(Clone, Copy)]
struct Rules<'a> {
    rule: &'a dyn KeyRule,
    modifier: Option<&'a dyn ScoreModifier>,
}

/// What every work item of one call shares.
struct Job<'a, 'b> {
    input: &'a AttentionInput<'b>,
    scale: f32,
    mask: Mask,
    /// `None` on the plain-mask path.
    rules: Option<Rules<'a>>,
    q_tile: usize,
    kv_tile: usize,
    n_q_tiles: usize,
}

/// Per-thread buffers, kept between calls so that steady-state calls do not allocate.
#[derive(Default)]
struct Scratch {
    /// Scaled queries, `[rows, head_dim]`.
    q: Vec<f32>,
    /// Unnormalised output, `[rows, head_dim]`.
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// Scores, then probabilities, of one row block: `[ROWS, kv_tile]`.
    scores: Vec<f32>,
    /// The probabilities again, key-major: `[kv_tile, ROWS]`.
    probs: Vec<f32>,
    /// The KV tiles one item visits, and whether each needs the rule per element.
    plan: Vec<(Range<usize>, bool)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Makes `buffer` at least `len` long, for contents that are written before they are read.
fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

/// Makes `buffer` exactly `len` copies of `value`.
fn refill(buffer: &mut Vec<f32>, len: usize, value: f32) {
    buffer.clear();
    buffer.resize(len, value);
}

/// The operations the micro-kernels need, for one instruction set. A value of the type is
/// the right to use it; `attend_block` is the entry point compiled for that set.
pub(crate) trait Simd: Copy {
    /// `LANES` f32 lanes.
    type V: Copy;
    fn splat(self, x: f32) -> Self::V;
    fn load(self, xs: &[f32; LANES]) -> Self::V;
    fn store(self, v: Self::V, xs: &mut [f32; LANES]);
    /// `a * b + c`, lane-wise.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The sum of each vector's lanes.
    fn sums(self, v: [Self::V; LANES]) -> [f32; LANES];
    /// `a * b + c`, fused where the instruction set has FMA.
    fn mul_add_f32(self, a: f32, b: f32, c: f32) -> f32;
    /// `attend_block` for `R` rows, scoring `KEYS` keys at a time.
    fn attend_block<const R: usize, const KEYS: usize>(self, ctx: &BlockCtx, rows: BlockRows);
}

/// The baseline target, in plain arithmetic that the compiler vectorises as it can.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

impl Simd for Portable {
    type V = [f32; LANES];

    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; LANES]
    }

    #[inline(always)]
    fn load(self, xs: &[f32; LANES]) -> Self::V {
        *xs
    }

    #[inline(always)]
    fn store(self, v: Self::V, xs: &mut [f32; LANES]) {
        *xs = v;
    }

    #[inline(always)]
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| self.mul_add_f32(a[i], b[i], c[i]))
    }

    #[inline(always)]
    fn sums(self, v: [Self::V; LANES]) -> [f32; LANES] {
        v.map(|lanes| lanes.iter().sum())
    }

    /// Multiply, then add: the baseline has no FMA, and `f32::mul_add` would call libm.
    #[inline(always)]
    fn mul_add_f32(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }

    fn attend_block<const R: usize, const KEYS: usize>(self, ctx: &BlockCtx, rows: BlockRows) {
        attend_block::<Portable, R, KEYS>(self, ctx, rows);
    }
}

/// AVX2 and FMA, found at run time: only `detect` makes one.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Fma(());

#[cfg(target_arch = "x86_64")]
impl Avx2Fma {
    pub(crate) fn detect() -> Option<Avx2Fma> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2Fma(()))
    }
}

// SAFETY (every `unsafe` block in this impl): an `Avx2Fma` value exists only where `detect`
// found AVX2 and FMA, and loads and stores go through references to `LANES` values.
#[cfg(target_arch = "x86_64")]
impl Simd for Avx2Fma {
    type V = std::arch::x86_64::__m256;

    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_set1_ps(x) }
    }

    #[inline(always)]
    fn load(self, xs: &[f32; LANES]) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_loadu_ps(xs.as_ptr()) }
    }

    #[inline(always)]
    fn store(self, v: Self::V, xs: &mut [f32; LANES]) {
        unsafe { std::arch::x86_64::_mm256_storeu_ps(xs.as_mut_ptr(), v) }
    }

    #[inline(always)]
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        unsafe { std::arch::x86_64::_mm256_fmadd_ps(a, b, c) }
    }

    /// Pairwise adds: after two rounds each 128-bit half holds four partial sums, and adding
    /// the halves finishes all eight.
    #[inline(always)]
    fn sums(self, v: [Self::V; LANES]) -> [f32; LANES] {
        use std::arch::x86_64::{_mm256_add_ps, _mm256_hadd_ps, _mm256_permute2f128_ps};
        let mut out = [0.0; LANES];
        unsafe {
            let pairs = [
                _mm256_hadd_ps(v[0], v[1]),
                _mm256_hadd_ps(v[2], v[3]),
                _mm256_hadd_ps(v[4], v[5]),
                _mm256_hadd_ps(v[6], v[7]),
            ];
            let low = _mm256_hadd_ps(pairs[0], pairs[1]);
            let high = _mm256_hadd_ps(pairs[2], pairs[3]);
            let total = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(low, high),
                _mm256_permute2f128_ps::<0x31>(low, high),
            );
            self.store(total, &mut out);
        }
        out
    }

    #[inline(always)]
    fn mul_add_f32(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    fn attend_block<const R: usize, const KEYS: usize>(self, ctx: &BlockCtx, rows: BlockRows) {
        unsafe { attend_block_avx2_fma::<R, KEYS>(self, ctx, rows) }
    }
}

/// `attend_block` compiled with AVX2 and FMA enabled, so the `Avx2Fma` operations inline.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_block_avx2_fma<const R: usize, const KEYS: usize>(
    simd: Avx2Fma,
    ctx: &BlockCtx,
    rows: BlockRows,
) {
    attend_block::<Avx2Fma, R, KEYS>(simd, ctx, rows);
}

/// One work item: some query heads of one group over one query tile.
fn attend_item<S: Simd>(simd: S, job: &Job, item: &mut [Piece], scratch: &mut Scratch) {
    let input = job.input;
    let d = input.head_dim;
    let group_size = input.group_size();
    let heads = item.len();
    let first = item[0].order;
    let group = first / (job.n_q_tiles * group_size);
    let first_head = group * group_size + first % group_size;
    let first_query = (first / group_size) % job.n_q_tiles * job.q_tile;
    let positions = item[0].out.len() / d;
    // Rows are position-major: row r is query `first_query + r / heads` of head
    // `first_head + r % heads`, so rows of one block share (almost) the same visible keys.
    let rows = positions * heads;
    let position = |row: usize| input.query_position(first_query + row / heads);

    grow(&mut scratch.q, rows * d);
    grow(&mut scratch.scores, ROWS * job.kv_tile);
    grow(&mut scratch.probs, ROWS * job.kv_tile);
    refill(&mut scratch.acc, rows * d, 0.0);
    refill(&mut scratch.max, rows, f32::NEG_INFINITY);
    refill(&mut scratch.sum, rows, 0.0);
    for (row, q) in scratch.q.chunks_exact_mut(d).take(rows).enumerate() {
        let query = first_query + row / heads;
        let head = input.q_head(first_head + row % heads);
        for (q, &x) in q.iter_mut().zip(&head[query * d..(query + 1) * d]) {
            *q = x * job.scale;
        }
    }

    let keys = input.k_head(group);
    let values = input.v_head(group);
    // Tiles are planned and masked over key slots; the rule reads their positions.
    let item_keys = input.slots(job.mask.visible_keys(position(0)).start..position(rows - 1) + 1);
    let both = job.rules.map(|rules| Both {
        mask: job.mask,
        rule: rules.rule,
    });
    let both_at_slots = slotted(both.as_ref().map(|both| both as &dyn KeyRule), input);
    let rule_at_slots = slotted(job.rules.map(|rules| rules.rule), input);
    // What plans the tiles, and what hides keys within a partly shown tile (the mask has
    // already cut each row's keys there).
    let (planning, hiding) = match (&both_at_slots, &rule_at_slots) {
        (Some(both), Some(rule)) => (Some(both as &dyn KeyRule), Some(rule as &dyn KeyRule)),
        _ => (
            both.as_ref().map(|both| both as &dyn KeyRule),
            job.rules.map(|rules| rules.rule),
        ),
    };
    let mut plan = std::mem::take(&mut scratch.plan);
    plan.clear();
    match planning {
        None => plan.extend(
            item_keys
                .clone()
                .step_by(job.kv_tile)
                .map(|start| (start..(start + job.kv_tile).min(item_keys.end), false)),
        ),
        Some(rule) => {
            let queries = position(0)..position(rows - 1) + 1;
            plan_tiles(rule, queries, item_keys.clone(), job.kv_tile, &mut plan);
        }
    }
    for (tile, masked) in plan.iter().cloned() {
        for block in (0..rows).step_by(ROWS) {
            let block_rows = ROWS.min(rows - block);
            let visible: [Range<usize>; ROWS] = std::array::from_fn(|r| {
                if r >= block_rows {
                    return 0..0;
                }
                let seen = input.slots(job.mask.visible_keys(position(block + r)));
                let start = seen.start.clamp(tile.start, tile.end);
                start..seen.end.clamp(start, tile.end)
            });
            let Some(span) = union(&visible[..block_rows]) else {
                continue;
            };
            // Sets hidden pairs to -inf and modifies the scores of visible ones.
            let adjust = |r: usize, scores: &mut [f32]| {
                let (Some(rules), Some(hiding)) = (job.rules, hiding) else {
                    return;
                };
                let row = block + r;
                let (q, head) = (position(row), first_head + row % heads);
                let keys = visible[r].clone();
                if masked && !keys.is_empty() {
                    hide_keys(hiding, q, keys.clone(), scores);
                }
                if let Some(modifier) = rules.modifier {
                    for (k, score) in keys.zip(scores) {
                        if *score != f32::NEG_INFINITY {
                            *score = modifier.modify(head, q, input.key_position(k), *score);
                        }
                    }
                }
            };
            let ctx = BlockCtx {
                d,
                stride: job.kv_tile,
                keys: &keys[span.start * d..span.end * d],
                values: &values[span.start * d..span.end * d],
                visible: std::array::from_fn(|r| {
                    visible[r].start.max(span.start) - span.start
                        ..visible[r].end.max(span.start) - span.start
                }),
                adjust: job
                    .rules
                    .filter(|rules| masked || rules.modifier.is_some())
                    .map(|_| &adjust as AdjustScores),
            };
            let rows = BlockRows {
                q: &scratch.q[block * d..(block + block_rows) * d],
                acc: &mut scratch.acc[block * d..(block + block_rows) * d],
                max: &mut scratch.max[block..block + block_rows],
                sum: &mut scratch.sum[block..block + block_rows],
                scores: &mut scratch.scores,
                probs: &mut scratch.probs,
            };
            // Score `LANES` (row, key) pairs at a time: eight accumulators hide FMA latency.
            match block_rows {
                4 => simd.attend_block::<4, 2>(&ctx, rows),
                3 => simd.attend_block::<3, 2>(&ctx, rows),
                2 => simd.attend_block::<2, 4>(&ctx, rows),
                _ => simd.attend_block::<1, 8>(&ctx, rows),
            }
        }
    }

    for (row, (acc, (&max, &sum))) in scratch
        .acc
        .chunks_exact(d)
        .zip(scratch.max.iter().zip(&scratch.sum))
        .enumerate()
    {
        let piece = &mut item[row % heads];
        let query = row / heads;
        // A row that saw no key (possible only under a rule) outputs zeros.
        let inverse = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        for (o, &a) in piece.out[query * d..(query + 1) * d].iter_mut().zip(acc) {
            *o = a * inverse;
        }
        if let Some(lse) = piece.lse.get_mut(query) {
            *lse = if sum > 0.0 {
                max + sum.ln()
            } else {
                f32::NEG_INFINITY
            };
        }
    }
    scratch.plan = plan;
}

/// The layer's mask and a rule together: a key is visible iff both allow it.
#[derive(Debug)]
struct Both<'a> {
    mask: Mask,
    rule: &'a dyn KeyRule,
}

impl KeyRule for Both<'_> {
    fn allows(&self, q: usize, k: usize) -> bool {
        self.mask.allows(q, k) && self.rule.allows(q, k)
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        let mask = KeyRule::coverage(&self.mask, queries.clone(), keys.clone());
        if mask == Coverage::Empty {
            return Coverage::Empty;
        }
        mask.and(self.rule.coverage(queries, keys))
    }
}

/// A rule over positions read over key slots: slot `j` holds position `positions[j]`. The
/// positions held in slots `a..b` lie within `positions[a]..positions[b - 1] + 1`, so the
/// rule's coverage of that range is sound for the slots.
#[derive(Debug)]
struct AtSlots<'a> {
    rule: &'a dyn KeyRule,
    positions: &'a [usize],
}

impl KeyRule for AtSlots<'_> {
    fn allows(&self, q: usize, k: usize) -> bool {
        self.rule.allows(q, self.positions[k])
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        let held = self.positions[keys.start]..self.positions[keys.end - 1] + 1;
        self.rule.coverage(queries, held)
    }
}

/// `rule` read over the input's key slots, where the cache dropped keys.
fn slotted<'a>(rule: Option<&'a dyn KeyRule>, input: &AttentionInput<'a>) -> Option<AtSlots<'a>> {
    rule.zip(input.key_positions)
        .map(|(rule, positions)| AtSlots { rule, positions })
}

/// Appends to `plan` the KV tiles (cut from `keys` every `kv_tile`) that `rule` may show to
/// some query of `queries`, in key order, each marked whether it needs the rule per element.
fn plan_tiles(
    rule: &dyn KeyRule,
    queries: Range<usize>,
    keys: Range<usize>,
    kv_tile: usize,
    plan: &mut Vec<(Range<usize>, bool)>,
) {
    let n_tiles = keys.len().div_ceil(kv_tile);
    let tiles = TileGrid {
        rule,
        queries,
        keys,
        kv_tile,
    };
    tiles.bisect(0, n_tiles, plan);
}

/// KV tiles over a key range, for one item's queries.
struct TileGrid<'a> {
    rule: &'a dyn KeyRule,
    queries: Range<usize>,
    keys: Range<usize>,
    kv_tile: usize,
}

impl TileGrid<'_> {
    fn tile(&self, i: usize) -> Range<usize> {
        let start = self.keys.start + i * self.kv_tile;
        start..(start + self.kv_tile).min(self.keys.end)
    }

    /// Shrinks a partly shown tile while one of its halves is hidden from every query (a
    /// few sinks at the start of a tile, the edge of a window), so that scores are computed
    /// only for the part that can be seen.
    fn trim(&self, mut tile: Range<usize>) -> Range<usize> {
        while tile.len() > MIN_TRIMMED_TILE {
            let middle = tile.start + tile.len() / 2;
            let hidden = |keys: Range<usize>| {
                self.rule.coverage(self.queries.clone(), keys) == Coverage::Empty
            };
            if hidden(tile.start..middle) {
                tile.start = middle;
            } else if hidden(middle..tile.end) {
                tile.end = middle;
            } else {
                break;
            }
        }
        tile
    }

    /// Plans tiles `first..end`: an Empty or Full stretch is settled by one `coverage` call,
    /// so only the stretches where visibility changes are cut down to single tiles.
    fn bisect(&self, first: usize, end: usize, plan: &mut Vec<(Range<usize>, bool)>) {
        if first == end {
            return;
        }
        let span = self.tile(first).start..self.tile(end - 1).end;
        match self.rule.coverage(self.queries.clone(), span) {
            Coverage::Empty => {}
            Coverage::Full => plan.extend((first..end).map(|i| (self.tile(i), false))),
            Coverage::Partial if end - first == 1 => plan.push((self.trim(self.tile(first)), true)),
            Coverage::Partial => {
                let middle = first + (end - first) / 2;
                self.bisect(first, middle, plan);
                self.bisect(middle, end, plan);
            }
        }
    }
}

/// Sets to -inf the scores (one per key of `keys`) of the keys `rule` hides from query `q`.
/// A row's slice of a tile is usually cut once (at a window's or a rule's causal edge), so
/// bisecting it with `coverage` settles it in a few calls instead of one `allows` per key.
fn hide_keys(rule: &dyn KeyRule, q: usize, keys: Range<usize>, scores: &mut [f32]) {
    const BY_KEY: usize = 8;
    match rule.coverage(q..q + 1, keys.clone()) {
        Coverage::Full => {}
        Coverage::Empty => scores.fill(f32::NEG_INFINITY),
        Coverage::Partial if keys.len() <= BY_KEY => {
            for (k, score) in keys.zip(scores) {
                if !rule.allows(q, k) {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
        Coverage::Partial => {
            let half = keys.len() / 2;
            let (low, high) = scores.split_at_mut(half);
            hide_keys(rule, q, keys.start..keys.start + half, low);
            hide_keys(rule, q, keys.start + half..keys.end, high);
        }
    }
}

/// The smallest range holding every non-empty range, if there is one.
fn union(ranges: &[Range<usize>]) -> Option<Range<usize>> {
    ranges.iter().filter(|range| !range.is_empty()).fold(
        None,
        |span: Option<Range<usize>>, range| match span {
            None => Some(range.clone()),
            Some(span) => Some(span.start.min(range.start)..span.end.max(range.end)),
        },
    )
}

/// The keys one row block sees in one KV tile: the span from the first key any row of the
/// block sees to the last.
pub(crate) struct BlockCtx<'a> {
    d: usize,
    /// Row stride of the score buffer: the KV tile size.
    stride: usize,
    /// `[span, head_dim]`.
    keys: &'a [f32],
    values: &'a [f32],
    /// Each row's visible keys, relative to the span (empty past the block's rows).
    visible: [Range<usize>; ROWS],
    /// Under a rule: given a row and its scores over its visible keys, sets pairs the rule
    /// hides to -inf and applies the score modifier.
    adjust: Option<AdjustScores<'a>>,
}

/// Given a row of a block and its scores over its visible keys, sets the pairs a rule hides
/// to -inf and applies the score modifier.
type AdjustScores<'a> = &'a dyn Fn(usize, &mut [f32]);

/// The rows of one block and the buffers it works in.
pub(crate) struct BlockRows<'a> {
    /// Scaled queries, `[R, head_dim]`.
    q: &'a [f32],
    acc: &'a mut [f32],
    max: &'a mut [f32],
    sum: &'a mut [f32],
    scores: &'a mut [f32],
    probs: &'a mut [f32],
}

/// Scores, online-softmax update and value accumulation for `R` rows against the keys of
/// one KV tile that the block sees.
#[inline(always)]
fn attend_block<S: Simd, const R: usize, const KEYS: usize>(
    simd: S,
    ctx: &BlockCtx,
    rows: BlockRows,
) {
    let BlockRows {
        q,
        acc,
        max,
        sum,
        scores,
        probs,
    } = rows;
    let (d, stride) = (ctx.d, ctx.stride);
    let n_keys = ctx.keys.len() / d;
    let blocked = n_keys / KEYS * KEYS;
    for first in (0..blocked).step_by(KEYS) {
        let dots = dot_block::<S, R, KEYS>(simd, q, &ctx.keys[first * d..(first + KEYS) * d], d);
        for (r, dots) in dots.iter().enumerate() {
            scores[r * stride + first..][..KEYS].copy_from_slice(dots);
        }
    }
    for key in blocked..n_keys {
        let dots = dot_block::<S, R, 1>(simd, q, &ctx.keys[key * d..(key + 1) * d], d);
        for (r, dots) in dots.iter().enumerate() {
            scores[r * stride + key] = dots[0];
        }
    }

    for r in 0..R {
        let row = &mut scores[r * stride..r * stride + n_keys];
        let visible = ctx.visible[r].clone();
        if visible.is_empty() {
            row.fill(0.0);
            continue;
        }
        if let Some(adjust) = ctx.adjust {
            adjust(r, &mut row[visible.clone()]);
        }
        let tile_max = reduce(&row[visible.clone()], f32::NEG_INFINITY, f32::max);
        if tile_max == f32::NEG_INFINITY {
            // The rule hides every key of this tile from the row: nothing to add, and
            // exp(-inf - -inf) would be NaN.
            row.fill(0.0);
            continue;
        }
        let new_max = max[r].max(tile_max);
        let rescale = (max[r] - new_max).exp();
        if ctx.adjust.is_some() {
            for p in &mut row[visible.clone()] {
                *p = if *p == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp_nonpositive(simd, *p - new_max)
                };
            }
        } else {
            for p in &mut row[visible.clone()] {
                *p = exp_nonpositive(simd, *p - new_max);
            }
        }
        row[..visible.start].fill(0.0);
        row[visible.end..].fill(0.0);
        let tile_sum = reduce(&row[visible], 0.0, |a, b| a + b);
        sum[r] = simd.mul_add_f32(sum[r], rescale, tile_sum);
        max[r] = new_max;
        if rescale != 1.0 {
            for a in &mut acc[r * d..(r + 1) * d] {
                *a *= rescale;
            }
        }
    }

    // Key-major probabilities, so the value loop reads one key's R weights without checks.
    let probs = &mut probs[..n_keys * R];
    for (r, row) in scores.chunks_exact(stride).take(R).enumerate() {
        for (p, &x) in probs.iter_mut().skip(r).step_by(R).zip(&row[..n_keys]) {
            *p = x;
        }
    }
    let wide = d / (2 * LANES) * (2 * LANES);
    for column in (0..wide).step_by(2 * LANES) {
        accumulate_values::<S, R>(simd, probs, ctx.values, d, column, acc);
    }
    for column in wide..d {
        accumulate_column::<S, R>(simd, probs, ctx.values, d, column, acc);
    }
}

/// `q_r · key_k` for `R` query rows and `KEYS` keys, both `[_, d]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // r and k name a register block's rows and keys
fn dot_block<S: Simd, const R: usize, const KEYS: usize>(
    simd: S,
    q: &[f32],
    keys: &[f32],
    d: usize,
) -> [[f32; KEYS]; R] {
    let wide = d / LANES;
    let q_rows: [&[[f32; LANES]]; R] = std::array::from_fn(|r| &as_lanes(&q[r * d..])[..wide]);
    let key_rows: [&[[f32; LANES]]; KEYS] =
        std::array::from_fn(|k| &as_lanes(&keys[k * d..])[..wide]);
    let mut acc = [[simd.splat(0.0); KEYS]; R];
    for column in 0..wide {
        let key: [S::V; KEYS] = std::array::from_fn(|k| simd.load(&key_rows[k][column]));
        for r in 0..R {
            let q = simd.load(&q_rows[r][column]);
            for k in 0..KEYS {
                acc[r][k] = simd.mul_add(q, key[k], acc[r][k]);
            }
        }
    }
    let mut lanes = [simd.splat(0.0); LANES];
    for r in 0..R {
        for k in 0..KEYS {
            lanes[r * KEYS + k] = acc[r][k];
        }
    }
    let sums = simd.sums(lanes);
    let mut dots = [[0.0; KEYS]; R];
    for r in 0..R {
        for k in 0..KEYS {
            dots[r][k] = (wide * LANES..d).fold(sums[r * KEYS + k], |dot, c| {
                simd.mul_add_f32(q[r * d + c], keys[k * d + c], dot)
            });
        }
    }
    dots
}

/// `xs` as whole vectors of `LANES`, dropping a shorter tail.
#[inline(always)]
fn as_lanes(xs: &[f32]) -> &[[f32; LANES]] {
    xs.as_chunks().0
}

/// `acc[r][column..column + 2·LANES] += Σ_k probs[k][r] · values[k][column..column + 2·LANES]`.
#[inline(always)]
fn accumulate_values<S: Simd, const R: usize>(
    simd: S,
    probs: &[f32],
    values: &[f32],
    d: usize,
    column: usize,
    acc: &mut [f32],
) {
    let mut sums = [[simd.splat(0.0); 2]; R];
    for (sums, row) in sums.iter_mut().zip(acc.chunks_exact(d)) {
        let row = &as_lanes(&row[column..])[..2];
        *sums = [simd.load(&row[0]), simd.load(&row[1])];
    }
    for (value, probs) in values.chunks_exact(d).zip(probs.chunks_exact(R)) {
        let value = &as_lanes(&value[column..])[..2];
        let value = [simd.load(&value[0]), simd.load(&value[1])];
        for (sums, &p) in sums.iter_mut().zip(probs) {
            let p = simd.splat(p);
            for (s, &v) in sums.iter_mut().zip(&value) {
                *s = simd.mul_add(p, v, *s);
            }
        }
    }
    for (row, sums) in acc.chunks_exact_mut(d).zip(&sums) {
        let row = &mut row[column..].as_chunks_mut().0[..2];
        simd.store(sums[0], &mut row[0]);
        simd.store(sums[1], &mut row[1]);
    }
}

/// `accumulate_values` for one column: the columns past the last whole block.
#[inline(always)]
fn accumulate_column<S: Simd, const R: usize>(
    simd: S,
    probs: &[f32],
    values: &[f32],
    d: usize,
    column: usize,
    acc: &mut [f32],
) {
    let mut sums = [0.0f32; R];
    for (value, probs) in values.chunks_exact(d).zip(probs.chunks_exact(R)) {
        for (s, &p) in sums.iter_mut().zip(probs) {
            *s = simd.mul_add_f32(p, value[column], *s);
        }
    }
    for (row, s) in acc.chunks_exact_mut(d).zip(sums) {
        row[column] += s;
    }
}

/// Folds `xs` with `op` in `2·LANES` independent lanes, so the loop vectorises.
#[inline(always)]
fn reduce(xs: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 2 * LANES];
    let chunks = xs.chunks_exact(2 * LANES);
    let tail = chunks.remainder().iter().fold(init, |a, &b| op(a, b));
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, x);
        }
    }
    lanes.into_iter().fold(tail, op)
}

/// `exp(x)` for `x <= 0` (down to where f32 underflows), in plain arithmetic that vectorises.
///
/// Cephes `expf`: `x = n·ln2 + r` with `|r| <= ln2/2`, `exp(r)` by a degree-6 polynomial,
/// `2^n` built in the exponent bits. Relative error about 2 ulp. A NaN stays NaN (a score
/// of +inf or NaN must surface as a non-finite output, not vanish into the underflow clamp:
/// `f32::max` would turn NaN into -87).
#[inline(always)]
pub(crate) fn exp_nonpositive(simd: impl Simd, x: f32) -> f32 {
    /// Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = simd.mul_add_f32(x, std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = simd.mul_add_f32(n, -0.693_359_4, x);
    let r = simd.mul_add_f32(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    p = simd.mul_add_f32(p, r, 1.398_2e-3);
    p = simd.mul_add_f32(p, r, 8.333_452e-3);
    p = simd.mul_add_f32(p, r, 4.166_579_6e-2);
    p = simd.mul_add_f32(p, r, 0.166_666_65);
    p = simd.mul_add_f32(p, r, 0.5);
    let p = simd.mul_add_f32(p, r * r, r) + 1.0;
    let exponent = shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127;
    p * f32::from_bits((exponent << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_over_the_softmax_range() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let want = x.exp();
            let got = exp_nonpositive(Portable, x);
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "exp({x}) = {got}, std says {want}"
            );
        }
    }

    #[test]
    fn exp_keeps_a_nan_and_flushes_what_underflows() {
        assert!(exp_nonpositive(Portable, f32::NAN).is_nan());
        assert!(exp_nonpositive(Portable, f32::INFINITY - f32::INFINITY).is_nan());
        assert!(exp_nonpositive(Portable, f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn union_skips_empty_ranges() {
        assert_eq!(union(&[3..3, 5..9, 2..4, 12..12]), Some(2..9));
        assert_eq!(union(&[3..3, 0..0]), None);
    }
}
