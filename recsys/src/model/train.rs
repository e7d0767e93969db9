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
    /// How many transitions apart consecutive windows of one long sequence end (1 to the
    /// model's `max_len`); the rest of a window is context that an earlier window already
    /// trained on. `None`: `max_len`, windows that do not overlap.
    #[serde(default)]
    pub window_step: Option<usize>,
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
            window_step: None,
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

/// A training window: tokens and, position by position, the token that follows. Positions
/// before `first_target` are context only: their transitions train in another window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
    pub first_target: usize,
}

/// Cuts each training sequence from its end into windows of up to `max_len` transitions
/// whose ends lie `step` transitions apart (`1 ≤ step ≤ max_len`), so that every transition
/// trains exactly once per epoch, in the window that ends nearest after it, with at least
/// `max_len − step` items of context wherever the sequence has them. `step = max_len`: windows
/// that do not overlap. The first window of a sequence trains everything before the second.
pub(crate) fn windows(train: &[Vec<u32>], max_len: usize, step: usize) -> Result<Vec<Window>> {
    if max_len == 0 || !(1..=max_len).contains(&step) {
        return Err(Error::InvalidRequest(format!(
            "window_step {step} must lie between 1 and the model's max_len {max_len}"
        )));
    }
    let mut out = Vec::new();
    for seq in train {
        // Transition j predicts seq[j] from seq[..j]; a window ending at `end` (exclusive)
        // trains transitions first..end.
        let mut end = seq.len();
        while end >= 2 {
            let start = end.saturating_sub(max_len + 1);
            let first = if start == 0 { 1 } else { end - step };
            let w = &seq[start..end];
            out.push(Window {
                input: w[..w.len() - 1].to_vec(),
                target: w[1..].to_vec(),
                first_target: first - start - 1,
            });
            end = first;
        }
    }
    Ok(out)
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
        weights[row.start + w.first_target..row.end].fill(1.0);
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
    let max_len = model.config.max_len;
    let windows = windows(&split.train, max_len, config.window_step.unwrap_or(max_len))?;
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
    let malformed = |w: &Window| {
        w.input.is_empty() || w.target.len() != w.input.len() || w.first_target >= w.input.len()
    };
    if let Some(bad) = windows.iter().position(malformed) {
        return Err(Error::InvalidRequest(format!(
            "training window {bad} needs as many targets as inputs (at least one) and its \
             first_target below that count"
        )));
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
    use proptest::prelude::*;

    use super::*;

    /// The (previous item, next item) pairs that `ws` trains, sorted.
    fn trained_pairs(ws: &[Window]) -> Vec<(u32, u32)> {
        let mut pairs: Vec<(u32, u32)> = ws
            .iter()
            .flat_map(|w| {
                let trained = w.first_target..w.input.len();
                w.input[trained.clone()]
                    .iter()
                    .copied()
                    .zip(w.target[trained].iter().copied())
            })
            .collect();
        pairs.sort_unstable();
        pairs
    }

    #[test]
    fn windows_that_do_not_overlap_cover_every_transition_once() {
        let seq: Vec<u32> = (0..12).collect();
        let ws = windows(&[seq], 5, 5).unwrap();
        let expected: Vec<(u32, u32)> = (0..11).map(|i| (i, i + 1)).collect();
        assert_eq!(trained_pairs(&ws), expected);
        assert!(ws.iter().all(|w| w.input.len() <= 5 && w.first_target == 0));
        // The most recent window is full length.
        assert_eq!(ws[0].input, [6, 7, 8, 9, 10]);
    }

    #[test]
    fn overlapping_windows_train_only_their_last_step_transitions() {
        let seq: Vec<u32> = (0..12).collect();
        let ws = windows(&[seq], 5, 2).unwrap();
        let cut: Vec<(Vec<u32>, usize)> = ws
            .iter()
            .map(|w| (w.input.clone(), w.first_target))
            .collect();
        assert_eq!(
            cut,
            [
                (vec![6, 7, 8, 9, 10], 3),
                (vec![4, 5, 6, 7, 8], 3),
                (vec![2, 3, 4, 5, 6], 3),
                (vec![0, 1, 2, 3, 4], 0),
            ]
        );
    }

    #[test]
    fn a_malformed_window_is_refused_before_training() {
        let model = SasRec::new(
            crate::model::SasRecConfig {
                n_items: 4,
                max_len: 4,
                d_model: 8,
                d_ff: 8,
                ..Default::default()
            },
            crate::model::EXACT,
            1,
        )
        .unwrap();
        let window = Window {
            input: vec![1, 2],
            target: vec![2, 3],
            first_target: 2,
        };
        let never = |_: &SasRec| -> Result<Metrics> { unreachable!("no epoch may run") };
        let err = fit(&model, &[window], &TrainConfig::default(), never, |_, _| {
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("training window 0"), "{err}");
    }

    #[test]
    fn a_step_outside_one_to_max_len_is_refused() {
        for step in [0, 6] {
            let err = windows(&[vec![1, 2, 3]], 5, step).unwrap_err();
            assert!(err.to_string().contains("window_step"), "{err}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn every_transition_trains_once_with_the_promised_context(
            lens in prop::collection::vec(0usize..40, 1..5),
            max_len in 1usize..12,
            step_seed in 0usize..100,
        ) {
            let step = 1 + step_seed % max_len;
            // Distinct items, so that pairs name transitions.
            let mut next = 0u32;
            let train: Vec<Vec<u32>> = lens
                .iter()
                .map(|&n| (0..n).map(|_| { next += 1; next }).collect())
                .collect();
            let ws = windows(&train, max_len, step).unwrap();
            let mut expected: Vec<(u32, u32)> = train
                .iter()
                .flat_map(|s| s.windows(2).map(|p| (p[0], p[1])))
                .collect();
            expected.sort_unstable();
            prop_assert_eq!(trained_pairs(&ws), expected);
            for w in &ws {
                prop_assert!(!w.input.is_empty() && w.input.len() <= max_len);
                prop_assert_eq!(&w.input[1..], &w.target[..w.target.len() - 1]);
                prop_assert!(w.first_target < w.input.len());
                // Context before the trained part: none only where the sequence starts.
                let starts_sequence = train.iter().any(|s| s.first() == w.input.first());
                prop_assert!(starts_sequence || w.first_target == max_len - step);
            }
        }
    }
}
