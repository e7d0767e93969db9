//! The programs table: every distinct candidate a campaign proposed, with where it came from.

use serde::Serialize;

use super::{Db, Error, Result};

/// A program to store.
#[derive(Clone, Debug)]
pub struct NewProgram<'a> {
    pub campaign_id: i64,
    /// SHA-256 of `canonical_text` (AKL's `Program::canonical_hash`, or of the bytes for
    /// the command task).
    pub hash: &'a str,
    pub canonical_text: &'a str,
    pub parent_id: Option<i64>,
    /// The other parent of a crossover.
    pub second_parent_id: Option<i64>,
    pub island: u32,
    pub generation: u32,
    pub mutator: &'a str,
    pub proposal: Option<&'a str>,
}

/// What storing a program did: a campaign holds each canonical text once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramInsert {
    New(i64),
    /// The campaign already had this program, under this id.
    Duplicate(i64),
}

impl ProgramInsert {
    pub fn id(self) -> i64 {
        match self {
            ProgramInsert::New(id) | ProgramInsert::Duplicate(id) => id,
        }
    }
}

/// A stored program.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct Program {
    pub id: i64,
    pub campaign_id: i64,
    pub hash: String,
    pub canonical_text: String,
    pub parent_id: Option<i64>,
    pub second_parent_id: Option<i64>,
    pub island: i64,
    pub generation: i64,
    pub mutator: String,
    pub proposal: Option<String>,
    pub created_at: String,
}

pub(super) const PROGRAM_COLUMNS: &str = "p.id, p.campaign_id, p.hash, p.canonical_text, \
     p.parent_id, p.second_parent_id, p.island, p.generation, p.mutator, p.proposal, p.created_at";

impl Db {
    /// Stores a program unless its campaign already has one with the same hash.
    pub async fn insert_program(&self, program: &NewProgram<'_>) -> Result<ProgramInsert> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads first
        // cannot wait for another writer and fails with SQLITE_BUSY instead.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO programs (campaign_id, hash, canonical_text, parent_id, \
             second_parent_id, island, generation, mutator, proposal) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (campaign_id, hash) DO NOTHING RETURNING id",
        )
        .bind(program.campaign_id)
        .bind(program.hash)
        .bind(program.canonical_text)
        .bind(program.parent_id)
        .bind(program.second_parent_id)
        .bind(program.island)
        .bind(program.generation)
        .bind(program.mutator)
        .bind(program.proposal)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match inserted {
            Some(id) => ProgramInsert::New(id),
            None => ProgramInsert::Duplicate(
                sqlx::query_scalar("SELECT id FROM programs WHERE campaign_id = ? AND hash = ?")
                    .bind(program.campaign_id)
                    .bind(program.hash)
                    .fetch_one(&mut *tx)
                    .await?,
            ),
        };
        tx.commit().await?;
        Ok(result)
    }

    /// The program with this id.
    pub async fn program(&self, id: i64) -> Result<Program> {
        sqlx::query_as(&format!(
            "SELECT {PROGRAM_COLUMNS} FROM programs p WHERE p.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NoProgram(id.to_string()))
    }

    /// Finds a program by a reference a user typed: its id, or a prefix of its hash that
    /// only one program has. A number is read as an id when such a program exists.
    pub async fn resolve_program(&self, reference: &str) -> Result<Program> {
        let reference = reference.trim();
        if let Ok(id) = reference.parse::<i64>() {
            match self.program(id).await {
                Err(Error::NoProgram(_)) => {}
                found => return found,
            }
        }
        if reference.is_empty() || !reference.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::BadProgramRef(reference.to_string()));
        }
        // Hex only, so the prefix holds no GLOB wildcard; GLOB can use the hash index.
        let mut found: Vec<Program> = sqlx::query_as(&format!(
            "SELECT {PROGRAM_COLUMNS} FROM programs p WHERE p.hash GLOB ? ORDER BY p.id LIMIT 6"
        ))
        .bind(format!("{}*", reference.to_ascii_lowercase()))
        .fetch_all(&self.pool)
        .await?;
        match found.len() {
            0 => Err(Error::NoProgram(reference.to_string())),
            1 => Ok(found.remove(0)),
            _ => Err(Error::AmbiguousPrefix {
                prefix: reference.to_string(),
                matches: found
                    .iter()
                    .map(|p| format!("id {} = {}", p.id, &p.hash[..p.hash.len().min(16)]))
                    .collect(),
            }),
        }
    }

    /// Every program of a campaign, in the order they were stored (what a resumed campaign
    /// rebuilds its islands from).
    pub async fn campaign_programs(&self, campaign_id: i64) -> Result<Vec<Program>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {PROGRAM_COLUMNS} FROM programs p WHERE p.campaign_id = ? ORDER BY p.id"
        ))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A campaign's programs that have no first evaluation: the work a killed run had in
    /// flight, which a resume evaluates before proposing anything new.
    pub async fn pending_programs(&self, campaign_id: i64) -> Result<Vec<Program>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {PROGRAM_COLUMNS} FROM programs p WHERE p.campaign_id = ? AND NOT EXISTS \
             (SELECT 1 FROM evaluations e WHERE e.program_id = p.id AND e.trial = 0) \
             ORDER BY p.id"
        ))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The first twelve hex digits of a program's hash: how tables, logs and records name it.
pub fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
