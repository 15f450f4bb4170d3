//! Export never hurts traffic: with the collector down, silent, or refusing, every request
//! still succeeds, telemetry is dropped and counted on the sidecar's admin `/metrics`,
//! memory stays bounded, and export resumes by itself when the collector returns; a
//! collector slow to answer still gets every record, and so does one receiving
//! compressed exports. Over OTLP/HTTP too: every record reaches the collector, a collector
//! answering 429 or 503 is retried after the `Retry-After` it sent, and one answering 400
//! is not retried. Each signal goes where its settings say, over the transport and with the
//! compression they say, retried for the time they say, and one whose backend is down drops alone; the sidecar's process
//! figures go out with its metrics.

mod support;

use std::{net::SocketAddr, time::Duration};

use support::*;

const EXPORT: &str = "queue_capacity = 64\nmax_batch = 32\nexport_timeout = \"300ms\"\nmax_retry_time = \"600ms\"";

fn admin_metric(w: &Workload, metric: &str, labels: &[(&str, &str)]) -> f64 {
    prom_sum(&get(w.admin, "/metrics").body, metric, labels)
}

fn mesh(dir: &TestDir, otlp: SocketAddr, telemetry: &str) -> (Workload, Workload, Vec<Proc>) {
    mesh_configured(dir, otlp, &format!("{EXPORT}\n{telemetry}"))
}

/// The tester and the front, their sidecars' `[telemetry]` holding `telemetry` only.
fn mesh_configured(dir: &TestDir, otlp: SocketAddr, telemetry: &str) -> (Workload, Workload, Vec<Proc>) {
    let mut tester = Workload::new("tester", &[]);
    let mut front = Workload::new("front", &[]);
    tester.telemetry = telemetry.to_owned();
    front.telemetry = telemetry.to_owned();
    let procs = start_mesh(dir, &[&tester, &front], otlp);
    (tester, front, procs)
}

/// Sends `n` requests; all must succeed.
fn traffic(dir: &TestDir, tester: &Workload, n: u64) {
    let report = load(dir, tester.outbound, "http://front/", n);
    assert_eq!(report["succeeded"], n, "traffic is unaffected: {report}");
}

/// Waits until the tester's sidecar has counted `n` spans and `n` access-log records as
/// exported. Each signal on its own: the metrics' data points count under the same metric,
/// and the two record signals close their batches half a flush interval apart.
fn wait_for_spans_and_logs(tester: &Workload, n: u64) {
    wait_for("the tester's spans and access logs to be exported", Duration::from_secs(15), || {
        let exported = |signal| admin_metric(tester, "meshlens_proxy_telemetry_exported_total", &[("signal", signal)]);
        (exported("spans") >= n as f64 && exported("logs") >= n as f64).then_some(())
    });
}

#[test]
fn collector_down_then_back() {
    let dir = TestDir::new("down");
    let otlp = free_addr();
    let (tester, _front, procs) = mesh(&dir, otlp, "");
    traffic(&dir, &tester, 1000);

    wait_for("drops to be counted", Duration::from_secs(10), || {
        let dropped = admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("signal", "spans")]);
        (dropped > 0.0).then_some(())
    });
    assert!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("reason", "queue_full")]) > 0.0);
    assert!(admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[("reason", "unavailable")]) > 0.0);
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_exported_total", &[("signal", "spans")]), 0.0);
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_exported_bytes_total", &[("signal", "spans")]), 0.0);
    let rss = procs[0].rss_bytes().expect("rss");
    assert!(rss < 64 << 20, "sidecar memory stays bounded: {} MiB", rss >> 20);

    // The collector comes up on the same address: export resumes without a restart.
    let collector = CollectorProc::start_at(&dir, &dir.path("data"), "collector", otlp);
    traffic(&dir, &tester, 50);
    wait_for("export to resume", Duration::from_secs(20), || {
        let t = collector.json("/api/v1/topology?window=5m");
        t["edges"].as_array()?.iter().find(|e| e["source"] == "tester.test" && e["requests"].as_u64() >= Some(50)).map(|_| ())
    });
    // The collector applies a request before it answers: the sidecar counts the export a
    // moment after the topology shows it.
    wait_for("the sidecar to count the exported logs", Duration::from_secs(10), || {
        (admin_metric(&tester, "meshlens_proxy_telemetry_exported_total", &[("signal", "logs")]) >= 50.0).then_some(())
    });
}

#[test]
fn large_records_while_the_collector_is_down_keep_memory_bounded() {
    let dir = TestDir::new("down-large");
    // The default queues (4,096 records a signal); each request's path is 60 KB, so its
    // access log takes about 120 KB (the path as an attribute and in the line; its span cuts
    // its URLs to 256 bytes).
    let (tester, _front, procs) = mesh_configured(&dir, free_addr(), "");
    let call = format!("http://front/{}", "a".repeat(60_000));
    let report = load_with(&dir, tester.outbound, &call, 4_500, &["--rate", "1500", "--concurrency", "16"]);
    assert_eq!(report["failed"], 0, "traffic is unaffected: {report}");
    let dropped = admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("signal", "logs"), ("reason", "queue_full")]);
    // 8 MiB of 120 KB records is about 70; the record bound alone would have held 4,096,
    // and the sidecar grew to about 1 GiB.
    assert!(dropped > 4_000.0, "records past the byte bound are dropped and counted: {dropped}");
    let rss = procs[0].rss_bytes().expect("rss");
    assert!(rss < 96 << 20, "sidecar memory stays bounded: {} MiB", rss >> 20);
}

