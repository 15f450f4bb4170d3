//! Golden files for the Jaeger API: a fixed span set goes in through the real OTLP ingest,
//! and the answers of `/api/services`, `/api/operations`, `/api/traces/{id}`, a tag search
//! and `/api/dependencies` must equal the JSON files in `tests/golden/jaeger/`.
//! Run with `UPDATE_GOLDEN=1` to rewrite them after an intended change, and review the diff.

use std::path::PathBuf;

use axum::{body::Body, http::Request};
use http_body_util::BodyExt;
use meshlens_collector::{
    CollectorConfig, Pipeline,
    ingest::{Signal, Traces},
    pipeline::{Record, Transport},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status::StatusCode},
};
use tower::ServiceExt;

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000_000_000;
const MS: u64 = 1_000_000;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn resource(service: &str, version: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", Value::StringValue(service.into())), kv("service.version", Value::StringValue(version.into()))],
        ..Default::default()
    })
}

#[allow(clippy::too_many_arguments)]
fn span(trace: u8, id: u8, parent: Option<u8>, name: &str, kind: span::SpanKind, start_ms: u64, dur_ms: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + (start_ms + dur_ms) * MS,
        attributes,
        ..Default::default()
    }
}

/// frontend (v2) serves GET /checkout and calls checkout (v1), which fails; a second trace
/// is a lone health check.
fn span_set() -> ExportTraceServiceRequest {
    use span::SpanKind::{Client, Server};
    let mut root = span(1, 1, None, "GET /checkout", Server, 0, 50, vec![
        kv("http.request.method", Value::StringValue("GET".into())),
        kv("http.route", Value::StringValue("/checkout".into())),
        kv("http.response.status_code", Value::IntValue(502)),
    ]);
    root.status = Some(Status { code: StatusCode::Error as i32, message: "upstream failed".into() });
    let client = span(1, 2, Some(1), "POST /pay", Client, 5, 40, vec![
        kv("server.address", Value::StringValue("checkout".into())),
        kv("retry", Value::BoolValue(false)),
        kv("weight", Value::DoubleValue(0.5)),
    ]);
    let mut server = span(1, 3, Some(2), "POST /pay", Server, 7, 30, vec![kv("http.response.status_code", Value::IntValue(503))]);
    server.status = Some(Status { code: StatusCode::Error as i32, message: "card declined".into() });
    server.events = vec![span::Event {
        time_unix_nano: T0 + 20 * MS,
        name: "declined".into(),
        attributes: vec![kv("card.brand", Value::StringValue("visa".into()))],
        ..Default::default()
    }];
    server.links = vec![span::Link {
        trace_id: vec![2; 16],
        span_id: vec![9; 8],
        trace_state: "congo=ucfJifl5GOE".into(),
        flags: 0x101,
        attributes: vec![kv("link.reason", Value::StringValue("batch".into()))],
        ..Default::default()
    }];
    // Sampled, its parent remote; a vendor's entry in its context.
    (server.trace_state, server.flags) = ("congo=t61rcWkgMzE".into(), 0x301);
    let health = span(2, 9, None, "GET /health", Server, 100, 1, vec![]);
    let scope = |spans| vec![ScopeSpans { spans, ..Default::default() }];
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans { resource: resource("frontend", "v2"), scope_spans: scope(vec![root, client, health]), ..Default::default() },
            ResourceSpans { resource: resource("checkout", "v1"), scope_spans: scope(vec![server]), ..Default::default() },
        ],
    }
}

async fn get(app: &axum::Router, uri: &str) -> serde_json::Value {
    let response = app.clone().oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("infallible");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

fn check(name: &str, actual: &serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/jaeger").join(format!("{name}.json"));
    let pretty = serde_json::to_string_pretty(actual).expect("serialize") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, pretty).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} ({e}); run with UPDATE_GOLDEN=1 to create it", path.display()));
    let expected: serde_json::Value = serde_json::from_str(&expected).expect("golden JSON");
    assert!(expected == *actual, "{name} differs from {}:\n{pretty}", path.display());
}

#[tokio::test]
async fn jaeger_answers_match_the_golden_files() {
    answers_match(false).await;
}

/// The same answers once the spans are sealed into a columnar batch and rebuilt from it.
#[tokio::test]
async fn jaeger_answers_from_sealed_spans_match_the_golden_files() {
    answers_match(true).await;
}

async fn answers_match(sealed: bool) {
    let pipeline = Pipeline::new(&CollectorConfig::default());
    Traces::ingest(&pipeline, Traces::convert(&span_set()), Transport::Http, Record::Unjournaled);
    if sealed {
        pipeline.tables.write().expect("tables").spans.seal();
    }
    let app = meshlens_collector::api::app(pipeline);
    let start_us = T0 / 1000;
    check("services", &get(&app, "/api/services").await);
    check("operations_frontend", &get(&app, "/api/operations?service=frontend").await);
    check("operations_frontend_server", &get(&app, "/api/operations?service=frontend&spanKind=server").await);
    check("trace", &get(&app, "/api/traces/01010101010101010101010101010101").await);
    check(
        "search_errors",
        &get(&app, &format!("/api/traces?service=checkout&tag=error:true&start={start_us}&end={}&minDuration=10ms", start_us + 1_000_000)).await,
    );
    check("search_nothing", &get(&app, &format!("/api/traces?service=frontend&operation=GET%20/health&minDuration=5ms&start={start_us}")).await);
    check("dependencies", &get(&app, &format!("/api/dependencies?endTs={}&lookback=60000", T0 / MS + 1000)).await);
    check("trace_unknown", &get(&app, "/api/traces/0123").await);

    // API v3: OTLP JSON.
    check("v3_services", &get(&app, "/api/v3/services").await);
    check("v3_operations_frontend_client", &get(&app, "/api/v3/operations?service=frontend&span_kind=client").await);
    let v3_trace = get(&app, "/api/v3/traces/01010101010101010101010101010101").await;
    check("v3_trace", &v3_trace);
    // It is OTLP JSON: opentelemetry-proto reads it back, every span intact.
    let data: opentelemetry_proto::tonic::trace::v1::TracesData = serde_json::from_value(v3_trace).expect("OTLP JSON");
    let spans: usize = data.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    assert_eq!(spans, 3);
    check(
        "v3_search_checkout",
        &get(&app, "/api/v3/traces?query.service_name=checkout&query.start_time_min=2026-01-01T00:00:00Z&query.start_time_max=2026-01-01T00:01:00Z&query.duration_min=10ms").await,
    );
    check("v3_search_without_times", &get(&app, "/api/v3/traces?query.service_name=checkout").await);
    check("v3_trace_unknown", &get(&app, "/api/v3/traces/0123").await);
}
