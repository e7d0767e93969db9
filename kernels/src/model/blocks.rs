//! The shared building blocks of every family, on plain `f32` rows: RMSNorm, RoPE,
//! gated feed-forward activations. Matmuls live in `linear.rs`, attention in `crate::attention`.

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
        match self {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
            }
        }
    }
}

/// `gate <- act(gate) * up`, elementwise.
pub fn gated(gate: &mut [f32], up: &[f32], activation: Activation) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = activation.apply(*g) * u;
    }
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
