//! Interaction data: loaders for the MovieLens formats and RecBole atomic files, implicit
//! feedback with an optional rating threshold, k-core filtering, dense ids, and the
//! chronological leave-one-out split.
//!
//! Every loader yields a `RawDataset` (raw string ids in file order); `Dataset::build` turns it
//! into dense item and user ids with each user's history sorted by time. Ties in timestamp keep
//! file order (the sort is stable), so a split is a pure function of the files.

pub mod atomic;
pub mod movielens;
mod split;
mod text;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use split::{EvalCase, Split};

use crate::{Error, Result};

/// One rating or view as the file states it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawInteraction {
    pub user: String,
    pub item: String,
    /// Absent in formats without ratings; then a rating threshold keeps everything.
    pub rating: Option<f64>,
    /// Seconds (any monotone clock); absent means file order.
    pub timestamp: f64,
}

/// What a catalogue says about an item.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ItemMeta {
    pub title: String,
    pub year: Option<i32>,
    pub genres: Vec<String>,
}

/// A dataset as loaded: raw ids, interactions in file order, item metadata by raw id.
#[derive(Clone, Debug, Default)]
pub struct RawDataset {
    pub name: String,
    pub interactions: Vec<RawInteraction>,
    pub items: HashMap<String, ItemMeta>,
}

/// How ratings become implicit interactions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Keep only interactions rated at least this (None keeps every rating).
    pub min_rating: Option<f64>,
    /// Keep only users and items with at least this many interactions, to a fixed point.
    pub k_core: Option<usize>,
}

/// An item with its dense id's raw id and metadata.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub raw_id: String,
    #[serde(flatten)]
    pub meta: ItemMeta,
}

/// Interactions with dense ids: items `0..items.len()`, users `0..users.len()`, and each
/// user's history in time order. Only items that some kept interaction names get an id.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dataset {
    pub name: String,
    pub items: Vec<Item>,
    /// Raw user ids by dense id.
    pub users: Vec<String>,
    /// Item ids each user interacted with, oldest first.
    pub histories: Vec<Vec<u32>>,
}

/// The formats `Dataset::load` recognises in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// RecBole atomic files `NAME.inter` (+ `NAME.item`).
    Atomic,
    /// MovieLens-100K `u.data` + `u.item`.
    Ml100k,
    /// MovieLens-1M `ratings.dat` + `movies.dat`.
    Ml1m,
    /// MovieLens "latest" `ratings.csv` + `movies.csv`.
    MlLatest,
}

impl Format {
    /// The format of the files in `dir`.
    pub fn detect(dir: &Path) -> Result<Format> {
        if atomic::inter_file(dir).is_some() {
            Ok(Format::Atomic)
        } else if dir.join("u.data").is_file() {
            Ok(Format::Ml100k)
        } else if dir.join("ratings.dat").is_file() {
            Ok(Format::Ml1m)
        } else if dir.join("ratings.csv").is_file() {
            Ok(Format::MlLatest)
        } else {
            Err(Error::BadDataset {
                path: dir.to_path_buf(),
                reason: "no dataset found: expected a RecBole NAME.inter, MovieLens u.data, \
                         ratings.dat or ratings.csv"
                    .into(),
            })
        }
    }

    /// Reads the files of this format in `dir`.
    pub fn read(self, dir: &Path) -> Result<RawDataset> {
        match self {
            Format::Atomic => atomic::read(dir),
            Format::Ml100k => movielens::read_100k(dir),
            Format::Ml1m => movielens::read_1m(dir),
            Format::MlLatest => movielens::read_latest(dir),
        }
    }
}

impl Dataset {
    /// Loads the dataset in directory `dir`, whatever its format.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Dataset> {
        if !dir.is_dir() {
            return Err(Error::BadDataset {
                path: dir.to_path_buf(),
                reason: "not a directory (give the folder that holds the dataset files)".into(),
            });
        }
        let raw = Format::detect(dir)?.read(dir)?;
        Dataset::build(raw, options).map_err(|reason| Error::BadDataset {
            path: dir.to_path_buf(),
            reason,
        })
    }

    /// Applies the threshold and the k-core, assigns dense ids in order of first appearance,
    /// and sorts each history by time (stable: equal timestamps keep file order).
    pub fn build(raw: RawDataset, options: &LoadOptions) -> Result<Dataset, String> {
        let mut kept: Vec<RawInteraction> = raw
            .interactions
            .into_iter()
            .filter(|i| match (options.min_rating, i.rating) {
                (Some(min), Some(r)) => r >= min,
                _ => true,
            })
            .collect();
        if let Some(k) = options.k_core {
            kept = k_core(kept, k);
        }
        if kept.is_empty() {
            return Err("no interactions left after the rating threshold and k-core".into());
        }
        let mut item_ids: HashMap<&str, u32> = HashMap::new();
        let mut user_ids: HashMap<&str, usize> = HashMap::new();
        let mut items = Vec::new();
        let mut users = Vec::new();
        let mut timed: Vec<Vec<(f64, u32)>> = Vec::new();
        for i in &kept {
            let item = *item_ids.entry(&i.item).or_insert_with(|| {
                items.push(Item {
                    raw_id: i.item.clone(),
                    meta: raw.items.get(&i.item).cloned().unwrap_or_default(),
                });
                (items.len() - 1) as u32
            });
            let user = *user_ids.entry(&i.user).or_insert_with(|| {
                users.push(i.user.clone());
                timed.push(Vec::new());
                users.len() - 1
            });
            timed[user].push((i.timestamp, item));
        }
        let histories = timed
            .into_iter()
            .map(|mut h| {
                h.sort_by(|a, b| a.0.total_cmp(&b.0));
                h.into_iter().map(|(_, item)| item).collect()
            })
            .collect();
        Ok(Dataset {
            name: raw.name,
            items,
            users,
            histories,
        })
    }

    /// The dense id of a raw item id.
    pub fn item_index(&self) -> HashMap<String, u32> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.raw_id.clone(), i as u32))
            .collect()
    }

    /// The number of interactions.
    pub fn n_interactions(&self) -> usize {
        self.histories.iter().map(Vec::len).sum()
    }
}

/// Drops users and items with fewer than `k` interactions until none is left to drop.
pub fn k_core(mut interactions: Vec<RawInteraction>, k: usize) -> Vec<RawInteraction> {
    loop {
        let mut users: HashMap<&str, usize> = HashMap::new();
        let mut items: HashMap<&str, usize> = HashMap::new();
        for i in &interactions {
            *users.entry(&i.user).or_default() += 1;
            *items.entry(&i.item).or_default() += 1;
        }
        let keep: Vec<bool> = interactions
            .iter()
            .map(|i| users[i.user.as_str()] >= k && items[i.item.as_str()] >= k)
            .collect();
        if keep.iter().all(|&k| k) {
            return interactions;
        }
        let mut flags = keep.into_iter();
        interactions.retain(|_| flags.next().unwrap_or(false));
    }
}

/// A dataset file's path and an error for one of its lines.
pub(crate) fn bad_line(path: &Path, line: usize, reason: impl Into<String>) -> Error {
    Error::BadLine {
        path: PathBuf::from(path),
        line,
        reason: reason.into(),
    }
}
