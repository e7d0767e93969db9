//! Finding special and user-defined tokens written in the text, before the model sees it.
//!
//! Matches are leftmost, then longest, as in Hugging Face's added-vocabulary split.
//! Control tokens (`<|im_start|>`, `<start_of_turn>`) count only when the caller asks
//! for special tokens to be parsed; user-defined tokens (Gemma's `\n\n`, `<table>`,
//! Qwen's `<tool_call>`) always count, as llama.cpp and `tokenizer.json` both do.

/// A piece of the text: plain text for the model, or a token found in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Segment<'t> {
    Text(&'t str),
    Token(u32),
}

#[derive(Clone, Copy)]
struct Terminal {
    id: u32,
    /// Matched even when special tokens are not parsed.
    always: bool,
}

/// A byte trie of the token texts.
#[derive(Default)]
struct Node {
    /// Sorted by byte.
    edges: Vec<(u8, usize)>,
    terminal: Option<Terminal>,
}

pub(super) struct SpecialTokens {
    nodes: Vec<Node>,
    /// Whether any token text starts with this byte: most bytes of a text start none.
    starts: [bool; 256],
}

impl SpecialTokens {
    /// From `(id, text, always)`; an earlier id wins when two tokens share a text.
    pub fn new<S: AsRef<str>>(tokens: impl IntoIterator<Item = (u32, S, bool)>) -> Self {
        let mut nodes = vec![Node::default()];
        let mut starts = [false; 256];
        for (id, text, always) in tokens {
            let text = text.as_ref();
            let Some(&first) = text.as_bytes().first() else {
                continue;
            };
            starts[first as usize] = true;
            let mut node = 0;
            for &byte in text.as_bytes() {
                node = match nodes[node].edges.binary_search_by_key(&byte, |e| e.0) {
                    Ok(k) => nodes[node].edges[k].1,
                    Err(k) => {
                        let child = nodes.len();
                        nodes.push(Node::default());
                        nodes[node].edges.insert(k, (byte, child));
                        child
                    }
                };
            }
            nodes[node].terminal.get_or_insert(Terminal { id, always });
        }
        Self { nodes, starts }
    }

    /// The longest token at the start of `bytes`, as (id, length).
    fn longest_at(&self, bytes: &[u8], parse_special: bool) -> Option<(u32, usize)> {
        let mut node = 0;
        let mut best = None;
        for (depth, byte) in bytes.iter().enumerate() {
            let edges = &self.nodes[node].edges;
            match edges.binary_search_by_key(byte, |e| e.0) {
                Ok(k) => node = edges[k].1,
                Err(_) => break,
            }
            match self.nodes[node].terminal {
                Some(t) if t.always || parse_special => best = Some((t.id, depth + 1)),
                _ => {}
            }
        }
        best
    }

    /// Calls `emit` with the text between tokens and with the tokens, in order.
    pub fn split<'t>(&self, text: &'t str, parse_special: bool, mut emit: impl FnMut(Segment<'t>)) {
        let bytes = text.as_bytes();
        let mut plain_from = 0;
        let mut i = 0;
        while i < bytes.len() {
            // A token text is whole UTF-8, so it can only start on a character boundary.
            let found = if self.starts[bytes[i] as usize] && text.is_char_boundary(i) {
                self.longest_at(&bytes[i..], parse_special)
            } else {
                None
            };
            match found {
                Some((id, len)) => {
                    if plain_from < i {
                        emit(Segment::Text(&text[plain_from..i]));
                    }
                    emit(Segment::Token(id));
                    i += len;
                    plain_from = i;
                }
                None => i += 1,
            }
        }
        if plain_from < bytes.len() {
            emit(Segment::Text(&text[plain_from..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split<'t>(tokens: &SpecialTokens, text: &'t str, parse_special: bool) -> Vec<Segment<'t>> {
        let mut out = Vec::new();
        tokens.split(text, parse_special, |s| out.push(s));
        out
    }

    #[test]
    fn leftmost_then_longest_and_control_only_when_asked() {
        let tokens = SpecialTokens::new([(1, "\n", true), (2, "\n\n", true), (3, "<ctl>", false)]);
        assert_eq!(
            split(&tokens, "a\n\n\nb<ctl>é", true),
            [
                Segment::Text("a"),
                Segment::Token(2),
                Segment::Token(1),
                Segment::Text("b"),
                Segment::Token(3),
                Segment::Text("é"),
            ]
        );
        assert_eq!(
            split(&tokens, "b<ctl>\n", false),
            [Segment::Text("b<ctl>"), Segment::Token(1)]
        );
    }
}
