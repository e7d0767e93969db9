//! One unit of a campaign's work: make a candidate (a structural edit, an LLM's program,
//! a random program, or a stored program a killed run left unevaluated), store it unless
//! the campaign has it already, evaluate it off the async runtime, confirm it when it would
//! become its island's best, and, for an LLM, debug what the evaluator refused.
//!
//! A job is planned from the search state in one step ([`Plan`]) and then runs on its own;
//! what it learnt comes back as a [`Report`] that the loop takes in, in plan order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use evaluator::{Evaluation, Task};
use kernels::akl::{self, GenConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::campaign::config;
use crate::db::{Db, MutatorOutcome, NewLlmCall, NewProgram, Program, ProgramInsert};
use crate::knowledge::{self, Note};
use crate::llm::extract::extract_program;
use crate::llm::local::LocalLlm;
use crate::llm::remote::RemoteLlm;
use crate::llm::replay::ReplayBook;
use crate::llm::{Reply, Request};
use crate::mutate::prompt::{self, Brief, Proposal, Scored};
use crate::mutate::structural::{self, Structural};
pub use crate::mutate::Which;

/// Tokens the research stage may write: a two-line answer.
const RESEARCH_TOKENS: usize = 160;

/// A model a mutator calls, and how.
pub struct LlmSlot {
    pub backend: Backend,
    /// Whether code-stage decoding is constrained by AKL's grammar (the local model).
    pub constrained: bool,
    pub temperature: f32,
    pub max_tokens: usize,
}

pub enum Backend {
    /// In process, decoding constrained by AKL's grammar.
    Local(Arc<LocalLlm>),
    Remote(RemoteLlm),
    /// Answered from a recording; no model is loaded.
    Replay,
}

/// What every job of a campaign shares.
pub struct Context {
    pub db: Db,
    pub campaign_id: i64,
    pub task: Arc<dyn Task>,
    /// What the score rewards, for prompts.
    pub task_brief: String,
    pub search: config::Search,
    pub local: Option<LlmSlot>,
    pub remote: Option<LlmSlot>,
    pub replay: Option<ReplayBook>,
    pub tokens_used: AtomicU64,
    /// When the wall-time budget runs out: an LLM job starts no further call after it.
    pub deadline: Option<Instant>,
    /// Seconds inside the evaluator and waiting for models, this run.
    evaluation_micros: AtomicU64,
    llm_micros: AtomicU64,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        campaign_id: i64,
        task: Arc<dyn Task>,
        task_brief: String,
        search: config::Search,
        local: Option<LlmSlot>,
        remote: Option<LlmSlot>,
        replay: Option<ReplayBook>,
        tokens_used: u64,
        deadline: Option<Instant>,
    ) -> Context {
        Context {
            db,
            campaign_id,
            task,
            task_brief,
            search,
            local,
            remote,
            replay,
            tokens_used: AtomicU64::new(tokens_used),
            deadline,
            evaluation_micros: AtomicU64::new(0),
            llm_micros: AtomicU64::new(0),
        }
    }

    /// Seconds spent inside the evaluator and waiting for models in this run.
    pub fn seconds(&self) -> (f64, f64) {
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        (s(&self.evaluation_micros), s(&self.llm_micros))
    }

    fn slot(&self, which: Which) -> &LlmSlot {
        match which {
            Which::Local => self.local.as_ref(),
            Which::Remote => self.remote.as_ref(),
        }
        .expect("planned only for configured models")
    }
}

/// A parent or inspiration, with what a prompt shows of it.
#[derive(Clone, Debug)]
pub struct Parent {
    pub id: i64,
    pub text: Arc<str>,
    pub generation: u32,
    pub score: f64,
    pub metrics: BTreeMap<String, f64>,
    pub feedback: String,
}

impl Parent {
    fn scored(&self) -> Scored<'_> {
        Scored {
            text: &self.text,
            score: Some(self.score),
            metrics: &self.metrics,
            feedback: &self.feedback,
        }
    }
}

