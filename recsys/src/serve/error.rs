//! The one error shape of the API: a status and `{"error": {"field", "message"}}`, whether a
//! handler refuses a request or the connection layer answers for hyper.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// A request the server refuses, naming the field to fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The request field at fault (`body` for the body as a whole, `id` for a path part).
    pub field: String,
    pub message: String,
    /// Seconds a client should wait before trying again (`Retry-After`), for a busy server.
    pub retry_after: Option<u32>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The request part at fault: a body field (`k`, `history[2]`), `body`, `id`, `path`,
    /// `method`, `headers`, `request`, or empty when the server itself failed.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: field.to_string(),
            message: message.into(),
            retry_after: None,
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

    /// 503 with `Retry-After: 1`: the server is answering as many requests as it may.
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", message)
        }
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                field: self.field.clone(),
                message: self.message.clone(),
            },
        }
    }

    /// The whole HTTP/1.1 answer as bytes, for the connection layer to write on a socket
    /// that hyper no longer drives; it closes the connection.
    pub(super) fn http1_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(seconds) = self.retry_after {
            head += &format!("retry-after: {seconds}\r\n");
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
