//! Mutators: how a campaign proposes new programs from old ones.

pub mod prompt;
pub mod structural;

pub use structural::Structural;

/// Which configured language model an LLM mutation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Which {
    /// A GGUF model in process.
    Local,
    /// An OpenAI-compatible endpoint.
    Remote,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Local => "local_llm",
            Which::Remote => "remote_llm",
        }
    }
}

/// A mutator. Its name is the one the campaign config's `[mutators.NAME]` table, the
/// bandit, the mutator statistics and the programs it made (`programs.mutator`) all use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutator {
    Structural(Structural),
    Llm(Which),
}

impl Mutator {
    pub const ALL: [Mutator; 7] = [
        Mutator::Structural(Structural::Perturb),
        Mutator::Structural(Structural::LibrarySwap),
        Mutator::Structural(Structural::MaskArm),
        Mutator::Structural(Structural::RuleEdit),
        Mutator::Structural(Structural::Crossover),
        Mutator::Llm(Which::Local),
        Mutator::Llm(Which::Remote),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutator::Structural(s) => s.name(),
            Mutator::Llm(w) => w.name(),
        }
    }

    /// The mutator named `name`, also under the names older configs and databases used
    /// (`subtree_swap`, `layer_rule`, `head_rule`).
    pub fn from_name(name: &str) -> Option<Mutator> {
        let name = match name {
            "subtree_swap" => "library_swap",
            "layer_rule" | "head_rule" => "rule_edit",
            other => other,
        };
        Mutator::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_and_old_names_are_aliases() {
        for m in Mutator::ALL {
            assert_eq!(Mutator::from_name(m.name()), Some(m));
        }
        assert_eq!(
            Mutator::from_name("subtree_swap"),
            Some(Mutator::Structural(Structural::LibrarySwap))
        );
        assert_eq!(
            Mutator::from_name("head_rule"),
            Some(Mutator::Structural(Structural::RuleEdit))
        );
        assert_eq!(Mutator::from_name("seed"), None);
    }
}
