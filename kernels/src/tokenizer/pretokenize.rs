//! Splitting text into the words byte-level BPE merges within.
//!
//! Each variant is a hand-written equivalent of the regex that llama.cpp and the published
//! `tokenizer.json` use for that `tokenizer.ggml.pre` value. They are written out by hand
//! because `\s+(?!\S)` needs a look-ahead, which the `regex` crate lacks. `\p{L}` and
//! `\p{N}` are Unicode general categories, `\s` is the White_Space property.

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PreTokenizer {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// SmolLM (and StarCoder): first every `\p{N}` on its own, then GPT-2 on the text
    /// between digits.
    Smollm,
    /// Qwen2: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Qwen2,
}

/// The `tokenizer.ggml.pre` values we split like llama.cpp does.
pub(super) const SUPPORTED: &str = "gpt2, smollm, qwen2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

/// A character with its byte offset and class, so the rules below can look around.
#[derive(Clone, Copy)]
pub(super) struct Char {
    offset: usize,
    ch: char,
    class: Class,
}

fn class(ch: char) -> Class {
    if ch.is_ascii() {
        return match ch {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ' => Class::Space,
            _ => Class::Other,
        };
    }
    if ch.is_whitespace() {
        return Class::Space;
    }
    match ch.general_category_group() {
        GeneralCategoryGroup::Letter => Class::Letter,
        GeneralCategoryGroup::Number => Class::Number,
        _ => Class::Other,
    }
}

impl PreTokenizer {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gpt2" => Some(Self::Gpt2),
            "smollm" => Some(Self::Smollm),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// Calls `emit` with each word of `text`, in order; the words concatenate to `text`.
    /// `chars` is scratch space reused between calls.
    pub fn split<'t>(self, text: &'t str, chars: &mut Vec<Char>, mut emit: impl FnMut(&'t str)) {
        chars.clear();
        chars.extend(text.char_indices().map(|(offset, ch)| Char {
            offset,
            ch,
            class: class(ch),
        }));
        let offset = |i: usize| chars.get(i).map_or(text.len(), |c| c.offset);
        let mut i = 0;
        while i < chars.len() {
            let end = match self {
                Self::Gpt2 => gpt2_word(chars, i, false),
                Self::Smollm => gpt2_word(chars, i, true),
                Self::Qwen2 => qwen2_word(chars, i),
            };
            emit(&text[offset(i)..offset(end)]);
            i = end;
        }
    }
}

fn class_at(chars: &[Char], i: usize) -> Option<Class> {
    chars.get(i).map(|c| c.class)
}

/// The end of the run of `class` that starts at `i`.
fn run_end(chars: &[Char], i: usize, class: Class) -> usize {
    chars[i..]
        .iter()
        .position(|c| c.class != class)
        .map_or(chars.len(), |n| i + n)
}

/// The length of `'s|'t|'re|'ve|'m|'ll|'d` at `i` (which holds an apostrophe), if any.
fn contraction(chars: &[Char], i: usize, ignore_case: bool) -> Option<usize> {
    let at = |k: usize| {
        chars.get(k).map(|c| {
            if ignore_case {
                c.ch.to_ascii_lowercase()
            } else {
                c.ch
            }
        })
    };
    match (at(i + 1), at(i + 2)) {
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => Some(3),
        (Some('s' | 't' | 'm' | 'd'), _) => Some(2),
        _ => None,
    }
}

/// `\s+(?!\S)|\s+` at the start of the whitespace run `[i, run_end)`: all of it when
/// nothing but the end of the text follows, otherwise all but its last character (which
/// then goes with the next word), and a lone character as it is.
fn whitespace_end(i: usize, run_end: usize, at_text_end: bool) -> usize {
    if at_text_end || run_end - i == 1 {
        run_end
    } else {
        run_end - 1
    }
}

/// The end of the GPT-2 word at `i`. With `isolate_digits`, every digit is a word and
/// also ends the text the regex sees, as when llama.cpp runs `\p{N}` first.
fn gpt2_word(chars: &[Char], i: usize, isolate_digits: bool) -> usize {
    let c = chars[i];
    if isolate_digits && c.class == Class::Number {
        return i + 1;
    }
    if c.ch == '\'' {
        if let Some(len) = contraction(chars, i, false) {
            return i + len;
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
    let word_start = match class_at(chars, i + 1) {
        Some(Class::Number) if isolate_digits => i,
        Some(Class::Letter | Class::Number | Class::Other) if c.ch == ' ' => i + 1,
        _ => i,
    };
    let class = chars[word_start].class;
    if class != Class::Space {
        return run_end(chars, word_start, class);
    }
    let end = run_end(chars, i, Class::Space);
    let at_text_end = match class_at(chars, end) {
        None => true,
        Some(Class::Number) => isolate_digits,
        Some(_) => false,
    };
    whitespace_end(i, end, at_text_end)
}

fn is_line_break(ch: char) -> bool {
    ch == '\r' || ch == '\n'
}

/// The end of the Qwen2 word at `i`.
fn qwen2_word(chars: &[Char], i: usize) -> usize {
    let c = chars[i];
    if c.ch == '\'' {
        if let Some(len) = contraction(chars, i, true) {
            return i + len;
        }
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if c.class == Class::Letter {
        return run_end(chars, i, Class::Letter);
    }
    if c.class != Class::Number
        && !is_line_break(c.ch)
        && class_at(chars, i + 1) == Some(Class::Letter)
    {
        return run_end(chars, i + 1, Class::Letter);
    }
    // `\p{N}`
    if c.class == Class::Number {
        return i + 1;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let word_start = if c.ch == ' ' && class_at(chars, i + 1) == Some(Class::Other) {
        i + 1
    } else {
        i
    };
    if chars[word_start].class == Class::Other {
        let end = run_end(chars, word_start, Class::Other);
        return chars[end..]
            .iter()
            .position(|c| !is_line_break(c.ch))
            .map_or(chars.len(), |n| end + n);
    }
    // `\s*[\r\n]+`: up to the run's last line break, if it has one.
    let end = run_end(chars, i, Class::Space);
    if let Some(last_break) = (i..end).rev().find(|&k| is_line_break(chars[k].ch)) {
        return last_break + 1;
    }
    whitespace_end(i, end, end == chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pre.split(text, &mut Vec::new(), |w| out.push(w));
        out
    }

    #[test]
    fn gpt2_keeps_one_space_for_the_next_word() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello   world's 42\tx\n"),
            ["Hello", "  ", " world", "'s", " 42", "\t", "x", "\n"]
        );
    }

    #[test]
    fn smollm_isolates_digits_and_ends_whitespace_before_them() {
        assert_eq!(
            words(PreTokenizer::Smollm, "in  2024, x"),
            ["in", "  ", "2", "0", "2", "4", ",", " x"]
        );
    }

    #[test]
    fn qwen2_joins_punctuation_to_words_and_line_breaks_to_punctuation() {
        assert_eq!(
            words(PreTokenizer::Qwen2, "(foo) 12 I'M\n\n  bar.\r\n"),
            ["(foo", ")", " ", "1", "2", " I", "'M", "\n\n", " ", " bar", ".\r\n"]
        );
    }
}
