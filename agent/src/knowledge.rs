//! The knowledge base the research stage draws on: short notes on attention mechanisms,
//! written in our own words, each with an AKL example (`agent/knowledge/*.md`, embedded).

/// One note: its file name (without `.md`) and text.
#[derive(Clone, Copy, Debug)]
pub struct Note {
    pub name: &'static str,
    pub text: &'static str,
}

const NOTES: &[(&str, &str)] = &[
    (
        "attention_sinks",
        include_str!("../knowledge/attention_sinks.md"),
    ),
    ("chunked", include_str!("../knowledge/chunked.md")),
    ("dilation", include_str!("../knowledge/dilation.md")),
    (
        "head_specialisation",
        include_str!("../knowledge/head_specialisation.md"),
    ),
    (
        "interleaved_layers",
        include_str!("../knowledge/interleaved_layers.md"),
    ),
    (
        "kv_compression",
        include_str!("../knowledge/kv_compression.md"),
    ),
    (
        "linear_attention",
        include_str!("../knowledge/linear_attention.md"),
    ),
    ("moba_blocks", include_str!("../knowledge/moba_blocks.md")),
    ("quest_pages", include_str!("../knowledge/quest_pages.md")),
    (
        "score_modifiers",
        include_str!("../knowledge/score_modifiers.md"),
    ),
    (
        "sliding_window",
        include_str!("../knowledge/sliding_window.md"),
    ),
    (
        "star_attention",
        include_str!("../knowledge/star_attention.md"),
    ),
];

/// Every note, in name order.
pub fn notes() -> impl Iterator<Item = Note> {
    NOTES.iter().map(|&(name, text)| Note { name, text })
}

pub fn find(name: &str) -> Option<Note> {
    notes().find(|n| n.name == name)
}

impl Note {
    /// The note's heading, without the `#`.
    pub fn title(&self) -> &'static str {
        self.text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches('#')
            .trim()
    }

    /// The AKL example inside the note's fenced block.
    pub fn example(&self) -> Option<&'static str> {
        let start = self.text.find("```akl\n")? + "```akl\n".len();
        let len = self.text[start..].find("```")?;
        Some(self.text[start..start + len].trim_end())
    }
}
