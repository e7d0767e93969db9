//! `evokernel recsys`: train the sequential recommender, evaluate it against baselines (and
//! fused with RecGPT's tags), enrich it with the local LLM, and serve it over HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use agent::db::{short_hash, Db, EnrichmentKey};
use agent::llm::local::LocalLlm;
use agent::recgpt::{self, Enricher, Plan, PlanConfig, RunOptions};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use recsys::data::{Dataset, EvalCase, LoadOptions, Split};
use recsys::eval::{evaluate, report_of, ItemKnn, Popularity, Report};
use recsys::fused::{evaluate_fused, Alpha, TagMatcher};
use recsys::model::{train, Checkpoint, KernelSource, SasRec, SasRecConfig, TrainConfig, EXACT};
use recsys::semantic::{GenerativeCheckpoint, GenerativeConfig};
use recsys::serve::{Explanations, RawId, RecommendBody, ServeConfig, TagFusion};

use super::block_on;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train on a dataset and write a checkpoint directory.
    Train(TrainArgs),
    /// Full-ranking HR@10 / NDCG@10 / NDCG@20 of a checkpoint and of the baselines.
    Eval(EvalArgs),
    /// Ask the local LLM for user interest profiles, item tags and explanations (RecGPT),
    /// cached in the database; a stopped run resumes where it ended.
    Enrich(EnrichArgs),
    /// Serve a checkpoint over HTTP (see GET /openapi.json).
    Serve(ServeArgs),
    /// Drive an in-process server on loopback at fixed concurrency: p50, p99, requests/s.
    BenchServe(BenchServeArgs),
    /// Semantic IDs of the items for generative retrieval.
    SemanticIds {
        #[command(subcommand)]
        which: super::semantic_ids::Command,
    },
}

