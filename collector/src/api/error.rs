//! The error of the meshlens JSON APIs: bad input is told plainly (400), internal
//! failures are logged and answered with a short message (500).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// Something failed inside the collector.
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Internal(detail) => {
                tracing::error!(%detail, "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

/// A poisoned lock: a thread panicked while updating the store.
pub fn poisoned<T>(_: T) -> ApiError {
    ApiError::Internal("store lock poisoned".into())
}