/// A job, decided from the search state before it runs.
pub struct Plan {
    pub work: Work,
    /// Evaluations the job may run, confirmations included, taken from the campaign's
    /// budget when it is planned; what it leaves is given back when its report is taken
    /// in. Deciding this at planning time keeps a campaign deterministic at any concurrency.
    pub allowance: u64,
    /// The best standing on the candidate's island when it was planned: a candidate that
    /// beats it is confirmed before it counts.
    pub island_best: Option<f64>,
}

pub enum Work {
    /// A stored program without a first evaluation (a seed, or a killed run's work).
    Pending(Program),
    Edit {
        arm: usize,
        kind: Structural,
        island: u32,
        parent: Parent,
        other: Option<Parent>,
        seed: u64,
    },
    Llm {
        arm: usize,
        which: Which,
        island: u32,
        parent: Parent,
        inspirations: Vec<Parent>,
        insights: Vec<String>,
        seed: u64,
    },
    /// The baseline: a random valid program.
    Random { seed: u64 },
}

impl Work {
    /// The most evaluations this work can run: each candidate's first trial and its
    /// confirmation trials, and for an LLM each debug round's candidate too.
    pub fn most_evaluations(&self, search: &config::Search) -> u64 {
        let candidates = match self {
            Work::Llm { .. } => 1 + u64::from(search.debug_retries),
            _ => 1,
        };
        candidates * (1 + u64::from(search.confirm.trials))
    }
}

/// A program a job evaluated, with its evaluations: the first trial, then confirmations.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub program: Program,
    pub evaluations: Vec<Evaluation>,
}

/// What a job did.
#[derive(Debug, Default)]
pub struct Report {
    /// The bandit arm it used, and a reward per use.
    pub arm: Option<usize>,
    pub rewards: Vec<f64>,
    pub evaluated: Vec<Evaluated>,
    /// Why it evaluated nothing, when it did not.
    pub nothing: Option<String>,
    /// A lesson for later research prompts.
    pub insight: Option<String>,
    /// The job's allowance ran out before it could evaluate all it wanted.
    pub out_of_budget: bool,
    /// Evaluations of its allowance it did not use, to give back.
    pub unused: u64,
}

/// A candidate ready to store: canonical text and identity.
struct Candidate {
    text: String,
    hash: String,
}

impl Candidate {
    fn of(program: &akl::Program) -> Candidate {
        Candidate {
            text: program.canonical_text(),
            hash: program.canonical_hash(),
        }
    }
}

/// Where a candidate came from, as the programs table records it.
struct Lineage<'a> {
    parent_id: Option<i64>,
    second_parent_id: Option<i64>,
    island: u32,
    generation: u32,
    mutator: &'a str,
    proposal: Option<&'a str>,
}

/// What storing and evaluating one candidate came to.
enum Outcome {
    Evaluated(Evaluated),
    Duplicate(i64),
    OutOfBudget,
}

