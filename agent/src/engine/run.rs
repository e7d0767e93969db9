//! The campaign loop, on tokio. Each turn it plans a job from the search state (an island,
//! a parent drawn from the island's cells, front or ranks, a mutator chosen by the bandit),
//! runs up to `concurrency` jobs at once with their evaluations on blocking threads, and
//! takes their reports in *in plan order*: a job planned `k`-th always sees the results of
//! the jobs before `k − concurrency`, so a campaign's choices depend on its seed and its
//! scores, never on which evaluation happened to finish first. That is what lets
//! `--replay` reproduce a campaign.
//!
//! Everything that matters is committed as it happens (each evaluation in its own
//! transaction, with the bandit's statistics), so a killed campaign resumes from the
//! database: the search state is rebuilt by taking the stored evaluations in again, and
//! programs stored but never evaluated (the work in flight) are evaluated first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use evaluator::drop_in::DropInTask;
use evaluator::recommender::RecsysTask;
use evaluator::worker::{Isolated, WorkerCommand};
use evaluator::{Evaluation, Task};
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::job::{self, Backend, LlmSlot, Parent, Plan, Report, Work};
use super::search::{Origin, Search};
use crate::campaign::{CampaignConfig, Strategy, TaskConfig, TaskName};
use crate::db::{Campaign, CampaignStatus, Db, NewCampaign, NewProgram, Program};
use crate::llm::kernel;
use crate::llm::remote::{RemoteConfig, RemoteLlm};
use crate::llm::replay::ReplayBook;
use crate::mutate::{Mutator, Structural};

/// Consecutive jobs that evaluate nothing (failed or repeated proposals) before the
/// campaign concludes its mutators have nothing new to offer.
const MAX_IDLE_JOBS: u32 = 200;

/// How a run is driven.
pub struct Options {
    /// Shows evaluations against the budget (drawn only on a terminal).
    pub progress: ProgressBar,
    /// Answer every LLM call from this recording instead of a model.
    pub replay: Option<ReplayBook>,
    /// The `evokernel` binary whose `eval-worker` runs drop-in and recsys evaluations, each
    /// in a worker process under the task's time limit; `None` evaluates in this process,
    /// where no limit can be enforced.
    pub worker: Option<PathBuf>,
}

/// What a run did, for the closing report.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub campaign: String,
    pub status: CampaignStatus,
    /// Why the run ended, in a sentence.
    pub reason: String,
    pub evaluations_this_run: u64,
    pub evaluations_total: u64,
    /// The best program and its standing (mean score over its trials).
    pub best: Option<(i64, f64)>,
    pub wall_seconds: f64,
    pub evaluation_seconds: f64,
    pub llm_seconds: f64,
}

impl Summary {
    /// The share of wall time spent outside the evaluator and the models: the engine's own
    /// overhead (planning, the database, waiting).
    pub fn overhead_share(&self) -> f64 {
        if self.wall_seconds <= 0.0 {
            return 0.0;
        }
        (1.0 - (self.evaluation_seconds + self.llm_seconds) / self.wall_seconds).max(0.0)
    }

    pub fn evaluations_per_hour(&self) -> f64 {
        self.evaluations_this_run as f64 * 3600.0 / self.wall_seconds.max(1e-9)
    }
}

/// Creates a campaign (its name and strategy may differ from the config's) and returns it.
pub async fn create(
    db: &Db,
    config: &CampaignConfig,
    config_toml: &str,
    name: &str,
    strategy: Strategy,
) -> anyhow::Result<Campaign> {
    // A config in the current directory has the parent "".
    let dir = match config.base_dir.as_os_str().is_empty() {
        true => Path::new("."),
        false => config.base_dir.as_path(),
    };
    let config_dir = std::path::absolute(dir)
        .with_context(|| format!("resolving {}", dir.display()))?
        .display()
        .to_string();
    let id = db
        .create_campaign(&NewCampaign {
            name,
            config_toml,
            seed: config.seed,
            strategy,
            config_dir: Some(&config_dir),
        })
        .await?;
    Ok(db.campaign(id).await?)
}

