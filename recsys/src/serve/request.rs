//! The body of `POST /v1/recommend`: [`RecommendBody`] is its wire form, the type the
//! OpenAPI document is generated from; [`RecommendRequest::parse`] reads a body field by
//! field so that every error names its field, and takes the names of the fields it accepts
//! from `RecommendBody`'s schema, so that the parser and the document cannot drift apart.

use std::sync::LazyLock;

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::PartialSchema;

use super::{ApiError, AppState};

/// What a client sends to `POST /v1/recommend`: exactly one of `user_id` and `history`
/// (which the document adds, `openapi.rs`); a field is given or left out, never `null`.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendBody {
    /// A user of the training data; their whole history is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user_id: Option<RawId>,
    /// Item ids, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, min_items = 1)]
    pub history: Option<Vec<RawId>>,
    /// How many items to recommend.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1, maximum = 100, default = 10)]
    pub k: Option<u64>,
    /// Leave out items already in the history.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, default = true)]
    pub exclude_seen: Option<bool>,
    /// Add each item's cached RecGPT explanation as `reason` (for a `user_id` whose
    /// explanations `evokernel recsys enrich` wrote). When some items get none, the answer
    /// says why in `explanations_unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, default = false)]
    pub explain: Option<bool>,
}

/// A user or item id as the training data spelled it, sent as a string or an integer.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RawId {
    Text(String),
    Number(i64),
}

/// The fields of [`RecommendBody`], read from its schema.
static FIELDS: LazyLock<Vec<String>> = LazyLock::new(|| match RecommendBody::schema() {
    RefOr::T(Schema::Object(object)) => object.properties.keys().cloned().collect(),
    _ => Vec::new(),
});

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
        None => Ok(default),
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
        if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(k)) {
            return Err(ApiError::invalid(
                unknown,
                format!("unknown field; the fields are {}", FIELDS.join(", ")),
            ));
        }
        if let Some((field, _)) = body.iter().find(|(_, value)| value.is_null()) {
            return Err(ApiError::invalid(
                field,
                "null is not a value here; leave the field out for its default",
            ));
        }
        let user = body.get("user_id");
        let history = body.get("history");
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
            None => 10,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_reads_every_field_of_the_documented_body() {
        let body = RecommendBody {
            user_id: None,
            history: Some(vec![RawId::Text("a".into()), RawId::Number(7)]),
            k: Some(3),
            exclude_seen: Some(false),
            explain: Some(true),
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        let parsed = RecommendRequest::parse(&bytes).unwrap();
        assert_eq!(
            parsed,
            RecommendRequest {
                who: Who::History(vec!["a".into(), "7".into()]),
                k: 3,
                exclude_seen: false,
                explain: true,
            }
        );
        let by_user = RecommendBody {
            user_id: Some(RawId::Number(5)),
            ..Default::default()
        };
        let parsed = RecommendRequest::parse(&serde_json::to_vec(&by_user).unwrap()).unwrap();
        assert_eq!(parsed.who, Who::User("5".into()));
        assert_eq!(FIELDS.len(), 5, "{:?}", *FIELDS);
    }
}
