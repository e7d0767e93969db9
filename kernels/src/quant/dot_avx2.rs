//! The x86-64 kernels, compiled for AVX2 with FMA and F16C (every AVX2 CPU we target has both)
//! and chosen at run time. Each computes the dot products of one weight row with `N`
//! activation rows, decoding every weight block once for all `N`.
//!
//! Integer products use `maddubs` (u8 × i8 → adjacent pairs summed to i16) and `madd` (i16
//! pairs → i32), as llama.cpp does. `maddubs` wants one unsigned operand, so the weights are
//! decoded to unsigned quants wherever they can be, with their offsets folded into per-block
//! sums of the activations: Q4_0 (q − 8), Q5_0 (q − 16), Q4_1 (+ m), Q4_K (− min) and Q6_K
//! (q − 32). Only Q8_0 needs the sign trick. No pair sum can saturate: |q_a| ≤ 127 and the
//! unsigned quants are below 64 (Q8_0's |q_w| ≤ 128 gives 2·128·127 < 2¹⁵). The 32-element
//! formats' `madd` multiplies by the activation block's integer scale `s ≤ 16383` instead of
//! by one, which leaves one float product per block: by the weight's `d`.
//!
//! The only unsafe code is the `load_*` and `store_*` helpers, which go through array
//! references and so stay in bounds by type; intrinsics are safe to call in functions
//! compiled for them.

use std::arch::x86_64::*;

use super::blocks::{array_at, panel32, q4k, q6k, Layout32, QK, QK_K};
use super::kernel::{Kernel, Unsigned32, WeightRows};
use super::q8::{KSums, Q8KRow, Q8Row};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x16(b: &[u8; 16]) -> __m128i {
    // SAFETY: reads the 16 bytes of `b`; unaligned loads are allowed.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x32(b: &[u8; 32]) -> __m256i {
    // SAFETY: reads the 32 bytes of `b`; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i8x32(q: &[i8; 32]) -> __m256i {
    // SAFETY: reads the 32 bytes of `q`; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i16x16(q: &[i16; 16]) -> __m256i {
    // SAFETY: reads the 32 bytes of `q`; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_f32x8(x: &[f32; 8]) -> __m256 {
    // SAFETY: reads the 32 bytes of `x`; unaligned loads are allowed.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn store_i8x32(q: &mut [i8; 32], v: __m256i) {
    // SAFETY: writes the 32 bytes of `q`; unaligned stores are allowed.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), v) }
}

/// Eight little-endian `f32` from 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x8_le(b: &[u8; 32]) -> __m256 {
    // SAFETY: reads the 32 bytes of `b`, which x86 reads as little-endian `f32`.
    unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
}

/// Two little-endian `f16` (e.g. Q4_1's `d`, `m`) → lanes 0 and 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x2(b: &[u8; 4]) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(*b)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16(block: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes(*array_at(block, at));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane1(v: __m128) -> f32 {
    _mm_cvtss_f32(_mm_movehdup_ps(v))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// 16 bytes of nibbles → 32 bytes: the low nibbles (elements 0..16), then the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    let v = load_u8x16(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `i` is 0x10 where bit `i` of `bits` is set, else 0 (Q5_0's fifth bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(bits: u32) -> __m256i {
    // Byte i takes byte i / 8 of `bits`; or-ing each with a mask that clears only its own bit
    // leaves all ones exactly where that bit is set.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let others = _mm256_set1_epi64x(0x7FBF_DFEF_F7FB_FDFE);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// A block of an unsigned 32-element layout as its 32 quants, `d` and `m` (value `d·q + m`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn unsigned_block(layout: Layout32, block: &[u8]) -> (__m256i, f32, f32) {
    // SAFETY: AVX2, FMA and F16C are enabled here; no AVX-512 is asked for.
    unsafe { unsigned_block_with::<false>(layout, block) }
}

