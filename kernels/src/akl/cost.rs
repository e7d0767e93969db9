//! The deterministic cost model: the work of a full prefill in FLOP-equivalents, KV bytes
//! the tiled plan reads, and KV bytes the cache holds per token, all counted from the plan
//! (never timed). Work outside the SIMD score-and-value loop (score expressions, per-pair
//! mask checks in partial tiles, f64 page selection) is charged weights measured against
//! that loop (`kernels/AKL.md`, "The cost model"). Tiles and rows are counted by bisecting
//! with the mask's interval arithmetic, so the work grows with the pieces per row, not T².

use super::ast::{OptionValue, Summary, Tile};
use super::check::CheckedProgram;
use super::compile::{compile, star_mask, HeadSpec};
use super::library;
use super::mask::{CompiledMask, CompiledScore, MaskTerm, Tri, MAX_POSITION};
use crate::{Error, Result};

/// The attention shape of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub n_layers: usize,
    pub n_q_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl ModelShape {
    /// The attention shape of a loaded model.
    pub fn of(config: &crate::ModelConfig) -> ModelShape {
        ModelShape {
            n_layers: config.n_layers(),
            n_q_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
        }
    }
}

/// What a prefill of `T` tokens costs, summed over layers and heads. Bytes are f32 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Attention work in FLOP-equivalents (multiply and add count two; work outside the SIMD
    /// score-and-value loop counts as the FLOPs that loop does in the same time),
    /// projections excluded.
    pub flops: f64,
    /// Bytes of keys and values (or latents, summaries, states) the kernels read.
    pub kv_bytes_read: f64,
    /// Bytes the cache holds after the prefill, divided by `T`.
    pub kv_bytes_held_per_token: f64,
}

impl Cost {
    fn add_scaled(&mut self, other: Cost, factor: f64) {
        self.flops += other.flops * factor;
        self.kv_bytes_read += other.kv_bytes_read * factor;
        self.kv_bytes_held_per_token += other.kv_bytes_held_per_token * factor;
    }
}

const F32: f64 = 4.0;
/// Below this many keys a row or tile range is counted pair by pair.
const BRUTE_FORCE: i64 = 16;

/// What work beyond the SIMD score-and-value loop costs, in FLOP-equivalents: the time of
/// one FLOP of that loop. Measured in a release build with `tests/cost_model.rs`'s
/// `calibrate` at d = 64 (see AKL.md).
mod weight {
    /// Per node of the score expression evaluated on a visible pair (the call, the f64
    /// conversions and the recovery of `s` measured no cost of their own beyond it).
    pub const SCORE_NODE: f64 = 160.0;
    /// Per transcendental function (`tanh`) on top of its node.
    pub const TRANSCENDENTAL: f64 = 730.0;
    /// Per check of a pair or of a key range against a mask: the call and its share of the
    /// bisection around it.
    pub const MASK_CALL: f64 = 240.0;
    /// Per node of the mask evaluated on a pair (an interval check counts twice).
    pub const MASK_NODE: f64 = 117.0;
    /// Per scalar f64 operation of page summaries and page scores.
    pub const F64_OP: f64 = 15.0;
    /// Per earlier page a selecting row considers: the visibility check and its share of
    /// the top-k choice.
    pub const PAGE: f64 = 1610.0;
    /// Per key a selecting row attends to, beyond `4d`: rows attend one at a time, without
    /// the tiled loop's sharing of keys between rows.
    pub const ROW_PAIR: f64 = 150.0;
}

