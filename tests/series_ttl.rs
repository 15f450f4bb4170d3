//! Idle per-edge series expire from `/metrics` after `--series-ttl`, so the exposition's
//! cardinality follows the live mesh instead of growing forever.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn hop(trace: &str, a: &str, b: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let resource = |s: &str| json!({ "attributes": [{ "key": "service.name", "value": { "stringValue": s } }] });
    json!({ "resourceSpans": [
        { "resource": resource(a), "scopeSpans": [{ "spans": [{ "traceId": trace, "spanId": "2000000000000001",
            "name": "call", "kind": 3, "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1_000_000).to_string() }] }] },
        { "resource": resource(b), "scopeSpans": [{ "spans": [{ "traceId": trace, "spanId": "2000000000000002",
            "parentSpanId": "2000000000000001", "name": "call", "kind": 2,
            "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 900_000).to_string() }] }] } ] })
}

#[test]
fn idle_edge_series_expire_and_come_back_with_traffic() {
    let dir = TestDir::new("series-ttl");
    let collector = CollectorProc::start_with_args(&dir, &["--series-ttl", "2s", "--istio-metrics"]);
    let send = |trace: &str| {
        let body = hop(trace, "ttl-a", "ttl-b").to_string();
        let reply = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/json")], body.as_bytes()).expect("post");
        assert_eq!(reply.status, 200);
    };
    let series = || {
        let body = get(collector.web, "/metrics").body;
        (
            prom_sum(&body, "meshlens_requests_total", &[("source_service", "ttl-a")]),
            prom_sum(&body, "istio_requests_total", &[("source_app", "ttl-a")]),
        )
    };
    send("30000000000000000000000000000001");
    wait_for("the edge's series", Duration::from_secs(5), || (series() == (1.0, 1.0)).then_some(()));
    wait_for("the idle series to expire", Duration::from_secs(10), || (series() == (0.0, 0.0)).then_some(()));
    let body = get(collector.web, "/metrics").body;
    assert!(!body.contains("source_service=\"ttl-a\""), "no sample of the idle edge is left");
    send("30000000000000000000000000000002");
    wait_for("the series to come back", Duration::from_secs(5), || (series() == (1.0, 1.0)).then_some(()));
}
