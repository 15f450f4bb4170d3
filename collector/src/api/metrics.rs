//! `GET /metrics`: the collector's Prometheus exposition (OpenMetrics text).

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::pipeline::Pipeline;

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(pipeline): State<Arc<Pipeline>>) -> Response {
    pipeline.refresh_gauges();
    let registry = pipeline.metrics.registry();
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            out,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response()
        }
    }
}
