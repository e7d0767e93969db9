//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`), as Gemma 3 uses it.
//!
//! The vocabulary is a list of pieces with scores, spaces written as `▁` (U+2581), and
//! `<0xXX>` tokens for bytes. There is no pre-tokenizer: each stretch of text between
//! special tokens has its spaces replaced by `▁`, starts as one symbol per character
//! (characters outside the vocabulary become their UTF-8 byte tokens), and is merged.
//!
//! The merge order is the one the published `tokenizer.json` lists, which Hugging Face's
//! converter derives from the scores: every split of a piece into two pieces is a merge,
//! ordered by the merged piece's score (user-defined pieces count as 0, like
//! SentencePiece gives them), then the longer left part, then the longer right part,
//! then by merged, left and right id.

use std::cmp::Reverse;

use super::bpe::{Merge, MergeScratch, MergeTable};
use super::hash::FastMap;
use super::metadata::{self, Metadata};
use super::TokenKind;
use crate::Result;

/// SentencePiece's stand-in for a space.
pub(super) const SPACE: char = '▁';

pub(super) struct SentencePieceBpe {
    /// The token of each character that is a piece by itself.
    char_ids: FastMap<char, u32>,
    fallback: Fallback,
    merges: MergeTable,
}

/// What a character outside the vocabulary becomes.
enum Fallback {
    /// Its UTF-8 bytes, as `<0xXX>` tokens (Gemma, Llama 2).
    Bytes(Box<[u32; 256]>),
    /// The unknown token, when the vocabulary lacks some byte tokens.
    Unknown(u32),
}

/// The byte a `<0xXX>` token stands for.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl SentencePieceBpe {
    /// Builds the model, and the bytes each token decodes to.
    pub fn new(
        meta: &Metadata,
        tokens: &[&str],
        kinds: &[TokenKind],
    ) -> Result<(Self, Vec<Box<[u8]>>)> {
        // llama.cpp's default when the key is absent is to add the prefix.
        if meta
            .optional_bool(metadata::ADD_SPACE_PREFIX)?
            .unwrap_or(true)
        {
            return Err(meta.bad(
                metadata::ADD_SPACE_PREFIX,
                "a leading-space (dummy prefix) SentencePiece tokenizer is not supported; only Gemma-style vocabularies with add_space_prefix = false are",
            ));
        }
        let scores = meta.floats(metadata::SCORES)?;
        if scores.len() != tokens.len() {
            return Err(meta.bad(
                metadata::SCORES,
                format!("{} scores for {} tokens", scores.len(), tokens.len()),
            ));
        }

        // Pieces as the model sees them: user-defined tokens are stored with real spaces.
        let pieces: Vec<String> = tokens.iter().map(|t| t.replace(' ', "▁")).collect();
        let mut piece_ids: FastMap<&str, u32> = FastMap::default();
        piece_ids.reserve(pieces.len());
        for (id, piece) in pieces.iter().enumerate() {
            piece_ids.entry(piece.as_str()).or_insert(id as u32);
        }

        let mut char_ids = FastMap::default();
        let mut byte_ids = [None; 256];
        for (id, (piece, kind)) in pieces.iter().zip(kinds).enumerate() {
            match kind {
                TokenKind::Normal | TokenKind::UserDefined => {
                    let mut chars = piece.chars();
                    if let (Some(c), None) = (chars.next(), chars.next()) {
                        char_ids.entry(c).or_insert(id as u32);
                    }
                }
                TokenKind::Byte => {
                    let byte = parse_byte_token(piece).ok_or_else(|| {
                        meta.bad(
                            metadata::TOKENS,
                            format!("token {id} `{piece}` is marked as a byte but is not written <0xXX>"),
                        )
                    })?;
                    byte_ids[byte as usize].get_or_insert(id as u32);
                }
                _ => {}
            }
        }
        let fallback = match byte_ids.iter().copied().collect::<Option<Vec<u32>>>() {
            Some(all) => {
                let mut table = Box::new([0u32; 256]);
                table.copy_from_slice(&all);
                Fallback::Bytes(table)
            }
            None => Fallback::Unknown(
                meta.optional_token_id(metadata::UNKNOWN_ID, tokens.len())?
                    .ok_or_else(|| {
                        meta.bad(
                            metadata::TOKENS,
                            "the vocabulary has neither all 256 byte tokens <0x00>..<0xFF> nor an unknown token",
                        )
                    })?,
            ),
        };

        let merges = merge_table(&pieces, kinds, &scores, &piece_ids);

        let token_bytes = tokens
            .iter()
            .zip(kinds)
            .map(|(text, kind)| match kind {
                TokenKind::Byte => {
                    parse_byte_token(text).map_or_else(|| text.as_bytes().into(), |b| [b].into())
                }
                TokenKind::Normal | TokenKind::UserDefined => {
                    text.replace(SPACE, " ").into_bytes().into_boxed_slice()
                }
                _ => text.as_bytes().into(),
            })
            .collect();
        Ok((
            Self {
                char_ids,
                fallback,
                merges,
            },
            token_bytes,
        ))
    }

    pub fn session(&self) -> SentencePieceSession<'_> {
        SentencePieceSession {
            model: self,
            scratch: MergeScratch::default(),
        }
    }
}

