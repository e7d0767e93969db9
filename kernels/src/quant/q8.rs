//! Activation rows, quantized once per matmul so the kernels can take integer dot products
//! against the weights, as llama.cpp does:
//! - `Q8Blocks`: 32 `i8` a block, for the 32-element weight formats. A block's scale is a
//!   whole multiple `s` (at most 16383) of one unit per row, `d = s · unit`, so the kernels
//!   multiply by `s` in the integer unit (`madd`, which also widens the pair sums) and leave
//!   a single float product per block, by the weight's `d_w`. Each block also carries
//!   `s · Σq`, for Q4_1's `m` and the offsets of Q4_0 and Q5_0.
//! - `Q8KBlocks`: 256 `i8` a block with scale `d` and the sum of every 16 quants (Q8_K), for
//!   the K-quants, whose mins and offsets are per 16 or 32 elements.
//! - `F32Rows`: the rows as they are, for `f32` weights.
//!
//! Each block is `q = round(x / d)`, so `|x − d·q| ≤ d / 2`: for Q8_K `d = amax / 127`, the
//! error bound `amax / 254`; for `Q8Blocks` `s` is rounded up, `d ≤ amax / 127 + unit`, which
//! adds at most `row_amax / (254 · 16383)`. Scales stay `f32` (ggml stores `f16`) so that
//! bound holds.

use std::cell::Cell;
use std::thread::LocalKey;

use rayon::prelude::*;

use super::blocks::{QK, QK_K};
use super::Isa;

/// Rows at or above this are quantized in parallel.
const PARALLEL_ROWS: usize = 8;

/// Quantized activation rows, in buffers that each thread reuses across calls.
pub(crate) trait Activations: Default + Send + Sync + 'static {
    /// One row, as the kernels read it.
    type Row<'a>: Copy + Send + Sync;

    /// Replaces the contents with `x`, rows of `cols` values (`cols` a multiple of the block),
    /// compiled for `isa`; every `isa` gives the same bits.
    ///
    /// # Safety
    /// The CPU must support `isa`.
    unsafe fn quantize(&mut self, isa: Isa, x: &[f32], cols: usize);

    fn row(&self, r: usize) -> Self::Row<'_>;

    /// This thread's buffers, taken out for a call and put back after it (taking, not
    /// borrowing, so that a matmul nested in another on a rayon worker finds an empty one).
    fn scratch() -> &'static LocalKey<Cell<Self>>;
}

/// The largest magnitude in a block.
fn amax<const L: usize>(x: &[f32; L]) -> f32 {
    // Eight lanes so the max vectorizes.
    let mut lanes = [0f32; 8];
    for chunk in x.as_chunks::<8>().0 {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    lanes.iter().fold(0f32, |m, &v| m.max(v))
}

/// NaN if `x` holds a NaN or an infinity, else 0. Added to a row's or block's scale it carries
/// bad input through to the matmul's outputs, which 8-bit quants could not (and `max` may
/// drop a NaN along the way).
pub(super) fn poison(x: &[f32]) -> f32 {
    let (chunks, tail) = x.as_chunks::<8>();
    let mut lanes = [0f32; 8];
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v * 0.0;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|v| v * 0.0).sum::<f32>()
}

/// Quantizes one block with `d = amax / 127`: writes `q`, returns `d`.
fn quantize_block<const L: usize>(x: &[f32; L], q: &mut [i8; L]) -> f32 {
    let amax = amax(x);
    let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    quantize_with(x, inverse, q);
    amax / 127.0
}

/// Rounds `v` (|v| < 2²²) to the nearest integer, ties to even. Adding 1.5·2²³ leaves no
/// fraction bits, so the float unit rounds, and the integer lands in the low mantissa bits.
/// Unlike `round_ties_even` (a libm call on baseline x86-64) and `as i32` (saturating,
/// scalar with branches), this is plain arithmetic.
#[inline(always)]
fn round_to_i32(v: f32) -> i32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT).to_bits() as i32 - SHIFT.to_bits() as i32
}

/// A row quantizer: one row of `x` into its quants and per-block scales; returns what the
/// layout keeps per row (`Q8Blocks`: the unit).
///
/// # Safety
/// The copy for an ISA needs a CPU that supports it.
type RowFn<S, T, R> = unsafe fn(&[f32], &mut [i8], &mut [S], &mut [T]) -> R;

