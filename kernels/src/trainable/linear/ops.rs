//! Small differentiable building blocks written with plain candle ops, shared by the
//! linear family and Log-Linear attention (fused candle ops would drop gradients).

use candle_core::{Result, Tensor, D};

/// Added under square roots and denominators so that an all-zero row stays finite.
const EPS: f64 = 1e-6;

/// `log(1 + e^x)`, in the form that neither overflows for large `x` nor loses the small values
/// of very negative `x`: `relu(x) + log(1 + e^-|x|)`.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// `log σ(x) = -softplus(-x)`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)?.neg()
}

/// `σ(x)`, through `log_sigmoid` so that it is stable for every `x`.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    log_sigmoid(x)?.exp()
}

/// The positive feature map `elu(x) + 1` of Katharopoulos et al. (2020).
pub fn elu_plus_one(x: &Tensor) -> Result<Tensor> {
    x.elu(1.0)? + 1.0
}

/// Scales each vector along the last axis to unit length.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + EPS)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// Scales each vector along the last axis to unit root-mean-square (no learned gain).
pub fn rms_normalize(x: &Tensor) -> Result<Tensor> {
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + EPS)?.sqrt()?;
    x.broadcast_div(&rms)
}

/// `[batch, seq, heads * dim]` → head-major `[batch, heads, seq, dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, seq, width) = x.dims3()?;
    x.reshape((batch, seq, heads, width / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Head-major `[batch, heads, seq, dim]` → `[batch, seq, heads * dim]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (batch, heads, seq, dim) = x.dims4()?;
    x.transpose(1, 2)?.reshape((batch, seq, heads * dim))
}

/// Appends a column of ones to the values, so that the state also accumulates the
/// normaliser `Σ weight · k` and the last output column is the denominator.
pub fn append_ones(v: &Tensor) -> Result<Tensor> {
    let ones = v.narrow(D::Minus1, 0, 1)?.ones_like()?;
    Tensor::cat(&[v, &ones], D::Minus1)
}

/// Divides the value columns of an output made with `append_ones` values by its last
/// column, the normaliser.
pub fn divide_by_normalizer(out: &Tensor) -> Result<Tensor> {
    let width = out.dim(D::Minus1)?;
    let values = out.narrow(D::Minus1, 0, width - 1)?;
    let normalizer = (out.narrow(D::Minus1, width - 1, 1)? + EPS)?;
    values.broadcast_div(&normalizer)
}

/// The causal mask of `n` positions: a lower-triangular `[n, n]` matrix of ones, diagonal
/// included.
pub fn causal_mask(n: usize, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..n * n)
        .map(|index| f32::from(u8::from(index % n <= index / n)))
        .collect();
    Tensor::from_vec(values, (n, n), device)
}

/// Mixed heads `[batch, heads, seq, dim]`, each RMS-normalised (no gain), merged and
/// projected by `w_o` `[heads * dim, d_model]`: the output stage of every mixer here.
pub fn project_heads(mixed: &Tensor, w_o: &Tensor) -> Result<Tensor> {
    merge_heads(&rms_normalize(mixed)?)?.broadcast_matmul(w_o)
}
