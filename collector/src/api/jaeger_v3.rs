//! Jaeger's API v3 over HTTP: `/api/v3/services`, `/api/v3/operations`, `/api/v3/traces`
//! (search) and `/api/v3/traces/{trace_id}`, answering spans as OTLP JSON (`TracesData`).
//!
//! Search takes `query.service_name`, `query.operation_name`, `query.start_time_min` and
//! `query.start_time_max` (RFC 3339, both required), `query.num_traces`, and
//! `query.duration_min`/`query.duration_max` (Go durations). Errors are
//! `{"error": {"httpCode": …, "message": …}}`, as Jaeger's gateway writes them.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource as OtlpResource,
    trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, TracesData, span, status},
};
use serde_json::json;

use crate::{
    model::{Attributes, Resource, Span, SpanKind, StatusCode as SpanStatus, TraceId, Value},
    pipeline::Pipeline,
    tables::TraceQuery,
};

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(get_trace))
}

/// An error as Jaeger's gateway writes it.
struct V3Error(StatusCode, String);

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": { "httpCode": self.0.as_u16(), "message": self.1 } }))).into_response()
    }
}

fn bad(message: String) -> V3Error {
    V3Error(StatusCode::BAD_REQUEST, message)
}

fn internal<T>(_: T) -> V3Error {
    tracing::error!("store lock poisoned while answering a Jaeger v3 query");
    V3Error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

fn any(value: &Value) -> AnyValue {
    use any_value::Value as V;
    let v = match value {
        Value::Str(s) | Value::Bytes(s) | Value::Json(s) => V::StringValue(s.to_string()),
        Value::Bool(b) => V::BoolValue(*b),
        Value::Int(i) => V::IntValue(*i),
        Value::Double(d) => V::DoubleValue(*d),
    };
    AnyValue { value: Some(v) }
}

fn key_values(attributes: &Attributes) -> Vec<KeyValue> {
    attributes.iter().map(|(k, v)| KeyValue { key: k.to_string(), value: Some(any(v)), ..Default::default() }).collect()
}

fn otlp_span(s: &Span) -> OtlpSpan {
    let kind = match s.kind {
        SpanKind::Unspecified => span::SpanKind::Unspecified,
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    };
    let code = match s.status {
        SpanStatus::Unset => status::StatusCode::Unset,
        SpanStatus::Ok => status::StatusCode::Ok,
        SpanStatus::Error => status::StatusCode::Error,
    };
    OtlpSpan {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        trace_state: s.trace_state.clone(),
        flags: s.flags,
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: key_values(&s.attributes),
        events: s
            .events
            .iter()
            .map(|e| span::Event { time_unix_nano: e.time_unix_nanos, name: e.name.clone(), attributes: key_values(&e.attributes), ..Default::default() })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| span::Link {
                trace_id: l.trace_id.0.to_vec(),
                span_id: l.span_id.0.to_vec(),
                trace_state: l.trace_state.clone(),
                flags: l.flags,
                attributes: key_values(&l.attributes),
                ..Default::default()
            })
            .collect(),
        status: Some(Status { code: code as i32, message: s.status_message.clone() }),
        ..Default::default()
    }
}

/// The spans of one instrumentation scope.
type ScopeGroup = (Arc<str>, Vec<OtlpSpan>);