/// Which retriever `recsys train` fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Retriever {
    /// A transformer over item ids scoring every item (SASRec).
    Sasrec,
    /// A transformer over the semantic-ID codes of items, recommending by beam search over
    /// the trie of valid IDs (needs --semantic-ids).
    SemanticId,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A directory written by `recsys train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Run this kernel instead of the one the checkpoint was trained with: an AKL file, a
    /// library kernel's name, or a program id or hash prefix in --db.
    #[arg(long)]
    kernel: Option<String>,
    /// The largest request body accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = ServeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// The largest request line and headers accepted, in bytes (larger: 431).
    #[arg(long, default_value_t = ServeConfig::default().max_header_bytes)]
    max_header_bytes: usize,
    /// Seconds a request's line and headers may take to arrive, counted from the
    /// connection's opening or, on a kept-alive connection, from the request's first byte
    /// (slower: 408, and the connection closes).
    #[arg(long, default_value_t = ServeConfig::default().header_read_timeout.as_secs_f64())]
    header_read_timeout: f64,
    /// Seconds a request body may take to arrive once its headers have (slower: 408).
    #[arg(long, default_value_t = ServeConfig::default().body_read_timeout.as_secs_f64())]
    body_read_timeout: f64,
    /// Seconds a kept-alive connection may wait, silent, for its next request.
    #[arg(long, default_value_t = ServeConfig::default().idle_timeout.as_secs_f64())]
    idle_timeout: f64,
    /// Connections open at once at most (fewer if the open-file limit, `ulimit -n`, leaves
    /// less room). At the cap, the oldest connection that is idle or has not sent a whole
    /// request is closed to let a new one in.
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    max_connections: usize,
    /// Requests answered at once at most; more get 503 with `Retry-After`. The model itself
    /// scores on the compute threads (--threads).
    #[arg(long, default_value_t = ServeConfig::default().max_in_flight)]
    max_in_flight: usize,
    /// The local model whose cached explanations answer `explain: true` (from --db).
    #[arg(long, default_value = "smollm2")]
    recgpt_model: String,
    /// Rank known users with cached profile tags by RecGPT's fused score
    /// `α·model + (1−α)·tag match` (tags of --recgpt-model from --db); 1 = the model alone.
    #[arg(long)]
    alpha: Option<f32>,
}

#[derive(clap::Args)]
pub struct EnrichArgs {
    /// A dataset directory (default: the fetched MovieLens-100K; with --explain-checkpoint,
    /// the checkpoint's own dataset).
    #[arg(long, conflicts_with = "explain_checkpoint")]
    data: Option<PathBuf>,
    /// The local model: `smollm2`, `qwen-coder`, `gemma3` or a GGUF path.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Profile the first N users.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Tag the first N items instead of the items the users' histories and recommendations touch.
    #[arg(long)]
    items: Option<usize>,
    /// Also tag each user's top-k recommendations of this checkpoint and explain them.
    #[arg(long)]
    explain_checkpoint: Option<PathBuf>,
    /// Recommendations per user.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Explain the recommendations of only the first N users (default: all enriched).
    #[arg(long)]
    explain_users: Option<usize>,
    /// Stop after making this many new rows (the next run resumes).
    #[arg(long)]
    max_new: Option<usize>,
    /// Print the run's report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct BenchServeArgs {
    /// A directory written by `recsys train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Run this kernel instead of the one the checkpoint was trained with: an AKL file, a
    /// library kernel's name, or a program id or hash prefix in --db.
    #[arg(long)]
    kernel: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests to time (after 100 untimed warm-up requests).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Stop timing after this many seconds even if requests remain.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Items per recommendation.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A dataset directory: RecBole atomic files, ML-100K u.data, ML-1M ratings.dat or
    /// ML-latest ratings.csv (default: the fetched MovieLens-100K).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The attention: an AKL file, a library kernel's name, or a program id or hash prefix
    /// in --db (default: exact causal attention).
    #[arg(long)]
    kernel: Option<String>,
    /// The most epochs (training stops earlier once validation NDCG@10 stops improving).
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Epochs without a better validation NDCG@10 before stopping.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Stop after the epoch during which this much wall time passed.
    #[arg(long)]
    max_seconds: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The checkpoint directory to write.
    #[arg(long)]
    out: PathBuf,
    /// The model to train.
    #[arg(long, value_enum, default_value_t = Retriever::Sasrec)]
    retriever: Retriever,
    /// The file written by `recsys semantic-ids build` (for --retriever semantic-id).
    #[arg(long)]
    semantic_ids: Option<PathBuf>,
    /// Longest history the model reads, in items (default: 200 for sasrec, 20 for
    /// semantic-id, whose items are 4 tokens each).
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 2)]
    blocks: usize,
    #[arg(long, default_value_t = 1)]
    heads: usize,
    /// Dropout on embeddings and residual branches while training.
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// AdamW's learning rate.
    #[arg(long, visible_alias = "lr", default_value_t = 1e-3)]
    learning_rate: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Training windows per optimiser step (default: 64 for sasrec, 128 for semantic-id).
    #[arg(long)]
    batch_size: Option<usize>,
    /// How many transitions apart the windows cut from one long history end (1 to max_len);
    /// the rest of each window is context only (sasrec only; default: half of max_len).
    #[arg(long)]
    window_step: Option<usize>,
    /// Keep only ratings at least this high (default: every rating is an interaction).
    #[arg(long)]
    min_rating: Option<f64>,
    /// Keep only users and items with at least this many interactions.
    #[arg(long)]
    k_core: Option<usize>,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A directory written by `recsys train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluate the trained weights with this kernel in place of their own (drop-in): an AKL
    /// file, a library kernel's name, or a program id or hash prefix in --db.
    #[arg(long)]
    kernel: Option<String>,
    /// Neighbours each item keeps in the item-kNN baseline.
    #[arg(long, default_value_t = 100)]
    knn: usize,
    /// Also rank by RecGPT's fused score `α·model + (1−α)·tag match` at each α (comma
    /// separated), on the test users with cached profiles (from --db). The ML-100K sweep in
    /// the README suggests 0.9.
    #[arg(long, value_delimiter = ',')]
    alpha: Vec<f32>,
    /// The local model whose cached profiles and item tags fused scoring reads.
    #[arg(long, default_value = "smollm2")]
    recgpt_model: String,
    /// Add the semantic-ID retriever in this directory (written by `recsys train
    /// --retriever semantic-id` on the same dataset) as one more row.
    #[arg(long)]
    semantic_id_checkpoint: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(db: &Path, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(a) => run_train(db, a),
        Command::Eval(a) => run_eval(db, a),
        Command::Enrich(a) => run_enrich(db, a),
        Command::Serve(a) => run_serve(db, a),
        Command::BenchServe(a) => run_bench_serve(db, a),
        Command::SemanticIds { which } => super::semantic_ids::run(which),
    }
}

/// A kernel that `--kernel` named, with where it came from.
#[derive(Debug)]
pub struct ChosenKernel {
    pub text: String,
    /// What was named, for messages: `file F`, `library kernel N`, `program I of campaign C`.
    pub origin: String,
    /// Its program, when it came from the database.
    pub source: Option<KernelSource>,
}

