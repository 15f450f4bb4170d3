//! The collector's data directory: telemetry accepted before a restart is there after it,
//! whether the collector was stopped with SIGTERM or killed with SIGKILL, and the tables'
//! Parquet segments hold their rows even when the journal is gone.

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

    // Killed without warning while a client is exporting: every export that was
    // acknowledged survives (an acknowledgement means the record was written).
    send(&second, &hop(T2, "gamma", "delta"), "/v1/traces");
    let http_addr = second.http;
    let exporter = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0..20_000u32 {
            let trace = format!("{:032x}", 0xabc0_0000u64 + u64::from(i));
            match http(http_addr, "POST", "/v1/traces", &[("content-type", "application/json")], hop(&trace, "gamma", "delta").to_string().as_bytes()) {
                Ok(reply) if reply.status == 200 => acknowledged.push(trace),
                _ => break,
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(700));
    second.proc.kill();
    let acknowledged = exporter.join().expect("exporter");
    assert!(acknowledged.len() >= 10 && acknowledged.len() < 20_000, "killed mid-stream after {} exports", acknowledged.len());

    let third = CollectorProc::start_with_data(&dir, &data, "collector-3");
    assert_eq!(spans_of(&third, T1), 2);
    assert_eq!(spans_of(&third, T2), 2, "spans acknowledged before SIGKILL survive");
    let list = acknowledged.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(",");
    let rows = third.sql_rows(&format!("SELECT count(DISTINCT trace_id) AS n FROM spans WHERE trace_id IN ({list})"));
    assert_eq!(rows[0][0], acknowledged.len(), "every acknowledged export of the {} before SIGKILL is there", acknowledged.len());
    assert!(has_edge(&third, "gamma", "delta"));
    let metrics = get(third.web, "/metrics").body;
    assert!(prom_sum(&metrics, "meshlens_collector_accepted_total", &[("signal", "spans"), ("transport", "journal")]) >= 4.0);
}

/// 9,000 spans in one export request, in `traces` traces named after `tag`.
fn many_spans(tag: u32, count: u32) -> Value {
    let now = now_nanos();
    let spans: Vec<Value> = (0..count)
        .map(|i| {
            json!({ "traceId": format!("{tag:08x}{:024x}", i / 3), "spanId": format!("{:016x}", u64::from(i) + 1),
                "name": "work", "kind": 2, "startTimeUnixNano": (now + u64::from(i)).to_string(),
                "endTimeUnixNano": (now + u64::from(i) + 1_000_000).to_string(),
                "attributes": [{ "key": "http.route", "value": { "stringValue": "/items/{id}" } }, { "key": "batch", "value": { "intValue": tag.to_string() } }] })
        })
        .collect();
    json!({ "resourceSpans": [{ "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "bulk" } }] },
        "scopeSpans": [{ "scope": { "name": "bulk-loader" }, "spans": spans }] }] })
}

fn segments_in(data: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("segments"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.ends_with(".parquet")).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn parquet_segments_hold_the_tables_without_the_journal() {
    let dir = TestDir::new("segments");
    let data = dir.path("data");
    let mut first = CollectorProc::start_with_data(&dir, &data, "collector-1");
    // Three exports of 3,000 spans: the third fills the first batch, which is sealed and
    // written as a segment while the collector runs.
    for tag in 1..=3 {
        send(&first, &many_spans(tag, 3_000), "/v1/traces");
    }
    wait_for("the first spans segment", Duration::from_secs(30), || segments_in(&data).iter().any(|n| n.starts_with("spans-")).then_some(()));
    let log = json!({ "resourceLogs": [{ "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "bulk" } }] },
        "scopeLogs": [{ "logRecords": [{ "timeUnixNano": now_nanos().to_string(), "body": { "stringValue": "loaded" } }] }] }] });
    send(&first, &log, "/v1/logs");
    send(&first, &many_spans(4, 30), "/v1/traces");
    assert_eq!(first.proc.terminate(Duration::from_secs(15)), Some(0));
    let written = segments_in(&data);
    assert!(written.iter().filter(|n| n.starts_with("spans-")).count() >= 2, "a clean stop writes the open batch too: {written:?}");
    assert!(written.iter().any(|n| n.starts_with("logs-")), "{written:?}");

    // Without the journal, the segments alone bring the tables back.
    std::fs::remove_dir_all(data.join("journal")).expect("remove the journal");
    let mut second = CollectorProc::start_with_data(&dir, &data, "collector-2");
    let rows = second.sql_rows("SELECT count(*) AS n, count(DISTINCT trace_id) AS traces FROM spans");
    assert_eq!(rows[0][0], 9_030, "{rows:?}");
    assert_eq!(rows[0][1], 3_000 + 10, "{rows:?}");
    let rows = second.sql_rows("SELECT body FROM logs");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "loaded");
    // Jaeger reads the same rows: a whole trace rebuilt from the segment, with its tags.
    let trace = second.json("/api/traces/00000002000000000000000000000007");
    let spans = trace["data"][0]["spans"].as_array().cloned().unwrap_or_default();
    assert_eq!(spans.len(), 3, "{trace}");
    assert!(spans[0]["tags"].as_array().is_some_and(|t| t.iter().any(|t| t["key"] == "http.route" && t["value"] == "/items/{id}")), "{trace}");
    let services = second.json("/api/services");
    assert!(services["data"].as_array().is_some_and(|s| s.iter().any(|s| s == "bulk")), "{services}");
    let found = second.json("/api/traces?service=bulk&tag=batch:3&limit=5");
    assert_eq!(found["data"].as_array().map_or(0, Vec::len), 5, "tag search over a restored segment");

    // Restarting again (now with a fresh journal) neither loses nor doubles rows.
    assert_eq!(second.proc.terminate(Duration::from_secs(15)), Some(0));
    let third = CollectorProc::start_with_data(&dir, &data, "collector-3");
    let rows = third.sql_rows("SELECT count(*) AS n FROM spans");
    assert_eq!(rows[0][0], 9_030, "{rows:?}");
}