/// The config a stored campaign was started with; seeds and command scripts are resolved
/// from the directory it was read from.
pub fn stored_config(campaign: &Campaign) -> anyhow::Result<CampaignConfig> {
    let dir = campaign.config_dir.as_deref().unwrap_or(".");
    let origin = Path::new(dir).join("(config stored with the campaign)");
    Ok(CampaignConfig::from_toml(&campaign.config_toml, &origin)?)
}

/// Runs a campaign until a budget is spent, it is interrupted (Ctrl-C), or it fails.
/// Works the same for a new campaign and a resumed one.
pub async fn run(db: &Db, campaign: &Campaign, options: Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let config = stored_config(campaign)?;
    store_seeds(db, campaign, &config).await?;

    let mut search = Search::new(&config);
    let evaluations_done = restore(db, campaign.id, &mut search).await?;
    let left = config.budget.evaluations.saturating_sub(evaluations_done);
    let progress = &options.progress;
    progress.set_length(config.budget.evaluations);
    progress.set_position(evaluations_done);

    tracing::info!("loading the {} task", config.task.name.name());
    let task = build_task(
        &config,
        campaign.config_dir.as_deref(),
        options.worker.as_deref(),
    )
    .await?;
    let uses_llm = campaign.strategy == Strategy::Evolve;
    let replaying = options.replay.is_some();
    let local = match (&config.mutators.local_llm, uses_llm) {
        (Some(m), true) if m.weight > 0.0 => Some(LlmSlot {
            backend: if replaying {
                Backend::Replay
            } else {
                Backend::Local(Arc::new(
                    kernel::load_mutator(db, m, &config.base_dir, &task_brief(&config)).await?,
                ))
            },
            constrained: true,
            temperature: m.temperature as f32,
            max_tokens: m.max_tokens as usize,
        }),
        _ => None,
    };
    let remote = match (&config.mutators.remote_llm, uses_llm) {
        (Some(m), true) if m.weight > 0.0 => Some(LlmSlot {
            backend: if replaying {
                Backend::Replay
            } else {
                Backend::Remote(RemoteLlm::new(RemoteConfig {
                    base_url: m.base_url.clone(),
                    model: m.model.clone(),
                    api_key_env: m.api_key_env.clone(),
                    timeout_s: f64::from(m.timeout_seconds),
                    retries: m.retries,
                    backoff_s: 1.0,
                })?)
            },
            constrained: false,
            temperature: m.temperature as f32,
            max_tokens: m.max_tokens as usize,
        }),
        _ => None,
    };
    let tokens_used = db.campaign_llm_tokens(campaign.id).await?;
    let ctx = Arc::new(job::Context::new(
        db.clone(),
        campaign.id,
        task,
        task_brief(&config),
        config.search.clone(),
        local,
        remote,
        options.replay,
        tokens_used,
        config.budget.wall_seconds.map(|budget| {
            let left = (budget as f64 - campaign.elapsed_seconds).max(0.0);
            started + std::time::Duration::from_secs_f64(left)
        }),
    ));
    db.set_campaign_status(campaign.id, CampaignStatus::Running)
        .await?;

    let mut turns = Turns {
        db,
        campaign,
        config: &config,
        ctx: &ctx,
        search,
        progress,
        pending: db.pending_programs(campaign.id).await?.into(),
        remaining: left,
        // Job seeds continue from where a resumed campaign stopped.
        next_job: evaluations_done,
        elapsed_flushed: Instant::now(),
    };
    let outcome = turns.run(started).await;
    let (status, reason) = match outcome {
        Ok(end) => end,
        Err(e) => {
            turns.flush_elapsed().await.ok();
            db.set_campaign_status(campaign.id, CampaignStatus::Failed)
                .await
                .ok();
            return Err(e);
        }
    };
    turns.flush_elapsed().await?;
    db.set_campaign_status(campaign.id, status).await?;
    progress.finish_and_clear();
    let (evaluation_seconds, llm_seconds) = ctx.seconds();
    let total = db.campaign_progress(campaign.id).await?.evaluations.max(0) as u64;
    Ok(Summary {
        campaign: campaign.name.clone(),
        status,
        reason,
        evaluations_this_run: total.saturating_sub(evaluations_done),
        evaluations_total: total,
        best: turns.search.best(),
        wall_seconds: started.elapsed().as_secs_f64(),
        evaluation_seconds,
        llm_seconds,
    })
}

