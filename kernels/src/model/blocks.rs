//! The shared building blocks of every family, on plain `f32` rows: RMSNorm, RoPE,
//! gated feed-forward activations. Matmuls live in `linear.rs`, attention in `crate::attention`.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::attention::tiled::Avx2Fma;
use crate::attention::tiled::{exp_nonpositive, Portable, Simd};

/// RMSNorm of each `dim`-wide row of `x`, in place: `x / rms(x) * weight`.
///
/// GGUF converters store Gemma's `(1 + w)` norm weights with the 1 already added, so one
/// form serves every family.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for row in x.chunks_exact_mut(dim) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v *= inv * w;
        }
    }
}

/// L2 normalisation of each `dim`-wide row (Llama 4's weightless QK-norm).
pub fn l2_norm(x: &mut [f32], dim: usize, eps: f32) {
    for row in x.chunks_exact_mut(dim) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's "normal" RoPE, used by Llama GGUFs.
    Interleaved,
    /// Halves `(i, i + d/2)`: GPT-NeoX style, used by Qwen and Gemma.
    Neox,
}

/// Rotary position embedding for one kind of layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated dimensions per head (the rest pass through).
    pub dims: usize,
    /// `1 / base^(2i/dims)` for each pair.
    inv_freq: Vec<f32>,
    /// Linear position scaling: positions are divided by this.
    pub position_scale: f32,
}

impl Rope {
    pub fn new(style: RopeStyle, dims: usize, base: f32, position_scale: f32) -> Self {
        let inv_freq = (0..dims / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / dims as f32))
            .collect();
        Self {
            style,
            dims,
            inv_freq,
            position_scale,
        }
    }

    /// Rotates `x`, laid out `[n_tokens, n_heads, head_dim]`, for tokens at positions
    /// `first_position..`.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, head_dim: usize, first_position: usize) {
        let half = self.dims / 2;
        let mut cos = vec![0f32; half];
        let mut sin = vec![0f32; half];
        for (t, token) in x.chunks_exact_mut(n_heads * head_dim).enumerate() {
            let pos = (first_position + t) as f32 / self.position_scale;
            for i in 0..half {
                let (s, c) = (pos * self.inv_freq[i]).sin_cos();
                sin[i] = s;
                cos[i] = c;
            }
            for head in token.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = match self.style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

/// The gate activation of a gated feed-forward layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen).
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluTanh,
}

impl Activation {
    pub fn apply(self, x: f32) -> f32 {
        self.apply_with(Portable, x)
    }

    /// `apply` in straight-line arithmetic that vectorises. Both are `x · σ(z)`: SiLU with
    /// `z = x`, and GELU's tanh form with `z = 2y`, as `(1 + tanh y) / 2 = σ(2y)` (which also
    /// keeps its far negative tail, where `1 + tanh y` would cancel to 0). `σ` needs only
    /// `e = exp(−|z|)`; the sign of `z` picks `1 / (1 + e)` or `e / (1 + e)`.
    #[inline(always)]
    fn apply_with(self, simd: impl Simd, x: f32) -> f32 {
        let z = match self {
            Activation::Silu => x,
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                2.0 * SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)
            }
        };
        let e = exp_nonpositive(simd, -z.abs());
        let numerator = if z < 0.0 { x * e } else { x };
        numerator / (1.0 + e)
    }
}

/// `exp(x)` for `x ≤ 0` in plain arithmetic that vectorises (about 2 ulp; 0 below −87),
/// for callers outside the crate's SIMD code.
#[inline(always)]
pub fn exp_of_nonpositive(x: f32) -> f32 {
    exp_nonpositive(Portable, x)
}

/// Elements of `gated` per parallel task.
const GATED_CHUNK: usize = 16 * 1024;

/// `gate <- act(gate) * up`, elementwise, on the pool when long.
pub fn gated(gate: &mut [f32], up: &[f32], activation: Activation) {
    let chunk = |(gate, up): (&mut [f32], &[f32])| {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = Avx2Fma::detect() {
            // SAFETY: `detect` found AVX2 and FMA.
            return unsafe { gated_avx2_fma(simd, gate, up, activation) };
        }
        gated_with(Portable, gate, up, activation);
    };
    if gate.len() > GATED_CHUNK {
        let chunks = gate
            .par_chunks_mut(GATED_CHUNK)
            .zip(up.par_chunks(GATED_CHUNK));
        chunks.for_each(chunk);
    } else {
        chunk((gate, up));
    }
}

#[inline(always)]
fn gated_with(simd: impl Simd, gate: &mut [f32], up: &[f32], activation: Activation) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = activation.apply_with(simd, *g) * u;
    }
}

/// `gated_with` compiled with AVX2 and FMA, so it vectorises eight wide.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2_fma(simd: Avx2Fma, gate: &mut [f32], up: &[f32], activation: Activation) {
    gated_with(simd, gate, up, activation);
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `[rows, heads, dim]` → `[heads, rows, dim]`.
pub fn to_head_major(x: &[f32], rows: usize, heads: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for r in 0..rows {
        for h in 0..heads {
            let src = (r * heads + h) * dim;
            let dst = (h * rows + r) * dim;
            out[dst..dst + dim].copy_from_slice(&x[src..src + dim]);
        }
    }
    out
}

/// `[heads, rows, dim]` → `[rows, heads, dim]`.
pub fn to_row_major(x: &[f32], rows: usize, heads: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for h in 0..heads {
        for r in 0..rows {
            let src = (h * rows + r) * dim;
            let dst = (r * heads + h) * dim;
            out[dst..dst + dim].copy_from_slice(&x[src..src + dim]);
        }
    }
    out
}

/// Softmax over a row, in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The activations in f64, from their definitions (GELU's `(1 + tanh y) / 2` written
    /// as `1 / (1 + e^−2y)`, equal, but free of cancellation in f64 too).
    fn reference(activation: Activation, x: f64) -> f64 {
        match activation {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::GeluTanh => {
                let y = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x.powi(3));
                let tanh_form = 0.5 * x * (1.0 + y.tanh());
                let logistic_form = x / (1.0 + (-2.0 * y).exp());
                assert!((tanh_form - logistic_form).abs() <= 1e-12 * x.abs().max(1.0));
                logistic_form
            }
        }
    }

    #[test]
    fn gated_activations_match_their_definitions() {
        // Long enough to run in parallel chunks, from −100 to 100.
        let n = 3 * GATED_CHUNK + 5;
        let x: Vec<f32> = (0..n)
            .map(|i| -100.0 + 200.0 * i as f32 / n as f32)
            .collect();
        let up: Vec<f32> = (0..n).map(|i| 1.0 + (i % 3) as f32).collect();
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let mut gate = x.clone();
            gated(&mut gate, &up, activation);
            for ((&g, &x), &u) in gate.iter().zip(&x).zip(&up) {
                let want = reference(activation, f64::from(x)) * f64::from(u);
                let error = (f64::from(g) - want).abs();
                assert!(
                    // f32's rounding of `z` (up to |z| ≈ 90) moves `e^−|z|` by up to
                    // about 1e-5 of itself; below e^−87, where exp stops, values are 0 to
                    // within 1e-30.
                    error <= 2e-5 * want.abs() + 1e-30,
                    "{activation:?}({x}) · {u} = {g}, want {want}"
                );
            }
        }
    }
}
