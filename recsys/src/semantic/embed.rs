//! Item embeddings from a language model on our core: each item's text (title, year,
//! genres) run through the model, its final hidden states (after the final norm) averaged
//! over the text's tokens. Embedding a catalogue takes a while, so the vectors are cached in
//! a file keyed by a fingerprint of the item texts and the model file's name; reading it
//! recomputes the first item and recomputes everything if that vector moved.
//!
//! The cache file: the 8 bytes `EKITEMB1`, a little-endian u32 header length, the header
//! as JSON (`{"key": …, "items": n, "dim": d}`), then `n · d` little-endian f32.

use std::path::{Path, PathBuf};

use kernels::Model;
use serde::{Deserialize, Serialize};

use crate::data::{Item, ItemMeta};
use crate::model::write_atomically;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"EKITEMB1";

/// How far a recomputed vector may move from its cached copy (the same build and model give
/// the same bits; another kernel build moves them by quantization noise, about 0.1).
const STALE_TOLERANCE: f32 = 1e-4;

/// What a set of embeddings was computed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingKey {
    /// SHA-256 (first 16 hex digits) of the items' raw ids and texts, in order.
    pub items: String,
    /// The model file's name.
    pub model: String,
}

impl EmbeddingKey {
    pub fn new(items: &[Item], model_path: &Path) -> EmbeddingKey {
        let mut bytes = Vec::new();
        for item in items {
            bytes.extend_from_slice(item.raw_id.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(item_text(&item.meta).as_bytes());
            bytes.push(0);
        }
        let hash = kernels::akl::sha256_hex(&bytes);
        EmbeddingKey {
            items: hash[..16].to_string(),
            model: model_path.file_name().map_or_else(
                || model_path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        }
    }

    /// The cache file of this key in `dir`.
    pub fn cache_path(&self, dir: &Path) -> PathBuf {
        let model = self.model.trim_end_matches(".gguf");
        dir.join(format!("item-embeddings-{}-{model}.bin", self.items))
    }
}

/// The text an item is embedded from: `Title (1995). Genres: Action, Comedy.`
pub fn item_text(meta: &ItemMeta) -> String {
    let mut text = meta.title.clone();
    if let Some(year) = meta.year {
        text.push_str(&format!(" ({year})"));
    }
    text.push('.');
    if !meta.genres.is_empty() {
        text.push_str(&format!(" Genres: {}.", meta.genres.join(", ")));
    }
    text
}

/// One vector per item, `[n, dim]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemEmbeddings {
    pub key: EmbeddingKey,
    pub dim: usize,
    pub vectors: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    key: EmbeddingKey,
    items: usize,
    dim: usize,
}

impl ItemEmbeddings {
    /// The mean final hidden state of each item's text under `model`; `progress` hears how
    /// many items are done after each one.
    pub fn compute(
        model: &Model,
        key: EmbeddingKey,
        items: &[Item],
        mut progress: impl FnMut(usize),
    ) -> Result<ItemEmbeddings> {
        let dim = model.config.d_model;
        let mut vectors = Vec::with_capacity(items.len() * dim);
        for (i, item) in items.iter().enumerate() {
            vectors.extend(mean_hidden_state(model, &item_text(&item.meta))?);
            progress(i + 1);
        }
        Ok(ItemEmbeddings { key, dim, vectors })
    }

