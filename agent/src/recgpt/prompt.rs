//! The three questions RecGPT asks the model. Small instruct models follow a fixed answer
//! shape best, so each prompt names the exact lines to write; `parse` still reads leniently.

use recsys::data::ItemMeta;

use super::SEED;
use crate::llm::Request;

/// Tokens a profile reply may use: a sentence (and a tag line, for models that add one).
pub const PROFILE_MAX_TOKENS: usize = 80;
/// Tokens an item-tags reply may use: one line, or a short numbered list.
pub const TAGS_MAX_TOKENS: usize = 48;
/// Tokens an explanation may use: one sentence.
pub const EXPLANATION_MAX_TOKENS: usize = 60;

// Worded for SmolLM2-135M, which answers these plain questions well but echoes its input
// when asked for a labelled format; `parse` reads labelled and unlabelled answers alike.
const PROFILE_SYSTEM: &str = "You describe a movie viewer's taste.";

const TAGS_SYSTEM: &str = "You tag movies.";

const EXPLANATION_SYSTEM: &str = "You explain movie recommendations. Answer with one sentence \
of at most 30 words that tells the viewer why they may enjoy the movie.";

/// Watched movies an explanation prompt shows beside the recommended one.
pub const MAX_LIKED: usize = 2;

/// A catalogue title as people write it: MovieLens files an article last
/// (`Usual Suspects, The`), which a model copies into its sentence.
pub fn display_title(title: &str) -> String {
    let title = title.trim();
    for article in [
        "The", "A", "An", "La", "Le", "Les", "L'", "Il", "El", "Das", "Der", "Die",
    ] {
        if let Some(rest) = title
            .strip_suffix(article)
            .and_then(|t| t.strip_suffix(", "))
        {
            let gap = if article.ends_with('\'') { "" } else { " " };
            return format!("{article}{gap}{rest}");
        }
    }
    title.to_string()
}

/// `Title (1995) [Animation, Comedy]`, leaving out what the catalogue does not know.
pub fn describe_item(item: &ItemMeta) -> String {
    let mut text = display_title(&item.title);
    if text.is_empty() {
        text = "Untitled".into();
    }
    if let Some(year) = item.year {
        text += &format!(" ({year})");
    }
    if !item.genres.is_empty() {
        text += &format!(" [{}]", item.genres.join(", "));
    }
    text
}

fn request(system: &str, user: String, max_tokens: usize) -> Request {
    Request {
        system: system.to_string(),
        user,
        max_tokens,
        temperature: 0.0,
        seed: SEED,
    }
}

/// A user's interest profile and tags from the items of their history, oldest first.
pub fn profile_request(history: &[&ItemMeta]) -> Request {
    let mut user = String::from("A viewer watched these movies, oldest first:\n");
    for item in history {
        user += &format!("- {}\n", describe_item(item));
    }
    user += "In one sentence, what kind of movies does this viewer enjoy?";
    request(PROFILE_SYSTEM, user, PROFILE_MAX_TOKENS)
}

/// An item's tags from its title, year and genres.
pub fn item_tags_request(item: &ItemMeta) -> Request {
    let mut movie = item.title.trim().to_string();
    if let Some(year) = item.year {
        movie += &format!(" ({year})");
    }
    if !item.genres.is_empty() {
        movie += &format!(", a {} movie", item.genres.join(", "));
    }
    request(
        TAGS_SYSTEM,
        format!(
            "List 5 keywords that describe the movie {movie}. Write them on one line, \
             separated by commas."
        ),
        TAGS_MAX_TOKENS,
    )
}

/// The watched movies an explanation of `item` points to: the [`MAX_LIKED`] of `history`
/// (oldest first) sharing the most genres and tags with it, the more recent first on a tie;
/// none that shares nothing.
pub fn liked_like<'a>(
    history: &[(&'a ItemMeta, &[String])],
    item: &ItemMeta,
    item_tags: &[String],
) -> Vec<&'a ItemMeta> {
    let shared = |(meta, tags): &(&ItemMeta, &[String])| {
        meta.genres
            .iter()
            .filter(|g| item.genres.contains(g))
            .count()
            + tags.iter().filter(|t| item_tags.contains(t)).count()
    };
    let mut ranked: Vec<(usize, usize)> = history
        .iter()
        .enumerate()
        .filter(|(_, watched)| watched.0 != item)
        .map(|(at, watched)| (shared(watched), at))
        .filter(|&(n, _)| n > 0)
        .collect();
    ranked.sort_by(|a, b| b.cmp(a));
    ranked
        .iter()
        .take(MAX_LIKED)
        .map(|&(_, at)| history[at].0)
        .collect()
}

/// One sentence on why a viewer with profile `tastes` (their tags), who liked `liked`, may
/// enjoy `item`. The viewer's profile sentence is left out: SmolLM2-135M restated it instead
/// of speaking of the film; naming the film and a similar watched one grounds the answer.
pub fn explanation_request(
    tastes: &[String],
    liked: &[&ItemMeta],
    item: &ItemMeta,
    item_tags: &[String],
) -> Request {
    let mut user = String::new();
    if !tastes.is_empty() {
        user += &format!("The viewer's tastes: {}.\n", tastes.join(", "));
    }
    if !liked.is_empty() {
        let liked: Vec<String> = liked.iter().map(|m| describe_item(m)).collect();
        user += &format!("Movies this viewer liked: {}.\n", liked.join("; "));
    }
    user += &format!("Recommended movie: {}", describe_item(item));
    if !item_tags.is_empty() {
        user += &format!(". Keywords: {}", item_tags.join(", "));
    }
    let title = display_title(&item.title);
    user += &if liked.is_empty() {
        format!(".\nIn one sentence, tell the viewer why they may enjoy {title}.")
    } else {
        format!(
            ".\nIn one sentence, tell the viewer why they may enjoy {title}, comparing it \
             with a movie they liked."
        )
    };
    request(EXPLANATION_SYSTEM, user, EXPLANATION_MAX_TOKENS)
}
