//! The GGUF weight formats we have kernels for: their block sizes, and the portable decoders
//! that define each byte layout (the scalar kernels use them; the AVX2 kernels must agree).
//!
//! Layouts, as ggml writes them (all little-endian, `f16` scales):
//! - Q4_0 (18 bytes / 32): `d`, 16 bytes of nibbles; value `d · (q − 8)`.
//! - Q4_1 (20 bytes / 32): `d`, `m`, 16 bytes of nibbles; value `d · q + m`.
//! - Q5_0 (22 bytes / 32): `d`, 32 high bits, 16 bytes of nibbles; value `d · (q − 16)`.
//! - Q8_0 (34 bytes / 32): `d`, 32 `i8`; value `d · q`.
//!
//! In the nibble formats byte `j` holds element `j` in its low nibble and element `j + 16` in
//! its high one. The K-quants (256 elements a block) are described at their decoders.

use candle_core::quantized::GgmlDType;

/// Elements in a Q8_0-style block.
pub(crate) const QK: usize = 32;
/// Elements in a K-quant super-block.
pub(crate) const QK_K: usize = 256;

/// The block format of a GGUF weight matrix with kernels in this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    F32,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl BlockFormat {
    pub const ALL: [BlockFormat; 7] = [
        BlockFormat::F32,
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q8_0,
        BlockFormat::Q4K,
        BlockFormat::Q6K,
    ];

    /// `None` for the GGUF types we leave to candle.
    pub fn from_dtype(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::F32 => Self::F32,
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    pub fn dtype(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// Elements per block; a row's length must be a multiple of it.
    /// The format's name as ggml spells it, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
        }
    }

    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => QK,
            Self::Q4K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block as GGUF stores it.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }
}

/// The GGUF layouts of 32-element blocks that the `unsigned32` kernels read as `d · q + m`
/// with unsigned `q` below 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout32 {
    Q4_0,
    Q4_1,
    Q5_0,
}

impl Layout32 {
    pub const fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => BlockFormat::Q4_0.block_bytes(),
            Self::Q4_1 => BlockFormat::Q4_1.block_bytes(),
            Self::Q5_0 => BlockFormat::Q5_0.block_bytes(),
        }
    }
}

/// Eight weight rows of 32-element blocks interleaved for prefill (a "panel"), 320 bytes a
/// block: the eight rows' quants as bytes, four at a time row after row (byte `32g + 4r + j`
/// is quant `4g + j` of row `r`), then the rows' `d`, then their `m`, as `f32`; value
/// `d · q + m`. One 32-byte load holds four quants of every row, so a broadcast group of four
/// activations meets all eight rows in one multiply, and the float work of a block (a
/// conversion and two fused multiply-adds) serves eight rows at once. Decoding a Q5_0 block
/// also costs more than its dot products, so prefill packs a tile's weight rows once and runs
/// all its activation rows against them.
pub(crate) mod panel32 {
    use super::{array_at, f32_at, QK};

    /// Weight rows in a panel.
    pub const ROWS: usize = 8;
    /// Bytes of one block of a panel.
    pub const BLOCK_BYTES: usize = ROWS * (QK + 8);
    /// Where a panel block's `d` run starts; its `m` run follows.
    pub const D_AT: usize = ROWS * QK;
    pub const M_AT: usize = D_AT + 4 * ROWS;

    /// Quant `i` of row `r` in a panel block.
    pub fn quant(block: &[u8; BLOCK_BYTES], r: usize, i: usize) -> u8 {
        block[32 * (i / 4) + 4 * r + i % 4]
    }

    pub fn d(block: &[u8; BLOCK_BYTES], r: usize) -> f32 {
        f32_at(block, D_AT + 4 * r)
    }

    pub fn m(block: &[u8; BLOCK_BYTES], r: usize) -> f32 {
        f32_at(block, M_AT + 4 * r)
    }

    /// Writes row `r` of a panel block.
    pub fn write(block: &mut [u8; BLOCK_BYTES], r: usize, q: &[u8; QK], d: f32, m: f32) {
        for g in 0..QK / 4 {
            let at = 32 * g + 4 * r;
            block[at..at + 4].copy_from_slice(array_at::<u8, 4>(q, 4 * g));
        }
        block[D_AT + 4 * r..D_AT + 4 * r + 4].copy_from_slice(&d.to_le_bytes());
        block[M_AT + 4 * r..M_AT + 4 * r + 4].copy_from_slice(&m.to_le_bytes());
    }
}

/// `L` elements of `s` starting at `at`, as an array (bounds-checked, so the kernels' loads
/// through array references are in bounds by type).
#[inline(always)]
pub(crate) fn array_at<T, const L: usize>(s: &[T], at: usize) -> &[T; L] {
    s[at..at + L].try_into().expect("a range of length L")
}

/// The little-endian `f32` at `at`.
#[inline(always)]
pub(crate) fn f32_at(s: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(*array_at(s, at))
}

/// The little-endian `f16` at `at`, as `f32`.
#[inline(always)]
pub(crate) fn f16_at(s: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes(*array_at::<u8, 2>(s, at)).to_f32()
}

