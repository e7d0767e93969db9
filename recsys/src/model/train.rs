//! Training: every position of every training window predicts its next item with a
//! full-softmax cross-entropy over all items (the SASRec+ recipe), AdamW, seeded shuffling
//! and dropout, and early stopping on validation NDCG@10 (seen items filtered) that keeps
//! the best epoch's weights.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{Dropout, SasRec};
use crate::data::Split;
use crate::eval::{evaluate, Metrics};
use crate::{Error, Result};

/// How to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The most epochs to run.
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Stop after this many epochs without a better validation NDCG@10.
    pub patience: usize,
    /// Seeds the shuffling and the dropout (the weights take the model's seed).
    pub seed: u64,
    /// Stop after the epoch during which this much wall time passed (a budget, as the
    /// evaluator's recsys task sets one); `None`: no limit.
    #[serde(default)]
    pub max_seconds: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 200,
            batch_size: 128,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            patience: 10,
            seed: 42,
            max_seconds: None,
        }
    }
}

/// One epoch's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    pub loss: f64,
    pub valid: Metrics,
    pub seconds: f64,
    /// Whether this epoch set a new best validation NDCG@10.
    pub best: bool,
}

/// The whole run; the model holds the best epoch's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub config: TrainConfig,
    pub epochs: Vec<EpochReport>,
    pub best_epoch: usize,
    pub best_valid: Metrics,
    pub seconds: f64,
}

/// A training window: tokens and, position by position, the token that follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

/// Cuts each training sequence from its end into windows of `max_len` transitions, so that
/// every transition trains once per epoch and the most recent ones see the longest context.
pub(crate) fn windows(train: &[Vec<u32>], max_len: usize) -> Vec<Window> {
    let mut out = Vec::new();
    for seq in train {
        let mut end = seq.len();
        while end >= 2 {
            let start = end.saturating_sub(max_len + 1);
            let w = &seq[start..end];
            out.push(Window {
                input: w[..w.len() - 1].to_vec(),
                target: w[1..].to_vec(),
            });
            end = start + 1;
            if start == 0 {
                break;
            }
        }
    }
    out
}

/// Right-padded `[batch, t]` inputs, targets and 0/1 weights of some windows.
fn batch(windows: &[&Window]) -> Result<(Tensor, Tensor, Tensor)> {
    let t = windows.iter().map(|w| w.input.len()).max().unwrap_or(1);
    let n = windows.len();
    let (mut tokens, mut targets, mut weights) =
        (vec![0u32; n * t], vec![0u32; n * t], vec![0f32; n * t]);
    for (i, w) in windows.iter().enumerate() {
        let row = i * t..i * t + w.input.len();
        tokens[row.clone()].copy_from_slice(&w.input);
        targets[row.clone()].copy_from_slice(&w.target);
        weights[row].fill(1.0);
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(tokens, (n, t), &dev)?,
        Tensor::from_vec(targets, (n, t), &dev)?,
        Tensor::from_vec(weights, (n, t), &dev)?,
    ))
}

/// Trains `model` on `split.train`, early-stopping on `split.valid`. `on_epoch` hears of
/// every epoch as it ends, with the model at that epoch's weights (so that a caller can save
/// each new best and a killed run keeps it); its error stops training.
pub fn train(
    model: &SasRec,
    split: &Split,
    config: &TrainConfig,
    on_epoch: impl FnMut(&EpochReport, &SasRec) -> Result<()>,
) -> Result<TrainReport> {
    if split.n_items != model.config.n_items {
        return Err(Error::InvalidRequest(format!(
            "the split has {} items but the model {}",
            split.n_items, model.config.n_items
        )));
    }
    let windows = windows(&split.train, model.config.max_len);
    let validate = |model: &SasRec| Ok(evaluate(model, &split.valid)?.seen_filtered);
    fit(model, &windows, config, validate, on_epoch)
}

/// The training loop over any token windows (item ids for `train`, semantic-ID codes for the
/// generative retriever): seeded shuffling, AdamW on the full-softmax cross-entropy, and
/// early stopping on `validate`'s NDCG@10, keeping the best epoch's weights.
pub fn fit(
    model: &SasRec,
    windows: &[Window],
    config: &TrainConfig,
    mut validate: impl FnMut(&SasRec) -> Result<Metrics>,
    mut on_epoch: impl FnMut(&EpochReport, &SasRec) -> Result<()>,
) -> Result<TrainReport> {
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(Error::InvalidRequest(
            "training needs at least one epoch and a batch size of at least 1".into(),
        ));
    }
    if windows.is_empty() {
        return Err(Error::InvalidRequest(
            "no user has two training interactions: nothing to train on".into(),
        ));
    }
    let started = Instant::now();
    let vars = model.params().vars();
    let mut optimiser = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut dropout = Dropout::new(model.config.dropout, config.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..windows.len()).collect();
    let mut epochs = Vec::new();
    let mut best: Option<(usize, Metrics, Vec<Tensor>)> = None;
    for epoch in 1..=config.epochs {
        let epoch_start = Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        for chunk in order.chunks(config.batch_size) {
            let picked: Vec<&Window> = chunk.iter().map(|&i| &windows[i]).collect();
            let (tokens, targets, weights) = batch(&picked)?;
            let loss = model.loss(&tokens, &targets, &weights, Some(&mut dropout))?;
            optimiser.backward_step(&loss)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            batches += 1;
        }
        let valid = validate(model)?;
        let improved = best
            .as_ref()
            .is_none_or(|(_, m, _)| valid.ndcg_10 > m.ndcg_10);
        if improved {
            let snapshot = vars
                .iter()
                .map(|v| v.as_tensor().copy())
                .collect::<candle_core::Result<Vec<_>>>()?;
            best = Some((epoch, valid, snapshot));
        }
        let report = EpochReport {
            epoch,
            loss: loss_sum / batches.max(1) as f64,
            valid,
            seconds: epoch_start.elapsed().as_secs_f64(),
            best: improved,
        };
        on_epoch(&report, model)?;
        epochs.push(report);
        let best_epoch = best.as_ref().map_or(epoch, |b| b.0);
        let out_of_time = config
            .max_seconds
            .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit);
        if epoch - best_epoch >= config.patience || out_of_time {
            break;
        }
    }
    let Some((best_epoch, best_valid, snapshot)) = best else {
        return Err(Error::InvalidRequest("no epoch ran".into()));
    };
    for (var, saved) in vars.iter().zip(&snapshot) {
        var.set(saved)?;
    }
    Ok(TrainReport {
        config: config.clone(),
        epochs,
        best_epoch,
        best_valid,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_transition_once() {
        let seq: Vec<u32> = (0..12).collect();
        let ws = windows(&[seq], 5);
        let mut pairs: Vec<(u32, u32)> = ws
            .iter()
            .flat_map(|w| w.input.iter().copied().zip(w.target.iter().copied()))
            .collect();
        pairs.sort_unstable();
        let expected: Vec<(u32, u32)> = (0..11).map(|i| (i, i + 1)).collect();
        assert_eq!(pairs, expected);
        assert!(ws.iter().all(|w| w.input.len() <= 5));
        // The most recent window is full length.
        assert_eq!(ws[0].input, [6, 7, 8, 9, 10]);
    }
}
