//! The drop-in task: a candidate AKL program replaces attention in a pretrained GGUF model
//! (default SmolLM2-135M) and is measured against the model's exact attention.
//!
//! The cascade: parse → static checks (and instantiation for the model) → causality probe →
//! finite outputs → determinism → fidelity (KL and perplexity against exact attention on
//! Austen and HumanEval slices, at every configured context length) → cost (cost-model
//! ratios; measured prefill and attention time, candidate against exact) → score. The
//! run-time stages also run on hand-made kernels ([`DropInTask::evaluate_kernels`]).

pub mod config;
mod cost;
pub mod fidelity;
pub mod reference;
pub mod slices;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kernels::akl::{self, CheckedProgram, ModelShape};
use kernels::attention::AttentionKernel;
use kernels::Model;

pub use config::{DropInConfig, Objective, ScoreRule, Source};
pub use reference::{model_sha256, CacheOutcome, ReferenceCache};
pub use slices::{Corpus, Slice};

use crate::cascade::{failed, static_check, Cascade, Stop};
use crate::probe::{self, CausalityViolation, Difference, Trace};
use crate::seeds::{trial_seed, SplitMix64};
use crate::{Evaluation, Provenance, Result, Stage, Task, EVALUATOR_VERSION};
use kernels::stats::Speedup;

/// The drop-in task, with its model, texts and reference cache loaded once.
#[derive(Debug)]
pub struct DropInTask {
    config: DropInConfig,
    model_path: PathBuf,
    model: Model,
    model_sha256: String,
    corpus: Corpus,
    references: ReferenceCache,
}

/// What runs in place of the model's attention: kernels, and the model they run in (a
/// converted copy for MLA, else the task's own model).
struct Candidate<'a> {
    model: &'a Model,
    kernels: &'a [Arc<dyn AttentionKernel>],
    program: Option<&'a CheckedProgram>,
}

/// The slices one trial uses.
struct TrialData {
    seed: u64,
    probe: Slice,
    /// Other real text, whose tokens replace the probe's after each cut.
    probe_replacement: Slice,
    /// Per context length, its slices.
    fidelity: Vec<(usize, Vec<Slice>)>,
}

impl DropInTask {
    /// Loads the model and the texts; fails on a bad configuration or a missing asset.
    pub fn new(config: DropInConfig) -> Result<DropInTask> {
        config.validate()?;
        let model_path = kernels::assets::resolve_model(&config.model)?;
        let model = Model::load(&model_path)?;
        if let Some(&c) = config
            .contexts
            .iter()
            .find(|&&c| c > model.config.context_length)
        {
            return Err(crate::Error::Invalid(format!(
                "drop_in.contexts: {c} exceeds the model's context length of {}",
                model.config.context_length
            )));
        }
        let cache_dir = config.cache_dir();
        let model_sha256 = model_sha256(&model_path, &cache_dir)?;
        let corpus = Corpus::load(&config.sources)?;
        Ok(DropInTask {
            references: ReferenceCache::new(cache_dir),
            config,
            model_path,
            model,
            model_sha256,
            corpus,
        })
    }

