//! Lenient reading of the model's replies. Small models wander from the requested shape
//! (markdown, bullet lists, a missing label, a cut-off last tag), so the parsers take what
//! they can and say what was missing; nothing here panics on any reply.

/// The most tags kept from one reply.
pub const MAX_TAGS: usize = 6;
/// A longer tag is dropped (it is a sentence, not a tag).
pub const MAX_TAG_CHARS: usize = 32;
/// A tag of more words is dropped.
pub const MAX_TAG_WORDS: usize = 4;
/// A profile is cut at a word boundary to at most this many characters.
pub const MAX_PROFILE_CHARS: usize = 400;
/// An explanation is cut at a word boundary to at most this many characters.
pub const MAX_SENTENCE_CHARS: usize = 300;

/// Words that are the template's placeholders or filler, never a tag.
const NOT_TAGS: [&str; 8] = ["tag", "tags", "etc", "none", "n/a", "and", "more", "others"];

/// A profile reply as parsed: `problem` says what was missing (then some part is empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedProfile {
    pub profile: String,
    pub tags: Vec<String>,
    pub problem: Option<String>,
}

/// An item-tags reply as parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedTags {
    pub tags: Vec<String>,
    pub problem: Option<String>,
}

/// An explanation reply as parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSentence {
    pub sentence: String,
    pub problem: Option<String>,
}

const NO_TAGS: &str = "no usable tags in the reply";

/// One tag in canonical form: lowercase, single spaces, no bullets, quotes or end
/// punctuation; `None` when nothing usable is left or it is too long to be a tag.
pub fn normalise_tag(raw: &str) -> Option<String> {
    let lower = raw.to_lowercase().replace('_', " ");
    let words: Vec<&str> = lower.split_whitespace().collect();
    let joined = words.join(" ");
    // Bullets, numbering, hashtags, quotes and brackets at either end go; inner hyphens and
    // apostrophes stay ("sci-fi", "children's").
    let unbulleted = joined.trim_start_matches(|c: char| !c.is_alphanumeric());
    let digits = unbulleted.len()
        - unbulleted
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    // "1. comedy" and "2) drama" are numbered; "80s" and "3d" are not.
    let unnumbered = match unbulleted[digits..].chars().next() {
        Some('.' | ')') if digits > 0 => &unbulleted[digits + 1..],
        _ => unbulleted,
    };
    let trimmed = unnumbered
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .trim_end_matches(|c: char| !c.is_alphanumeric());
    let tag = trimmed.to_string();
    let usable = !tag.is_empty()
        && tag.chars().any(char::is_alphabetic)
        // Brackets, parentheses and colons mean an echo of the prompt ("Heat (1995) [Action").
        && !tag.contains(['(', ')', '[', ']', ':'])
        && tag.chars().count() <= MAX_TAG_CHARS
        && tag.split_whitespace().count() <= MAX_TAG_WORDS
        && !NOT_TAGS.contains(&tag.as_str());
    usable.then_some(tag)
}

/// Normalised tags, duplicates dropped (first kept), at most [`MAX_TAGS`].
pub fn normalise_tags<'a>(raw: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for tag in raw.into_iter().filter_map(normalise_tag) {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
        if tags.len() == MAX_TAGS {
            break;
        }
    }
    tags
}

/// If `line` starts with `label` (any case, after markdown such as `**` or `-`) and then `:`,
/// `-` or `=`, the text after it.
fn labelled<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let start = line.trim_start_matches(|c: char| c.is_whitespace() || "*#->".contains(c));
    let head = start.get(..label.len())?;
    if !head.eq_ignore_ascii_case(label) {
        return None;
    }
    let rest = start[label.len()..].trim_start_matches(['*', ' ']);
    let value = rest.strip_prefix([':', '-', '='])?;
    Some(value.trim_start_matches('*').trim())
}

/// The text of a `TAGS:` label: its line, or when that is empty the lines under it up to a
/// blank line or a `PROFILE:` label (a bullet list). `None` when no line carries the label.
fn tags_section(lines: &[&str]) -> Option<(usize, Vec<String>)> {
    let at = lines.iter().position(|l| labelled(l, "tags").is_some())?;
    let value = labelled(lines[at], "tags").unwrap_or_default();
    let mut parts = vec![value.to_string()];
    if value.is_empty() {
        parts.extend(
            lines[at + 1..]
                .iter()
                .take_while(|l| !l.trim().is_empty() && labelled(l, "profile").is_none())
                .map(|l| l.to_string()),
        );
    }
    Some((at, parts))
}

fn split_tags(parts: &[String]) -> Vec<String> {
    normalise_tags(
        parts
            .iter()
            .flat_map(|p| p.split([',', ';', '|', '/', '#', '\n', '•'])),
    )
}

/// Cuts `text` (whitespace already collapsed) to at most `max` characters at a word boundary.
fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    match cut.rfind(' ') {
        Some(space) if space > 0 => cut[..space].to_string(),
        _ => cut,
    }
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Words that open or close a phrase of prose without saying anything about taste.
const CONNECTIVES: [&str; 16] = [
    "a",
    "an",
    "the",
    "of",
    "and",
    "or",
    "with",
    "mix",
    "including",
    "like",
    "especially",
    "particularly",
    "those",
    "enjoys",
    "movies",
    "films",
];

