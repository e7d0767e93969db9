//! Chat templates: turning a conversation into the prompt text an instruct model was
//! trained on.
//!
//! GGUF files carry the template as Jinja source (`tokenizer.chat_template`). Rather than
//! run Jinja, we recognise the two families our models use and render them in Rust:
//! ChatML (SmolLM2, Qwen2.5) and Gemma's turns. The rendered text holds special tokens
//! written out, so encode it with special tokens parsed
//! ([`Tokenizer::encode_with_bos`](super::Tokenizer::encode_with_bos)); it never starts
//! with the BOS token, which `encode_with_bos` adds when the model wants it.

use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use super::metadata::{self, Metadata};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role's name in ChatML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message. When the conversation
    /// does not open with a system message, the template's default one goes first.
    ChatMl { default_system: Option<String> },
    /// `<start_of_turn>user\n{content}<end_of_turn>\n`, the assistant's turns as `model`;
    /// a system message is prepended to the first user turn. Turn contents are trimmed
    /// (the system message is not) and turns must alternate user, assistant, user...
    Gemma,
}

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";
const START_OF_TURN: &str = "<start_of_turn>";

impl ChatTemplate {
    /// Picks the template from `tokenizer.chat_template`, or from `general.architecture`
    /// for Gemma files that carry no template. `path` is only for error messages.
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let meta = Metadata::new(content, path);
        let architecture = meta.optional_string(metadata::ARCHITECTURE)?.unwrap_or("");
        match meta.optional_string(metadata::CHAT_TEMPLATE)? {
            Some(source) if source.contains(START_OF_TURN) => Ok(Self::Gemma),
            Some(source) if source.contains(IM_START) => Ok(Self::ChatMl {
                default_system: default_system_prompt(source),
            }),
            Some(_) => Err(meta.bad(
                metadata::CHAT_TEMPLATE,
                "unrecognised chat template (supported: ChatML with <|im_start|>, Gemma with <start_of_turn>)",
            )),
            None if architecture.starts_with("gemma") => Ok(Self::Gemma),
            None => Err(meta.missing(metadata::CHAT_TEMPLATE)),
        }
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, it ends by opening
    /// the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match self {
            Self::ChatMl { default_system } => Ok(render_chatml(
                messages,
                default_system.as_deref(),
                add_generation_prompt,
            )),
            Self::Gemma => render_gemma(messages, add_generation_prompt),
        }
    }
}

/// The system prompt a ChatML template writes when the conversation has none: the
/// literal text of its `'<|im_start|>system\n…<|im_end|>` string.
fn default_system_prompt(source: &str) -> Option<String> {
    let marker = format!("{IM_START}system");
    source.match_indices(&marker).find_map(|(at, _)| {
        let rest = &source[at + marker.len()..];
        // The newline is either real or the two characters `\n` of a Jinja string.
        let rest = rest
            .strip_prefix('\n')
            .or_else(|| rest.strip_prefix("\\n"))?;
        let prompt = &rest[..rest.find(IM_END)?];
        let literal = !prompt.is_empty() && !prompt.contains(['\'', '"', '{', '}', '\\', '\n']);
        literal.then(|| prompt.to_string())
    })
}

fn render_chatml(
    messages: &[ChatMessage],
    default_system: Option<&str>,
    add_generation_prompt: bool,
) -> String {
    let mut out = String::new();
    let mut turn = |role: &str, content: &str| {
        out.push_str(IM_START);
        out.push_str(role);
        out.push('\n');
        out.push_str(content);
        out.push_str(IM_END);
        out.push('\n');
    };
    if let Some(system) = default_system {
        if messages.first().map(|m| m.role) != Some(Role::System) {
            turn(Role::System.as_str(), system);
        }
    }
    for message in messages {
        turn(message.role.as_str(), &message.content);
    }
    if add_generation_prompt {
        out.push_str(IM_START);
        out.push_str(Role::Assistant.as_str());
        out.push('\n');
    }
    out
}

fn render_gemma(messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
    let (system, turns) = match messages.split_first() {
        Some((first, rest)) if first.role == Role::System => (Some(first.content.as_str()), rest),
        _ => (None, messages),
    };
    let mut out = String::new();
    for (i, message) in turns.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if message.role != expected {
            return Err(Error::InvalidRequest(format!(
                "Gemma chats must alternate user and assistant turns after an optional first system message; message {} is {:?}",
                i + usize::from(system.is_some()),
                message.role
            )));
        }
        let role = match message.role {
            Role::Assistant => "model",
            _ => "user",
        };
        out.push_str(START_OF_TURN);
        out.push_str(role);
        out.push('\n');
        if let (0, Some(system)) = (i, system) {
            out.push_str(system);
            out.push_str("\n\n");
        }
        out.push_str(message.content.trim());
        out.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        out.push_str(START_OF_TURN);
        out.push_str("model\n");
    }
    Ok(out)
}
