//! AKL's syntax read one byte at a time, for grammar-constrained decoding: a state says
//! which bytes may come next so that the text can still become a program `parse` accepts.
//!
//! It mirrors `parse.rs` form by form and is a little stricter, so that whatever it
//! completes parses: a word must end as a keyword, a name, an integer of at most nine
//! digits or a plain decimal number; there are no comments; a parameter is referred to only after its `param`
//! clause; a mechanism and its options are named from the table, each option once; a
//! library body names a program of the library; a clause a rule already has cannot come
//! again. Whitespace and the list depth are bounded, so that every state can still be
//! completed and a sampler cannot idle. Tests hold it to the parser in both directions: every library program is
//! accepted byte by byte, and random walks through it end in texts that parse.

use crate::constrain::ByteGrammar;

use super::lexer::MAX_DEPTH;
use super::parse::RULE_HEADS;
use super::{library, mechanism};

/// The longest word the recognizer lets through (names, numbers).
const MAX_WORD: usize = 32;
/// Blank bytes in a row (spaces, tabs, newlines), enough to indent a deep clause, so that
/// a sampler cannot idle on whitespace.
const MAX_BLANK_RUN: u8 = 24;
/// Newlines in a row: one blank line at most.
const MAX_NEWLINES: u8 = 2;

/// Words that mean something in an expression, so a parameter may not be named one.
const RESERVED: [&str; 10] = [
    "q", "kv", "s", "scale", "head", "causal", "true", "false", "all", "kernel",
];

/// What a word at some place may be.
#[derive(Clone, Debug, PartialEq)]
enum Word {
    /// One of these exact words.
    Keyword(&'static [&'static str]),
    /// An identifier not in [`RESERVED`]: the name of the kernel or of a new parameter.
    NewName,
    /// One of these names (declared parameters, library programs, mechanisms, options).
    OneOf(Vec<String>),
    /// `-?[0-9]{1,9}`.
    Int,
    /// An integer or `-?[0-9]{1,9}.[0-9]{1,6}`, with an optional exponent `e-?[0-9]{1,2}`.
    Number,
}

/// What may come at one place of a list.
#[derive(Debug, Default)]
struct Expect {
    words: Vec<Word>,
    /// The form a `(` here opens.
    list: Option<Form>,
    /// Whether `)` may close the list here.
    close: bool,
}

/// The list being read and, once its head is known, which form it is.
#[derive(Clone, Debug)]
enum Form {
    Program,
    /// A clause of the program (`top`) or of a `layers` / `heads` body; head not read yet.
    Clause {
        top: bool,
    },
    Param {
        name: String,
        int: bool,
    },
    IntRange {
        pow2: bool,
    },
    FloatRange,
    /// `(layers SEL BODY)` or `(heads SEL BODY)`; `library` once the body is a name.
    Override {
        library: bool,
    },
    Selector {
        head: Option<&'static str>,
    },
    MaskClause,
    MaskList {
        head: Option<&'static str>,
    },
    IntList,
    ScoreClause,
    ScoreList {
        tanh: bool,
    },
    Norm,
    Select,
    Tagged(&'static str),
    Summary,
    Star,
    Cache,
    Keep,
    Mechanism {
        spec: Option<&'static mechanism::MechanismSpec>,
        used: Vec<&'static str>,
    },
    MechOption {
        spec: Option<&'static mechanism::MechanismSpec>,
        option: Option<&'static mechanism::OptionSpec>,
    },
    Tile,
}

#[derive(Clone, Debug)]
struct Frame {
    form: Form,
    /// Items read so far, the head included.
    index: usize,
    /// Rule clauses this program or body already has (program and override frames).
    used: Vec<&'static str>,
}

/// Where the reader stands between or inside tokens.
#[derive(Clone, Debug, PartialEq)]
enum Lex {
    Blank { run: u8, newlines: u8 },
    Word(String),
}

/// The state of reading one AKL program.
#[derive(Clone, Debug)]
pub struct AklState {
    stack: Vec<Frame>,
    lex: Lex,
    /// Declared parameters: name and whether it is an integer.
    params: Vec<(String, bool)>,
    /// The program's closing parenthesis has been read.
    done: bool,
}

/// The grammar of one AKL program, for [`crate::constrain::GrammarConstraint`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AklGrammar;

impl ByteGrammar for AklGrammar {
    type State = AklState;

    fn start(&self) -> AklState {
        AklState {
            stack: Vec::new(),
            lex: Lex::Blank {
                run: 0,
                newlines: 0,
            },
            params: Vec::new(),
            done: false,
        }
    }

