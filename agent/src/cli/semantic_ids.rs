//! `evokernel recsys semantic-ids build` and the semantic-ID retriever's side of
//! `recsys train --retriever semantic-id`: item embeddings from the local LLM (cached),
//! residual k-means IDs, and the generative retriever trained over them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use recsys::data::{Dataset, LoadOptions, Split};
use recsys::model::TrainConfig;
use recsys::semantic::{
    train_generative, GenerativeCheckpoint, GenerativeConfig, GenerativeRetriever, ItemEmbeddings,
    RqConfig, SemanticIds,
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Embed every item's text with the local LLM (cached) and cluster the embeddings by
    /// residual k-means into unique semantic IDs.
    Build(BuildArgs),
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// A dataset directory (default: the fetched MovieLens-100K).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Keep only ratings at least this high.
    #[arg(long)]
    min_rating: Option<f64>,
    /// Keep only users and items with at least this many interactions.
    #[arg(long)]
    k_core: Option<usize>,
    /// The local model whose hidden states embed the items: `smollm2`, `qwen-coder`,
    /// `gemma3` or a GGUF path.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Levels of residual k-means (each ID has one more code, for disambiguation).
    #[arg(long, default_value_t = 3)]
    levels: usize,
    /// Codes per level.
    #[arg(long, default_value_t = 64)]
    codebook_size: usize,
    /// Seeds k-means++.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where item embeddings are cached, keyed by the item texts and the model.
    #[arg(long, default_value = "evokernel-cache")]
    cache_dir: PathBuf,
    /// The semantic-ID file to write (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build(args) => run_build(args),
    }
}

/// The dataset in `--data`, or the fetched MovieLens-100K.
pub fn load_dataset(data: Option<&Path>, options: &LoadOptions) -> anyhow::Result<Dataset> {
    let dir = match data {
        Some(dir) => dir.to_path_buf(),
        None => kernels::assets::MOVIELENS_100K.require()?,
    };
    Ok(Dataset::load(&dir, options)?)
}

fn run_build(args: BuildArgs) -> anyhow::Result<()> {
    let options = LoadOptions {
        min_rating: args.min_rating,
        k_core: args.k_core,
    };
    let dataset = load_dataset(args.data.as_deref(), &options)?;
    let model_path = kernels::assets::resolve_model(&args.model)?;
    let progress = ProgressBar::new(dataset.items.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} items")
            .expect("a valid template"),
    );
    let started = Instant::now();
    let (embeddings, cached) =
        ItemEmbeddings::cached_or_compute(&model_path, &dataset.items, &args.cache_dir, |done| {
            progress.set_position(done as u64)
        })
        .with_context(|| format!("embedding the items with {}", model_path.display()))?;
    progress.finish_and_clear();
    let embed_seconds = started.elapsed().as_secs_f64();
    let config = RqConfig {
        levels: args.levels,
        codebook_size: args.codebook_size,
        seed: args.seed,
        ..RqConfig::default()
    };
    let started = Instant::now();
    let raw_ids: Vec<String> = dataset.items.iter().map(|i| i.raw_id.clone()).collect();
    let ids = SemanticIds::build(
        &embeddings.vectors,
        embeddings.dim,
        &raw_ids,
        embeddings.key.clone(),
        &config,
    )?;
    let cluster_seconds = started.elapsed().as_secs_f64();
    ids.save(&args.out)?;
    if args.json {
        let json = serde_json::json!({
            "dataset": dataset.name,
            "items": ids.items.len(),
            "embedding": {"key": embeddings.key, "dim": embeddings.dim, "cached": cached,
                          "seconds": embed_seconds},
            "config": ids.config,
            "vocab_sizes": ids.vocab_sizes,
            "levels": ids.levels,
            "collisions": ids.collisions,
            "cluster_seconds": cluster_seconds,
            "out": args.out,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "{}: {} items embedded by {} (dimension {}) {} in {embed_seconds:.1}s",
        dataset.name,
        ids.items.len(),
        embeddings.key.model,
        embeddings.dim,
        if cached {
            "from the cache"
        } else {
            "and cached"
        },
    );
    println!(
        "{:<8} {:>10} {:>11} {:>10} {:>16}",
        "level", "codes used", "utilisation", "iterations", "residual share"
    );
    for (i, level) in ids.levels.iter().enumerate() {
        println!(
            "{:<8} {:>10} {:>10.1}% {:>10}{} {:>16.3}",
            i + 1,
            format!("{}/{}", level.codes_used, level.codebook_size),
            100.0 * level.codes_used as f64 / level.codebook_size as f64,
            level.iterations,
            if level.converged { " " } else { "+" },
            level.residual_share
        );
    }
    println!(
        "collisions: {} items in {} groups share their {} k-means codes (largest group {}); \
         the disambiguation code makes every ID unique",
        ids.collisions.items,
        ids.collisions.groups,
        ids.config.levels,
        ids.collisions.largest_group
    );
    println!(
        "clustered in {cluster_seconds:.1}s; wrote {}",
        args.out.display()
    );
    Ok(())
}

/// `recsys train --retriever semantic-id`: the generative retriever over the IDs in
/// `ids_path`, trained with the recommender's loop; each new best epoch is saved at once.
pub fn train(
    dataset: Dataset,
    ids_path: &Path,
    config: GenerativeConfig,
    kernel: &str,
    train_config: &TrainConfig,
    out: &Path,
) -> anyhow::Result<()> {
    let ids = SemanticIds::load(ids_path)?;
    let codes = ids
        .codes_for(&dataset)
        .with_context(|| format!("semantic IDs {}", ids_path.display()))?;
    let split = Split::leave_one_out(&dataset);
    let retriever = GenerativeRetriever::new(
        config,
        codes,
        ids.vocab_sizes.clone(),
        kernel,
        train_config.seed,
    )?;
    eprintln!(
        "semantic IDs of {} codes (vocabularies {:?}), the last {} items of a history as {} \
         tokens",
        ids.depth(),
        ids.vocab_sizes,
        retriever.config.history_items,
        retriever.model.config.max_len
    );
    let report = train_generative(&retriever, &split, train_config, |e, retriever| {
        if e.best {
            GenerativeCheckpoint::write(out, retriever, &ids, &dataset, None)?;
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
    GenerativeCheckpoint::write(out, &retriever, &ids, &dataset, Some(&report))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
