//! Reading the tokenizer's GGUF metadata keys, with errors that name the file and the key.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::{Error, Result};

pub(super) const MODEL: &str = "tokenizer.ggml.model";
pub(super) const PRE: &str = "tokenizer.ggml.pre";
pub(super) const TOKENS: &str = "tokenizer.ggml.tokens";
pub(super) const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub(super) const MERGES: &str = "tokenizer.ggml.merges";
pub(super) const SCORES: &str = "tokenizer.ggml.scores";
pub(super) const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
pub(super) const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
pub(super) const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
pub(super) const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
pub(super) const UNKNOWN_ID: &str = "tokenizer.ggml.unknown_token_id";
pub(super) const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub(super) const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
pub(super) const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
pub(super) const ARCHITECTURE: &str = "general.architecture";

/// The metadata of one GGUF file, and its path for error messages.
#[derive(Clone, Copy)]
pub(super) struct Metadata<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> Metadata<'a> {
    pub fn new(content: &'a Content, path: &'a Path) -> Self {
        Self { content, path }
    }

    pub fn bad(&self, key: &str, reason: impl std::fmt::Display) -> Error {
        Error::BadMetadata {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn missing(&self, key: &str) -> Error {
        Error::MissingMetadata {
            path: self.path.to_path_buf(),
            key: key.to_string(),
        }
    }

    fn required(&self, key: &str) -> Result<&'a Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.missing(key))
    }

    pub fn string(&self, key: &str) -> Result<&'a str> {
        self.optional_string(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn optional_string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(self.bad(key, format!("expected a string, found {}", describe(other))))
            }
        }
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => {
                Err(self.bad(key, format!("expected a bool, found {}", describe(other))))
            }
        }
    }

    /// A token id: an integer of any GGUF type below `vocab_size`.
    pub fn optional_token_id(&self, key: &str, vocab_size: usize) -> Result<Option<u32>> {
        let Some(value) = self.content.metadata.get(key) else {
            return Ok(None);
        };
        let id = integer(value).ok_or_else(|| {
            self.bad(
                key,
                format!("expected a token id, found {}", describe(value)),
            )
        })?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab_size => Ok(Some(id)),
            _ => Err(self.bad(
                key,
                format!("token id {id} is outside the vocabulary of {vocab_size} tokens"),
            )),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.required(key)? {
            Value::Array(items) => Ok(items),
            other => Err(self.bad(key, format!("expected an array, found {}", describe(other)))),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.bad(
                    key,
                    format!("item {i}: expected a string, found {}", describe(other)),
                )),
            })
            .collect()
    }

    pub fn integers(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                integer(item).ok_or_else(|| {
                    self.bad(
                        key,
                        format!("item {i}: expected an integer, found {}", describe(item)),
                    )
                })
            })
            .collect()
    }

    pub fn floats(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::F32(v) => Ok(*v),
                Value::F64(v) => Ok(*v as f32),
                other => Err(self.bad(
                    key,
                    format!("item {i}: expected a float, found {}", describe(other)),
                )),
            })
            .collect()
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::U8(v) => Some(i64::from(*v)),
        Value::I8(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I32(v) => Some(i64::from(*v)),
        Value::U64(v) => i64::try_from(*v).ok(),
        Value::I64(v) => Some(*v),
        _ => None,
    }
}

/// A short description of a value for error messages (never a whole token array).
fn describe(value: &Value) -> String {
    match value {
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
        other => format!("{other:?}"),
    }
}