#[test]
fn a_collector_that_never_answers_costs_nothing_but_telemetry() {
    let dir = TestDir::new("blackhole");
    // Accepts connections and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let otlp = hole.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hole.incoming().take(64).flatten() {
            held.push(stream);
        }
    });
    let (tester, _front, _procs) = mesh(&dir, otlp, "");
    traffic(&dir, &tester, 500);
    wait_for("timed-out exports to be dropped and counted", Duration::from_secs(15), || {
        (admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]) > 0.0).then_some(())
    });
}

mod fake {
    //! Collectors that misbehave: one out of room (RESOURCE_EXHAUSTED with a RetryInfo), one
    //! slow to answer. They keep what the tests look for: export headers, trace IDs, process
    //! figures.
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::{
            Arc, Mutex,
            atomic::{AtomicU64, Ordering},
        },
        time::Duration,
    };

    use opentelemetry_proto::tonic::collector::{
        logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_server::{LogsService, LogsServiceServer}},
        metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_service_server::{MetricsService, MetricsServiceServer}},
        trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::{TraceService, TraceServiceServer}},
    };
    use tonic::{Code, Request, Response, Status, codec::CompressionEncoding::Gzip};

    /// A process figure's `service.name`, metric name and `cpu.mode` (or empty).
    pub type FigureKey = (String, String, String);

    /// How the fake collector answers every export.
    #[derive(Clone, Copy)]
    pub enum Answer {
        /// RESOURCE_EXHAUSTED, asking to come back in 200 ms.
        Full,
        /// OK, after this long.
        After(Duration),
    }

    /// A fake collector; counts the spans and log records it accepted, and keeps the
    /// export headers ([`super::EXPORT_HEADERS`]) each request came with.
    #[derive(Clone)]
    pub struct Fake {
        answer: Answer,
        pub spans: Arc<AtomicU64>,
        pub logs: Arc<AtomicU64>,
        pub headers: Arc<Mutex<BTreeSet<String>>>,
        /// The trace IDs of the spans exported, and of the duration histograms' exemplars.
        pub span_traces: Arc<Mutex<BTreeSet<Vec<u8>>>>,
        pub exemplar_traces: Arc<Mutex<BTreeSet<Vec<u8>>>>,
        /// The latest `process.*` figures, by `service.name`, metric name and `cpu.mode`.
        pub process: Arc<Mutex<BTreeMap<FigureKey, f64>>>,
        /// Each metrics export's outbound request durations: their temporality (an
        /// `AggregationTemporality` number) and the count over their points.
        pub client_durations: Arc<Mutex<Vec<(i32, u64)>>>,
        /// Each `process.cpu.time` point's `service.name`, temporality and value.
        pub cpu_times: Arc<Mutex<Vec<(String, i32, f64)>>>,
        /// The `service.name` and temporality of each export's requests in flight.
        pub in_flight: Arc<Mutex<Vec<(String, i32)>>>,
    }

    impl Fake {
        fn saw<R>(&self, r: &Request<R>) {
            let value = |name: &str| r.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let seen = super::EXPORT_HEADERS.map(value).join("|");
            self.headers.lock().expect("lock").insert(seen);
        }

        async fn answer<T: Default>(&self, records: usize, accepted: &AtomicU64) -> Result<Response<T>, Status> {
            match self.answer {
                Answer::Full => {
                    let details = meshlens_common::rpc::status_with_retry(8, "collector full", Duration::from_millis(200));
                    Err(Status::with_details(Code::ResourceExhausted, "collector full", details.into()))
                }
                Answer::After(delay) => {
                    tokio::time::sleep(delay).await;
                    accepted.fetch_add(records as u64, Ordering::Relaxed);
                    Ok(Response::new(T::default()))
                }
            }
        }
    }

    #[tonic::async_trait]
    impl TraceService for Fake {
        async fn export(&self, r: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
            self.saw(&r);
            let spans = r.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans);
            self.span_traces.lock().expect("lock").extend(spans.map(|s| s.trace_id.clone()));
            let n = r.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            self.answer(n, &self.spans).await
        }
    }
    #[tonic::async_trait]
    impl LogsService for Fake {
        async fn export(&self, r: Request<ExportLogsServiceRequest>) -> Result<Response<ExportLogsServiceResponse>, Status> {
            self.saw(&r);
            let n = r.get_ref().resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
            self.answer(n, &self.logs).await
        }
    }
    #[tonic::async_trait]
    impl MetricsService for Fake {
        async fn export(&self, r: Request<ExportMetricsServiceRequest>) -> Result<Response<ExportMetricsServiceResponse>, Status> {
            self.saw(&r);
            use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
            let metrics = r.get_ref().resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics);
            let points = metrics.filter_map(|m| match &m.data {
                Some(Data::Histogram(h)) if m.name.ends_with(".request.duration") => Some(&h.data_points),
                _ => None,
            });
            let exemplars = points.flatten().flat_map(|p| &p.exemplars).map(|e| e.trace_id.clone());
            self.exemplar_traces.lock().expect("lock").extend(exemplars);
            let by_service = r.get_ref().resource_metrics.iter().flat_map(|r| {
                let service = string_attribute(r.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default(), "service.name");
                r.scope_metrics.iter().flat_map(|s| &s.metrics).map(move |m| (service.clone(), m))
            });
            for (service, m) in by_service {
                match &m.data {
                    Some(Data::Histogram(h)) if m.name == "http.client.request.duration" => {
                        let count = h.data_points.iter().map(|p| p.count).sum();
                        self.client_durations.lock().expect("lock").push((h.aggregation_temporality, count));
                    }
                    Some(Data::Sum(sum)) if m.name == "process.cpu.time" => {
                        let values = sum.data_points.iter().map(|p| match p.value {
                            Some(Value::AsDouble(v)) => (service.clone(), sum.aggregation_temporality, v),
                            _ => (service.clone(), sum.aggregation_temporality, f64::NAN),
                        });
                        self.cpu_times.lock().expect("lock").extend(values);
                    }
                    Some(Data::Sum(sum)) if m.name == "meshlens.proxy.active_requests" => {
                        self.in_flight.lock().expect("lock").push((service, sum.aggregation_temporality));
                    }
                    _ => {}
                }
            }
            for resource_metrics in &r.get_ref().resource_metrics {
                let resource = resource_metrics.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
                let service = string_attribute(resource, "service.name");
                let metrics = resource_metrics.scope_metrics.iter().flat_map(|s| &s.metrics).filter(|m| m.name.starts_with("process."));
                for m in metrics {
                    let Some(Data::Sum(sum)) = &m.data else { continue };
                    for p in &sum.data_points {
                        let value = match p.value {
                            Some(Value::AsDouble(v)) => v,
                            Some(Value::AsInt(v)) => v as f64,
                            None => f64::NAN,
                        };
                        let key = (service.clone(), m.name.clone(), string_attribute(&p.attributes, "cpu.mode"));
                        self.process.lock().expect("lock").insert(key, value);
                    }
                }
            }
            self.answer(0, &AtomicU64::new(0)).await
        }
    }

    /// The string value of `key` among `attributes`, or empty.
    fn string_attribute(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> String {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let value = attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref());
        match value {
            Some(Value::StringValue(s)) => s.clone(),
            _ => String::new(),
        }
    }

    /// Serves a fake collector answering `answer` on `listener` in the background.
    pub fn serve(runtime: &tokio::runtime::Runtime, listener: std::net::TcpListener, answer: Answer) -> Fake {
        let fake = Fake {
            answer,
            spans: Arc::default(),
            logs: Arc::default(),
            headers: Arc::default(),
            span_traces: Arc::default(),
            exemplar_traces: Arc::default(),
            process: Arc::default(),
            client_durations: Arc::default(),
            cpu_times: Arc::default(),
            in_flight: Arc::default(),
        };
        let served = fake.clone();
        runtime.spawn(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(served.clone()).accept_compressed(Gzip))
                .add_service(LogsServiceServer::new(served.clone()).accept_compressed(Gzip))
                .add_service(MetricsServiceServer::new(served).accept_compressed(Gzip))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        fake
    }
}

