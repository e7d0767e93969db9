//! The table that ties each weight format to its activation layout and its two kernels.

#[cfg(target_arch = "x86_64")]
use super::dot_avx2;
use super::dot_portable;
use super::q8::{Activations, F32Rows, Q8Blocks, Q8KBlocks};
use super::{Isa, WeightFormat};

/// One activation row as `K`'s kernels read it.
pub(crate) type Row<'a, K> = <<K as Kernel>::Acts as Activations>::Row<'a>;

/// A weight format's kernels: the dot products of one weight row (its bytes as GGUF stores
/// them) with `N` activation rows, decoding each weight block once for all `N`.
pub(crate) trait Kernel: Sized + 'static {
    const FORMAT: WeightFormat;
    type Acts: Activations;

    fn portable<const N: usize>(w_row: &[u8], acts: &[Row<'_, Self>; N]) -> [f32; N];

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2<const N: usize>(w_row: &[u8], acts: &[Row<'_, Self>; N]) -> [f32; N];

    /// # Safety
    /// The CPU must support `isa`.
    #[inline(always)]
    unsafe fn dot<const N: usize>(isa: Isa, w_row: &[u8], acts: &[Row<'_, Self>; N]) -> [f32; N] {
        match isa {
            // SAFETY: the caller promises the CPU supports AVX2 (and FMA, F16C with it).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { Self::avx2(w_row, acts) },
            _ => Self::portable(w_row, acts),
        }
    }
}

/// Declares a format's marker type and its `Kernel` impl; the kernels take the marker as a
/// type parameter to read its `FORMAT`.
macro_rules! kernel {
    ($format:ident, $acts:ty, $portable:ident, $avx2:ident) => {
        #[allow(non_camel_case_types)] // named as ggml names the format
        pub(crate) struct $format;

        impl Kernel for $format {
            const FORMAT: WeightFormat = WeightFormat::$format;
            type Acts = $acts;

            #[inline(always)]
            fn portable<const N: usize>(w_row: &[u8], acts: &[Row<'_, Self>; N]) -> [f32; N] {
                dot_portable::$portable::<Self, N>(w_row, acts)
            }

            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn avx2<const N: usize>(
                w_row: &[u8],
                acts: &[Row<'_, Self>; N],
            ) -> [f32; N] {
                // SAFETY: our caller promises AVX2, FMA and F16C.
                unsafe { dot_avx2::$avx2::<Self, N>(w_row, acts) }
            }
        }
    };
}

kernel!(F32, F32Rows, f32, f32);
kernel!(Q4_0, Q8Blocks, block32, unsigned32);
kernel!(Q4_1, Q8Blocks, block32, unsigned32);
kernel!(Q5_0, Q8Blocks, block32, unsigned32);
kernel!(Q8_0, Q8Blocks, block32, q8_0);
kernel!(Q4K, Q8KBlocks, q4k, q4k);
kernel!(Q6K, Q8KBlocks, q6k, q6k);
