//! Our own tokenizers, built from a GGUF file's `tokenizer.*` metadata.
//!
//! Two models cover the files we run:
//! - byte-level BPE (`gpt2`: SmolLM2, Qwen2.5) in `byte_level`, with the pre-tokenizer
//!   split of `pretokenize`;
//! - SentencePiece BPE with byte fallback (`llama`: Gemma 3) in `sentencepiece`.
//!
//! Both merge with `bpe`. Special tokens written in the text are found first (`special`);
//! `chat` renders conversations into prompts, and `stream` decodes token by token.
//!
//! The tests hold our ids equal to Hugging Face's `tokenizers`: on Gemma 3's published
//! `tokenizer.json`, and for the byte-level models on a `tokenizer.json` with the same
//! vocabulary and the published pre-tokenizer. Where exact round trips and the published
//! tokenizers disagree, we keep the text: we do not apply Qwen's NFC normalisation. What
//! a vocabulary cannot write is still lost: SmolLM2 has no token for a few control bytes
//! (they are dropped), and SentencePiece cannot tell a literal `▁` from a space.

mod bpe;
mod byte_level;
mod chat;
mod hash;
mod metadata;
mod pretokenize;
mod sentencepiece;
mod special;
mod stream;

use std::path::Path;

use candle_core::quantized::gguf_file::Content;

pub use chat::{ChatMessage, ChatTemplate, Role};
pub use stream::StreamDecoder;

use self::byte_level::{ByteLevelBpe, ByteLevelSession};
use self::hash::FastMap;
use self::metadata::Metadata;
use self::sentencepiece::{SentencePieceBpe, SentencePieceSession};
use self::special::{Segment, SpecialTokens};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// `tokenizer.ggml.token_type`, as llama.cpp numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_code(code: i64) -> Option<Self> {
        match code {
            // 0 is "undefined"; llama.cpp treats such tokens as normal.
            0 | 1 => Some(Self::Normal),
            2 => Some(Self::Unknown),
            3 => Some(Self::Control),
            4 => Some(Self::UserDefined),
            5 => Some(Self::Unused),
            6 => Some(Self::Byte),
            _ => None,
        }
    }
}

/// Texts of the tokens that end a turn, besides the model's EOS.
const END_OF_TURN: [&str; 6] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<eos>",
    "<|eot_id|>",
    "<|end|>",
];

enum Model {
    ByteLevel(ByteLevelBpe),
    SentencePiece(SentencePieceBpe),
}

/// One `encode` call's state in either model.
enum Session<'m, 't> {
    ByteLevel(ByteLevelSession<'m, 't>),
    SentencePiece(SentencePieceSession<'m>),
}

impl Model {
    fn session<'t>(&self) -> Session<'_, 't> {
        match self {
            Self::ByteLevel(model) => Session::ByteLevel(model.session()),
            Self::SentencePiece(model) => Session::SentencePiece(model.session()),
        }
    }
}

impl<'t> Session<'_, 't> {
    /// Appends the ids of `text`, which holds no special tokens, to `out`.
    fn encode(&mut self, text: &'t str, out: &mut Vec<u32>) {
        match self {
            Self::ByteLevel(session) => session.encode(text, out),
            Self::SentencePiece(session) => session.encode(text, out),
        }
    }
}

pub struct Tokenizer {
    model: Model,
    /// What each token decodes to.
    token_bytes: Vec<Box<[u8]>>,
    /// Ids by their text in `tokenizer.ggml.tokens`.
    ids: FastMap<Box<str>, u32>,
    specials: SpecialTokens,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    /// Per id: a token of plain text (normal or byte), not a control or special one.
    text_tokens: Vec<bool>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = match self.model {
            Model::ByteLevel(_) => "byte-level BPE",
            Model::SentencePiece(_) => "SentencePiece BPE",
        };
        f.debug_struct("Tokenizer")
            .field("model", &model)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata; `path` is only for error messages.
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let meta = Metadata::new(content, path);
        let tokens = meta.strings(metadata::TOKENS)?;
        // The top id must stay clear of the merge loop's marker, u32::MAX.
        if tokens.is_empty() || tokens.len() >= u32::MAX as usize {
            return Err(meta.bad(
                metadata::TOKENS,
                format!("a vocabulary of {} tokens", tokens.len()),
            ));
        }
        let kinds = token_kinds(&meta, tokens.len())?;
        let mut ids = FastMap::default();
        ids.reserve(tokens.len());
        for (id, text) in tokens.iter().enumerate() {
            ids.entry(Box::<str>::from(*text)).or_insert(id as u32);
        }

        let model_name = meta.string(metadata::MODEL)?;
        let (model, token_bytes) = match model_name {
            "gpt2" => {
                let (model, bytes) = ByteLevelBpe::new(&meta, &tokens, &kinds, &ids)?;
                (Model::ByteLevel(model), bytes)
            }
            "llama" => {
                let (model, bytes) = SentencePieceBpe::new(&meta, &tokens, &kinds)?;
                (Model::SentencePiece(model), bytes)
            }
            other => {
                return Err(meta.bad(
                    metadata::MODEL,
                    format!("unsupported tokenizer model `{other}` (supported: gpt2, llama)"),
                ))
            }
        };