/// A fake collector answering `answer` on a port of its own, and the mesh exporting to it
/// (with `telemetry`'s further settings).
fn mesh_exporting_to(
    dir: &TestDir,
    runtime: &tokio::runtime::Runtime,
    answer: fake::Answer,
    telemetry: &str,
) -> (fake::Fake, Workload, Vec<Proc>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let collector = fake::serve(runtime, listener, answer);
    let (tester, _front, procs) = mesh(dir, otlp, telemetry);
    (collector, tester, procs)
}

#[test]
fn a_refusing_collector_is_retried_as_it_asks_then_given_up_on() {
    let dir = TestDir::new("refusing");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (_collector, tester, _procs) = mesh_exporting_to(&dir, &runtime, fake::Answer::Full, "");
    traffic(&dir, &tester, 300);
    wait_for("refused batches to be retried, then dropped", Duration::from_secs(15), || {
        let retried = admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[("reason", "resource_exhausted")]);
        let dropped = admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]);
        (retried > 0.0 && dropped > 0.0).then_some(())
    });
}

#[test]
fn each_signal_retries_a_refusing_collector_for_its_own_time() {
    // Spans and metrics give up after the shared 600 ms; access logs keep trying for 20 s
    // (`[telemetry.logs] max_retry_time`, as `OTEL_BLRP_EXPORT_TIMEOUT` sets it).
    let dir = TestDir::new("retry-times");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (_collector, tester, _procs) = mesh_exporting_to(&dir, &runtime, fake::Answer::Full, "logs = { max_retry_time = \"20s\" }");
    traffic(&dir, &tester, 300);
    let failed = |signal| {
        admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("signal", signal), ("reason", "export_failed")])
    };
    wait_for("the spans to be given up on", Duration::from_secs(15), || (failed("spans") > 0.0).then_some(()));
    let logs_retried = admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[("signal", "logs")]);
    assert!(logs_retried > 0.0 && failed("logs") == 0.0, "logs retried {logs_retried} times, dropped {}", failed("logs"));
}

