//! Text generation: sampling (greedy, temperature, top-k, top-p) with a seeded RNG, stop
//! tokens, and a streaming callback that receives text as soon as it is whole UTF-8.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::constrain::TokenConstraint;
use crate::model::{KvCache, Logits, Model};
use crate::tokenizer::StreamDecoder;
use crate::{Error, Result};

/// How the next token is drawn from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the k most likely tokens (None: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (None: all).
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidRequest(what));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top-p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// Draws tokens from logits; the same seed gives the same draws.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Result<Self> {
        sampling.validate()?;
        let rng = StdRng::seed_from_u64(sampling.seed);
        Ok(Self { sampling, rng })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.sampling.temperature == 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, highest first; ties by id for determinism.
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.sampling.top_k {
            candidates.truncate(k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates
            .iter()
            .map(|(_, l)| ((l - max) / self.sampling.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.sampling.top_p {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let kept: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= kept);
        }
        let mut draw: f32 = self.rng.random();
        for (i, p) in probs.iter().enumerate() {
            if draw < *p {
                return candidates[i].0;
            }
            draw -= p;
        }
        candidates[probs.len() - 1].0
    }
}

/// The most likely token, lowest id on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation stops after any of these (the model's end-of-turn tokens by default).
    pub stop_tokens: Vec<u32>,
}

/// Draws a token `constraint` allows and moves the constraint past it. The token drawn from
/// the unmasked logits is kept when allowed; otherwise the draw is repeated over the allowed
/// tokens only, which gives each allowed token its renormalised probability.
fn sample_allowed(
    sampler: &mut Sampler,
    logits: &mut [f32],
    constraint: &mut dyn TokenConstraint,
) -> Result<u32> {
    let first = sampler.sample(logits);
    let token = if constraint.allows(first) {
        first
    } else {
        let allowed = constraint.allowed();
        if allowed.is_empty() {
            return Err(Error::InvalidRequest(
                "the grammar allows no token here: the constraint reached a dead end".into(),
            ));
        }
        let mut masked = vec![f32::NEG_INFINITY; logits.len()];
        for &id in &allowed {
            if let Some(l) = logits.get(id as usize) {
                masked[id as usize] = *l;
            }
        }
        let token = sampler.sample(&masked);
        if masked
            .get(token as usize)
            .is_none_or(|l| *l == f32::NEG_INFINITY)
        {
            allowed[0] // every allowed logit is -inf or NaN: take one allowed token
        } else {
            token
        }
    };
    constraint.accept(token)?;
    Ok(token)
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    /// A grammar constraint's text is complete.
    Complete,
    MaxTokens,
    ContextFull,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids, the stop token included if one ended generation.
    pub tokens: Vec<u32>,
    /// Generated text, without the stop token.
    pub text: String,
    pub prompt_tokens: usize,
    pub stop_reason: StopReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    /// Tokens per second after the first, which the prefill produced.
    pub fn decode_tokens_per_second(&self) -> f64 {
        let decoded = self.tokens.len().saturating_sub(1);
        decoded as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }

    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
}

/// Generates after `prompt` (token ids), calling `on_text` with each piece of new text.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    options: &GenerateOptions,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    generate_constrained(model, prompt, options, None, on_text)
}

/// [`generate`], where every token must be allowed by `constraint` (see
/// [`crate::constrain`]); generation ends as soon as the constrained text is complete.
pub fn generate_constrained(
    model: &Model,
    prompt: &[u32],
    options: &GenerateOptions,
    mut constraint: Option<&mut dyn TokenConstraint>,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let mut sampler = Sampler::new(options.sampling.clone())?;
    let context = model.config.context_length;
    if prompt.len() >= context {
        return Err(Error::InvalidRequest(format!(
            "the prompt has {} tokens, but the model's context holds {context}",
            prompt.len()
        )));
    }
    let mut cache: KvCache = model.new_cache();
    let mut decoder = StreamDecoder::new(&model.tokenizer);
    let mut tokens = Vec::new();
    let mut text = String::new();

    let started = Instant::now();
    let mut logits = model.forward(&mut cache, prompt, Logits::Last)?;
    let prefill_time = started.elapsed();
    let decode_started = Instant::now();
    let stop_reason = loop {
        let token = match constraint.as_deref_mut() {
            Some(constraint) => sample_allowed(&mut sampler, &mut logits, constraint)?,
            None => sampler.sample(&logits),
        };
        tokens.push(token);
        if options.stop_tokens.contains(&token) {
            break StopReason::StopToken;
        }
        let piece = decoder.push(token)?;
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if constraint.as_deref().is_some_and(|c| c.is_complete()) {
            break StopReason::Complete;
        }
        if tokens.len() >= options.max_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() + 1 >= context {
            break StopReason::ContextFull;
        }
        logits = model.forward(&mut cache, &[token], Logits::Last)?;
    };
    let rest = decoder.finish();
    if !rest.is_empty() {
        on_text(&rest);
        text.push_str(&rest);
    }
    Ok(Generation {
        tokens,
        text,
        prompt_tokens: prompt.len(),
        stop_reason,
        prefill_time,
        decode_time: decode_started.elapsed(),
    })
}