impl ChosenKernel {
    fn exact() -> ChosenKernel {
        ChosenKernel {
            text: EXACT.to_string(),
            origin: "the exact kernel".to_string(),
            source: None,
        }
    }

    /// Runs this kernel in `checkpoint`'s model in place of its own (a drop-in: the same
    /// weights, another attention rule).
    fn replace_in(self, checkpoint: &mut Checkpoint) -> anyhow::Result<()> {
        checkpoint
            .model
            .set_kernel(&self.text)
            .with_context(|| format!("kernel from {}", self.origin))?;
        eprintln!("running {} in place of the trained kernel", self.origin);
        checkpoint.kernel_source = self.source;
        Ok(())
    }
}

/// Resolves `--kernel` for every `recsys` subcommand: a file if one exists at that path, else
/// a library kernel of that name, else a program id or unique hash prefix in the database at
/// `db`, which must already exist (it is never created). `None` when no kernel was named.
pub fn resolve_kernel(db: &Path, reference: Option<&str>) -> anyhow::Result<Option<ChosenKernel>> {
    reference.map(|r| resolve_reference(db, r)).transpose()
}

fn resolve_reference(db: &Path, reference: &str) -> anyhow::Result<ChosenKernel> {
    let path = Path::new(reference);
    if path.is_file() {
        return Ok(ChosenKernel {
            text: super::read_text(path)?,
            origin: format!("file {reference}"),
            source: None,
        });
    }
    if let Some(text) = kernels::akl::library::source(reference) {
        return Ok(ChosenKernel {
            text: text.to_string(),
            origin: format!("library kernel {reference}"),
            source: None,
        });
    }
    anyhow::ensure!(
        !reference.is_empty() && reference.chars().all(|c| c.is_ascii_hexdigit()),
        "--kernel `{reference}`: no such file, no library kernel of that name ({}), and not a \
         program id or hash prefix (hex digits) of the database --db {}",
        kernels::akl::library::names()
            .collect::<Vec<_>>()
            .join(", "),
        db.display()
    );
    block_on(async {
        let looked_up = || {
            format!(
                "--kernel `{reference}` is no file or library kernel, so it was looked up as a \
                 program id or hash prefix in --db {}",
                db.display()
            )
        };
        let db = Db::open_existing(db).await.with_context(looked_up)?;
        let program = db
            .resolve_program(reference)
            .await
            .with_context(looked_up)?;
        let campaign = db.campaign(program.campaign_id).await?.name;
        db.close().await?;
        Ok(ChosenKernel {
            origin: format!(
                "program {} of campaign {campaign} (hash {})",
                program.id,
                short_hash(&program.hash)
            ),
            text: program.canonical_text,
            source: Some(KernelSource {
                program_id: program.id,
                campaign,
            }),
        })
    })
}

