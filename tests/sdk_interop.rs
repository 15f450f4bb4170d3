//! Telemetry that did not come from a meshlens sidecar: a real OpenTelemetry SDK
//! (opentelemetry_sdk + opentelemetry-otlp over gRPC) and hand-written OTLP/HTTP bodies
//! in JSON and protobuf. A CLIENT span in one service with a child SERVER span in another
//! gives an edge between them; invalid input is refused clearly and loses nothing else.

mod support;

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use prost::Message;
use serde_json::Value;
use support::*;

fn provider(service: &str, endpoint: &str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .expect("OTLP exporter");
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
        .build()
}

fn has_edge(topology: &Value, source: &str, target: &str, requests: u64) -> bool {
    topology["edges"]
        .as_array()
        .is_some_and(|edges| edges.iter().any(|e| e["source"] == source && e["target"] == target && e["requests"] == requests))
}

#[test]
fn sdk_client_and_server_spans_from_two_services_make_an_edge() {
    let dir = TestDir::new("sdk");
    let collector = CollectorProc::start(&dir);
    let endpoint = format!("http://{}", collector.grpc);

    // The tonic exporter needs a tokio runtime alive while it exports.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (checkout, payments, trace_id) = runtime.block_on(async {
        let checkout = provider("checkout-sdk", &endpoint);
        let payments = provider("payments-sdk", &endpoint);
        let client_tracer = checkout.tracer("interop");
        let server_tracer = payments.tracer("interop");
        let client = client_tracer
            .span_builder("POST /charge")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("http.request.method", "POST"), KeyValue::new("server.address", "payments")])
            .start(&client_tracer);
        let trace_id = client.span_context().trace_id().to_string();
        let cx = opentelemetry::Context::current_with_span(client);
        let mut server = server_tracer
            .span_builder("POST /charge")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.response.status_code", 200)])
            .start_with_context(&server_tracer, &cx);
        server.add_event("charged", vec![KeyValue::new("amount", 42)]);
        server.end();
        cx.span().end();
        (checkout, payments, trace_id)
    });
    for p in [&checkout, &payments] {
        p.force_flush().expect("flush");
    }

    let topology = wait_for("the SDK edge", Duration::from_secs(15), || {
        let t = collector.json("/api/v1/topology?window=5m");
        has_edge(&t, "checkout-sdk", "payments-sdk", 1).then_some(t)
    });
    assert!(!has_edge(&topology, "unknown", "payments-sdk", 1), "the server span was matched, not orphaned");

    let trace = collector.json(&format!("/api/traces/{trace_id}"));
    let spans = trace["data"][0]["spans"].as_array().expect("spans").clone();
    assert_eq!(spans.len(), 2);
    let server = spans.iter().find(|s| !s["references"].as_array().is_none_or(Vec::is_empty)).expect("child span");
    let event = &server["logs"][0]["fields"];
    assert!(event.as_array().expect("fields").iter().any(|f| f["key"] == "event" && f["value"] == "charged"));
    let deps = collector.json("/api/dependencies?lookback=3600000");
    assert!(
        deps["data"].as_array().expect("data").iter().any(|d| d["parent"] == "checkout-sdk" && d["child"] == "payments-sdk"),
        "{deps}"
    );
    for p in [checkout, payments] {
        let _ = p.shutdown();
    }
    drop(runtime);
}

