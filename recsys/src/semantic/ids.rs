//! Semantic IDs: each item's residual k-means codes plus a last disambiguation code (as in
//! TIGER): items that share all k-means codes are numbered 0, 1, 2, … in item order, and an
//! item alone with its codes gets 0. Every item therefore has a unique ID of `levels + 1`
//! codes, and a file of IDs names its items by raw id so that it applies to any dataset
//! with the same items.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::embed::EmbeddingKey;
use super::kmeans::{centre_and_normalise, LevelReport, Points, ResidualKMeans, RqConfig};
use crate::data::Dataset;
use crate::model::write_atomically;
use crate::{Error, Result};

/// One item's ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemId {
    pub raw_id: String,
    /// `levels` k-means codes, then the disambiguation code.
    pub codes: Vec<u16>,
}

/// How many items share their k-means codes with another item.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collisions {
    /// Items whose k-means codes another item also has.
    pub items: usize,
    /// Distinct k-means code tuples held by more than one item.
    pub groups: usize,
    /// The most items under one code tuple (1: no collision).
    pub largest_group: usize,
}

/// The semantic IDs of a catalogue and how they were made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SemanticIds {
    /// The embeddings they were clustered from.
    pub source: EmbeddingKey,
    pub config: RqConfig,
    /// Tokens per code position: the codebook size of each level, then the size of the
    /// disambiguation vocabulary (the largest collision group).
    pub vocab_sizes: Vec<usize>,
    pub levels: Vec<LevelReport>,
    pub collisions: Collisions,
    /// One per item, in the order of the embeddings.
    pub items: Vec<ItemId>,
}

impl SemanticIds {
    /// Clusters `embeddings` (`[raw_ids.len(), dim]`) by residual k-means and appends the
    /// disambiguation code. The embeddings are centred and scaled to unit length first: the
    /// mean is shared by every item and tells none apart, and a language model's hidden
    /// states vary in norm with the text's length more than with its meaning.
    pub fn build(
        embeddings: &[f32],
        dim: usize,
        raw_ids: &[String],
        source: EmbeddingKey,
        config: &RqConfig,
    ) -> Result<SemanticIds> {
        let normalised = centre_and_normalise(Points::new(embeddings, dim)?);
        let points = Points::new(&normalised, dim)?;
        if points.len() != raw_ids.len() {
            return Err(Error::InvalidRequest(format!(
                "{} embeddings for {} items",
                points.len(),
                raw_ids.len()
            )));
        }
        let rq = ResidualKMeans::fit(points, config)?;
        let mut codes = rq.codes();
        let mut groups: HashMap<Vec<u16>, u16> = HashMap::new();
        for item in &mut codes {
            let count = groups.entry(item.clone()).or_insert(0);
            item.push(*count);
            *count += 1;
        }
        let largest_group = groups.values().copied().max().unwrap_or(1);
        let collisions = Collisions {
            items: groups
                .values()
                .filter(|&&n| n > 1)
                .map(|&n| n as usize)
                .sum(),
            groups: groups.values().filter(|&&n| n > 1).count(),
            largest_group: usize::from(largest_group),
        };
        let mut vocab_sizes = vec![config.codebook_size; config.levels];
        vocab_sizes.push(usize::from(largest_group));
        Ok(SemanticIds {
            source,
            config: config.clone(),
            vocab_sizes,
            levels: rq.reports,
            collisions,
            items: raw_ids
                .iter()
                .zip(codes)
                .map(|(raw_id, codes)| ItemId {
                    raw_id: raw_id.clone(),
                    codes,
                })
                .collect(),
        })
    }

    /// Codes per ID (`levels + 1`).
    pub fn depth(&self) -> usize {
        self.vocab_sizes.len()
    }

    /// The codes of each of `dataset`'s items by dense id, or an error naming an item the
    /// IDs do not cover.
    pub fn codes_for(&self, dataset: &Dataset) -> Result<Vec<Vec<u16>>> {
        let by_raw: HashMap<&str, &[u16]> = self
            .items
            .iter()
            .map(|i| (i.raw_id.as_str(), i.codes.as_slice()))
            .collect();
        dataset
            .items
            .iter()
            .map(|item| {
                by_raw
                    .get(item.raw_id.as_str())
                    .map(|codes| codes.to_vec())
                    .ok_or_else(|| {
                        Error::InvalidRequest(format!(
                            "item `{}` of dataset {} has no semantic ID: build the IDs from \
                             this dataset (`recsys semantic-ids build --data ...`)",
                            item.raw_id, dataset.name
                        ))
                    })
            })
            .collect()
    }

    /// Writes the IDs as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::InvalidRequest(format!("semantic IDs: {e}")))?;
        write_atomically(path, json.as_bytes())
    }

    /// Reads IDs written by `save`, checking that every ID has one code per vocabulary,
    /// within it, and that no two items share an ID.
    pub fn load(path: &Path) -> Result<SemanticIds> {
        let bad = |reason: String| Error::BadDataset {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let ids: SemanticIds =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a semantic-ID file: {e}")))?;
        ids.check().map_err(bad)?;
        Ok(ids)
    }

    /// Every ID well formed and unique.
    fn check(&self) -> Result<(), String> {
        let mut seen: HashMap<&[u16], &str> = HashMap::new();
        for item in &self.items {
            if item.codes.len() != self.depth() {
                return Err(format!(
                    "item `{}` has {} codes; the vocabularies need {}",
                    item.raw_id,
                    item.codes.len(),
                    self.depth()
                ));
            }
            if let Some((level, &code)) = item
                .codes
                .iter()
                .enumerate()
                .find(|&(level, &code)| usize::from(code) >= self.vocab_sizes[level])
            {
                return Err(format!(
                    "item `{}` has code {code} at level {level}, outside its {} tokens",
                    item.raw_id, self.vocab_sizes[level]
                ));
            }
            if let Some(other) = seen.insert(&item.codes, &item.raw_id) {
                return Err(format!(
                    "items `{other}` and `{}` share the ID {:?}",
                    item.raw_id, item.codes
                ));
            }
        }
        Ok(())
    }
}
