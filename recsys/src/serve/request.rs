//! The body of `POST /v1/recommend`, read field by field so that every error names its field.

use serde_json::{Map, Value};

use super::{ApiError, AppState};

/// The request fields every `POST /v1/recommend` may carry.
const FIELDS: [&str; 5] = ["user_id", "history", "k", "exclude_seen", "explain"];

/// Whom to recommend for and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct RecommendRequest {
    /// Exactly one of `user_id` (a known user's whole history) and `history` (raw item ids,
    /// oldest first).
    pub who: Who,
    pub k: usize,
    /// Leave out items already in the history (default true).
    pub exclude_seen: bool,
    /// Asks for a reason per item: the cached RecGPT explanation, for a known user only.
    pub explain: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Who {
    User(String),
    History(Vec<String>),
}

/// An id given as a JSON string or integer, as a string.
fn raw_id(value: &Value, field: &str) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        other => Err(ApiError::invalid(
            field,
            format!("expected an id (a string or an integer), got {other}"),
        )),
    }
}

fn flag(body: &Map<String, Value>, field: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("expected true or false, got {other}"),
        )),
    }
}

impl RecommendRequest {
    /// Parses a body; errors name the field at fault (`body` when it is not a JSON object).
    pub fn parse(bytes: &[u8]) -> Result<RecommendRequest, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "body",
                format!("malformed JSON: {e}"),
            )
        })?;
        let Value::Object(body) = value else {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "body",
                "the body must be a JSON object",
            ));
        };
        if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                unknown,
                format!(
                    "unknown field {}; the fields are {}",
                    Value::from(unknown.as_str()),
                    FIELDS.join(", ")
                ),
            ));
        }
        let user = body.get("user_id").filter(|v| !v.is_null());
        let history = body.get("history").filter(|v| !v.is_null());
        let who = match (user, history) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "history",
                    "give either user_id or history, not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "user_id",
                    "give user_id (a known user) or history (item ids)",
                ))
            }
            (Some(user), None) => Who::User(raw_id(user, "user_id")?),
            (None, Some(Value::Array(items))) => {
                if items.is_empty() {
                    return Err(ApiError::invalid(
                        "history",
                        "the history is empty; give at least one item id",
                    ));
                }
                Who::History(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| raw_id(v, &format!("history[{i}]")))
                        .collect::<Result<_, _>>()?,
                )
            }
            (None, Some(other)) => {
                return Err(ApiError::invalid(
                    "history",
                    format!("expected an array of item ids, got {other}"),
                ))
            }
        };
        let k = match body.get("k") {
            None | Some(Value::Null) => 10,
            Some(Value::Number(n)) if n.is_u64() => {
                usize::try_from(n.as_u64().unwrap_or(u64::MAX)).unwrap_or(usize::MAX)
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "k",
                    format!("expected a positive whole number, got {other}"),
                ))
            }
        };
        Ok(RecommendRequest {
            who,
            k,
            exclude_seen: flag(&body, "exclude_seen", true)?,
            explain: flag(&body, "explain", false)?,
        })
    }

    /// The history as dense item ids; unknown users and items are errors naming the field.
    pub(super) fn history_ids(&self, state: &AppState) -> Result<Vec<u32>, ApiError> {
        match &self.who {
            Who::User(user) => match state.user_index.get(user) {
                Some(&u) => Ok(state.dataset.histories[u].clone()),
                None => Err(ApiError::unknown(
                    "user_id",
                    format!("no user has id `{user}`"),
                )),
            },
            Who::History(items) => items
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    state.item_index.get(raw).copied().ok_or_else(|| {
                        ApiError::unknown(
                            &format!("history[{i}]"),
                            format!("no item has id `{raw}`"),
                        )
                    })
                })
                .collect(),
        }
    }
}
