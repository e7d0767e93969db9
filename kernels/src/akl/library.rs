//! The library of named kernels, `kernels/library/*.akl`, embedded in the binary. A program
//! can name one (`(layers (list 0 1) exact)`) instead of spelling out a rule.

use std::sync::OnceLock;

use super::check::{check, CheckedProgram};
use super::parse::parse;

macro_rules! library {
    ($($name:literal),* $(,)?) => {
        /// Every library kernel: its name and its source text.
        pub const LIBRARY: &[(&str, &str)] = &[
            $(($name, include_str!(concat!("../../library/", $name, ".akl")))),*
        ];
    };
}

library!(
    "exact",
    "window",
    "chunked",
    "gemma3",
    "sink_window",
    "star",
    "quest",
    "moba",
    "head_mix",
    "log_linear",
    "mta",
    "differential",
    "mla",
    "linear",
    "retnet",
    "gla",
    "mamba2",
    "deltanet",
    "gated_deltanet",
);

/// The names of every library kernel.
pub fn names() -> impl Iterator<Item = &'static str> {
    LIBRARY.iter().map(|(name, _)| *name)
}

/// The source text of a library kernel.
pub fn source(name: &str) -> Option<&'static str> {
    LIBRARY
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// A library kernel, parsed and checked once. The error names the kernel and what is wrong.
pub fn checked(name: &str) -> Result<&'static CheckedProgram, String> {
    static CACHE: [OnceLock<Result<CheckedProgram, String>>; LIBRARY.len()] =
        [const { OnceLock::new() }; LIBRARY.len()];
    let Some(index) = LIBRARY.iter().position(|(n, _)| *n == name) else {
        return Err(format!(
            "unknown library kernel `{name}` (known: {})",
            names().collect::<Vec<_>>().join(", ")
        ));
    };
    CACHE[index]
        .get_or_init(|| {
            let program =
                parse(LIBRARY[index].1).map_err(|e| format!("library kernel {name}: {e}"))?;
            check(&program).map_err(|e| format!("library kernel {name}: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}
