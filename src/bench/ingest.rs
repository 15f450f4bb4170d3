//! `meshlens bench ingest`: OTLP/gRPC span ingest into a collector process, with the
//! decode-only ceiling measured in the same run, then query latency with the spans stored.
//!
//! The throughput phase is measured in rounds: a stretch of load, then, while the collector
//! idles, a short decode-only measurement. Each ceiling is taken within seconds of the ingest
//! it is compared with, so a machine whose speed drifts (a VM's can move by a quarter within
//! a minute) moves both alike.
//!
//! The load is the OpenTelemetry Collector testbed's shape: batches of 1,000 spans with 20
//! attributes each, from several connections. Batches are encoded once (a pool of 64);
//! each send copies one and stamps a fresh trace-ID prefix into it, so every trace is new
//! and the sender spends almost nothing per span. Traces are 10 spans across 20 services
//! (a SERVER root, then CLIENT → SERVER hops), so the topology has edges to compute.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use prost::Message;
use serde::Serialize;

use super::{MIB, cpu_seconds, rss_bytes, spawn, wait_listening};
use crate::demo::mesh::free_addr;

/// Settings.
#[derive(Debug, Clone)]
pub struct IngestBench {
    /// Load sent before the throughput measurement, not measured.
    pub warmup: Duration,
    /// Length of the throughput measurement.
    pub duration: Duration,
    /// Sending connections.
    pub connections: usize,
    /// Spans stored before the query measurements.
    pub stored: u64,
    /// Print JSON.
    pub json: bool,
}

const SPANS_PER_BATCH: usize = 1000;
const SPANS_PER_TRACE: usize = 10;
const SERVICES: usize = 20;
const POOL: usize = 64;
/// Trace IDs start with this, then 4 bytes stamped per send, then 8 unique bytes.
const MAGIC: [u8; 4] = *b"mlbt";

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