    fn advance(&self, state: &AklState, byte: u8) -> Option<AklState> {
        let mut next = state.clone();
        next.push(byte).then_some(next)
    }

    fn is_complete(&self, state: &AklState) -> bool {
        state.done && !matches!(state.lex, Lex::Word(_))
    }
}

impl AklState {
    /// Reads one byte; false when no program can continue this way (the state is then
    /// half-updated and must be dropped).
    fn push(&mut self, byte: u8) -> bool {
        let delimiter = matches!(byte, b' ' | b'\t' | b'\n' | b'(' | b')');
        if !delimiter {
            return self.word_byte(byte);
        }
        let (run, newlines) = match std::mem::replace(
            &mut self.lex,
            Lex::Blank {
                run: 0,
                newlines: 0,
            },
        ) {
            Lex::Word(word) if !self.end_word(&word) => return false,
            Lex::Blank { run, newlines } => (run, newlines),
            Lex::Word(_) => (0, 0),
        };
        match byte {
            b'(' => self.open(),
            b')' => self.close(),
            _ => {
                let newlines = newlines + u8::from(byte == b'\n');
                if run >= MAX_BLANK_RUN || newlines > MAX_NEWLINES {
                    return false;
                }
                self.lex = Lex::Blank {
                    run: run + 1,
                    newlines,
                };
                true
            }
        }
    }

    fn word_byte(&mut self, byte: u8) -> bool {
        if self.done || self.stack.is_empty() {
            return false;
        }
        let mut word = match std::mem::replace(
            &mut self.lex,
            Lex::Blank {
                run: 0,
                newlines: 0,
            },
        ) {
            Lex::Word(word) => word,
            _ => String::new(),
        };
        if word.len() >= MAX_WORD || !byte.is_ascii_graphic() {
            return false;
        }
        word.push(byte as char);
        let expect = self.expect();
        let ok = expect.words.iter().any(|w| w.admits_prefix(&word));
        self.lex = Lex::Word(word);
        ok
    }

    fn end_word(&mut self, word: &str) -> bool {
        let expect = self.expect();
        if !expect.words.iter().any(|w| w.admits(word)) {
            return false;
        }
        self.take_word(word);
        true
    }

    fn open(&mut self) -> bool {
        // Room for the lists a form requires inside it (`(select (page N) ...)`), so that
        // no state is left that only a too-deep list could complete.
        if self.done || self.stack.len() + 3 > MAX_DEPTH {
            return false;
        }
        let Some(form) = self.expect().list else {
            return false;
        };
        if let Some(top) = self.stack.last_mut() {
            top.index += 1;
        }
        self.stack.push(Frame {
            form,
            index: 0,
            used: Vec::new(),
        });
        true
    }

    fn close(&mut self) -> bool {
        if self.stack.is_empty() || !self.expect().close {
            return false;
        }
        let frame = self.stack.pop().expect("checked above");
        if let Form::Param { name, int } = frame.form {
            self.params.push((name, int));
        }
        if self.stack.is_empty() {
            self.done = true;
        }
        true
    }

