//! The recsys task: the candidate kernel becomes the attention of the recommender, which
//! is trained from scratch for a fixed budget; the score is validation NDCG@10 of the best
//! epoch, with HR@10 and single-request serving latency beside it.
//!
//! Cascade: parse → static (AKL checks, then the recommender compiles the kernel; top-k
//! selection, Star and trainable mechanisms are refused by name) → causality (an untrained
//! model: items after a cut replaced, every score at positions up to the cut must stay bit
//! for bit) → finite → determinism → train → cost (latency, cost model) → score.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use kernels::akl::{self, ModelShape};
use recsys::data::{Dataset, LoadOptions, Split};
use recsys::model::{train, SasRec, SasRecConfig, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::cascade::{failed, static_check, Cascade, Stop};
use crate::seeds::{trial_seed, SplitMix64};
use crate::{Error, Evaluation, Provenance, Result, Stage, Task, EVALUATOR_VERSION};

/// The `[recsys]` section of the evaluator's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecsysConfig {
    /// A dataset directory `recsys` reads (default: the fetched MovieLens-100K).
    pub data: Option<PathBuf>,
    pub min_rating: Option<f64>,
    pub k_core: Option<usize>,
    /// Train and validate on this many users, drawn by the trial's seed (none: all), so
    /// that an evaluation fits a campaign's pace.
    pub users: Option<usize>,
    pub max_len: usize,
    pub d_model: usize,
    pub blocks: usize,
    pub heads: usize,
    pub dropout: f64,
    pub epochs: usize,
    pub patience: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Training stops after the epoch in which this much wall time passed.
    pub max_seconds: Option<f64>,
    /// Single-history requests timed for the latency figures.
    pub latency_requests: usize,
}

impl Default for RecsysConfig {
    fn default() -> Self {
        RecsysConfig {
            data: None,
            min_rating: None,
            k_core: None,
            users: Some(400),
            max_len: 50,
            d_model: 64,
            blocks: 2,
            heads: 1,
            dropout: 0.2,
            epochs: 5,
            patience: 3,
            batch_size: 128,
            learning_rate: 1e-3,
            max_seconds: Some(120.0),
            latency_requests: 64,
        }
    }
}

impl RecsysConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Invalid(format!("[recsys] {what}")));
        if self.users == Some(0) {
            return bad("users must be at least 1 (or left out for every user)");
        }
        if self.epochs == 0 || self.batch_size == 0 || self.latency_requests == 0 {
            return bad("epochs, batch_size and latency_requests must be at least 1");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate must be a positive number");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout must be in [0, 1)");
        }
        if self
            .max_seconds
            .is_some_and(|s| !(s > 0.0 && s.is_finite()))
        {
            return bad("max_seconds must be a positive number of seconds");
        }
        Ok(())
    }
}

pub struct RecsysTask {
    config: RecsysConfig,
    data: Dataset,
}