/// Every way to split a normal or user-defined piece into two pieces, ranked as the
/// module documentation says.
fn merge_table(
    pieces: &[String],
    kinds: &[TokenKind],
    scores: &[f32],
    piece_ids: &FastMap<&str, u32>,
) -> MergeTable {
    struct Candidate {
        score: f32,
        left_len: usize,
        right_len: usize,
        merged: u32,
        left: u32,
        right: u32,
    }
    let mut candidates = Vec::new();
    for (id, ((piece, kind), &score)) in pieces.iter().zip(kinds).zip(scores).enumerate() {
        let score = match kind {
            TokenKind::Normal if score.is_nan() => f32::NEG_INFINITY,
            // Adding 0.0 turns -0.0 into 0.0, so that the two tie as they do in Python.
            TokenKind::Normal => score + 0.0,
            TokenKind::UserDefined => 0.0,
            _ => continue,
        };
        let total_len = piece.chars().count();
        for (left_len, (split, _)) in piece.char_indices().enumerate().skip(1) {
            let (left, right) = piece.split_at(split);
            let Some(&left) = piece_ids.get(left) else {
                continue;
            };
            if let Some(&right) = piece_ids.get(right) {
                candidates.push(Candidate {
                    score,
                    left_len,
                    right_len: total_len - left_len,
                    merged: id as u32,
                    left,
                    right,
                });
            }
        }
    }
    candidates.sort_unstable_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| {
                (Reverse(a.left_len), Reverse(a.right_len))
                    .cmp(&(Reverse(b.left_len), Reverse(b.right_len)))
            })
            .then_with(|| (a.merged, a.left, a.right).cmp(&(b.merged, b.left, b.right)))
    });
    let mut table = MergeTable::with_capacity(candidates.len());
    for (rank, c) in candidates.iter().enumerate() {
        let merge = Merge {
            rank: rank as u32,
            id: c.merged,
        };
        table.insert(c.left, c.right, merge);
    }
    table
}

pub(super) struct SentencePieceSession<'m> {
    model: &'m SentencePieceBpe,
    scratch: MergeScratch,
}

impl SentencePieceSession<'_> {
    pub fn encode(&mut self, text: &str, out: &mut Vec<u32>) {
        let model = self.model;
        let start = out.len();
        for c in text.chars() {
            let c = if c == ' ' { SPACE } else { c };
            if let Some(&id) = model.char_ids.get(&c) {
                out.push(id);
                continue;
            }
            match &model.fallback {
                Fallback::Bytes(byte_ids) => {
                    let mut buf = [0u8; 4];
                    out.extend(
                        c.encode_utf8(&mut buf)
                            .bytes()
                            .map(|b| byte_ids[b as usize]),
                    );
                }
                Fallback::Unknown(unk) => out.push(*unk),
            }
        }
        let len = model.merges.apply(&mut out[start..], &mut self.scratch);
        out.truncate(start + len);
    }
}