/// Runs a planned job to the end. An `Err` is a failure of the evaluator or the database,
/// which stops the campaign; anything a candidate or a model did wrong is in the report.
pub async fn run(ctx: Arc<Context>, plan: Plan) -> anyhow::Result<Report> {
    let mut budget = Budget {
        left: plan.allowance,
        island_best: plan.island_best,
    };
    let mut report = match plan.work {
        Work::Pending(program) => {
            budget.left -= 1; // the allowance is at least one
            let evaluations = evaluate_stored(&ctx, &mut budget, &program, None).await?;
            Report {
                evaluated: vec![Evaluated {
                    program,
                    evaluations,
                }],
                ..Report::default()
            }
        }
        Work::Edit {
            arm,
            kind,
            island,
            parent,
            other,
            seed,
        } => {
            let mut rng = StdRng::seed_from_u64(seed);
            let child = akl::parse(&parent.text).ok().and_then(|p| {
                let other = other.as_ref().and_then(|o| akl::parse(&o.text).ok());
                structural::mutate(kind, &p, other.as_ref(), &mut rng)
            });
            let mut report = Report {
                arm: Some(arm),
                ..Report::default()
            };
            match child {
                None => {
                    report.nothing = Some(format!(
                        "{} found no valid change to program #{}",
                        kind.name(),
                        parent.id
                    ));
                }
                Some(child) => {
                    let lineage = Lineage {
                        parent_id: Some(parent.id),
                        second_parent_id: other
                            .as_ref()
                            .filter(|_| kind == Structural::Crossover)
                            .map(|o| o.id),
                        island,
                        generation: parent.generation + 1,
                        mutator: kind.name(),
                        proposal: None,
                    };
                    let scored = Some((kind.name(), parent.score));
                    let candidate = Candidate::of(&child);
                    match store_and_evaluate(&ctx, &mut budget, &candidate, &lineage, scored)
                        .await?
                    {
                        Outcome::Evaluated(e) => {
                            report.rewards.push(reward(&e, parent.score));
                            report.evaluated.push(e);
                        }
                        Outcome::Duplicate(id) => {
                            report.nothing = Some(format!("{} remade program #{id}", kind.name()));
                        }
                        Outcome::OutOfBudget => report.out_of_budget = true,
                    }
                }
            }
            if report.evaluated.is_empty() && !report.out_of_budget {
                count_unevaluated(&ctx, kind.name(), &mut report).await?;
            }
            report
        }
        Work::Llm {
            arm,
            which,
            island,
            parent,
            inspirations,
            insights,
            seed,
        } => {
            let job = LlmJob {
                ctx: &ctx,
                budget: &mut budget,
                which,
                island,
                parent: &parent,
                inspirations: &inspirations,
                insights: &insights,
                rng: StdRng::seed_from_u64(seed),
                unlinked_calls: Vec::new(),
            };
            let mut report = job.run().await?;
            report.arm = Some(arm);
            if report.evaluated.is_empty() && !report.out_of_budget {
                count_unevaluated(&ctx, which.name(), &mut report).await?;
            }
            report
        }
        Work::Random { seed } => {
            let mut rng = StdRng::seed_from_u64(seed);
            let program = akl::generate(&mut rng, &GenConfig::default());
            let lineage = Lineage {
                parent_id: None,
                second_parent_id: None,
                island: 0,
                generation: 0,
                mutator: "random",
                proposal: None,
            };
            let mut report = Report::default();
            let candidate = Candidate::of(&program);
            match store_and_evaluate(&ctx, &mut budget, &candidate, &lineage, None).await? {
                Outcome::Evaluated(e) => report.evaluated.push(e),
                Outcome::Duplicate(id) => {
                    report.nothing = Some(format!("drew program #{id} again"));
                }
                Outcome::OutOfBudget => report.out_of_budget = true,
            }
            report
        }
    };
    report.unused = budget.left;
    Ok(report)
}

/// What a job may still spend, and the standing a candidate must beat to be confirmed.
struct Budget {
    left: u64,
    island_best: Option<f64>,
}