/// Quantizes every row with `row`, in parallel when there are many.
///
/// # Safety
/// The CPU must support the ISA `row` was compiled for.
unsafe fn for_each_row<S: Send, T: Send, R: Send>(
    x: &[f32],
    cols: usize,
    qs: &mut [i8],
    (first, second, per_block): (&mut [S], &mut [T], usize),
    per_row: &mut [R],
    row: RowFn<S, T, R>,
) {
    type Args<'a, S, T, R> = (
        (((&'a [f32], &'a mut [i8]), &'a mut [S]), &'a mut [T]),
        &'a mut R,
    );
    // SAFETY: our caller promises the CPU supports `row`'s ISA.
    let row = |((((x, q), s), t), r): Args<'_, S, T, R>| *r = unsafe { row(x, q, s, t) };
    if x.len() / cols >= PARALLEL_ROWS {
        let rows = x.par_chunks(cols).zip(qs.par_chunks_mut(cols));
        let rows = rows.zip(first.par_chunks_mut(per_block));
        let rows = rows.zip(second.par_chunks_mut(per_block));
        rows.zip(per_row.par_iter_mut()).for_each(row);
    } else {
        x.chunks(cols)
            .zip(qs.chunks_mut(cols))
            .zip(first.chunks_mut(per_block))
            .zip(second.chunks_mut(per_block))
            .zip(per_row.iter_mut())
            .for_each(row);
    }
}

fn refill<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    v.clear();
    v.resize(len, T::default());
}

/// The largest block scale `s` of a `Q8Blocks` row. A prefill panel (`blocks::panel32`) sums
/// a whole block of one weight row in one `i32` lane, `s · 32 · 31 · 127 < 2³¹`; so it is
/// 2¹⁴ − 1, not `i16::MAX`.
pub(crate) const MAX_SCALE: i32 = (1 << 14) - 1;

/// Rows in blocks of 32 with integer scales: `d = s · unit`.
#[derive(Default)]
pub(crate) struct Q8Blocks {
    cols: usize,
    qs: Vec<i8>,
    /// Per block: `s`, twice, as `madd` reads a pair of `i16`.
    scales: Vec<[i16; 2]>,
    /// Per block: `s · Σq`.
    sums: Vec<f32>,
    units: Vec<f32>,
}

#[derive(Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub scales: &'a [[i16; 2]],
    pub sums: &'a [f32],
    /// The value of one step of `s`.
    pub unit: f32,
}

thread_local! {
    static Q8_SCRATCH: Cell<Q8Blocks> = Cell::default();
    static Q8K_SCRATCH: Cell<Q8KBlocks> = Cell::default();
    static F32_SCRATCH: Cell<F32Rows> = Cell::default();
}

/// The unit of a row whose largest magnitude is `row_amax`: its largest block gets `s = MAX_SCALE`.
fn unit(row_amax: f32) -> f32 {
    row_amax / (127.0 * MAX_SCALE as f32)
}

/// The smallest `s` whose step `s · unit` covers `amax / 127`, and `1 / (s · unit)`.
fn block_scale(amax: f32, unit: f32) -> (i32, f32) {
    if amax == 0.0 {
        return (0, 0.0);
    }
    let s = ((amax / (127.0 * unit)).ceil() as i32).clamp(1, MAX_SCALE);
    (s, 1.0 / (s as f32 * unit))
}

/// A block's `[s, s]` and `s · Σq` from `s` and its quants' sum.
fn scale_and_sum(s: i32, sum: i32) -> ([i16; 2], f32) {
    ([s as i16; 2], (s * sum) as f32)
}

/// Quantizes one block with step `1 / inverse`: `q = round(x · inverse)`, within ±127.
fn quantize_with<const L: usize>(x: &[f32; L], inverse: f32, q: &mut [i8; L]) {
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_to_i32(v * inverse).clamp(-127, 127) as i8;
    }
}

/// One row into blocks of 32 with integer scales and sums; returns its unit.
fn q8_row(x: &[f32], qs: &mut [i8], scales: &mut [[i16; 2]], sums: &mut [f32]) -> f32 {
    let blocks = x.as_chunks::<QK>().0;
    let unit = unit(blocks.iter().map(amax).fold(0f32, f32::max)) + poison(x);
    let outs = scales.iter_mut().zip(sums);
    for ((x, q), (scale, sum)) in blocks.iter().zip(qs.as_chunks_mut::<QK>().0).zip(outs) {
        let (s, inverse) = block_scale(amax(x), unit);
        quantize_with(x, inverse, q);
        (*scale, *sum) = scale_and_sum(s, q.iter().map(|&q| i32::from(q)).sum());
    }
    unit
}

