//! A weight matrix applied to rows of activations. Formats with kernels of our own go through
//! `crate::quant::QuantMatrix`; the rest through candle-core's `QMatMul`.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::quant::QuantMatrix;
use crate::{Error, Result};

/// How weight matrices are held in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// As the GGUF file stores them (quantized): fast, and what users run.
    #[default]
    AsStored,
    /// Dequantized to f32 at load: slower and larger, but free of the 8-bit rounding of
    /// activations inside quantized matmuls, so two engines can be compared to float precision.
    F32,
}

#[derive(Debug)]
pub struct Linear {
    weight: Weight,
    /// Output features (rows of the weight).
    pub out_dim: usize,
    /// Input features.
    pub in_dim: usize,
}

#[derive(Debug)]
enum Weight {
    Own(QuantMatrix),
    Candle(QMatMul),
}

impl Linear {
    /// `qtensor` is `[out_dim, in_dim]`, as GGUF stores it.
    pub fn new(qtensor: QTensor, format: WeightFormat) -> Result<Self> {
        let (out_dim, in_dim) = qtensor.shape().dims2()?;
        let weight = match format {
            // An f32 GEMM through candle: the point of this format is float precision.
            WeightFormat::F32 => Weight::Candle(QMatMul::Tensor(qtensor.dequantize(&Device::Cpu)?)),
            WeightFormat::AsStored => match QuantMatrix::from_qtensor(&qtensor)? {
                Some(matrix) => Weight::Own(matrix),
                None => Weight::Candle(QMatMul::from_qtensor(qtensor)?),
            },
        };
        Ok(Self {
            weight,
            out_dim,
            in_dim,
        })
    }

    /// An f32 weight `[out_dim, in_dim]`, row-major, applied in f32 through candle.
    pub fn from_f32(weight: Vec<f32>, out_dim: usize, in_dim: usize) -> Result<Self> {
        if weight.len() != out_dim * in_dim {
            return Err(Error::InvalidRequest(format!(
                "linear layer: {} weights do not fill [{out_dim}, {in_dim}]",
                weight.len()
            )));
        }
        Ok(Self {
            weight: Weight::Candle(QMatMul::Tensor(Tensor::from_vec(
                weight,
                (out_dim, in_dim),
                &Device::Cpu,
            )?)),
            out_dim,
            in_dim,
        })
    }

    /// The weight `[out_dim, in_dim]` as f32, row-major (dequantized if stored quantized).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let tensor = match &self.weight {
            Weight::Own(matrix) => matrix.to_qtensor()?.dequantize(&Device::Cpu)?,
            Weight::Candle(QMatMul::QTensor(qtensor)) => qtensor.dequantize(&Device::Cpu)?,
            Weight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.clone(),
        };
        Ok(tensor
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// `x` is `[rows, in_dim]`; returns `[rows, out_dim]`.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        if self.in_dim == 0 || !x.len().is_multiple_of(self.in_dim) {
            return Err(Error::InvalidRequest(format!(
                "linear layer: {} inputs are not whole rows of {}",
                x.len(),
                self.in_dim
            )));
        }
        let rows = x.len() / self.in_dim;
        match &self.weight {
            Weight::Own(matrix) => {
                let mut y = vec![0.0; rows * self.out_dim];
                matrix.matmul(x, rows, &mut y);
                Ok(y)
            }
            Weight::Candle(weight) => {
                let input = Tensor::from_slice(x, (rows, self.in_dim), &Device::Cpu)?;
                let output = weight.forward(&input)?;
                Ok(output.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    /// The profiler's name for this layer's matmul: its weight format.
    pub fn profile_op(&self) -> crate::profile::Op {
        crate::profile::Op::Matmul(match &self.weight {
            Weight::Own(matrix) => Some(matrix.format()),
            Weight::Candle(_) => None,
        })
    }

    /// `forward`, timed under its weight format when the profiler is on.
    pub fn forward_timed(&self, x: &[f32]) -> Result<Vec<f32>> {
        crate::profile::timed(self.profile_op(), || self.forward(x))
    }

    /// Whether this layer runs on our own kernels rather than candle's.
    pub fn uses_own_kernels(&self) -> bool {
        matches!(self.weight, Weight::Own(_))
    }
}

/// A small tensor (norm weights, biases) as plain `f32`.
pub fn to_f32_vec(qtensor: &QTensor) -> Result<Vec<f32>> {
    Ok(qtensor
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}
