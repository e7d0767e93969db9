//! Generative retrieval over semantic IDs (TIGER-style): the recommender's causal
//! transformer (`SasRec`, with its AKL kernel) reads a history as the code tokens of its
//! items, level by level, and is trained with the same loop to predict each next token;
//! recommending is beam search over the trie of valid IDs.
//!
//! Tokens: code `c` of position `l` in an ID is token `offset[l] + c`, so each position has
//! its own vocabulary, and the softmax that predicts a code runs over that vocabulary only
//! (`SasRec::restrict_next`). Windows start on an item boundary, so a token's position in
//! the window says which code position comes next.

use std::path::Path;

use candle_core::{Device, Tensor, D};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ids::SemanticIds;
use super::trie::{beam_search, Beam, Trie};
use crate::data::{Dataset, Split};
use crate::eval::{evaluate, Recommender};
use crate::model::{
    fit, load_weights, save_weights, write_atomically, EpochReport, SasRec, SasRecConfig,
    TrainConfig, TrainReport, Window,
};
use crate::{Error, Result};

/// The deepest rank the metrics read (NDCG@20): beams kept beyond the seen items.
pub const RANKED: usize = 20;

/// The shape of a generative retriever.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerativeConfig {
    /// The most recent items of a history the model reads.
    pub history_items: usize,
    pub d_model: usize,
    pub n_blocks: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    pub dropout: f64,
}

impl Default for GenerativeConfig {
    fn default() -> Self {
        GenerativeConfig {
            history_items: 20,
            d_model: 64,
            n_blocks: 2,
            n_heads: 1,
            d_ff: 256,
            dropout: 0.2,
        }
    }
}

/// A transformer over semantic-ID tokens and the IDs of the items it recommends.
#[derive(Debug)]
pub struct GenerativeRetriever {
    pub config: GenerativeConfig,
    pub model: SasRec,
    /// Each item's codes, by dense item id.
    codes: Vec<Vec<u16>>,
    /// The first token of each code position.
    offsets: Vec<u32>,
    vocab_sizes: Vec<usize>,
    trie: Trie,
}

impl GenerativeRetriever {
    /// A fresh model over the IDs `codes[item]` (with `vocab_sizes` tokens per code
    /// position) running `kernel_text`, weights seeded by `seed`.
    pub fn new(
        config: GenerativeConfig,
        codes: Vec<Vec<u16>>,
        vocab_sizes: Vec<usize>,
        kernel_text: &str,
        seed: u64,
    ) -> Result<GenerativeRetriever> {
        let model_config = model_config(&config, &vocab_sizes)?;
        let model = SasRec::new(model_config, kernel_text, seed)?;
        GenerativeRetriever::assemble(config, model, codes, vocab_sizes)
    }

    fn assemble(
        config: GenerativeConfig,
        mut model: SasRec,
        codes: Vec<Vec<u16>>,
        vocab_sizes: Vec<usize>,
    ) -> Result<GenerativeRetriever> {
        let trie = Trie::new(&codes)?;
        if trie.depth() != vocab_sizes.len() {
            return Err(Error::InvalidRequest(format!(
                "IDs of {} codes but {} vocabularies",
                trie.depth(),
                vocab_sizes.len()
            )));
        }
        for (item, ids) in codes.iter().enumerate() {
            if let Some(level) = (0..ids.len()).find(|&l| usize::from(ids[l]) >= vocab_sizes[l]) {
                return Err(Error::InvalidRequest(format!(
                    "item {item} has code {} at position {level}, outside its {} tokens",
                    ids[level], vocab_sizes[level]
                )));
            }
        }
        let offsets = vocab_sizes
            .iter()
            .scan(0u32, |next, &size| {
                let offset = *next;
                *next += size as u32;
                Some(offset)
            })
            .collect::<Vec<u32>>();
        // Each position predicts a code of the next position of an ID, from that
        // position's vocabulary only.
        let depth = vocab_sizes.len();
        model.restrict_next(|p| {
            let level = (p + 1) % depth;
            let start = offsets[level] as usize;
            start..start + vocab_sizes[level]
        })?;
        Ok(GenerativeRetriever {
            config,
            model,
            codes,
            offsets,
            vocab_sizes,
            trie,
        })
    }

