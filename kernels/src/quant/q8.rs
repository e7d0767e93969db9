//! Activation rows, quantized once per matmul so the kernels can take integer dot products
//! against the weights, as llama.cpp does:
//! - `Q8Blocks`: 32 `i8` a block with scale `d` and `d · Σq` (Q8_0 and Q8_1 in one), for the
//!   32-element weight formats; the sum carries Q4_1's `m` (and Q4_0's and Q5_0's offsets).
//! - `Q8KBlocks`: 256 `i8` a block with scale `d` and the sum of every 16 quants (Q8_K), for
//!   the K-quants, whose mins and offsets are per 16 or 32 elements.
//! - `F32Rows`: the rows as they are, for `f32` weights.
//!
//! Each block is `d = amax / 127`, `q = round(x / d)`, so `|x − d·q| ≤ amax / 254`: the error
//! bound the tests hold the matmul to. Scales stay `f32` (ggml stores `f16`) so that bound holds.

use std::cell::Cell;
use std::thread::LocalKey;

use rayon::prelude::*;

use super::blocks::{QK, QK_K};

/// Rows at or above this are quantized in parallel.
const PARALLEL_ROWS: usize = 8;

/// Quantized activation rows, in buffers that each thread reuses across calls.
pub(crate) trait Activations: Default + Send + Sync + 'static {
    /// One row, as the kernels read it.
    type Row<'a>: Copy + Send + Sync;

    /// Replaces the contents with `x`, rows of `cols` values (`cols` a multiple of the block).
    fn quantize(&mut self, x: &[f32], cols: usize);

    fn row(&self, r: usize) -> Self::Row<'_>;

    /// This thread's buffers, taken out for a call and put back after it (taking, not
    /// borrowing, so that a matmul nested in another on a rayon worker finds an empty one).
    fn scratch() -> &'static LocalKey<Cell<Self>>;
}

/// Quantizes one block: writes `q`, returns `d`.
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    // Eight lanes so the max vectorizes.
    let mut lanes = [0f32; 8];
    for chunk in x.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_small(v * inverse) as i8;
    }
    amax / 127.0
}

/// Rounds `v` (|v| < 2²²) to the nearest integer, ties to even. Adding 1.5·2²³ leaves no
/// fraction bits, so the float unit rounds; unlike `round_ties_even`, which is a libm call on
/// baseline x86-64, this vectorizes with plain SSE2.
#[inline(always)]
fn round_small(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT) - SHIFT
}

/// Runs `f(row of x, row pieces...)` over rows, in parallel when there are many.
fn for_each_row<A: Send, B: Send>(
    x: &[f32],
    cols: usize,
    (a, a_len): (&mut [A], usize),
    (b, b_len): (&mut [B], usize),
    f: impl Fn(&[f32], &mut [A], &mut [B]) + Sync,
) {
    let rows = x.len() / cols;
    if rows >= PARALLEL_ROWS {
        x.par_chunks(cols)
            .zip(a.par_chunks_mut(a_len))
            .zip(b.par_chunks_mut(b_len))
            .for_each(|((x, a), b)| f(x, a, b));
    } else {
        x.chunks(cols)
            .zip(a.chunks_mut(a_len))
            .zip(b.chunks_mut(b_len))
            .for_each(|((x, a), b)| f(x, a, b));
    }
}

fn refill<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    v.clear();
    v.resize(len, T::default());
}

/// Rows in Q8_0/Q8_1-style blocks of 32.
#[derive(Default)]
pub(crate) struct Q8Blocks {
    cols: usize,
    qs: Vec<i8>,
    /// Per block: `[d, d · Σq]`.
    ds: Vec<[f32; 2]>,
}

#[derive(Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub ds: &'a [[f32; 2]],
}

thread_local! {
    static Q8_SCRATCH: Cell<Q8Blocks> = Cell::default();
    static Q8K_SCRATCH: Cell<Q8KBlocks> = Cell::default();
    static F32_SCRATCH: Cell<F32Rows> = Cell::default();
}

