//! Reading dataset files: UTF-8 when the bytes are, Latin-1 otherwise (the original
//! MovieLens files are Latin-1; RecBole's conversions are UTF-8).

use std::path::Path;

use crate::{Error, Result};

/// The text of `path`, decoded as UTF-8 or, failing that, as Latin-1 (which maps every byte).
pub fn read(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
    })
}

/// Non-empty lines with their 1-based line numbers, line endings trimmed.
pub fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_end_matches('\r')))
        .filter(|(_, line)| !line.trim().is_empty())
}

/// A MovieLens title `Name (1995)` split into `Name` and its year, when it ends in one.
pub fn title_and_year(title: &str) -> (String, Option<i32>) {
    let trimmed = title.trim();
    if let Some(open) = trimmed.rfind('(') {
        let inside = &trimmed[open + 1..];
        if let Some(year) = inside.strip_suffix(')') {
            if year.len() == 4 {
                if let Ok(y) = year.parse() {
                    return (trimmed[..open].trim_end().to_string(), Some(y));
                }
            }
        }
    }
    (trimmed.to_string(), None)
}

/// One CSV record: comma-separated, fields optionally in double quotes with `""` for a quote.
pub fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => {
                quoted = true;
                at_start = false;
            }
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err("a closing quote must end its field".into());
                }
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            (_, c) => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

/// Parses a field, naming it and the text on failure.
pub fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{what} `{text}` is not a number"))
}

/// A timestamp field as a finite number.
pub fn timestamp(text: &str) -> Result<f64, String> {
    let t: f64 = number(text, "timestamp")?;
    if t.is_finite() {
        Ok(t)
    } else {
        Err(format!("timestamp `{text}` is not finite"))
    }
}