impl RecsysTask {
    /// Loads the dataset once; every evaluation draws its users from it.
    pub fn new(config: RecsysConfig) -> Result<RecsysTask> {
        config.validate()?;
        let dir = match &config.data {
            Some(dir) => dir.clone(),
            None => kernels::assets::MOVIELENS_100K.require()?,
        };
        let options = LoadOptions {
            min_rating: config.min_rating,
            k_core: config.k_core,
        };
        let data = Dataset::load(&dir, &options).map_err(|e| Error::Config {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        Ok(RecsysTask { config, data })
    }

    fn model_config(&self) -> SasRecConfig {
        let c = &self.config;
        SasRecConfig {
            n_items: self.data.items.len(),
            max_len: c.max_len,
            d_model: c.d_model,
            n_blocks: c.blocks,
            n_heads: c.heads,
            d_ff: 4 * c.d_model,
            dropout: c.dropout,
        }
    }

    /// The users of a trial: a seeded sample, or everyone.
    fn split(&self, seed: u64) -> Split {
        let n = self.data.histories.len();
        let mut users: Vec<usize> = (0..n).collect();
        if let Some(k) = self.config.users.filter(|&k| k < n) {
            let mut rng = SplitMix64::new(seed);
            for i in 0..k {
                let j = i + rng.below((n - i) as u64) as usize;
                users.swap(i, j);
            }
            users.truncate(k);
            users.sort_unstable();
        }
        let subset = Dataset {
            users: users.iter().map(|&u| self.data.users[u].clone()).collect(),
            histories: users
                .iter()
                .map(|&u| self.data.histories[u].clone())
                .collect(),
            ..self.data.clone()
        };
        Split::leave_one_out(&subset)
    }
}

/// An error from the recommender while a stage ran: the evaluation itself failed.
fn could_not_run(e: recsys::Error) -> Stop {
    Stop::Error(Error::Invalid(e.to_string()))
}

/// Histories for the run-time probes: up to eight validation histories cut to one length,
/// so that no padding enters the comparison.
fn probe_tokens(split: &Split, max_len: usize) -> Option<(Vec<Vec<u32>>, usize)> {
    let long: Vec<&Vec<u32>> = split
        .valid
        .iter()
        .map(|case| &case.history)
        .filter(|h| h.len() >= 4)
        .take(8)
        .collect();
    let len = long.iter().map(|h| h.len()).min()?.min(max_len);
    Some((
        long.iter().map(|h| h[h.len() - len..].to_vec()).collect(),
        len,
    ))
}

fn scores(model: &SasRec, rows: &[Vec<u32>]) -> std::result::Result<Vec<f32>, Stop> {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    let tokens = Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu)
        .map_err(|e| Stop::Error(Error::Invalid(e.to_string())))?;
    model
        .logits(&tokens, None)
        .and_then(|l| Ok(l.flatten_all()?.to_vec1::<f32>()?))
        .map_err(could_not_run)
}

impl Task for RecsysTask {
    fn name(&self) -> &'static str {
        "recsys"
    }

