//! The Jaeger query API, as jaeger-ui and Grafana's Jaeger data source call it.
//!
//! Every answer is Jaeger's envelope `{data, total, limit, offset, errors}`; traces use
//! Jaeger's JSON model (microsecond times, typed tags, a `processes` map, CHILD_OF and
//! FOLLOWS_FROM references, span events as `logs`, an `error` tag for error status).
//! Parameters follow Jaeger's query parser: `start`/`end` in microseconds, durations as
//! Go duration strings, repeated `tag=k:v` and `tags={json}`, `limit` applied after the
//! filters, repeated `traceID`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::{Value as Json_, json};

use crate::{
    model::{Attributes, Resource, Span, SpanKind, StatusCode as SpanStatus, TraceId, Value},
    pipeline::{Pipeline, now_nanos},
    tables::TraceQuery,
    topology::{Grouping, NodeKind, rollup::Rates},
};

/// Traces returned when `limit` is not given (Jaeger's default).
pub const DEFAULT_LIMIT: usize = 100;

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new()
        .route("/api/services", get(services))
        .route("/api/services/{service}/operations", get(service_operations))
        .route("/api/operations", get(operations))
        .route("/api/traces", get(find_traces))
        .route("/api/traces/{trace_id}", get(get_trace))
        .route("/api/dependencies", get(dependencies))
}

/// An error in Jaeger's envelope.
#[derive(Debug)]
pub struct JaegerError {
    status: StatusCode,
    message: String,
}

impl JaegerError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
    fn internal() -> Self {
        tracing::error!("store lock poisoned while answering a Jaeger query");
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: "internal error".into() }
    }
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let body = json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{ "code": self.status.as_u16(), "msg": self.message }],
        });
        (self.status, Json(body)).into_response()
    }
}

fn envelope<T: Serialize>(data: T, total: usize) -> Response {
    Json(json!({ "data": data, "total": total, "limit": 0, "offset": 0, "errors": null })).into_response()
}

/// Parsed query string, keeping repeated keys.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Self {
        Self(form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect())
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn int(&self, key: &str) -> Result<Option<i64>, JaegerError> {
        self.get(key)
            .map(|v| v.parse::<i64>().map_err(|e| JaegerError::bad_request(format!("unable to parse param '{key}': {e}"))))
            .transpose()
    }
    fn duration_nanos(&self, key: &str) -> Result<Option<u64>, JaegerError> {
        self.get(key)
            .map(|v| {
                meshlens_common::duration::parse_duration(v)
                    .map(|d| d.as_nanos() as u64)
                    .map_err(|e| JaegerError::bad_request(format!("unable to parse param '{key}': {e}")))
            })
            .transpose()
    }
}

fn read_store<T>(lock: &std::sync::RwLock<T>) -> Result<std::sync::RwLockReadGuard<'_, T>, JaegerError> {
    lock.read().map_err(|_| JaegerError::internal())
}

async fn services(State(p): State<Arc<Pipeline>>) -> Result<Response, JaegerError> {
    let services: Vec<String> = read_store(&p.tables)?.spans.services().iter().map(|s| s.to_string()).collect();
    let total = services.len();
    Ok(envelope(services, total))
}

async fn service_operations(State(p): State<Arc<Pipeline>>, Path(service): Path<String>) -> Result<Response, JaegerError> {
    let mut names: Vec<String> = read_store(&p.tables)?.spans.operations(&service).into_iter().map(|(n, _)| n).collect();
    names.dedup();
    let total = names.len();
    Ok(envelope(names, total))
}

fn parse_span_kind(text: &str) -> Result<SpanKind, JaegerError> {
    Ok(match text {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        "internal" => SpanKind::Internal,
        "unspecified" => SpanKind::Unspecified,
        other => return Err(JaegerError::bad_request(format!("unsupported span kind: '{other}'"))),
    })
}

async fn operations(State(p): State<Arc<Pipeline>>, RawQuery(raw): RawQuery) -> Result<Response, JaegerError> {
    let params = Params::parse(raw);
    let service = params.get("service").ok_or_else(|| JaegerError::bad_request("parameter 'service' is required"))?;
    let kind = params.get("spanKind").map(parse_span_kind).transpose()?;
    let ops: Vec<Json_> = read_store(&p.tables)?
        .spans
        .operations(service)
        .into_iter()
        .filter(|(_, k)| kind.is_none_or(|want| *k == want))
        .map(|(name, k)| json!({ "name": name, "spanKind": if k == SpanKind::Unspecified { "" } else { k.as_str() } }))
        .collect();
    let total = ops.len();
    Ok(envelope(ops, total))
}

