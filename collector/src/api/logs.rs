//! `GET /api/v1/logs`: recent log records (access logs and application logs), filtered by
//! `service` and `trace_id`, newest first, at most `limit` (default 100, at most 1000).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde::{Deserialize, Serialize};

use crate::{model::TraceId, pipeline::Pipeline};

use super::error::{ApiError, poisoned};

/// Query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Producing service.
    pub service: Option<String>,
    /// Related trace, hex.
    pub trace_id: Option<String>,
    /// Most records.
    pub limit: Option<usize>,
}

/// One record, as JSON.
#[derive(Debug, Serialize)]
pub struct LogView {
    /// Unix nanoseconds.
    pub time_unix_nanos: u64,
    /// Service.
    pub service: String,
    /// Severity text.
    pub severity: String,
    /// Body.
    pub body: String,
    /// Trace ID, hex.
    pub trace_id: Option<String>,
    /// Span ID, hex.
    pub span_id: Option<String>,
    /// Attributes, as text.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/api/v1/logs", get(logs))
}

async fn logs(State(pipeline): State<Arc<Pipeline>>, Query(p): Query<LogParams>) -> Result<Json<Vec<LogView>>, ApiError> {
    let trace = match p.trace_id.as_deref() {
        Some(t) => Some(TraceId::parse_hex(t).ok_or_else(|| ApiError::BadRequest(format!("invalid trace_id {t:?}")))?),
        None => None,
    };
    let limit = p.limit.unwrap_or(100).min(1000);
    let signals = pipeline.signals.read().map_err(poisoned)?;
    let records = signals.logs(p.service.as_deref(), trace, limit);
    Ok(Json(
        records
            .iter()
            .map(|l| LogView {
                time_unix_nanos: l.time_unix_nanos,
                service: l.resource.service.to_string(),
                severity: l.severity_text.clone(),
                body: l.body.clone(),
                trace_id: l.trace_id.map(|t| t.to_string()),
                span_id: l.span_id.map(|s| s.to_string()),
                attributes: l.attributes.iter().map(|(k, v)| (k.to_string(), v.to_text().into())).collect(),
            })
            .collect(),
    ))
}
