//! `GET /metrics`: the collector's Prometheus exposition.
//!
//! OpenMetrics for scrapers that ask for it (Prometheus), the classic text format for the
//! rest ([`meshlens_common::exposition`]). Exemplars (OpenMetrics only) link each latency
//! bucket to a trace that landed in it.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::pipeline::Pipeline;

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(pipeline): State<Arc<Pipeline>>, headers: HeaderMap) -> Response {
    pipeline.refresh_gauges();
    let registry = pipeline.metrics.registry();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match meshlens_common::exposition::encode(&registry, accept) {
        Ok((content_type, text)) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response()
        }
    }
}