    pub fn len(&self) -> usize {
        self.vectors.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Writes the cache file.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let header = serde_json::to_vec(&Header {
            key: self.key.clone(),
            items: self.len(),
            dim: self.dim,
        })
        .map_err(|e| Error::InvalidRequest(format!("embedding header: {e}")))?;
        let mut bytes = Vec::with_capacity(12 + header.len() + self.vectors.len() * 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        for x in &self.vectors {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        write_atomically(path, &bytes)
    }

    /// Reads a cache file written by `save`, refusing one that is cut short or made for
    /// another key.
    pub fn load(path: &Path, expected: &EmbeddingKey) -> Result<ItemEmbeddings> {
        let bad = |reason: String| Error::BadDataset {
            path: path.to_path_buf(),
            reason: format!("{reason}; delete the file to recompute the embeddings"),
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(bad("not an item-embedding cache file".into()));
        }
        let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let header: Header = bytes
            .get(12..12 + header_len)
            .and_then(|h| serde_json::from_slice(h).ok())
            .ok_or_else(|| bad("the header does not parse".into()))?;
        if &header.key != expected {
            return Err(bad(format!(
                "made for items {} and model {}, not items {} and model {}",
                header.key.items, header.key.model, expected.items, expected.model
            )));
        }
        let body = &bytes[12 + header_len..];
        if header.dim == 0 || body.len() != header.items * header.dim * 4 {
            return Err(bad(format!(
                "{} bytes of vectors where {} items of dimension {} need {}",
                body.len(),
                header.items,
                header.dim,
                header.items * header.dim * 4
            )));
        }
        let vectors: Vec<f32> = body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if vectors.iter().any(|x| !x.is_finite()) {
            return Err(bad("a vector has a non-finite value".into()));
        }
        Ok(ItemEmbeddings {
            key: header.key,
            dim: header.dim,
            vectors,
        })
    }

    /// Whether the first item's cached vector is what `model` computes now. The cache key
    /// names the model file, not the kernels that run it, so a build whose kernels round
    /// differently would otherwise keep reading vectors it no longer computes.
    fn matches_model(&self, model: &Model, items: &[Item]) -> Result<bool> {
        let Some(first) = items.first() else {
            return Ok(true);
        };
        let fresh = mean_hidden_state(model, &item_text(&first.meta))?;
        Ok(fresh.len() == self.dim
            && fresh
                .iter()
                .zip(&self.vectors)
                .all(|(a, b)| (a - b).abs() <= STALE_TOLERANCE))
    }

    /// The embeddings of `items` under the GGUF model at `model_path`: from the cache file in
    /// `cache_dir` when one exists for the same items and model and its first vector is what
    /// the model computes now, else computed and cached. Says whether they came from the cache.
    pub fn cached_or_compute(
        model_path: &Path,
        items: &[Item],
        cache_dir: &Path,
        progress: impl FnMut(usize),
    ) -> Result<(ItemEmbeddings, bool)> {
        let key = EmbeddingKey::new(items, model_path);
        let path = key.cache_path(cache_dir);
        let model = Model::load(model_path)?;
        if path.is_file() {
            let cached = ItemEmbeddings::load(&path, &key)?;
            if cached.len() == items.len() && cached.matches_model(&model, items)? {
                return Ok((cached, true));
            }
        }
        let embeddings = ItemEmbeddings::compute(&model, key, items, progress)?;
        embeddings.save(&path)?;
        Ok((embeddings, false))
    }
}

/// The mean of the final hidden states of `text`'s tokens; a BOS token, when the model
/// wants one, goes in first (the model expects it) but is left out of the mean, since its
/// state is the same for every text.
pub fn mean_hidden_state(model: &Model, text: &str) -> Result<Vec<f32>> {
    let with_bos = model.tokenizer.encode_with_bos(text)?;
    let bos = with_bos.len() - model.tokenizer.encode(text, true)?.len();
    if with_bos.len() == bos {
        return Err(Error::InvalidRequest(format!(
            "item text `{text}` has no tokens"
        )));
    }
    let d = model.config.d_model;
    let hidden =
        model.forward_hidden_with(&mut model.new_cache(), &with_bos, model.attention_kernels())?;
    let rows = &hidden[bos * d..];
    let n = (rows.len() / d) as f32;
    let mut mean = vec![0f32; d];
    for row in rows.chunks_exact(d) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x / n;
        }
    }
    Ok(mean)
}