/// Spans as OTLP `TracesData`: one `ResourceSpans` per resource, one `ScopeSpans` per scope.
pub fn traces_data<'a>(spans: impl IntoIterator<Item = &'a Arc<Span>>) -> TracesData {
    let mut groups: Vec<(Arc<Resource>, Vec<ScopeGroup>)> = Vec::new();
    for s in spans {
        let index = match groups.iter().position(|(r, _)| Arc::ptr_eq(r, &s.resource) || **r == *s.resource) {
            Some(i) => i,
            None => {
                groups.push((s.resource.clone(), Vec::new()));
                groups.len() - 1
            }
        };
        let scopes = &mut groups[index].1;
        match scopes.iter_mut().find(|(scope, _)| *scope == s.scope) {
            Some((_, list)) => list.push(otlp_span(s)),
            None => scopes.push((s.scope.clone(), vec![otlp_span(s)])),
        }
    }
    TracesData {
        resource_spans: groups
            .into_iter()
            .map(|(resource, scopes)| ResourceSpans {
                resource: Some(OtlpResource { attributes: key_values(&resource.attributes), ..Default::default() }),
                scope_spans: scopes
                    .into_iter()
                    .map(|(scope, spans)| ScopeSpans {
                        scope: Some(InstrumentationScope { name: scope.to_string(), ..Default::default() }),
                        spans,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

fn params(raw: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
}

async fn services(State(p): State<Arc<Pipeline>>) -> Result<Response, V3Error> {
    let services: Vec<String> = p.tables.read().map_err(internal)?.spans.services().iter().map(|s| s.to_string()).collect();
    Ok(Json(json!({ "services": services })).into_response())
}

async fn operations(State(p): State<Arc<Pipeline>>, RawQuery(raw): RawQuery) -> Result<Response, V3Error> {
    let params = params(raw);
    let service = param(&params, "service").ok_or_else(|| bad("parameter service is required".into()))?;
    let kind = param(&params, "span_kind");
    let operations: Vec<serde_json::Value> = p
        .tables
        .read()
        .map_err(internal)?
        .spans
        .operations(service)
        .into_iter()
        .filter(|(_, k)| kind.is_none_or(|want| k.as_str() == want))
        .map(|(name, k)| json!({ "name": name, "spanKind": k.as_str() }))
        .collect();
    Ok(Json(json!({ "operations": operations })).into_response())
}

async fn get_trace(State(p): State<Arc<Pipeline>>, Path(trace_id): Path<String>) -> Result<Response, V3Error> {
    let id = TraceId::parse_hex(&trace_id).ok_or_else(|| bad(format!("malformed parameter trace_id: {trace_id:?}")))?;
    let view = p.tables.read().map_err(internal)?.spans.traces(&[id]);
    let spans = view.get(&id).ok_or_else(|| V3Error(StatusCode::NOT_FOUND, "trace not found".into()))?;
    Ok(Json(traces_data(&spans)).into_response())
}

async fn find_traces(State(p): State<Arc<Pipeline>>, RawQuery(raw): RawQuery) -> Result<Response, V3Error> {
    let params = params(raw);
    let time = |key: &str| -> Result<u64, V3Error> {
        let text = param(&params, key).ok_or_else(|| bad("query.start_time_min and query.start_time_max are required".into()))?;
        meshlens_common::time::parse_rfc3339(text).ok_or_else(|| bad(format!("malformed parameter {key}: {text:?} is not an RFC 3339 time")))
    };
    let duration = |key: &str| -> Result<Option<u64>, V3Error> {
        param(&params, key)
            .map(|d| meshlens_common::duration::parse_duration(d).map(|d| d.as_nanos() as u64).map_err(|e| bad(format!("malformed parameter {key}: {e}"))))
            .transpose()
    };
    let query = TraceQuery {
        service: param(&params, "query.service_name").map(str::to_owned),
        operation: param(&params, "query.operation_name").map(str::to_owned),
        start_min: Some(time("query.start_time_min")?),
        start_max: Some(time("query.start_time_max")?),
        duration_min: duration("query.duration_min")?,
        duration_max: duration("query.duration_max")?,
        limit: match param(&params, "query.num_traces") {
            Some(n) => n.parse::<usize>().map_err(|e| bad(format!("malformed parameter query.num_traces: {e}")))?,
            None => super::jaeger::DEFAULT_LIMIT,
        },
        ..TraceQuery::default()
    };
    let view = p.tables.read().map_err(internal)?.spans.view();
    let ids = view.search(&query);
    let view = p.tables.read().map_err(internal)?.spans.traces(&ids);
    let traces: Vec<Vec<Arc<crate::model::Span>>> = ids.iter().filter_map(|id| view.get(id)).collect();
    Ok(Json(traces_data(traces.iter().flatten())).into_response())
}
