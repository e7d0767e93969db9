//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as SmolLM2 and Qwen2.5 use it.
//!
//! The vocabulary spells bytes as printable characters (GPT-2's byte-to-unicode map, so a
//! space is `Ġ`); merges are listed best first. Encoding splits the text into words with
//! the model's pre-tokenizer, then merges each word's bytes.

use super::bpe::{Merge, MergeScratch, MergeTable};
use super::hash::FastMap;
use super::metadata::{self, Metadata};
use super::pretokenize::{self, Char, PreTokenizer};
use super::TokenKind;
use crate::Result;

pub(super) struct ByteLevelBpe {
    pre: PreTokenizer,
    /// The token for each single byte. Bytes without one are dropped from the text, as
    /// llama.cpp and `tokenizers` do: SmolLM2 cannot write 0x04, for example.
    byte_ids: Box<[Option<u32>; 256]>,
    merges: MergeTable,
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes
/// stand for themselves, the others are shifted to U+0100 and up, in byte order.
fn byte_chars() -> [char; 256] {
    let mut chars = ['\0'; 256];
    let mut shifted = 0u32;
    for (byte, slot) in chars.iter_mut().enumerate() {
        let printable = matches!(byte, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            byte as u32
        } else {
            shifted += 1;
            255 + shifted
        };
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    chars
}

/// The bytes a vocabulary string spells, or `None` if it has a character outside the map.
fn unmap(text: &str, char_bytes: &FastMap<char, u8>) -> Option<Box<[u8]>> {
    text.chars().map(|c| char_bytes.get(&c).copied()).collect()
}

impl ByteLevelBpe {
    /// Builds the model, and the bytes each token decodes to.
    pub fn new(
        meta: &Metadata,
        tokens: &[&str],
        kinds: &[TokenKind],
        ids: &FastMap<Box<str>, u32>,
    ) -> Result<(Self, Vec<Box<[u8]>>)> {
        // Files converted before llama.cpp wrote this key are plain GPT-2.
        let pre_name = meta.optional_string(metadata::PRE)?.unwrap_or("gpt2");
        let pre = PreTokenizer::from_name(pre_name).ok_or_else(|| {
            meta.bad(
                metadata::PRE,
                format!(
                    "unsupported pre-tokenizer `{pre_name}` (supported: {})",
                    pretokenize::SUPPORTED
                ),
            )
        })?;

        let chars = byte_chars();
        let char_bytes: FastMap<char, u8> = (0..=255u8).map(|b| (chars[b as usize], b)).collect();
        let byte_ids: Box<[Option<u32>; 256]> = Box::new(std::array::from_fn(|byte| {
            ids.get(chars[byte].to_string().as_str()).copied()
        }));
        // Some vocabularies (SmolLM2) lack bytes that valid UTF-8 never has, and a few
        // control characters; but without letters and digits this is not byte-level BPE.
        if let Some(byte) = (b'0'..=b'z').find(|&b| byte_ids[b as usize].is_none()) {
            return Err(meta.bad(
                metadata::TOKENS,
                format!(
                    "no token for byte 0x{byte:02X} (`{}`), so this is not a byte-level vocabulary",
                    chars[byte as usize]
                ),
            ));
        }

        let merge_lines = meta.strings(metadata::MERGES)?;
        let mut merges = MergeTable::with_capacity(merge_lines.len());
        for (rank, line) in merge_lines.iter().enumerate() {
            let bad = |reason: String| {
                meta.bad(metadata::MERGES, format!("entry {rank} `{line}`: {reason}"))
            };
            let (left, right) = line
                .split_once(' ')
                .ok_or_else(|| bad("expected two tokens separated by a space".into()))?;
            let id_of = |text: &str| {
                ids.get(text)
                    .copied()
                    .ok_or_else(|| bad(format!("`{text}` is not in the vocabulary")))
            };
            let merged = format!("{left}{right}");
            let merge = Merge {
                rank: u32::try_from(rank).map_err(|_| bad("too many merges".into()))?,
                id: id_of(&merged)?,
            };
            merges.insert(id_of(left)?, id_of(right)?, merge);
        }

        // Normal tokens are spelled in the byte map; special and user-defined ones are
        // written as plain text.
        let token_bytes = tokens
            .iter()
            .zip(kinds)
            .map(|(text, kind)| {
                match kind {
                    TokenKind::Normal | TokenKind::Byte => unmap(text, &char_bytes),
                    _ => None,
                }
                .unwrap_or_else(|| text.as_bytes().into())
            })
            .collect();
        Ok((
            Self {
                pre,
                byte_ids,
                merges,
            },
            token_bytes,
        ))
    }

    pub fn session<'t>(&self) -> ByteLevelSession<'_, 't> {
        ByteLevelSession {
            model: self,
            chars: Vec::new(),
            scratch: MergeScratch::default(),
            cache: FastMap::default(),
        }
    }
}

/// The state of one `encode` call: scratch buffers, and the ids of each word seen so far
/// (as a range of the output), since running text repeats its words constantly.
pub(super) struct ByteLevelSession<'m, 't> {
    model: &'m ByteLevelBpe,
    chars: Vec<Char>,
    scratch: MergeScratch,
    cache: FastMap<&'t str, (usize, usize)>,
}

impl<'t> ByteLevelSession<'_, 't> {
    pub fn encode(&mut self, text: &'t str, out: &mut Vec<u32>) {
        let Self {
            model,
            chars,
            scratch,
            cache,
        } = self;
        model.pre.split(text, chars, |word| {
            if let Some(&(start, len)) = cache.get(word) {
                out.extend_from_within(start..start + len);
                return;
            }
            let start = out.len();
            out.extend(word.bytes().filter_map(|b| model.byte_ids[b as usize]));
            let len = model.merges.apply(&mut out[start..], scratch);
            out.truncate(start + len);
            cache.insert(word, (start, len));
        });
    }
}