#[test]
fn a_collector_slow_to_answer_still_gets_every_record() {
    // Each export is answered after 200 ms. One request out at a time carries at most a
    // batch (32 records) per 200 ms, 160 a second: at 300 req/s the 64-record queue would
    // overflow within a second. Several out at once keep up.
    let dir = TestDir::new("slow");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (collector, tester, _procs) = mesh_exporting_to(&dir, &runtime, fake::Answer::After(Duration::from_millis(200)), "");
    let n = 600;
    let report = load_with(&dir, tester.outbound, "http://front/", n, &["--rate", "300", "--concurrency", "8"]);
    assert_eq!(report["succeeded"], n, "traffic is unaffected: {report}");
    wait_for_spans_and_logs(&tester, n);
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0);
    // Both sidecars export: the tester's outbound records and the front's inbound ones.
    let spans = collector.spans.load(std::sync::atomic::Ordering::Relaxed);
    let logs = collector.logs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(spans >= n && logs >= n, "{spans} spans and {logs} log records reached the collector");
}

#[test]
fn compressed_exports_reach_the_collector_whole() {
    // Compressed, the export tasks run on a thread of their own; without, on the request
    // runtime (the tests above): both deliver every record, here to the real collector.
    for compression in ["gzip", "zstd"] {
        let dir = TestDir::new(compression);
        let otlp = free_addr();
        let collector = CollectorProc::start_at(&dir, &dir.path("data"), "collector", otlp);
        let (tester, _front, _procs) = mesh(&dir, otlp, &format!("compression = \"{compression}\""));
        let n = 200;
        traffic(&dir, &tester, n);
        wait_for_spans_and_logs(&tester, n);
        assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0, "{compression}");
        let spans = collector.sql_rows("SELECT count(*) FROM spans WHERE service = 'tester' AND kind = 'client'");
        let logs = collector.sql_rows("SELECT count(*) FROM logs WHERE service = 'tester'");
        let stored = (spans[0][0].as_u64(), logs[0][0].as_u64());
        assert_eq!(stored, (Some(n), Some(n)), "every span and access-log record stored ({compression})");
        // Bytes are counted before compression: a span with its attributes is several
        // hundred bytes of protobuf, compression makes these near-identical records a
        // fraction of that.
        let span_bytes = admin_metric(&tester, "meshlens_proxy_telemetry_exported_bytes_total", &[("signal", "spans")]) / n as f64;
        assert!((300.0..5000.0).contains(&span_bytes), "{span_bytes} bytes per exported span");
    }
}

#[test]
fn otlp_http_exports_reach_the_collector_whole() {
    let dir = TestDir::new("otlp-http");
    let collector = CollectorProc::start(&dir);
    let (tester, _front, _procs) = mesh(&dir, collector.http, "otlp_protocol = \"http/protobuf\"");
    let n = 200;
    traffic(&dir, &tester, n);
    wait_for_spans_and_logs(&tester, n);
    wait_for("the request metrics to be exported over HTTP", Duration::from_secs(10), || {
        (admin_metric(&tester, "meshlens_proxy_telemetry_exported_total", &[("signal", "metrics")]) > 0.0).then_some(())
    });
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0);
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[]), 0.0);
    let spans = collector.sql_rows("SELECT count(*) FROM spans WHERE service = 'tester' AND kind = 'client'");
    let logs = collector.sql_rows("SELECT count(*) FROM logs WHERE service = 'tester'");
    assert_eq!((spans[0][0].as_u64(), logs[0][0].as_u64()), (Some(n), Some(n)), "every span and access-log record stored");
}

