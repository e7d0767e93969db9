//! The one error shape of the API: a status and `{"error": {"field", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A request the server refuses, naming the field to fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The request field at fault (`body` for the body as a whole, `id` for a path part).
    pub field: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// 422: the field is well-formed JSON but not an acceptable value.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, field, message)
    }

    /// 404: the field names something the model does not know.
    pub fn unknown(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, field, message)
    }

    /// 500: the model failed; the message says how.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "field": self.field, "message": self.message }
        });
        (self.status, Json(body)).into_response()
    }
}
