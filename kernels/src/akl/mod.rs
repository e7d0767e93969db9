//! AKL, the attention kernel language: the text form of a candidate kernel. See
//! `kernels/AKL.md` for the grammar, the checks and the cost model.
//!
//! The pipeline: `parse` (text → `Program`, errors at line:col) → `check` (proves the mask
//! lies within causal, bounds every size) → `compile` (a neutral per-layer, per-head plan the
//! runtime maps onto kernels). `print` gives the canonical text whose hash is the kernel's
//! identity; `cost` gives deterministic FLOPs and KV bytes; `generate` draws random valid
//! programs for tests and for the search's baseline.

pub mod ast;
pub mod check;
pub mod compile;
pub mod cost;
pub mod fm;
pub mod generate;
pub mod instantiate;
pub mod lexer;
pub mod library;
pub mod mask;
pub mod mechanism;
pub mod parse;
pub mod prefix;
pub mod print;
pub mod sha256;

pub use ast::Program;
pub use check::{check, CheckedProgram};
pub use compile::{compile, HeadGroup, HeadSpec, LayerPlan};
pub use cost::{cost, exact_cost, Cost, ModelShape};
pub use generate::{generate, GenConfig};
pub use instantiate::{instantiate, DropIn};
pub use mask::{CompiledMask, CompiledScore, ScaledScore};
pub use parse::parse;
pub use print::print;
pub use sha256::sha256_hex;

use lexer::Pos;

/// Malformed AKL text: where, what would have been accepted, and what was there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: expected {expected}, found {found}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub expected: String,
    pub found: String,
}

impl ParseError {
    pub(crate) fn new(pos: Pos, expected: &str, found: &str) -> ParseError {
        ParseError {
            line: pos.line,
            col: pos.col,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// A well-formed program that fails a static check: the clause and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{clause}: {reason}")]
pub struct CheckError {
    pub clause: String,
    pub reason: String,
}

impl From<ParseError> for crate::Error {
    fn from(e: ParseError) -> crate::Error {
        crate::Error::InvalidRequest(format!("AKL syntax: {e}"))
    }
}

impl From<CheckError> for crate::Error {
    fn from(e: CheckError) -> crate::Error {
        crate::Error::InvalidRequest(format!("AKL check: {e}"))
    }
}

impl Program {
    /// The canonical text (see `print`).
    pub fn canonical_text(&self) -> String {
        print(self)
    }

    /// The kernel's identity: SHA-256 of the canonical text, as 64 hex digits.
    pub fn canonical_hash(&self) -> String {
        sha256::sha256_hex(self.canonical_text().as_bytes())
    }
}

/// Parses and checks in one step, with the crate's error type.
pub fn parse_and_check(text: &str) -> crate::Result<CheckedProgram> {
    Ok(check(&parse(text)?)?)
}

/// AKL's grammar as `kernels/AKL.md` states it (the EBNF block and the lexing rules after
/// it), for prompts that teach a model the language.
pub fn grammar_summary() -> &'static str {
    const DOC: &str = include_str!("../../AKL.md");
    let start = DOC
        .find("## Grammar")
        .expect("AKL.md has a Grammar section");
    let end = DOC[start..]
        .find("\nEvery syntax error")
        .map_or(DOC.len(), |len| start + len);
    DOC[start + "## Grammar".len()..end].trim()
}