mod fake_http {
    //! An OTLP/HTTP collector that refuses every export for a while with one status (and
    //! perhaps a `Retry-After`), then takes them; it notes when a refused request comes back.
    use std::{
        collections::HashMap,
        hash::{DefaultHasher, Hash, Hasher},
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, body::Incoming, service::service_fn};
    use opentelemetry_proto::tonic::collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest};
    use prost::Message;

    /// What the fake saw.
    #[derive(Default)]
    pub struct Seen {
        /// Export requests refused.
        pub refused: u64,
        /// Spans and log records taken.
        pub spans: u64,
        pub logs: u64,
        /// For each refused request sent again (the same bytes): how long after its refusal.
        pub resent_after: Vec<Duration>,
        /// The export headers ([`super::EXPORT_HEADERS`]) requests came with.
        pub headers: std::collections::BTreeSet<String>,
        /// The paths requests were posted to.
        pub paths: std::collections::BTreeSet<String>,
        started: Option<Instant>,
        refused_at: HashMap<u64, Instant>,
    }

    /// How the fake answers.
    #[derive(Clone, Copy)]
    pub struct Refusal {
        /// For how long after the first export request it refuses.
        pub for_: Duration,
        pub status: u16,
        pub retry_after: Option<&'static str>,
    }

    fn answer(seen: &Mutex<Seen>, refusal: Refusal, path: &str, headers: &hyper::HeaderMap, body: &Bytes) -> Response<Full<Bytes>> {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let (digest, now) = (hasher.finish(), Instant::now());
        let mut seen = seen.lock().expect("lock");
        let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        seen.headers.insert(super::EXPORT_HEADERS.map(value).join("|"));
        seen.paths.insert(path.to_owned());
        let started = *seen.started.get_or_insert(now);
        if let Some(at) = seen.refused_at.remove(&digest) {
            seen.resent_after.push(now - at);
        }
        if now - started < refusal.for_ {
            seen.refused += 1;
            seen.refused_at.insert(digest, now);
            let status = meshlens_common::rpc::RpcStatus { code: 14, message: "not now".into(), details: vec![] };
            let mut response = Response::builder().status(refusal.status).header("content-type", "application/x-protobuf");
            if let Some(after) = refusal.retry_after {
                response = response.header("retry-after", after);
            }
            return response.body(Full::new(Bytes::from(status.encode_to_vec()))).expect("response");
        }
        match path {
            p if p.ends_with("/v1/traces") => {
                let r = ExportTraceServiceRequest::decode(body.clone()).expect("traces");
                seen.spans += r.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum::<u64>();
            }
            p if p.ends_with("/v1/logs") => {
                let r = ExportLogsServiceRequest::decode(body.clone()).expect("logs");
                seen.logs += r.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum::<u64>();
            }
            _ => {}
        }
        Response::builder().header("content-type", "application/x-protobuf").body(Full::new(Bytes::new())).expect("response")
    }

    /// Serves the fake on `listener` in the background.
    pub fn serve(runtime: &tokio::runtime::Runtime, listener: std::net::TcpListener, refusal: Refusal) -> Arc<Mutex<Seen>> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        runtime.spawn(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((stream, _)) = listener.accept().await {
                let seen = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (path, headers) = (request.uri().path().to_owned(), request.headers().clone());
                            let body = request.into_body().collect().await?.to_bytes();
                            Ok::<_, hyper::Error>(answer(&seen, refusal, &path, &headers, &body))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        seen
    }
}

/// A fake OTLP/HTTP collector refusing as `refusal` says, and the mesh exporting to it over
/// OTLP/HTTP with `telemetry`.
fn mesh_exporting_over_http(
    dir: &TestDir,
    runtime: &tokio::runtime::Runtime,
    refusal: fake_http::Refusal,
    telemetry: &str,
) -> (std::sync::Arc<std::sync::Mutex<fake_http::Seen>>, Workload, Vec<Proc>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let seen = fake_http::serve(runtime, listener, refusal);
    let (tester, _front, procs) = mesh_configured(dir, otlp, &format!("otlp_protocol = \"http/protobuf\"\n{telemetry}"));
    (seen, tester, procs)
}

#[test]
fn an_otlp_http_collector_asking_to_wait_is_retried_after_its_retry_after() {
    // Every export is answered 429 or 503 with `Retry-After: 2` for the first 1.5 s, then
    // taken. Each refused batch is sent again once, two seconds later (the exporter's own
    // backoff would have come back within 100-150 ms, again and again), and nothing is lost.
    for (status, reason) in [(503, "http_503"), (429, "http_429")] {
        let dir = TestDir::new(&format!("http-{status}"));
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let refusal = fake_http::Refusal { for_: Duration::from_millis(1500), status, retry_after: Some("2") };
        let export = "queue_capacity = 4096\nexport_timeout = \"1s\"\nmax_retry_time = \"10s\"";
        let (seen, tester, _procs) = mesh_exporting_over_http(&dir, &runtime, refusal, export);
        let n = 300;
        let report = load_with(&dir, tester.outbound, "http://front/", n, &["--rate", "200", "--concurrency", "8"]);
        assert_eq!(report["succeeded"], n, "traffic is unaffected: {report}");
        wait_for_spans_and_logs(&tester, n);
        assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0, "{status}: nothing lost");
        assert!(admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[("reason", reason)]) > 0.0);
        let seen = seen.lock().expect("lock");
        assert!(seen.refused > 0 && !seen.resent_after.is_empty(), "{status}: refused {} requests", seen.refused);
        for gap in &seen.resent_after {
            assert!(*gap >= Duration::from_millis(1900), "{status}: a refused request came back after {gap:?}, not Retry-After's 2 s");
        }
        // Both sidecars export: the tester's outbound records and the front's inbound ones.
        assert!(seen.spans >= n && seen.logs >= n, "{status}: {} spans and {} log records taken", seen.spans, seen.logs);
    }
}

