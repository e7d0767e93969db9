//! Decoding token by token for streaming output.

use super::Tokenizer;
use crate::Result;

/// Turns ids into text as they arrive. A character whose bytes span several tokens (an
/// emoji in byte-level BPE, a rare character as byte-fallback tokens) comes out once its
/// last byte has arrived, so the pieces joined equal [`Tokenizer::decode`] of all ids.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes of a character not yet complete.
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// The text that `id` completes; empty while a character is still incomplete.
    /// Invalid UTF-8 becomes U+FFFD, as in [`Tokenizer::decode`].
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.pending.extend_from_slice(self.tokenizer.bytes_of(id)?);
        let mut text = String::new();
        let mut done = 0;
        loop {
            match std::str::from_utf8(&self.pending[done..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    done = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = done + e.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.pending[done..valid_end]));
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            done = valid_end + bad;
                        }
                        // The tail may become a character with the next token.
                        None => {
                            done = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..done);
        Ok(text)
    }

    /// What is left at the end of the stream: an incomplete character, as U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