        // SentencePiece vocabularies store user-defined tokens with real spaces, but the
        // published tokenizer matches them as pieces (`▁▁`), so plain spaces stay text.
        let special_text = |text: &str| match model {
            Model::ByteLevel(_) => text.to_string(),
            Model::SentencePiece(_) => text.replace(' ', "▁"),
        };
        let specials = SpecialTokens::new(tokens.iter().zip(&kinds).enumerate().filter_map(
            |(id, (text, kind))| {
                let always = match kind {
                    TokenKind::UserDefined => true,
                    TokenKind::Control | TokenKind::Unknown => false,
                    _ => return None,
                };
                Some((id as u32, special_text(text), always))
            },
        ));

        let n = tokens.len();
        let bos = meta.optional_token_id(metadata::BOS_ID, n)?;
        let eos = meta.optional_token_id(metadata::EOS_ID, n)?;
        let add_bos = meta
            .optional_bool(metadata::ADD_BOS)?
            .unwrap_or(matches!(model, Model::SentencePiece(_)));
        let mut stop_ids = vec![
            eos,
            meta.optional_token_id(metadata::EOT_ID, n)?,
            meta.optional_token_id(metadata::EOM_ID, n)?,
        ];
        stop_ids.extend(END_OF_TURN.iter().map(|text| {
            ids.get(*text)
                .copied()
                .filter(|&id| kinds[id as usize] == TokenKind::Control)
        }));
        let mut stop_ids: Vec<u32> = stop_ids.into_iter().flatten().collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let text_tokens = kinds
            .iter()
            .map(|kind| matches!(kind, TokenKind::Normal | TokenKind::Byte))
            .collect();
        Ok(Self {
            model,
            token_bytes,
            ids,
            specials,
            bos,
            eos,
            add_bos,
            stop_ids,
            text_tokens,
        })
    }

    /// Reads the metadata of the GGUF file at `path` and builds its tokenizer.
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Self::from_gguf(file.content(), path)
    }

    /// Encodes text. Special tokens written in it (`<|im_start|>`, `<start_of_turn>`)
    /// become their ids only when `parse_special` is true; otherwise they are plain text.
    /// User-defined tokens (Gemma's runs of newlines, Qwen's `<tool_call>`) always match.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut session = self.model.session();
        self.specials
            .split(text, parse_special, |segment| match segment {
                Segment::Text(text) => session.encode(text, &mut out),
                Segment::Token(id) => out.push(id),
            });
        Ok(out)
    }

    /// Encodes a whole prompt, such as a rendered chat: special tokens in it are parsed,
    /// and it starts with BOS when the model's metadata (`tokenizer.ggml.add_bos_token`)
    /// asks for one.
    pub fn encode_with_bos(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend(self.encode(text, true)?);
        Ok(ids)
    }

    /// The text of `ids`: normal tokens give back exactly the text they were encoded
    /// from, special tokens are written out as their text. Bytes that do not form UTF-8
    /// (ids cut in the middle of a character) become U+FFFD. Fails on an id outside the
    /// vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.bytes_of(id)?);
        }
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// The raw bytes token `id` stands for (possibly part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(|b| &b[..])
    }

    fn bytes_of(&self, id: u32) -> Result<&[u8]> {
        self.token_bytes(id).ok_or_else(|| {
            Error::Tokenizer(format!(
                "token id {id} is outside the vocabulary of {} tokens",
                self.vocab_size()
            ))
        })
    }

    /// Whether `id` is a token of plain text (not a control, user-defined or unused one).
    pub fn is_text_token(&self, id: u32) -> bool {
        self.text_tokens.get(id as usize).copied().unwrap_or(false)
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The ids that end generation: EOS and the end-of-turn tokens the vocabulary has
    /// (`<|im_end|>`, `<|endoftext|>`, `<end_of_turn>`, ...), sorted.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The id of the token written exactly `text` in the vocabulary
    /// (`tokenizer.ggml.tokens`), such as `<|im_end|>`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }
}

fn token_kinds(meta: &Metadata, n: usize) -> Result<Vec<TokenKind>> {
    if !meta.has(metadata::TOKEN_TYPE) {
        return Ok(vec![TokenKind::Normal; n]);
    }
    let codes = meta.integers(metadata::TOKEN_TYPE)?;
    if codes.len() != n {
        return Err(meta.bad(
            metadata::TOKEN_TYPE,
            format!("{} token types for {n} tokens", codes.len()),
        ));
    }
    codes
        .iter()
        .enumerate()
        .map(|(id, &code)| {
            TokenKind::from_code(code).ok_or_else(|| {
                meta.bad(
                    metadata::TOKEN_TYPE,
                    format!("token {id} has type {code}, not one of 0..=6"),
                )
            })
        })
        .collect()
}
