//! Mutators: how a campaign proposes new programs from old ones.

pub mod prompt;
pub mod structural;

pub use structural::Structural;