impl Budget {
    fn take(&mut self, n: u64) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

/// Counts a use that produced nothing to evaluate, so the bandit learns from it too.
async fn count_unevaluated(
    ctx: &Context,
    mutator: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let outcome = MutatorOutcome {
        mutator,
        improved: false,
        reward: 0.0,
    };
    ctx.db
        .record_mutator_outcome(ctx.campaign_id, &outcome)
        .await?;
    report.rewards.push(0.0);
    Ok(())
}

/// 1 when the child passed and beat its parent, else 0: UCB on improvement.
fn reward(evaluated: &Evaluated, parent_score: f64) -> f64 {
    f64::from(u8::from(improved(&evaluated.evaluations[0], parent_score)))
}

fn improved(evaluation: &Evaluation, parent_score: f64) -> bool {
    evaluation.passed && evaluation.score.is_some_and(|s| s > parent_score)
}

/// Stores a candidate unless the campaign has it, then evaluates it. `scored` is the
/// mutator arm and the parent's standing, for the bandit's statistics.
async fn store_and_evaluate(
    ctx: &Arc<Context>,
    budget: &mut Budget,
    candidate: &Candidate,
    lineage: &Lineage<'_>,
    scored: Option<(&str, f64)>,
) -> anyhow::Result<Outcome> {
    // A program is stored only when its evaluation is paid for, so that every stored
    // program is evaluated, now or on resume.
    if budget.left == 0 {
        return Ok(Outcome::OutOfBudget);
    }
    let inserted = ctx
        .db
        .insert_program(&NewProgram {
            campaign_id: ctx.campaign_id,
            hash: &candidate.hash,
            canonical_text: &candidate.text,
            parent_id: lineage.parent_id,
            second_parent_id: lineage.second_parent_id,
            island: lineage.island,
            generation: lineage.generation,
            mutator: lineage.mutator,
            proposal: lineage.proposal,
        })
        .await?;
    let id = match inserted {
        ProgramInsert::Duplicate(id) => return Ok(Outcome::Duplicate(id)),
        ProgramInsert::New(id) => id,
    };
    budget.left -= 1;
    let program = ctx.db.program(id).await?;
    let evaluations = evaluate_stored(ctx, budget, &program, scored).await?;
    Ok(Outcome::Evaluated(Evaluated {
        program,
        evaluations,
    }))
}

/// Evaluates a stored program (its first trial already paid for) and commits the result
/// with the bandit's statistics; a would-be island best is confirmed on fresh trials when
/// the budget allows them.
async fn evaluate_stored(
    ctx: &Arc<Context>,
    budget: &mut Budget,
    program: &Program,
    scored: Option<(&str, f64)>,
) -> anyhow::Result<Vec<Evaluation>> {
    let text = program.canonical_text.clone();
    let first = off_runtime(ctx, move |task| task.evaluate(&text, 0)).await?;
    let outcome = scored.map(|(mutator, parent_score)| {
        let improved = improved(&first, parent_score);
        MutatorOutcome {
            mutator,
            improved,
            reward: f64::from(u8::from(improved)),
        }
    });
    ctx.db
        .store_evaluation(program.id, &first, outcome.as_ref())
        .await?;
    let would_be_best = first.passed
        && first
            .score
            .is_some_and(|s| budget.island_best.is_none_or(|best| s > best));
    let trials = u64::from(ctx.search.confirm.trials);
    let mut evaluations = vec![first];
    if would_be_best && trials > 0 && budget.take(trials) {
        let (text, claimed) = (program.canonical_text.clone(), evaluations[0].clone());
        let options = ctx.search.confirm.clone();
        let confirmation = off_runtime(ctx, move |task| {
            evaluator::confirm(task, &text, &claimed, &options)
        })
        .await?;
        tracing::info!(
            "confirming #{}: {} ({})",
            program.id,
            if confirmation.holds {
                "holds"
            } else {
                "does not hold"
            },
            confirmation.reason
        );
        for e in confirmation.evaluations {
            ctx.db.store_evaluation(program.id, &e, None).await?;
            evaluations.push(e);
        }
    }
    Ok(evaluations)
}

/// Runs the evaluator on a blocking thread, so that the runtime goes on serving the other
/// jobs, the database and Ctrl-C meanwhile.
async fn off_runtime<T: Send + 'static>(
    ctx: &Arc<Context>,
    work: impl FnOnce(&dyn Task) -> evaluator::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let task = Arc::clone(&ctx.task);
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || work(task.as_ref()))
        .await
        .context("the evaluator's thread panicked")?;
    ctx.evaluation_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    result.context("the evaluator could not run")
}