/// `unsigned_block`, with Q5_0's fifth bits added through an AVX-512 byte mask if `MASKED`.
///
/// # Safety
/// The caller must be compiled for AVX2, FMA and F16C, and for AVX-512 BW and VL if `MASKED`.
#[inline(always)]
unsafe fn unsigned_block_with<const MASKED: bool>(
    layout: Layout32,
    block: &[u8],
) -> (__m256i, f32, f32) {
    // SAFETY: the caller promises the features these intrinsics need.
    unsafe {
        match layout {
            Layout32::Q4_0 => {
                let d = f16(block, 0);
                (nibbles(array_at(block, 2)), d, -8.0 * d)
            }
            Layout32::Q4_1 => {
                let dm = f16x2(array_at(block, 0));
                (nibbles(array_at(block, 4)), _mm_cvtss_f32(dm), lane1(dm))
            }
            Layout32::Q5_0 => {
                let d = f16(block, 0);
                let bits = u32::from_le_bytes(*array_at(block, 2));
                let low = nibbles(array_at(block, 6));
                let q = if MASKED {
                    _mm256_mask_add_epi8(low, _cvtu32_mask32(bits), low, _mm256_set1_epi8(16))
                } else {
                    _mm256_or_si256(low, fifth_bits(bits))
                };
                (q, d, -16.0 * d)
            }
        }
    }
}

