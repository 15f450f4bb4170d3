//! The collector's and a sidecar's `/metrics` as real Prometheus tooling sees them:
//! `promtool check metrics` accepts them, and a real Prometheus (Debian's `prometheus`, started here on a loopback
//! port) scrapes it and answers PromQL for per-edge request rate, error ratio and p99 with
//! the values the test traffic implies.

mod support;

use std::{process::Command, time::Duration};

use serde_json::Value;
use support::{prometheus::*, *};

#[test]
fn promtool_accepts_metrics_and_prometheus_answers_promql() {
    let promtool = require("promtool");
    let dir = TestDir::new("prometheus");
    let collector = CollectorProc::start_with_args(&dir, &["--istio-metrics"]);
    let tester = Workload::new("tester", &[]);
    let front = Workload::new("front", &["http://back/work"]);
    let mut back = Workload::new("back", &[]);
    back.app_args = vec!["--latency".into(), "30ms".into(), "--error-ratio".into(), "0.2".into()];
    let _procs = start_mesh(&dir, &[&tester, &front, &back], collector.grpc);

    let prom = Prometheus::start(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: meshlens\n    static_configs:\n      - targets: ['{}']\n\
             \x20 - job_name: sidecar\n    static_configs:\n      - targets: ['{}']\n",
            collector.web, front.admin
        ),
    );
    let web = prom.web;

    const N: u64 = 200;
    // Spread over several scrapes, so Prometheus sees the counters grow.
    let report = load_with(&dir, tester.outbound, "http://front/", N, &["--rate", "50", "--concurrency", "16"]);
    assert_eq!(report["sent"], N);

    // The exposition passes promtool's lint, but for Istio's own name, which keeps its
    // milliseconds (that name is what Istio dashboards query).
    let exposition = get(collector.web, "/metrics").body;
    let (_, problems) = Command::new(promtool).args(["check", "metrics"]).stdin(std::process::Stdio::piped()).output_with_stdin(exposition.as_bytes());
    let unexpected: Vec<&str> = problems
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("istio_request_duration_milliseconds use base unit"))
        .collect();
    assert!(unexpected.is_empty(), "promtool check metrics: {unexpected:?}");
    let without_istio: String = exposition.lines().filter(|l| !l.contains("istio_")).map(|l| format!("{l}\n")).collect();
    let (clean, problems) = Command::new(require("promtool")).args(["check", "metrics"]).stdin(std::process::Stdio::piped()).output_with_stdin(without_istio.as_bytes());
    assert!(clean, "the meshlens metrics pass promtool cleanly: {problems}");
    // A sidecar's too, in the classic text format a scraper gets that does not ask for
    // OpenMetrics (Prometheus, below, asks for it).
    let sidecar = get(front.admin, "/metrics");
    assert!(sidecar.body.contains("http_client_request_duration_seconds_bucket") && !sidecar.body.contains("# EOF"), "{}", sidecar.body);
    let mut promtool_check = Command::new(require("promtool"));
    promtool_check.args(["check", "metrics"]).stdin(std::process::Stdio::piped());
    let (clean, problems) = promtool_check.output_with_stdin(sidecar.body.as_bytes());
    assert!(clean, "a sidecar's metrics pass promtool cleanly: {problems}");

    // Counts: Prometheus sees exactly the requests sent, once scraped after they arrived.
    let tester_front = "meshlens_requests_total{source_service=\"tester\",destination_service=\"front\"}";
    wait_for("Prometheus to scrape every request", Duration::from_secs(30), || {
        (prom.value(&format!("sum({tester_front})")) == Some(N as f64)).then_some(())
    });
    let rate = wait_for("a request rate", Duration::from_secs(10), || prom.value(&format!("sum(rate({tester_front}[1m]))")));
    assert!(rate > 0.5 && rate < 60.0, "about 50 requests per second over part of the minute: {rate}");

    // Error ratio: what the collector's topology counted.
    let topology = collector.json("/api/v1/topology?window=5m");
    let edge = topology["edges"].as_array().and_then(|e| e.iter().find(|e| e["target"] == "back.test")).expect("front→back").clone();
    let expected_ratio = edge["errors"].as_f64().unwrap_or(0.0) / edge["requests"].as_f64().unwrap_or(1.0);
    let back_total = "meshlens_requests_total{destination_service=\"back\"}";
    let ratio = prom.value(&format!("sum({}) / sum({back_total})", back_total.replace('}', ",classification=\"failure\"}"))).expect("error ratio");
    assert!((ratio - expected_ratio).abs() < 1e-9, "PromQL error ratio {ratio}, topology {expected_ratio}");
    assert!(ratio > 0.05 && ratio < 0.4, "about a fifth of requests fail: {ratio}");

    // p99 from the histogram: the back service takes 30 ms, so its p99 bucket is (25 ms, 50 ms].
    let p99 = wait_for("a p99", Duration::from_secs(10), || {
        prom.value("histogram_quantile(0.99, sum by (le) (rate(meshlens_request_duration_seconds_bucket{destination_service=\"back\"}[1m])))")
            .filter(|v| v.is_finite())
    });
    assert!((0.025..=0.05).contains(&p99), "p99 {p99}s");

    // A sidecar scraped directly (its admin /metrics): the same requests under
    // OpenTelemetry's names, front's outbound calls to back counted as the topology counts
    // them, and their p99 in the same bucket.
    let sidecar_back = "http_client_request_duration_seconds_count{job=\"sidecar\",meshlens_destination_service=\"back\"}";
    wait_for("Prometheus to scrape front's sidecar", Duration::from_secs(30), || {
        (prom.value(&format!("sum({sidecar_back})")) == edge["requests"].as_f64()).then_some(())
    });
    let sidecar_p99 = wait_for("a sidecar p99", Duration::from_secs(10), || {
        prom.value("histogram_quantile(0.99, sum by (le) (rate(http_client_request_duration_seconds_bucket{job=\"sidecar\",meshlens_destination_service=\"back\"}[1m])))")
            .filter(|v| v.is_finite())
    });
    assert!((0.025..=0.05).contains(&sidecar_p99), "sidecar p99 {sidecar_p99}s");
    let sizes = prom.value("sum(http_client_response_body_size_bytes_count{job=\"sidecar\",meshlens_destination_service=\"back\"})");
    assert_eq!(sizes, edge["requests"].as_f64(), "a body size per request");
    // Both processes' own CPU and memory, under the names Prometheus's client libraries use.
    for job in ["sidecar", "meshlens"] {
        let rss = prom.value(&format!("max(process_resident_memory_bytes{{job=\"{job}\"}})")).unwrap_or(0.0);
        let cpu = prom.value(&format!("max(process_cpu_seconds_total{{job=\"{job}\"}})")).unwrap_or(0.0);
        assert!(rss > 1e6 && rss < 1e9 && cpu > 0.0, "{job}: RSS {rss} B, CPU {cpu} s");
    }

    // Istio-compatible names: Kiali's graph query, unchanged, finds the mesh's edges.
    let kiali = "sum(rate(istio_requests_total{reporter=\"source\"}[1m])) by (source_workload, destination_workload, response_code)";
    let rows = wait_for("Kiali's query to answer", Duration::from_secs(10), || {
        let rows = prom.vector(kiali);
        (rows.len() >= 3).then_some(rows)
    });
    let has = |src: &str, dst: &str, code: &str| {
        rows.iter().any(|(m, v)| m["source_workload"] == src && m["destination_workload"] == dst && m["response_code"] == code && *v > 0.0)
    };
    assert!(has("tester-v1", "front-v1", "200"), "{rows:?}");
    assert!(has("front-v1", "back-v1", "200") && has("front-v1", "back-v1", "503"), "{rows:?}");
    let istio_p99 = wait_for("an Istio p99", Duration::from_secs(10), || {
        prom.value("histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter=\"source\",destination_service_name=\"back\"}[1m])))")
            .filter(|v| v.is_finite())
    });
    assert!((25.0..=50.0).contains(&istio_p99), "p99 {istio_p99} ms");
    let total = prom.value("sum(istio_requests_total{destination_service=\"back.test.svc.cluster.local\"})").expect("by service host");
    assert_eq!(total, edge["requests"].as_f64().unwrap_or(0.0));

    // Istio TCP series from the sidecars' per-upstream connection counters: Kiali's TCP
    // graph query finds the same edges, with bytes both ways and connections opened.
    let kiali_tcp = "sum(rate(istio_tcp_sent_bytes_total{reporter=\"source\"}[1m])) by (source_workload, destination_workload)";
    let tcp = wait_for("Kiali's TCP query to answer", Duration::from_secs(20), || {
        let rows = prom.vector(kiali_tcp);
        rows.iter().any(|(m, v)| m["source_workload"] == "front-v1" && m["destination_workload"] == "back-v1" && *v > 0.0).then_some(rows)
    });
    assert!(tcp.iter().any(|(m, _)| m["source_workload"] == "tester-v1" && m["destination_workload"] == "front-v1"), "{tcp:?}");
    let edge_tcp = "{reporter=\"source\",source_workload=\"front-v1\",destination_workload=\"back-v1\",request_protocol=\"tcp\"}";
    let received = prom.value(&format!("sum(istio_tcp_received_bytes_total{edge_tcp})")).unwrap_or(0.0);
    assert!(received > 0.0, "request bytes reached back: {received}");
    assert!(prom.value(&format!("sum(istio_tcp_connections_opened_total{edge_tcp})")).is_some_and(|v| v >= 1.0));

    // Exemplars: OpenMetrics latency buckets name a trace that landed in them; Prometheus
    // stores them, and the trace opens in the Jaeger API.
    let openmetrics = http(collector.web, "GET", "/metrics", &[("accept", "application/openmetrics-text; version=1.0.0")], b"").expect("metrics");
    assert!(openmetrics.body.lines().any(|l| l.starts_with("meshlens_request_duration_seconds_bucket") && l.contains(" # {trace_id=\"")), "no exemplar");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let query = format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        encode("meshlens_request_duration_seconds_bucket{destination_service=\"back\"}"),
        now - 300,
        now + 60
    );
    let trace_id = wait_for("Prometheus to store exemplars", Duration::from_secs(10), || {
        let v: Value = serde_json::from_str(&get(web, &query).body).ok()?;
        v["data"][0]["exemplars"][0]["labels"]["trace_id"].as_str().map(str::to_owned)
    });
    assert_eq!(get(collector.web, &format!("/api/traces/{trace_id}")).status, 200, "the exemplar's trace {trace_id} is stored");
}

/// Runs a command with `input` on its stdin; returns (success, output).
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String);
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String) {
        use std::io::Write;
        let mut child = match self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn() {
            Ok(c) => c,
            Err(e) => return (false, e.to_string()),
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        match child.wait_with_output() {
            Ok(out) => (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
            Err(e) => (false, e.to_string()),
        }
    }
}
