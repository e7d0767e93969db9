//! The LLM mutator's prompts, in DeepEvolve's three stages: research (choose notes from the
//! knowledge base and propose one change), code (write the whole new program), and debug
//! (fix a program the evaluator refused, from its feedback).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::db::INDEXED_METRICS;
use crate::knowledge::Note;

/// A program and how it scored, as a prompt shows it.
#[derive(Clone, Debug)]
pub struct Scored<'a> {
    pub text: &'a str,
    pub score: Option<f64>,
    pub metrics: &'a BTreeMap<String, f64>,
    pub feedback: &'a str,
}

/// What every stage's prompt shows: the task, the parent, some inspirations, and what the
/// campaign has learnt so far.
#[derive(Clone, Debug)]
pub struct Brief<'a> {
    /// What the score rewards, in a sentence or two.
    pub task: &'a str,
    pub parent: Scored<'a>,
    pub inspirations: &'a [Scored<'a>],
    pub insights: &'a [String],
}

/// A system message and a user message.
pub type Prompt = (String, String);

const SYSTEM: &str = "You design efficient attention kernels for transformer language models. \
You write them in AKL, a small S-expression language. Answer exactly in the format asked for.";

/// The research stage: note titles to choose from, and a one-paragraph proposal.
pub fn research(brief: &Brief, notes: &[Note]) -> Prompt {
    let mut user = context(brief);
    user.push_str("\nNotes you may draw on:\n");
    for note in notes {
        let _ = writeln!(user, "- {}: {}", note.name, note.title());
    }
    user.push_str(
        "\nPropose one change to the parent that could raise its score. Answer in two lines:\n\
         NOTES: the names of at most two notes you use, comma-separated\n\
         PROPOSAL: what to change and why, in at most three sentences\n",
    );
    (SYSTEM.to_string(), user)
}

/// What the research stage answered: the notes it chose (names that exist) and its
/// proposal. A reply without the expected lines is taken whole as the proposal.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub notes: Vec<String>,
    pub text: String,
}

pub fn parse_research(reply: &str, notes: &[Note]) -> Proposal {
    let mut chosen = Vec::new();
    let mut text = None;
    for line in reply.lines() {
        let line = line.trim().trim_start_matches(['*', '-', ' ']);
        if let Some(rest) = strip_label(line, "NOTES:") {
            chosen = rest
                .split([',', ' '])
                .map(|n| n.trim().trim_matches(['`', '"', '.']))
                .filter(|n| notes.iter().any(|note| note.name == *n))
                .map(String::from)
                .collect();
        } else if let Some(rest) = strip_label(line, "PROPOSAL:") {
            text = Some(rest.trim().trim_start_matches('*').trim().to_string());
        }
    }
    chosen.dedup();
    chosen.truncate(2);
    Proposal {
        notes: chosen,
        text: text.unwrap_or_else(|| reply.trim().to_string()),
    }
}

fn strip_label<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let head = line.get(..label.len())?;
    head.eq_ignore_ascii_case(label)
        .then(|| &line[label.len()..])
}

/// The code stage: the grammar, the chosen notes in full, and the proposal to carry out.
pub fn code(brief: &Brief, proposal: &Proposal, notes: &[Note]) -> Prompt {
    let mut user = String::new();
    let _ = writeln!(user, "AKL grammar:\n{}\n", kernels::akl::grammar_summary());
    user.push_str(&context(brief));
    for note in notes
        .iter()
        .filter(|n| proposal.notes.iter().any(|c| c == n.name))
    {
        let _ = writeln!(user, "\nNote {}:\n{}", note.name, note.text.trim());
    }
    let _ = writeln!(user, "\nProposal: {}", proposal.text);
    user.push_str(
        "\nWrite the complete new program that carries out the proposal: one AKL program, \
         starting with (kernel, and nothing else.\n",
    );
    (SYSTEM.to_string(), user)
}

/// The debug stage: the program that failed and the evaluator's feedback on it.
pub fn debug(brief: &Brief, proposal: &Proposal, failed: &str, feedback: &str) -> Prompt {
    let (system, mut user) = code(brief, proposal, &[]);
    let _ = writeln!(
        user,
        "\nYour previous program was refused:\n{failed}\n\nThe evaluator said:\n{}\n\n\
         Fix it. Write the complete corrected program, starting with (kernel, and nothing else.",
        feedback.trim()
    );
    (system, user)
}

/// The task, the parent with its numbers, the inspirations and the insights.
fn context(brief: &Brief) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Task: {}\n", brief.task);
    let _ = writeln!(out, "Parent program:\n{}", describe(&brief.parent, true));
    for (i, other) in brief.inspirations.iter().enumerate() {
        let _ = writeln!(out, "Inspiration {}:\n{}", i + 1, describe(other, false));
    }
    if !brief.insights.is_empty() {
        out.push_str("What this campaign has learnt:\n");
        for insight in brief.insights {
            let _ = writeln!(out, "- {insight}");
        }
    }
    out
}

/// A program, its score and headline metrics, and (for the parent) the evaluator's feedback.
fn describe(program: &Scored, with_feedback: bool) -> String {
    let mut out = format!("{}\n", program.text.trim());
    match program.score {
        Some(score) => {
            let _ = write!(out, "score {score:.4}");
        }
        None => out.push_str("not scored"),
    }
    for (name, value) in headline(program.metrics) {
        let _ = write!(out, "; {name} {value:.4}");
    }
    out.push('\n');
    if with_feedback && !program.feedback.trim().is_empty() {
        let _ = writeln!(out, "evaluator: {}", program.feedback.trim());
    }
    out
}

/// The metrics a prompt shows: the ones users sort on when the task reports any (the
/// per-slice and timing breakdowns would triple a small model's prompt), else all but the
/// sandbox's measurements of the scorer itself (`run.*`), which say nothing about the
/// program and would make prompts differ from run to run.
fn headline(metrics: &BTreeMap<String, f64>) -> Vec<(&str, f64)> {
    let indexed: Vec<(&str, f64)> = INDEXED_METRICS
        .iter()
        .filter_map(|m| metrics.get(m.name).map(|v| (m.name, *v)))
        .collect();
    if !indexed.is_empty() {
        return indexed;
    }
    metrics
        .iter()
        .filter(|(name, _)| !name.starts_with("run."))
        .map(|(name, value)| (name.as_str(), *value))
        .collect()
}