/// Packs up to eight rows of `layout` blocks into a panel (`panel32`); the same bytes as
/// `blocks::pack_panel`. Each block of the eight rows is decoded to eight vectors of eight
/// four-quant groups, and an 8 × 8 transpose of those groups gives the panel's order.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn pack_panel(layout: Layout32, rows: &[&[u8]], out: &mut [u8]) {
    assert!(rows.len() <= panel32::ROWS);
    let bytes = layout.bytes();
    for (b, into) in out
        .as_chunks_mut::<{ panel32::BLOCK_BYTES }>()
        .0
        .iter_mut()
        .enumerate()
    {
        let mut quants = [_mm256_setzero_si256(); panel32::ROWS];
        let (mut d, mut m) = ([0f32; panel32::ROWS], [0f32; panel32::ROWS]);
        for (r, row) in rows.iter().enumerate() {
            (quants[r], d[r], m[r]) = unsigned_block(layout, &row[b * bytes..(b + 1) * bytes]);
        }
        for (g, group) in transpose_8x8_i32(quants).into_iter().enumerate() {
            // SAFETY: writes 32 bytes of `into` at `32 g ≤ 224`; unaligned stores are allowed.
            unsafe { _mm256_storeu_si256(into[32 * g..32 * g + 32].as_mut_ptr().cast(), group) };
        }
        for (at, values) in [(panel32::D_AT, d), (panel32::M_AT, m)] {
            for (r, v) in values.iter().enumerate() {
                into[at + 4 * r..at + 4 * r + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Lane `j` of vector `i` to lane `i` of vector `j`, for 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose_8x8_i32(v: [__m256i; 8]) -> [__m256i; 8] {
    // Pairs of rows interleaved, then pairs of pairs: each 128-bit half then holds four rows'
    // lanes j and j + 4, and the halves are swapped into place last.
    let t: [__m256i; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[i / 2 * 2], v[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    let u: [__m256i; 8] = std::array::from_fn(|i| {
        let base = i / 4 * 4 + i % 4 / 2;
        let (a, b) = (t[base], t[base + 2]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    // `u[k]` (k < 4) holds rows 0–3 of lanes k and k + 4; `u[k + 4]` the same of rows 4–7.
    std::array::from_fn(|j| {
        let (a, b) = (u[j % 4], u[j % 4 + 4]);
        if j < 4 {
            _mm256_permute2x128_si256::<0x20>(a, b)
        } else {
            _mm256_permute2x128_si256::<0x31>(a, b)
        }
    })
}

/// An activation block's integer scale in every pair of 16-bit lanes, for `madd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pairs(scale: &[i16; 2]) -> __m256i {
    let [low, high] = scale.map(|s| s as u16 as u32);
    _mm256_set1_epi32((low | high << 16) as i32)
}

/// The horizontal sums of `M × N` accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsums<const M: usize, const N: usize>(acc: &[[__m256; N]; M]) -> [[f32; N]; M] {
    let mut out = [[0f32; N]; M];
    for (out, acc) in out.iter_mut().zip(acc) {
        for (out, &acc) in out.iter_mut().zip(acc) {
            *out = hsum(acc);
        }
    }
    out
}

/// Q4_0, Q4_1 and Q5_0 blocks:
/// `unit · Σ_blocks d_w · (s · Σ q_w·q_a) + m_w · (s · Σ q_a)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn unsigned32<K: Unsigned32, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8Row<'_>; N],
) -> [[f32; N]; M] {
    // SAFETY: AVX2, FMA and F16C are enabled here; no AVX-512 is asked for.
    unsafe { unsigned32_with::<K, false, M, N>(w, acts) }
}

/// `unsigned32` compiled for AVX-512 BW and VL too, for Q5_0's masked fifth bits (and the
/// extra registers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512bw,avx512vl")]
pub(crate) fn unsigned32_avx512<K: Unsigned32, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8Row<'_>; N],
) -> [[f32; N]; M] {
    // SAFETY: every feature `MASKED` needs is enabled here.
    unsafe { unsigned32_with::<K, true, M, N>(w, acts) }
}

/// # Safety
/// As for `unsigned_block_with`.
#[inline(always)]
unsafe fn unsigned32_with<K: Unsigned32, const MASKED: bool, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8Row<'_>; N],
) -> [[f32; N]; M] {
    // SAFETY: the caller promises the features these intrinsics need.
    unsafe {
        let bytes = K::BLOCK.0;
        // Q4_0 and Q5_0 take a fixed 8 or 16 off every quant: per pair of activations that is
        // one `maddubs` of the activation block, shared by the M weight rows and subtracted
        // from theirs in `i16` (|q·a pairs − offset pairs| ≤ 2·31·127 + 2·16·127 < 2¹⁵), so
        // no float offset is left per weight row and block. Q4_1's `m` is a float of its own.
        let offset = match K::LAYOUT {
            Layout32::Q4_0 => Some(_mm256_set1_epi8(8)),
            Layout32::Q5_0 => Some(_mm256_set1_epi8(16)),
            Layout32::Q4_1 => None,
        };
        let mut acc = [[_mm256_setzero_ps(); N]; M];
        let mut offsets = [[0f32; N]; M];
        for b in 0..w[0].len() / bytes {
            let qa: [__m256i; N] =
                std::array::from_fn(|n| load_i8x32(array_at(acts[n].qs, b * QK)));
            let offset_pairs = offset.map(|o| qa.map(|qa| _mm256_maddubs_epi16(o, qa)));
            for m in 0..M {
                let (qw, d, min) =
                    unsigned_block_with::<MASKED>(K::LAYOUT, &w[m][b * bytes..(b + 1) * bytes]);
                let dw = _mm256_set1_ps(d);
                for n in 0..N {
                    let mut pairs = _mm256_maddubs_epi16(qw, qa[n]);
                    match &offset_pairs {
                        Some(o) => pairs = _mm256_sub_epi16(pairs, o[n]),
                        None => offsets[m][n] = min.mul_add(acts[n].sums[b], offsets[m][n]),
                    }
                    let dot = _mm256_madd_epi16(pairs, scale_pairs(&acts[n].scales[b]));
                    acc[m][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), dw, acc[m][n]);
                }
            }
        }
        let mut out = hsums(&acc);
        for (out, offsets) in out.iter_mut().zip(offsets) {
            for ((out, offset), a) in out.iter_mut().zip(offsets).zip(acts) {
                *out = (*out + offset) * a.unit;
            }
        }
        out
    }
}

/// A panel (`blocks::panel32`) against `N` activation rows: each activation row's outputs for
/// the panel's eight weight rows, `unit · Σ_blocks d_w · (s · Σ q_w·q_a) + m_w · (s · Σ q_a)`.
/// Per block and activation row, eight multiplies of a four-quant group of every weight row by
/// the activations' broadcast group, summed as `i16` four at a time (at most 4 · 2 · 31 · 127
/// < 2¹⁵) and widened by `madd` with the block's scale `s`; then one conversion and two fused
/// multiply-adds cover all eight rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn panel32<const N: usize>(panel: &[u8], acts: &[Q8Row<'_>; N]) -> [[f32; 8]; N] {
    let blocks = panel.as_chunks::<{ panel32::BLOCK_BYTES }>().0;
    let qa: [&[[i8; QK]]; N] = std::array::from_fn(|n| acts[n].qs.as_chunks().0);
    for a in acts {
        assert!(a.scales.len() >= blocks.len() && a.sums.len() >= blocks.len());
    }
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, block) in blocks.iter().enumerate() {
        let mut dots = [_mm256_setzero_si256(); N];
        for half in [0, 4] {
            let mut pairs = [_mm256_setzero_si256(); N];
            for g in half..half + 4 {
                let w = load_u8x32(array_at(block, 32 * g));
                for n in 0..N {
                    let group =
                        i32::from_le_bytes(array_at::<i8, 4>(&qa[n][b], 4 * g).map(|q| q as u8));
                    let products = _mm256_maddubs_epi16(w, _mm256_set1_epi32(group));
                    pairs[n] = _mm256_add_epi16(pairs[n], products);
                }
            }
            for n in 0..N {
                let widened = _mm256_madd_epi16(pairs[n], scale_pairs(&acts[n].scales[b]));
                dots[n] = _mm256_add_epi32(dots[n], widened);
            }
        }
        let d = load_f32x8_le(array_at(block, panel32::D_AT));
        let m = load_f32x8_le(array_at(block, panel32::M_AT));
        for n in 0..N {
            acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[n]), d, acc[n]);
            acc[n] = _mm256_fmadd_ps(m, _mm256_set1_ps(acts[n].sums[b]), acc[n]);
        }
    }
    std::array::from_fn(|n| {
        let mut out = [0f32; 8];
        let scaled = _mm256_mul_ps(acc[n], _mm256_set1_ps(acts[n].unit));
        // SAFETY: writes the 32 bytes of `out`; unaligned stores are allowed.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), scaled) };
        out
    })
}

