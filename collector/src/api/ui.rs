//! Serves the embedded web dashboard (`/`, and its assets under `/ui/`).

use std::sync::Arc;

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::pipeline::Pipeline;

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/", get(index)).route("/ui/{*file}", get(asset))
}

fn serve(name: &str) -> Response {
    match meshlens_ui::asset(name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CONTENT_SECURITY_POLICY, meshlens_ui::CONTENT_SECURITY_POLICY),
            ],
            asset.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}