/// The cost of `checked` on `shape` for a prefill of `seq_len` tokens.
pub fn cost(checked: &CheckedProgram, shape: &ModelShape, seq_len: usize) -> Result<Cost> {
    let ModelShape {
        n_layers,
        n_q_heads,
        n_kv_heads,
        head_dim,
    } = *shape;
    if head_dim == 0 || n_kv_heads == 0 || n_q_heads % n_kv_heads != 0 {
        return Err(Error::InvalidRequest(format!(
            "cost model: need head_dim > 0 and n_q_heads ({n_q_heads}) a multiple of n_kv_heads ({n_kv_heads})"
        )));
    }
    if seq_len == 0 || seq_len as i64 > MAX_POSITION {
        return Err(Error::InvalidRequest(format!(
            "cost model: sequence length {seq_len} is not in 1..={MAX_POSITION}"
        )));
    }
    let plans = compile(checked, n_layers, n_q_heads)?;
    let mut memo: Vec<(String, Cost)> = Vec::new();
    let mut total = Cost::default();
    for plan in &plans {
        for group in &plan.groups {
            let key = format!("{:?}", group.spec);
            let per_head = match memo.iter().find(|(k, _)| *k == key) {
                Some((_, c)) => *c,
                None => {
                    let c = head_cost(&group.spec, shape, seq_len)?;
                    memo.push((key, c));
                    c
                }
            };
            total.add_scaled(per_head, group.heads.len() as f64);
        }
    }
    Ok(total)
}

/// The cost of the library's `exact` kernel: the reference for ratios.
pub fn exact_cost(shape: &ModelShape, seq_len: usize) -> Result<Cost> {
    cost(
        library::checked("exact").map_err(Error::InvalidRequest)?,
        shape,
        seq_len,
    )
}

/// Keys `lo..=hi` that query `q` sees under `mask` (and causal).
fn visible_in_row(mask: &MaskTerm, q: i64, lo: i64, hi: i64) -> i64 {
    let hi = hi.min(q);
    if lo > hi {
        return 0;
    }
    match mask.truth((q, q), (lo, hi)) {
        Tri::Always => hi - lo + 1,
        Tri::Never => 0,
        Tri::Sometimes if hi - lo < BRUTE_FORCE => {
            (lo..=hi).filter(|&kv| mask.eval(q, kv)).count() as i64
        }
        Tri::Sometimes => {
            let mid = lo + (hi - lo) / 2;
            visible_in_row(mask, q, lo, mid) + visible_in_row(mask, q, mid + 1, hi)
        }
    }
}

/// The visible pairs, row by row.
fn visible_rows(mask: &MaskTerm, len: i64) -> impl Iterator<Item = i64> + '_ {
    (0..len).map(move |q| visible_in_row(mask, q, 0, q))
}

/// What the tiled plan does for some query tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct TileWork {
    /// Keys of the KV tiles visited, once per query tile that visits them.
    keys: i64,
    /// (query, key) pairs scored: each row scores every key of a visited tile up to its own
    /// position, whether the mask shows it or not.
    pairs: i64,
    /// In tiles the mask only partly shows, each row's keys are checked against the mask:
    /// interval checks of key ranges, then the pairs of short undecided ranges one by one.
    range_checks: i64,
    pair_checks: i64,
}

impl std::ops::Add for TileWork {
    type Output = TileWork;

    fn add(self, other: TileWork) -> TileWork {
        TileWork {
            keys: self.keys + other.keys,
            pairs: self.pairs + other.pairs,
            range_checks: self.range_checks + other.range_checks,
            pair_checks: self.pair_checks + other.pair_checks,
        }
    }
}

/// Pairs of a row in `qs` and a key in `keys` at or before it (inclusive bounds).
fn causal_pairs_in(qs: (i64, i64), keys: (i64, i64)) -> i64 {
    (qs.0..=qs.1)
        .map(|q| (q.min(keys.1) - keys.0 + 1).max(0))
        .sum()
}

/// The checks the kernel makes to hide the keys `keys` (inclusive, at or before `q`) that
/// `mask` hides from row `q`: (range checks, pair checks), as `attention::tiled`'s
/// `hide_keys` bisects them.
fn row_checks(mask: &MaskTerm, q: i64, keys: (i64, i64)) -> (i64, i64) {
    const BY_KEY: i64 = 8;
    let n = keys.1 - keys.0 + 1;
    match mask.truth((q, q), keys) {
        Tri::Always | Tri::Never => (1, 0),
        Tri::Sometimes if n <= BY_KEY => (1, n),
        Tri::Sometimes => {
            let half = keys.0 + n / 2;
            let (a, b) = row_checks(mask, q, (keys.0, half - 1));
            let (c, d) = row_checks(mask, q, (half, keys.1));
            (1 + a + c, b + d)
        }
    }
}