    /// Names of the declared parameters (integers only, or all).
    fn param_names(&self, ints_only: bool) -> Vec<String> {
        self.params
            .iter()
            .filter(|(_, int)| *int || !ints_only)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn mask_slot(&self, expect: &mut Expect) {
        expect
            .words
            .push(Word::Keyword(&["causal", "true", "false"]));
        expect.list = Some(Form::MaskList { head: None });
    }

    fn int_slot(&self, expect: &mut Expect) {
        expect.words.push(Word::Keyword(&["q", "kv"]));
        expect.words.push(Word::Int);
        expect.words.push(Word::OneOf(self.param_names(true)));
        expect.list = Some(Form::IntList);
    }

    fn score_slot(&self, expect: &mut Expect) {
        expect
            .words
            .push(Word::Keyword(&["s", "scale", "q", "kv", "head"]));
        expect.words.push(Word::Number);
        expect.words.push(Word::OneOf(self.param_names(false)));
        expect.list = Some(Form::ScoreList { tanh: false });
    }

    /// What the innermost open list accepts next.
    fn expect(&self) -> Expect {
        let mut e = Expect::default();
        let Some(frame) = self.stack.last() else {
            if !self.done {
                e.list = Some(Form::Program);
            }
            return e;
        };
        let i = frame.index;
        // `done` after `n` items: only `)` may follow.
        let end = |e: &mut Expect, n: usize| e.close = i == n;
        match &frame.form {
            Form::Program => match i {
                0 => e.words.push(Word::Keyword(&["kernel"])),
                1 => e.words.push(Word::NewName),
                _ => {
                    e.list = Some(Form::Clause { top: true });
                    e.close = true;
                }
            },
            Form::Clause { top } => {
                let parent = &self.stack[self.stack.len() - 2];
                let mut heads: Vec<String> = RULE_HEADS
                    .iter()
                    .filter(|h| !parent.used.contains(h))
                    .map(|h| h.to_string())
                    .collect();
                if *top {
                    heads.extend(["param".to_string(), "layers".to_string()]);
                }
                e.words.push(Word::OneOf(heads));
            }
            Form::Param { int, .. } => match i {
                1 => e.words.push(Word::NewName),
                2 => e.words.push(Word::Keyword(&["int", "float"])),
                3 => e.words.push(if *int { Word::Int } else { Word::Number }),
                4 => {
                    e.list = Some(if *int {
                        Form::IntRange { pow2: false }
                    } else {
                        Form::FloatRange
                    })
                }
                _ => end(&mut e, 5),
            },
            Form::IntRange { pow2 } => match (i, pow2) {
                (0, _) => e.words.extend([Word::Keyword(&["pow2"]), Word::Int]),
                (1, _) | (2, true) => e.words.push(Word::Int),
                (_, true) => end(&mut e, 3),
                (_, false) => end(&mut e, 2),
            },
            Form::FloatRange => match i {
                0 | 1 => e.words.push(Word::Number),
                _ => end(&mut e, 2),
            },
            Form::Override { library } => match i {
                1 => {
                    e.words.push(Word::Keyword(&["all"]));
                    e.list = Some(Form::Selector { head: None });
                }
                2 => {
                    e.words
                        .push(Word::OneOf(library::names().map(String::from).collect()));
                    e.list = Some(Form::Clause { top: false });
                    e.close = true;
                }
                _ if *library => end(&mut e, 3),
                _ => {
                    e.list = Some(Form::Clause { top: false });
                    e.close = true;
                }
            },
            Form::Selector { head } => match (i, *head) {
                (0, _) => e.words.push(Word::Keyword(&["list", "range", "every"])),
                (_, Some("list")) => {
                    e.words.push(Word::Int);
                    e.close = i >= 2;
                }
                (1 | 2, _) => e.words.push(Word::Int),
                _ => end(&mut e, 3),
            },
            Form::MaskClause | Form::Keep => match i {
                0 => e.words.push(Word::Keyword(&["keep"])),
                1 => self.mask_slot(&mut e),
                _ => end(&mut e, 2),
            },
            Form::MaskList { head } => match (i, *head) {
                (0, _) => e.words.push(Word::Keyword(&[
                    "and", "or", "not", "<", "<=", ">", ">=", "==",
                ])),
                (_, Some("and" | "or")) => {
                    self.mask_slot(&mut e);
                    e.close = i >= 2;
                }
                (1, Some("not")) => self.mask_slot(&mut e),
                (_, Some("not")) => end(&mut e, 2),
                (1 | 2, _) => self.int_slot(&mut e),
                _ => end(&mut e, 3),
            },
            Form::IntList => match i {
                0 => e.words.push(Word::Keyword(&["+", "-", "*", "div", "mod"])),
                1 | 2 => self.int_slot(&mut e),
                _ => end(&mut e, 3),
            },
            Form::ScoreClause => match i {
                1 => self.score_slot(&mut e),
                _ => end(&mut e, 2),
            },
            Form::ScoreList { tanh } => match (i, tanh) {
                (0, _) => e
                    .words
                    .push(Word::Keyword(&["+", "-", "*", "/", "min", "max", "tanh"])),
                (1, _) | (2, false) => self.score_slot(&mut e),
                (_, true) => end(&mut e, 2),
                (_, false) => end(&mut e, 3),
            },
            Form::Norm => match i {
                1 => e.words.push(Word::Keyword(&["softmax"])),
                _ => end(&mut e, 2),
            },
            Form::Select => match i {
                1 => e.list = Some(Form::Tagged("page")),
                2 => e.list = Some(Form::Tagged("top")),
                3 => e.list = Some(Form::Summary),
                _ => end(&mut e, 4),
            },
            Form::Tagged(tag) => match i {
                0 => e.words.push(Word::OneOf(vec![tag.to_string()])),
                1 => e.words.push(Word::Int),
                _ => end(&mut e, 2),
            },
            Form::Summary => match i {
                0 => e.words.push(Word::Keyword(&["summary"])),
                1 => e.words.push(Word::Keyword(&["minmax", "mean"])),
                _ => end(&mut e, 2),
            },
            Form::Star => match i {
                1 => e.list = Some(Form::Tagged("block")),
                2 => e.list = Some(Form::Tagged("context")),
                _ => end(&mut e, 3),
            },
            Form::Cache => match i {
                1 => {
                    e.words.push(Word::Keyword(&["all"]));
                    e.list = Some(Form::Keep);
                }
                _ => end(&mut e, 2),
            },
            Form::Mechanism { spec, used } => match (i, spec) {
                (1, _) => e.words.push(Word::OneOf(
                    mechanism::MECHANISMS
                        .iter()
                        .map(|m| m.name.to_string())
                        .collect(),
                )),
                (_, Some(spec)) => {
                    if spec.options.iter().any(|o| !used.contains(&o.name)) {
                        e.list = Some(Form::MechOption {
                            spec: Some(spec),
                            option: None,
                        });
                    }
                    e.close = true;
                }
                _ => {}
            },
            Form::MechOption { spec, option } => match (i, option) {
                (0, _) => {
                    let used = match &self.stack[self.stack.len() - 2].form {
                        Form::Mechanism { used, .. } => used.clone(),
                        _ => Vec::new(),
                    };
                    let names = spec
                        .iter()
                        .flat_map(|s| s.options.iter())
                        .filter(|o| !used.contains(&o.name))
                        .map(|o| o.name.to_string())
                        .collect();
                    e.words.push(Word::OneOf(names));
                }
                (1, Some(option)) => e.words.push(option_value(option)),
                _ => end(&mut e, 2),
            },
            Form::Tile => match i {
                1 => e.words.push(Word::Keyword(&["q"])),
                3 => e.words.push(Word::Keyword(&["kv"])),
                2 | 4 => e.words.push(Word::Int),
                _ => end(&mut e, 5),
            },
        }
        e
    }

    /// Records a completed word in the innermost list, refining its form where the word
    /// decides it.
    fn take_word(&mut self, word: &str) {
        let depth = self.stack.len();
        let frame = self.stack.last_mut().expect("a word is read inside a list");
        let i = frame.index;
        frame.index += 1;
        match &mut frame.form {
            Form::Clause { .. } => {
                let once = RULE_HEADS.iter().find(|h| **h == word && **h != "heads");
                frame.form = match word {
                    "param" => Form::Param {
                        name: String::new(),
                        int: true,
                    },
                    "layers" | "heads" => Form::Override { library: false },
                    "mask" => Form::MaskClause,
                    "score" => Form::ScoreClause,
                    "norm" => Form::Norm,
                    "select" => Form::Select,
                    "star" => Form::Star,
                    "cache" => Form::Cache,
                    "mechanism" => Form::Mechanism {
                        spec: None,
                        used: Vec::new(),
                    },
                    _ => Form::Tile,
                };
                if let Some(head) = once {
                    self.stack[depth - 2].used.push(head);
                }
            }
            Form::Param { name, int } => match i {
                1 => *name = word.to_string(),
                2 => *int = word == "int",
                _ => {}
            },
            Form::IntRange { pow2 } if i == 0 => *pow2 = word == "pow2",
            Form::Override { library } if i == 2 => *library = true,
            Form::Selector { head } if i == 0 => *head = keyword(word),
            Form::MaskList { head } if i == 0 => *head = keyword(word),
            Form::ScoreList { tanh } if i == 0 => *tanh = word == "tanh",
            Form::Mechanism { spec, .. } if i == 1 => *spec = mechanism::find(word),
            Form::MechOption { spec, option } if i == 0 => {
                *option = spec.and_then(|s| s.options.iter().find(|o| o.name == word));
                if let (Some(option), Form::Mechanism { used, .. }) =
                    (*option, &mut self.stack[depth - 2].form)
                {
                    used.push(option.name);
                }
            }
            _ => {}
        }
    }
}

/// The static spelling of a list head, so forms can hold it.
fn keyword(word: &str) -> Option<&'static str> {
    const HEADS: [&str; 11] = [
        "list", "range", "every", "and", "or", "not", "<", "<=", ">", ">=", "==",
    ];
    HEADS.iter().find(|h| **h == word).copied()
}

fn option_value(option: &mechanism::OptionSpec) -> Word {
    match option.kind {
        mechanism::OptionKind::Float { .. } => Word::Number,
        mechanism::OptionKind::Choice { choices, .. } => Word::Keyword(choices),
        _ => Word::Int,
    }
}

impl Word {
    /// Whether `prefix` can still grow into a word of this kind.
    fn admits_prefix(&self, prefix: &str) -> bool {
        match self {
            Word::Keyword(words) => words.iter().any(|w| w.starts_with(prefix)),
            Word::OneOf(words) => words.iter().any(|w| w.starts_with(prefix)),
            Word::NewName => is_identifier(prefix),
            Word::Int => {
                number_shape(prefix).is_some_and(|n| n.fraction.is_none() && n.exponent.is_none())
            }
            Word::Number => number_shape(prefix).is_some(),
        }
    }

