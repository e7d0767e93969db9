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
/// A JSON number that is a whole number, as JSON Schema's `integer` counts them: `7`, `-7`
/// and `7.0` alike.
fn whole(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.into());
    }
    let x = n.as_f64()?;
    // serde_json reads some decimals one unit in the last place off (-2047385396778105.0 as
    // -2047385396778104.75): within that of a whole number counts as the whole number.
    let rounded = x.round();
    let whole = (x - rounded).abs() <= x.abs() * f64::EPSILON;
    // Within ±2^63 every f64 with no fraction is an exact i64.
    (whole && rounded.abs() < 9.2e18).then_some(rounded as i64 as i128)
}

fn raw_id(value: &Value, field: &str) -> Result<String, ApiError> {
    let id = match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => whole(n).map(|i| i.to_string()),
        _ => None,
    };
    id.ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("expected an id (a string or an integer), got {value}"),
        )
    })
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
                format!(
                    "unknown field {}; the fields are {}",
                    Value::from(unknown.as_str()),
                    FIELDS.join(", ")
                ),
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
            Some(value) => match value.as_number().and_then(whole).map(usize::try_from) {
                Some(Ok(k)) => k,
                _ => {
                    return Err(ApiError::invalid(
                        "k",
                        format!("expected a positive whole number, got {value}"),
                    ))
                }
            },
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

    #[test]
    fn whole_numbers_written_with_a_fraction_are_integers_as_json_schema_counts_them() {
        // Schemathesis sent `{"history": [-72632412.0]}`, a valid integer to JSON Schema.
        let parsed =
            RecommendRequest::parse(br#"{"history": [-72632412.0, 5], "k": 3.0}"#).unwrap();
        assert_eq!(
            parsed.who,
            Who::History(vec!["-72632412".into(), "5".into()])
        );
        assert_eq!(parsed.k, 3);
        // And `[-2047385396778105.0]`, which serde_json reads a quarter off.
        let parsed = RecommendRequest::parse(br#"{"history": [-2047385396778105.0]}"#).unwrap();
        assert_eq!(parsed.who, Who::History(vec!["-2047385396778105".into()]));
        assert_eq!(
            RecommendRequest::parse(br#"{"user_id": 18446744073709551615}"#)
                .unwrap()
                .who,
            Who::User("18446744073709551615".into())
        );
        for bad in [
            r#"{"history": [1.5]}"#,
            r#"{"user_id": 1e300}"#,
            r#"{"user_id": "a", "k": 2.5}"#,
        ] {
            assert!(RecommendRequest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