/// Keeps memory that training frees in the process for its next step. A step allocates and
/// frees score tensors of tens of MB; glibc hands blocks that large back to the kernel on
/// every free, and faulting their pages in again took as much time as the training itself
/// (19 s of system time against 29 s of user time over two ML-100K epochs; 0.7 s with this).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_for_reuse() {
    // SAFETY: mallopt only sets allocator parameters; it is called before training starts.
    let all_set = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
    };
    if !all_set {
        tracing::warn!(
            "glibc refused an allocator setting: training may spend its time in page faults"
        );
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_for_reuse() {}

fn run_train(db: &Path, args: TrainArgs) -> anyhow::Result<()> {
    keep_freed_memory_for_reuse();
    let options = LoadOptions {
        min_rating: args.min_rating,
        k_core: args.k_core,
    };
    let dataset = super::semantic_ids::load_dataset(args.data.as_deref(), &options)?;
    let split = Split::leave_one_out(&dataset);
    eprintln!(
        "{}: {} users, {} items, {} interactions; {} validation and test users",
        dataset.name,
        dataset.users.len(),
        dataset.items.len(),
        dataset.n_interactions(),
        split.test.len()
    );
    let kernel = resolve_kernel(db, args.kernel.as_deref())?.unwrap_or_else(ChosenKernel::exact);
    let sasrec = args.retriever == Retriever::Sasrec;
    let max_len = args.max_len.unwrap_or(if sasrec { 200 } else { 20 });
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size.unwrap_or(if sasrec { 64 } else { 128 }),
        learning_rate: args.learning_rate,
        weight_decay: args.weight_decay,
        patience: args.patience,
        seed: args.seed,
        max_seconds: args.max_seconds,
        window_step: match args.window_step {
            None if sasrec => Some(max_len.div_ceil(2)),
            step => step,
        },
    };
    if args.retriever == Retriever::SemanticId {
        let ids = args.semantic_ids.as_deref().context(
            "--retriever semantic-id needs --semantic-ids FILE (write one with \
             `evokernel recsys semantic-ids build --out FILE`)",
        )?;
        anyhow::ensure!(
            args.window_step.is_none(),
            "--window-step is for --retriever sasrec (the semantic-ID retriever's windows do not overlap)"
        );
        let config = GenerativeConfig {
            history_items: max_len,
            d_model: args.d_model,
            n_blocks: args.blocks,
            n_heads: args.heads,
            d_ff: 4 * args.d_model,
            dropout: args.dropout,
        };
        return super::semantic_ids::train(
            dataset,
            ids,
            config,
            &kernel.text,
            &train_config,
            &args.out,
        );
    }
    anyhow::ensure!(
        args.semantic_ids.is_none(),
        "--semantic-ids is for --retriever semantic-id"
    );
    let config = SasRecConfig {
        n_items: dataset.items.len(),
        max_len,
        d_model: args.d_model,
        n_blocks: args.blocks,
        n_heads: args.heads,
        d_ff: 4 * args.d_model,
        dropout: args.dropout,
    };
    let model = SasRec::new(config, &kernel.text, args.seed)
        .with_context(|| format!("kernel from {}", kernel.origin))?;
    let report = train(&model, &split, &train_config, |e, model| {
        if e.best {
            // Each new best is on disk at once: a killed run keeps it.
            Checkpoint::write(&args.out, model, &dataset, None, kernel.source.as_ref())?;
        }
        eprintln!(
            "epoch {:>3}  loss {:.4}  valid HR@10 {:.4}  NDCG@10 {:.4}  {:.1}s{}",
            e.epoch,
            e.loss,
            e.valid.hr_10,
            e.valid.ndcg_10,
            e.seconds,
            if e.best { "  * saved" } else { "" }
        );
        Ok(())
    })?;
    eprintln!(
        "best epoch {} (valid NDCG@10 {:.4}); trained in {:.1}s",
        report.best_epoch, report.best_valid.ndcg_10, report.seconds
    );
    let checkpoint = Checkpoint {
        model,
        dataset,
        report: Some(report),
        kernel_source: kernel.source,
    };
    checkpoint.save(&args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn run_eval(db: &Path, args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let alphas = args
        .alpha
        .iter()
        .map(|&a| Alpha::new(a).context("--alpha"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut checkpoint = Checkpoint::load(&args.checkpoint)?;
    if let Some(kernel) = resolve_kernel(db, args.kernel.as_deref())? {
        kernel.replace_in(&mut checkpoint)?;
    }
    let split = Split::leave_one_out(&checkpoint.dataset);
    let n_items = split.n_items;
    let mut rows: Vec<(&str, Report)> = vec![
        ("sasrec", evaluate(&checkpoint.model, &split.test)?),
        (
            "popularity",
            evaluate(&Popularity::fit(&split.train, n_items), &split.test)?,
        ),
        (
            "item-knn",
            evaluate(&ItemKnn::fit(&split.train, n_items, args.knn), &split.test)?,
        ),
    ];
    let generative = match &args.semantic_id_checkpoint {
        Some(dir) => Some(GenerativeCheckpoint::load(dir)?),
        None => None,
    };
    if let Some(generative) = &generative {
        anyhow::ensure!(
            generative.dataset == checkpoint.dataset,
            "{} was trained on another dataset (or other --min-rating / --k-core) than {}",
            args.semantic_id_checkpoint
                .as_deref()
                .unwrap_or(Path::new(""))
                .display(),
            args.checkpoint.display()
        );
        rows.push(("semantic-id", evaluate(&generative.retriever, &split.test)?));
    }
    let fused = if alphas.is_empty() {
        None
    } else {
        Some(fused_evaluation(
            db,
            &checkpoint,
            &alphas,
            &args.recgpt_model,
        )?)
    };
    if args.json {
        let models: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(name, report)| Ok(((*name).to_string(), serde_json::to_value(report)?)))
            .collect::<anyhow::Result<_>>()?;
        let json = serde_json::json!({
            "dataset": checkpoint.dataset.name,
            "test_users": split.test.len(),
            "kernel": checkpoint.model.kernel.text,
            "kernel_sha256": checkpoint.model.kernel.hash,
            "kernel_source": checkpoint.kernel_source,
            "convention": "full ranking over all items; seen_filtered removes the items of the \
                           user's history (never the target); ties rank against the target",
            "training_seconds": checkpoint.report.as_ref().map(|r| r.seconds),
            "best_epoch": checkpoint.report.as_ref().map(|r| r.best_epoch),
            "models": models,
            "semantic_id": generative.as_ref().map(|g| serde_json::json!({
                "convention": format!("beam search over the trie of valid IDs, width {} + the \
                                       history's distinct items; items outside the beam rank \
                                       last", recsys::semantic::RANKED),
                "kernel": g.retriever.model.kernel.text,
                "vocab_sizes": g.ids.vocab_sizes,
                "history_items": g.retriever.config.history_items,
                "training_seconds": g.report.as_ref().map(|r| r.seconds),
                "best_epoch": g.report.as_ref().map(|r| r.best_epoch),
            })),
            "fused": fused,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let kernel_line = checkpoint
        .model
        .kernel
        .text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "{}: {} test users, full ranking over {} items\nkernel: {kernel_line}\nkernel sha256: {}{}",
        checkpoint.dataset.name,
        split.test.len(),
        n_items,
        checkpoint.model.kernel.hash,
        checkpoint
            .kernel_source
            .as_ref()
            .map_or(String::new(), |s| format!(
                " (program {} of campaign {})",
                s.program_id, s.campaign
            )),
    );
    println!(
        "{:<12} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}",
        "", "HR@10", "NDCG@10", "NDCG@20", "HR@10", "NDCG@10", "NDCG@20"
    );
    println!("{:<12} {:^26}   {:^26}", "", "seen filtered", "unfiltered");
    for (name, r) in &rows {
        let (f, u) = (r.seen_filtered, r.unfiltered);
        println!(
            "{name:<12} {:>8.4} {:>8.4} {:>8.4}   {:>8.4} {:>8.4} {:>8.4}",
            f.hr_10, f.ndcg_10, f.ndcg_20, u.hr_10, u.ndcg_10, u.ndcg_20
        );
    }
    if let Some(fused) = &fused {
        println!(
            "\nfused score α·model + (1−α)·tag match on the {} test users with profiles \
             ({} items tagged; {} / {})",
            fused.users, fused.items_tagged, fused.key.dataset, fused.key.model
        );
        let plain = std::iter::once(("sasrec".to_string(), fused.plain));
        let fused_rows = fused
            .alphas
            .iter()
            .map(|r| (format!("α = {}", r.alpha), r.report));
        for (name, r) in plain.chain(fused_rows) {
            let (f, u) = (r.seen_filtered, r.unfiltered);
            println!(
                "{name:<12} {:>8.4} {:>8.4} {:>8.4}   {:>8.4} {:>8.4} {:>8.4}",
                f.hr_10, f.ndcg_10, f.ndcg_20, u.hr_10, u.ndcg_10, u.ndcg_20
            );
        }
    }
    if let Some(report) = &checkpoint.report {
        println!(
            "trained {:.1}s, best epoch {} of {}",
            report.seconds,
            report.best_epoch,
            report.epochs.len()
        );
    }
    if let Some(report) = generative.as_ref().and_then(|g| g.report.as_ref()) {
        println!(
            "semantic-id: beam search over the trie of valid IDs ({} + seen items wide; items \
             outside the beam rank last); trained {:.1}s, best epoch {} of {}",
            recsys::semantic::RANKED,
            report.seconds,
            report.best_epoch,
            report.epochs.len()
        );
    }
    eprintln!("evaluated in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Fused scoring's reports at each α beside the plain model, on the test users with a
/// cached profile that has tags.
#[derive(serde::Serialize)]
struct FusedEvaluation {
    key: EnrichmentKey,
    users: usize,
    items_tagged: usize,
    plain: Report,
    alphas: Vec<AlphaReport>,
}

#[derive(serde::Serialize)]
struct AlphaReport {
    alpha: f32,
    report: Report,
}

/// RecGPT's cached tags for `dataset` by `recgpt_model` in the database at `db`: the key,
/// each user's profile tags by raw user id (users whose profile has none left out), and
/// each item's tags by dense item id (empty where none is cached).
#[allow(clippy::type_complexity)]
fn cached_tags(
    db: &Path,
    dataset: &Dataset,
    recgpt_model: &str,
) -> anyhow::Result<(
    EnrichmentKey,
    HashMap<String, Vec<String>>,
    Vec<Vec<String>>,
)> {
    let key = recgpt::enrichment_key(dataset, &recgpt::model_name(recgpt_model));
    let (profiles, tagged) = block_on(async {
        let db = Db::open_existing(db).await?;
        Ok((db.profiles(&key).await?, db.item_tags(&key).await?))
    })?;
    let user_tags = profiles
        .into_iter()
        .filter(|p| !p.tags.is_empty())
        .map(|p| (p.user_id, p.tags))
        .collect();
    let item_index = dataset.item_index();
    let mut item_tags = vec![Vec::new(); dataset.items.len()];
    for t in tagged {
        if let Some(&i) = item_index.get(&t.item_id) {
            item_tags[i as usize] = t.tags;
        }
    }
    Ok((key, user_tags, item_tags))
}

fn fused_evaluation(
    db: &Path,
    checkpoint: &Checkpoint,
    alphas: &[Alpha],
    recgpt_model: &str,
) -> anyhow::Result<FusedEvaluation> {
    let dataset = &checkpoint.dataset;
    let (key, user_tags, item_tags) = cached_tags(db, dataset, recgpt_model)?;
    let split = Split::leave_one_out(dataset);
    let cases: Vec<EvalCase> = split
        .test
        .into_iter()
        .filter(|c| user_tags.contains_key(dataset.users[c.user].as_str()))
        .collect();
    anyhow::ensure!(
        !cases.is_empty(),
        "no test user has a cached profile with tags for dataset {} and model {} in {}: run \
         `evokernel recsys enrich --explain-checkpoint CKPT --model {recgpt_model} --users N` first",
        key.dataset,
        key.model,
        db.display()
    );
    let matcher = TagMatcher::new(&item_tags);
    let histories: Vec<&[u32]> = cases.iter().map(|c| c.history.as_slice()).collect();
    let scores = checkpoint.model.score_histories(&histories)?;
    let case_tags: Vec<&[String]> = cases
        .iter()
        .map(|c| user_tags[dataset.users[c.user].as_str()].as_slice())
        .collect();
    let reports = evaluate_fused(&cases, &scores, &case_tags, &matcher, alphas);
    Ok(FusedEvaluation {
        users: cases.len(),
        items_tagged: matcher.tagged(),
        plain: report_of(&cases, &scores),
        alphas: alphas
            .iter()
            .zip(reports)
            .map(|(a, report)| AlphaReport {
                alpha: a.get(),
                report,
            })
            .collect(),
        key,
    })
}

fn run_enrich(db_path: &Path, args: EnrichArgs) -> anyhow::Result<()> {
    let checkpoint = match &args.explain_checkpoint {
        Some(path) => Some(Checkpoint::load(path)?),
        None => None,
    };
    let dataset = match (&checkpoint, &args.data) {
        (Some(c), _) => c.dataset.clone(),
        (None, Some(dir)) => Dataset::load(dir, &LoadOptions::default())?,
        (None, None) => Dataset::load(
            &kernels::assets::MOVIELENS_100K.require()?,
            &LoadOptions::default(),
        )?,
    };
    anyhow::ensure!(args.k > 0, "--k must be at least 1");
    let config = PlanConfig {
        users: args.users,
        items: args.items,
        k: args.k,
        explain_users: args.explain_users,
    };
    let plan = Plan::build(&dataset, &config, checkpoint.as_ref().map(|c| &c.model))?;
    let path = kernels::assets::resolve_model(&args.model)?;
    let llm =
        Arc::new(LocalLlm::load(&path).with_context(|| format!("loading {}", path.display()))?);
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    super::campaign::init_logs(&progress);
    let options = RunOptions {
        max_new: args.max_new,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let (report, counts, key) = runtime.block_on(async {
        let stop = options.stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::warn!("stopping after the row in flight (run again to resume)");
                stop.store(true, Ordering::Relaxed);
            }
        });
        let db = Db::open(db_path).await?;
        let enricher = Enricher::new(&db, llm, &dataset);
        let report = enricher.run(&plan, &options, &progress).await?;
        let counts = db.enrichment_counts(enricher.key()).await?;
        let key = enricher.key().clone();
        db.close().await?;
        anyhow::Ok((report, counts, key))
    })?;
    runtime.shutdown_background();
    if args.json {
        let json = serde_json::json!({"key": key, "run": report, "stored": counts});
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "{} / {} / prompt v{}{}",
        key.dataset,
        key.model,
        key.prompt_version,
        if report.stopped {
            " (stopped early: run again to resume)"
        } else {
            ""
        }
    );
    println!(
        "{:<14} {:>6} {:>8} {:>9} {:>10} {:>8} {:>9}",
        "", "made", "skipped", "unusable", "s per row", "stored", "unusable"
    );
    for (name, stage, stored, bad) in [
        (
            "item tags",
            report.item_tags,
            counts.item_tags,
            counts.item_tags_unusable,
        ),
        (
            "profiles",
            report.profiles,
            counts.profiles,
            counts.profiles_unusable,
        ),
        (
            "explanations",
            report.explanations,
            counts.explanations,
            counts.explanations_unusable,
        ),
    ] {
        let per_row = stage
            .seconds_per_row()
            .map_or("-".to_string(), |s| format!("{s:.2}"));
        println!(
            "{name:<14} {:>6} {:>8} {:>9} {per_row:>10} {stored:>8} {bad:>9}",
            stage.made, stage.skipped, stage.unusable
        );
    }
    if report.explanations.made > 0 {
        println!(
            "explanations made: {} name the recommended movie, {} a watched one their prompt showed",
            report.explanations_naming_item, report.explanations_naming_liked
        );
    }
    if report.explanations_without_profile > 0 {
        println!(
            "{} explanations not asked: their user has no usable profile",
            report.explanations_without_profile
        );
    }
    Ok(())
}

/// The cached explanations of `recgpt_model` for `dataset` in the database at `db`, if it
/// exists; the server then answers `explain: true` without any model.
fn cached_explanations(
    db: &Path,
    dataset: &Dataset,
    recgpt_model: &str,
) -> anyhow::Result<Explanations> {
    if !db.exists() {
        let why = format!(
            "the server found no database at {} to read explanations from",
            db.display()
        );
        eprintln!("{why}: serving without explanations");
        return Ok(Explanations::none(why));
    }
    let key = recgpt::enrichment_key(dataset, &recgpt::model_name(recgpt_model));
    let rows = block_on(async { Ok(Db::open_existing(db).await?.explanations(&key).await?) })?;
    let mut explanations = Explanations::none(format!(
        "the database {} holds no explanations of dataset {} by {} (`evokernel recsys enrich \
         --explain-checkpoint CKPT --model {recgpt_model}` writes them)",
        db.display(),
        key.dataset,
        key.model
    ));
    for row in rows.iter().filter(|r| !r.sentence.is_empty()) {
        explanations.insert(&row.user_id, &row.item_id, &row.sentence);
    }
    eprintln!(
        "{} cached explanations for {} by {}",
        explanations.len(),
        key.dataset,
        key.model
    );
    Ok(explanations)
}

/// The server application for a checkpoint, with `kernel` in place of its own if given,
/// answering `explain: true` from `explanations`.
fn load_app(
    checkpoint: &Path,
    kernel: Option<ChosenKernel>,
    config: ServeConfig,
    explanations: Option<(&Path, &str)>,
    alpha: Option<Alpha>,
) -> anyhow::Result<recsys::serve::App> {
    let mut checkpoint = Checkpoint::load(checkpoint)?;
    if let Some(kernel) = kernel {
        kernel.replace_in(&mut checkpoint)?;
    }
    let fusion = match (alpha, explanations) {
        (Some(alpha), Some((db, model))) => {
            let (key, users, item_tags) = cached_tags(db, &checkpoint.dataset, model)?;
            anyhow::ensure!(
                !users.is_empty(),
                "--alpha: no user has a cached profile with tags for dataset {} and model {} in \
                 {}: run `evokernel recsys enrich --explain-checkpoint CKPT --model {model} \
                 --users N` first",
                key.dataset,
                key.model,
                db.display()
            );
            eprintln!(
                "fused ranking at α = {} for the {} users with cached tags",
                alpha.get(),
                users.len()
            );
            Some(TagFusion {
                alpha,
                items: TagMatcher::new(&item_tags),
                users,
            })
        }
        _ => None,
    };
    let explanations = match explanations {
        Some((db, model)) => cached_explanations(db, &checkpoint.dataset, model)?,
        None => Explanations::default(),
    };
    Ok(recsys::serve::app_with_context(
        checkpoint,
        config,
        explanations,
        fusion,
    )?)
}

/// `--NAME SECONDS` as a duration, refusing what is not a positive number.
fn seconds(name: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        value > 0.0,
        "--{name} must be a positive number of seconds, not {value}"
    );
    std::time::Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} {value} is not a usable number of seconds"))
}

fn run_serve(db: &Path, args: ServeArgs) -> anyhow::Result<()> {
    for (name, value) in [
        ("max-body-bytes", args.max_body_bytes),
        ("max-header-bytes", args.max_header_bytes),
        ("max-connections", args.max_connections),
        ("max-in-flight", args.max_in_flight),
    ] {
        anyhow::ensure!(value > 0, "--{name} must be at least 1");
    }
    let config = ServeConfig {
        max_body_bytes: args.max_body_bytes,
        max_header_bytes: args.max_header_bytes,
        header_read_timeout: seconds("header-read-timeout", args.header_read_timeout)?,
        body_read_timeout: seconds("body-read-timeout", args.body_read_timeout)?,
        idle_timeout: seconds("idle-timeout", args.idle_timeout)?,
        max_connections: args.max_connections,
        max_in_flight: args.max_in_flight,
    };
    let alpha = args
        .alpha
        .map(|a| Alpha::new(a).context("--alpha"))
        .transpose()?;
    let app = load_app(
        &args.checkpoint,
        resolve_kernel(db, args.kernel.as_deref())?,
        config,
        Some((db, args.recgpt_model.as_str())),
        alpha,
    )?;
    // The model scores on rayon's pool; the async side needs no blocking pool beyond the
    // address lookup at start.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        eprintln!(
            "serving {} on http://{} (at most {} connections, {} requests in flight, {} \
             scoring threads; GET /openapi.json for the API; Ctrl-C stops)",
            args.checkpoint.display(),
            listener.local_addr()?,
            recsys::serve::connection_cap(&config),
            config.max_in_flight,
            rayon::current_num_threads(),
        );
        recsys::serve::run(listener, app).await;
        anyhow::Ok(())
    })
}

