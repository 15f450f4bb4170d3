//! `POST /api/v1/sql`: runs one read-only SQL query over the collector's tables.
//!
//! The body is either JSON `{"query": "...", "format": "json"|"csv"}` or the query as
//! plain text (`?format=csv` then picks CSV). Answers: 200 with the rows; 400 when the
//! query is not allowed or not valid; 408 when it ran past its time limit; 413 when it
//! needed more memory than its limit; 429 (with `Retry-After`) when too many queries
//! run and wait. `GET /api/v1/sql/tables` lists the tables and their documented columns.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use crate::{
    metrics::OutcomeLabels,
    pipeline::Pipeline,
    sql::{SqlError, format},
    tables::schema,
};

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/api/v1/sql", post(run)).route("/api/v1/sql/tables", get(tables))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    query: String,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    format: Option<String>,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

fn outcome(e: &SqlError) -> &'static str {
    match e {
        SqlError::Rejected(_) => "rejected",
        SqlError::Timeout(_) => "timeout",
        SqlError::Memory(_) => "memory",
        SqlError::Busy => "busy",
        SqlError::Internal(_) => "error",
    }
}

async fn run(State(pipeline): State<Arc<Pipeline>>, Query(params): Query<Params>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let (query, format) = if is_json {
        match serde_json::from_slice::<JsonBody>(&body) {
            Ok(b) => (b.query, b.format.or(params.format)),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(q) => (q, params.format),
            Err(_) => return error(StatusCode::BAD_REQUEST, "the query is not UTF-8"),
        }
    };
    let csv = match format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return error(StatusCode::BAD_REQUEST, format!("unknown format {other:?}: use json or csv")),
    };
    if query.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "the query is empty");
    }
    let result = pipeline.sql.run(pipeline.clone(), query).await;
    let count = |outcome| pipeline.metrics.sql_queries.get_or_create(&OutcomeLabels { outcome }).inc();
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            count(outcome(&e));
            let status = match &e {
                SqlError::Rejected(_) => StatusCode::BAD_REQUEST,
                SqlError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                SqlError::Memory(_) => StatusCode::PAYLOAD_TOO_LARGE,
                SqlError::Busy => {
                    let mut r = error(StatusCode::TOO_MANY_REQUESTS, &e);
                    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                    return r;
                }
                SqlError::Internal(detail) => {
                    tracing::error!(%detail, "SQL query failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            return error(status, &e);
        }
    };
    count("ok");
    if csv {
        match format::to_csv(&result) {
            Ok(text) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    } else {
        match format::to_json(&result) {
            Ok(doc) => Json(doc).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

async fn tables(State(pipeline): State<Arc<Pipeline>>) -> Json<serde_json::Value> {
    let limits = pipeline.sql.limits();
    let tables: Vec<serde_json::Value> = schema::TABLES
        .iter()
        .map(|(name, about, columns)| {
            let columns: Vec<serde_json::Value> = columns
                .iter()
                .map(|c| serde_json::json!({ "name": c.name, "type": c.ty.sql_name(), "nullable": c.nullable, "doc": c.doc }))
                .collect();
            serde_json::json!({ "name": name, "about": about, "columns": columns })
        })
        .collect();
    Json(serde_json::json!({
        "tables": tables,
        "limits": {
            "timeout_ms": limits.timeout.as_millis() as u64,
            "memory_bytes": limits.memory_bytes,
            "max_rows": limits.max_rows,
        },
    }))
}
