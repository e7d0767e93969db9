//! The table that ties each weight format to its activation layout and its two kernels.

use super::blocks::{Layout32, QK, QK_K};
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
    /// Bytes of one weight block, and the elements in it.
    const BLOCK: (usize, usize);
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

    /// The AVX2 kernel compiled for `Isa::Avx512`, where that helps.
    ///
    /// # Safety
    /// The CPU must support `Isa::Avx512`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn avx512<const M: usize, const N: usize>(
        w: &WeightRows<'_, M>,
        acts: &[Row<'_, Self>; N],
    ) -> [[f32; N]; M] {
        // SAFETY: `Avx512` includes AVX2, FMA and F16C.
        unsafe { Self::avx2(w, acts) }
    }

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
            // SAFETY: as above, for AVX-512 BW and VL too.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { Self::avx512(w, acts) },
            _ => Self::portable(w, acts),
        }
    }
}

/// A kernel for an unsigned 32-element layout (the `unsigned32` kernels read `LAYOUT`).
pub(crate) trait Unsigned32: Kernel<Acts = Q8Blocks> {
    const LAYOUT: Layout32;
}

/// Declares a layout's marker type and its `Kernel` impl; the kernels take the marker as a
/// type parameter to read its constants.
macro_rules! kernel {
    ($format:ident, $block:expr, $acts:ty, $portable:ident, $avx2:ident $(, $avx512:ident)?) => {
        #[allow(non_camel_case_types)] // named as ggml names the format
        pub(crate) struct $format;

        impl Kernel for $format {
            const BLOCK: (usize, usize) = $block;
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

            $(
                #[cfg(target_arch = "x86_64")]
                #[inline(always)]
                unsafe fn avx512<const M: usize, const N: usize>(
                    w: &WeightRows<'_, M>,
                    acts: &[Row<'_, Self>; N],
                ) -> [[f32; N]; M] {
                    // SAFETY: our caller promises AVX-512 BW and VL with AVX2, FMA and F16C.
                    unsafe { dot_avx2::$avx512::<Self, M, N>(w, acts) }
                }
            )?
        }
    };
}

/// Also declares the layout's `Unsigned32` impl.
macro_rules! unsigned32 {
    ($layout:ident) => {
        kernel!(
            $layout,
            (Layout32::$layout.bytes(), QK),
            Q8Blocks,
            unsigned32,
            unsigned32,
            unsigned32_avx512
        );

        impl Unsigned32 for $layout {
            const LAYOUT: Layout32 = Layout32::$layout;
        }
    };
}

kernel!(F32, (4, 1), F32Rows, f32, f32);
unsigned32!(Q4_0);
unsigned32!(Q4_1);
unsigned32!(Q5_0);
kernel!(
    Q8_0,
    (BlockFormat::Q8_0.block_bytes(), QK),
    Q8Blocks,
    q8_0,
    q8_0
);
kernel!(
    Q4K,
    (BlockFormat::Q4K.block_bytes(), QK_K),
    Q8KBlocks,
    q4k,
    q4k
);
kernel!(
    Q6K,
    (BlockFormat::Q6K.block_bytes(), QK_K),
    Q8KBlocks,
    q6k,
    q6k
);
