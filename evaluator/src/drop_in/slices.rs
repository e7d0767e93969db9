//! Text slices for evaluation: Austen prose and HumanEval's Python, cut at offsets chosen by
//! seed, tokenized to exactly one context's worth of tokens.

use std::path::{Path, PathBuf};

use kernels::tokenizer::Tokenizer;

use super::config::Source;
use crate::seeds::SplitMix64;
use crate::{Error, Result};

/// One text of a source, loaded whole.
#[derive(Debug)]
struct Document {
    /// As it appears in slice ids: `austen/emma.txt`.
    name: String,
    text: String,
}

/// The texts slices are cut from.
#[derive(Debug)]
pub struct Corpus {
    documents: Vec<(Source, Vec<Document>)>,
}

/// One evaluation input: `tokens.len()` tokens (a BOS, then the text from `offset`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// `austen/emma.txt@123456+1024`: document, byte offset, tokens.
    pub id: String,
    pub tokens: Vec<u32>,
}

/// Bytes of text taken per wanted token on the first try (English runs about 4 a token).
const BYTES_PER_TOKEN: usize = 6;

impl Corpus {
    /// Loads the texts of `sources` from the assets directory.
    pub fn load(sources: &[Source]) -> Result<Corpus> {
        let mut documents = Vec::new();
        for &source in sources {
            let docs = match source {
                Source::Austen => austen()?,
                Source::Humaneval => vec![humaneval()?],
            };
            documents.push((source, docs));
        }
        Ok(Corpus { documents })
    }

    /// `per_source` slices of `len` tokens from each source, their offsets drawn from `seed`
    /// (the same seed, length and tokenizer always give the same slices).
    pub fn slices(
        &self,
        tokenizer: &Tokenizer,
        len: usize,
        per_source: usize,
        seed: u64,
    ) -> Result<Vec<Slice>> {
        let mut slices = Vec::new();
        for (source_index, (_, docs)) in self.documents.iter().enumerate() {
            for i in 0..per_source {
                let mut rng =
                    SplitMix64::derived(seed, &[source_index as u64, len as u64, i as u64]);
                let doc = &docs[rng.below(docs.len() as u64) as usize];
                slices.push(cut(doc, tokenizer, len, &mut rng)?);
            }
        }
        Ok(slices)
    }
}

/// A slice of `len` tokens from `doc` at a seeded offset: the offset is moved to the start
/// of the next line, and the text from there tokenized after a BOS.
fn cut(doc: &Document, tokenizer: &Tokenizer, len: usize, rng: &mut SplitMix64) -> Result<Slice> {
    let mut want = len * BYTES_PER_TOKEN;
    loop {
        let room = doc.text.len().saturating_sub(want);
        let drawn = rng.below(room as u64 + 1) as usize;
        let offset = line_start_at_or_after(&doc.text, drawn);
        let end = char_boundary_at_or_after(&doc.text, offset + want);
        let mut tokens = tokenizer.encode_with_bos(&doc.text[offset..end])?;
        if tokens.len() >= len {
            tokens.truncate(len);
            return Ok(Slice {
                id: format!("{}@{offset}+{len}", doc.name),
                tokens,
            });
        }
        if want >= doc.text.len() {
            return Err(Error::Invalid(format!(
                "{} has only {} tokens; a slice of {len} does not fit (use shorter contexts)",
                doc.name,
                tokens.len()
            )));
        }
        want *= 2;
    }
}

fn line_start_at_or_after(text: &str, at: usize) -> usize {
    if at == 0 {
        return 0;
    }
    let from = char_boundary_at_or_after(text, at);
    match text[from..].find('\n') {
        Some(newline) if from + newline + 1 < text.len() => from + newline + 1,
        _ => from,
    }
}

fn char_boundary_at_or_after(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// The six novels, in name order.
fn austen() -> Result<Vec<Document>> {
    let dir = kernels::assets::AUSTEN.require()?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| kernels::Error::Io {
            path: dir.clone(),
            source,
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no .txt files; run scripts/fetch-assets --only austen",
            dir.display()
        )));
    }
    paths
        .iter()
        .map(|path| {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            Ok(Document {
                name: format!("austen/{file}"),
                text: read(path)?,
            })
        })
        .collect()
}

/// Every HumanEval problem's prompt and reference solution, in file order, as one Python text.
fn humaneval() -> Result<Document> {
    #[derive(serde::Deserialize)]
    struct Problem {
        prompt: String,
        canonical_solution: String,
    }
    let path = kernels::assets::HUMANEVAL.require()?;
    let mut text = String::new();
    for (i, line) in read(&path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let problem: Problem = serde_json::from_str(line)
            .map_err(|e| Error::Invalid(format!("{} line {}: {e}", path.display(), i + 1)))?;
        text.push_str(&problem.prompt);
        text.push_str(&problem.canonical_solution);
        text.push_str("\n\n");
    }
    Ok(Document {
        name: "humaneval/HumanEval.jsonl".into(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_move_to_the_next_line_start_on_a_char_boundary() {
        let text = "ab\ncé\nf";
        assert_eq!(line_start_at_or_after(text, 0), 0);
        assert_eq!(line_start_at_or_after(text, 1), 3);
        // Inside 'é' (bytes 4..6): the boundary after it, then the next line.
        assert_eq!(line_start_at_or_after(text, 5), 7);
        assert_eq!(char_boundary_at_or_after(text, 5), 6);
        assert_eq!(char_boundary_at_or_after(text, 99), text.len());
    }
}