    /// Whether `word` is complete as a word of this kind.
    fn admits(&self, word: &str) -> bool {
        match self {
            Word::Keyword(words) => words.contains(&word),
            Word::OneOf(words) => words.iter().any(|w| w == word),
            Word::NewName => is_identifier(word) && !RESERVED.contains(&word),
            Word::Int => number_shape(word).is_some_and(|n| n.is_complete_int()),
            Word::Number => number_shape(word).is_some_and(|n| n.is_complete()),
        }
    }
}

fn is_identifier(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Digit counts of a (possibly partial) number `-?I(.F)?(eX)?`.
struct NumberShape {
    int: usize,
    fraction: Option<usize>,
    exponent: Option<usize>,
}

impl NumberShape {
    fn is_complete_int(&self) -> bool {
        self.int > 0 && self.fraction.is_none() && self.exponent.is_none()
    }

    fn is_complete(&self) -> bool {
        self.int > 0 && self.fraction != Some(0) && self.exponent != Some(0)
    }
}

/// The shape of `text` if it is a prefix of a number the recognizer allows.
fn number_shape(text: &str) -> Option<NumberShape> {
    let body = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match body.split_once('e') {
        Some((m, e)) => (m, Some(e.strip_prefix('-').unwrap_or(e))),
        None => (body, None),
    };
    let (int, fraction) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |s: &str, max: usize| {
        (s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())).then_some(s.len())
    };
    let shape = NumberShape {
        int: digits(int, 9)?,
        fraction: fraction
            .map(|f| digits(f, 6))
            .map_or(Some(None), |d| d.map(Some))?,
        exponent: exponent
            .map(|e| digits(e, 2))
            .map_or(Some(None), |d| d.map(Some))?,
    };
    // A point or an exponent needs digits before it.
    let bare_point = shape.fraction.is_some() && shape.int == 0;
    let bare_exponent = shape.exponent.is_some() && (shape.int == 0 || shape.fraction == Some(0));
    (!bare_point && !bare_exponent).then_some(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> Result<AklState, String> {
        let grammar = AklGrammar;
        let mut state = grammar.start();
        for (at, byte) in text.bytes().enumerate() {
            state = grammar
                .advance(&state, byte)
                .ok_or_else(|| format!("refused byte {at} ({:?}) of {text:?}", byte as char))?;
        }
        Ok(state)
    }

    #[test]
    fn number_shapes() {
        assert!(Word::Number.admits("0.5"));
        assert!(Word::Number.admits("-1e-3"));
        assert!(Word::Number.admits("12"));
        assert!(!Word::Number.admits("1."));
        assert!(!Word::Number.admits("1e"));
        assert!(Word::Number.admits_prefix("1e-"));
        assert!(!Word::Int.admits("1.5"));
        assert!(!Word::Int.admits_prefix("1234567890"));
        assert!(!Word::Number.admits_prefix("1.2.3"));
    }

    #[test]
    fn a_clause_cannot_come_twice_but_params_can() {
        let ok = "(kernel k (param a int 1 (0 4)) (param b int 2 (0 4)) (mask (< kv a)))";
        assert!(AklGrammar.is_complete(&accepts(ok).unwrap()));
        assert!(accepts("(kernel k (mask causal) (mask").is_err());
        assert!(accepts("(kernel k (mask causal) (layers all (mask causal)))").is_ok());
    }

    #[test]
    fn parameters_are_referred_to_after_their_declaration() {
        assert!(accepts("(kernel k (mask (< kv W").is_err());
        assert!(accepts("(kernel k (param W int 8 (pow2 1 64)) (mask (< kv W)))").is_ok());
        assert!(accepts("(kernel k (param q int 1 (0 4))").is_err());
    }

    #[test]
    fn nothing_but_blanks_follows_the_program() {
        let state = accepts("(kernel k)\n").unwrap();
        assert!(AklGrammar.is_complete(&state));
        assert!(AklGrammar.advance(&state, b'(').is_none());
        assert!(AklGrammar.advance(&state, b'x').is_none());
    }
}