impl Activations for Q8Blocks {
    type Row<'a> = Q8Row<'a>;

    unsafe fn quantize(&mut self, isa: Isa, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols));
        self.cols = cols;
        refill(&mut self.qs, x.len());
        refill(&mut self.scales, x.len() / QK);
        refill(&mut self.sums, x.len() / QK);
        refill(&mut self.units, x.len() / cols);
        let row: RowFn<[i16; 2], f32, f32> = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => avx2::q8_row,
            _ => q8_row,
        };
        let blocks = (&mut self.scales[..], &mut self.sums[..], cols / QK);
        // SAFETY: our caller promises the CPU supports `isa`.
        unsafe { for_each_row(x, cols, &mut self.qs, blocks, &mut self.units, row) };
    }

    fn row(&self, r: usize) -> Q8Row<'_> {
        let blocks = self.cols / QK;
        Q8Row {
            qs: &self.qs[r * self.cols..(r + 1) * self.cols],
            scales: &self.scales[r * blocks..(r + 1) * blocks],
            sums: &self.sums[r * blocks..(r + 1) * blocks],
            unit: self.units[r],
        }
    }

    fn scratch() -> &'static LocalKey<Cell<Self>> {
        &Q8_SCRATCH
    }
}

/// Rows in Q8_K blocks of 256.
#[derive(Default)]
pub(crate) struct Q8KBlocks {
    cols: usize,
    qs: Vec<i8>,
    /// Per block: `d`, then the sums of its sixteen runs of 16 quants.
    sums: Vec<KSums>,
}

/// A Q8_K block's scale and sums of 16 quants.
#[derive(Clone, Copy, Default)]
pub(crate) struct KSums {
    pub d: f32,
    pub bsums: [i16; QK_K / 16],
}

#[derive(Clone, Copy)]
pub(crate) struct Q8KRow<'a> {
    pub qs: &'a [i8],
    pub sums: &'a [KSums],
}

/// One row into blocks of 256 with their sums of 16.
fn q8k_row(x: &[f32], qs: &mut [i8], sums: &mut [KSums], _: &mut [()]) {
    let blocks = x
        .as_chunks::<QK_K>()
        .0
        .iter()
        .zip(qs.as_chunks_mut::<QK_K>().0);
    for ((x, q), sums) in blocks.zip(sums) {
        sums.d = quantize_block(x, q) + poison(x);
        for (s, q) in sums.bsums.iter_mut().zip(q.as_chunks::<16>().0) {
            *s = q.iter().map(|&q| i16::from(q)).sum();
        }
    }
}

impl Activations for Q8KBlocks {
    type Row<'a> = Q8KRow<'a>;

    unsafe fn quantize(&mut self, isa: Isa, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK_K) && x.len().is_multiple_of(cols));
        self.cols = cols;
        refill(&mut self.qs, x.len());
        refill(&mut self.sums, x.len() / QK_K);
        let row: RowFn<KSums, (), ()> = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => avx2::q8k_row,
            _ => q8k_row,
        };
        // Q8_K keeps nothing else per block or per row: `()` takes no room.
        let (mut per_block, mut per_row) = (vec![(); x.len() / QK_K], vec![(); x.len() / cols]);
        let blocks = (&mut self.sums[..], &mut per_block[..], cols / QK_K);
        // SAFETY: our caller promises the CPU supports `isa`.
        unsafe { for_each_row(x, cols, &mut self.qs, blocks, &mut per_row, row) };
    }

    fn row(&self, r: usize) -> Q8KRow<'_> {
        let blocks = self.cols / QK_K;
        Q8KRow {
            qs: &self.qs[r * self.cols..(r + 1) * self.cols],
            sums: &self.sums[r * blocks..(r + 1) * blocks],
        }
    }

    fn scratch() -> &'static LocalKey<Cell<Self>> {
        &Q8K_SCRATCH
    }
}

/// Rows kept as `f32`, for `f32` weights.
#[derive(Default)]
pub(crate) struct F32Rows {
    cols: usize,
    x: Vec<f32>,
}

impl Activations for F32Rows {
    type Row<'a> = &'a [f32];

    unsafe fn quantize(&mut self, _: Isa, x: &[f32], cols: usize) {
        self.cols = cols;
        self.x.clear();
        self.x.extend_from_slice(x);
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.x[r * self.cols..(r + 1) * self.cols]
    }