/// Q8_0: the sign trick, `|q_w| · (q_a · sign q_w)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn q8_0<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8Row<'_>; N],
) -> [[f32; N]; M] {
    let bytes = K::BLOCK.0;
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    for b in 0..w[0].len() / bytes {
        let qa: [&[i8; QK]; N] = std::array::from_fn(|n| array_at(acts[n].qs, b * QK));
        for m in 0..M {
            let block = &w[m][b * bytes..(b + 1) * bytes];
            let dw = _mm256_set1_ps(f16(block, 0));
            let qw = load_u8x32(array_at(block, 2));
            let abs = _mm256_abs_epi8(qw);
            for n in 0..N {
                let signed = _mm256_sign_epi8(load_i8x32(qa[n]), qw);
                let pairs = _mm256_maddubs_epi16(abs, signed);
                let dot = _mm256_madd_epi16(pairs, scale_pairs(&acts[n].scales[b]));
                acc[m][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), dw, acc[m][n]);
            }
        }
    }
    let mut out = hsums(&acc);
    for out in &mut out {
        for (out, a) in out.iter_mut().zip(acts) {
            *out *= a.unit;
        }
    }
    out
}

/// Q4_K: per sub-block `scale·Σ q_w·q_a` in `i32`, then `d·d_a` of that minus `dmin·d_a` of
/// `Σ min·Σ q_a` (from the activations' sums of 16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn q4k<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8KRow<'_>; N],
) -> [[f32; N]; M] {
    let bytes = K::BLOCK.0;
    let low4 = _mm256_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    for b in 0..w[0].len() / bytes {
        let qa: [&[i8; QK_K]; N] = std::array::from_fn(|n| array_at(acts[n].qs, b * QK_K));
        let sums: [&KSums; N] = std::array::from_fn(|n| &acts[n].sums[b]);
        for m in 0..M {
            let block = &w[m][b * bytes..(b + 1) * bytes];
            let d_dmin = f16x2(array_at(block, q4k::D));
            let (d, dmin) = (_mm_cvtss_f32(d_dmin), lane1(d_dmin));
            let (scales, mins) = q4k::scales_mins(array_at(block, q4k::SCALES));
            // Each min twice, to meet the two sums of 16 under its 32 elements.
            let mins = _mm256_cvtepu8_epi16(load_u8x16(&std::array::from_fn(|i| mins[i / 2])));
            let mut dots = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                let qw = load_u8x32(array_at(block, q4k::QS + 32 * c));
                let low = _mm256_and_si256(qw, low4);
                let high = _mm256_and_si256(_mm256_srli_epi16::<4>(qw), low4);
                let scale_low = _mm256_set1_epi16(i16::from(scales[2 * c]));
                let scale_high = _mm256_set1_epi16(i16::from(scales[2 * c + 1]));
                for n in 0..N {
                    let qa_low = load_i8x32(array_at(qa[n], 64 * c));
                    let qa_high = load_i8x32(array_at(qa[n], 64 * c + 32));
                    let p_low = _mm256_madd_epi16(_mm256_maddubs_epi16(low, qa_low), scale_low);
                    let p_high = _mm256_madd_epi16(_mm256_maddubs_epi16(high, qa_high), scale_high);
                    dots[n] = _mm256_add_epi32(dots[n], _mm256_add_epi32(p_low, p_high));
                }
            }
            for n in 0..N {
                let min = _mm256_madd_epi16(load_i16x16(&sums[n].bsums), mins);
                let scale = _mm256_set1_ps(d * sums[n].d);
                let min_scale = _mm256_set1_ps(dmin * sums[n].d);
                acc[m][n] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dots[n]), acc[m][n]);
                acc[m][n] = _mm256_fnmadd_ps(min_scale, _mm256_cvtepi32_ps(min), acc[m][n]);
            }
        }
    }
    hsums(&acc)
}

