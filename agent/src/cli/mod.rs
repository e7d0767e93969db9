//! One module per subcommand; each parses its arguments and prints its results.

pub mod bench;
pub mod campaign;
pub mod eval;
pub mod generate;
pub mod kernels;
pub mod perplexity;
pub mod recsys;
pub mod semantic_ids;
mod table;

use std::future::Future;
use std::path::Path;

use anyhow::Context;

/// Sizes the compute pool that our kernels and candle's both use.
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        // candle reads this when it sizes its own work splits.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("could not size the thread pool")?;
    }
    Ok(())
}

/// Loads `--model`: a short name (`smollm2`, `qwen-coder`, `gemma3`) or a GGUF path.
pub fn load_model(name_or_path: &str) -> anyhow::Result<::kernels::Model> {
    let path = ::kernels::assets::resolve_model(name_or_path)?;
    Ok(::kernels::Model::load(&path)?)
}

/// Reads a UTF-8 text file, naming the file and the first bad byte otherwise.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).map_err(|source| ::kernels::Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        ::kernels::Error::NotUtf8 {
            path: path.to_path_buf(),
            offset: e.utf8_error().valid_up_to(),
        }
        .into()
    })
}

/// Runs a query command's async body on a small runtime of its own.
pub fn block_on<T>(body: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(body)
}

/// The campaign id that `--campaign NAME` names, if given.
pub async fn campaign_filter(
    db: &agent::db::Db,
    campaign: Option<&str>,
) -> anyhow::Result<Option<i64>> {
    Ok(match campaign {
        Some(name) => Some(db.campaign_by_name(name).await?.id),
        None => None,
    })
}
