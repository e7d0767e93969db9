use std::path::PathBuf;

/// What can go wrong with the database; each error names the file or the row at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the database {}: {error}", path.display())]
    Open { path: PathBuf, error: sqlx::Error },
    #[error(
        "no database at {} (run a campaign first, or pass --db PATH)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot bring the schema of {} up to date: {error}", path.display())]
    Migrate {
        path: PathBuf,
        error: sqlx::migrate::MigrateError,
    },
    #[error(
        "the database {} has schema version {found}, newer than this evokernel knows \
         (version {known}); use a newer evokernel, or another --db",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("no program with id or hash prefix `{0}`")]
    NoProgram(String),
    #[error("hash prefix `{prefix}` matches several programs ({}); give more characters or the id", .matches.join(", "))]
    AmbiguousPrefix {
        prefix: String,
        matches: Vec<String>,
    },
    #[error("`{0}` is neither a program id nor a hash prefix (hex digits)")]
    BadProgramRef(String),
    #[error("`{0}` is not a metric name (letters, digits and _@.-/: only)")]
    BadMetric(String),
    #[error("no campaign named `{0}`")]
    NoCampaign(String),
    #[error("a campaign named `{0}` already exists")]
    CampaignExists(String),
    #[error("evaluation of {evaluated} stored under program {program_id} whose hash is {stored}")]
    HashMismatch {
        program_id: i64,
        stored: String,
        evaluated: String,
    },
    #[error("program {program_id} already has an evaluation for trial {trial}")]
    DuplicateTrial { program_id: i64, trial: u32 },
    #[error("{what} `{name}` is {value}; only finite numbers can be stored")]
    NonFinite {
        what: &'static str,
        name: String,
        value: f64,
    },
    #[error("row {row} of {table} is unreadable: {detail}")]
    Corrupt {
        table: &'static str,
        row: i64,
        detail: String,
    },
    #[error("database error: {0}")]
    Sql(sqlx::Error),
}

// Written out rather than `#[from]`, which would also make the sqlx error this one's
// `source` and print its text twice in an error chain.
impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Error {
        Error::Sql(error)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
