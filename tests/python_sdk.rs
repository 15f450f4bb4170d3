//! Interop with the OpenTelemetry Python SDK (its OTLP gRPC and HTTP exporters): traces,
//! metrics and logs from two services are found through the Jaeger API, SQL, the topology,
//! the logs API and `/metrics`. And with grpcio, gRPC's own library (which the OTLP/gRPC
//! exporter brings): its calls through a sidecar are retried as the service's policy says,
//! and bounded by their deadline rather than the service's timeout; one still open when its
//! sidecar stops is recorded all the same.
//! The Python environment is prepared by `./scripts/test` (`target/otel-venv`), or named by
//! `MESHLENS_OTEL_PYTHON`.

mod support;

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use support::*;

fn python() -> PathBuf {
    let path = std::env::var_os("MESHLENS_OTEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/otel-venv/bin/python"));
    assert!(path.is_file(), "{} is missing: ./scripts/test creates it (a venv with opentelemetry-sdk and the OTLP exporters)", path.display());
    path
}

#[test]
fn python_sdk_traces_metrics_and_logs_arrive() {
    let python = python();
    let dir = TestDir::new("python-sdk");
    let collector = CollectorProc::start(&dir);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/otel_sdk.py");
    let out = command(python)
        .arg(script)
        .arg(format!("http://{}", collector.grpc))
        .arg(format!("http://{}", collector.http))
        .output()
        .expect("run the Python SDK");
    assert!(out.status.success(), "the SDK script failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    let trace_id = printed["trace_id"].as_str().expect("trace id").to_owned();

    // Traces: both services, the SERVER span a child of the CLIENT span, its event and error.
    let trace = wait_for("the SDK trace", Duration::from_secs(10), || {
        let t = collector.json(&format!("/api/traces/{trace_id}"));
        (t["data"][0]["spans"].as_array().map(Vec::len) == Some(2)).then_some(t)
    });
    let trace = &trace["data"][0];
    let services: Vec<&str> = trace["processes"].as_object().expect("processes").values().filter_map(|p| p["serviceName"].as_str()).collect();
    assert!(services.contains(&"py-checkout") && services.contains(&"py-payments"), "{services:?}");
    let spans = trace["spans"].as_array().expect("spans");
    let server = spans.iter().find(|s| !s["references"].as_array().is_none_or(Vec::is_empty)).expect("the child span");
    let client = spans.iter().find(|s| s["references"].as_array().is_none_or(Vec::is_empty)).expect("the root span");
    assert_eq!(server["references"][0]["spanID"], client["spanID"]);
    assert!(server["tags"].as_array().expect("tags").iter().any(|t| t["key"] == "error" && t["value"] == true));
    assert_eq!(server["logs"][0]["fields"][0]["value"], "card declined");

    // SQL: both spans, with their status and parentage, and the log record.
    let rows = collector.sql_rows(&format!(
        "SELECT service, kind, status, parent_span_id IS NULL AS root FROM spans WHERE trace_id = '{trace_id}' ORDER BY service"
    ));
    assert_eq!(
        serde_json::Value::from(rows),
        serde_json::json!([["py-checkout", "client", "unset", true], ["py-payments", "server", "error", false]])
    );
    // The SDK's span contexts as it exported them: the root's parent known not remote (256),
    // the server's remote (768), with the tracestate it continued.
    let rows = collector.sql_rows(&format!("SELECT service, trace_state, flags FROM spans WHERE trace_id = '{trace_id}' ORDER BY service"));
    assert_eq!(
        serde_json::Value::from(rows),
        serde_json::json!([["py-checkout", null, 256], ["py-payments", "congo=t61rcWkgMzE", 768]])
    );
    assert!(server["tags"].as_array().expect("tags").iter().any(|t| t["key"] == "w3c.tracestate" && t["value"] == "congo=t61rcWkgMzE"));
    let rows = collector.sql_rows(&format!("SELECT service, body FROM logs WHERE trace_id = '{trace_id}'"));
    assert_eq!(serde_json::Value::from(rows), serde_json::json!([["py-payments", "payment declined for order 42"]]));
    let rows = collector.sql_rows("SELECT inbound_requests, inbound_errors FROM services WHERE service = 'py-payments'");
    assert_eq!(serde_json::Value::from(rows), serde_json::json!([[1, 1]]));

    // Topology and dependencies: py-checkout → py-payments, failed.
    let topology = collector.json("/api/v1/topology?window=5m");
    let edge = topology["edges"].as_array().and_then(|e| e.iter().find(|e| e["source"] == "py-checkout" && e["target"] == "py-payments")).expect("edge").clone();
    assert_eq!((edge["requests"].as_u64(), edge["errors"].as_u64()), (Some(1), Some(1)), "{edge}");

    // Logs, linked to the trace; metric points and log records counted by transport.
    let logs = collector.json(&format!("/api/v1/logs?trace_id={trace_id}"));
    assert_eq!(logs[0]["body"], "payment declined for order 42", "{logs}");
    assert_eq!(logs[0]["service"], "py-payments");
    let metrics = get(collector.web, "/metrics").body;
    assert!(prom_sum(&metrics, "meshlens_collector_accepted_total", &[("signal", "metric_points"), ("transport", "grpc")]) >= 1.0);
    assert!(prom_sum(&metrics, "meshlens_collector_accepted_total", &[("signal", "log_records"), ("transport", "http")]) >= 1.0);
    assert!(prom_sum(&metrics, "meshlens_collector_accepted_total", &[("signal", "spans"), ("transport", "http")]) >= 1.0);
}

#[test]
fn python_sdk_exports_over_tls_to_a_collector_it_trusts_by_otel_exporter_otlp_certificate() {
    // gRPC's own TLS (grpcio, BoringSSL) and Python's (requests, OpenSSL) against the
    // collector's receivers, the SDK trusting the CA by OpenTelemetry's variable.
    let python = python();
    let dir = TestDir::new("python-sdk-tls");
    let pki = Pki::new(&dir, "sdk").expect("a test CA");
    let (cert, key) = pki.issue("collector", &["localhost", "127.0.0.1"]).expect("a test certificate");
    let (cert, key) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    let collector = CollectorProc::start_with_args(&dir, &["--otlp-tls-cert", &cert, "--otlp-tls-key", &key]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/otel_sdk.py");
    let out = command(python)
        .arg(script)
        .arg(format!("https://localhost:{}", collector.grpc.port()))
        .arg(format!("https://127.0.0.1:{}", collector.http.port()))
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca)
        // requests lets these variables override the CA file a session is given, which is
        // how the SDK's OTLP/HTTP exporter passes OTEL_EXPORTER_OTLP_CERTIFICATE on.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .expect("run the Python SDK");
    assert!(out.status.success(), "the SDK script failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    let trace_id = printed["trace_id"].as_str().expect("trace id").to_owned();
    let spans = format!("SELECT service FROM spans WHERE trace_id = '{trace_id}' ORDER BY service");
    let rows = wait_for("the SDK's spans", Duration::from_secs(10), || Some(collector.sql_rows(&spans)).filter(|r| r.len() == 2));
    assert_eq!(serde_json::Value::from(rows), serde_json::json!([["py-checkout"], ["py-payments"]]), "over gRPC and HTTP");
    let logs = format!("SELECT service, body FROM logs WHERE trace_id = '{trace_id}'");
    let rows = wait_for("the SDK's log record", Duration::from_secs(10), || Some(collector.sql_rows(&logs)).filter(|r| !r.is_empty()));
    assert_eq!(serde_json::Value::from(rows), serde_json::json!([["py-payments", "payment declined for order 42"]]));
    let metrics = get(collector.web, "/metrics").body;
    assert!(prom_sum(&metrics, "meshlens_collector_accepted_total", &[("signal", "metric_points"), ("transport", "grpc")]) >= 1.0);
    for transport in ["grpc", "http"] {
        let labels = [("transport", transport), ("outcome", "ok")];
        assert!(prom_sum(&metrics, "meshlens_collector_tls_handshakes_total", &labels) >= 1.0, "{transport}: {metrics}");
    }
}

#[test]
fn grpcio_calls_through_a_sidecar_are_retried_on_unavailable() {
    let python = python();
    let dir = TestDir::new("grpcio-retry");
    let Flaky { collector, tester, _procs } = Flaky::start(&dir, "unavailable");
    let script = grpc_calls_script();
    const CALLS: u64 = 40;
    let out = command(python)
        .arg(script)
        .args([tester.outbound.to_string(), "flaky".into(), "/demo.Flaky/Work".into(), CALLS.to_string()])
        .output()
        .expect("run the grpcio client");
    assert!(out.status.success(), "the grpcio script failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    // flaky fails half its calls with UNAVAILABLE; four attempts leave about 1 in 16.
    let ok = printed["ok"].as_u64().unwrap_or(0);
    assert!(ok >= CALLS * 3 / 4, "most calls succeed: {printed}");
    assert!(printed["codes"].as_object().is_some_and(|c| c.keys().all(|k| k == "UNAVAILABLE")), "{printed}");
    let retries = prom_sum(&get(tester.admin, "/metrics").body, "meshlens_proxy_request_retries_total", &[("service", "flaky")]);
    assert!(retries >= 5.0, "about 40 retries expected, {retries} counted");
    // The edge counts calls, not attempts, and its retries.
    let edge = wait_for("the tester → flaky edge", Duration::from_secs(15), || {
        let topology = collector.json("/api/v1/topology?window=5m");
        let edges = topology["edges"].as_array()?.clone();
        edges.into_iter().find(|e| e["source"] == "tester.test" && e["target"] == "flaky.test" && e["requests"] == CALLS)
    });
    assert_eq!((edge["protocol"].as_str(), edge["retries"].as_f64()), (Some("grpc"), Some(retries)), "{edge}");
}

/// `slow`, answering after `latency`, and a tester whose sidecar has `settings` in slow's
/// entry, both reporting to one collector.
struct SlowMesh {
    collector: CollectorProc,
    tester: Workload,
    slow: Workload,
    /// The processes (slow's and the tester's sidecar), stopped when dropped.
    _procs: (Vec<Proc>, Proc),
}

impl SlowMesh {
    fn start(dir: &TestDir, latency: &str, settings: &str) -> Self {
        let collector = CollectorProc::start(dir);
        let tester = Workload::new("tester", &[]);
        let mut slow = Workload::new("slow", &[]);
        slow.app_args = vec!["--latency".into(), latency.into()];
        let procs = start_mesh(dir, &[&slow], collector.grpc);
        let sidecar = start_tester(dir, &tester, &[&tester, &slow], &collector, "slow", settings);
        Self { collector, tester, slow, _procs: (procs, sidecar) }
    }
}

fn grpc_calls_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/grpc_calls.py")
}

/// Makes `n` grpcio calls through `tester`'s sidecar to `slow`, each allowed `deadline`
/// seconds: what the script printed.
fn slow_calls(python: &std::path::Path, tester: &Workload, n: u32, deadline: &str) -> Value {
    let out = command(python)
        .arg(grpc_calls_script())
        .args([tester.outbound.to_string(), "slow".into(), "/demo.Slow/Work".into(), n.to_string(), deadline.into()])
        .output()
        .expect("run the grpcio client");
    assert!(out.status.success(), "the grpcio script failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

/// A process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn grpcio_streams_count_their_messages_on_both_sides() {
    let python = python();
    let dir = TestDir::new("grpcio-stream");
    let collector = CollectorProc::start(&dir);
    let (tester, feed) = (Workload::new("tester", &[]), Workload::new("feed", &[]));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/grpc_stream.py");
    let server = command(&python).arg(&script).args(["serve", &feed.app.to_string()]).spawn().expect("the grpcio server");
    let _server = Killed(server);
    wait_listening(feed.app, "the grpcio server");
    let config = dir.path("feed.toml");
    std::fs::write(&config, sidecar_toml(&feed, &[&tester, &feed], collector.grpc)).expect("write");
    let _feed = Proc::start(&dir, "feed-sidecar", &["proxy", "--config", config.to_str().unwrap_or_default()]);
    wait_listening(feed.inbound, "feed's inbound");
    let _tester = start_tester(&dir, &tester, &[&tester, &feed], &collector, "feed", "");

    let out = command(&python).arg(&script).args(["call", &tester.outbound.to_string(), "feed", "25"]).output().expect("the client");
    assert!(out.status.success(), "the grpcio client failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "25", "every message came through");
    let rows = wait_for("both sides' spans of the stream", Duration::from_secs(15), || {
        let rows = collector.sql_rows("SELECT kind, attributes FROM spans WHERE operation = 'demo.Feed/Watch' ORDER BY kind");
        (rows.len() == 2).then_some(rows)
    });
    for row in &rows {
        let attributes: Value = serde_json::from_str(row[1].as_str().unwrap_or_default()).expect("attributes as JSON");
        let messages = (&attributes["meshlens.grpc.request_messages"], &attributes["meshlens.grpc.response_messages"]);
        assert_eq!(messages, (&Value::from(1), &Value::from(25)), "{row:?}");
    }
    // The topology's gRPC edge, and its SQL rows, count the messages.
    let edge = wait_for("the tester → feed edge", Duration::from_secs(15), || {
        let topology = collector.json("/api/v1/topology?window=5m");
        topology["edges"].as_array()?.iter().find(|e| e["source"] == "tester.test" && e["target"] == "feed.test").cloned()
    });
    let counts = (&edge["requests"], &edge["request_messages"], &edge["response_messages"]);
    assert_eq!(counts, (&Value::from(1), &Value::from(1), &Value::from(25)), "{edge}");
    let sql = collector.sql_rows("SELECT sum(request_messages), sum(response_messages) FROM edges WHERE destination_service = 'feed'");
    assert_eq!(sql, [serde_json::json!([1, 25])], "the edges table");
    let exposition = get(tester.admin, "/metrics").body;
    let sum = prom_sum(&exposition, "rpc_client_responses_per_rpc_sum", &[]);
    let within_25 = prom_sum(&exposition, "rpc_client_responses_per_rpc_bucket", &[("le", "25.0")]);
    let within_10 = prom_sum(&exposition, "rpc_client_responses_per_rpc_bucket", &[("le", "10.0")]);
    assert_eq!((sum, within_10, within_25), (25.0, 0.0, 1.0), "one call of 25 messages: {exposition}");
}

#[test]
fn grpcio_calls_are_bounded_by_their_deadline_capped_by_a_timeout_set_for_the_service() {
    let python = python();
    let dir = TestDir::new("grpcio-deadline");
    // No timeout set for `slow`: a call allowed 5 s takes its 800 ms; allowed 400 ms it
    // runs out of time.
    let mesh = SlowMesh::start(&dir, "800ms", "");
    assert_eq!(slow_calls(&python, &mesh.tester, 3, "5"), serde_json::json!({"ok": 3, "codes": {}}));
    // Unary calls: one message each way, on both sides' spans and in the caller's sidecar's
    // messages-per-call histograms.
    let spans = wait_for("both sides' spans of the three calls", Duration::from_secs(15), || {
        let rows = mesh.collector.sql_rows("SELECT kind, attributes FROM spans WHERE operation = 'demo.Slow/Work'");
        (rows.len() == 6).then_some(rows)
    });
    for row in &spans {
        let attributes: Value = serde_json::from_str(row[1].as_str().unwrap_or_default()).expect("attributes as JSON");
        let messages = (&attributes["meshlens.grpc.request_messages"], &attributes["meshlens.grpc.response_messages"]);
        assert_eq!(messages, (&Value::from(1), &Value::from(1)), "{row:?}");
    }
    let exposition = get(mesh.tester.admin, "/metrics").body;
    for family in ["rpc_client_requests_per_rpc", "rpc_client_responses_per_rpc"] {
        let (count, sum) = (prom_sum(&exposition, &format!("{family}_count"), &[]), prom_sum(&exposition, &format!("{family}_sum"), &[]));
        assert_eq!((count, sum), (3.0, 3.0), "{family} in {exposition}");
    }
    assert_eq!(slow_calls(&python, &mesh.tester, 3, "0.4"), serde_json::json!({"ok": 0, "codes": {"DEADLINE_EXCEEDED": 3}}));
    drop(mesh);

    // A timeout of 300 ms set for `slow`: HTTP requests get 504 UT, and it caps a call's
    // deadline too, the sidecar answering long before the caller's 5 s.
    let dir = TestDir::new("grpcio-deadline-capped");
    let mesh = SlowMesh::start(&dir, "800ms", "timeout = \"300ms\"\n");
    let http = http(mesh.tester.outbound, "GET", "/", &[("host", "slow")], b"").expect("an answer");
    assert_eq!(http.status, 504, "{}", http.body);
    let started = std::time::Instant::now();
    assert_eq!(slow_calls(&python, &mesh.tester, 1, "5"), serde_json::json!({"ok": 0, "codes": {"DEADLINE_EXCEEDED": 1}}));
    assert!(started.elapsed() < Duration::from_secs(4), "cut by the sidecar at 300 ms: {:?}", started.elapsed());
}

#[test]
fn a_grpcio_call_allowed_longer_than_the_default_http_timeout_is_not_cut_at_it() {
    let python = python();
    let dir = TestDir::new("grpcio-long-call");
    // No timeout set for `slow`, whose calls take 16 s: HTTP requests would get 504 at the
    // default 15 s; a call allowed 30 s gets its answer.
    let mesh = SlowMesh::start(&dir, "16s", "");
    assert_eq!(slow_calls(&python, &mesh.tester, 1, "30"), serde_json::json!({"ok": 1, "codes": {}}));
}

#[test]
fn a_grpc_call_still_open_when_its_sidecar_stops_is_recorded() {
    let python = python();
    let dir = TestDir::new("grpcio-shutdown");
    let SlowMesh { collector, tester, slow, mut _procs } = SlowMesh::start(&dir, "20s", "");
    let script = grpc_calls_script();
    // One call, over HTTP/2, that the app would answer in 20 s; the sidecar stops meanwhile,
    // gives it its grace period, closes it, and records it before its last export.
    let call = command(&python)
        .arg(&script)
        .args([tester.outbound.to_string(), "slow".into(), "/demo.Slow/Work".into(), "1".into(), "30".into()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the grpcio client");
    // The call is out once the tester's sidecar holds a connection to the slow one open (the
    // client can take seconds to start on a busy machine; the start's port probes are closed).
    wait_for("the call to reach the slow workload's sidecar", Duration::from_secs(30), || {
        let metrics = get(slow.admin, "/metrics").body;
        let count = |name| prom_sum(&metrics, name, &[("direction", "inbound")]);
        let open = count("meshlens_proxy_tcp_connections_opened_total") - count("meshlens_proxy_tcp_connections_closed_total");
        (open >= 1.0).then_some(())
    });
    assert_eq!(_procs.1.terminate(Duration::from_secs(15)), Some(0), "a clean stop");
    let out = call.wait_with_output().expect("the grpcio client");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(printed["ok"], 0, "the call was cut: {printed}");
    let row = wait_for("the stopped sidecar's span of the call", Duration::from_secs(15), || {
        let rows = collector.sql_rows("SELECT status, response_flags, events FROM spans WHERE kind = 'client' AND service = 'tester'");
        rows.into_iter().next()
    });
    assert_eq!((row[0].as_str(), row[1].as_str()), (Some("error"), Some("-")), "{row:?}");
    assert!(row[2].as_str().is_some_and(|e| e.contains("\"sidecar_shutdown\"")), "{row:?}");
}
