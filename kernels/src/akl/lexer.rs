//! Text to S-expressions: tokens with their line and column, comments dropped.

use super::ParseError;

/// Where a token starts, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// An S-expression with the position of its first character.
#[derive(Clone, Debug, PartialEq)]
pub enum Sexp {
    Int(i64, Pos),
    Float(f64, Pos),
    Symbol(String, Pos),
    /// A parenthesised list; `end` is the position of its closing parenthesis.
    List(Vec<Sexp>, Pos, Pos),
}

impl Sexp {
    pub fn pos(&self) -> Pos {
        match self {
            Sexp::Int(_, p) | Sexp::Float(_, p) | Sexp::Symbol(_, p) | Sexp::List(_, p, _) => *p,
        }
    }

    /// How the expression reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Sexp::Int(v, _) => format!("\"{v}\""),
            Sexp::Float(v, _) => format!("\"{v:?}\""),
            Sexp::Symbol(s, _) => format!("\"{s}\""),
            Sexp::List(items, _, _) => match items.first() {
                Some(Sexp::Symbol(head, _)) => format!("a list \"({head} ...)\""),
                Some(_) => "a list".to_string(),
                None => "\"()\"".to_string(),
            },
        }
    }
}

/// Lists nested deeper than this are rejected, so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 64;

/// Longer texts are refused before they are read: the library's programs are well under
/// 1 KiB, and every later stage is bounded by the size of what passes here.
pub const MAX_BYTES: usize = 16 * 1024;
/// Most expressions (atoms and lists) one text may hold.
pub const MAX_EXPRESSIONS: usize = 2048;

/// Reads every top-level expression of `text`.
pub fn read_all(text: &str) -> Result<Vec<Sexp>, ParseError> {
    if text.len() > MAX_BYTES {
        return Err(ParseError::new(
            Pos { line: 1, col: 1 },
            &format!("a program of at most {MAX_BYTES} bytes"),
            &format!("{} bytes", text.len()),
        ));
    }
    let mut reader = Reader {
        chars: text.chars().collect(),
        at: 0,
        pos: Pos { line: 1, col: 1 },
        expressions: 0,
    };
    let mut out = Vec::new();
    loop {
        reader.skip_blank();
        if reader.peek().is_none() {
            return Ok(out);
        }
        out.push(reader.expression(0)?);
    }
}

struct Reader {
    chars: Vec<char>,
    at: usize,
    pos: Pos,
    /// Expressions read so far, against `MAX_EXPRESSIONS`.
    expressions: usize,
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || c == '(' || c == ')' || c == ';'
}

impl Reader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.at += 1;
            if c == '\n' {
                self.pos.line += 1;
                self.pos.col = 1;
            } else {
                self.pos.col += 1;
            }
        }
    }

    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c == ';' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn expression(&mut self, depth: usize) -> Result<Sexp, ParseError> {
        let start = self.pos;
        self.expressions += 1;
        if self.expressions > MAX_EXPRESSIONS {
            return Err(ParseError::new(
                start,
                &format!("a program of at most {MAX_EXPRESSIONS} expressions"),
                "more",
            ));
        }
        match self.peek() {
            None => Err(ParseError::new(start, "an expression", "end of input")),
            Some(')') => Err(ParseError::new(start, "an expression", "\")\"")),
            Some('(') => {
                if depth >= MAX_DEPTH {
                    return Err(ParseError::new(
                        start,
                        &format!("at most {MAX_DEPTH} nested lists"),
                        "a deeper list",
                    ));
                }
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_blank();
                    match self.peek() {
                        None => {
                            return Err(ParseError::new(
                                self.pos,
                                &format!("\")\" closing the list at {}:{}", start.line, start.col),
                                "end of input",
                            ))
                        }
                        Some(')') => {
                            let end = self.pos;
                            self.bump();
                            return Ok(Sexp::List(items, start, end));
                        }
                        Some(_) => items.push(self.expression(depth + 1)?),
                    }
                }
            }
            Some(_) => {
                let mut word = String::new();
                while let Some(c) = self.peek().filter(|c| !is_delimiter(*c)) {
                    word.push(c);
                    self.bump();
                }
                atom(word, start)
            }
        }
    }
}

/// Classifies a word: integer, float, or symbol (identifier or operator).
fn atom(word: String, pos: Pos) -> Result<Sexp, ParseError> {
    let digits = word.strip_prefix(['-', '+']).unwrap_or(&word);
    if digits.starts_with(|c: char| c.is_ascii_digit()) {
        if digits.chars().all(|c| c.is_ascii_digit()) {
            return word.parse::<i64>().map(|v| Sexp::Int(v, pos)).map_err(|_| {
                ParseError::new(pos, "an integer within ±9223372036854775807", &quote(&word))
            });
        }
        return match word.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Sexp::Float(if v == 0.0 { 0.0 } else { v }, pos)),
            _ => Err(ParseError::new(pos, "a finite number", &quote(&word))),
        };
    }
    let operator = ["+", "-", "*", "/", "<", "<=", ">", ">=", "=="].contains(&word.as_str());
    let identifier = word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if operator || identifier {
        Ok(Sexp::Symbol(word, pos))
    } else {
        Err(ParseError::new(
            pos,
            "a number, a name or an operator (+ - * / < <= > >= ==)",
            &quote(&word),
        ))
    }
}

fn quote(word: &str) -> String {
    format!("\"{}\"", word.escape_debug())
}