    fn evaluate(&self, source: &str, trial: u32) -> Result<Evaluation> {
        let seed = trial_seed(trial);
        let parsed = akl::parse(source);
        let hash = match &parsed {
            Ok(program) => program.canonical_hash(),
            Err(_) => akl::sha256::sha256_hex(source.as_bytes()),
        };
        let provenance = Provenance {
            evaluator_version: EVALUATOR_VERSION.to_string(),
            model_sha256: None,
            slices: vec![format!(
                "{}/users:{}",
                self.data.name,
                self.config
                    .users
                    .map_or("all".to_string(), |k| format!("{k}@{seed}"))
            )],
            seeds: vec![seed],
            trial,
            sandbox: None,
        };
        let mut cascade = Cascade::new(self.name(), hash, provenance);
        let Some(program) = cascade.run(Stage::Parse, |_| {
            parsed.map_err(|e| failed(Stage::Parse, format!("{e}. Fix the text there.")))
        })?
        else {
            return Ok(cascade.finish());
        };
        let config = self.model_config();
        let built = cascade.run(Stage::Static, |_| {
            let checked = static_check(&program)?;
            let model = SasRec::new(config.clone(), source, seed).map_err(|e| {
                failed(
                    Stage::Static,
                    format!("the recommender cannot train this kernel: {e}"),
                )
            })?;
            Ok((checked, model))
        })?;
        let Some((checked, model)) = built else {
            return Ok(cascade.finish());
        };
        let split = self.split(seed);
        let Some((probe, len)) = probe_tokens(&split, config.max_len) else {
            return Err(Error::Invalid(
                "the recsys task needs users with at least 4 validation items to probe".into(),
            ));
        };
        let n_items = config.n_items;
        let baseline = cascade.run(Stage::Causality, |_| {
            let baseline = scores(&model, &probe)?;
            let cut = len / 2;
            let perturbed: Vec<Vec<u32>> = probe
                .iter()
                .map(|h| {
                    let mut h = h.clone();
                    h[cut + 1..]
                        .iter_mut()
                        .for_each(|item| *item = (*item + 1) % n_items as u32);
                    h
                })
                .collect();
            let moved = scores(&model, &perturbed)?;
            let row = len * n_items;
            for (b, (x, y)) in baseline.chunks(row).zip(moved.chunks(row)).enumerate() {
                let kept = (cut + 1) * n_items;
                if let Some(at) = (0..kept).find(|&i| x[i].to_bits() != y[i].to_bits()) {
                    return Err(failed(
                        Stage::Causality,
                        format!(
                            "changing history {b}'s items after position {cut} moved the score \
                             at position {}: the kernel lets a position see later items. Hide \
                             every key after the query (keep `causal` in the mask).",
                            at / n_items
                        ),
                    ));
                }
            }
            Ok(baseline)
        })?;
        let Some(baseline) = baseline else {
            return Ok(cascade.finish());
        };
        let finite = cascade.run(Stage::Finite, |_| {
            match baseline.iter().position(|v| !v.is_finite()) {
                Some(at) => Err(failed(
                    Stage::Finite,
                    format!(
                        "score {at} of the untrained model is {}: bound the score expression",
                        baseline[at]
                    ),
                )),
                None => Ok(()),
            }
        })?;
        if finite.is_none() {
            return Ok(cascade.finish());
        }
        let same = cascade.run(Stage::Determinism, |_| {
            let again = scores(&model, &probe)?;
            if again
                .iter()
                .zip(&baseline)
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return Err(failed(
                    Stage::Determinism,
                    "two runs on the same items disagree",
                ));
            }
            Ok(())
        })?;
        if same.is_none() {
            return Ok(cascade.finish());
        }
        let c = &self.config;
        let trained = cascade.run(Stage::Train, |e| {
            let budget = TrainConfig {
                epochs: c.epochs,
                batch_size: c.batch_size,
                learning_rate: c.learning_rate,
                weight_decay: 0.0,
                patience: c.patience,
                seed,
                max_seconds: c.max_seconds,
                window_step: None,
            };
            let report = train(&model, &split, &budget, |_, _| Ok(())).map_err(could_not_run)?;
            let valid = report.best_valid;
            if !(valid.ndcg_10.is_finite() && valid.hr_10.is_finite()) {
                return Err(failed(
                    Stage::Train,
                    "training diverged: the metrics are not finite",
                ));
            }
            let last_loss = report.epochs.last().map_or(f64::NAN, |r| r.loss);
            if !last_loss.is_finite() {
                return Err(failed(
                    Stage::Train,
                    "training diverged: the loss is not finite",
                ));
            }
            e.metrics.insert("ndcg@10".into(), valid.ndcg_10);
            e.metrics.insert("hr@10".into(), valid.hr_10);
            e.metrics.insert("ndcg@20".into(), valid.ndcg_20);
            e.metrics.insert("train_loss".into(), last_loss);
            e.metrics
                .insert("epochs".into(), report.epochs.len() as f64);
            e.metrics
                .insert("best_epoch".into(), report.best_epoch as f64);
            e.metrics.insert("train_seconds".into(), report.seconds);
            Ok(())
        })?;
        if trained.is_none() {
            return Ok(cascade.finish());
        }
        cascade.run(Stage::Cost, |e| {
            let mut latencies: Vec<f64> = Vec::with_capacity(c.latency_requests);
            for i in 0..c.latency_requests {
                let history = &probe[i % probe.len()];
                let started = Instant::now();
                model.score_histories(&[history]).map_err(could_not_run)?;
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
            }
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            e.metrics.insert("latency_ms_p50".into(), at(0.5));
            e.metrics.insert("latency_ms_p99".into(), at(0.99));
            let shape = ModelShape {
                n_layers: config.n_blocks,
                n_q_heads: config.n_heads,
                n_kv_heads: config.n_heads,
                head_dim: config.d_model / config.n_heads,
            };
            let ours = akl::cost(&checked, &shape, config.max_len)?;
            let exact = akl::exact_cost(&shape, config.max_len)?;
            e.metrics
                .insert("attn_flops_ratio".into(), ours.flops / exact.flops);
            Ok(())
        })?;
        cascade.run(Stage::Score, |e| {
            let m: &BTreeMap<String, f64> = &e.metrics;
            let (ndcg, hr, p50, flops) = (
                m["ndcg@10"],
                m["hr@10"],
                m["latency_ms_p50"],
                m["attn_flops_ratio"],
            );
            e.score = Some(ndcg);
            e.descriptors.insert("attn_flops_ratio".into(), flops);
            e.descriptors.insert("latency_ms_p50".into(), p50);
            e.feedback = format!(
                "passed every stage; score = validation NDCG@10 {ndcg:.4} (HR@10 {hr:.4}) after \
                 training with this kernel; {flops:.3} of exact attention's FLOPs at {} items; \
                 {p50:.2} ms per single-history request. To score higher, let each position see \
                 the items that predict the next one best.",
                config.max_len
            );
            Ok(())
        })?;
        Ok(cascade.finish())
    }
}
