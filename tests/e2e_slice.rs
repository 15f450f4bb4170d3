//! End to end: collector, sidecars and sample services as real processes. Requests go
//! through the sidecars; the test then finds them in the topology, in `/metrics`, in the
//! Jaeger API and in the access logs, with the counts it sent. Each stage of the pipeline
//! (forwarding, span recording, export, ingest, edge derivation, rollups, APIs) is needed
//! for some assertion to pass.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const REQUESTS: u64 = 40;

fn edge<'a>(topology: &'a Value, source: &str, target: &str) -> Option<&'a Value> {
    topology["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == format!("{source}.test") && e["target"] == format!("{target}.test"))
}

#[test]
fn requests_through_sidecars_reach_topology_metrics_traces_and_logs() {
    let dir = TestDir::new("slice");
    let collector = CollectorProc::start(&dir);

    // tester ─▶ frontend ─┬─▶ backend ─▶ db
    //                     └─▶ store (gRPC over HTTP/2)
    let tester = Workload::new("tester", &[]);
    let frontend = Workload::new("frontend", &["http://backend/items", "grpc://store/demo.Store/Get"]);
    let backend = Workload::new("backend", &["http://db/query"]);
    let store = Workload::new("store", &[]);
    let db = Workload::new("db", &[]);
    let mesh = [&tester, &frontend, &backend, &store, &db];
    let _procs = start_mesh(&dir, &mesh, collector.grpc);

    let report = load(&dir, tester.outbound, "http://frontend/", REQUESTS);
    assert_eq!(report["sent"], REQUESTS, "{report}");
    assert_eq!(report["succeeded"], REQUESTS, "every request succeeds: {report}");

    // A service the sidecar does not know gets a clear 404, not a hang or a crash.
    let unknown = http(tester.outbound, "GET", "/x", &[("host", "nosuch")], b"").expect("sidecar answers");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(unknown.body.contains("no route to service \"nosuch\""), "{}", unknown.body);
    assert!(unknown.header("meshlens-proxy-error").is_some());

    // Topology: every edge carries exactly the requests sent.
    let expected = [("tester", "frontend"), ("frontend", "backend"), ("frontend", "store"), ("backend", "db")];
    let mut last = Value::Null;
    let topology = wait_for("the topology to count every request", Duration::from_secs(60), || {
        let t = collector.json("/api/v1/topology?window=5m");
        let counts: Vec<Value> = expected.iter().map(|(s, d)| edge(&t, s, d).map_or(Value::Null, |e| e["requests"].clone())).collect();
        if counts.iter().any(|c| c.as_u64().is_some_and(|c| c > REQUESTS)) {
            panic!("more requests counted than sent: {counts:?}");
        }
        if counts != last.as_array().cloned().unwrap_or_default() {
            eprintln!("edge counts so far (tester→frontend, frontend→backend, frontend→store, backend→db): {counts:?}");
        }
        last = Value::from(counts);
        expected
            .iter()
            .all(|(s, d)| edge(&t, s, d).is_some_and(|e| e["requests"] == REQUESTS))
            .then_some(t)
    });
    let _ = last;
    for (s, d) in expected {
        let e = edge(&topology, s, d).expect("edge");
        assert_eq!(e["errors"], 0, "{s}->{d}: {e}");
        assert!(e["request_rate"].as_f64().is_some_and(|r| r > 0.0), "{e}");
        let (p50, p99) = (e["p50_ms"].as_f64().expect("p50"), e["p99_ms"].as_f64().expect("p99"));
        assert!(p50 > 0.0 && p50 <= p99, "{s}->{d}: p50 {p50} p99 {p99}");
    }
    assert_eq!(edge(&topology, "frontend", "store").map(|e| e["protocol"].clone()), Some("grpc".into()));
    let nosuch = topology["edges"]
        .as_array()
        .and_then(|edges| edges.iter().find(|e| e["source"] == "tester.test" && e["target"] == "external:nosuch"))
        .expect("the call to an unknown service is an edge to an external node");
    assert_eq!((nosuch["requests"].as_u64(), nosuch["errors"].as_u64()), (Some(1), Some(1)));
    for n in ["tester", "frontend", "backend", "store", "db"] {
        assert!(
            topology["nodes"].as_array().expect("nodes").iter().any(|x| x["id"] == format!("{n}.test")),
            "node {n} missing: {topology}"
        );
    }

    // Versioned workloads view: the same edges between versioned nodes.
    let versions = collector.json("/api/v1/topology?window=5m&group=version");
    assert!(
        versions["edges"].as_array().expect("edges").iter().any(|e| e["source"] == "version:frontend.test:v1"
            && e["target"] == "version:backend.test:v1"
            && e["requests"] == REQUESTS),
        "{versions}"
    );

    // The edge's history (the dashboard's charts) adds up to the same count, once its
    // newest seconds, which it leaves out while they may still be arriving, have passed.
    let total = || {
        let series = collector.json("/api/v1/series?source=frontend.test&target=backend.test&window=5m");
        let points = series.as_array().cloned().unwrap_or_default();
        let count = |p: &Value| p["request_rate"].as_f64().unwrap_or(0.0) * p["seconds"].as_f64().unwrap_or(0.0);
        points.iter().map(count).sum::<f64>()
    };
    wait_for("the edge's history to hold every request", Duration::from_secs(10), || {
        ((total() - REQUESTS as f64).abs() < 1e-6).then_some(())
    });

    // Terminal views read the same numbers.
    let web = collector.web.to_string();
    let stat: Value = serde_json::from_str(&run(&["stat", "--collector", &web, "--window", "5m", "-o", "json"])).expect("stat JSON");
    let row = |name: &str| stat.as_array().and_then(|r| r.iter().find(|r| r["name"] == name)).cloned().expect("stat row");
    for name in ["frontend", "backend", "store", "db"] {
        assert_eq!(row(name)["requests"], REQUESTS, "{name}");
        assert_eq!(row(name)["success_rate"], 1.0, "{name}");
        assert!(row(name)["p95_ms"].as_f64().is_some(), "{name}");
    }
    let table = run(&["edges", "--collector", &web, "--window", "5m"]);
    let header = table.lines().next().unwrap_or("");
    assert!(header.starts_with("SRC") && header.contains("LATENCY_P99"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("frontend") && l.contains("store") && l.contains("grpc") && l.contains("100.00%")), "{table}");
    let top = run(&["top", "--collector", &web, "--window", "5m", "--iterations", "1", "-o", "json"]);
    assert!(serde_json::from_str::<Value>(top.trim()).is_ok_and(|v| v.as_array().is_some_and(|e| e.len() >= 4)), "{top}");

    // SQL over the edge rollups and the spans gives the same counts.
    let rows = collector.sql_rows(
        "SELECT source_service, destination_service, sum(requests) AS n, sum(errors) AS e FROM edges \
         WHERE destination_kind = 'service' GROUP BY 1, 2 ORDER BY 1, 2",
    );
    for (s, d) in expected {
        let (s, d) = (s.trim_end_matches(".test"), d.trim_end_matches(".test"));
        let row = rows.iter().find(|r| r[0] == s && r[1] == d).unwrap_or_else(|| panic!("{s}->{d} in {rows:?}"));
        assert_eq!((row[2].as_u64(), row[3].as_u64()), (Some(REQUESTS), Some(0)), "{s}->{d}");
    }
    let rows = collector.sql_rows("SELECT count(*) FROM spans WHERE kind = 'client' AND source_workload = 'frontend-v1' AND destination_service = 'backend'");
    assert_eq!(rows[0][0].as_u64(), Some(REQUESTS), "one sidecar CLIENT span per request");
    // The gRPC hop reached store with the authority frontend called (`store`), not the
    // address of the endpoint it was sent to, so store's SERVER spans name the service; and
    // they name the RPC's service and method, as OpenTelemetry's RPC conventions do.
    let rows = collector.sql_rows(
        "SELECT count(*) FROM spans WHERE kind = 'server' AND service = 'store' AND attributes LIKE '%\"server.address\":\"store\"%' \
         AND attributes LIKE '%\"rpc.method\":\"Get\"%' AND attributes LIKE '%\"rpc.service\":\"demo.Store\"%'",
    );
    assert_eq!(rows[0][0].as_u64(), Some(REQUESTS), "store's SERVER spans carry server.address = store and the RPC's names");
    let csv = run(&["sql", "--collector", &web, "-o", "csv", "SELECT service, count(*) AS spans FROM spans GROUP BY service ORDER BY service"]);
    assert!(csv.starts_with("service,spans\r\n") && csv.contains("\r\nfrontend,"), "{csv}");
    let refused = std::process::Command::new(meshlens()).args(["sql", "--collector", &web, "DROP TABLE spans"]).output().expect("run meshlens sql");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("DROP TABLE"), "{}", String::from_utf8_lossy(&refused.stderr));

    // Prometheus: per-edge counters and histograms with the same counts.
    let metrics = get(collector.web, "/metrics");
    assert_eq!(metrics.status, 200);
    let exposition = metrics.body;
    for (s, d) in expected {
        let labels = [("source_service", s), ("destination_service", d)];
        assert_eq!(prom_sum(&exposition, "meshlens_requests_total", &labels), REQUESTS as f64, "{s}->{d}");
        assert_eq!(prom_sum(&exposition, "meshlens_request_duration_seconds_count", &labels), REQUESTS as f64, "{s}->{d}");
    }
    assert!(prom_sum(&exposition, "meshlens_collector_accepted_total", &[("signal", "spans")]) >= (REQUESTS * 8) as f64);
    // The sidecars' own OTLP request metrics arrive on their export interval.
    wait_for("the sidecars' OTLP metrics", Duration::from_secs(10), || {
        let body = get(collector.web, "/metrics").body;
        (prom_sum(&body, "meshlens_collector_accepted_total", &[("signal", "metric_points")]) > 0.0).then_some(())
    });

    // Jaeger: the services, and a trace whose spans come from every hop with correct links.
    let services = collector.json("/api/services");
    for n in ["tester", "frontend", "backend", "store", "db"] {
        assert!(services["data"].as_array().expect("data").iter().any(|s| s == n), "{services}");
    }
    let found = collector.json("/api/traces?service=tester&tag=meshlens.destination.service:frontend&limit=3");
    assert_eq!(found["data"].as_array().map(Vec::len), Some(3), "limit applies: {found}");
    let trace_id = found["data"][0]["traceID"].as_str().expect("trace id").to_owned();
    let trace = collector.json(&format!("/api/traces/{trace_id}"));
    let trace = &trace["data"][0];
    let spans = trace["spans"].as_array().expect("spans");
    // tester CLIENT, then SERVER+CLIENT pairs: frontend→backend, frontend→store, backend→db.
    assert_eq!(spans.len(), 8, "{trace}");
    let service_of = |s: &Value| trace["processes"][s["processID"].as_str().unwrap_or("")]["serviceName"].as_str().unwrap_or("").to_owned();
    let mut services_in_trace: Vec<String> = spans.iter().map(service_of).collect();
    services_in_trace.sort();
    services_in_trace.dedup();
    assert!(services_in_trace.len() >= 3, "{services_in_trace:?}");
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
    let roots: Vec<&Value> = spans.iter().filter(|s| s["references"].as_array().is_none_or(Vec::is_empty)).collect();
    assert_eq!(roots.len(), 1, "one root span");
    assert_eq!(service_of(roots[0]), "tester");
    for s in spans {
        if let Some(parent) = s["references"][0]["spanID"].as_str() {
            assert_eq!(s["references"][0]["refType"], "CHILD_OF");
            assert!(ids.contains(&parent), "span {} has a parent outside the trace", s["spanID"]);
            let parent_span = spans.iter().find(|p| p["spanID"] == parent).expect("parent");
            let kind = |x: &Value| x["tags"].as_array().and_then(|t| t.iter().find(|t| t["key"] == "span.kind")).map(|t| t["value"].clone());
            // Across services a SERVER span's parent is the caller's CLIENT span.
            if service_of(s) != service_of(parent_span) {
                assert_eq!(kind(s), Some("server".into()));
                assert_eq!(kind(parent_span), Some("client".into()));
            }
        }
    }
    let unknown_trace = get(collector.web, "/api/traces/00000000000000000000000000abcdef");
    assert_eq!(unknown_trace.status, 404);
    assert_eq!(unknown_trace.json()["errors"][0]["code"], 404);

    // Access logs, linked to the trace: one per span.
    collector.logs(&format!("trace_id={trace_id}"), 8);
}

#[test]
fn a_port_already_in_use_is_a_clear_error() {
    let dir = TestDir::new("port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut proc = Proc::start(&dir, "collector", &[
        "collector", "--web", &addr,
        "--otlp-grpc", &free_addr().to_string(), "--otlp-http", &free_addr().to_string(),
    ]);
    let code = proc.wait_exit(Duration::from_secs(10));
    assert!(code.is_some_and(|c| c != 0), "exits with an error");
    let out = proc.output();
    assert!(out.contains(&format!("could not bind the web listener on {addr}")), "{out}");
    assert!(out.to_lowercase().contains("address already in use") || out.contains("in use"), "{out}");
}

#[test]
fn the_collector_stops_cleanly_on_sigterm() {
    let dir = TestDir::new("sigterm");
    let mut collector = CollectorProc::start(&dir);
    assert_eq!(collector.proc.terminate(Duration::from_secs(10)), Some(0), "{}", collector.proc.output());
}