#[test]
fn an_otlp_http_collector_answering_400_is_not_retried() {
    let dir = TestDir::new("http-400");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let refusal = fake_http::Refusal { for_: Duration::MAX, status: 400, retry_after: Some("1") };
    let (seen, tester, _procs) = mesh_exporting_over_http(&dir, &runtime, refusal, EXPORT);
    traffic(&dir, &tester, 200);
    wait_for("refused batches to be dropped", Duration::from_secs(15), || {
        (admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]) > 0.0).then_some(())
    });
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[]), 0.0, "400 is final");
    let seen = seen.lock().expect("lock");
    assert!(seen.refused > 0);
    assert!(seen.resent_after.is_empty(), "no refused request was sent again: {:?}", seen.resent_after);
}

/// The export headers the fakes keep, in this order.
const EXPORT_HEADERS: [&str; 3] = ["authorization", "x-scope-orgid", "x-tenant"];

#[test]
fn export_headers_go_with_every_export_over_grpc_and_http_as_the_table_and_the_variables_say() {
    // A backend's API key and tenant, from the table and from OpenTelemetry's variable; the
    // table wins a header both name, and a header the exporter writes itself is skipped.
    let telemetry = "otlp_headers = { authorization = \"Bearer s3cret\", \"x-scope-orgid\" = \"shop\" }";
    let env = "x-scope-orgid=other,x-tenant=east%20side,content-type=text/plain";
    let headed = |service: &str| {
        let mut w = Workload::new(service, &[]);
        w.telemetry = telemetry.to_owned();
        w.sidecar_env = vec![("OTEL_EXPORTER_OTLP_HEADERS".into(), env.into())];
        w
    };
    let expected = std::collections::BTreeSet::from(["Bearer s3cret|shop|east side".to_owned()]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let dir = TestDir::new("headers-grpc");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let collector = fake::serve(&runtime, listener, fake::Answer::After(Duration::ZERO));
    let (tester, front) = (headed("tester"), headed("front"));
    let procs = start_mesh(&dir, &[&tester, &front], otlp);
    traffic(&dir, &tester, 50);
    wait_for_spans_and_logs(&tester, 50);
    assert_eq!(*collector.headers.lock().expect("lock"), expected, "every gRPC export carried them");
    let log = procs[0].output();
    assert!(log.contains("OTEL_EXPORTER_OTLP_HEADERS: skipped") && !log.contains("s3cret"), "{log}");

    let dir = TestDir::new("headers-http");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let refusal = fake_http::Refusal { for_: Duration::ZERO, status: 503, retry_after: None };
    let seen = fake_http::serve(&runtime, listener, refusal);
    // OTLP/HTTP chosen by OpenTelemetry's variable, the table naming no protocol.
    let (mut tester, mut front) = (headed("tester"), headed("front"));
    for w in [&mut tester, &mut front] {
        w.sidecar_env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()));
    }
    let _procs = start_mesh(&dir, &[&tester, &front], otlp);
    traffic(&dir, &tester, 50);
    wait_for_spans_and_logs(&tester, 50);
    let seen = seen.lock().expect("lock");
    assert!(seen.spans >= 50 && seen.logs >= 50, "{} spans, {} log records", seen.spans, seen.logs);
    assert_eq!(seen.headers, expected, "every OTLP/HTTP export carried them");
}

#[test]
fn duration_exemplars_link_the_exported_metrics_to_exported_spans() {
    let dir = TestDir::new("exemplars");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (collector, tester, _procs) = mesh_exporting_to(&dir, &runtime, fake::Answer::After(Duration::ZERO), "");
    traffic(&dir, &tester, 50);
    wait_for_spans_and_logs(&tester, 50);
    // The metrics go out every second (the tests' `metrics_interval`).
    let exemplars = wait_for("exemplars on the duration histograms", Duration::from_secs(10), || {
        let seen = collector.exemplar_traces.lock().expect("lock").clone();
        (!seen.is_empty()).then_some(seen)
    });
    let spans = collector.span_traces.lock().expect("lock").clone();
    assert!(exemplars.iter().all(|t| t.len() == 16 && spans.contains(t)), "every exemplar names an exported span's trace");
}

#[test]
fn with_a_delta_preference_each_metrics_export_counts_what_happened_since_the_last() {
    use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality::{Cumulative, Delta};
    let dir = TestDir::new("delta");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let collector = fake::serve(&runtime, listener, fake::Answer::After(Duration::ZERO));
    let mut tester = Workload::new("tester", &[]);
    tester.sidecar_env = vec![("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE".into(), "delta".into())];
    let front = Workload::new("front", &[]);
    let _procs = start_mesh(&dir, &[&tester, &front], otlp);
    let counted = || collector.client_durations.lock().expect("lock").clone();
    let total = |exports: &[(i32, u64)]| exports.iter().map(|(_, n)| n).sum::<u64>();

    // Two bursts, then quiet: exported cumulatively, the counts would be sent again every
    // second (the tests' metrics interval).
    traffic(&dir, &tester, 30);
    wait_for("the first burst's export", Duration::from_secs(10), || (total(&counted()) == 30).then_some(()));
    traffic(&dir, &tester, 20);
    wait_for("the second burst's export", Duration::from_secs(10), || (total(&counted()) == 50).then_some(()));
    std::thread::sleep(Duration::from_millis(2500));
    let exports = counted();
    assert_eq!(total(&exports), 50, "the deltas add up to the requests, nothing counted twice: {exports:?}");
    assert!(exports.iter().all(|(temporality, n)| *temporality == Delta as i32 && *n > 0), "idle intervals send none: {exports:?}");

    // The CPU time goes as deltas too, every export, by mode; requests in flight stay
    // cumulative. The front's sidecar, with no preference, sends cumulative sums.
    let cpu = collector.cpu_times.lock().expect("lock").clone();
    let of = |service: &str| -> Vec<(i32, f64)> { cpu.iter().filter(|(s, ..)| s == service).map(|(_, t, v)| (*t, *v)).collect() };
    let tester_cpu = of("tester");
    assert!(tester_cpu.len() >= 6 && tester_cpu.iter().all(|(t, v)| *t == Delta as i32 && *v >= 0.0), "{tester_cpu:?}");
    let front_cpu = of("front");
    assert!(!front_cpu.is_empty() && front_cpu.iter().all(|(t, _)| *t == Cumulative as i32), "{cpu:?}");
    let in_flight = collector.in_flight.lock().expect("lock").clone();
    assert!(in_flight.iter().any(|(s, _)| s == "tester") && in_flight.iter().all(|(_, t)| *t == Cumulative as i32), "{in_flight:?}");
}