/// A 32-element block as `d · q + m` with small integer `q`: how every 32-element kernel sees
/// its weights. Q4_0 and Q5_0 use unsigned `q` and fold their offset into `m`, as the AVX2
/// kernels do, so both paths sum the same integers.
pub(crate) struct Block32 {
    pub q: [i8; QK],
    pub d: f32,
    pub m: f32,
}

/// Decodes one block of an unsigned 32-element layout.
#[inline(always)]
pub(crate) fn decode_unsigned32(layout: Layout32, block: &[u8]) -> Block32 {
    let nibbles = |qs: &[u8; 16]| -> [u8; QK] {
        std::array::from_fn(|i| {
            if i < 16 {
                qs[i] & 0x0F
            } else {
                qs[i - 16] >> 4
            }
        })
    };
    let (q, d, m) = match layout {
        Layout32::Q4_0 => {
            let d = f16_at(block, 0);
            (nibbles(array_at(block, 2)), d, -8.0 * d)
        }
        Layout32::Q4_1 => (
            nibbles(array_at(block, 4)),
            f16_at(block, 0),
            f16_at(block, 2),
        ),
        Layout32::Q5_0 => {
            let d = f16_at(block, 0);
            let high = u32::from_le_bytes(*array_at(block, 2));
            let low = nibbles(array_at(block, 6));
            let q = std::array::from_fn(|i| low[i] | (((high >> i) & 1) as u8) << 4);
            (q, d, -16.0 * d)
        }
    };
    Block32 {
        q: q.map(|q| q as i8),
        d,
        m,
    }
}

/// Decodes one Q8_0 block.
#[inline(always)]
pub(crate) fn decode_q8_0(block: &[u8]) -> Block32 {
    Block32 {
        q: array_at::<u8, QK>(block, 2).map(|b| b as i8),
        d: f16_at(block, 0),
        m: 0.0,
    }
}

/// Packs up to eight rows of `layout` blocks into a panel (`panel32`), in `out`, with the
/// portable decoder; rows past `rows.len()` are zeros.
pub(crate) fn pack_panel(layout: Layout32, rows: &[&[u8]], out: &mut [u8]) {
    out.fill(0);
    let blocks = out.as_chunks_mut::<{ panel32::BLOCK_BYTES }>().0;
    for (r, row) in rows.iter().enumerate() {
        for (block, into) in row.chunks_exact(layout.bytes()).zip(blocks.iter_mut()) {
            let w = decode_unsigned32(layout, block);
            panel32::write(into, r, &w.q.map(|q| q as u8), w.d, w.m);
        }
    }
}

/// Q4_K (144 bytes / 256): `d`, `dmin`, 12 bytes of 6-bit scales and mins for the eight
/// 32-element sub-blocks, then 128 bytes of nibbles. Element `64c + i` (i < 32) is the low
/// nibble of byte `32c + i`, element `64c + 32 + i` its high nibble; element `e` is
/// `d · scale[e / 32] · q − dmin · min[e / 32]`.
pub(crate) mod q4k {
    pub const D: usize = 0;
    pub const DMIN: usize = 2;
    pub const SCALES: usize = 4;
    pub const QS: usize = 16;

    /// The eight scales and eight mins, unpacked from their 12 bytes.
    #[inline(always)]
    pub fn scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
        let mut scales = [0; 8];
        let mut mins = [0; 8];
        for j in 0..4 {
            scales[j] = s[j] & 63;
            mins[j] = s[j + 4] & 63;
            scales[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
            mins[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
        }
        (scales, mins)
    }

    /// Quant `e` (0..256) of a block, in 0..16.
    #[inline(always)]
    pub fn quant(block: &[u8], e: usize) -> u8 {
        let byte = block[QS + 32 * (e / 64) + e % 32];
        if e % 64 < 32 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }
}

/// Q6_K (210 bytes / 256): 128 bytes of low nibbles `ql`, 64 bytes of 2-bit highs `qh`, 16
/// `i8` scales, `d`. Each half `h` of 128 elements uses `ql[64h..]` and `qh[32h..]`: element
/// `128h + 32k + i` (k < 4, i < 32) takes the low (k < 2) or high nibble of
/// `ql[64h + 32(k % 2) + i]` and bits `2k..2k+2` of `qh[32h + i]`; it is
/// `d · scale[e / 16] · (q − 32)`.
pub(crate) mod q6k {
    pub const QL: usize = 0;
    pub const QH: usize = 128;
    pub const SCALES: usize = 192;
    pub const D: usize = 208;

    /// Quant `e` (0..256) of a block, in 0..64.
    #[inline(always)]
    pub fn quant(block: &[u8], e: usize) -> u8 {
        let (half, k, i) = (e / 128, (e % 128) / 32, e % 32);
        let low = block[QL + 64 * half + 32 * (k % 2) + i];
        let low = if k < 2 { low & 0x0F } else { low >> 4 };
        let high = (block[QH + 32 * half + i] >> (2 * k)) & 3;
        low | (high << 4)
    }

    #[inline(always)]
    pub fn scale(block: &[u8], sub_block: usize) -> i8 {
        block[SCALES + sub_block] as i8
    }
}
