//! The attention the local mutator model runs: exact by default, or a discovered AKL
//! program, instantiated for the mutator model's own shape and installed in its layers, so
//! that every generation (constrained or not) runs it.
//!
//! A program runs only after it passes a fidelity gate on the mutator's own prompts: the
//! mean next-token KL(exact ‖ kernel), in nats, over the last recorded code and debug
//! prompts with their replies (`llm_calls`, newest campaign first, across the database), or over
//! code prompts built from library programs when the database has recorded none. `"best"`
//! tries the best passed drop-in programs of every campaign in the database, by score, and
//! runs the first that passes (exact when none does); a program named by id, hash prefix
//! or file must pass, or the model is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use kernels::akl::{self, ModelShape};
use kernels::attention::AttentionKernel;
use kernels::perplexity::{compare_kernels, PerplexityOptions};
use kernels::tokenizer::ChatMessage;
use kernels::Model;

use crate::campaign::TaskName;
use crate::db::Db;
use crate::llm::local::LocalLlm;
use crate::mutate::prompt::{self, Brief, Scored};
use crate::pareto::Direction;

/// Prompts the gate scores: the mean KL is over all their tokens.
pub const GATE_PROMPTS: usize = 3;

/// Programs `"best"` tries, best first, before it settles for exact attention.
pub const BEST_TRIES: usize = 3;

/// Which attention the mutator model runs, as `[mutators.local_llm] kernel` spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// The database's best passed drop-in program that passes the gate.
    Best,
    /// A stored program, by id or hash prefix.
    Program(String),
    /// An AKL file.
    File(PathBuf),
}

impl KernelChoice {
    /// `"best"`, a program id or hash prefix (hex digits), or a path ending in `.akl`.
    pub fn parse(value: &str) -> Result<KernelChoice, String> {
        let value = value.trim();
        if value == "best" {
            Ok(KernelChoice::Best)
        } else if value.ends_with(".akl") {
            Ok(KernelChoice::File(PathBuf::from(value)))
        } else if !value.is_empty() && value.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(KernelChoice::Program(value.to_string()))
        } else {
            Err(format!(
                "must be \"best\", a program id or hash prefix, or a path to a .akl file; \
                 got {value:?}"
            ))
        }
    }
}

/// A program to try as the mutator's attention.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Where it came from, for logs and errors (`program #12 (quickstart, score 3.2)`).
    pub origin: String,
    pub text: String,
}

/// The programs a choice names, in the order to try them. `base_dir` anchors a relative
/// file (the campaign config's directory).
pub async fn candidates(
    db: &Db,
    choice: &KernelChoice,
    base_dir: &Path,
) -> anyhow::Result<Vec<Candidate>> {
    Ok(match choice {
        KernelChoice::Best => best_candidates(db).await?,
        KernelChoice::Program(reference) => vec![program_candidate(db, reference).await?],
        KernelChoice::File(path) => vec![file_candidate(&base_dir.join(path))?],
    })
}

/// A stored program, by id or hash prefix.
pub async fn program_candidate(db: &Db, reference: &str) -> anyhow::Result<Candidate> {
    let program = db.resolve_program(reference).await?;
    Ok(Candidate {
        origin: format!("program #{}", program.id),
        text: program.canonical_text,
    })
}

/// A program in an AKL file.
pub fn file_candidate(path: &Path) -> anyhow::Result<Candidate> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the kernel {}", path.display()))?;
    Ok(Candidate {
        origin: path.display().to_string(),
        text,
    })
}

/// The best passed programs of the database's drop-in campaigns by score, one per
/// canonical text, at most [`BEST_TRIES`].
async fn best_candidates(db: &Db) -> anyhow::Result<Vec<Candidate>> {
    let mut drop_in = Vec::new();
    for campaign in db.campaigns().await? {
        // A config this binary cannot read is not a drop-in campaign it knows of.
        if crate::engine::run::stored_config(&campaign)
            .is_ok_and(|c| c.task.name == TaskName::DropIn)
        {
            drop_in.push(campaign.name);
        }
    }
    let mut found: Vec<Candidate> = Vec::new();
    let mut hashes = Vec::new();
    for best in db.best_programs("score", Direction::Max, None, 200).await? {
        if found.len() == BEST_TRIES {
            break;
        }
        if !drop_in.contains(&best.campaign) || hashes.contains(&best.hash) {
            continue;
        }
        let program = db.program(best.program_id).await?;
        found.push(Candidate {
            origin: format!(
                "program #{} ({}, score {:.4})",
                program.id, best.campaign, best.value
            ),
            text: program.canonical_text,
        });
        hashes.push(best.hash);
    }
    Ok(found)
}