#[test]
fn each_signal_goes_to_the_shared_endpoint_to_its_own_or_nowhere() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let n = 50;
    let tester_rows = |collector: &CollectorProc, table: &str| {
        collector.sql_rows(&format!("SELECT count(*) FROM {table} WHERE service = 'tester'"))[0][0].as_u64()
    };
    let exported = |w: &Workload, signal| admin_metric(w, "meshlens_proxy_telemetry_exported_total", &[("signal", signal)]);
    let pair = |telemetry: &str, env: (&str, &str)| {
        [Workload::new("tester", &[]), Workload::new("front", &[])].map(|mut w| {
            w.telemetry = telemetry.to_owned();
            w.sidecar_env = vec![(env.0.to_owned(), env.1.to_owned())];
            w
        })
    };

    // OTLP/gRPC: spans to a tracing backend of their own (OpenTelemetry's variable), access
    // logs nowhere (the table), metrics to the shared collector.
    let dir = TestDir::new("signals-grpc");
    let collector = CollectorProc::start(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let traces_at = format!("http://{}", listener.local_addr().expect("addr"));
    let tracing = fake::serve(&runtime, listener, fake::Answer::After(Duration::ZERO));
    let [tester, front] = pair("logs = { endpoint = \"\" }", ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces_at));
    let procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    traffic(&dir, &tester, n);
    wait_for("the spans at their own backend and the metrics at the collector", Duration::from_secs(15), || {
        (exported(&tester, "spans") >= n as f64 && exported(&tester, "metrics") > 0.0).then_some(())
    });
    assert!(tracing.spans.load(std::sync::atomic::Ordering::Relaxed) >= n, "the spans reached their backend");
    assert_eq!(tracing.logs.load(std::sync::atomic::Ordering::Relaxed), 0, "no access logs there");
    assert_eq!((tester_rows(&collector, "spans"), tester_rows(&collector, "logs")), (Some(0), Some(0)), "nor at the collector");
    assert_eq!(exported(&tester, "logs"), 0.0);
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0, "a signal not exported drops nothing");
    drop(procs);

    // OTLP/HTTP: spans under the shared endpoint's /v1/traces, access logs posted to a logs
    // backend's own URL as written, with its own headers instead of the shared ones (the
    // table), metrics nowhere (OpenTelemetry's variable).
    let dir = TestDir::new("signals-http");
    let collector = CollectorProc::start(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let logs_at = listener.local_addr().expect("addr");
    let logging = fake_http::serve(&runtime, listener, fake_http::Refusal { for_: Duration::ZERO, status: 503, retry_after: None });
    let telemetry = format!(
        "otlp_protocol = \"http/protobuf\"\notlp_headers = {{ authorization = \"Bearer s3cret\" }}\n\
         logs = {{ endpoint = \"http://{logs_at}/otlp/v1/logs\", headers = {{ \"x-scope-orgid\" = \"shop\" }} }}"
    );
    let [tester, front] = pair(&telemetry, ("OTEL_METRICS_EXPORTER", "none"));
    let _procs = start_mesh(&dir, &[&tester, &front], collector.http);
    traffic(&dir, &tester, n);
    wait_for_spans_and_logs(&tester, n);
    // Two metrics intervals of the tests' one second.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(exported(&tester, "metrics"), 0.0, "metrics are not exported");
    let spans = collector.sql_rows("SELECT count(*) FROM spans WHERE service = 'tester' AND kind = 'client'")[0][0].as_u64();
    assert_eq!((spans, tester_rows(&collector, "logs")), (Some(n), Some(0)), "spans only at the collector");
    let seen = logging.lock().expect("lock");
    assert!(seen.logs >= n && seen.spans == 0, "{} log records, {} spans at the logs backend", seen.logs, seen.spans);
    assert_eq!(seen.paths, std::collections::BTreeSet::from(["/otlp/v1/logs".to_owned()]), "posted to the URL as written");
    assert_eq!(seen.headers, std::collections::BTreeSet::from(["-|shop|-".to_owned()]), "its own headers only");
}