    /// Codes per ID.
    pub fn depth(&self) -> usize {
        self.vocab_sizes.len()
    }

    pub fn n_items(&self) -> usize {
        self.codes.len()
    }

    pub fn trie(&self) -> &Trie {
        &self.trie
    }

    /// The tokens of `items`, ID after ID.
    fn tokens_of(&self, items: &[u32]) -> Result<Vec<u32>> {
        let mut tokens = Vec::with_capacity(items.len() * self.depth());
        for &item in items {
            let codes = self.codes.get(item as usize).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "item id {item} is not below the retriever's {} items",
                    self.codes.len()
                ))
            })?;
            tokens.extend(
                codes
                    .iter()
                    .zip(&self.offsets)
                    .map(|(&c, &o)| o + u32::from(c)),
            );
        }
        Ok(tokens)
    }

    /// Training windows of token transitions: each training sequence is cut from its end
    /// into windows of `history_items + 1` items (as item windows are), then spelled out.
    pub fn windows(&self, train: &[Vec<u32>]) -> Result<Vec<Window>> {
        let items = self.config.history_items;
        crate::model::item_windows(train, items, items)?
            .into_iter()
            .map(|w| {
                let mut items = w.input;
                items.extend(w.target.last());
                let tokens = self.tokens_of(&items)?;
                Ok(Window {
                    input: tokens[..tokens.len() - 1].to_vec(),
                    target: tokens[1..].to_vec(),
                    first_target: 0,
                })
            })
            .collect()
    }

    /// The `width` best items after `history` by beam search over the trie, best first,
    /// each with its log-probability.
    pub fn recommend(&self, history: &[u32], width: usize) -> Result<Vec<Beam>> {
        if history.is_empty() {
            return Err(Error::InvalidRequest(
                "history is empty: the model needs at least one item".into(),
            ));
        }
        let recent = &history[history.len().saturating_sub(self.config.history_items)..];
        let tokens = self.tokens_of(recent)?;
        let (prefix, hidden) = self.model.prefix(&tokens)?;
        let last = hidden.narrow(1, tokens.len() - 1, 1)?.squeeze(1)?;
        beam_search(&self.trie, width, |level, prefixes| {
            let hidden = if level == 0 {
                last.clone()
            } else {
                let flat: Vec<u32> = prefixes
                    .iter()
                    .flat_map(|p| p.iter().zip(&self.offsets).map(|(&c, &o)| o + u32::from(c)))
                    .collect();
                let continuation = Tensor::from_vec(flat, (prefixes.len(), level), &Device::Cpu)?;
                self.model
                    .hidden_after(&prefix, &continuation)?
                    .narrow(1, level - 1, 1)?
                    .squeeze(1)?
            };
            // The softmax over this code position's vocabulary, as training has it.
            let logits = self.model.scores_of_hidden(&hidden)?.narrow(
                1,
                self.offsets[level] as usize,
                self.vocab_sizes[level],
            )?;
            Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?)
        })
    }
}

/// The transformer's shape for these vocabularies: one token per code, and positions for
/// `history_items` IDs plus all but the last code of the one being generated.
fn model_config(config: &GenerativeConfig, vocab_sizes: &[usize]) -> Result<SasRecConfig> {
    if config.history_items == 0 || vocab_sizes.is_empty() {
        return Err(Error::InvalidRequest(
            "a generative retriever needs at least one history item and one code per ID".into(),
        ));
    }
    let depth = vocab_sizes.len();
    Ok(SasRecConfig {
        n_items: vocab_sizes.iter().sum(),
        max_len: (config.history_items + 1) * depth - 1,
        d_model: config.d_model,
        n_blocks: config.n_blocks,
        n_heads: config.n_heads,
        d_ff: config.d_ff,
        dropout: config.dropout,
    })
}

