//! `meshlens`: the collector, the sidecar, the sample workloads and the demo, in one binary.
#![forbid(unsafe_code)]

mod bench;
mod demo;
mod sql;
mod tap;
mod views;
mod web_client;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use demo::{
    DemoOptions,
    loadgen::{self, LoadSpec},
    workload::{self, Call, WorkloadSpec},
};

/// Observability-first service-mesh telemetry.
#[derive(Debug, Parser)]
#[command(name = "meshlens", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a sample mesh (services, sidecars, load) and the collector; open the printed URL.
    Demo(DemoArgs),
    /// Run the collector: OTLP ingest, topology, Prometheus and Jaeger APIs, web UI.
    Collector(CollectorArgs),
    /// Run one sidecar proxy (the same as the `meshlens-proxy` binary).
    Proxy(meshlens_proxy::cli::ProxyArgs),
    /// Run one sample workload that calls other services through its sidecar.
    Workload(WorkloadArgs),
    /// Send a fixed number of requests through a sidecar and print a JSON report.
    Load(LoadArgs),
    /// Per service (or workload, or version): success rate, requests/s, latency percentiles.
    Stat(ViewArgs),
    /// Every edge between services: success rate, requests/s, latency percentiles.
    Edges(ViewArgs),
    /// The busiest edges, refreshed live until Ctrl-C.
    Top {
        #[command(flatten)]
        view: ViewArgs,
        /// How often to refresh.
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        interval: Duration,
        /// Stop after this many refreshes.
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// A sidecar's requests as they finish, from its admin `/tap`, until the limit or the time is up.
    Tap(tap::TapArgs),
    /// Run one read-only SQL query over the collector's tables (spans, logs, edges, services).
    Sql {
        /// The query, e.g. `SELECT service, count(*) FROM spans GROUP BY 1`.
        #[arg(required_unless_present = "schema_markdown")]
        query: Option<String>,
        #[command(flatten)]
        collector: CollectorArg,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: sql::SqlOutput,
        /// Print the tables' documented schemas as Markdown and exit.
        #[arg(long)]
        schema_markdown: bool,
    },
    /// Benchmarks, printing figures side by side with references measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The benchmark's upstream: answers `200 ok` on one thread.
    #[command(hide = true)]
    BenchUpstream {
        /// Where to listen.
        #[arg(long, value_parser = parse_addr)]
        listen: SocketAddr,
    },
    /// The proxy benchmark's null OTLP receiver: accepts every gRPC export, keeps nothing.
    #[command(hide = true)]
    BenchSink {
        /// Where to listen.
        #[arg(long, value_parser = parse_addr)]
        listen: SocketAddr,
    },
}

/// Which collector the CLI asks.
#[derive(Debug, clap::Args)]
struct CollectorArg {
    /// The collector's web address: a port, host:port, or either behind http:// or https://.
    #[arg(long, default_value = "127.0.0.1:16686")]
    collector: web_client::WebAddress,
    /// CA certificates (PEM) trusted for an https:// --collector, instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    collector_ca: Option<PathBuf>,
}

impl CollectorArg {
    fn client(&self) -> anyhow::Result<web_client::WebClient> {
        web_client::WebClient::new(self.collector.clone(), self.collector_ca.as_deref())
    }
}

/// Which collector and what view.
#[derive(Debug, clap::Args)]
struct ViewArgs {
    #[command(flatten)]
    collector: CollectorArg,
    /// The time window, e.g. `1m`, `15m`, `1h`.
    #[arg(long, short = 'w', default_value = "1m")]
    window: String,
    /// Rows per `service`, `workload` or `version`.
    #[arg(long, short = 'g', default_value = "service")]
    group: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: views::Output,
}

