//! The discovered-kernel database: SQLite through sqlx, schema in `migrations/`.
//!
//! One [`Db`] per process. Every write is its own transaction (an evaluation is committed
//! as soon as it is stored), WAL mode lets readers such as `evokernel kernels` query a
//! campaign while it runs, and a killed process loses nothing it had committed.

mod campaigns;
mod error;
mod evaluations;
mod llm_calls;
mod programs;
mod recgpt;
mod search_state;
mod summaries;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use campaigns::{Campaign, CampaignStatus, NewCampaign};
pub use error::{Error, Result};
pub use evaluations::{StoredEvaluation, INDEXED_METRICS};
pub use llm_calls::{LlmCall, NewLlmCall};
pub use programs::{short_hash, NewProgram, Program, ProgramInsert};
pub use recgpt::{EnrichmentCounts, EnrichmentKey, Explanation, ItemTags, UserProfile};
pub use search_state::{ArchiveCell, Insight, MutatorOutcome, MutatorStats};
pub use summaries::{CampaignProgress, LineageNode, MetricValue, ProgramSummary};

/// Where the CLI keeps its database unless `--db` says otherwise.
pub const DEFAULT_PATH: &str = "evokernel.db";

static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a writer waits for another connection's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// An open, migrated database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: SqlitePool,
    path: PathBuf,
}

impl Db {
    /// Opens the database at `path`, creating it if it does not exist, and brings its
    /// schema up to date.
    pub async fn open(path: &Path) -> Result<Db> {
        Self::connect(path, true).await
    }

    /// Opens an existing database (the query commands: a missing file is a mistake there,
    /// not something to create).
    pub async fn open_existing(path: &Path) -> Result<Db> {
        if !path.exists() {
            return Err(Error::Missing {
                path: path.to_path_buf(),
            });
        }
        Self::connect(path, false).await
    }

    async fn connect(path: &Path, create: bool) -> Result<Db> {
        let open_error = |error| Error::Open {
            path: path.to_path_buf(),
            error,
        };
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(open_error)?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let db = Db {
            pool,
            path: path.to_path_buf(),
        };
        db.refuse_newer_schema().await?;
        MIGRATOR
            .run(&db.pool)
            .await
            .map_err(|error| Error::Migrate {
                path: path.to_path_buf(),
                error,
            })?;
        Ok(db)
    }

    /// The newest schema version this binary knows.
    pub fn known_schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The newest schema version applied to this database.
    pub async fn schema_version(&self) -> Result<i64> {
        let has_table: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.pool)
        .await?;
        if !has_table {
            return Ok(0);
        }
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(applied.unwrap_or(0))
    }

    async fn refuse_newer_schema(&self) -> Result<()> {
        let found = self.schema_version().await?;
        let known = Self::known_schema_version();
        if found > known {
            return Err(Error::NewerSchema {
                path: self.path.clone(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Folds what it can of the write-ahead log into the database file, without waiting
    /// for other readers or writers, and closes every connection.
    pub async fn close(self) -> Result<()> {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await?;
        self.pool.close().await;
        Ok(())
    }
}