/// The loop's state between turns.
struct Turns<'a> {
    db: &'a Db,
    campaign: &'a Campaign,
    config: &'a CampaignConfig,
    ctx: &'a Arc<job::Context>,
    search: Search,
    progress: &'a ProgressBar,
    /// Stored programs without a first evaluation, evaluated before anything new.
    pending: VecDeque<Program>,
    /// Evaluations of the budget not yet given to a job.
    remaining: u64,
    next_job: u64,
    elapsed_flushed: Instant,
}

impl Turns<'_> {
    /// Runs jobs until the campaign ends; returns how and why.
    async fn run(&mut self, started: Instant) -> anyhow::Result<(CampaignStatus, String)> {
        let concurrency = self.config.concurrency as usize;
        let wall_budget = self.config.budget.wall_seconds.map(|s| s as f64);
        let wall_before = self.campaign.elapsed_seconds;
        let mut in_flight: VecDeque<JoinHandle<anyhow::Result<Report>>> = VecDeque::new();
        let mut idle_jobs = 0u32;
        let mut end: Option<(CampaignStatus, String)> = None;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            while end.is_none() && in_flight.len() < concurrency {
                if self.remaining == 0 {
                    break;
                }
                let wall = wall_before + started.elapsed().as_secs_f64();
                if wall_budget.is_some_and(|budget| wall >= budget) {
                    end = Some((
                        CampaignStatus::Finished,
                        format!(
                            "the wall-time budget of {:.0} s is spent",
                            wall_budget.unwrap()
                        ),
                    ));
                    break;
                }
                let Some(plan) = self.plan() else { break };
                in_flight.push_back(tokio::spawn(job::run(Arc::clone(self.ctx), plan)));
            }
            let Some(front) = in_flight.front_mut() else {
                break;
            };
            tokio::select! {
                joined = front => {
                    in_flight.pop_front();
                    let report = joined.context("a campaign job panicked")??;
                    if report.evaluated.is_empty() && !report.out_of_budget {
                        idle_jobs += 1;
                    } else {
                        idle_jobs = 0;
                    }
                    self.take_in(report).await?;
                    if idle_jobs >= MAX_IDLE_JOBS && end.is_none() {
                        end = Some((CampaignStatus::Finished, format!(
                            "{MAX_IDLE_JOBS} jobs in a row proposed nothing new to evaluate"
                        )));
                    }
                }
                _ = &mut ctrl_c => {
                    tracing::warn!(
                        "interrupted: {} job(s) in flight are dropped; `evokernel campaign \
                         resume {}` evaluates what they had stored",
                        in_flight.len(),
                        self.campaign.name
                    );
                    return Ok((CampaignStatus::Stopped, "interrupted (Ctrl-C)".into()));
                }
            }
        }
        if let Some(end) = end {
            return Ok(end);
        }
        if self.remaining == 0 {
            return Ok((
                CampaignStatus::Finished,
                format!(
                    "the budget of {} evaluations is spent",
                    self.config.budget.evaluations
                ),
            ));
        }
        bail!(
            "no seed program passed evaluation, so there is nothing to mutate; \
             `evokernel kernels list --campaign {}` shows why each failed",
            self.campaign.name
        )
    }

    /// The next job, or `None` when there is nothing to work from yet.
    fn plan(&mut self) -> Option<Plan> {
        let (work, island) = match self.pending.pop_front() {
            Some(program) => {
                let island = program.island.max(0) as u32;
                (Work::Pending(program), island)
            }
            None => {
                let index = self.next_job;
                let mut rng = StdRng::seed_from_u64(job_seed(self.campaign.seed, index));
                let planned = match self.campaign.strategy {
                    Strategy::Random => Some((Work::Random { seed: rng.random() }, 0)),
                    Strategy::Evolve => self.plan_mutation(index, &mut rng),
                };
                self.next_job += 1;
                planned?
            }
        };
        let allowance = work
            .most_evaluations(&self.config.search)
            .min(self.remaining);
        self.remaining -= allowance;
        Some(Plan {
            work,
            allowance,
            island_best: self.search.island_best(island),
        })
    }

    fn plan_mutation(&self, index: u64, rng: &mut StdRng) -> Option<(Work, u32)> {
        let search = &self.search;
        let island = (index % search.islands.len() as u64) as u32;
        let members = &search.islands[island as usize];
        let mix = self.config.search.parent_mix;
        let parent = self.parent(members.sample_parent(mix, rng)?.id)?;
        let token_budget_left = self
            .config
            .budget
            .llm_tokens
            .is_none_or(|b| self.ctx.tokens_used.load(Ordering::Relaxed) < b);
        let arm = self.choose_arm(rng, token_budget_left)?;
        let kind = match search.bandit.arms[arm].mutator {
            Mutator::Structural(kind) => kind,
            Mutator::Llm(which) => {
                let k = self.config.search.inspirations as usize;
                let inspirations = members
                    .inspirations(parent.id, k, rng)
                    .into_iter()
                    .filter_map(|m| self.parent(m.id))
                    .collect();
                let work = Work::Llm {
                    arm,
                    which,
                    island,
                    parent,
                    inspirations,
                    insights: search.insights.clone(),
                    seed: rng.random(),
                };
                return Some((work, island));
            }
        };
        // Crossover's second parent: another draw from the island.
        let other = (kind == Structural::Crossover)
            .then(|| {
                (0..8)
                    .filter_map(|_| members.sample_parent(mix, rng))
                    .find(|m| m.id != parent.id)
                    .and_then(|m| self.parent(m.id))
            })
            .flatten();
        let work = Work::Edit {
            arm,
            kind,
            island,
            parent,
            other,
            seed: rng.random(),
        };
        Some((work, island))
    }

    /// The bandit's choice, among the structural mutators only once the token budget is spent.
    fn choose_arm(&self, rng: &mut StdRng, llm_allowed: bool) -> Option<usize> {
        let mut bandit = self.search.bandit.clone();
        if !llm_allowed {
            for arm in &mut bandit.arms {
                if matches!(arm.mutator, Mutator::Llm(_)) {
                    arm.weight = 0.0;
                }
            }
        }
        bandit.choose(rng)
    }

    fn parent(&self, id: i64) -> Option<Parent> {
        let known = self.search.known.get(&id)?;
        Some(Parent {
            id,
            text: Arc::clone(&known.text),
            generation: known.generation,
            score: known.score?,
            metrics: known.metrics.clone(),
            feedback: known.feedback.clone(),
        })
    }

    /// Takes a finished job's report into the search state, the archive table and the
    /// progress bar.
    async fn take_in(&mut self, report: Report) -> anyhow::Result<()> {
        self.remaining += report.unused;
        if let Some(arm) = report.arm {
            for reward in &report.rewards {
                self.search.bandit.record(arm, *reward);
            }
        }
        if let Some(insight) = report.insight {
            self.search.add_insight(insight);
        }
        if let Some(why) = &report.nothing {
            tracing::info!("no candidate: {why}");
        }
        for evaluated in &report.evaluated {
            let p = &evaluated.program;
            self.search.admit(origin(p), &evaluated.evaluations);
            self.progress.inc(evaluated.evaluations.len() as u64);
            let first = &evaluated.evaluations[0];
            tracing::info!(
                "#{} {} (parent {}): {}",
                p.id,
                p.mutator,
                p.parent_id
                    .map_or("none".to_string(), |id| format!("#{id}")),
                describe(first)
            );
        }
        for (island, cell, program) in self.search.archive_changes() {
            self.db
                .set_archive_cell(self.campaign.id, island, &cell, program)
                .await?;
        }
        if let Some((id, score)) = self.search.best() {
            self.progress.set_message(format!("best #{id} {score:.4}"));
        }
        self.flush_elapsed().await
    }

    /// Adds the time since the last flush to the campaign's stored wall time.
    async fn flush_elapsed(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let seconds = now.duration_since(self.elapsed_flushed).as_secs_f64();
        self.db
            .add_campaign_elapsed(self.campaign.id, seconds)
            .await?;
        self.elapsed_flushed = now;
        Ok(())
    }
}

