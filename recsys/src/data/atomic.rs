//! RecBole atomic files: tab-separated, with a typed header `user_id:token item_id:token
//! rating:float timestamp:float`. `NAME.inter` holds interactions; `NAME.item`, when present,
//! holds metadata (`movie_title:token_seq`, `release_year:token`, `class:token_seq`, or any
//! field named like `title`, `year`, `genre`).

use std::path::{Path, PathBuf};

use super::text::{self, lines};
use super::{bad_line, ItemMeta, RawDataset, RawInteraction};
use crate::{Error, Result};

/// The `.inter` file in `dir`: `DIRNAME.inter`, or else the only one there.
pub fn inter_file(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    let named = dir.join(format!("{name}.inter"));
    if named.is_file() {
        return Some(named);
    }
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "inter"))
        .collect();
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// A typed header: field names without their `:type`.
struct Header {
    names: Vec<String>,
}

impl Header {
    fn parse(path: &Path, line: &str) -> Result<Header> {
        let names: Vec<String> = line
            .split('\t')
            .map(|field| match field.split_once(':') {
                Some((name, _)) => Ok(name.trim().to_string()),
                None => Err(bad_line(
                    path,
                    1,
                    format!("header field `{field}` has no `:type` (RecBole atomic header)"),
                )),
            })
            .collect::<Result<_>>()?;
        Ok(Header { names })
    }

    fn find(&self, wanted: impl Fn(&str) -> bool) -> Option<usize> {
        self.names.iter().position(|n| wanted(n))
    }

    fn require(&self, path: &Path, name: &str) -> Result<usize> {
        self.find(|n| n == name).ok_or_else(|| {
            bad_line(
                path,
                1,
                format!(
                    "the header has no `{name}` field (found {})",
                    self.names.join(", ")
                ),
            )
        })
    }
}

/// Data lines with their 1-based line numbers, split into fields.
type Rows = Vec<(usize, Vec<String>)>;

/// The header and the data lines of an atomic file.
fn table(path: &Path, body: &str) -> Result<(Header, Rows)> {
    let mut rows = lines(body);
    let Some((_, first)) = rows.next() else {
        return Err(bad_line(path, 1, "empty file: expected a typed header"));
    };
    let header = Header::parse(path, first)?;
    let width = header.names.len();
    let rows = rows
        .map(|(n, line)| {
            let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
            if fields.len() == width {
                Ok((n, fields))
            } else {
                Err(bad_line(
                    path,
                    n,
                    format!(
                        "{} tab-separated fields, the header has {width}",
                        fields.len()
                    ),
                ))
            }
        })
        .collect::<Result<_>>()?;
    Ok((header, rows))
}

/// Reads the atomic files of `dir`.
pub fn read(dir: &Path) -> Result<RawDataset> {
    let inter = inter_file(dir).ok_or_else(|| Error::BadDataset {
        path: dir.to_path_buf(),
        reason: "no single NAME.inter file".into(),
    })?;
    let name = inter
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("dataset")
        .to_string();
    let (header, rows) = table(&inter, &text::read(&inter)?)?;
    let user = header.require(&inter, "user_id")?;
    let item = header.require(&inter, "item_id")?;
    let rating = header.find(|n| n == "rating");
    let timestamp = header.find(|n| n == "timestamp");
    let mut interactions = Vec::with_capacity(rows.len());
    for (n, fields) in rows {
        let parse = || -> Result<RawInteraction, String> {
            Ok(RawInteraction {
                user: fields[user].trim().to_string(),
                item: fields[item].trim().to_string(),
                rating: rating
                    .map(|r| text::number(&fields[r], "rating"))
                    .transpose()?,
                timestamp: match timestamp {
                    Some(t) => text::timestamp(&fields[t])?,
                    None => 0.0,
                },
            })
        };
        interactions.push(parse().map_err(|reason| bad_line(&inter, n, reason))?);
    }
    let item_file = inter.with_extension("item");
    let items = if item_file.is_file() {
        read_items(&item_file)?
    } else {
        Default::default()
    };
    Ok(RawDataset {
        name,
        interactions,
        items,
    })
}

fn read_items(path: &Path) -> Result<std::collections::HashMap<String, ItemMeta>> {
    let (header, rows) = table(path, &text::read(path)?)?;
    let id = header.require(path, "item_id")?;
    let title = header.find(|n| n.contains("title"));
    let year = header.find(|n| n.contains("year"));
    let genres = header.find(|n| n == "class" || n.contains("genre"));
    let mut items = std::collections::HashMap::with_capacity(rows.len());
    for (_, fields) in rows {
        // `year` is a token: ML-100K writes `unkonwn` for one film, which means no year.
        let year = year.and_then(|y| fields[y].trim().parse().ok());
        let meta = ItemMeta {
            title: title
                .map(|t| fields[t].trim().to_string())
                .unwrap_or_default(),
            year,
            genres: genres
                .map(|g| fields[g].split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        };
        items.insert(fields[id].trim().to_string(), meta);
    }
    Ok(items)
}
