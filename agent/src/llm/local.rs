//! A GGUF model on our own core, in process. Decoding can be constrained by AKL's grammar,
//! so that every reply the model finishes is a program that parses. The model runs exact
//! attention, or a discovered program that passed the fidelity gate ([`super::kernel`]).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use kernels::akl::prefix::AklGrammar;
use kernels::constrain::{GrammarConstraint, TokenConstraint, TokenTrie};
use kernels::generate::{generate_constrained, GenerateOptions, Sampling};
use kernels::tokenizer::ChatMessage;
use kernels::Model;

use super::kernel::{self, Candidate, GatePrompt, Prepared};
use super::{Reply, Request};

pub struct LocalLlm {
    model: Model,
    /// The vocabulary in byte order, built once for constrained decoding.
    trie: TokenTrie,
    name: String,
    kernel: Option<RunningKernel>,
}

/// The discovered program a model runs in place of exact attention.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningKernel {
    pub name: String,
    pub hash: String,
    /// Where it came from (a program id, a file).
    pub origin: String,
    /// Its gate's mean next-token KL against exact attention, in nats.
    pub kl: f64,
}

/// What the fidelity gate made of one candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct GateOutcome {
    pub origin: String,
    /// The gate's mean KL in nats, or why the program could not run in the model.
    pub kl: Result<f64, String>,
    pub passed: bool,
}

impl std::fmt::Display for GateOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kl {
            Ok(kl) => write!(
                f,
                "{}: mean KL {kl:.4} nats ({})",
                self.origin,
                if self.passed {
                    "passed"
                } else {
                    "over the bound"
                }
            ),
            Err(why) => write!(f, "{}: {why}", self.origin),
        }
    }
}

impl LocalLlm {
    /// Loads the model with exact attention.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::new(path, Model::load(path)?, None)
    }

    /// Loads the model running the first of `candidates` whose mean next-token KL from
    /// exact attention over `prompts` is at most `kl_max` nats, or exact attention when none
    /// is; the outcomes say what each candidate did.
    pub fn load_gated(
        path: &Path,
        candidates: &[Candidate],
        prompts: &[GatePrompt],
        kl_max: f64,
    ) -> anyhow::Result<(Self, Vec<GateOutcome>)> {
        let mut exact = Model::load(path)?;
        let tokens = kernel::gate_tokens(&exact, prompts)?;
        let mut outcomes = Vec::new();
        for candidate in candidates {
            let tried = || -> anyhow::Result<(Prepared, Option<Model>, f64)> {
                let prepared = Prepared::new(&candidate.text, &exact)?;
                let converted = match prepared.kv_rank {
                    Some(_) => {
                        let mut copy = Model::load(path)?;
                        prepared.apply(&mut copy)?;
                        Some(copy)
                    }
                    None => None,
                };
                let on = converted.as_ref().unwrap_or(&exact);
                let kl = kernel::mean_kl(&exact, on, &prepared.kernels, &tokens)?;
                Ok((prepared, converted, kl))
            };
            let (prepared, converted, kl) = match tried() {
                Ok(found) => found,
                Err(e) => {
                    outcomes.push(GateOutcome {
                        origin: candidate.origin.clone(),
                        kl: Err(format!("{e:#}")),
                        passed: false,
                    });
                    continue;
                }
            };
            let passed = kl <= kl_max;
            outcomes.push(GateOutcome {
                origin: candidate.origin.clone(),
                kl: Ok(kl),
                passed,
            });
            if passed {
                let model = match converted {
                    Some(model) => model,
                    None => {
                        prepared.apply(&mut exact)?;
                        exact
                    }
                };
                let running = RunningKernel {
                    name: prepared.name,
                    hash: prepared.hash,
                    origin: candidate.origin.clone(),
                    kl,
                };
                return Ok((Self::new(path, model, Some(running))?, outcomes));
            }
        }
        Ok((Self::new(path, exact, None)?, outcomes))
    }

    fn new(path: &Path, model: Model, kernel: Option<RunningKernel>) -> anyhow::Result<Self> {
        if model.chat_template.is_none() {
            anyhow::bail!(
                "{} has no chat template; the mutator needs an instruct model",
                path.display()
            );
        }
        let trie = TokenTrie::new(&model.tokenizer);
        let mut name = super::model_name(path);
        if let Some(k) = &kernel {
            name = format!("{name}@kernel:{}", crate::db::short_hash(&k.hash));
        }
        Ok(Self {
            model,
            trie,
            name,
            kernel,
        })
    }

    /// The model, with the attention it runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The program the model runs in place of exact attention, if any.
    pub fn kernel(&self) -> Option<&RunningKernel> {
        self.kernel.as_ref()
    }

    /// The model's name in replies and records: its file name, and `@kernel:` with the
    /// first 12 hex digits of the program's hash when it runs one.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers `request`; with `akl_grammar` every token must keep the reply a prefix of
    /// one AKL program, and decoding stops when the program is complete. Blocking: run it
    /// off the async runtime.
    pub fn complete(&self, request: &Request, akl_grammar: bool) -> anyhow::Result<Reply> {
        let started = Instant::now();
        let template = self.model.chat_template.as_ref().expect("checked at load");
        let messages = [
            ChatMessage::system(&request.system),
            ChatMessage::user(&request.user),
        ];
        let prompt = self
            .model
            .tokenizer
            .encode_with_bos(&template.render(&messages, true)?)?;
        let options = GenerateOptions {
            max_tokens: request.max_tokens,
            sampling: Sampling {
                temperature: request.temperature,
                top_k: Some(40),
                top_p: Some(0.95),
                seed: request.seed,
            },
            stop_tokens: self.model.tokenizer.stop_ids().to_vec(),
        };
        let mut grammar = GrammarConstraint::new(AklGrammar, &self.trie, &options.stop_tokens);
        let constraint: Option<&mut dyn TokenConstraint> = akl_grammar.then_some(&mut grammar);
        let generation = generate_constrained(&self.model, &prompt, &options, constraint, |_| {})
            .with_context(|| format!("generating with {}", self.name))?;
        Ok(Reply {
            text: generation.text,
            model: self.name.clone(),
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.tokens.len(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