/// A job's RNG seed from the campaign's seed and the job's index (SplitMix64).
fn job_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn origin(program: &Program) -> Origin<'_> {
    Origin {
        id: program.id,
        text: &program.canonical_text,
        island: program.island.max(0) as u32,
        generation: program.generation.max(0) as u32,
        is_seed: program.mutator == "seed",
    }
}

/// One line on an evaluation: passed with its score, or the stage that stopped it.
fn describe(e: &Evaluation) -> String {
    match (e.passed, e.score) {
        (true, Some(score)) => format!("passed, score {score:.4}"),
        _ => format!("stopped at {}", e.stage_reached.name()),
    }
}

/// Stores the config's seed programs (again, on a resume: storing is idempotent).
async fn store_seeds(db: &Db, campaign: &Campaign, config: &CampaignConfig) -> anyhow::Result<()> {
    let origin = Path::new(campaign.config_dir.as_deref().unwrap_or("."));
    for seed in config.seed_programs(&origin.join("(campaign config)"))? {
        let (text, hash) = if config.task.name.is_akl() {
            let program = kernels::akl::parse(&seed.text)?;
            (program.canonical_text(), program.canonical_hash())
        } else {
            let hash = kernels::akl::sha256_hex(seed.text.as_bytes());
            (seed.text.clone(), hash)
        };
        db.insert_program(&NewProgram {
            campaign_id: campaign.id,
            hash: &hash,
            canonical_text: &text,
            parent_id: None,
            second_parent_id: None,
            island: 0,
            generation: 0,
            mutator: "seed",
            proposal: None,
        })
        .await?;
    }
    Ok(())
}