/// Latency quantile `q` of sorted durations, in milliseconds.
fn quantile_ms(sorted: &[std::time::Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn run_bench_serve(db: &Path, args: BenchServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let kernel = resolve_kernel(db, args.kernel.as_deref())?;
    let checkpoint_users = Checkpoint::load(&args.checkpoint)?.dataset.users;
    anyhow::ensure!(!checkpoint_users.is_empty(), "the checkpoint has no users");
    let app = load_app(&args.checkpoint, kernel, Default::default(), None, None)?;
    let runtime = tokio::runtime::Runtime::new().context("could not start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1/recommend", listener.local_addr()?);
        tokio::spawn(recsys::serve::run(listener, app));
        let client = reqwest::Client::new();
        let users = std::sync::Arc::new(checkpoint_users);
        // The same users in the same order every run: request i asks for user i·7919 mod n.
        let body = move |i: usize| {
            let request = RecommendBody {
                user_id: Some(RawId::Text(users[(i * 7919) % users.len()].clone())),
                k: Some(args.k as u64),
                ..Default::default()
            };
            serde_json::to_string(&request).unwrap_or_default()
        };
        let send = |client: reqwest::Client, url: String, body: String| async move {
            let started = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            anyhow::Ok((started.elapsed(), ok))
        };
        for i in 0..100 {
            send(client.clone(), url.clone(), body(i)).await?;
        }
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let deadline = Instant::now() + std::time::Duration::from_secs_f64(args.max_seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (client, url, next, body) =
                (client.clone(), url.clone(), next.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut timings = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= args.requests || Instant::now() >= deadline {
                        return anyhow::Ok(timings);
                    }
                    timings.push(send(client.clone(), url.clone(), body(i)).await?);
                }
            }));
        }
        let mut timings = Vec::new();
        for task in tasks {
            timings.extend(task.await??);
        }
        let wall = started.elapsed().as_secs_f64();
        let failed = timings.iter().filter(|(_, ok)| !ok).count();
        let mut latencies: Vec<_> = timings.iter().map(|(d, _)| *d).collect();
        latencies.sort();
        let (p50, p99) = (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99));
        let rps = latencies.len() as f64 / wall;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "requests": latencies.len(), "failed": failed, "concurrency": args.concurrency,
                    "seconds": wall, "requests_per_second": rps,
                    "p50_ms": p50, "p90_ms": quantile_ms(&latencies, 0.9), "p99_ms": p99,
                    "max_ms": quantile_ms(&latencies, 1.0),
                })
            );
        } else {
            println!(
                "{} requests ({failed} failed) at concurrency {} in {wall:.1}s: {rps:.0} req/s, \
                 p50 {p50:.2} ms, p90 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
                latencies.len(),
                args.concurrency,
                quantile_ms(&latencies, 0.9),
                quantile_ms(&latencies, 1.0),
            );
        }
        anyhow::Ok(())
    })
}
