//! The threaded driver: quantizes the activation rows once, cuts the output `[rows, out_dim]`
//! into tiles of activation rows × weight rows, and runs the tiles on rayon's global pool.
//!
//! A tile walks its activation rows in groups of `GROUP`; for each group the weight rows of
//! the tile go two at a time through one kernel call, which decodes each weight block once for
//! the whole group and loads each activation block once for both rows. The group's quantized rows stay in L1 while the tile's weight rows stream past them:
//! that reuse is where prefill's speed comes from. Decode (one row) is the same code with
//! groups of one, the output dimension split finely enough to keep every thread busy, and
//! four weight rows per kernel call, whose independent sums hide the float latency; as four
//! interleaved short rows defeat the hardware prefetcher, decode prefetches rows itself.
//!
//! The unsigned 32-element formats (Q4_0, Q4_1, Q5_0) pack each tile's weight rows once into
//! panels of eight interleaved rows (`blocks::panel32`) when there are enough activation rows
//! to repay it: the tile then runs every group against quants that are a plain load, where
//! decoding a Q5_0 block costs more than its dot products, and each block's float work serves
//! eight weight rows. The panel kernels add the products and offsets in another order, so
//! those rows agree with the packed kernels' to rounding.

use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::blocks::{pack_panel, panel32};
use super::kernel::{Kernel, Row, Unsigned32, WeightRows};
use super::q8::{Activations, Q8Blocks, Q8Row};
use super::{Isa, QuantMatrix};

/// Activation rows per kernel call.
const GROUP: usize = 4;
/// Weight rows per kernel call when there is one activation row.
const DECODE_W_ROWS: usize = 4;
/// Weight rows per kernel call when there are several activation rows.
const PREFILL_W_ROWS: usize = 2;
/// How many such calls ahead decode prefetches its weight rows.
const PREFETCH_GROUPS: usize = 2;
/// Most activation rows in a tile.
const MAX_TILE_ROWS: usize = 64;
/// Most weight rows in a tile (it bounds the tile's buffer on the stack).
const MAX_TILE_OUTS: usize = 64;
/// Tiles wanted per thread, so that uneven tiles still balance.
const TILES_PER_THREAD: usize = 4;
/// Below this much work (weight bytes × rows) a matmul stays on the calling thread: waking
/// the pool would cost more than it saves.
const SEQUENTIAL_WORK: usize = 32 * 1024;

/// Activation rows from which the unsigned 32-element formats pack their tiles' weights.
const PANEL_ROWS: usize = 16;

/// A tile's panels, and which call and first weight row they came from.
type TilePanels = (Vec<u8>, Option<(u64, usize)>);

thread_local! {
    /// Each thread's panels.
    static PANELS: Cell<TilePanels> = const { Cell::new((Vec::new(), None)) };
}

/// Numbers the packing calls, so a thread's panels are reused only within their call.
static PACKING_CALLS: AtomicU64 = AtomicU64::new(0);

/// `y = x · Wᵀ` with `K`'s kernels for `isa`.
pub(super) fn run<K: Kernel>(m: &QuantMatrix, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) {
    run_tiles::<K::Acts>(
        m,
        isa,
        x,
        rows,
        y,
        Order::RowsFirst,
        |acts, rows, outs, out| tile::<K>(Weights::of(m), isa, acts, rows, outs, out),
    );
}

/// `run` for an unsigned 32-element format, packing each tile's weight rows into panels
/// first when there are `PANEL_ROWS` activation rows or more.
pub(super) fn run_unsigned32<K: Unsigned32>(
    m: &QuantMatrix,
    isa: Isa,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) {
    if rows < PANEL_ROWS {
        return run::<K>(m, isa, x, rows, y);
    }
    let panel_bytes = m.in_dim / K::BLOCK.1 * panel32::BLOCK_BYTES;
    let call = PACKING_CALLS.fetch_add(1, Ordering::Relaxed);
    let order = Order::WeightsFirst;
    run_tiles::<Q8Blocks>(m, isa, x, rows, y, order, |acts, rows, outs, out| {
        let (mut panels, held) = PANELS.take();
        // Tiles go weight rows first, so a thread's next tile often has the same ones.
        if held != Some((call, outs.start)) {
            panels.resize(outs.len().div_ceil(panel32::ROWS) * panel_bytes, 0);
            let firsts = outs.clone().step_by(panel32::ROWS);
            for (first, into) in firsts.zip(panels.chunks_exact_mut(panel_bytes)) {
                let last = (first + panel32::ROWS).min(outs.end);
                let rows: Vec<&[u8]> = (first..last).map(|o| m.row(o)).collect();
                match isa {
                    // SAFETY: `run_tiles` asserted that the CPU supports `isa`.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 | Isa::Avx512 => unsafe {
                        super::dot_avx2::pack_panel(K::LAYOUT, &rows, into)
                    },
                    _ => pack_panel(K::LAYOUT, &rows, into),
                }
            }
        }
        panel_tile(isa, &panels, panel_bytes, acts, rows, outs.clone(), out);
        PANELS.set((panels, Some((call, outs.start))));
    });
}