#[test]
fn otlp_http_json_and_protobuf_are_accepted_and_bad_bodies_refused() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
        common::v1::{AnyValue, KeyValue as PKeyValue, any_value},
        resource::v1::Resource as PResource,
        trace::v1::{ResourceSpans, ScopeSpans, Span as PSpan},
    };
    let dir = TestDir::new("otlp-http");
    let collector = CollectorProc::start(&dir);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64;

    // OTLP/JSON as the specification writes it: hex IDs, string int64s, enum numbers.
    let json = serde_json::json!({ "resourceSpans": [
        { "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "json-a" } }] },
          "scopeSpans": [{ "spans": [{
              "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
              "name": "GET /x", "kind": 3,
              "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 5_000_000).to_string() }] }] },
        { "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "json-b" } }] },
          "scopeSpans": [{ "spans": [{
              "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175", "parentSpanId": "eee19b7ec3c1b174",
              "name": "GET /x", "kind": 2,
              "startTimeUnixNano": (now + 1_000_000).to_string(), "endTimeUnixNano": (now + 4_000_000).to_string(),
              "attributes": [{ "key": "http.response.status_code", "value": { "intValue": "200" } }] }] }] }
    ]});
    let reply = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/json")], json.to_string().as_bytes()).expect("post");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));

    // Protobuf, with one invalid span among valid ones: partial success, the rest kept.
    let service = |name: &str| PResource {
        attributes: vec![PKeyValue {
            key: "service.name".into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(name.into())) }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let span = |trace: u8, id: u8| PSpan {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: "work".into(),
        kind: 2,
        start_time_unix_nano: now,
        end_time_unix_nano: now + 1000,
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(service("proto-svc")),
            scope_spans: vec![ScopeSpans { spans: vec![span(7, 1), span(0, 2), span(7, 3)], ..Default::default() }],
            ..Default::default()
        }],
    };
    let reply = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/x-protobuf")], &request.encode_to_vec()).expect("post");
    assert_eq!(reply.status, 200);
    let decoded = ExportTraceServiceResponse::decode(reply.bytes.as_slice()).expect("protobuf response");
    let partial = decoded.partial_success.expect("partial success reported");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("invalid trace_id"), "{}", partial.error_message);
    let kept = collector.json("/api/traces/07070707070707070707070707070707");
    assert_eq!(kept["data"][0]["spans"].as_array().map(Vec::len), Some(2), "the valid spans of the batch are kept");

    // Bad bodies: clear errors, nothing accepted, nothing lost.
    let bad_json = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/json")], b"{\"resourceSpans\": [").expect("post");
    assert_eq!(bad_json.status, 400);
    assert!(bad_json.json()["message"].as_str().is_some_and(|m| m.contains("malformed JSON")), "{}", bad_json.body);
    let bad_proto = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/x-protobuf")], &[0xff, 0xff, 0xff]).expect("post");
    assert_eq!(bad_proto.status, 400);
    let bad_type = http(collector.http, "POST", "/v1/logs", &[("content-type", "text/plain")], b"hello").expect("post");
    assert_eq!(bad_type.status, 415);
    let html_service = serde_json::json!({ "resourceSpans": [{ "resource": { "attributes": [
        { "key": "service.name", "value": { "stringValue": "<img src=x onerror=alert(1)>" } }] },
        "scopeSpans": [{ "spans": [{ "traceId": "6b8efff798038103d269b633813fc60c", "spanId": "aee19b7ec3c1b174",
            "name": "<script>", "kind": 2, "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1).to_string() }] }] }] });
    let reply = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/json")], html_service.to_string().as_bytes()).expect("post");
    assert_eq!(reply.status, 200);

    wait_for("the JSON edge", Duration::from_secs(10), || has_edge(&collector.json("/api/v1/topology?window=5m"), "json-a", "json-b", 1).then_some(()));
    let services = collector.json("/api/services");
    let names: Vec<&str> = services["data"].as_array().expect("data").iter().filter_map(Value::as_str).collect();
    for s in ["json-a", "json-b", "proto-svc", "<img src=x onerror=alert(1)>"] {
        assert!(names.contains(&s), "{names:?}");
    }
    let metrics = get(collector.web, "/metrics").body;
    assert_eq!(prom_sum(&metrics, "meshlens_collector_rejected_total", &[("signal", "spans"), ("transport", "http")]), 1.0);
    assert_eq!(prom_sum(&metrics, "meshlens_collector_malformed_requests_total", &[("signal", "spans")]), 2.0);
}