impl ViewArgs {
    fn query(&self) -> anyhow::Result<views::Query> {
        Ok(views::Query { collector: self.collector.client()?, window: self.window.clone(), group: self.group.clone() })
    }
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The sidecar against the direct path and nginx: throughput, added latency, memory, CPU.
    Proxy(ProxyBenchArgs),
    /// OTLP span ingest into a collector against the decode-only ceiling, then queries over the stored spans.
    Ingest(IngestBenchArgs),
    /// The dashboard at scale: API latency and, with chromium, render and zoom times for a large mesh.
    Ui {
        /// Services in the generated mesh.
        #[arg(long, default_value_t = 300)]
        services: usize,
        /// Edges in the generated mesh.
        #[arg(long, default_value_t = 1500)]
        edges: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct IngestBenchArgs {
    /// Load sent before the throughput measurement, not measured: the edge matcher keeps
    /// spans for one to two 15-second match windows, so its state is at its steady size
    /// after 30 s.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    warmup: Duration,
    /// Length of the throughput measurement.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Sending connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Spans stored before the query measurements.
    #[arg(long, default_value_t = 2_000_000)]
    stored: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ProxyBenchArgs {
    /// Length of each measurement.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    duration: Duration,
    /// Requests per second of the fixed-rate latency measurement.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Connections of the throughput measurement.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measure every row this many times, one round after another, and report the medians
    /// and how many rounds met each target.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// An address, or a bare port on 127.0.0.1.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|e| format!("{text:?} is neither a port nor an address: {e}"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    meshlens_common::duration::parse_duration(text)
}

/// Listen addresses of the collector.
#[derive(Debug, clap::Args)]
struct Listen {
    /// OTLP/gRPC listen address (or port).
    #[arg(long, value_parser = parse_addr, default_value = "127.0.0.1:4317")]
    otlp_grpc: SocketAddr,
    /// OTLP/HTTP listen address (or port).
    #[arg(long, value_parser = parse_addr, default_value = "127.0.0.1:4318")]
    otlp_http: SocketAddr,
    /// Web UI, query APIs and /metrics listen address (or port).
    #[arg(long, value_parser = parse_addr, default_value = "127.0.0.1:16686")]
    web: SocketAddr,
    /// Also expose the mesh metrics under Istio's names and labels (`istio_requests_total`, ...).
    #[arg(long)]
    istio_metrics: bool,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    #[command(flatten)]
    listen: Listen,
    /// Requests per second sent by the load generator.
    #[arg(long, default_value_t = 25.0)]
    rate: f64,
    /// Stop by itself after this long (e.g. `10m`); by default run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

#[derive(Debug, clap::Args)]
struct CollectorArgs {
    #[command(flatten)]
    listen: Listen,
    /// Directory for the collector's files (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Most spans kept in memory; the oldest traces are evicted beyond it.
    #[arg(long, default_value_t = 1_000_000)]
    max_spans: usize,
    /// How long a span waits for the other side of its hop before it counts as unmatched
    /// (at least this long, at most about twice).
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    match_window: Duration,
    /// Most spans waiting for the other side of their hop; 16 times as many fingerprints of
    /// spans that may still be named as a parent are kept. Spans past it are counted in
    /// meshlens_collector_edge_match_overflow_total.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_pending_matches: u32,
    /// Most edges (caller workload, destination workload, protocol) kept at once in the
    /// topology and the per-edge metrics. Requests of new edges past it are counted in
    /// meshlens_collector_edge_overflow_total; their spans are still stored.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_edges: u32,
    /// Per-edge Prometheus series not updated for this long are removed.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    series_ttl: Duration,
    /// Rows of the spans and logs tables older than this are evicted.
    #[arg(long, value_parser = parse_duration, default_value = "6h")]
    retention: Duration,
    /// Memory for the spans and logs tables, in MiB; the oldest rows go beyond it.
    #[arg(long, default_value_t = 1024)]
    memory_budget_mib: usize,
    /// Longest an SQL query may run.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    sql_timeout: Duration,
    /// Memory an SQL query's operators may use, in MiB.
    #[arg(long, default_value_t = 256)]
    sql_memory_mib: usize,
    /// Most rows an SQL query returns.
    #[arg(long, default_value_t = 10_000)]
    sql_max_rows: usize,
    /// Threads one SQL query runs on (by default one per core; 1 keeps a query to one core).
    #[arg(
        long,
        default_value_t = meshlens_collector::sql::cores(),
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256)
    )]
    sql_threads: usize,
    /// TLS on both OTLP receivers: the collector's certificate chain (PEM). Senders then use
    /// https:// endpoints.
    #[arg(long, requires = "otlp_tls_key", value_name = "FILE")]
    otlp_tls_cert: Option<PathBuf>,
    /// The private key of --otlp-tls-cert (PEM).
    #[arg(long, requires = "otlp_tls_cert", value_name = "FILE")]
    otlp_tls_key: Option<PathBuf>,
    /// Require senders to present a certificate issued by one of these CAs (PEM): mutual TLS.
    #[arg(long, requires = "otlp_tls_cert", value_name = "FILE")]
    otlp_tls_client_ca: Option<PathBuf>,
    /// TLS on the web port (UI, query APIs, /metrics): its certificate chain (PEM). Browsers,
    /// Prometheus, Grafana and the CLI then use https://.
    #[arg(long, requires = "web_tls_key", value_name = "FILE")]
    web_tls_cert: Option<PathBuf>,
    /// The private key of --web-tls-cert (PEM).
    #[arg(long, requires = "web_tls_cert", value_name = "FILE")]
    web_tls_key: Option<PathBuf>,
    /// Require web clients to present a certificate issued by one of these CAs (PEM).
    #[arg(long, requires = "web_tls_cert", value_name = "FILE")]
    web_tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct WorkloadArgs {
    /// Service name.
    #[arg(long)]
    service: String,
    /// Version.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Where the workload listens.
    #[arg(long, value_parser = parse_addr)]
    listen: SocketAddr,
    /// Its sidecar's outbound address.
    #[arg(long, value_parser = parse_addr)]
    sidecar: SocketAddr,
    /// Latency added to each request.
    #[arg(long, value_parser = parse_duration, default_value = "1ms")]
    latency: Duration,
    /// Random extra latency, up to this much.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    jitter: Duration,
    /// Share of requests answered with 503 (or gRPC UNAVAILABLE).
    #[arg(long, default_value_t = 0.0)]
    error_ratio: f64,
    /// A call made on each request: `http://service/path[@probability]` or `grpc://service/pkg.Svc/Method`.
    #[arg(long = "call")]
    calls: Vec<Call>,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// The sidecar's outbound address.
    #[arg(long, value_parser = parse_addr)]
    sidecar: SocketAddr,
    /// What to call: `http://service/path` or `grpc://service/pkg.Svc/Method` (repeatable).
    #[arg(long = "call", required = true)]
    calls: Vec<Call>,
    /// How many requests to send.
    #[arg(long, default_value_t = 100)]
    requests: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Most requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Give every request a path of its own (`<path>/<n>`).
    #[arg(long)]
    unique_paths: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    meshlens_proxy::cli::init_logging();
    let runtime = match &cli.command {
        // The sidecar runs on as many worker threads as it is told.
        Command::Proxy(args) => meshlens_proxy::cli::runtime(args.worker_threads)?,
        Command::BenchUpstream { .. } | Command::BenchSink { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => {
                demo::run(DemoOptions {
                    otlp_grpc: args.listen.otlp_grpc,
                    otlp_http: args.listen.otlp_http,
                    web: args.listen.web,
                    istio_metrics: args.listen.istio_metrics,
                    rate: args.rate,
                    duration: args.duration,
                })
                .await
            }
            Command::Collector(args) => run_collector(args).await,
            Command::Proxy(args) => meshlens_proxy::cli::run(args).await,
            Command::Workload(args) => run_workload(args).await,
            Command::Load(args) => run_load(args).await,
            Command::Bench(BenchCommand::Proxy(args)) => {
                bench::run_proxy(bench::ProxyBench {
                    duration: args.duration,
                    rate: args.rate,
                    connections: args.connections,
                    json: args.json,
                    rounds: args.rounds as usize,
                })
                .await
            }
            Command::Bench(BenchCommand::Ingest(args)) => {
                bench::ingest::run_ingest(bench::ingest::IngestBench {
                    warmup: args.warmup,
                    duration: args.duration,
                    connections: args.connections,
                    stored: args.stored,
                    json: args.json,
                })
                .await
            }
            Command::Bench(BenchCommand::Ui { services, edges, json }) => {
                bench::ui::run_ui(bench::ui::UiBench { services, edges, json }).await
            }
            Command::BenchUpstream { listen } => bench::upstream::serve(listen).await,
            Command::BenchSink { listen } => bench::sink::serve(listen).await,
            Command::Sql { schema_markdown: true, .. } => {
                print!("{}", meshlens_collector::tables::schema::markdown());
                Ok(())
            }
            Command::Sql { query, collector, output, .. } => sql::run(&collector.client()?, query.as_deref().unwrap_or_default(), output).await,
            Command::Tap(args) => tap::run(args).await,
            Command::Stat(args) => views::stat(&args.query()?, args.output).await,
            Command::Edges(args) => views::edges(&args.query()?, args.output).await,
            Command::Top { view, interval, iterations } => views::top(&view.query()?, interval, iterations, view.output).await,
        }
    })
}

async fn run_collector(args: CollectorArgs) -> anyhow::Result<()> {
    use meshlens_common::tls::{ServerTls, TlsFiles};
    let server_tls = |ca, certificate, key, what| -> anyhow::Result<Option<ServerTls>> {
        let files = TlsFiles { ca, certificate, key };
        Ok(files.certificate.is_some().then(|| ServerTls::read(&files, what)).transpose()?)
    };
    let otlp_tls = server_tls(args.otlp_tls_client_ca, args.otlp_tls_cert, args.otlp_tls_key, "--otlp-tls-cert")?;
    let web_tls = server_tls(args.web_tls_client_ca, args.web_tls_cert, args.web_tls_key, "--web-tls-cert")?;
    let described = |tls: &Option<ServerTls>| match tls {
        None => "plain text",
        Some(tls) if tls.requires_client_certificates() => "TLS, client certificates required",
        Some(_) => "TLS",
    };
    let (otlp, web_security) = (described(&otlp_tls), described(&web_tls));
    let config = meshlens_collector::CollectorConfig {
        otlp_grpc: args.listen.otlp_grpc,
        otlp_http: args.listen.otlp_http,
        web: args.listen.web,
        otlp_tls,
        web_tls,
        data_dir: args.data_dir,
        max_spans: args.max_spans,
        match_window: args.match_window,
        max_pending_matches: args.max_pending_matches as usize,
        max_edges: args.max_edges as usize,
        istio_metrics: args.listen.istio_metrics,
        series_ttl: args.series_ttl,
        retention: args.retention,
        memory_budget: args.memory_budget_mib << 20,
        sql: meshlens_collector::sql::SqlLimits {
            timeout: args.sql_timeout,
            memory_bytes: args.sql_memory_mib << 20,
            max_rows: args.sql_max_rows,
            threads: args.sql_threads,
            ..Default::default()
        },
        ..Default::default()
    };
    let collector = meshlens_collector::Collector::start(config).await.context("starting the collector")?;
    let a = collector.addrs();
    tracing::info!(otlp_grpc = %a.otlp_grpc, otlp_http = %a.otlp_http, otlp, web = %a.web, web_security, "collector ready");
    meshlens_proxy::cli::shutdown_signal().await;
    collector.shutdown().await;
    Ok(())
}

async fn run_workload(args: WorkloadArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the workload on {}", args.listen))?;
    let spec = WorkloadSpec {
        service: args.service,
        version: args.version,
        latency: args.latency,
        jitter: args.jitter,
        error_ratio: args.error_ratio,
        calls: args.calls,
        sidecar: args.sidecar,
    };
    tracing::info!(service = %spec.service, listen = %args.listen, "workload ready");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(workload::serve(listener, spec, rx));
    meshlens_proxy::cli::shutdown_signal().await;
    let _ = stop.send(true);
    let _ = server.await;
    Ok(())
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let report = loadgen::run(
        LoadSpec {
            sidecar: args.sidecar,
            targets: args.calls,
            rate: args.rate,
            concurrency: args.concurrency,
            limit: Some(args.requests),
            unique_paths: args.unique_paths,
        },
        rx,
    )
    .await;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
