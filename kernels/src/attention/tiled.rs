//! Exact attention in tiles, flash-attention style.
//!
//! The queries of one KV group are cut into tiles of `q_tile` positions; each (group, query
//! tile) is one rayon work item, so every query head of a group reads a KV tile while it is
//! hot. Within an item the keys are walked in tiles of `kv_tile`, and each query row keeps a
//! running max and running sum (online softmax): when a later tile raises the max, the
//! accumulated output is rescaled by `exp(old_max - new_max)`. Keys no row of the item can
//! see are never visited, because `Mask::visible_keys` is one contiguous range per row.
//!
//! The inner loops are register-blocked micro-kernels over `ROWS` query rows and `LANES`
//! keys or values, written on fixed-size arrays so the compiler vectorises them. The same
//! code is compiled twice: once for the baseline target, and once inside an
//! `avx2,fma` function chosen at run time.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::{AttentionInput, AttentionKernel, LayerAttention, Mask};
use crate::{Error, Result};

/// Query rows per micro-kernel call.
const ROWS: usize = 4;
/// Keys (scores) or output values (accumulation) per micro-kernel call: two AVX2 registers.
const LANES: usize = 16;

/// Which compilation of the micro-kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Isa {
    Portable,
    Avx2Fma,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
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
    fn default() -> Self {
        TiledAttention {
            q_tile: 32,
            kv_tile: 64,
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
        let rows = input.n_q_heads * input.n_queries;
        if lse.len() != rows {
            return Err(Error::InvalidRequest(format!(
                "attention lse has {} values, expected {rows} (one per query head and row)",
                lse.len()
            )));
        }
        self.run(input, layer, out, Some(lse))
    }

    fn run(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
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
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2Fma {
            // SAFETY: `Isa::Avx2Fma` is only chosen after detecting both features.
            unsafe { attend_avx2_fma(job, item, scratch) };
            return;
        }
        attend_item::<Separate>(job, item, scratch);
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
        self.run(input, layer, out, None)
    }
}