/// One conversation the gate scores: the model reads the system and user messages and,
/// when one was recorded, its reply.
#[derive(Clone, Debug, PartialEq)]
pub struct GatePrompt {
    pub system: String,
    pub user: String,
    pub reply: Option<String>,
}

/// The last [`GATE_PROMPTS`] code and debug calls with a reply: the newest campaign's
/// latest first, then older campaigns'. A recorded prompt is the system message, a blank line and the user message;
/// the mutator's system message holds no blank line, so the first one splits them.
pub async fn recorded_prompts(db: &Db) -> anyhow::Result<Vec<GatePrompt>> {
    let mut prompts = Vec::new();
    for campaign in db.campaigns().await?.iter().rev() {
        let calls = db.campaign_llm_calls(campaign.id).await?;
        for call in calls.into_iter().rev() {
            if prompts.len() == GATE_PROMPTS {
                return Ok(prompts);
            }
            if !matches!(call.stage.as_str(), "code" | "debug") || call.response.is_none() {
                continue;
            }
            let (system, user) = call
                .prompt
                .split_once("\n\n")
                .unwrap_or(("", call.prompt.as_str()));
            prompts.push(GatePrompt {
                system: system.to_string(),
                user: user.to_string(),
                reply: call.response,
            });
        }
    }
    Ok(prompts)
}

/// `n` code-stage prompts as the mutator builds them, each with a library program as the
/// parent and the next as an inspiration, for a campaign whose task is `task`.
pub fn built_prompts(task: &str, n: usize) -> Vec<GatePrompt> {
    let notes: Vec<_> = crate::knowledge::notes().collect();
    let proposals = [
        "NOTES: sliding_window, attention_sinks\nPROPOSAL: Keep a few sink keys and narrow the window.",
        "NOTES: quest_pages\nPROPOSAL: Attend to the best pages of keys only.",
        "NOTES: head_specialisation\nPROPOSAL: Give half of the heads a short window.",
        "NOTES: chunked, dilation\nPROPOSAL: Attend within chunks and to every fourth key before.",
    ];
    let names: Vec<&str> = akl::library::names().collect();
    let none = Default::default();
    (0..n)
        .map(|i| {
            let scored = |name: &str| Scored {
                text: akl::library::source(name).unwrap_or_default(),
                score: None,
                metrics: &none,
                feedback: "",
            };
            let inspirations = [scored(names[(i + 1) % names.len()])];
            let brief = Brief {
                task,
                parent: scored(names[i % names.len()]),
                inspirations: &inspirations,
                insights: &[],
            };
            let proposal = prompt::parse_research(proposals[i % proposals.len()], &notes);
            let (system, user) = prompt::code(&brief, &proposal, &notes);
            GatePrompt {
                system,
                user,
                reply: None,
            }
        })
        .collect()
}

/// A program made ready for one model: its kernels for the model's shape.
pub struct Prepared {
    pub name: String,
    /// SHA-256 of the canonical text: the program's identity in the database.
    pub hash: String,
    pub kernels: Vec<Arc<dyn AttentionKernel>>,
    /// MLA's latent rank, when the program converts the keys and values model-wide.
    pub kv_rank: Option<usize>,
}

impl Prepared {
    /// Parses and checks `text` and instantiates it for `model`'s layers and heads.
    pub fn new(text: &str, model: &Model) -> anyhow::Result<Prepared> {
        let checked = akl::parse_and_check(text)?;
        let shape = ModelShape::of(&model.config);
        let drop_in = akl::instantiate(&checked, &shape, model.config.attention_scale)?;
        Ok(Prepared {
            name: checked.program.name.clone(),
            hash: checked.program.canonical_hash(),
            kernels: drop_in.kernels,
            kv_rank: drop_in.kv_rank,
        })
    }

    /// Makes `model` run the program: converts its keys and values (MLA) and installs the
    /// kernels in its layers, so that `forward` and generation use them.
    pub fn apply(&self, model: &mut Model) -> anyhow::Result<()> {
        if let Some(rank) = self.kv_rank {
            kernels::trainable::mla::convert_model_kv(model, rank)?;
        }
        for (layer, kernel) in self.kernels.iter().enumerate() {
            model.set_attention_kernel(layer, kernel.clone())?;
        }
        Ok(())
    }
}