impl Activations for Q8Blocks {
    type Row<'a> = Q8Row<'a>;

    fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols));
        self.cols = cols;
        refill(&mut self.qs, x.len());
        refill(&mut self.ds, x.len() / QK);
        for_each_row(
            x,
            cols,
            (&mut self.qs, cols),
            (&mut self.ds, cols / QK),
            |x, qs, ds| {
                for ((x, q), ds) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(ds) {
                    let d = quantize_block(x, q);
                    let sum: i32 = q.iter().map(|&q| i32::from(q)).sum();
                    *ds = [d, d * sum as f32];
                }
            },
        );
    }

    fn row(&self, r: usize) -> Q8Row<'_> {
        let blocks = self.cols / QK;
        Q8Row {
            qs: &self.qs[r * self.cols..(r + 1) * self.cols],
            ds: &self.ds[r * blocks..(r + 1) * blocks],
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

impl Activations for Q8KBlocks {
    type Row<'a> = Q8KRow<'a>;

    fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK_K) && x.len().is_multiple_of(cols));
        self.cols = cols;
        refill(&mut self.qs, x.len());
        refill(&mut self.sums, x.len() / QK_K);
        for_each_row(
            x,
            cols,
            (&mut self.qs, cols),
            (&mut self.sums, cols / QK_K),
            |x, qs, sums| {
                let blocks = x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K));
                for ((x, q), sums) in blocks.zip(sums) {
                    sums.d = quantize_block(x, q);
                    for (s, q) in sums.bsums.iter_mut().zip(q.chunks_exact(16)) {
                        *s = q.iter().map(|&q| i16::from(q)).sum();
                    }
                }
            },
        );
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

    fn quantize(&mut self, x: &[f32], cols: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 5) as f32))
            .collect()
    }

    #[test]
    fn q8_blocks_are_within_half_a_step_and_carry_their_sums() {
        let x = sample(3 * 64);
        let mut a = Q8Blocks::default();
        a.quantize(&x, 64);
        for r in 0..3 {
            let row = a.row(r);
            for (b, (xs, qs)) in x[r * 64..(r + 1) * 64]
                .chunks(QK)
                .zip(row.qs.chunks(QK))
                .enumerate()
            {
                let [d, s] = row.ds[b];
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(d, amax / 127.0);
                for (&x, &q) in xs.iter().zip(qs) {
                    assert!((x - d * f32::from(q)).abs() <= amax / 254.0 * 1.0001);
                }
                let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
                assert_eq!(s, d * sum as f32);
            }
        }
    }

    #[test]
    fn q8k_blocks_sum_every_sixteen_quants() {
        let x = sample(2 * 512);
        let mut a = Q8KBlocks::default();
        a.quantize(&x, 512);
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
    fn round_small_rounds_to_nearest_even() {
        for (v, r) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (-2.5, -2.0),
            (126.7, 127.0),
            (-0.49, 0.0),
            (3.2, 3.0),
        ] {
            assert_eq!(round_small(v), r, "{v}");
            assert_eq!(round_small(v), f32::round_ties_even(v), "{v}");
        }
    }

    #[test]
    fn a_zero_block_quantizes_to_zeros() {
        let mut a = Q8Blocks::default();
        a.quantize(&[0.0; 32], 32);
        assert_eq!(a.row(0).ds, &[[0.0, 0.0]]);
        assert!(a.row(0).qs.iter().all(|&q| q == 0));
    }

    #[test]
    fn parallel_and_sequential_quantization_agree() {
        let x = sample(PARALLEL_ROWS * 64);
        let mut many = Q8Blocks::default();
        many.quantize(&x, 64);
        for r in 0..PARALLEL_ROWS {
            let mut one = Q8Blocks::default();
            one.quantize(&x[r * 64..(r + 1) * 64], 64);
            assert_eq!(one.row(0).qs, many.row(r).qs);
            assert_eq!(one.row(0).ds, many.row(r).ds);
        }
    }
}