/// One batch of `SPANS_PER_BATCH` spans (100 traces), grouped by service.
fn batch(index: usize, now_nanos: u64) -> ExportTraceServiceRequest {
    let mut rng = fastrand::Rng::with_seed(index as u64);
    let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES];
    for t in 0..SPANS_PER_BATCH / SPANS_PER_TRACE {
        let mut trace_id = [0u8; 16];
        trace_id[..4].copy_from_slice(&MAGIC);
        trace_id[8..].copy_from_slice(&((index * 1000 + t) as u64 + 1).to_be_bytes());
        let start = now_nanos - rng.u64(0..60_000_000_000);
        let mut parent: Option<[u8; 8]> = None;
        let mut service = rng.usize(0..SERVICES);
        for s in 0..SPANS_PER_TRACE {
            let span_id = ((t * SPANS_PER_TRACE + s) as u64 + 1).to_be_bytes();
            let kind = if s == 0 || s % 2 == 0 { SpanKind::Server } else { SpanKind::Client };
            let callee = (service + 1 + rng.usize(0..SERVICES - 1)) % SERVICES;
            let failed = rng.u8(0..100) < 2;
            let status = if failed { 500 } else { 200 };
            let duration = rng.u64(200_000..20_000_000) / (s as u64 + 1);
            let route = format!("/api/v{}/items/{{id}}", rng.u8(1..4));
            let mut attributes = vec![
                text("http.request.method", if rng.bool() { "GET" } else { "POST" }),
                text("url.path", format!("/api/items/{}", rng.u32(0..10_000))),
                text("http.route", route),
                kv("http.response.status_code", any_value::Value::IntValue(status)),
                text("server.address", format!("svc-{callee}")),
                kv("server.port", any_value::Value::IntValue(8080)),
                text("network.protocol.version", "1.1"),
                text("user_agent.original", "bench/1.0"),
            ];
            if kind == SpanKind::Client {
                attributes.push(text("peer.service", format!("svc-{callee}")));
            }
            while attributes.len() < 20 {
                let i = attributes.len();
                attributes.push(text(&format!("bench.attr.{i}"), format!("value-{}", rng.u8(0..100))));
            }
            by_service[service].push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name: format!("{} /api/items", if s % 3 == 0 { "GET" } else { "POST" }),
                kind: kind as i32,
                start_time_unix_nano: start + s as u64 * 100_000,
                end_time_unix_nano: start + s as u64 * 100_000 + duration,
                attributes,
                status: Some(Status { code: if failed { StatusCode::Error as i32 } else { 0 }, message: String::new() }),
                ..Default::default()
            });
            parent = Some(span_id);
            if kind == SpanKind::Client {
                service = callee;
            }
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .enumerate()
            .filter(|(_, spans)| !spans.is_empty())
            .map(|(i, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", format!("svc-{i}")), text("service.namespace", "bench")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "meshlens-bench".into(), ..Default::default() }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// An encoded batch and where its trace IDs' stamp bytes are.
struct Encoded {
    bytes: Vec<u8>,
    stamps: Vec<usize>,
}

fn encode(request: &ExportTraceServiceRequest) -> Encoded {
    let bytes = request.encode_to_vec();
    let stamps = bytes.windows(4).enumerate().filter(|(_, w)| *w == MAGIC).map(|(i, _)| i + 4).collect();
    Encoded { bytes, stamps }
}

impl Encoded {
    fn stamped(&self, stamp: u32) -> Bytes {
        let mut bytes = self.bytes.clone();
        for &at in &self.stamps {
            bytes[at..at + 4].copy_from_slice(&stamp.to_be_bytes());
        }
        Bytes::from(bytes)
    }
}

/// Sends pre-encoded request bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The collector's `--max-pending-matches` in this benchmark.
const MATCHER_CAPACITY: &str = "4000000";

/// Counts of one load phase.
#[derive(Debug, Default)]
struct Sent {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    stamp: AtomicU64,
    /// The slowest accepted request so far, microseconds.
    slowest_us: AtomicU64,
}

async fn sender(addr: SocketAddr, pool: Arc<Vec<Encoded>>, sent: Arc<Sent>, stop: Arc<AtomicBool>, until_spans: u64) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    while !stop.load(Ordering::Relaxed) && sent.accepted.load(Ordering::Relaxed) < until_spans {
        let stamp = sent.stamp.fetch_add(1, Ordering::Relaxed);
        let encoded = &pool[stamp as usize % pool.len()];
        let body = encoded.stamped((stamp / pool.len() as u64) as u32 + 1);
        grpc.ready().await.context("the collector's connection")?;
        let path = http::uri::PathAndQuery::from_static(EXPORT);
        let started = Instant::now();
        match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
            Ok(_) => {
                sent.slowest_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                sent.accepted.fetch_add(SPANS_PER_BATCH as u64, Ordering::Relaxed);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                sent.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                sent.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Sends from `connections` connections until `duration` passes or `until_spans` are accepted.
async fn load(addr: SocketAddr, pool: &Arc<Vec<Encoded>>, sent: &Arc<Sent>, connections: usize, duration: Duration, until_spans: u64) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(sender(addr, pool.clone(), sent.clone(), stop.clone(), until_spans)))
        .collect();
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    let all = futures_util::future::join_all(tasks);
    tokio::pin!(all);
    tokio::select! {
        () = &mut deadline => {
            stop.store(true, Ordering::Relaxed);
            for r in all.await { r??; }
        }
        results = &mut all => for r in results { r??; },
    }
    Ok(())
}

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct IngestReport {
    /// Spans per batch.
    pub batch_spans: usize,
    /// Attributes per span.
    pub attributes_per_span: usize,
    /// Sending connections.
    pub connections: usize,
    /// Decode-only ceiling: spans decoded per second on one core (the mean of the rounds').
    pub decode_only_spans_per_s: f64,
    /// Spans accepted per second while load was sent.
    pub accepted_spans_per_s: f64,
    /// Collector CPU seconds over the whole throughput phase (its idle pauses included)
    /// per second of load.
    pub collector_cores: f64,
    /// Accepted spans per collector CPU second over the whole throughput phase.
    pub accepted_spans_per_s_per_core: f64,
    /// The throughput phase round by round.
    pub rounds: Vec<Round>,
    /// Accepted spans per second per collector core while the store was filled to
    /// `spans_stored` after the throughput phase: a longer stretch, with the store and the
    /// edge matcher growing all along (zero when there was nothing left to fill).
    pub fill_spans_per_s_per_core: f64,
    /// Requests refused (RESOURCE_EXHAUSTED) and failed during the whole run.
    pub refused_requests: u64,
    /// Requests that failed otherwise.
    pub failed_requests: u64,
    /// Spans stored for the query phase.
    pub spans_stored: u64,
    /// Collector RSS after storing them, MiB.
    pub rss_mib: f64,
    /// RSS growth per stored span, bytes.
    pub rss_bytes_per_span: f64,
    /// The SQL `spans` table's bytes per row.
    pub table_bytes_per_span: f64,
    /// CLIENT and SERVER spans the topology's edge matcher had no room for (their edges
    /// are missing from the topology), over the whole run.
    pub edge_match_overflow: u64,
    /// Median latencies of the queries, milliseconds.
    pub topology_15m_ms: f64,
    /// Jaeger search: service + tag + minDuration.
    pub search_ms: f64,
    /// Jaeger trace by ID.
    pub trace_by_id_ms: f64,
    /// SQL p99 per edge over all spans.
    pub sql_p99_per_edge_ms: f64,
}

/// One round of the throughput phase: load, then the ceiling.
#[derive(Debug, Serialize)]
pub struct Round {
    /// Accepted spans per collector CPU second while this round's load was sent.
    pub spans_per_s_per_core: f64,
    /// The decode-only ceiling measured right after.
    pub decode_only_spans_per_s: f64,
    /// The slowest accepted export request of the round, milliseconds.
    pub slowest_request_ms: f64,
}

/// Rounds of the throughput phase.
const ROUNDS: u32 = 5;

/// Length of each round's decode-only measurement.
const CEILING_SLICE: Duration = Duration::from_millis(500);

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Median of `runs` timings of `f`, milliseconds; fails if any answer is not 200.
async fn median_ms<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u16>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let status = f().await?;
        anyhow::ensure!(status == 200, "a query answered {status}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The sum of the samples in a Prometheus text exposition whose lines start with `prefix`.
pub(crate) fn sample(exposition: &str, prefix: &str) -> f64 {
    exposition.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Spans per second one core decodes from the pool's batches with prost, over `slice`.
fn decode_only(pool: &[Encoded], slice: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut decoded = 0u64;
    while started.elapsed() < slice {
        for e in pool {
            let request = ExportTraceServiceRequest::decode(e.bytes.as_slice())?;
            decoded += request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum::<u64>();
        }
    }
    Ok(decoded as f64 / started.elapsed().as_secs_f64())
}

/// Runs the benchmark and prints the report.
pub async fn run_ingest(settings: IngestBench) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the meshlens binary")?;
    let dir = std::env::temp_dir().join(format!("meshlens-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let now = now_nanos();
    eprintln!("encoding {POOL} batches of {SPANS_PER_BATCH} spans");
    let requests: Vec<ExportTraceServiceRequest> = (0..POOL).map(|i| batch(i, now)).collect();
    let pool: Arc<Vec<Encoded>> = Arc::new(requests.iter().map(encode).collect());
    anyhow::ensure!(pool.iter().all(|e| e.stamps.len() == SPANS_PER_BATCH), "every span's trace ID is stamped");

    let (grpc, http, web) = (free_addr()?, free_addr()?, free_addr()?);
    // Nothing may be evicted: the trace looked up by ID is from the first batch sent. The
    // edge matcher is sized for this rate, as an operator would size it: a tenth of the
    // spans (each trace's last CLIENT call) wait one to two match windows for a SERVER side
    // that never comes, more than the default holds at a few hundred thousand spans/s.
    let max_spans = u64::MAX.to_string();
    let collector = spawn(
        &exe,
        &[
            "collector", "--otlp-grpc", &grpc.to_string(), "--otlp-http", &http.to_string(), "--web", &web.to_string(),
            "--max-spans", &max_spans, "--memory-budget-mib", "65536", "--max-pending-matches", MATCHER_CAPACITY,
        ],
        &dir.join("collector.log"),
    )?;
    wait_listening(grpc, "the collector").await?;
    wait_listening(web, "the collector's web port").await?;
    let pid = collector.0.id();
    let rss_idle = rss_bytes(pid);

    // Measured once the edge matcher's state has reached its steady size (two match
    // windows), not from an empty collector.
    eprintln!("warming up: ingest for {:?} from {} connections", settings.warmup, settings.connections);
    let sent = Arc::new(Sent::default());
    load(grpc, &pool, &sent, settings.connections, settings.warmup, u64::MAX).await?;
    eprintln!(
        "measuring: ingest for {:?} from {} connections, in {ROUNDS} rounds each followed by the decode-only ceiling",
        settings.duration, settings.connections
    );
    let phase_cpu = cpu_seconds(pid);
    let (mut elapsed, mut rounds, mut rounds_accepted) = (0.0, Vec::new(), 0);
    for _ in 0..ROUNDS {
        sent.slowest_us.store(0, Ordering::Relaxed);
        let (accepted, cpu, started) = (sent.accepted.load(Ordering::Relaxed), cpu_seconds(pid), Instant::now());
        load(grpc, &pool, &sent, settings.connections, settings.duration / ROUNDS, u64::MAX).await?;
        elapsed += started.elapsed().as_secs_f64();
        let (accepted, cpu) = (sent.accepted.load(Ordering::Relaxed) - accepted, cpu_seconds(pid) - cpu);
        rounds_accepted += accepted;
        rounds.push(Round {
            spans_per_s_per_core: if cpu > 0.0 { accepted as f64 / cpu } else { 0.0 },
            slowest_request_ms: sent.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0,
            decode_only_spans_per_s: decode_only(&pool, CEILING_SLICE)?,
        });
    }
    // The collector's CPU over the whole phase, its pauses included: work it put off while
    // the load was sent counts too.
    let cpu = cpu_seconds(pid) - phase_cpu;
    let accepted = rounds_accepted;
    let rate = accepted as f64 / elapsed.max(f64::EPSILON);
    let cores = cpu / elapsed.max(f64::EPSILON);
    let ceiling = rounds.iter().map(|r| r.decode_only_spans_per_s).sum::<f64>() / f64::from(ROUNDS);

    eprintln!("storing {} spans", settings.stored);
    let (fill_from, fill_cpu) = (sent.accepted.load(Ordering::Relaxed), cpu_seconds(pid));
    load(grpc, &pool, &sent, settings.connections, Duration::from_secs(3600), settings.stored).await?;
    let stored = sent.accepted.load(Ordering::Relaxed);
    let fill_cpu = cpu_seconds(pid) - fill_cpu;
    let fill_per_core = if fill_cpu > 0.0 { (stored - fill_from) as f64 / fill_cpu } else { 0.0 };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_bytes(pid);
    let client = crate::web_client::WebClient::plain(web);
    let exposition = crate::views::get_text(&client, "/metrics").await?;
    let table_bytes = sample(&exposition, "meshlens_collector_store_memory_bytes{kind=\"spans\"}");
    let table_rows = sample(&exposition, "meshlens_collector_stored{kind=\"span_rows\"}");
    let overflow = sample(&exposition, "meshlens_collector_edge_match_overflow_total");

    eprintln!("measuring: queries over {stored} spans");
    let trace_id = {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&MAGIC);
        id[4..8].copy_from_slice(&1u32.to_be_bytes());
        id[8..].copy_from_slice(&7u64.to_be_bytes());
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let get = |path: String| {
        let client = client.clone();
        async move { crate::views::get_status(&client, &path).await }
    };
    let topology = median_ms(5, || get("/api/v1/topology?window=15m".into())).await?;
    let search = median_ms(5, || get("/api/traces?service=svc-3&tag=http.response.status_code:500&minDuration=5ms&limit=20&lookback=1h".into())).await?;
    let by_id = median_ms(5, || get(format!("/api/traces/{trace_id}"))).await?;
    let sql = "SELECT service, peer_service, approx_percentile_cont(duration_ns, 0.99) AS p99_ns, count(*) AS n \
               FROM spans WHERE kind = 'client' GROUP BY service, peer_service";
    let sql_ms = median_ms(3, || {
        let client = client.clone();
        async move { crate::sql::post(&client, sql, "json").await.map(|(s, _)| s.as_u16()) }
    })
    .await?;

    let report = IngestReport {
        batch_spans: SPANS_PER_BATCH,
        attributes_per_span: 20,
        connections: settings.connections,
        decode_only_spans_per_s: ceiling,
        accepted_spans_per_s: rate,
        collector_cores: cores,
        accepted_spans_per_s_per_core: if cpu > 0.0 { accepted as f64 / cpu } else { 0.0 },
        rounds,
        fill_spans_per_s_per_core: fill_per_core,
        refused_requests: sent.refused.load(Ordering::Relaxed),
        failed_requests: sent.failed.load(Ordering::Relaxed),
        spans_stored: stored,
        rss_mib: rss as f64 / MIB,
        rss_bytes_per_span: rss.saturating_sub(rss_idle) as f64 / stored.max(1) as f64,
        table_bytes_per_span: if table_rows > 0.0 { table_bytes / table_rows } else { 0.0 },
        edge_match_overflow: overflow as u64,
        topology_15m_ms: topology,
        search_ms: search,
        trace_by_id_ms: by_id,
        sql_p99_per_edge_ms: sql_ms,
    };
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &IngestReport) {
    let row = |what: &str, measured: String, target: &str| println!("{what:<44} {measured:>16}   {target}");
    println!("{:<44} {:>16}   target / reference", "OTLP/gRPC span ingest", "measured");
    row("decode-only ceiling (spans/s, one core)", format!("{:.0}", r.decode_only_spans_per_s), "reference, same run");
    let range = |f: fn(&Round) -> f64| {
        let values = r.rounds.iter().map(f);
        let (low, high) = values.fold((f64::MAX, 0.0_f64), |(low, high), v| (low.min(v), high.max(v)));
        format!("{low:.0} - {high:.0}")
    };
    row("  lowest - highest of the rounds", range(|round| round.decode_only_spans_per_s), "");
    row("accepted spans/s", format!("{:.0}", r.accepted_spans_per_s), "");
    row("collector cores used", format!("{:.2}", r.collector_cores), "");
    row("accepted spans/s per core", format!("{:.0}", r.accepted_spans_per_s_per_core), ">= 250,000 (OTel Collector ~10-12k)");
    row("  lowest - highest of the rounds", range(|round| round.spans_per_s_per_core), "");
    row("share of the decode-only ceiling", format!("{:.0}%", 100.0 * r.accepted_spans_per_s_per_core / r.decode_only_spans_per_s.max(1.0)), ">= 50%");
    row("slowest export request (ms)", format!("{:.0}", r.rounds.iter().map(|round| round.slowest_request_ms).fold(0.0, f64::max)), "");
    if r.fill_spans_per_s_per_core > 0.0 {
        row("  per core while filling the store", format!("{:.0}", r.fill_spans_per_s_per_core), "the same, over the whole fill");
    }
    row("refused / failed requests", format!("{} / {}", r.refused_requests, r.failed_requests), "");
    row("spans stored", format!("{}", r.spans_stored), "10,000,000 in the issue's scenario");
    row("collector RSS (MiB)", format!("{:.0}", r.rss_mib), "");
    row("RSS growth per stored span (bytes)", format!("{:.0}", r.rss_bytes_per_span), "<= 200");
    row("SQL table bytes per span", format!("{:.0}", r.table_bytes_per_span), "");
    row("spans past the edge matcher's capacity", format!("{}", r.edge_match_overflow), "0 (their edges are missing)");
    row("topology, 15-minute window (ms)", format!("{:.1}", r.topology_15m_ms), "<= 50");
    row("search: service + tag + minDuration (ms)", format!("{:.1}", r.search_ms), "<= 100");
    row("trace by ID (ms)", format!("{:.1}", r.trace_by_id_ms), "<= 5");
    row("SQL p99 per edge (ms)", format!("{:.0}", r.sql_p99_per_edge_ms), "<= 1,000");
}
