//! Our own CPU matmul for GGUF weights in their quantized block formats.
//!
//! candle-core's CPU path has no SIMD kernel for some formats we depend on (Q4_1 runs its
//! scalar fallback), so we do as llama.cpp does on CPU: quantize each activation row once to
//! 8-bit blocks (`q8`), take integer dot products against the weight blocks as GGUF stores
//! them (`dot_avx2`, chosen at run time, or `dot_portable`), and spread the output over
//! rayon's pool (`matmul`). `blocks` defines the byte layouts; `kernel` ties each format to
//! its activation layout and kernels.
//!
//! Accuracy: the only approximation is the activations' 8-bit quantization, at most
//! `amax / 254` per element (`amax` the largest magnitude in its block of 32, or 256 for the
//! K-quants), plus `row_amax / (254 · 16383)` for the 32-element formats, whose block scales
//! are whole multiples of a unit per row (`q8`); the weights are used exactly as stored.
//! `f32` weights take `f32` activations.

mod blocks;
#[cfg(target_arch = "x86_64")]
mod dot_avx2;
mod dot_portable;
mod kernel;
mod matmul;
mod q8;

use std::fmt;

use candle_core::quantized::QTensor;

pub use blocks::BlockFormat;

use crate::Result;

/// The kernels a matmul runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Scalar Rust, on every CPU.
    Portable,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// `Avx2` plus AVX-512 BW and VL: the same kernels, but Q5_0's fifth bits go in through
    /// a byte mask (two instructions, not six), which single-thread decode is bound by.
    Avx512,
}

impl Isa {
    /// The fastest kernels this CPU runs.
    pub fn best() -> Self {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.is_supported())
            .unwrap_or(Isa::Portable)
    }

    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }
}

/// A GGUF weight matrix `[out_dim, in_dim]` in its quantized block format, with our own
/// kernels.
pub struct QuantMatrix {
    format: BlockFormat,
    out_dim: usize,
    in_dim: usize,
    /// Bytes of one weight row.
    row_bytes: usize,
    /// The tensor's bytes: `out_dim` rows of `in_dim / block` blocks, as GGUF stores them.
    data: Vec<u8>,
}

impl fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("format", &self.format)
            .field("out_dim", &self.out_dim)
            .field("in_dim", &self.in_dim)
            .finish_non_exhaustive()
    }
}

impl QuantMatrix {
    /// `Some` for the formats in `BlockFormat`, `None` for the rest (leave those to candle's
    /// `QMatMul`). Errors if the tensor is not 2-D or its data does not fit its shape.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let Some(format) = BlockFormat::from_dtype(t.dtype()) else {
            return Ok(None);
        };
        let (out_dim, in_dim) = t.shape().dims2()?;
        let malformed = |why: String| -> crate::Error {
            candle_core::Error::Msg(format!("{format:?} matrix [{out_dim}, {in_dim}]: {why}"))
                .into()
        };
        let block = format.block_elems();
        if !in_dim.is_multiple_of(block) {
            return Err(malformed(format!("rows are not whole blocks of {block}")));
        }
        let gguf_row_bytes = in_dim / block * format.block_bytes();
        let data = t.data()?;
        if Some(data.len()) != out_dim.checked_mul(gguf_row_bytes) {
            return Err(malformed(format!(
                "{} bytes of data, but the shape needs {out_dim} × {gguf_row_bytes}",
                data.len()
            )));
        }
        Ok(Some(Self {
            format,
            out_dim,
            in_dim,
            row_bytes: gguf_row_bytes,
            data: data.into_owned(),
        }))
    }

    /// The same bytes as a candle `QTensor` again, for dequantizing or handing to candle.
    pub fn to_qtensor(&self) -> Result<QTensor> {
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Borrowed(&self.data[..]),
            &candle_core::Device::Cpu,
            self.format.dtype(),
        )?;
        Ok(QTensor::new(storage, (self.out_dim, self.in_dim))?)
    }

    /// Weight row `o`, as held.
    fn row(&self, o: usize) -> &[u8] {
        &self.data[o * self.row_bytes..(o + 1) * self.row_bytes]
    }

    pub fn format(&self) -> BlockFormat {
        self.format
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// `y[r, o] = Σ_i x[r, i] · W[o, i]`: `x` is `[rows, in_dim]`, `y` is `[rows, out_dim]`.
    ///
    /// # Panics
    /// If `x` or `y` does not have that many values.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.matmul_with(Isa::best(), x, rows, y)
    }

    /// `matmul` with the given kernels.
    ///
    /// # Panics
    /// If this CPU does not support `isa`, or `x` or `y` does not have the right length.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) {
        assert_eq!(
            x.len(),
            rows * self.in_dim,
            "x must be [{rows}, {}]",
            self.in_dim
        );
        assert_eq!(
            y.len(),
            rows * self.out_dim,
            "y must be [{rows}, {}]",
            self.out_dim
        );
        if rows == 0 || self.out_dim == 0 {
            return;
        }
        if self.in_dim == 0 {
            y.fill(0.0);
            return;
        }
        let run = match self.format {
            BlockFormat::F32 => matmul::run::<kernel::F32>,
            BlockFormat::Q4_0 => matmul::run_unsigned32::<kernel::Q4_0>,
            BlockFormat::Q4_1 => matmul::run_unsigned32::<kernel::Q4_1>,
            BlockFormat::Q5_0 => matmul::run_unsigned32::<kernel::Q5_0>,
            BlockFormat::Q8_0 => matmul::run::<kernel::Q8_0>,
            BlockFormat::Q4K => matmul::run::<kernel::Q4K>,
            BlockFormat::Q6K => matmul::run::<kernel::Q6K>,
        };
        run(self, isa, x, rows, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_candles() {
        for format in BlockFormat::ALL {
            let dtype = format.dtype();
            assert_eq!(BlockFormat::from_dtype(dtype), Some(format));
            assert_eq!(format.block_elems(), dtype.block_size(), "{format:?}");
            assert_eq!(format.block_bytes(), dtype.type_size(), "{format:?}");
        }
    }
}