/// The sampling settings recorded with a call and matched on replay.
#[derive(Serialize)]
struct Params {
    temperature: f32,
    max_tokens: usize,
    seed: u64,
    akl_grammar: bool,
}

/// An LLM mutation: research, code, then debug rounds with the evaluator's feedback.
struct LlmJob<'a> {
    ctx: &'a Arc<Context>,
    budget: &'a mut Budget,
    which: Which,
    island: u32,
    parent: &'a Parent,
    inspirations: &'a [Parent],
    insights: &'a [String],
    rng: StdRng,
    /// Calls made since the last stored program, to link to the next one.
    unlinked_calls: Vec<i64>,
}

impl LlmJob<'_> {
    async fn run(mut self) -> anyhow::Result<Report> {
        let notes: Vec<Note> = knowledge::notes().collect();
        let inspirations: Vec<Scored> = self.inspirations.iter().map(Parent::scored).collect();
        let brief = Brief {
            task: &self.ctx.task_brief,
            parent: self.parent.scored(),
            inspirations: &inspirations,
            insights: self.insights,
        };
        let mut report = Report::default();

        let research = prompt::research(&brief, &notes);
        let reply = match self
            .call("research", &research, RESEARCH_TOKENS, false)
            .await?
        {
            Ok(reply) => reply,
            Err(e) => {
                report.nothing = Some(format!("research call failed: {e}"));
                return Ok(report);
            }
        };
        let proposal = prompt::parse_research(&reply.text, &notes);
        let code = prompt::code(&brief, &proposal, &notes);
        let max_tokens = self.ctx.slot(self.which).max_tokens;
        let mut reply = self.call("code", &code, max_tokens, true).await?;
        for round in 0..=self.ctx.search.debug_retries {
            let (text, feedback) = match reply {
                Err(e) => {
                    report.nothing = Some(format!("code call failed: {e}"));
                    return Ok(report);
                }
                Ok(reply) => {
                    let text = reply.text;
                    match self.try_program(&text, &proposal, &mut report).await? {
                        None => return Ok(report),
                        Some(feedback) => (text, feedback),
                    }
                }
            };
            let late = self.ctx.deadline.is_some_and(|d| Instant::now() >= d);
            if round == self.ctx.search.debug_retries || report.out_of_budget || late {
                if report.evaluated.is_empty() {
                    report.nothing = Some(feedback);
                }
                break;
            }
            let debug = prompt::debug(&brief, &proposal, &text, &feedback);
            reply = self.call("debug", &debug, max_tokens, true).await?;
        }
        Ok(report)
    }

    /// Checks, stores and evaluates one reply's program. `None` when the job is done (the
    /// program passed); otherwise the feedback for a debug round.
    async fn try_program(
        &mut self,
        reply: &str,
        proposal: &Proposal,
        report: &mut Report,
    ) -> anyhow::Result<Option<String>> {
        let checked = extract_program(reply)
            .and_then(|text| akl::parse_and_check(text).map_err(|e| format!("{e}")));
        let program = match checked {
            Ok(checked) => checked.program,
            Err(feedback) => return Ok(Some(feedback)),
        };
        let lineage = Lineage {
            parent_id: Some(self.parent.id),
            second_parent_id: None,
            island: self.island,
            generation: self.parent.generation + 1,
            mutator: self.which.name(),
            proposal: Some(&proposal.text),
        };
        let scored = Some((self.which.name(), self.parent.score));
        let candidate = Candidate::of(&program);
        let outcome =
            store_and_evaluate(self.ctx, self.budget, &candidate, &lineage, scored).await?;
        match outcome {
            Outcome::OutOfBudget => {
                report.out_of_budget = true;
                Ok(Some("the evaluation budget is spent".into()))
            }
            // Named by hash, not by id: a replay's ids differ, and its prompts must not.
            Outcome::Duplicate(_) => Ok(Some(format!(
                "This program is identical to one the campaign has already evaluated \
                 (canonical hash {}). Make a real change.",
                &candidate.hash[..12]
            ))),
            Outcome::Evaluated(evaluated) => {
                for call in self.unlinked_calls.drain(..) {
                    self.ctx
                        .db
                        .set_llm_call_program(call, evaluated.program.id)
                        .await?;
                }
                let first = &evaluated.evaluations[0];
                let feedback = first.feedback.clone();
                let passed = first.passed;
                report.rewards.push(reward(&evaluated, self.parent.score));
                if improved(first, self.parent.score) {
                    let insight = format!(
                        "{} (score {:.4} -> {:.4})",
                        proposal.text.trim(),
                        self.parent.score,
                        first.score.unwrap_or_default()
                    );
                    self.ctx
                        .db
                        .insert_insight(self.ctx.campaign_id, &insight, Some(evaluated.program.id))
                        .await?;
                    report.insight = Some(insight);
                }
                report.evaluated.push(evaluated);
                Ok((!passed).then_some(feedback))
            }
        }
    }

    /// One call, recorded whatever happens. The outer error is the database's; the inner
    /// one is the model's, which the job reports and survives.
    async fn call(
        &mut self,
        stage: &str,
        (system, user): &(String, String),
        max_tokens: usize,
        akl_grammar: bool,
    ) -> anyhow::Result<Result<Reply, String>> {
        let slot = self.ctx.slot(self.which);
        let request = Request {
            system: system.clone(),
            user: user.clone(),
            max_tokens,
            temperature: slot.temperature,
            seed: rand::Rng::random(&mut self.rng),
        };
        let grammar = akl_grammar && slot.constrained;
        let params = serde_json::to_string(&Params {
            temperature: request.temperature,
            max_tokens,
            seed: request.seed,
            akl_grammar: grammar,
        })?;
        let prompt_text = format!("{system}\n\n{user}");
        let started = Instant::now();
        let result = match (&self.ctx.replay, &slot.backend) {
            (Some(book), _) => book.answer(stage, &params, &prompt_text),
            (None, Backend::Local(llm)) => {
                let llm = Arc::clone(llm);
                let request = request.clone();
                tokio::task::spawn_blocking(move || llm.complete(&request, grammar))
                    .await
                    .context("the local model's thread panicked")?
                    .map_err(|e| format!("{e:#}"))
            }
            (None, Backend::Remote(llm)) => {
                llm.complete(&request).await.map_err(|e| format!("{e:#}"))
            }
            (None, Backend::Replay) => Err("no model is loaded and no recording given".into()),
        };
        let latency = started.elapsed().as_secs_f64();
        self.ctx
            .llm_micros
            .fetch_add((latency * 1e6) as u64, Ordering::Relaxed);
        let (model, response, error, prompt_tokens, completion_tokens) = match &result {
            Ok(r) => (
                r.model.clone(),
                Some(r.text.as_str()),
                None,
                r.prompt_tokens,
                r.completion_tokens,
            ),
            Err(e) => (self.which.name().to_string(), None, Some(e.as_str()), 0, 0),
        };
        self.ctx.tokens_used.fetch_add(
            (prompt_tokens + completion_tokens) as u64,
            Ordering::Relaxed,
        );
        let id = self
            .ctx
            .db
            .insert_llm_call(&NewLlmCall {
                campaign_id: self.ctx.campaign_id,
                program_id: None,
                stage,
                model: &model,
                params_json: &params,
                prompt: &prompt_text,
                response,
                prompt_tokens: prompt_tokens as u32,
                completion_tokens: completion_tokens as u32,
                latency_seconds: latency,
                error,
            })
            .await?;
        self.unlinked_calls.push(id);
        if let Err(e) = &result {
            tracing::warn!("{} {stage} call failed: {e}", self.which.name());
        }
        Ok(result)
    }
}