/// The work of query rows `qs` over the key tiles `tiles` (inclusive) that are not provably
/// empty, found by bisecting the tile range as the tiled plan does. The checks of a partial
/// tile are those of its middle row, times its rows.
fn visited_tiles(
    mask: &MaskTerm,
    qs: (i64, i64),
    tiles: (i64, i64),
    kv_tile: i64,
    len: i64,
) -> TileWork {
    let keys = (tiles.0 * kv_tile, ((tiles.1 + 1) * kv_tile).min(len) - 1);
    let causal = if keys.0 > qs.1 {
        Tri::Never
    } else if keys.1 <= qs.0 {
        Tri::Always
    } else {
        Tri::Sometimes
    };
    let work = TileWork {
        keys: keys.1 - keys.0 + 1,
        pairs: causal_pairs_in(qs, keys),
        ..TileWork::default()
    };
    match causal.and(mask.truth(qs, keys)) {
        Tri::Never => TileWork::default(),
        Tri::Always => work,
        Tri::Sometimes if tiles.0 == tiles.1 => {
            let first = qs.0.max(keys.0);
            let middle = first + (qs.1 - first) / 2;
            let (range, pair) = row_checks(mask, middle, (keys.0, keys.1.min(middle)));
            let rows = qs.1 - first + 1;
            TileWork {
                range_checks: range * rows,
                pair_checks: pair * rows,
                ..work
            }
        }
        Tri::Sometimes => {
            let mid = tiles.0 + (tiles.1 - tiles.0) / 2;
            visited_tiles(mask, qs, (tiles.0, mid), kv_tile, len)
                + visited_tiles(mask, qs, (mid + 1, tiles.1), kv_tile, len)
        }
    }
}

/// The work of query tile `qs` (inclusive) over every key tile up to its last row.
fn query_tile_work(mask: &MaskTerm, qs: (i64, i64), kv_tile: i64, len: i64) -> TileWork {
    let last_tile = (len - 1) / kv_tile;
    visited_tiles(mask, qs, (0, last_tile.min(qs.1 / kv_tile)), kv_tile, len)
}

/// The query tiles of a prefill of `len` rows, as inclusive bounds.
fn query_tiles(len: i64, q_tile: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..len)
        .step_by(q_tile as usize)
        .map(move |start| (start, (start + q_tile).min(len) - 1))
}

fn tiled_work(mask: &MaskTerm, len: i64, q_tile: i64, kv_tile: i64) -> TileWork {
    query_tiles(len, q_tile)
        .map(|qs| query_tile_work(mask, qs, kv_tile, len))
        .fold(TileWork::default(), |a, b| a + b)
}

fn option(options: &[(String, OptionValue)], name: &str) -> f64 {
    match options.iter().find(|(k, _)| k == name).map(|(_, v)| v) {
        Some(OptionValue::Int(v)) => *v as f64,
        Some(OptionValue::Float(v)) => *v,
        _ => 0.0,
    }
}

/// Log-Linear over chunks of `chunk` tokens: like the linear family per token (one own-state
/// write, half a chunk of in-chunk pairs), but chunk `n` reads one d × d state per set bit of
/// `n` (its Fenwick buckets of earlier chunks), and every query of the chunk reads them all.
/// The cache holds at most `⌊log₂ T⌋ + 1` states.
fn log_linear_cost(t: f64, chunk: f64, d: f64) -> Cost {
    let (len, chunk_len) = (t as u64, chunk as u64);
    let (mut states_read, mut query_state_reads) = (0.0, 0.0);
    for n in 0..len.div_ceil(chunk_len) {
        let live = f64::from(n.count_ones());
        states_read += live;
        query_state_reads += live * chunk_len.min(len - n * chunk_len) as f64;
    }
    let states_held = t.log2().floor() + 1.0;
    Cost {
        flops: t * (2.0 * d * d + 2.0 * chunk * d) + query_state_reads * 2.0 * d * d,
        kv_bytes_read: t * 2.0 * d * F32 + states_read * d * d * F32,
        kv_bytes_held_per_token: states_held * d * d * F32 / t,
    }
}

