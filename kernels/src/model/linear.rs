//! A weight matrix applied to rows of activations. Quantized GGUF weights go through
//! candle-core's `QMatMul`; plain `f32` weights (synthetic test models, small tensors) too.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::Result;

#[derive(Debug)]
pub struct Linear {
    weight: QMatMul,
    /// Output features (rows of the weight).
    pub out_dim: usize,
    /// Input features.
    pub in_dim: usize,
}

impl Linear {
    /// `qtensor` is `[out_dim, in_dim]`, as GGUF stores it.
    pub fn new(qtensor: QTensor) -> Result<Self> {
        let (out_dim, in_dim) = qtensor.shape().dims2()?;
        Ok(Self {
            weight: QMatMul::from_qtensor(qtensor)?,
            out_dim,
            in_dim,
        })
    }

    /// `x` is `[rows, in_dim]`; returns `[rows, out_dim]`.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let rows = x.len() / self.in_dim;
        let input = Tensor::from_slice(x, (rows, self.in_dim), &Device::Cpu)?;
        let output = self.weight.forward(&input)?;
        Ok(output.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// A small tensor (norm weights, biases) as plain `f32`.
pub fn to_f32_vec(qtensor: &QTensor) -> Result<Vec<f32>> {
    Ok(qtensor
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}