/// Rebuilds the search from what a campaign stored; returns its evaluations so far.
async fn restore(db: &Db, campaign_id: i64, search: &mut Search) -> anyhow::Result<u64> {
    let programs: HashMap<i64, Program> = db
        .campaign_programs(campaign_id)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let stored = db.campaign_evaluations(campaign_id).await?;
    let total = stored.len() as u64;
    // Programs in the order their first trial was stored: the order they were taken in.
    let mut order = Vec::new();
    let mut trials: BTreeMap<i64, Vec<Evaluation>> = BTreeMap::new();
    for s in stored {
        if s.evaluation.provenance.trial == 0 {
            order.push(s.program_id);
        }
        trials.entry(s.program_id).or_default().push(s.evaluation);
    }
    for id in order {
        let (Some(program), Some(mut evaluations)) = (programs.get(&id), trials.remove(&id)) else {
            continue;
        };
        evaluations.sort_by_key(|e| e.provenance.trial);
        search.admit(origin(program), &evaluations);
    }
    search.archive_changes();
    search.restore_bandit(&db.mutator_stats(campaign_id).await?);
    for insight in db.insights(campaign_id).await? {
        search.add_insight(insight.text);
    }
    Ok(total)
}

/// The evaluator's task for this campaign, built off the runtime (it loads a model, or
/// starts a worker that does).
async fn build_task(
    config: &CampaignConfig,
    config_dir: Option<&str>,
    worker: Option<&Path>,
) -> anyhow::Result<Arc<dyn Task>> {
    let task = config.task.clone();
    let dir = PathBuf::from(config_dir.unwrap_or("."));
    let worker = worker.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<dyn Task>> {
        match (task.name, worker) {
            (TaskName::DropIn | TaskName::Recsys, Some(program)) => {
                let isolated = Isolated::new(
                    task.name.name(),
                    worker_command(program, &task, &dir)?,
                    Duration::from_secs_f64(task.timeout_seconds),
                );
                isolated.start()?;
                Ok(Arc::new(isolated))
            }
            _ => task_for(&task, &dir),
        }
    })
    .await
    .context("building the task panicked")?
}