/// Page selection (`attention::top_k_pages`) as the kernel runs it. Per KV head, every key of
/// a complete page enters its page summary (`2d` f64 min/max or `d` f64 adds). Per row at
/// position `q`, each earlier page is checked for a visible key, the visible ones are scored
/// against the query in f64 (`4d` minmax, `2d` mean), and the best `top - 1` are chosen; the
/// keys of the chosen pages and the row's own page up to `q` are checked against the mask,
/// and the row attends to the visible ones one row at a time.
#[allow(clippy::too_many_arguments)]
fn select_cost(
    page: i64,
    top: i64,
    summary: Summary,
    mask: &CompiledMask,
    score: Option<&CompiledScore>,
    len: i64,
    d: f64,
    shape: &ModelShape,
) -> Cost {
    let group = (shape.n_q_heads / shape.n_kv_heads) as f64;
    let key_bytes = 2.0 * d * F32 / group;
    let budget = top * page;
    let (score_ops, summary_floats, build_ops) = match summary {
        Summary::MinMax => (4.0 * d, 2.0 * d, 2.0 * d),
        Summary::Mean => (2.0 * d, d, d),
    };
    // The layer's causal mask and the rule, evaluated on each key of the chosen pages.
    let check = weight::MASK_NODE * (1 + mask.term.nodes()) as f64;
    let (mut attended, mut enumerated, mut pages_checked, mut pages_scored) = (0.0, 0.0, 0.0, 0.0);
    for (q, visible) in visible_rows(&mask.term, len).enumerate() {
        let q = q as i64;
        let earlier = q / page;
        attended += visible.min(budget) as f64;
        enumerated += (q + 1).min(budget) as f64;
        pages_checked += earlier as f64;
        pages_scored += earlier.min((visible + page - 1) / page) as f64;
    }
    let summarised = (len / page * page) as f64;
    let score_per_pair = score.map_or(0.0, score_weight);
    // A query tile reads the union of the pages its rows select: at most its rows' budgets,
    // and at most the keys of the tiles it would visit without selection.
    let (q_tile, kv_tile) = (Tile::DEFAULT.q, Tile::DEFAULT.kv);
    let keys_read: f64 = query_tiles(len, q_tile)
        .map(|qs| {
            let visited = query_tile_work(&mask.term, qs, kv_tile, len).keys;
            visited.min((qs.1 - qs.0 + 1) * budget) as f64
        })
        .sum();
    Cost {
        flops: (4.0 * d + weight::ROW_PAIR + score_per_pair) * attended
            + check * enumerated
            + weight::PAGE * pages_checked
            + weight::F64_OP * (score_ops * pages_scored + build_ops * summarised / group),
        kv_bytes_read: keys_read * key_bytes
            + pages_scored / q_tile as f64 * summary_floats * F32 / group,
        kv_bytes_held_per_token: key_bytes + summary_floats * F32 / (page as f64 * group),
    }
}

/// FLOP-equivalents per visible pair of a score expression.
fn score_weight(score: &CompiledScore) -> f64 {
    let (nodes, transcendental) = score.term.nodes();
    weight::SCORE_NODE * nodes as f64 + weight::TRANSCENDENTAL * transcendental as f64
}