/// Q6_K: per 16-element sub-block `scale·Σ q_w·q_a` on the stored (+32) quants, less
/// `32·Σ scale·Σ q_a` from the activations' sums of 16, times `d·d_a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn q6k<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[Q8KRow<'_>; N],
) -> [[f32; N]; M] {
    let bytes = K::BLOCK.0;
    let low4 = _mm256_set1_epi8(0x0F);
    let bits45 = _mm256_set1_epi8(0x30);
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    for b in 0..w[0].len() / bytes {
        let qa: [&[i8; QK_K]; N] = std::array::from_fn(|n| array_at(acts[n].qs, b * QK_K));
        let sums: [&KSums; N] = std::array::from_fn(|n| &acts[n].sums[b]);
        for m in 0..M {
            let block = &w[m][b * bytes..(b + 1) * bytes];
            let scales = load_u8x16(array_at(block, q6k::SCALES));
            let mut dots = [_mm256_setzero_si256(); N];
            for half in 0..2 {
                let ql0 = load_u8x32(array_at(block, q6k::QL + 64 * half));
                let ql1 = load_u8x32(array_at(block, q6k::QL + 64 * half + 32));
                let qh = load_u8x32(array_at(block, q6k::QH + 32 * half));
                // Quarter k: a nibble of ql0 or ql1, and bits 2k..2k+2 of qh moved to bits 4..6.
                let quarters = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, low4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bits45),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, low4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), bits45),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
                        _mm256_and_si256(qh, bits45),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), bits45),
                    ),
                ];
                for (k, qw) in quarters.into_iter().enumerate() {
                    // Its 32 elements are sub-blocks `sub` (low 128 bits) and `sub + 1`:
                    // spread their two scales over eight 16-bit lanes each.
                    let sub = (8 * half + 2 * k) as i64;
                    let every_byte = 0x0101_0101_0101_0101;
                    let pick = _mm_set_epi64x(every_byte * (sub + 1), every_byte * sub);
                    let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                    for n in 0..N {
                        let qa = load_i8x32(array_at(qa[n], 128 * half + 32 * k));
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qw, qa), scale);
                        dots[n] = _mm256_add_epi32(dots[n], p);
                    }
                }
            }
            let d = f16(block, q6k::D);
            let scales = _mm256_cvtepi8_epi16(scales);
            for n in 0..N {
                let offset = _mm256_madd_epi16(load_i16x16(&sums[n].bsums), scales);
                let dot = _mm256_sub_epi32(dots[n], _mm256_slli_epi32::<5>(offset));
                let scale = _mm256_set1_ps(d * sums[n].d);
                acc[m][n] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[m][n]);
            }
        }
    }
    hsums(&acc)
}

/// `f32` weights against `f32` rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f32<K: Kernel, const M: usize, const N: usize>(
    w: &WeightRows<'_, M>,
    acts: &[&[f32]; N],
) -> [[f32; N]; M] {
    let cols = w[0].len() / 4;
    let whole = cols / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    for i in (0..whole).step_by(8) {
        let x: [&[f32; 8]; N] = std::array::from_fn(|n| array_at(acts[n], i));
        for m in 0..M {
            let wv = load_f32x8_le(array_at(w[m], 4 * i));
            for n in 0..N {
                acc[m][n] = _mm256_fmadd_ps(wv, load_f32x8(x[n]), acc[m][n]);
            }
        }
    }
    let mut out = hsums(&acc);
    for (out, w_row) in out.iter_mut().zip(w) {
        for (out, a) in out.iter_mut().zip(acts) {
            for (w, &a) in w_row[4 * whole..].chunks_exact(4).zip(&a[whole..]) {
                *out = f32::from_le_bytes(*array_at(w, 0)).mul_add(a, *out);
            }
        }
    }
    out
}
