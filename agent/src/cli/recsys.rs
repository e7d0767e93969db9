//! `evokernel recsys`: train the sequential recommender, evaluate it against baselines, and
//! serve it over HTTP.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use recsys::data::{Dataset, LoadOptions, Split};
use recsys::eval::{evaluate, ItemKnn, Popularity, Report};
use recsys::model::{train, Checkpoint, SasRec, SasRecConfig, TrainConfig, EXACT};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train on a dataset and write a checkpoint directory.
    Train(TrainArgs),
    /// Full-ranking HR@10 / NDCG@10 / NDCG@20 of a checkpoint and of the baselines.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A dataset directory: RecBole atomic files, ML-100K u.data, ML-1M ratings.dat or
    /// ML-latest ratings.csv (default: the fetched MovieLens-100K).
    #[arg(long)]
    data: Option<PathBuf>,
    /// An AKL program for attention (default: exact causal attention).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The most epochs (training stops earlier once validation NDCG@10 stops improving).
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Epochs without a better validation NDCG@10 before stopping.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The checkpoint directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Longest history the model reads.
    #[arg(long, default_value_t = 50)]
    max_len: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 2)]
    blocks: usize,
    #[arg(long, default_value_t = 1)]
    heads: usize,
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
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
    /// Neighbours each item keeps in the item-kNN baseline.
    #[arg(long, default_value_t = 100)]
    knn: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(a) => run_train(a),
        Command::Eval(a) => run_eval(a),
    }
}

/// The text of `--kernel`, or exact attention.
pub fn kernel_text(path: Option<&Path>) -> anyhow::Result<String> {
    match path {
        Some(path) => super::read_text(path),
        None => Ok(EXACT.to_string()),
    }
}

fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let dir = match &args.data {
        Some(dir) => dir.clone(),
        None => kernels::assets::MOVIELENS_100K.require()?,
    };
    let options = LoadOptions {
        min_rating: args.min_rating,
        k_core: args.k_core,
    };
    let dataset = Dataset::load(&dir, &options)?;
    let split = Split::leave_one_out(&dataset);
    eprintln!(
        "{}: {} users, {} items, {} interactions; {} validation and test users",
        dataset.name,
        dataset.users.len(),
        dataset.items.len(),
        dataset.n_interactions(),
        split.test.len()
    );
    let kernel = kernel_text(args.kernel.as_deref())?;
    let config = SasRecConfig {
        n_items: dataset.items.len(),
        max_len: args.max_len,
        d_model: args.d_model,
        n_blocks: args.blocks,
        n_heads: args.heads,
        d_ff: 4 * args.d_model,
        dropout: args.dropout,
    };
    let model = SasRec::new(config, &kernel, args.seed).with_context(|| match &args.kernel {
        Some(path) => format!("kernel {}", path.display()),
        None => "the exact kernel".to_string(),
    })?;
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        weight_decay: 0.0,
        patience: args.patience,
        seed: args.seed,
    };
    let report = train(&model, &split, &train_config, |e| {
        eprintln!(
            "epoch {:>3}  loss {:.4}  valid HR@10 {:.4}  NDCG@10 {:.4}  {:.1}s{}",
            e.epoch,
            e.loss,
            e.valid.hr_10,
            e.valid.ndcg_10,
            e.seconds,
            if e.best { "  *" } else { "" }
        )
    })?;
    eprintln!(
        "best epoch {} (valid NDCG@10 {:.4}); trained in {:.1}s",
        report.best_epoch, report.best_valid.ndcg_10, report.seconds
    );
    let checkpoint = Checkpoint {
        model,
        dataset,
        report: Some(report),
    };
    checkpoint.save(&args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let checkpoint = Checkpoint::load(&args.checkpoint)?;
    let split = Split::leave_one_out(&checkpoint.dataset);
    let n_items = split.n_items;
    let rows: Vec<(&str, Report)> = vec![
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
    if args.json {
        let models: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(name, report)| Ok(((*name).to_string(), serde_json::to_value(report)?)))
            .collect::<anyhow::Result<_>>()?;
        let json = serde_json::json!({
            "dataset": checkpoint.dataset.name,
            "test_users": split.test.len(),
            "kernel": checkpoint.model.kernel.text,
            "convention": "full ranking over all items; seen_filtered removes the items of the \
                           user's history (never the target); ties rank against the target",
            "training_seconds": checkpoint.report.as_ref().map(|r| r.seconds),
            "best_epoch": checkpoint.report.as_ref().map(|r| r.best_epoch),
            "models": models,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "{}: {} test users, full ranking over {} items (kernel: {})",
        checkpoint.dataset.name,
        split.test.len(),
        n_items,
        checkpoint.model.kernel.text
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
    if let Some(report) = &checkpoint.report {
        println!(
            "trained {:.1}s, best epoch {} of {}",
            report.seconds,
            report.best_epoch,
            report.epochs.len()
        );
    }
    eprintln!("evaluated in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