/// Tags from prose: the pieces between commas and "and"/"or", each cut to its last three
/// words and stripped of connectives at either end ("a mix of comedies" → "comedies").
fn prose_tags(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let pieces = lower
        .split([',', ';', '.', '!', '?'])
        .flat_map(|p| p.split(" and "))
        .flat_map(|p| p.split(" or "))
        .map(|piece| {
            let mut words: Vec<&str> = piece.split_whitespace().collect();
            while words.last().is_some_and(|w| CONNECTIVES.contains(w)) {
                words.pop();
            }
            let mut tail = &words[words.len().saturating_sub(3)..];
            while tail.first().is_some_and(|w| CONNECTIVES.contains(w)) {
                tail = &tail[1..];
            }
            tail.join(" ")
        })
        .collect::<Vec<_>>();
    normalise_tags(pieces.iter().map(String::as_str))
}

/// An item's tags: the `TAGS:` line if there is one, else every comma-separated piece of the
/// reply that is short enough to be a tag.
pub fn parse_tags(reply: &str) -> ParsedTags {
    let lines: Vec<&str> = reply.lines().collect();
    let parts = match tags_section(&lines) {
        Some((_, parts)) => parts,
        None => vec![reply.to_string()],
    };
    let tags = split_tags(&parts);
    let problem = tags.is_empty().then(|| NO_TAGS.to_string());
    ParsedTags { tags, problem }
}

/// A user's profile: the `PROFILE:` text (or, without that label, the prose before the tags)
/// and the `TAGS:` line, in either order. Without a `TAGS:` line the tags are the short
/// phrases of the profile's own lists ("comedies, dramas, and sci-fi movies").
pub fn parse_profile(reply: &str) -> ParsedProfile {
    let lines: Vec<&str> = reply.lines().collect();
    let (tags_at, tags) = match tags_section(&lines) {
        Some((at, parts)) => (at, split_tags(&parts)),
        None => (lines.len(), Vec::new()),
    };
    // The labelled profile runs to the tags (or the end, when the tags came first).
    let profile_lines: Vec<&str> = match lines.iter().position(|l| labelled(l, "profile").is_some())
    {
        Some(at) => {
            let end = if tags_at > at { tags_at } else { lines.len() };
            std::iter::once(labelled(lines[at], "profile").unwrap_or_default())
                .chain(lines[at + 1..end].iter().copied())
                .collect()
        }
        None => lines[..tags_at].to_vec(),
    };
    let profile = bounded(&collapse(&profile_lines.join(" ")), MAX_PROFILE_CHARS);
    let tags = if tags.is_empty() {
        prose_tags(&profile)
    } else {
        tags
    };
    let mut missing = Vec::new();
    if profile.is_empty() {
        missing.push("no profile text in the reply");
    }
    if tags.is_empty() {
        missing.push(NO_TAGS);
    }
    ParsedProfile {
        profile,
        tags,
        problem: (!missing.is_empty()).then(|| missing.join("; ")),
    }
}

/// The first sentence of the reply, a leading label (`Explanation:`) and quotes removed; at
/// least three words.
pub fn parse_explanation(reply: &str) -> ParsedSentence {
    let text = collapse(reply);
    let text = ["explanation", "answer", "reason", "sentence"]
        .iter()
        .find_map(|label| labelled(&text, label))
        .unwrap_or(&text);
    let text = text.trim_matches(['"', '\'', '“', '”', '*']);
    // The first sentence ends at `.`, `!` or `?` followed by a space (or the end).
    let end = text
        .char_indices()
        .find(|&(i, c)| ".!?".contains(c) && text[i + c.len_utf8()..].starts_with(' '))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(text.len());
    let sentence = bounded(text[..end].trim(), MAX_SENTENCE_CHARS);
    if sentence.split_whitespace().count() < 3 {
        return ParsedSentence {
            sentence: String::new(),
            problem: Some("no sentence of three or more words in the reply".into()),
        };
    }
    ParsedSentence {
        sentence,
        problem: None,
    }
}

/// What an explanation sentence names: the recommended movie, and one of the watched movies
/// its prompt showed. A sentence that names neither says little about the film.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grounding {
    pub names_item: bool,
    pub names_liked: bool,
}

/// Which of `item_title` and `liked_titles` (catalogue titles) `sentence` names. A title
/// counts as named when its words, without a leading article and without a bracketed or
/// subtitle part, appear in order in the sentence, case and punctuation aside.
pub fn grounding(sentence: &str, item_title: &str, liked_titles: &[&str]) -> Grounding {
    let said = words(sentence);
    let names = |title: &str| {
        let core = words(&title_core(title));
        !core.is_empty() && said.windows(core.len()).any(|w| w == core.as_slice())
    };
    Grounding {
        names_item: names(item_title),
        names_liked: liked_titles.iter().any(|t| names(t)),
    }
}

/// `Usual Suspects, The (a.k.a. X)` → `Usual Suspects`; `Star Wars: Episode IV` → `Star Wars`.
fn title_core(title: &str) -> String {
    let display = super::prompt::display_title(title);
    let mut core = display.as_str();
    for cut in [" (", ": "] {
        core = core.split(cut).next().unwrap_or(core);
    }
    let lower = core.to_lowercase();
    for article in ["the ", "a ", "an "] {
        if let Some(rest) = lower.strip_prefix(article) {
            return rest.to_string();
        }
    }
    lower
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}
