//! `GET /api/v1/logs`: recent log records (access logs and application logs), filtered by
//! `service` and `trace_id`, newest first, at most `limit` (default 100, at most 1000), read
//! from the `logs` table (so they follow its retention and survive restarts with it).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde::Deserialize;

use crate::{model::TraceId, pipeline::Pipeline, tables::logs::{StoredLog, newest}};

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

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/api/v1/logs", get(logs))
}

async fn logs(State(pipeline): State<Arc<Pipeline>>, Query(p): Query<LogParams>) -> Result<Json<Vec<StoredLog>>, ApiError> {
    let trace = match p.trace_id.as_deref() {
        Some(t) => Some(TraceId::parse_hex(t).ok_or_else(|| ApiError::BadRequest(format!("invalid trace_id {t:?}")))?),
        None => None,
    };
    let limit = p.limit.unwrap_or(100).min(1000);
    let parts = pipeline.tables.read().map_err(poisoned)?.logs.snapshot();
    let records = newest(&parts, p.service.as_deref(), trace.map(|t| t.to_string()).as_deref(), limit)
        .map_err(|e| ApiError::Internal(format!("reading the logs table: {e}")))?;
    Ok(Json(records))
}