/// How many query heads of a group one work item takes: the whole group, unless that leaves
/// too few items to keep every thread busy (decode on few KV heads).
fn heads_per_item(group_size: usize, pieces: usize) -> usize {
    let wanted_items = 4 * rayon::current_num_threads();
    (1..=group_size)
        .rev()
        .filter(|heads| group_size % heads == 0)
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

/// What every work item of one call shares.
struct Job<'a, 'b> {
    input: &'a AttentionInput<'b>,
    scale: f32,
    mask: Mask,
    q_tile: usize,
    kv_tile: usize,
    n_q_tiles: usize,
}

/// Per-thread buffers, kept between calls so that steady-state calls do not allocate.
#[derive(Default)]
struct Scratch {
    /// Scaled queries, per block of `ROWS` rows transposed to `[head_dim, ROWS]`.
    q: Vec<f32>,
    /// Unnormalised output, `[rows, head_dim]`.
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// The current key tile transposed to `[head_dim, kv_tile rounded up to LANES]`.
    keys: Vec<f32>,
    /// Scores, then probabilities, of one row block: `[ROWS, kv_tile rounded up]`.
    scores: Vec<f32>,
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

/// `a * b + c`, fused where the target has FMA.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// Multiply, then add: the baseline target has no FMA, and `f32::mul_add` would call libm.
struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[cfg(target_arch = "x86_64")]
struct Fused;

#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// The micro-kernels compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2_fma(job: &Job, item: &mut [Piece], scratch: &mut Scratch) {
    attend_item::<Fused>(job, item, scratch);
}

/// One work item: some query heads of one group over one query tile.
#[inline(always)]
fn attend_item<F: MulAdd>(job: &Job, item: &mut [Piece], scratch: &mut Scratch) {
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
    let kv_pad = job.kv_tile.next_multiple_of(LANES);

    grow(&mut scratch.q, rows * d);
    grow(&mut scratch.keys, d * kv_pad);
    grow(&mut scratch.scores, ROWS * kv_pad);
    refill(&mut scratch.acc, rows * d, 0.0);
    refill(&mut scratch.max, rows, f32::NEG_INFINITY);
    refill(&mut scratch.sum, rows, 0.0);
    for block in (0..rows).step_by(ROWS) {
        let block_rows = ROWS.min(rows - block);
        let q_block = &mut scratch.q[block * d..(block + block_rows) * d];
        for r in 0..block_rows {
            let row = block + r;
            let query = first_query + row / heads;
            let head = input.q_head(first_head + row % heads);
            for (dim, &q) in head[query * d..(query + 1) * d].iter().enumerate() {
                q_block[dim * block_rows + r] = q * job.scale;
            }
        }
    }

    let keys = input.k_head(group);
    let values = input.v_head(group);
    let item_keys = job.mask.visible_keys(position(0)).start..position(rows - 1) + 1;
    for tile_start in item_keys.clone().step_by(job.kv_tile) {
        let tile = tile_start..(tile_start + job.kv_tile).min(item_keys.end);
        let tile_len = tile.len();
        // Padding columns of `kt` keep stale values: their scores are never read.
        let tile_pad = tile_len.next_multiple_of(LANES);
        let kt = &mut scratch.keys[..d * tile_pad];
        for (k, key) in keys[tile.start * d..tile.end * d].chunks_exact(d).enumerate() {
            for (dim, &x) in key.iter().enumerate() {
                kt[dim * tile_pad + k] = x;
            }
        }
        let tile_values = &values[tile.start * d..tile.end * d];

        for block in (0..rows).step_by(ROWS) {
            let block_rows = ROWS.min(rows - block);
            let visible: [Range<usize>; ROWS] = std::array::from_fn(|r| {
                if r >= block_rows {
                    return 0..0;
                }
                let seen = job.mask.visible_keys(position(block + r));
                let start = seen.start.clamp(tile.start, tile.end) - tile.start;
                let end = seen.end.clamp(tile.start, tile.end) - tile.start;
                start..end.max(start)
            });
            let Some(span) = union(&visible[..block_rows]) else {
                continue;
            };
            let ctx = BlockCtx {
                d,
                tile_pad,
                kt: &scratch.keys[..d * tile_pad],
                values: tile_values,
                visible: &visible[..block_rows],
                span,
            };
            let q = &scratch.q[block * d..(block + block_rows) * d];
            let acc = &mut scratch.acc[block * d..(block + block_rows) * d];
            let max = &mut scratch.max[block..block + block_rows];
            let sum = &mut scratch.sum[block..block + block_rows];
            let scores = &mut scratch.scores;
            match block_rows {
                4 => attend_block::<F, 4>(&ctx, q, scores, acc, max, sum),
                3 => attend_block::<F, 3>(&ctx, q, scores, acc, max, sum),
                2 => attend_block::<F, 2>(&ctx, q, scores, acc, max, sum),
                _ => attend_block::<F, 1>(&ctx, q, scores, acc, max, sum),
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
        let inverse = 1.0 / sum;
        for (o, &a) in piece.out[query * d..(query + 1) * d].iter_mut().zip(acc) {
            *o = a * inverse;
        }
        if let Some(lse) = piece.lse.get_mut(query) {
            *lse = max + sum.ln();
        }
    }
}

/// The smallest range holding every non-empty range, if there is one.
fn union(ranges: &[Range<usize>]) -> Option<Range<usize>> {
    ranges
        .iter()
        .filter(|range| !range.is_empty())
        .fold(None, |span: Option<Range<usize>>, range| match span {
            None => Some(range.clone()),
            Some(span) => Some(span.start.min(range.start)..span.end.max(range.end)),
        })
}

/// One row block against one KV tile: what does not change between the blocks' sizes.
struct BlockCtx<'a> {
    d: usize,
    /// Keys in the tile, rounded up to `LANES`: the row stride of `kt` and `scores`.
    tile_pad: usize,
    kt: &'a [f32],
    values: &'a [f32],
    /// Each row's visible keys, relative to the tile start.
    visible: &'a [Range<usize>],
    /// The union of `visible`.
    span: Range<usize>,
}

/// Scores, online-softmax update and value accumulation for `R` rows against one KV tile.
#[inline(always)]
fn attend_block<F: MulAdd, const R: usize>(
    ctx: &BlockCtx,
    q: &[f32],
    scores: &mut [f32],
    acc: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
) {
    let stride = ctx.tile_pad;
    let span = ctx.span.clone();
    let aligned = span.start / LANES * LANES..span.end.next_multiple_of(LANES);
    for key_block in aligned.step_by(LANES) {
        let mut dots = [[0.0f32; LANES]; R];
        for (k, q) in ctx.kt.chunks_exact(stride).zip(q.chunks_exact(R)) {
            let k = &k[key_block..key_block + LANES];
            for (dots, &q) in dots.iter_mut().zip(q) {
                for (dot, &k) in dots.iter_mut().zip(k) {
                    *dot = F::mul_add(q, k, *dot);
                }
            }
        }
        for (r, dots) in dots.iter().enumerate() {
            scores[r * stride + key_block..][..LANES].copy_from_slice(dots);
        }
    }

    for r in 0..R {
        let row = &mut scores[r * stride + span.start..r * stride + span.end];
        let visible = ctx.visible[r].start - span.start..ctx.visible[r].end - span.start;
        if visible.is_empty() {
            row.fill(0.0);
            continue;
        }
        let tile_max = reduce(&row[visible.clone()], f32::NEG_INFINITY, f32::max);
        let new_max = max[r].max(tile_max);
        let rescale = (max[r] - new_max).exp();
        for p in &mut row[visible.clone()] {
            *p = exp_nonpositive::<F>(*p - new_max);
        }
        row[..visible.start].fill(0.0);
        row[visible.end..].fill(0.0);
        sum[r] = F::mul_add(sum[r], rescale, reduce(&row[visible], 0.0, |a, b| a + b));
        max[r] = new_max;
        if rescale != 1.0 {
            for a in &mut acc[r * ctx.d..(r + 1) * ctx.d] {
                *a *= rescale;
            }
        }
    }

    let probs: [&[f32]; R] =
        std::array::from_fn(|r| &scores[r * stride + span.start..r * stride + span.end]);
    let values = &ctx.values[span.start * ctx.d..span.end * ctx.d];
    let wide = ctx.d / LANES * LANES;
    for column in (0..wide).step_by(LANES) {
        accumulate_values::<F, R, LANES>(&probs, values, ctx.d, column, acc);
    }
    for column in wide..ctx.d {
        accumulate_values::<F, R, 1>(&probs, values, ctx.d, column, acc);
    }
}

/// `acc[r][column..column + W] += Σ_k probs[r][k] · values[k][column..column + W]`.
#[inline(always)]
fn accumulate_values<F: MulAdd, const R: usize, const W: usize>(
    probs: &[&[f32]; R],
    values: &[f32],
    d: usize,
    column: usize,
    acc: &mut [f32],
) {
    let mut sums = [[0.0f32; W]; R];
    for (k, value) in values.chunks_exact(d).enumerate() {
        let value = &value[column..column + W];
        for (sums, probs) in sums.iter_mut().zip(probs) {
            let p = probs[k];
            for (s, &v) in sums.iter_mut().zip(value) {
                *s = F::mul_add(p, v, *s);
            }
        }
    }
    for (row, sums) in acc.chunks_exact_mut(d).zip(&sums) {
        for (a, s) in row[column..column + W].iter_mut().zip(sums) {
            *a += s;
        }
    }
}

/// Folds `xs` with `op` in `LANES` independent lanes, so the loop vectorises.
#[inline(always)]
fn reduce(xs: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
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
/// `2^n` built in the exponent bits. Relative error about 2 ulp.
#[inline(always)]
fn exp_nonpositive<F: MulAdd>(x: f32) -> f32 {
    /// Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let shifted = F::mul_add(x, std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = F::mul_add(n, -0.693_359_4, x);
    let r = F::mul_add(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    p = F::mul_add(p, r, 1.398_2e-3);
    p = F::mul_add(p, r, 8.333_452e-3);
    p = F::mul_add(p, r, 4.166_579_6e-2);
    p = F::mul_add(p, r, 0.166_666_65);
    p = F::mul_add(p, r, 0.5);
    let p = F::mul_add(p, r * r, r) + 1.0;
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
            let got = exp_nonpositive::<Separate>(x);
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "exp({x}) = {got}, std says {want}"
            );
        }
    }

    #[test]
    fn union_skips_empty_ranges() {
        assert_eq!(union(&[3..3, 5..9, 2..4, 12..12]), Some(2..9));
        assert_eq!(union(&[3..3, 0..0]), None);
    }
}
