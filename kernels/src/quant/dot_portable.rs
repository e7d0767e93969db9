//! The scalar kernels: each dot product written out plainly from the block layouts in
//! `blocks`. Always compiled; the fallback on CPUs without AVX2 and the twin the AVX2 kernels
//! are tested against. Each takes `M` weight rows and `N` activation rows, as the AVX2 ones
//! do, and simply runs every pair.

use super::blocks::{
    array_at, decode_q8_0, decode_unsigned32, f16_at, panel32, q4k, q6k, Block32, QK, QK_K,
};
use super::kernel::{Kernel, Unsigned32, WeightRows};
use super::q8::{Q8KRow, Q8Row};

/// Runs `dot(weight row, activation row)` for every pair.
#[inline(always)]
fn each_pair<A, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[A; N],
    dot: impl Fn(&[u8], &A) -> f32,
) -> [[f32; N]; M] {
    std::array::from_fn(|m| std::array::from_fn(|n| dot(w[m], &acts[n])))
}

/// A 32-element row against an integer-scaled activation row:
/// `unit · Σ_blocks d_w · (s · Σ q_w·q_a) + m_w · (s · Σ q_a)`.
fn row32(
    w_row: &[u8],
    block_bytes: usize,
    a: &Q8Row<'_>,
    decode: impl Fn(&[u8]) -> Block32,
) -> f32 {
    let mut out = 0f32;
    for (b, block) in w_row.chunks_exact(block_bytes).enumerate() {
        let w = decode(block);
        let qa = array_at::<i8, QK>(a.qs, b * QK);
        let dot: i64 =
            w.q.iter()
                .zip(qa)
                .map(|(&w, &a)| i64::from(w) * i64::from(a))
                .sum();
        out += w.d * (dot * i64::from(a.scales[b][0])) as f32 + w.m * a.sums[b];
    }
    out * a.unit
}

/// Q4_0, Q4_1 and Q5_0 blocks.
pub(crate) fn unsigned32<K: Unsigned32, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8Row<'_>; N],
) -> [[f32; N]; M] {
    each_pair(w, acts, |w_row, a| {
        row32(w_row, K::BLOCK.0, a, |block| {
            decode_unsigned32(K::LAYOUT, block)
        })
    })
}

/// A panel (`blocks::panel32`) against `N` activation rows, in the AVX2 kernel's order of
/// float operations, so both give the same bits.
pub(crate) fn panel32<const N: usize>(panel: &[u8], acts: &[Q8Row<'_>; N]) -> [[f32; 8]; N] {
    let blocks = panel.as_chunks::<{ panel32::BLOCK_BYTES }>().0;
    std::array::from_fn(|n| {
        let a = &acts[n];
        std::array::from_fn(|r| {
            let mut acc = 0f32;
            for (b, block) in blocks.iter().enumerate() {
                let qa = array_at::<i8, QK>(a.qs, b * QK);
                let dot: i32 = (0..QK)
                    .map(|i| i32::from(panel32::quant(block, r, i)) * i32::from(qa[i]))
                    .sum();
                let scaled = (dot * i32::from(a.scales[b][0])) as f32;
                acc = scaled.mul_add(panel32::d(block, r), acc);
                acc = panel32::m(block, r).mul_add(a.sums[b], acc);
            }
            acc * a.unit
        })
    })
}

/// Q8_0.
pub(crate) fn q8_0<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8Row<'_>; N],
) -> [[f32; N]; M] {
    each_pair(w, acts, |w_row, a| row32(w_row, K::BLOCK.0, a, decode_q8_0))
}

/// Q4_K: per 32-element sub-block `d·scale·Σ q_w·q_a − dmin·min·Σ q_a`, times `d_a`.
pub(crate) fn q4k<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8KRow<'_>; N],
) -> [[f32; N]; M] {
    each_pair(w, acts, |w_row, a| {
        let mut out = 0f32;
        for (b, block) in w_row.chunks_exact(K::BLOCK.0).enumerate() {
            let d = f16_at(block, q4k::D);
            let dmin = f16_at(block, q4k::DMIN);
            let (scales, mins) = q4k::scales_mins(array_at(block, q4k::SCALES));
            let qa = array_at::<i8, QK_K>(a.qs, b * QK_K);
            let sums = &a.sums[b];
            let (mut dot, mut min) = (0i32, 0i32);
            for j in 0..8 {
                let sub: i32 = (32 * j..32 * (j + 1))
                    .map(|e| i32::from(q4k::quant(block, e)) * i32::from(qa[e]))
                    .sum();
                dot += i32::from(scales[j]) * sub;
                let sum_a = i32::from(sums.bsums[2 * j]) + i32::from(sums.bsums[2 * j + 1]);
                min += i32::from(mins[j]) * sum_a;
            }
            out += sums.d * (d * dot as f32 - dmin * min as f32);
        }
        out
    })
}

/// Q6_K: per 16-element sub-block `d·scale·Σ (q_w − 32)·q_a`, times `d_a`.
pub(crate) fn q6k<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8KRow<'_>; N],
) -> [[f32; N]; M] {
    each_pair(w, acts, |w_row, a| {
        let mut out = 0f32;
        for (b, block) in w_row.chunks_exact(K::BLOCK.0).enumerate() {
            let qa = array_at::<i8, QK_K>(a.qs, b * QK_K);
            let mut dot = 0i32;
            for s in 0..QK_K / 16 {
                let sub: i32 = (16 * s..16 * (s + 1))
                    .map(|e| (i32::from(q6k::quant(block, e)) - 32) * i32::from(qa[e]))
                    .sum();
                dot += i32::from(q6k::scale(block, s)) * sub;
            }
            out += f16_at(block, q6k::D) * a.sums[b].d * dot as f32;
        }
        out
    })
}

/// `f32` weights against `f32` rows.
pub(crate) fn f32<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[&[f32]; N],
) -> [[f32; N]; M] {
    each_pair(w, acts, |w_row, a| {
        let w = w_row
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(*array_at(b, 0)));
        w.zip(a.iter()).map(|(w, a)| w * a).sum()
    })
}