/// The task itself, in this process; `dir` is what a command task's `{config_dir}` means.
pub fn task_for(task: &TaskConfig, dir: &Path) -> anyhow::Result<Arc<dyn Task>> {
    let settings = task.evaluator.clone();
    Ok(match task.name {
        TaskName::DropIn => Arc::new(DropInTask::new(settings.drop_in)?),
        TaskName::Recsys => Arc::new(RecsysTask::new(settings.recsys)?),
        TaskName::Command => command_task(settings.command, dir)?,
    })
}

/// How `program` (the `evokernel` binary) is started as a worker for `task`.
pub fn worker_command(
    program: PathBuf,
    task: &TaskConfig,
    dir: &Path,
) -> anyhow::Result<WorkerCommand> {
    Ok(WorkerCommand {
        program,
        args: vec![
            "eval-worker".into(),
            "--task".into(),
            serde_json::to_string(task)?,
            "--config-dir".into(),
            dir.display().to_string(),
        ],
    })
}

#[cfg(target_os = "linux")]
fn command_task(
    settings: Option<evaluator::command::CommandConfig>,
    dir: &Path,
) -> anyhow::Result<Arc<dyn Task>> {
    let settings = settings
        .context("task \"command\" needs a [task.evaluator.command] section in the config")?;
    Ok(Arc::new(evaluator::command::CommandTask::new(
        settings, dir,
    )?))
}

#[cfg(not(target_os = "linux"))]
fn command_task(
    _: Option<evaluator::config::CommandConfig>,
    _: &Path,
) -> anyhow::Result<Arc<dyn Task>> {
    bail!("the command task runs on Linux only")
}

/// What the score rewards, in a sentence or two, for the LLM's prompts.
fn task_brief(config: &CampaignConfig) -> String {
    let evaluator = &config.task.evaluator;
    match config.task.name {
        TaskName::DropIn => {
            let d = &evaluator.drop_in;
            format!(
                "Replace the attention of the {} language model. A kernel passes when its worst \
                 mean next-token KL divergence from exact attention, over every text slice at \
                 context lengths {:?}, is at most {} nats. A passing kernel scores its {} at {} \
                 tokens; higher is better, so do less attention work while keeping the KL low.",
                d.model,
                d.contexts,
                d.score.kl_epsilon,
                d.score.objective.metric(),
                d.timing_context()
            )
        }
        TaskName::Recsys => "Be the attention of a sequential recommender trained on MovieLens \
             from scratch; the score is validation NDCG@10, higher is better."
            .to_string(),
        TaskName::Command => match &evaluator.command {
            Some(c) => format!(
                "An external scorer runs the program; the score is its `{}` metric ({:?}).",
                c.score_metric, c.direction
            ),
            None => "An external scorer runs the program.".to_string(),
        },
    }
}