    fn scratch() -> &'static LocalKey<Cell<Self>> {
        &F32_SCRATCH
    }
}

/// The row quantizers again with AVX2 intrinsics, as llama.cpp writes them. They give the
/// portable ones' bits: the same max, the same one division, the same products, rounding to
/// nearest-even, and integer sums.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::dot_avx2::{load_f32x8, store_i8x32};
    use super::{KSums, QK, QK_K};

    /// The largest magnitude in `x` (a multiple of 8 long), as the portable `amax`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn amax(x: &[f32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut max = _mm256_setzero_ps();
        for v in x.as_chunks::<8>().0 {
            max = _mm256_max_ps(max, _mm256_andnot_ps(sign, load_f32x8(v)));
        }
        let max = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps::<1>(max));
        let max = _mm_max_ps(max, _mm_movehl_ps(max, max));
        _mm_cvtss_f32(_mm_max_ss(max, _mm_movehdup_ps(max)))
    }

    /// `127 / amax`, or 0 for an all-zero block, as the portable code computes it.
    fn inverse(amax: f32) -> f32 {
        if amax > 0.0 {
            127.0 / amax
        } else {
            0.0
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
    }

    /// `round(x · inverse)`, ties to even.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scaled_ints(x: &[f32; 8], inverse: __m256) -> __m256i {
        let v = _mm256_mul_ps(load_f32x8(x), inverse);
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(v))
    }

    /// Writes `round(x · inverse)` to `q`; returns the sums of its two halves.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quantize32(x: &[f32; 32], inverse: f32, q: &mut [i8; 32]) -> [i32; 2] {
        let inverse = _mm256_set1_ps(inverse);
        let x = x.as_chunks::<8>().0;
        let [a, b, c, d] = [
            scaled_ints(&x[0], inverse),
            scaled_ints(&x[1], inverse),
            scaled_ints(&x[2], inverse),
            scaled_ints(&x[3], inverse),
        ];
        // Packing works within 128-bit lanes; the permutation puts the 4-byte groups back.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        // Never −128, as the portable code (the kernels' pair sums rely on it).
        let bytes = _mm256_max_epi8(bytes, _mm256_set1_epi8(-127));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        store_i8x32(q, _mm256_permutevar8x32_epi32(bytes, order));
        [
            hsum_i32(_mm256_add_epi32(a, b)),
            hsum_i32(_mm256_add_epi32(c, d)),
        ]
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn q8_row(
        x: &[f32],
        qs: &mut [i8],
        scales: &mut [[i16; 2]],
        sums: &mut [f32],
    ) -> f32 {
        let blocks = x.as_chunks::<QK>().0;
        let unit = super::unit(blocks.iter().map(|b| amax(b)).fold(0f32, f32::max));
        let unit = unit + super::poison(x);
        let outs = scales.iter_mut().zip(sums);
        for ((x, q), (scale, sum)) in blocks.iter().zip(qs.as_chunks_mut::<QK>().0).zip(outs) {
            let (s, inverse) = super::block_scale(amax(x), unit);
            let [low, high] = quantize32(x, inverse, q);
            (*scale, *sum) = super::scale_and_sum(s, low + high);
        }
        unit
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn q8k_row(x: &[f32], qs: &mut [i8], sums: &mut [KSums], _: &mut [()]) {
        let blocks = x
            .as_chunks::<QK_K>()
            .0
            .iter()
            .zip(qs.as_chunks_mut::<QK_K>().0);
        for ((x, q), sums) in blocks.zip(sums) {
            let amax = amax(x);
            let inverse = inverse(amax);
            let pieces = x.as_chunks::<QK>().0.iter().zip(q.as_chunks_mut::<QK>().0);
            for ((x, q), bsums) in pieces.zip(sums.bsums.as_chunks_mut::<2>().0) {
                *bsums = quantize32(x, inverse, q).map(|s| s as i16);
            }
            sums.d = amax / 127.0 + super::poison(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantizes with the portable code, which every CPU runs.
    fn quantize<A: Activations>(a: &mut A, x: &[f32], cols: usize) {
        // SAFETY: every CPU supports `Isa::Portable`.
        unsafe { a.quantize(Isa::Portable, x, cols) }
    }

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 5) as f32))
            .collect()
    }

    #[test]
    fn q8_blocks_are_within_half_a_step_and_carry_their_sums() {
        let x = sample(3 * 64);
        let mut a = Q8Blocks::default();
        quantize(&mut a, &x, 64);
        for r in 0..3 {
            let row = a.row(r);
            let xs = &x[r * 64..(r + 1) * 64];
            let row_amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(row.unit, row_amax / (127.0 * MAX_SCALE as f32));
            let mut largest = 0;
            for (b, (xs, qs)) in xs.chunks(QK).zip(row.qs.chunks(QK)).enumerate() {
                let scale = row.scales[b];
                assert_eq!(scale[0], scale[1]);
                let s = i32::from(scale[0]);
                largest = largest.max(s);
                let d = s as f32 * row.unit;
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                // The smallest whole step that covers the block.
                assert!(d * 127.0 >= amax * 0.9999 && (s - 1) as f32 * row.unit * 127.0 < amax);
                for (&x, &q) in xs.iter().zip(qs) {
                    assert!((x - d * f32::from(q)).abs() <= d / 2.0 * 1.0001);
                }
                let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
                assert_eq!(row.sums[b], (s * sum) as f32);
            }
            assert_eq!(
                largest, MAX_SCALE,
                "the largest block takes the largest scale"
            );
        }
    }

    #[test]
    fn q8k_blocks_sum_every_sixteen_quants() {
        let x = sample(2 * 512);
        let mut a = Q8KBlocks::default();
        quantize(&mut a, &x, 512);
        let row = a.row(1);
        for (b, sums) in row.sums.iter().enumerate() {
            for (i, &s) in sums.bsums.iter().enumerate() {
                let at = b * QK_K + 16 * i;
                let expected: i16 = row.qs[at..at + 16].iter().map(|&q| i16::from(q)).sum();
                assert_eq!(s, expected);
            }
        }
    }

    #[test]
    fn round_to_i32_rounds_to_nearest_even() {
        for v in [
            0.5, 1.5, -2.5, 126.7, -126.5, -0.49, 3.2, 127.0, -127.0, 0.0,
        ] {
            assert_eq!(round_to_i32(v), f32::round_ties_even(v) as i32, "{v}");
        }
    }

    #[test]
    fn avx2_quantization_gives_the_portable_bits() {
        if !Isa::Avx2.is_supported() {
            return;
        }
        let x = sample(3 * 512);
        let (mut q8, mut q8_avx2) = (Q8Blocks::default(), Q8Blocks::default());
        let (mut q8k, mut q8k_avx2) = (Q8KBlocks::default(), Q8KBlocks::default());
        // SAFETY: AVX2 was detected above; the portable code runs anywhere.
        unsafe {
            q8.quantize(Isa::Portable, &x, 512);
            q8_avx2.quantize(Isa::Avx2, &x, 512);
            q8k.quantize(Isa::Portable, &x, 512);
            q8k_avx2.quantize(Isa::Avx2, &x, 512);
        }
        assert_eq!(q8.qs, q8_avx2.qs);
        assert_eq!(q8.scales, q8_avx2.scales);
        assert_eq!(q8.sums, q8_avx2.sums);
        assert_eq!(q8.units, q8_avx2.units);
        assert_eq!(q8k.qs, q8k_avx2.qs);
        for (a, b) in q8k.sums.iter().zip(&q8k_avx2.sums) {
            assert_eq!((a.d, a.bsums), (b.d, b.bsums));
        }
    }

    #[test]
    fn a_zero_block_quantizes_to_zeros() {
        let mut a = Q8Blocks::default();
        quantize(&mut a, &[0.0; 32], 32);
        assert_eq!(
            (a.row(0).scales, a.row(0).sums),
            (&[[0, 0]][..], &[0.0][..])
        );
        assert_eq!(a.row(0).unit, 0.0);
        assert!(a.row(0).qs.iter().all(|&q| q == 0));
    }

    #[test]
    fn parallel_and_sequential_quantization_agree() {
        let x = sample(PARALLEL_ROWS * 64);
        let mut many = Q8Blocks::default();
        quantize(&mut many, &x, 64);
        for r in 0..PARALLEL_ROWS {
            let mut one = Q8Blocks::default();
            quantize(&mut one, &x[r * 64..(r + 1) * 64], 64);
            assert_eq!(one.row(0).qs, many.row(r).qs);
            assert_eq!(one.row(0).scales, many.row(r).scales);
            assert_eq!(one.row(0).sums, many.row(r).sums);
            assert_eq!(one.row(0).unit, many.row(r).unit);
        }
    }
}
