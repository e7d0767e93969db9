//! What the trainable-mechanism tests share: seeded inputs, parameters read out as f64 for
//! the references, and the checks every mechanism must pass (decode = forward, causality,
//! gradients reach every parameter).
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use kernels::trainable::{missing_gradients, Mixer, Params};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `[batch, seq, d_model]` with entries uniform in `[-1, 1)`, as a tensor and as f64.
pub fn random_input(batch: usize, seq: usize, d_model: usize, seed: u64) -> (Tensor, Vec<f64>) {
    let values = random_values(batch * seq * d_model, 1.0, seed);
    let tensor = Tensor::from_vec(values.clone(), (batch, seq, d_model), &Device::Cpu).unwrap();
    (tensor, values.iter().map(|&v| f64::from(v)).collect())
}

pub fn random_values(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Overwrites parameter `name` with uniform values in `[-scale, scale)`.
pub fn randomize(params: &Params, name: &str, scale: f32, seed: u64) {
    let var = var(params, name);
    let values = random_values(var.elem_count(), scale, seed);
    let tensor = Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap();
    var.set(&tensor).unwrap();
}

pub fn var<'a>(params: &'a Params, name: &str) -> &'a candle_core::Var {
    params
        .named()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

/// Parameter `name`, flattened row-major, as f64.
pub fn param(params: &Params, name: &str) -> Vec<f64> {
    to_f64(var(params, name).as_tensor())
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `a` `[rows, inner]` times `b` `[inner, cols]`.
pub fn matmul(a: &[f64], rows: usize, inner: usize, b: &[f64], cols: usize) -> Vec<f64> {
    assert_eq!(a.len(), rows * inner);
    assert_eq!(b.len(), inner * cols);
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for i in 0..inner {
            let a_ri = a[r * inner + i];
            for c in 0..cols {
                out[r * cols + c] += a_ri * b[i * cols + c];
            }
        }
    }
    out
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Softmax of `scores` in place.
pub fn softmax(scores: &mut [f64]) {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    scores.iter_mut().for_each(|s| *s /= sum);
}

/// Max |a − b| ≤ `tolerance` · max(1, max |b|).
pub fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= tolerance * scale,
        "{what}: max difference {worst:.3e} exceeds {tolerance:.1e} × {scale:.3}"
    );
}

/// Row `t` of `[batch, seq, d]` outputs, for every batch.
pub fn rows_before(values: &[f64], batch: usize, seq: usize, d: usize, end: usize) -> Vec<f64> {
    (0..batch)
        .flat_map(|b| values[b * seq * d..(b * seq + end) * d].iter().copied())
        .collect()
}

/// Changes every token from `position` on and checks that outputs before it do not move.
pub fn assert_causal(forward: impl Fn(&Tensor) -> Tensor, x: &Tensor, position: usize) {
    let (batch, seq, d) = x.dims3().unwrap();
    let before = to_f64(&forward(x));
    let future = x.narrow(1, position, seq - position).unwrap();
    let noise = Tensor::from_vec(
        random_values(future.elem_count(), 3.0, 99),
        future.shape(),
        &Device::Cpu,
    )
    .unwrap();
    let changed = Tensor::cat(
        &[
            &x.narrow(1, 0, position).unwrap(),
            &(future + noise).unwrap(),
        ],
        1,
    )
    .unwrap();
    let after = to_f64(&forward(&changed));
    let out_d = before.len() / (batch * seq);
    assert_close(
        &rows_before(&after, batch, seq, out_d, position),
        &rows_before(&before, batch, seq, out_d, position),
        1e-6,
        &format!("outputs before position {position} after changing later tokens (d {d})"),
    );
    // The change must reach the outputs from `position` on, or the check above is vacuous.
    let moved = after.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-4);
    assert!(moved, "changing tokens from {position} on moved no output");
}

/// Feeds `x` one token at a time through `step` and checks the rows equal `forward`'s.
pub fn assert_decode_matches(
    forward: &Tensor,
    x: &Tensor,
    mut step: impl FnMut(&Tensor) -> Tensor,
    what: &str,
) {
    let seq = x.dim(1).unwrap();
    let rows: Vec<Tensor> = (0..seq)
        .map(|t| step(&x.narrow(1, t, 1).unwrap()))
        .collect();
    let decoded = Tensor::cat(&rows, 1).unwrap();
    assert_close(&to_f64(&decoded), &to_f64(forward), 1e-4, what);
}

/// A loss on the mixer's output (a fixed random projection, so no symmetry hides a
/// parameter), back-propagated; every parameter must receive a gradient.
pub fn assert_gradients_reach_every_parameter(mixer: &dyn Mixer, x: &Tensor) {
    let y = mixer.forward(x).unwrap();
    let weights = Tensor::from_vec(
        random_values(y.elem_count(), 1.0, 7),
        y.shape(),
        &Device::Cpu,
    )
    .unwrap();
    let loss = (y * weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let missing = missing_gradients(mixer.parameters(), &grads).unwrap();
    assert!(
        missing.is_empty(),
        "{}: no gradient reached {missing:?}",
        mixer.name()
    );
}
