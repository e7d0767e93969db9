//! Trainable attention mechanisms on candle tensors, with autograd.
//!
//! Each mechanism is a whole token mixer: it owns its projections, maps hidden states
//! `[batch, seq, d_model]` to `[batch, seq, d_model]` causally, and has two paths that tests
//! hold equal: the parallel (or chunkwise) form used for prefill and training, and the
//! recurrent (or cached) form used for decode. An f64 reference in the tests checks both.
//!
//! Several fused candle ops drop gradients silently (`softmax_last_dim`, the fused norms,
//! rope), so mechanisms are written with plain differentiable ops, and every mechanism's
//! test asserts with `missing_gradients` that each parameter receives one.

pub mod attention_ops;
pub mod differential;
pub mod linear;
pub mod log_linear;
pub mod mla;
pub mod mta;
pub mod svd;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A trainable token mixer: the interface the recommender's transformer blocks call.
pub trait Mixer: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`, causal: row `t` depends only on
    /// rows `0..=t`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Every trainable parameter, named, for the optimiser and the gradient check.
    fn parameters(&self) -> &Params;
}

/// A mechanism's named parameters, created from a seeded generator so that runs repeat.
#[derive(Debug)]
pub struct Params {
    rng: StdRng,
    device: Device,
    named: Vec<(String, Var)>,
}

impl Params {
    pub fn new(seed: u64, device: &Device) -> Params {
        Params {
            rng: StdRng::seed_from_u64(seed),
            device: device.clone(),
            named: Vec::new(),
        }
    }

    /// A new f32 parameter with entries drawn from N(0, std²).
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f64) -> candle_core::Result<Var> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| (standard_normal(&mut self.rng) * std) as f32)
            .collect();
        self.push(name, Tensor::from_vec(values, shape, &self.device)?)
    }

    /// A new f32 parameter with every entry `value`.
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f64,
    ) -> candle_core::Result<Var> {
        let tensor = (Tensor::ones(shape, DType::F32, &self.device)? * value)?;
        self.push(name, tensor)
    }

    /// A new parameter holding `tensor` (for values computed elsewhere, such as an SVD).
    pub fn push(&mut self, name: &str, tensor: Tensor) -> candle_core::Result<Var> {
        let var = Var::from_tensor(&tensor)?;
        self.named.push((name.to_string(), var.clone()));
        Ok(var)
    }

    pub fn named(&self) -> &[(String, Var)] {
        &self.named
    }

    pub fn vars(&self) -> Vec<Var> {
        self.named.iter().map(|(_, var)| var.clone()).collect()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// The names of the parameters whose gradient in `grads` is absent or all zeros: a silent
/// break in the autograd graph.
pub fn missing_gradients(params: &Params, grads: &GradStore) -> candle_core::Result<Vec<String>> {
    let mut missing = Vec::new();
    for (name, var) in params.named() {
        let reached = match grads.get(var.as_tensor()) {
            Some(grad) => grad.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
            None => false,
        };
        if !reached {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

/// One standard normal draw by Box–Muller, so the crate needs no distributions dependency.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