/// The conversations' tokens as the model reads them: chat template, reply appended,
/// cut to the model's context.
pub fn gate_tokens(model: &Model, prompts: &[GatePrompt]) -> anyhow::Result<Vec<Vec<u32>>> {
    let template = model
        .chat_template
        .as_ref()
        .context("the fidelity gate needs a model with a chat template")?;
    prompts
        .iter()
        .map(|p| -> anyhow::Result<Vec<u32>> {
            let mut messages = Vec::new();
            if !p.system.is_empty() {
                messages.push(ChatMessage::system(&p.system));
            }
            messages.push(ChatMessage::user(&p.user));
            let mut text = template.render(&messages, true)?;
            text.push_str(p.reply.as_deref().unwrap_or_default());
            let mut tokens = model.tokenizer.encode_with_bos(&text)?;
            tokens.truncate(model.config.context_length);
            Ok(tokens)
        })
        .collect()
}

/// The gate's measure: KL(exact ‖ candidate) of the next-token distributions, in nats,
/// averaged over every token of every prompt (each prompt one window from its start).
/// `candidate_model` is `exact` or its copy with converted keys and values.
pub fn mean_kl(
    exact: &Model,
    candidate_model: &Model,
    kernels: &[Arc<dyn AttentionKernel>],
    prompts: &[Vec<u32>],
) -> anyhow::Result<f64> {
    let (mut kl, mut tokens) = (0.0, 0);
    for prompt in prompts.iter().filter(|p| p.len() >= 2) {
        let whole = PerplexityOptions {
            ctx: prompt.len(),
            stride: prompt.len(),
            max_tokens: None,
        };
        let report = compare_kernels(exact, candidate_model, kernels, prompt, whole)?;
        kl += report.kl_vs_exact * report.tokens as f64;
        tokens += report.tokens;
    }
    anyhow::ensure!(
        tokens > 0,
        "the fidelity gate has no prompt of 2 tokens or more"
    );
    Ok(kl / tokens as f64)
}

/// Loads the campaign's local mutator model with the attention its settings choose, and
/// logs which it runs and why. `task` is the campaign's task in a sentence (for built gate
/// prompts); `base_dir` anchors a kernel file.
pub async fn load_mutator(
    db: &Db,
    settings: &crate::campaign::config::LocalLlm,
    base_dir: &Path,
    task: &str,
) -> anyhow::Result<LocalLlm> {
    let path = kernels::assets::resolve_model(&settings.model)?;
    tracing::info!("loading {} for the local LLM mutator", path.display());
    let choice = settings
        .kernel_choice()
        .map_err(|why| anyhow::anyhow!("mutators.local_llm.kernel {why}"))?;
    let Some(choice) = choice else {
        let llm = tokio::task::spawn_blocking(move || LocalLlm::load(&path))
            .await
            .context("loading the local model panicked")??;
        tracing::info!("the local LLM mutator runs exact attention");
        return Ok(llm);
    };
    let candidates = candidates(db, &choice, base_dir).await?;
    let mut prompts = recorded_prompts(db).await?;
    let source = if prompts.is_empty() {
        prompts = built_prompts(task, GATE_PROMPTS);
        "code prompts built from library programs (the database has recorded none)"
    } else {
        "the database's latest recorded code and debug prompts"
    };
    let kl_max = settings.kernel_kl_max;
    tracing::info!(
        "fidelity gate for the mutator's kernel: mean next-token KL <= {kl_max} nats on {} of \
         {source}",
        prompts.len()
    );
    let tried = candidates.len();
    let (llm, outcomes) = tokio::task::spawn_blocking(move || {
        LocalLlm::load_gated(&path, &candidates, &prompts, kl_max)
    })
    .await
    .context("loading the local model panicked")??;
    for outcome in &outcomes {
        tracing::info!("mutator kernel gate: {outcome}");
    }
    match (llm.kernel(), choice) {
        (Some(k), _) => tracing::info!(
            "the local LLM mutator runs {} (hash {}, {}): mean KL {:.4} nats; its calls are \
             recorded as {}",
            k.name,
            crate::db::short_hash(&k.hash),
            k.origin,
            k.kl,
            llm.name()
        ),
        (None, KernelChoice::Best) if tried == 0 => tracing::warn!(
            "the local LLM mutator runs exact attention: the database holds no passed drop-in \
             program"
        ),
        (None, KernelChoice::Best) => tracing::warn!(
            "the local LLM mutator runs exact attention: none of the {tried} best drop-in \
             programs passed the fidelity gate"
        ),
        (None, _) => anyhow::bail!(
            "mutators.local_llm.kernel: the program is refused: {} (the bound, \
             kernel_kl_max, is {kl_max} nats)",
            outcomes
                .first()
                .map_or("it was not tried".to_string(), ToString::to_string)
        ),
    }
    Ok(llm)
}