    pub fn config(&self) -> &DropInConfig {
        &self.config
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    pub fn references(&self) -> &ReferenceCache {
        &self.references
    }

    /// Runs the run-time stages (causality → finite → determinism → fidelity → measured
    /// cost → score) on hand-made per-layer kernels, which have no AKL text and so no parse,
    /// static checks or cost model. `name` stands in for the candidate's hash.
    pub fn evaluate_kernels(
        &self,
        name: &str,
        kernels: &[Arc<dyn AttentionKernel>],
        trial: u32,
    ) -> Result<Evaluation> {
        let mut cascade = Cascade::new(self.name(), name.to_string(), self.provenance(trial));
        let candidate = Candidate {
            model: &self.model,
            kernels,
            program: None,
        };
        self.run_time_stages(&mut cascade, &candidate, trial)?;
        Ok(cascade.finish())
    }

    fn provenance(&self, trial: u32) -> Provenance {
        Provenance {
            evaluator_version: EVALUATOR_VERSION.to_string(),
            model_sha256: Some(self.model_sha256.clone()),
            slices: Vec::new(),
            seeds: vec![trial_seed(trial)],
            trial,
            sandbox: None,
        }
    }

    fn trial_data(&self, trial: u32) -> Result<TrialData> {
        let seed = trial_seed(trial);
        let tokenizer = &self.model.tokenizer;
        let probe_len = self.config.probe_tokens();
        // Two draws per source: the first is probed, the last replaces its tail.
        let mut probes = self
            .corpus
            .slices(tokenizer, probe_len, 2, seed ^ PROBE_STREAM)?;
        let probe_replacement = probes.pop().expect("two probe slices per source");
        let probe = probes.swap_remove(0);
        let mut fidelity = Vec::new();
        for &ctx in &self.config.contexts {
            let slices = self
                .corpus
                .slices(tokenizer, ctx, self.config.slices_per_source, seed)?;
            fidelity.push((ctx, slices));
        }
        Ok(TrialData {
            seed,
            probe,
            probe_replacement,
            fidelity,
        })
    }

    fn run_time_stages(
        &self,
        cascade: &mut Cascade,
        candidate: &Candidate,
        trial: u32,
    ) -> Result<()> {
        let data = self.trial_data(trial)?;
        let provenance = cascade.provenance_mut();
        provenance.slices.push(data.probe.id.clone());
        provenance.slices.push(data.probe_replacement.id.clone());
        for (_, slices) in &data.fidelity {
            provenance
                .slices
                .extend(slices.iter().map(|s| s.id.clone()));
        }

        let Some(baseline) = cascade.run(Stage::Causality, |e| {
            self.causality(candidate, &data, &mut e.metrics)
        })?
        else {
            return Ok(());
        };
        let finite = cascade.run(Stage::Finite, |_| {
            match probe::first_non_finite(&baseline) {
                None => Ok(()),
                Some((location, value)) => Err(failed(
                    Stage::Finite,
                    format!(
                        "{location} is {value} on {}. A score expression overflows or divides \
                     by zero, or a row sees no key at all; bound the score (for example \
                     with tanh soft-capping) and keep every query's own key visible.",
                        data.probe.id
                    ),
                )),
            }
        })?;
        if finite.is_none() {
            return Ok(());
        }
        let deterministic =
            cascade.run(Stage::Determinism, |_| {
                match probe::check_determinism(
                    candidate.model,
                    candidate.kernels,
                    &baseline,
                    &data.probe.tokens,
                ) {
                    Ok(None) => Ok(()),
                    Ok(Some(difference)) => Err(nondeterministic(&difference)),
                    Err(e) => Err(could_not_run(Stage::Determinism, e)),
                }
            })?;
        if deterministic.is_none() {
            return Ok(());
        }
        if cascade
            .run(Stage::Fidelity, |e| {
                self.fidelity(candidate, &data, &mut e.metrics)
            })?
            .is_none()
        {
            return Ok(());
        }
        if cascade
            .run(Stage::Cost, |e| self.cost(candidate, &data, e))?
            .is_none()
        {
            return Ok(());
        }
        cascade.run(Stage::Score, |e| self.score(e))?;
        Ok(())
    }

    /// The causality probe, run from `probe_cuts` seeded positions; returns the baseline
    /// trace for the later stages.
    fn causality(
        &self,
        candidate: &Candidate,
        data: &TrialData,
        metrics: &mut BTreeMap<String, f64>,
    ) -> std::result::Result<Trace, Stop> {
        let tokens = &data.probe.tokens;
        let n = tokens.len();
        let baseline = probe::trace(candidate.model, candidate.kernels, tokens)
            .map_err(|e| could_not_run(Stage::Causality, e))?;
        let mut rng = SplitMix64::derived(data.seed, &[PROBE_STREAM, n as u64]);
        for _ in 0..self.config.probe_cuts {
            let cut = n / 4 + rng.below((n / 2) as u64) as usize;
            let perturbed = perturb(tokens, &data.probe_replacement.tokens, cut, &self.model);
            let violation = probe::check_causality(
                candidate.model,
                candidate.kernels,
                &baseline,
                &perturbed,
                cut,
            )
            .map_err(|e| could_not_run(Stage::Causality, e))?;
            if let Some(violation) = violation {
                // A kernel that does not reproduce itself moves every output: that is the
                // determinism stage's finding, not a look into the future.
                let again =
                    probe::check_determinism(candidate.model, candidate.kernels, &baseline, tokens)
                        .map_err(|e| could_not_run(Stage::Causality, e))?;
                return Err(match again {
                    Some(difference) => nondeterministic(&difference),
                    None => not_causal(&violation, &data.probe.id),
                });
            }
        }
        metrics.insert("causality_cuts".into(), self.config.probe_cuts as f64);
        metrics.insert("probe_tokens".into(), n as f64);
        Ok(baseline)
    }

    fn fidelity(
        &self,
        candidate: &Candidate,
        data: &TrialData,
        metrics: &mut BTreeMap<String, f64>,
    ) -> std::result::Result<(), Stop> {
        let exact = self.model.attention_kernels();
        let rule = &self.config.score;
        let mut worst: Option<(String, usize, fidelity::SliceFidelity)> = None;
        let (mut kl_sum, mut kl_max, mut count) = (0f64, 0f64, 0usize);
        let mut ppl_ratio_max = 0f64;
        let mut per_context = Vec::new();
        let mut cache_counts = [0usize; 3];
        for (ctx, slices) in &data.fidelity {
            let (mut ctx_kl, mut ctx_ratio) = (0f64, 0f64);
            for slice in slices {
                let (exact_hidden, outcome) =
                    self.references
                        .hidden_states(&self.model, &self.model_sha256, exact, slice)?;
                cache_counts[match outcome {
                    CacheOutcome::Hit => 0,
                    CacheOutcome::Missing => 1,
                    CacheOutcome::Rejected(_) => 2,
                }] += 1;
                let mut kv = candidate.model.new_cache();
                let hidden = candidate
                    .model
                    .forward_hidden_with(&mut kv, &slice.tokens, candidate.kernels)
                    .map_err(|e| could_not_run(Stage::Fidelity, e.into()))?;
                let result = fidelity::compare(
                    &self.model,
                    &exact_hidden,
                    candidate.model,
                    &hidden,
                    &slice.tokens,
                )?;
                let f = result.map_err(|row| {
                    failed(
                        Stage::Finite,
                        format!(
                            "the logits at position {row} of {} (context {ctx}) are not \
                             finite, though the short probe's were. Bound the score \
                             expression and keep every query's own key visible at every \
                             position.",
                            slice.id
                        ),
                    )
                })?;
                metrics.insert(format!("kl_mean[{}]", slice.id), f.kl_mean);
                metrics.insert(format!("ppl[{}]", slice.id), f.ppl);
                metrics.insert(format!("ppl_exact[{}]", slice.id), f.ppl_exact);
                ctx_kl += f.kl_mean;
                ctx_ratio += f.ppl / f.ppl_exact;
                kl_sum += f.kl_mean;
                kl_max = kl_max.max(f.kl_max);
                ppl_ratio_max = ppl_ratio_max.max(f.ppl / f.ppl_exact);
                count += 1;
                if worst.as_ref().is_none_or(|(_, _, w)| f.kl_mean > w.kl_mean) {
                    worst = Some((slice.id.clone(), *ctx, f));
                }
            }
            let n = slices.len() as f64;
            metrics.insert(format!("kl_mean@{ctx}"), ctx_kl / n);
            metrics.insert(format!("ppl_ratio@{ctx}"), ctx_ratio / n);
            per_context.push(format!("{}: {:.4}", ctx, ctx_kl / n));
        }
        let (worst_id, worst_ctx, worst) = worst.expect("at least one slice");
        metrics.insert("kl_mean".into(), kl_sum / count as f64);
        metrics.insert("kl_max_mean".into(), worst.kl_mean);
        metrics.insert("kl_max".into(), kl_max);
        metrics.insert("ppl_ratio_max".into(), ppl_ratio_max);
        for (name, n) in [
            "reference_cache_hits",
            "reference_cache_misses",
            "reference_cache_rejected",
        ]
        .iter()
        .zip(cache_counts)
        {
            metrics.insert(name.to_string(), n as f64);
        }
        let too_far = worst.kl_mean > rule.kl_epsilon;
        let ppl_limit = rule.max_ppl_ratio.filter(|&r| ppl_ratio_max > r);
        if too_far || ppl_limit.is_some() {
            let limit = match ppl_limit {
                Some(r) if !too_far => format!(
                    "the perplexity rises to {ppl_ratio_max:.3}× exact attention's, above \
                     the limit of {r}×"
                ),
                _ => format!(
                    "the mean next-token KL against exact attention is {:.4} nats on \
                     {worst_id} (context {worst_ctx}), above the limit of {}",
                    worst.kl_mean, rule.kl_epsilon
                ),
            };
            return Err(failed(
                Stage::Fidelity,
                format!(
                    "{limit}; perplexity {:.3} against exact {:.3} there. Mean KL by context: \
                     {}. The kernel drops keys the model needs: widen the window, add sink \
                     tokens, select more pages, or keep exact attention in the layers or \
                     heads that need it.",
                    worst.ppl,
                    worst.ppl_exact,
                    per_context.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn score(&self, evaluation: &mut Evaluation) -> std::result::Result<(), Stop> {
        let objective = self.config.score.objective;
        let metric = objective.metric();
        let Some(&measured) = evaluation.metrics.get(metric) else {
            return Err(failed(
                Stage::Score,
                format!(
                    "the objective {metric} needs the cost model, which only an AKL program has"
                ),
            ));
        };
        // A measured speed-up counts only beyond its noise: inside its confidence interval
        // the candidate is as fast as exact attention, whatever the estimate says.
        let value = match objective {
            Objective::AttentionSpeedup | Objective::ForwardSpeedup => {
                let bound = |end: &str| evaluation.metrics.get(&format!("{metric}_{end}")).copied();
                let speedup = Speedup {
                    estimate: measured,
                    lo: bound("lo").unwrap_or(0.0),
                    hi: bound("hi").unwrap_or(f64::INFINITY),
                };
                speedup.beyond_noise()
            }
            Objective::FlopsReduction | Objective::KvHeldReduction => measured,
        };
        if !(value.is_finite() && value > 0.0) {
            return Err(failed(
                Stage::Score,
                format!(
                    "the objective {metric} is {value}: a cost of zero or a non-finite \
                     measurement is not a score. Keep every query's own key visible so \
                     that attention does some work."
                ),
            ));
        }
        evaluation.score = Some(value);
        for name in ["attn_flops_ratio", "kv_bytes_held_ratio"] {
            if let Some(&v) = evaluation.metrics.get(name) {
                evaluation.descriptors.insert(name.into(), v);
            }
        }
        let m = &evaluation.metrics;
        let get = |name: &str| m.get(name).copied().unwrap_or(f64::NAN);
        evaluation.feedback = format!(
            "passed every stage; score {value:.4} ({}). Worst mean KL {:.4} nats (limit {}); \
             attention {:.2}× (95% interval {:.2}–{:.2}) and prefill {:.2}× as fast as exact \
             at {} tokens; cost model: {:.3} of exact's attention FLOPs, {:.3} of its KV \
             bytes held. A speed-up inside its interval counts as 1.0. To score higher, do \
             less attention work (fewer visible keys, fewer pages, simpler score and mask \
             expressions) while staying under the KL limit.",
            objective.metric(),
            get("kl_max_mean"),
            self.config.score.kl_epsilon,
            get("attention_speedup"),
            get("attention_speedup_lo"),
            get("attention_speedup_hi"),
            get("forward_speedup"),
            self.config.timing_context(),
            get("attn_flops_ratio"),
            get("kv_bytes_held_ratio"),
        );
        Ok(())
    }
}

/// Mixed into the trial seed for the probe's draws, so they are independent of the slices'.
const PROBE_STREAM: u64 = 0x0070_726f_6265;

/// `tokens` up to `cut`, then `replacement`'s tokens; the token right after the cut always
/// changes, so every probe tests the nearest future position.
fn perturb(tokens: &[u32], replacement: &[u32], cut: usize, model: &Model) -> Vec<u32> {
    let mut out = tokens.to_vec();
    out[cut + 1..].copy_from_slice(&replacement[cut + 1..tokens.len()]);
    if out[cut + 1] == tokens[cut + 1] {
        out[cut + 1] = (tokens[cut + 1] + 1) % model.config.vocab_size as u32;
    }
    out
}

fn could_not_run(stage: Stage, e: crate::Error) -> Stop {
    failed(stage, format!("the kernel could not run: {e}"))
}

fn nondeterministic(difference: &Difference) -> Stop {
    failed(
        Stage::Determinism,
        format!(
            "two runs on the same tokens disagree: {} was {} and then {}. The kernel must \
             give bit-identical results on identical input; remove any randomness, timing \
             or thread-order dependence.",
            difference.location, difference.before, difference.after
        ),
    )
}

fn not_causal(violation: &CausalityViolation, slice: &str) -> Stop {
    let d = violation.difference;
    failed(
        Stage::Causality,
        format!(
            "changing only the tokens after position {} of {slice} moved {} (from {} to {}): \
             the kernel lets a query see keys after its own position. Every mask, in every \
             layer and head override, must imply kv <= q (conjoin `causal`).",
            violation.cut, d.location, d.before, d.after
        ),
    )
}

impl Task for DropInTask {
    fn name(&self) -> &'static str {
        "drop-in"
    }

    fn evaluate(&self, source: &str, trial: u32) -> Result<Evaluation> {
        let parsed = akl::parse(source);
        let hash = match &parsed {
            Ok(program) => program.canonical_hash(),
            Err(_) => akl::sha256::sha256_hex(source.as_bytes()),
        };
        let mut cascade = Cascade::new(self.name(), hash, self.provenance(trial));
        let Some(program) = cascade.run(Stage::Parse, |_| {
            parsed.map_err(|e| {
                failed(
                    Stage::Parse,
                    format!("{e}. Fix the text at that line and column (AKL.md has the grammar)."),
                )
            })
        })?
        else {
            return Ok(cascade.finish());
        };
        let shape = ModelShape::of(&self.model.config);
        let prepared = cascade.run(Stage::Static, |_| {
            let checked = static_check(&program)?;
            let drop_in = akl::instantiate(&checked, &shape, self.model.config.attention_scale)
                .map_err(|e| failed(Stage::Static, format!("{e}")))?;
            // MLA changes the key and value projections: it runs in a converted copy.
            let converted = match drop_in.kv_rank {
                Some(rank) => {
                    // Refused from the config before the expensive factorisation.
                    let most = kernels::trainable::mla::max_kv_rank(&self.model.config);
                    if rank > most {
                        return Err(failed(
                            Stage::Static,
                            format!(
                                "mechanism mla: kv_rank {rank} is beyond this model's largest, \
                                 {most} (min of 2 · kv_dim and d_model)"
                            ),
                        ));
                    }
                    let mut copy = Model::load(&self.model_path)?;
                    kernels::trainable::mla::convert_model_kv(&mut copy, rank)
                        .map_err(|e| failed(Stage::Static, format!("{e}")))?;
                    Some(copy)
                }
                None => None,
            };
            Ok((checked, drop_in.kernels, converted))
        })?;
        let Some((checked, kernels, converted)) = prepared else {
            return Ok(cascade.finish());
        };
        let candidate = Candidate {
            model: converted.as_ref().unwrap_or(&self.model),
            kernels: &kernels,
            program: Some(&checked),
        };
        self.run_time_stages(&mut cascade, &candidate, trial)?;
        Ok(cascade.finish())
    }
}
