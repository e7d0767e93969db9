//! The table that ties each weight format to its activation layout and its two kernels.

#[cfg(target_arch = "x86_64")]
use super::dot_avx2;
use super::dot_portable;
use super::q8::{Activations, F32Rows, Q8Blocks, Q8KBlocks};
use super::{BlockFormat, Isa};

/// One activation row as `K`'s kernels read it.
pub(crate) type Row<'a, K> = <<K as Kernel>::Acts as Activations>::Row<'a>;

/// `M` weight rows of one matrix, each its bytes as GGUF stores them.
pub(crate) type WeightRows<'a, const M: usize> = [&'a [u8]; M];

/// A weight format's kernels: the `M × N` dot products of `M` weight rows with `N`
/// activation rows, each weight block decoded once for all `N` rows and each activation
/// block loaded once for all `M`.
pub(crate) trait Kernel: Sized + 'static {
    const FORMAT: BlockFormat;
    type Acts: Activations;

    fn portable<const M: usize, const N: usize>(
        w: &WeightRows<'_, M>,
        acts: &[Row<'_, Self>; N],
    ) -> [[f32; N]; M];

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2<const M: usize, const N: usize>(
        w: &WeightRows<'_, M>,
        acts: &[Row<'_, Self>; N],
    ) -> [[f32; N]; M];

    /// # Safety
    /// The CPU must support `isa`.
    #[inline(always)]
    unsafe fn dot<const M: usize, const N: usize>(
        isa: Isa,
        w: &WeightRows<'_, M>,
        acts: &[Row<'_, Self>; N],
    ) -> [[f32; N]; M] {
        match isa {
            // SAFETY: the caller promises the CPU supports AVX2 (and FMA, F16C with it).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { Self::avx2(w, acts) },
            _ => Self::portable(w, acts),
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
            const FORMAT: BlockFormat = BlockFormat::$format;
            type Acts = $acts;

            #[inline(always)]
            fn portable<const M: usize, const N: usize>(
                w: &WeightRows<'_, M>,
                acts: &[Row<'_, Self>; N],
            ) -> [[f32; N]; M] {
                dot_portable::$portable::<Self, M, N>(w, acts)
            }

            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn avx2<const M: usize, const N: usize>(
                w: &WeightRows<'_, M>,
                acts: &[Row<'_, Self>; N],
            ) -> [[f32; N]; M] {
                // SAFETY: our caller promises AVX2, FMA and F16C.
                unsafe { dot_avx2::$avx2::<Self, M, N>(w, acts) }
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
