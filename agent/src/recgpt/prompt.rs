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

/// `Title (1995) [Animation, Comedy]`, leaving out what the catalogue does not know.
pub fn describe_item(item: &ItemMeta) -> String {
    let mut text = item.title.trim().to_string();
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

/// One sentence on why a user with `profile` and `tags` may enjoy `item`.
pub fn explanation_request(profile: &str, tags: &[String], item: &ItemMeta) -> Request {
    let mut user = format!("The viewer: {}", profile.trim());
    if !tags.is_empty() {
        user += &format!(" (tags: {})", tags.join(", "));
    }
    user += &format!(
        "\nRecommended movie: {}\nWhy may this viewer enjoy it?",
        describe_item(item)
    );
    request(EXPLANATION_SYSTEM, user, EXPLANATION_MAX_TOKENS)
}