/// One tile from its panels: each panel against the tile's activation rows, `GROUP` at a time
/// (the panel, a few kilobytes, stays in L1 while the activation rows stream past).
fn panel_tile(
    isa: Isa,
    panels: &[u8],
    panel_bytes: usize,
    acts: &Q8Blocks,
    rows: Range<usize>,
    outs: Range<usize>,
    out: &SharedOutput<'_>,
) {
    let tile_rows: Vec<Q8Row<'_>> = rows.clone().map(|r| acts.row(r)).collect();
    let firsts = outs.clone().step_by(panel32::ROWS);
    for (first_out, panel) in firsts.zip(panels.chunks_exact(panel_bytes)) {
        let width = panel32::ROWS.min(outs.end - first_out);
        let write = |row: usize, values: &[f32; panel32::ROWS]| {
            // SAFETY: the plan's tiles partition the output, so only this tile writes there.
            unsafe {
                match width {
                    panel32::ROWS => out.write_array(row, first_out, values),
                    _ => out.write(row, first_out, &values[..width]),
                }
            }
        };
        for (at, group) in tile_rows.chunks(GROUP).enumerate() {
            let first = rows.start + at * GROUP;
            match group.len() {
                1 => panel_group::<1>(isa, panel, group, first, write),
                2 => panel_group::<2>(isa, panel, group, first, write),
                3 => panel_group::<3>(isa, panel, group, first, write),
                _ => panel_group::<GROUP>(isa, panel, group, first, write),
            }
        }
    }
}

/// The activation rows `group` (`N` of them, from row `first`) against one panel;
/// `write(row, values)` takes each row's outputs.
#[inline(always)]
fn panel_group<const N: usize>(
    isa: Isa,
    panel: &[u8],
    group: &[Q8Row<'_>],
    first: usize,
    write: impl Fn(usize, &[f32; panel32::ROWS]),
) {
    let rows: &[Q8Row<'_>; N] = group.try_into().expect("a group of N rows");
    let dots = match isa {
        // SAFETY: `run_tiles` asserted that the CPU supports `isa`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { super::dot_avx2::panel32(panel, rows) },
        _ => super::dot_portable::panel32(panel, rows),
    };
    for (i, values) in dots.iter().enumerate() {
        write(first + i, values);
    }
}

/// Quantizes `x` once and runs `tile(acts, rows, outs, out)` over the plan's tiles, in
/// `order`.
fn run_tiles<A: Activations>(
    m: &QuantMatrix,
    isa: Isa,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    order: Order,
    tile: impl Fn(&A, Range<usize>, Range<usize>, &SharedOutput<'_>) + Sync,
) {
    assert!(
        isa.is_supported(),
        "this CPU cannot run the {isa:?} kernels"
    );
    let scratch = A::scratch();
    let mut acts = scratch.take();
    // SAFETY: asserted above.
    unsafe { acts.quantize(isa, x, m.in_dim) };

    let plan = Plan::new(rows, m.out_dim, rayon::current_num_threads());
    let out = SharedOutput::new(y, m.out_dim);
    let run_tile = |t: usize| {
        let (rows, outs) = plan.tile(t, order);
        tile(&acts, rows, outs, &out);
    };
    if plan.tiles() == 1 || rows * m.data.len() < SEQUENTIAL_WORK {
        (0..plan.tiles()).for_each(run_tile);
    } else {
        (0..plan.tiles()).into_par_iter().for_each(run_tile);
    }
    scratch.set(acts);
}

/// Weight rows as a kernel reads them: `row_bytes` each, from `data`.
#[derive(Clone, Copy)]
struct Weights<'a> {
    data: &'a [u8],
    row_bytes: usize,
}

impl<'a> Weights<'a> {
    /// The matrix's rows as it holds them.
    fn of(m: &'a QuantMatrix) -> Self {
        Weights {
            data: &m.data,
            row_bytes: m.row_bytes,
        }
    }

    fn row(&self, o: usize) -> &'a [u8] {
        let at = o * self.row_bytes;
        &self.data[at..at + self.row_bytes]
    }

    /// The bytes of rows `rows`, cut at the last row held.
    fn rows(&self, rows: Range<usize>) -> &'a [u8] {
        let end = (rows.end * self.row_bytes).min(self.data.len());
        &self.data[(rows.start * self.row_bytes).min(end)..end]
    }
}

