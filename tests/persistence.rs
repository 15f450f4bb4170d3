//! The collector's data directory: telemetry accepted before a restart is there after it,
//! whether the collector was stopped with SIGTERM or killed with SIGKILL.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A CLIENT span in `a` and its SERVER child in `b`, in trace `trace` (32 hex digits).
fn hop(trace: &str, a: &str, b: &str) -> Value {
    let now = now_nanos();
    let resource = |s: &str| json!({ "attributes": [{ "key": "service.name", "value": { "stringValue": s } }] });
    json!({ "resourceSpans": [
        { "resource": resource(a), "scopeSpans": [{ "spans": [{ "traceId": trace, "spanId": "1000000000000001",
            "name": "call", "kind": 3, "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 3_000_000).to_string() }] }] },
        { "resource": resource(b), "scopeSpans": [{ "spans": [{ "traceId": trace, "spanId": "1000000000000002",
            "parentSpanId": "1000000000000001", "name": "call", "kind": 2,
            "startTimeUnixNano": (now + 500_000).to_string(), "endTimeUnixNano": (now + 2_500_000).to_string() }] }] } ] })
}

fn send(collector: &CollectorProc, body: &Value, path: &str) {
    let reply = http(collector.http, "POST", path, &[("content-type", "application/json")], body.to_string().as_bytes()).expect("post");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn spans_of(collector: &CollectorProc, trace: &str) -> usize {
    collector.json(&format!("/api/traces/{trace}"))["data"][0]["spans"].as_array().map_or(0, Vec::len)
}

fn has_edge(collector: &CollectorProc, a: &str, b: &str) -> bool {
    collector.json("/api/v1/topology?window=1h")["edges"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["source"] == a && e["target"] == b))
}

#[test]
fn accepted_telemetry_survives_sigterm_and_sigkill() {
    let dir = TestDir::new("persist");
    let data = dir.path("data");
    const T1: &str = "11111111111111111111111111111111";
    const T2: &str = "22222222222222222222222222222222";

    let mut first = CollectorProc::start_with_data(&dir, &data, "collector-1");
    send(&first, &hop(T1, "alpha", "beta"), "/v1/traces");
    let log = json!({ "resourceLogs": [{ "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "alpha" } }] },
        "scopeLogs": [{ "logRecords": [{ "timeUnixNano": now_nanos().to_string(), "severityText": "INFO",
            "body": { "stringValue": "checkout started" }, "traceId": T1, "spanId": "1000000000000001" }] }] }] });
    send(&first, &log, "/v1/logs");
    assert_eq!(spans_of(&first, T1), 2);
    assert_eq!(first.proc.terminate(Duration::from_secs(15)), Some(0), "clean exit on SIGTERM");

    let mut second = CollectorProc::start_with_data(&dir, &data, "collector-2");
    assert_eq!(spans_of(&second, T1), 2, "spans survive SIGTERM");
    assert!(has_edge(&second, "alpha", "beta"), "the topology is rebuilt from the journal");
    let logs = second.json(&format!("/api/v1/logs?trace_id={T1}"));
    assert_eq!(logs[0]["body"], "checkout started", "{logs}");

    // Acknowledged, then killed without warning: written records are not lost.
    send(&second, &hop(T2, "gamma", "delta"), "/v1/traces");
    std::thread::sleep(Duration::from_millis(300));
    second.proc.kill();

    let third = CollectorProc::start_with_data(&dir, &data, "collector-3");
    assert_eq!(spans_of(&third, T1), 2);
    assert_eq!(spans_of(&third, T2), 2, "spans acknowledged before SIGKILL survive");
    assert!(has_edge(&third, "gamma", "delta"));
    let metrics = get(third.web, "/metrics").body;
    assert!(prom_sum(&metrics, "meshlens_collector_accepted_total", &[("signal", "spans"), ("transport", "journal")]) >= 4.0);
}