#[test]
fn a_signal_may_go_over_a_transport_and_compression_of_its_own() {
    // The mesh exports over OTLP/gRPC; the tester's sidecar sends its access logs over
    // OTLP/HTTP, zstd-compressed, to the collector's HTTP port (OpenTelemetry's variables).
    let dir = TestDir::new("signal-transport");
    let collector = CollectorProc::start(&dir);
    let n = 50;
    let mut tester = Workload::new("tester", &[]);
    tester.sidecar_env = [
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", format!("http://{}/v1/logs", collector.http)),
        ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "zstd".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec();
    let front = Workload::new("front", &[]);
    let _procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    traffic(&dir, &tester, n);
    wait_for_spans_and_logs(&tester, n);
    let tester_rows = |table: &str| collector.sql_rows(&format!("SELECT count(*) FROM {table} WHERE service = 'tester'"))[0][0].as_u64();
    wait_for("the tester's records in the collector's tables", Duration::from_secs(10), || {
        (tester_rows("spans") == Some(n) && tester_rows("logs") == Some(n)).then_some(())
    });
    // Only the tester's access logs came over HTTP; the front's, and every span, over gRPC.
    let accepted = |signal: &str, transport: &str| {
        prom_sum(&get(collector.web, "/metrics").body, "meshlens_collector_accepted_total", &[("signal", signal), ("transport", transport)])
    };
    assert_eq!(accepted("log_records", "http"), n as f64);
    assert_eq!(accepted("spans", "http"), 0.0);
    assert!(accepted("spans", "grpc") >= 2.0 * n as f64 && accepted("log_records", "grpc") >= n as f64);
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0);
    let config = dir.path("tester-v1.toml");
    let check = command(meshlens()).args(["proxy", "--check", "--config"]).arg(&config).envs(tester.sidecar_env.clone()).output();
    let check = String::from_utf8_lossy(&check.expect("run --check").stdout).into_owned();
    let logs_line = format!("  logs        http://{}/v1/logs (OTLP/HTTP (protobuf), zstd)\n", collector.http);
    assert!(check.contains(&logs_line), "--check names the signal's own transport: {check}");
}

#[test]
fn a_signal_whose_backend_is_down_drops_alone() {
    // The access logs' backend is down (nothing listens at its address); spans and metrics
    // go to the collector, whole, and traffic is unaffected.
    let dir = TestDir::new("signals-one-down");
    let collector = CollectorProc::start(&dir);
    let mut tester = Workload::new("tester", &[]);
    tester.telemetry = format!("{EXPORT}\nlogs = {{ endpoint = \"http://{}\" }}", free_addr());
    let front = Workload::new("front", &[]);
    let _procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    let n = 200;
    traffic(&dir, &tester, n);
    wait_for("the spans exported and the access logs dropped", Duration::from_secs(15), || {
        let exported = admin_metric(&tester, "meshlens_proxy_telemetry_exported_total", &[("signal", "spans")]);
        let dropped = admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("signal", "logs")]);
        (exported >= n as f64 && dropped > 0.0).then_some(())
    });
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("signal", "spans")]), 0.0);
    let spans = collector.sql_rows("SELECT count(*) FROM spans WHERE service = 'tester' AND kind = 'client'")[0][0].as_u64();
    assert_eq!(spans, Some(n), "every span stored");
    wait_for("the metrics at the collector", Duration::from_secs(10), || {
        (admin_metric(&tester, "meshlens_proxy_telemetry_exported_total", &[("signal", "metrics")]) > 0.0).then_some(())
    });
}

#[test]
fn a_sidecar_exports_its_process_figures_even_while_idle() {
    let dir = TestDir::new("process");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // No request at all: the figures go out on the metrics interval (the tests' second).
    let (collector, tester, _procs) = mesh_exporting_to(&dir, &runtime, fake::Answer::After(Duration::ZERO), "");
    let figure = |name: &str, mode: &str| {
        let key = ("tester".to_owned(), name.to_owned(), mode.to_owned());
        collector.process.lock().expect("lock").get(&key).copied()
    };
    let rss = wait_for("the tester's process figures", Duration::from_secs(10), || figure("process.memory.usage", ""));
    let scraped = admin_metric(&tester, "process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && (rss - scraped).abs() < scraped * 0.5, "exported {rss} bytes resident, scraped {scraped}");
    assert!(figure("process.cpu.time", "user").is_some() && figure("process.cpu.time", "system").is_some(), "CPU time by mode");
    assert!(figure("process.thread.count", "").is_some_and(|n| n >= 1.0));
    assert!(figure("process.unix.file_descriptor.count", "").is_some_and(|n| n >= 3.0));
    // Requests cost CPU time, which the next exports show.
    traffic(&dir, &tester, 500);
    wait_for("the tester's CPU time to grow", Duration::from_secs(10), || {
        let cpu = figure("process.cpu.time", "user").unwrap_or(0.0) + figure("process.cpu.time", "system").unwrap_or(0.0);
        (cpu > 0.0).then_some(())
    });
}
