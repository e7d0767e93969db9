//! What the softmax mechanisms (Multi-Token, Differential, MLA) and the recommender's
//! transformer share, written with plain differentiable ops: candle's fused
//! `softmax_last_dim` drops gradients.

use candle_core::{Device, Result, Tensor, D};

/// `[n_queries, n_keys]`, 1 where the query at absolute position `first_query + i` may see
/// key `j` (that is `j <= first_query + i`), else 0.
pub(crate) fn visible(
    n_queries: usize,
    n_keys: usize,
    first_query: usize,
    device: &Device,
) -> Result<Tensor> {
    let mask: Vec<u8> = (0..n_queries)
        .flat_map(|i| (0..n_keys).map(move |j| u8::from(j <= first_query + i)))
        .collect();
    Tensor::from_vec(mask, (n_queries, n_keys), device)
}

/// `scores` (`[.., n_queries, n_keys]`) with the entries `visible` hides set to `fill`.
pub fn hide(scores: &Tensor, visible: &Tensor, fill: f32) -> Result<Tensor> {
    let filler = Tensor::full(fill, scores.shape(), scores.device())?.to_dtype(scores.dtype())?;
    visible
        .broadcast_as(scores.shape())?
        .where_cond(scores, &filler)
}

/// Softmax over the last axis as exp / sum, with the row maximum subtracted for range.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    // The maximum only shifts every entry of a row alike, which the ratio cancels: no
    // gradient needs to flow through it.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Causal softmax of `scores` `[.., n_queries, n_keys]` whose first query row sits at
/// absolute position `first_query`.
pub(crate) fn causal_softmax(scores: &Tensor, first_query: usize) -> Result<Tensor> {
    let (n_queries, n_keys) = last_two(scores)?;
    let mask = visible(n_queries, n_keys, first_query, scores.device())?;
    softmax_last_dim(&hide(scores, &mask, f32::NEG_INFINITY)?)
}

fn last_two(t: &Tensor) -> Result<(usize, usize)> {
    let dims = t.dims();
    match dims.len() {
        n if n >= 2 => Ok((dims[n - 2], dims[n - 1])),
        _ => candle_core::bail!("attention scores need at least 2 dims, got {dims:?}"),
    }
}

/// `x` `[batch, seq, heads · dim]` → `[batch, heads, seq, dim]`.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, width) = x.dims3()?;
    x.reshape((b, t, heads, width / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[batch, heads, seq, dim]` → `[batch, seq, heads · dim]`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}

/// `x` `[batch, seq, in]` times `w` `[in, out]`.
pub(crate) fn project(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(w)
}

/// Appends `new` to `cached` along the sequence axis `dim`; both lead with the batch axis.
pub(crate) fn append(cached: &Option<Tensor>, new: &Tensor, dim: usize) -> crate::Result<Tensor> {
    match cached {
        Some(cached) if cached.dim(0)? != new.dim(0)? => {
            Err(crate::Error::InvalidRequest(format!(
                "the cache holds a batch of {} sequences but the input has {}: start a new cache",
                cached.dim(0)?,
                new.dim(0)?
            )))
        }
        Some(cached) => Ok(Tensor::cat(&[cached, new], dim)?),
        None => Ok(new.clone()),
    }
}

/// Weights of a fresh projection: N(0, 1/fan_in), the variance-keeping scale.
pub(crate) fn fan_in_std(fan_in: usize) -> f64 {
    1.0 / (fan_in.max(1) as f64).sqrt()
}

/// A crate error as a candle error, for `Mixer::forward`, which speaks candle's type.
pub(crate) fn to_candle(e: crate::Error) -> candle_core::Error {
    match e {
        crate::Error::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    }
}