/// Builds the store query from Jaeger's parameters.
fn trace_query(params: &Params) -> Result<TraceQuery, JaegerError> {
    let mut tags = Vec::new();
    for tag in params.all("tag") {
        let (k, v) = tag
            .split_once(':')
            .ok_or_else(|| JaegerError::bad_request(format!("malformed 'tag' parameter, expecting key:value, received: {tag}")))?;
        tags.push((k.to_owned(), v.to_owned()));
    }
    for json_tags in params.all("tags") {
        let map: HashMap<String, String> = serde_json::from_str(json_tags)
            .map_err(|e| JaegerError::bad_request(format!("malformed 'tags' parameter, cannot unmarshal JSON: {e}")))?;
        tags.extend(map);
    }
    let micros = |v: Option<i64>| v.map(|us| (us.max(0) as u64).saturating_mul(1000));
    let start_max = micros(params.int("end")?);
    let start_min = match micros(params.int("start")?) {
        Some(s) => Some(s),
        None => match params.get("lookback").filter(|l| *l != "custom") {
            Some(l) => {
                let back = meshlens_common::duration::parse_duration(l)
                    .map_err(|e| JaegerError::bad_request(format!("unable to parse param 'lookback': {e}")))?;
                Some(start_max.unwrap_or_else(now_nanos).saturating_sub(back.as_nanos() as u64))
            }
            None => None,
        },
    };
    let duration_min = params.duration_nanos("minDuration")?;
    let duration_max = params.duration_nanos("maxDuration")?;
    if let (Some(min), Some(max)) = (duration_min, duration_max)
        && max < min {
            return Err(JaegerError::bad_request("'maxDuration' should be greater than 'minDuration'"));
        }
    let limit = match params.int("limit")? {
        Some(l) if l > 0 => l as usize,
        _ => DEFAULT_LIMIT,
    };
    Ok(TraceQuery {
        service: params.get("service").map(str::to_owned),
        operation: params.get("operation").map(str::to_owned),
        span_kind: None,
        tags,
        start_min,
        start_max,
        duration_min,
        duration_max,
        limit,
    })
}

async fn find_traces(State(p): State<Arc<Pipeline>>, RawQuery(raw): RawQuery) -> Result<Response, JaegerError> {
    let params = Params::parse(raw);
    let ids: Vec<TraceId> = params
        .all("traceID")
        .map(|t| TraceId::parse_hex(t).ok_or_else(|| JaegerError::bad_request(format!("cannot parse traceID param: {t:?}"))))
        .collect::<Result<_, _>>()?;
    let ids = if !ids.is_empty() {
        ids
    } else {
        let query = trace_query(&params)?;
        if query.service.is_none() {
            return Err(JaegerError::bad_request("parameter 'service' is required"));
        }
        let view = read_store(&p.tables)?.spans.view();
        view.search(&query)
    };
    let view = read_store(&p.tables)?.spans.traces(&ids);
    let traces: Vec<Json_> = ids.iter().filter_map(|id| view.get(id)).map(|spans| trace_json(&spans)).collect();
    let total = traces.len();
    Ok(envelope(traces, total))
}

async fn get_trace(State(p): State<Arc<Pipeline>>, Path(trace_id): Path<String>) -> Result<Response, JaegerError> {
    let id = TraceId::parse_hex(&trace_id)
        .ok_or_else(|| JaegerError::bad_request(format!("cannot parse traceID {trace_id:?}: expected 1 to 32 hex digits, not all zero")))?;
    let view = read_store(&p.tables)?.spans.traces(&[id]);
    match view.get(&id) {
        Some(spans) => Ok(envelope([trace_json(&spans)], 1)),
        None => Err(JaegerError { status: StatusCode::NOT_FOUND, message: "trace not found".into() }),
    }
}

async fn dependencies(State(p): State<Arc<Pipeline>>, RawQuery(raw): RawQuery) -> Result<Response, JaegerError> {
    let params = Params::parse(raw);
    let end_ms = params.int("endTs")?.map_or(now_nanos() / 1_000_000, |v| v.max(0) as u64);
    let lookback_ms = params.int("lookback")?.map_or(24 * 3600 * 1000, |v| v.max(0) as u64);
    let from = end_ms.saturating_sub(lookback_ms) / 1000;
    let view = read_store(&p.topology)?.view(from, end_ms / 1000, Grouping::Service, Rates::Over(1.0));
    let label: HashMap<&str, &str> = view.nodes.iter().map(|n| (n.id.as_str(), n.label.as_str())).collect();
    let kinds: HashMap<&str, NodeKind> = view.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
    let links: Vec<Json_> = view
        .edges
        .iter()
        .filter(|e| kinds.get(e.source.as_str()) != Some(&NodeKind::Unknown))
        .map(|e| {
            json!({
                "parent": label.get(e.source.as_str()).copied().unwrap_or(&e.source),
                "child": label.get(e.target.as_str()).copied().unwrap_or(&e.target),
                "callCount": e.traffic.requests,
            })
        })
        .collect();
    let total = links.len();
    Ok(envelope(links, total))
}

