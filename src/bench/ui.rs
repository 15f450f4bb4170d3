//! `meshlens bench ui`: the dashboard at scale. A collector receives a generated mesh of
//! 300 services and 1,500 edges (CLIENT → SERVER span pairs over OTLP/gRPC); then the
//! page's API calls are timed, and, with Debian's chromium and playwright-core
//! (`tests/browser`), the graph's first render, a redraw and a zoom step.

use std::{collections::BTreeSet, process::Command, time::{Duration, Instant, SystemTime, UNIX_EPOCH}};

use anyhow::Context;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};
use serde::Serialize;

use super::{spawn, wait_listening};
use crate::demo::mesh::free_addr;

/// Settings.
#[derive(Debug, Clone)]
pub struct UiBench {
    /// Services in the generated mesh.
    pub services: usize,
    /// Edges in the generated mesh.
    pub edges: usize,
    /// Print JSON.
    pub json: bool,
}

fn text(key: &str, value: String) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value)) }), ..Default::default() }
}

/// Distinct edges: each service calls a few services after it (a layered mesh, as real
/// call graphs mostly are), wrapping around at the end.
fn edges(services: usize, count: usize) -> Vec<(usize, usize)> {
    let mut rng = fastrand::Rng::with_seed(300);
    let mut set = BTreeSet::new();
    while set.len() < count.min(services * (services - 1)) {
        let from = rng.usize(0..services);
        let to = (from + 1 + rng.usize(0..services.min(40))) % services;
        if to != from {
            set.insert((from, to));
        }
    }
    set.into_iter().collect()
}

fn spans_for(edges: &[(usize, usize)], round: u64) -> ExportTraceServiceRequest {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut resource_spans = Vec::new();
    for (n, (from, to)) in edges.iter().enumerate() {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&(round + 1).to_be_bytes());
        trace_id[8..].copy_from_slice(&(n as u64 + 1).to_be_bytes());
        let start = now - 1_000_000_000 + (n as u64 % 1000) * 1000;
        let span = |service: usize, id: u64, parent: Option<u64>, kind: SpanKind, duration: u64| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", format!("svc-{service:03}")), text("service.namespace", format!("ns-{}", service % 10))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: trace_id.to_vec(),
                    span_id: id.to_be_bytes().to_vec(),
                    parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
                    name: "GET /work".into(),
                    kind: kind as i32,
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + duration,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        resource_spans.push(span(*from, 1, None, SpanKind::Client, 2_000_000));
        resource_spans.push(span(*to, 2, Some(1), SpanKind::Server, 1_500_000));
    }
    ExportTraceServiceRequest { resource_spans }
}

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct UiReport {
    /// Services generated.
    pub services: usize,
    /// Edges generated.
    pub edges: usize,
    /// Topology API, median, ms.
    pub topology_api_ms: f64,
    /// Series API for one node, median, ms.
    pub series_api_ms: f64,
    /// Jaeger services list, median, ms.
    pub services_api_ms: f64,
    /// What the browser measured, when chromium and playwright-core are there.
    pub browser: Option<serde_json::Value>,
}

async fn median_get(web: std::net::SocketAddr, path: &str) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let status = crate::views::get_status(&crate::web_client::WebClient::plain(web), path).await?;
        anyhow::ensure!(status == 200, "{path} answered {status}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs the benchmark and prints the report.
pub async fn run_ui(settings: UiBench) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the meshlens binary")?;
    let dir = std::env::temp_dir().join(format!("meshlens-bench-ui-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (grpc, http, web) = (free_addr()?, free_addr()?, free_addr()?);
    let _collector = spawn(
        &exe,
        &["collector", "--otlp-grpc", &grpc.to_string(), "--otlp-http", &http.to_string(), "--web", &web.to_string(), "--match-window", "2s"],
        &dir.join("collector.log"),
    )?;
    wait_listening(grpc, "the collector").await?;
    wait_listening(web, "the collector's web port").await?;
    let mesh = edges(settings.services, settings.edges);
    let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await?;
    for round in 0..3 {
        client.export(spans_for(&mesh, round)).await.context("sending the generated mesh")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let topology = crate::views::get_text(&crate::web_client::WebClient::plain(web), "/api/v1/topology?window=5m").await?;
    let view: serde_json::Value = serde_json::from_str(&topology)?;
    let (nodes, edge_count) = (view["nodes"].as_array().map_or(0, Vec::len), view["edges"].as_array().map_or(0, Vec::len));
    anyhow::ensure!(nodes >= settings.services && edge_count >= mesh.len(), "the collector shows {nodes} nodes and {edge_count} edges");

    let report = UiReport {
        services: nodes,
        edges: edge_count,
        topology_api_ms: median_get(web, "/api/v1/topology?window=5m").await?,
        series_api_ms: median_get(web, "/api/v1/series?target=svc-007.ns-7&window=5m").await?,
        services_api_ms: median_get(web, "/api/services").await?,
        browser: browser_figures(web, settings.services),
    };
    let _ = std::fs::remove_dir_all(&dir);
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let row = |what: &str, v: String, target: &str| println!("{what:<38} {v:>12}   {target}");
    println!("{:<38} {:>12}   target", format!("dashboard at {} nodes, {} edges", report.services, report.edges), "measured");
    row("topology API (ms, median)", format!("{:.1}", report.topology_api_ms), "< 100");
    row("series API for a node (ms)", format!("{:.1}", report.series_api_ms), "< 100");
    row("services API (ms)", format!("{:.1}", report.services_api_ms), "< 100");
    match &report.browser {
        Some(b) => {
            let f = |k: &str| b[k].as_f64().map_or("-".into(), |v| format!("{v:.1}"));
            row("first render in chromium (ms)", f("first_render_ms"), "< 1,500");
            row("redraw on refresh (ms)", f("redraw_ms"), "");
            row("zoom step: handler + layout (ms)", f("zoom_step_ms"), "< 16.7 (one frame)");
            row("zoom: event to next painted frame (ms)", f("zoom_frame_ms"), "~ one or two frames");
        }
        None => println!("browser figures skipped: needs /usr/bin/chromium and `npm ci` in tests/browser"),
    }
    Ok(())
}

fn browser_figures(web: std::net::SocketAddr, nodes: usize) -> Option<serde_json::Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !std::path::Path::new("/usr/bin/chromium").is_file() || !root.join("node_modules/playwright-core").is_dir() {
        return None;
    }
    let out = Command::new("node").arg("render-bench.mjs").arg(format!("http://{web}")).arg(nodes.to_string()).current_dir(&root).output().ok()?;
    if !out.status.success() {
        eprintln!("the browser measurement failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}