/// Full ranking as the other models are scored: the beam's items get their
/// log-probability, every other item NaN (ranked below all, never above the target). The
/// beam is `RANKED` wider than the distinct items of the history, so that after the seen
/// items are filtered out `RANKED` remain (when the catalogue has them).
impl Recommender for GenerativeRetriever {
    fn score(&self, histories: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        histories
            .par_iter()
            .map(|history| {
                let mut seen = history.to_vec();
                seen.sort_unstable();
                seen.dedup();
                let width = (RANKED + seen.len()).min(self.n_items());
                let mut row = vec![f32::NAN; self.n_items()];
                for beam in self.recommend(history, width)? {
                    row[beam.item as usize] = beam.score as f32;
                }
                Ok(row)
            })
            .collect()
    }
}

/// Trains `retriever` on `split.train` with the recommender's training loop, early-stopping
/// on validation NDCG@10 (seen items filtered) of beam-search recommendations.
pub fn train_generative(
    retriever: &GenerativeRetriever,
    split: &Split,
    config: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochReport, &GenerativeRetriever) -> Result<()>,
) -> Result<TrainReport> {
    if split.n_items != retriever.n_items() {
        return Err(Error::InvalidRequest(format!(
            "the split has {} items but the retriever {}",
            split.n_items,
            retriever.n_items()
        )));
    }
    let windows = retriever.windows(&split.train)?;
    fit(
        &retriever.model,
        &windows,
        config,
        |_| Ok(evaluate(retriever, &split.valid)?.seen_filtered),
        |report, _| on_epoch(report, retriever),
    )
}

const META: &str = "generative.json";

/// Everything in `generative.json`.
#[derive(Serialize, Deserialize)]
struct Meta {
    config: GenerativeConfig,
    kernel: String,
    ids: SemanticIds,
    dataset: Dataset,
    report: Option<TrainReport>,
}

/// A trained generative retriever with its IDs and data: `model.safetensors` and
/// `generative.json` in a directory.
#[derive(Debug)]
pub struct GenerativeCheckpoint {
    pub retriever: GenerativeRetriever,
    pub ids: SemanticIds,
    pub dataset: Dataset,
    pub report: Option<TrainReport>,
}

impl GenerativeCheckpoint {
    /// Writes a checkpoint from its parts into `dir` (created if missing).
    pub fn write(
        dir: &Path,
        retriever: &GenerativeRetriever,
        ids: &SemanticIds,
        dataset: &Dataset,
        report: Option<&TrainReport>,
    ) -> Result<()> {
        save_weights(dir, &retriever.model)?;
        let meta = Meta {
            config: retriever.config.clone(),
            kernel: retriever.model.kernel.text.clone(),
            ids: ids.clone(),
            dataset: dataset.clone(),
            report: report.cloned(),
        };
        let json = serde_json::to_string(&meta).map_err(|e| Error::BadCheckpoint {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_atomically(&dir.join(META), json.as_bytes())
    }

    /// Reads a checkpoint written by `write`.
    pub fn load(dir: &Path) -> Result<GenerativeCheckpoint> {
        let bad = |reason: String| Error::BadCheckpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(dir.join(META)).map_err(|e| {
            bad(format!(
                "cannot read {META} ({e}); is this a directory written by \
                 `recsys train --retriever semantic-id`?"
            ))
        })?;
        let meta: Meta =
            serde_json::from_str(&text).map_err(|e| bad(format!("{META} does not parse: {e}")))?;
        let codes = meta.ids.codes_for(&meta.dataset)?;
        let model_config = model_config(&meta.config, &meta.ids.vocab_sizes)?;
        let model = load_weights(dir, model_config, &meta.kernel)?;
        let retriever =
            GenerativeRetriever::assemble(meta.config, model, codes, meta.ids.vocab_sizes.clone())
                .map_err(|e| bad(e.to_string()))?;
        Ok(GenerativeCheckpoint {
            retriever,
            ids: meta.ids,
            dataset: meta.dataset,
            report: meta.report,
        })
    }
}