fn tag(key: &str, value: &Value) -> Json_ {
    let (kind, v) = match value {
        Value::Str(s) | Value::Json(s) => ("string", json!(&**s)),
        Value::Bool(b) => ("bool", json!(b)),
        Value::Int(i) => ("int64", json!(i)),
        Value::Double(d) => ("float64", json!(d)),
        Value::Bytes(b) => ("binary", json!(b.as_str())),
    };
    json!({ "key": key, "type": kind, "value": v })
}

fn tags(attributes: &Attributes) -> Vec<Json_> {
    attributes.iter().map(|(k, v)| tag(k, v)).collect()
}

/// One trace in Jaeger's JSON model.
pub fn trace_json(spans: &[Arc<Span>]) -> Json_ {
    let mut processes: Vec<Arc<Resource>> = Vec::new();
    let mut process_of = |r: &Arc<Resource>| -> String {
        let index = match processes.iter().position(|p| Arc::ptr_eq(p, r) || **p == **r) {
            Some(i) => i,
            None => {
                processes.push(r.clone());
                processes.len() - 1
            }
        };
        format!("p{}", index + 1)
    };
    let trace_id = spans.first().map(|s| s.trace_id.to_string()).unwrap_or_default();
    let span_ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id).collect();
    let spans_json: Vec<Json_> = spans
        .iter()
        .map(|s| {
            let mut references = Vec::new();
            if let Some(parent) = s.parent_span_id {
                references.push(json!({ "refType": "CHILD_OF", "traceID": s.trace_id.to_string(), "spanID": parent.to_string() }));
            }
            for link in &s.links {
                references.push(json!({ "refType": "FOLLOWS_FROM", "traceID": link.trace_id.to_string(), "spanID": link.span_id.to_string() }));
            }
            let mut span_tags = tags(&s.attributes);
            if s.kind != SpanKind::Unspecified {
                span_tags.push(tag("span.kind", &Value::Str(s.kind.as_str().into())));
            }
            match s.status {
                SpanStatus::Error => {
                    span_tags.push(tag("otel.status_code", &Value::Str("ERROR".into())));
                    span_tags.push(tag("error", &Value::Bool(true)));
                    if !s.status_message.is_empty() {
                        span_tags.push(tag("otel.status_description", &Value::Str(s.status_message.as_str().into())));
                    }
                }
                SpanStatus::Ok => span_tags.push(tag("otel.status_code", &Value::Str("OK".into()))),
                SpanStatus::Unset => {}
            }
            if !s.scope.is_empty() {
                span_tags.push(tag("otel.scope.name", &Value::Str((*s.scope).into())));
            }
            // Where Jaeger's own OTLP translation puts a span's `tracestate`.
            if !s.trace_state.is_empty() {
                span_tags.push(tag("w3c.tracestate", &Value::Str(s.trace_state.as_str().into())));
            }
            let logs: Vec<Json_> = s
                .events
                .iter()
                .map(|e| {
                    let mut fields = vec![tag("event", &Value::Str(e.name.as_str().into()))];
                    fields.extend(tags(&e.attributes));
                    json!({ "timestamp": e.time_unix_nanos / 1000, "fields": fields })
                })
                .collect();
            let warnings = s
                .parent_span_id
                .filter(|p| !span_ids.contains(p))
                .map(|p| vec![format!("invalid parent span IDs={p}; skipping clock skew adjustment")]);
            json!({
                "traceID": s.trace_id.to_string(),
                "spanID": s.span_id.to_string(),
                "flags": 1,
                "operationName": s.name,
                "references": references,
                "startTime": s.start_unix_nanos / 1000,
                "duration": s.duration_nanos() / 1000,
                "tags": span_tags,
                "logs": logs,
                "processID": process_of(&s.resource),
                "warnings": warnings,
            })
        })
        .collect();
    let processes: serde_json::Map<String, Json_> = processes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let process_tags: Vec<Json_> =
                r.attributes.iter().filter(|(k, _)| &**k != "service.name").map(|(k, v)| tag(k, v)).collect();
            (format!("p{}", i + 1), json!({ "serviceName": &*r.service, "tags": process_tags }))
        })
        .collect();
    json!({ "traceID": trace_id, "spans": spans_json, "processes": processes, "warnings": null })
}