/// One tile: activation rows `rows` against weight rows `outs`.
fn tile<K: Kernel>(
    m: Weights<'_>,
    isa: Isa,
    acts: &K::Acts,
    rows: Range<usize>,
    outs: Range<usize>,
    out: &SharedOutput<'_>,
) {
    let mut buf = [[0f32; MAX_TILE_OUTS]; GROUP];
    for first in rows.clone().step_by(GROUP) {
        let n = GROUP.min(rows.end - first);
        match n {
            1 => group::<K, 1>(m, isa, acts, first, outs.clone(), &mut buf),
            2 => group::<K, 2>(m, isa, acts, first, outs.clone(), &mut buf),
            3 => group::<K, 3>(m, isa, acts, first, outs.clone(), &mut buf),
            _ => group::<K, GROUP>(m, isa, acts, first, outs.clone(), &mut buf),
        }
        for (i, values) in buf[..n].iter().enumerate() {
            // SAFETY: the plan's tiles partition the output, so only this tile writes there.
            unsafe { out.write(first + i, outs.start, &values[..outs.len()]) };
        }
    }
}

/// Activation rows `first..first + N` against weight rows `outs`, into `buf[..N][..outs.len()]`.
#[inline(always)]
fn group<K: Kernel, const N: usize>(
    m: Weights<'_>,
    isa: Isa,
    acts: &K::Acts,
    first: usize,
    outs: Range<usize>,
    buf: &mut [[f32; MAX_TILE_OUTS]; GROUP],
) {
    let rows: [Row<'_, K>; N] = std::array::from_fn(|i| acts.row(first + i));
    let mut o = outs.start;
    // With one activation row, take several weight rows per call instead: their independent
    // sums hide the float latency, and they share each activation block.
    if N == 1 {
        while o + DECODE_W_ROWS <= outs.end {
            // Interleaved rows are short streams the hardware prefetcher does not pick up, so
            // fetch the rows a few calls ahead ourselves.
            let ahead = o + PREFETCH_GROUPS * DECODE_W_ROWS;
            prefetch(m.rows(ahead..ahead + DECODE_W_ROWS));
            weight_rows::<K, DECODE_W_ROWS, N>(m, isa, &rows, o, o - outs.start, buf);
            o += DECODE_W_ROWS;
        }
    }
    // With several activation rows, two weight rows per call share each activation block's
    // load and broadcast scale.
    if N > 1 {
        while o + PREFILL_W_ROWS <= outs.end {
            weight_rows::<K, PREFILL_W_ROWS, N>(m, isa, &rows, o, o - outs.start, buf);
            o += PREFILL_W_ROWS;
        }
    }
    for o in o..outs.end {
        weight_rows::<K, 1, N>(m, isa, &rows, o, o - outs.start, buf);
    }
}

/// Weight rows `first..first + M` against `rows`, into `buf[..N][col..col + M]`.
#[inline(always)]
fn weight_rows<K: Kernel, const M: usize, const N: usize>(
    m: Weights<'_>,
    isa: Isa,
    rows: &[Row<'_, K>; N],
    first: usize,
    col: usize,
    buf: &mut [[f32; MAX_TILE_OUTS]; GROUP],
) {
    let w: WeightRows<'_, M> = std::array::from_fn(|i| m.row(first + i));
    // SAFETY: `run` asserted that the CPU supports `isa`.
    let dots = unsafe { K::dot(isa, &w, rows) };
    for (i, dots) in dots.iter().enumerate() {
        for (b, &dot) in buf.iter_mut().zip(dots) {
            b[col + i] = dot;
        }
    }
}

/// Asks the CPU to start loading `bytes` into cache.
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint that never faults; the address is inside `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Which tiles come one after another: those with the same activation rows, or those with
/// the same weight rows.
#[derive(Clone, Copy, Debug)]
enum Order {
    RowsFirst,
    WeightsFirst,
}

/// How the output `[rows, outs]` is cut into tiles.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rows: usize,
    outs: usize,
    tile_rows: usize,
    tile_outs: usize,
    out_tiles: usize,
}

impl Plan {
    fn new(rows: usize, outs: usize, threads: usize) -> Self {
        debug_assert!(rows > 0 && outs > 0);
        let tile_rows = rows.min(MAX_TILE_ROWS);
        let row_tiles = rows.div_ceil(tile_rows);
        // Enough output tiles for every thread to get several (a multiple of the thread
        // count, so that even tiles split evenly), none above `MAX_TILE_OUTS` weight rows.
        let wanted = (threads * TILES_PER_THREAD)
            .div_ceil(row_tiles)
            .max(outs.div_ceil(MAX_TILE_OUTS))
            .next_multiple_of(threads.max(1))
            .min(outs);
        let tile_outs = outs.div_ceil(wanted);
        Plan {
            rows,
            outs,
            tile_rows,
            tile_outs,
            out_tiles: outs.div_ceil(tile_outs),
        }
    }

    fn tiles(&self) -> usize {
        self.rows.div_ceil(self.tile_rows) * self.out_tiles
    }

    /// Tile `t`'s activation rows and weight rows.
    fn tile(&self, t: usize, order: Order) -> (Range<usize>, Range<usize>) {
        let (row_tile, out_tile) = match order {
            Order::RowsFirst => (t / self.out_tiles, t % self.out_tiles),
            Order::WeightsFirst => {
                let row_tiles = self.rows.div_ceil(self.tile_rows);
                (t % row_tiles, t / row_tiles)
            }
        };
        let (r, o) = (row_tile * self.tile_rows, out_tile * self.tile_outs);
        (
            r..(r + self.tile_rows).min(self.rows),
            o..(o + self.tile_outs).min(self.outs),
        )
    }
}

/// The output `[rows, outs]` shared by the tiles of one matmul, each writing its own part.
struct SharedOutput<'a> {
    ptr: *mut f32,
    rows: usize,
    outs: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: it only writes, through `write`, whose callers keep their ranges disjoint, as
// handing each thread its own `&mut` piece of `y` would.
unsafe impl Sync for SharedOutput<'_> {}

impl<'a> SharedOutput<'a> {
    fn new(y: &'a mut [f32], outs: usize) -> Self {
        SharedOutput {
            ptr: y.as_mut_ptr(),
            rows: y.len() / outs,
            outs,
            _y: PhantomData,
        }
    }

    /// Copies `values` to `y[row, first..first + values.len()]`.
    ///
    /// # Safety
    /// No other thread may touch that range during the call.
    unsafe fn write(&self, row: usize, first: usize, values: &[f32]) {
        assert!(row < self.rows && first + values.len() <= self.outs);
        // SAFETY: in bounds by the assert; exclusive by the caller's promise; `values` is
        // the caller's own buffer, so the two cannot overlap.
        unsafe {
            let dst = self.ptr.add(row * self.outs + first);
            std::ptr::copy_nonoverlapping(values.as_ptr(), dst, values.len());
        }
    }

    /// `write` for a fixed number of values, which compiles to plain moves.
    ///
    /// # Safety
    /// As for `write`.
    #[inline(always)]
    unsafe fn write_array<const L: usize>(&self, row: usize, first: usize, values: &[f32; L]) {
        assert!(row < self.rows && first + L <= self.outs);
        // SAFETY: as in `write`.
        unsafe {
            self.ptr
                .add(row * self.outs + first)
                .cast::<[f32; L]>()
                .write_unaligned(*values)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocks::Layout32;
    use super::*;

    #[test]
    fn tiles_cover_the_output_exactly_once() {
        for rows in [1, 2, 3, 4, 5, 17, 63, 64, 65, 130, 512] {
            for outs in [1, 2, 7, 33, 64, 65, 192, 576, 1536, 4099] {
                for threads in [1, 2, 3, 8] {
                    let plan = Plan::new(rows, outs, threads);
                    for order in [Order::RowsFirst, Order::WeightsFirst] {
                        let mut hits = vec![0u8; rows * outs];
                        for t in 0..plan.tiles() {
                            let (rs, os) = plan.tile(t, order);
                            assert!(!rs.is_empty() && !os.is_empty());
                            assert!(rs.len() <= MAX_TILE_ROWS && os.len() <= MAX_TILE_OUTS);
                            for r in rs {
                                for o in os.clone() {
                                    hits[r * outs + o] += 1;
                                }
                            }
                        }
                        assert!(hits.iter().all(|&h| h == 1), "{plan:?} {order:?}");
                    }
                }
            }
        }
    }

    /// Q5_0 blocks with fifth bits all over and scales of both signs, for the packers.
    fn q5_0_row(blocks: usize) -> Vec<u8> {
        let mut row = Vec::new();
        for b in 0..blocks {
            let d = half::f16::from_f32(if b % 2 == 0 { 0.03 } else { -1.5 });
            row.extend_from_slice(&d.to_le_bytes());
            row.extend_from_slice(&(0x9E37_79B9u32.wrapping_mul(b as u32 + 1)).to_le_bytes());
            row.extend((0..16).map(|i| (i * 37 + b * 11) as u8));
        }
        row
    }

    #[test]
    fn avx2_packing_gives_the_portable_bytes() {
        if !Isa::Avx2.is_supported() {
            return;
        }
        for layout in [Layout32::Q4_0, Layout32::Q4_1, Layout32::Q5_0] {
            // The same bytes read as each layout's blocks, in a full panel and a partial one.
            let row = q5_0_row(9);
            let row = &row[..row.len() / layout.bytes() * layout.bytes()];
            let blocks = row.len() / layout.bytes();
            for count in [panel32::ROWS, 3] {
                let rows: Vec<&[u8]> = vec![row; count];
                let mut portable = vec![0u8; blocks * panel32::BLOCK_BYTES];
                let mut avx2 = vec![1u8; blocks * panel32::BLOCK_BYTES];
                pack_panel(layout, &rows, &mut portable);
                // SAFETY: AVX2 was detected above.
                unsafe { super::super::dot_avx2::pack_panel(layout, &rows, &mut avx2) };
                assert_eq!(portable, avx2, "{layout:?}, {count} rows");
            }
        }
    }

    #[test]
    fn a_panel_holds_every_quant_of_its_rows_and_zeros_after_them() {
        let rows: Vec<Vec<u8>> = (0..3).map(|r| q5_0_row(3 + r)[..3 * 22].to_vec()).collect();
        let rows: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let mut panel = vec![7u8; 3 * panel32::BLOCK_BYTES];
        pack_panel(Layout32::Q5_0, &rows, &mut panel);
        let panel = panel.as_chunks::<{ panel32::BLOCK_BYTES }>().0;
        for (r, row) in rows.iter().enumerate() {
            for (b, (block, packed)) in row.chunks_exact(22).zip(panel).enumerate() {
                let high = u32::from_le_bytes(block[2..6].try_into().unwrap());
                for i in 0..32 {
                    let nibble = if i < 16 {
                        block[6 + i] & 15
                    } else {
                        block[6 + i - 16] >> 4
                    };
                    let want = nibble | (((high >> i) & 1) as u8) << 4;
                    assert_eq!(
                        panel32::quant(packed, r, i),
                        want,
                        "row {r} block {b} quant {i}"
                    );
                }
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                assert_eq!(
                    (panel32::d(packed, r), panel32::m(packed, r)),
                    (d, -16.0 * d)
                );
            }
        }
        for packed in panel {
            for r in rows.len()..panel32::ROWS {
                assert!((0..32).all(|i| panel32::quant(packed, r, i) == 0));
                assert_eq!((panel32::d(packed, r), panel32::m(packed, r)), (0.0, 0.0));
            }
        }
    }

    #[test]
    fn decode_splits_the_output_evenly_across_threads() {
        for (outs, tiles) in [(192, 8), (576, 10), (1536, 24)] {
            let plan = Plan::new(1, outs, 2);
            assert_eq!(plan.tiles(), tiles, "{plan:?}");
        }
    }
}