/// The cost of one query head running `spec`.
fn head_cost(spec: &HeadSpec, shape: &ModelShape, seq_len: usize) -> Result<Cost> {
    let len = seq_len as i64;
    let t = seq_len as f64;
    let d = shape.head_dim as f64;
    let group = (shape.n_q_heads / shape.n_kv_heads) as f64;
    // A key and its value, shared by the query heads of one KV head.
    let key_bytes = 2.0 * d * F32 / group;
    let causal_pairs = t * (t + 1.0) / 2.0;
    let (q_tile, kv_tile) = (Tile::DEFAULT.q as usize, Tile::DEFAULT.kv as usize);
    // Softmax over the tiled plan; a rule also checks its partial tiles against the mask
    // (an interval check costs two evaluations) and runs its score on every visible pair.
    let softmax = |mask: &CompiledMask,
                   rule: bool,
                   score: Option<&CompiledScore>,
                   q_tile: usize,
                   kv_tile: usize| {
        let work = tiled_work(&mask.term, len, q_tile as i64, kv_tile as i64);
        let mut flops = 4.0 * d * work.pairs as f64;
        if rule {
            let nodes = mask.term.nodes() as f64;
            flops += (weight::MASK_CALL + 2.0 * weight::MASK_NODE * nodes)
                * work.range_checks as f64
                + (weight::MASK_CALL + weight::MASK_NODE * nodes) * work.pair_checks as f64;
        }
        if let Some(score) = score {
            let visible: i64 = visible_rows(&mask.term, len).sum();
            flops += score_weight(score) * visible as f64;
        }
        Cost {
            flops,
            kv_bytes_read: work.keys as f64 * key_bytes,
            kv_bytes_held_per_token: key_bytes,
        }
    };
    let exact = || softmax(&CompiledMask::causal(), false, None, q_tile, kv_tile);
    Ok(match spec {
        HeadSpec::Exact => exact(),
        HeadSpec::Rule {
            mask,
            score,
            keep,
            q_tile,
            kv_tile,
        } => {
            let mut c = softmax(mask, true, score.as_deref(), *q_tile, *kv_tile);
            if let Some(keep) = keep {
                let kept = (0..len).filter(|&kv| keep.term.eval(len - 1, kv)).count();
                c.kv_bytes_held_per_token = kept as f64 * key_bytes / t;
            }
            c
        }
        HeadSpec::Star { block, context } => {
            softmax(&star_mask(*block, *context)?, true, None, q_tile, kv_tile)
        }
        HeadSpec::Select {
            page,
            top,
            summary,
            mask,
            score,
        } => select_cost(
            *page as i64,
            *top as i64,
            *summary,
            mask,
            score.as_deref(),
            len,
            d,
            shape,
        ),
        HeadSpec::Mechanism { name, options } => {
            // Every linear-family head holds one d_k × d_v state (d × d here). The chunkwise
            // prefill per token: read the state and write into it (2d² each), and score
            // half a chunk of earlier in-chunk keys and add their values (2·C·d).
            let chunk = option(options, "chunk").clamp(1.0, t);
            let state_floats = d * d;
            let recurrent = |extra_flops_per_token: f64| Cost {
                flops: t * (4.0 * d * d + 2.0 * chunk * d + extra_flops_per_token),
                kv_bytes_read: t * 2.0 * d * F32 + (t / chunk).ceil() * state_floats * F32,
                kv_bytes_held_per_token: state_floats * F32 / t,
            };
            // The delta rule also builds the in-chunk key-key system (C·d), solves it by
            // forward substitution for values and decayed keys (2·C·d), and subtracts the
            // state's prediction (2d²).
            let delta = 3.0 * chunk * d + 2.0 * d * d;
            match name.as_str() {
                "linear" | "retnet" | "mamba2" => recurrent(0.0),
                // One decay per key channel rather than per head.
                "gla" => recurrent(d),
                "deltanet" => recurrent(delta),
                "gated_deltanet" => recurrent(delta + d),
                "log_linear" => log_linear_cost(t, chunk, d),
                "mta" => {
                    let conv_flops =
                        2.0 * option(options, "q_kernel") * option(options, "k_kernel")
                            + 2.0 * option(options, "head_kernel");
                    let mut c = exact();
                    c.flops = causal_pairs * (4.0 * d + conv_flops);
                    c
                }
                "differential" => {
                    let mut c = exact();
                    // Two softmax maps, each from its own query/key half, and one value pass.
                    c.flops = causal_pairs * (6.0 * d + 4.0);
                    c
                }
                "mla" => {
                    let latent = option(options, "kv_rank") + option(options, "rope_dim");
                    let per_key = latent * F32 / shape.n_q_heads as f64;
                    let read = tiled_work(
                        &CompiledMask::causal().term,
                        len,
                        q_tile as i64,
                        kv_tile as i64,
                    )
                    .keys as f64;
                    Cost {
                        flops: causal_pairs * (2.0 * latent + 2.0 * option(options, "kv_rank")),
                        kv_bytes_read: read * per_key,
                        kv_bytes_held_per_token: per_key,
                    }
                }
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "cost model: no formula for mechanism `{other}`"
                    )))
                }
            }
        }
    })
}
