//! Export never hurts traffic: with the collector down, silent, or refusing, every request
//! still succeeds, telemetry is dropped and counted on the sidecar's admin `/metrics`,
//! memory stays bounded, and export resumes by itself when the collector returns.

mod support;

use std::{net::SocketAddr, time::Duration};

use support::*;

const EXPORT: &str = "queue_capacity = 64\nmax_batch = 32\nexport_timeout = \"300ms\"\nmax_retry_time = \"600ms\"";

fn admin_metric(w: &Workload, metric: &str, labels: &[(&str, &str)]) -> f64 {
    prom_sum(&get(w.admin, "/metrics").body, metric, labels)
}

fn mesh(dir: &TestDir, otlp: SocketAddr) -> (Workload, Workload, Vec<Proc>) {
    let mut tester = Workload::new("tester", &[]);
    let mut front = Workload::new("front", &[]);
    tester.telemetry = EXPORT.into();
    front.telemetry = EXPORT.into();
    let procs = start_mesh(dir, &[&tester, &front], otlp);
    (tester, front, procs)
}

/// Sends `n` requests; all must succeed.
fn traffic(dir: &TestDir, tester: &Workload, n: u64) {
    let report = load(dir, tester.outbound, "http://front/", n);
    assert_eq!(report["succeeded"], n, "traffic is unaffected: {report}");
}

#[test]
fn collector_down_then_back() {
    let dir = TestDir::new("down");
    let otlp = free_addr();
    let (tester, _front, procs) = mesh(&dir, otlp);
    traffic(&dir, &tester, 1000);

    wait_for("drops to be counted", Duration::from_secs(10), || {
        let dropped = admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("signal", "spans")]);
        (dropped > 0.0).then_some(())
    });
    assert!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("reason", "queue_full")]) > 0.0);
    assert!(admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[("reason", "unavailable")]) > 0.0);
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_exported_total", &[("signal", "spans")]), 0.0);
    let rss = procs[0].rss_bytes().expect("rss");
    assert!(rss < 64 << 20, "sidecar memory stays bounded: {} MiB", rss >> 20);

    // The collector comes up on the same address: export resumes without a restart.
    let collector = CollectorProc::start_at(&dir, &dir.path("data"), "collector", otlp);
    traffic(&dir, &tester, 50);
    wait_for("export to resume", Duration::from_secs(20), || {
        let t = collector.json("/api/v1/topology?window=5m");
        t["edges"].as_array()?.iter().find(|e| e["source"] == "tester.test" && e["requests"].as_u64() >= Some(50)).map(|_| ())
    });
    assert!(admin_metric(&tester, "meshlens_proxy_telemetry_exported_total", &[("signal", "logs")]) >= 50.0);
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
    let (tester, _front, _procs) = mesh(&dir, otlp);
    traffic(&dir, &tester, 500);
    wait_for("timed-out exports to be dropped and counted", Duration::from_secs(15), || {
        (admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]) > 0.0).then_some(())
    });
}

mod refusing {
    //! A collector that is out of room: RESOURCE_EXHAUSTED with a RetryInfo.
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::{
        logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_server::{LogsService, LogsServiceServer}},
        metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_service_server::{MetricsService, MetricsServiceServer}},
        trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::{TraceService, TraceServiceServer}},
    };
    use tonic::{Code, Request, Response, Status, codec::CompressionEncoding::Gzip};

    #[derive(Clone)]
    pub struct Full;

    fn refuse<T>() -> Result<Response<T>, Status> {
        let details = meshlens_common::rpc::status_with_retry(8, "collector full", Duration::from_millis(200));
        Err(Status::with_details(Code::ResourceExhausted, "collector full", details.into()))
    }

    #[tonic::async_trait]
    impl TraceService for Full {
        async fn export(&self, _: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
            refuse()
        }
    }
    #[tonic::async_trait]
    impl LogsService for Full {
        async fn export(&self, _: Request<ExportLogsServiceRequest>) -> Result<Response<ExportLogsServiceResponse>, Status> {
            refuse()
        }
    }
    #[tonic::async_trait]
    impl MetricsService for Full {
        async fn export(&self, _: Request<ExportMetricsServiceRequest>) -> Result<Response<ExportMetricsServiceResponse>, Status> {
            refuse()
        }
    }

    /// Serves the refusing collector on `listener` in the background.
    pub fn serve(runtime: &tokio::runtime::Runtime, listener: std::net::TcpListener) {
        runtime.spawn(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Full).accept_compressed(Gzip))
                .add_service(LogsServiceServer::new(Full).accept_compressed(Gzip))
                .add_service(MetricsServiceServer::new(Full).accept_compressed(Gzip))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
    }
}

#[test]
fn a_refusing_collector_is_retried_as_it_asks_then_given_up_on() {
    let dir = TestDir::new("refusing");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let otlp = listener.local_addr().expect("addr");
    refusing::serve(&runtime, listener);
    let (tester, _front, _procs) = mesh(&dir, otlp);
    traffic(&dir, &tester, 300);
    wait_for("refused batches to be retried, then dropped", Duration::from_secs(15), || {
        let retried = admin_metric(&tester, "meshlens_proxy_telemetry_export_retries_total", &[("reason", "resource_exhausted")]);
        let dropped = admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]);
        (retried > 0.0 && dropped > 0.0).then_some(())
    });
}
