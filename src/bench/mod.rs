//! `meshlens bench proxy`: the sidecar's cost, side by side with the direct path and nginx,
//! measured in one run on loopback.
//!
//! Every scenario sends to the same fast upstream (a separate process answering `200 ok`):
//! directly; through Debian's nginx as a reverse proxy (one worker, upstream keep-alive,
//! access log off); and through meshlens-proxy's outbound side (one worker thread) with
//! telemetry off, with telemetry on at 100 % sampling to a running collector, with the same
//! telemetry sent to a null receiver that keeps nothing (the sidecar's own cost, without a
//! collector on the same cores), and with telemetry on while the collector is down. For each
//! it reports the maximum request rate with N connections (with the cores the machine left
//! idle meanwhile, and how long the proxy ran and how long it waited for a core), latency at
//! a fixed open-loop rate (and what the proxy adds over the direct path), the proxy's
//! resident memory idle and under that load, its CPU time per 1,000 requests, and how many
//! telemetry records (and bytes) it exported and dropped. The load generator and the
//! collector run on the same cores as everything else. With `--rounds N` every row is
//! measured N times, one round after another, and the report gives each row's median and
//! judges the sidecar's targets round by round ([`rounds`]).

pub mod ingest;
pub mod load;
pub mod rounds;
pub mod sink;
pub mod ui;
pub mod upstream;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::demo::mesh::free_addr;

use self::load::Target;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct ProxyBench {
    /// Length of each measurement.
    pub duration: Duration,
    /// The fixed rate of the latency measurement, requests per second.
    pub rate: f64,
    /// Connections of the throughput measurement.
    pub connections: usize,
    /// Print JSON instead of a table.
    pub json: bool,
    /// How many times every row is measured, one round after another.
    pub rounds: usize,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Requests per second with `connections` connections.
    pub max_rps: f64,
    /// Cores the whole machine left idle while that rate was measured: a row that is not
    /// CPU-bound lost its rate to waiting (for a core, behind other processes), not to work.
    pub idle_cores_at_max: Option<f64>,
    /// The proxy's threads' time on a core over that measurement, in cores (1.0: its one
    /// worker thread never stopped).
    pub proxy_busy_at_max: Option<f64>,
    /// Their time ready to run but waiting for a core (behind the load generator, the
    /// upstream or the collector), in cores: what the proxy lost to sharing the machine.
    pub proxy_waiting_at_max: Option<f64>,
    /// The collector's CPU over that measurement, in cores, where one receives the telemetry:
    /// what it took from the two cores the proxy, the load and the upstream share.
    pub collector_busy_at_max: Option<f64>,
    /// The whole machine's CPU per request at that rate, in µs: the cores not idle over the
    /// rate. It counts everything the row makes the machine do (the load generator, the upstream,
    /// the proxy and, in the telemetry-on row, the collector), so `cores × 10⁶ / this` is the
    /// rate the row would reach with every core busy, whatever the scheduling.
    #[serde(default)]
    pub machine_cpu_us_per_request: Option<f64>,
    /// Latency at the fixed rate, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Added over the direct path at p50, microseconds.
    pub added_p50_us: Option<f64>,
    /// Added at p99.
    pub added_p99_us: Option<f64>,
    /// Added at p99.9.
    pub added_p999_us: Option<f64>,
    /// The proxy's resident memory before load, MiB.
    pub rss_idle_mib: Option<f64>,
    /// The proxy's largest resident memory under the fixed-rate load, MiB.
    pub rss_load_mib: Option<f64>,
    /// The proxy's CPU seconds per 1,000 requests at the fixed rate.
    pub cpu_s_per_1k_requests: Option<f64>,
    /// The collector's CPU seconds per 1,000 requests, where one receives the telemetry.
    pub collector_cpu_s_per_1k_requests: Option<f64>,
    /// The collector's largest resident memory over both measurements (it keeps what it
    /// receives, within its retention), MiB, where one receives the telemetry.
    pub collector_rss_mib: Option<f64>,
    /// Requests that failed during the fixed-rate run.
    pub errors: u64,
    /// Telemetry records the sidecar made over the row, where telemetry is on: a span and an
    /// access-log record per request (100 % sampling).
    pub telemetry_records: Option<u64>,
    /// Of those, the records it exported: all of them when this equals `telemetry_records`.
    pub telemetry_exported: Option<u64>,
    /// Bytes of span and access-log export requests the collector accepted, per request
    /// (protobuf, uncompressed): what telemetry adds to the network, beside the request itself.
    pub telemetry_bytes_per_request: Option<f64>,
    /// Telemetry records it dropped (queue full, export failed or refused). Records neither
    /// exported nor dropped were still queued or being retried when the counts were read.
    pub telemetry_dropped: Option<u64>,
}

/// A child process, killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // nginx's workers outlive a killed master, and a master outliving its killed worker
        // starts another: the children are read first, the parent killed, then they are.
        let pids: Vec<String> = process_tree(self.0.id()).iter().skip(1).map(u32::to_string).collect();
        let _ = self.0.kill();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
        let _ = self.0.wait();
    }
}

/// Starts `program` with `args`, its output to `log`. OpenTelemetry's variables of the
/// benchmark's own environment are not passed on: a sidecar would take its sampler, export
/// compression or headers from them, and measure another configuration than the one asked.
pub(crate) fn spawn(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("OTEL_")) {
        command.env_remove(name);
    }
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Proc(child))
}

/// Accepts connections on `listener` forever, serving each on a task of its own.
pub(crate) async fn serve_connections<F, Fut>(listener: tokio::net::TcpListener, serve: F) -> anyhow::Result<()>
where
    F: Fn(hyper_util::rt::TokioIo<tokio::net::TcpStream>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(hyper_util::rt::TokioIo::new(stream)));
    }
}

pub(crate) async fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("{what} did not start listening on {addr}")
}

/// The process and its children (nginx's workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    pids
}

/// Resident memory of a process tree, bytes.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .sum()
}

/// User plus system CPU time of a process tree, seconds (Linux clock ticks are 1/100 s).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

/// Seconds a process tree's threads have spent on a core and waiting in a run queue, from
/// each thread's `/proc/<pid>/task/<tid>/schedstat` (nanoseconds); `None` where the kernel
/// does not keep them.
fn scheduled_seconds(pid: u32) -> Option<(f64, f64)> {
    let mut totals = None;
    for p in process_tree(pid) {
        for task in std::fs::read_dir(format!("/proc/{p}/task")).ok()?.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
            let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
            if let (Some(Some(on_cpu)), Some(Some(waiting))) = (fields.next(), fields.next()) {
                let (a, b) = totals.get_or_insert((0.0, 0.0));
                *a += on_cpu as f64 / 1e9;
                *b += waiting as f64 / 1e9;
            }
        }
    }
    totals
}

/// The machine's online cores, counted in `/proc/stat` as [`idle_seconds`] sums them.
fn cores() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let n = stat.lines().filter(|l| l.strip_prefix("cpu").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))).count();
    (n > 0).then_some(n as f64)
}

/// Seconds the machine's cores have spent idle (or waiting for I/O) since boot, summed over
/// cores, from the first line of `/proc/stat` (in 1/100 s ticks).
fn idle_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
    Some((fields.get(3)? + fields.get(4)?) as f64 / 100.0)
}

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// Measures one scenario: throughput, then latency at the fixed rate while sampling the
/// proxy's memory and CPU.
async fn measure(name: &str, target: &Target, pid: Option<u32>, collector: Option<u32>, settings: &ProxyBench) -> anyhow::Result<Row> {
    // Warm up connections, pools and allocator.
    load::fixed_rate(target, 200.0, Duration::from_millis(500), 4).await?;
    let rss_idle = pid.map(rss_bytes);
    let collector_rss = collector.map(PeakRss::sample);
    let idle_before = idle_seconds();
    let scheduled_before = pid.and_then(scheduled_seconds);
    let collector_at_start = collector.map(cpu_seconds);
    let max_started = std::time::Instant::now();
    let max_rps = load::max_throughput(target, settings.connections, settings.duration).await?;
    let max_elapsed = max_started.elapsed().as_secs_f64();
    let idle_cores_at_max = idle_before.zip(idle_seconds()).map(|(a, b)| (b - a) / max_elapsed);
    let machine_cpu_us_per_request =
        cores().zip(idle_cores_at_max).filter(|_| max_rps > 0.0).map(|(cores, idle)| (cores - idle).max(0.0) / max_rps * 1e6);
    let collector_busy_at_max = collector.zip(collector_at_start).map(|(pid, before)| (cpu_seconds(pid) - before) / max_elapsed);
    let scheduled = scheduled_before.zip(pid.and_then(scheduled_seconds));
    let (proxy_busy_at_max, proxy_waiting_at_max) = match scheduled {
        Some(((cpu_a, wait_a), (cpu_b, wait_b))) => (Some((cpu_b - cpu_a) / max_elapsed), Some((wait_b - wait_a) / max_elapsed)),
        None => (None, None),
    };
    let cpu_before = pid.map(cpu_seconds);
    let collector_before = collector.map(cpu_seconds);
    let proxy_rss = pid.map(PeakRss::sample);
    let latencies = load::fixed_rate(target, settings.rate, settings.duration, settings.connections).await?;
    let cpu = pid.zip(cpu_before).map(|(pid, before)| cpu_seconds(pid) - before);
    let collector_cpu = collector.zip(collector_before).map(|(pid, before)| cpu_seconds(pid) - before);
    let rss_load = proxy_rss.map(PeakRss::finish);
    let requests = latencies.micros.len() as f64;
    Ok(Row {
        scenario: name.into(),
        max_rps,
        idle_cores_at_max,
        proxy_busy_at_max,
        proxy_waiting_at_max,
        collector_busy_at_max,
        machine_cpu_us_per_request,
        p50_us: latencies.quantile(0.5),
        p99_us: latencies.quantile(0.99),
        p999_us: latencies.quantile(0.999),
        added_p50_us: None,
        added_p99_us: None,
        added_p999_us: None,
        rss_idle_mib: rss_idle.map(|b| b as f64 / MIB),
        rss_load_mib: rss_load.map(|b| b as f64 / MIB),
        cpu_s_per_1k_requests: cpu.filter(|_| requests > 0.0).map(|c| c / requests * 1000.0),
        collector_cpu_s_per_1k_requests: collector_cpu.filter(|_| requests > 0.0).map(|c| c / requests * 1000.0),
        collector_rss_mib: collector_rss.map(|peak| peak.finish() as f64 / MIB),
        errors: latencies.errors,
        telemetry_records: None,
        telemetry_exported: None,
        telemetry_bytes_per_request: None,
        telemetry_dropped: None,
    })
}

/// A process's largest resident memory, sampled every 100 ms until [`PeakRss::finish`].
struct PeakRss {
    pid: u32,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    fn sample(pid: u32) -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = tokio::spawn({
            let peak = peak.clone();
            async move {
                loop {
                    peak.fetch_max(rss_bytes(pid), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { pid, peak, sampler }
    }

    /// The peak, bytes (including a last reading now).
    fn finish(self) -> u64 {
        self.sampler.abort();
        self.peak.load(std::sync::atomic::Ordering::Relaxed).max(rss_bytes(self.pid))
    }
}

fn nginx_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           upstream backend {{ server {upstream}; keepalive 64; }}\n\
           server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        dir = dir.display()
    )
}

fn sidecar_config(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr, otlp: Option<SocketAddr>) -> anyhow::Result<String> {
    Ok(format!(
        "[workload]\nservice = \"bench-client\"\nnamespace = \"bench\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [inbound]\nlisten = \"{}\"\napp = \"{}\"\n\n[outbound]\nlisten = \"{listen}\"\n\n\
         [telemetry]\notlp_endpoint = \"{}\"\nsampling_ratio = 1.0\n\n\
         [[services]]\nname = \"upstream\"\nendpoints = [{{ address = \"{upstream}\" }}]\n",
        free_addr()?,
        free_addr()?,
        otlp.map(|a| format!("http://{a}")).unwrap_or_default(),
    ))
}

/// The table's header and one line per row.
fn print_rows(rows: &[Row]) {
    let opt = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"));
    println!(
        concat!(
            "{:<44} {:>10} {:>5} {:>5} {:>5} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            " {:>9} {:>9} {:>11} {:>11} {:>10} {:>7} {:>8} {:>9} {:>6}"
        ),
        "scenario", "max req/s", "idle", "busy", "wait", "coll. busy", "µs/req", "p50 µs", "p99 µs", "p99.9 µs", "+p50", "+p99", "+p99.9",
        "RSS idle", "RSS load", "CPU s/1k", "coll. s/1k", "coll. RSS", "errors", "dropped", "delivered", "B/req"
    );
    for r in rows {
        println!(
            concat!(
                "{:<44} {:>10.0} {:>5} {:>5} {:>5} {:>10} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>9} {:>9} {:>9}",
                " {:>9} {:>9} {:>11} {:>11} {:>10} {:>7} {:>8} {:>9} {:>6}"
            ),
            r.scenario,
            r.max_rps,
            opt(r.idle_cores_at_max, 2),
            opt(r.proxy_busy_at_max, 2),
            opt(r.proxy_waiting_at_max, 2),
            opt(r.collector_busy_at_max, 2),
            opt(r.machine_cpu_us_per_request, 1),
            r.p50_us,
            r.p99_us,
            r.p999_us,
            opt(r.added_p50_us, 0),
            opt(r.added_p99_us, 0),
            opt(r.added_p999_us, 0),
            opt(r.rss_idle_mib, 1),
            opt(r.rss_load_mib, 1),
            opt(r.cpu_s_per_1k_requests, 4),
            opt(r.collector_cpu_s_per_1k_requests, 4),
            opt(r.collector_rss_mib, 1),
            r.errors,
            r.telemetry_dropped.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            r.telemetry_records.zip(r.telemetry_exported).map_or_else(
                || "-".to_owned(),
                |(made, sent)| format!("{:.1}%", if made > 0 { 100.0 * sent as f64 / made as f64 } else { 100.0 })
            ),
            opt(r.telemetry_bytes_per_request, 0),
        );
    }
}

fn print_table(rows: &[Row], settings: &ProxyBench) {
    println!(
        "\nmax req/s with {} connections; latency at {} req/s open loop ({} s); proxy memory and CPU\n",
        settings.connections,
        settings.rate,
        settings.duration.as_secs_f64()
    );
    print_rows(rows);
    println!("\nidle: cores the machine left idle while the max req/s was measured (a row that is not CPU-bound");
    println!("lost its rate to waiting, e.g. for a core behind other processes, not to work).");
    println!("busy, wait: the proxy's threads over that measurement, in cores: on a core, and ready to run but waiting");
    println!("for one (the share of its time it lost to the other processes on the machine); coll. busy: the");
    println!("collector's CPU over it, in cores, where one receives the telemetry on the same cores.");
    println!("µs/req: the whole machine's CPU per request at that rate (cores not idle / rate): load generator,");
    println!("upstream, proxy and, with telemetry on, the collector; cores / µs/req is the row's rate with every core busy.");
    println!("RSS in MiB. CPU s/1k: the proxy's CPU seconds per 1,000 requests, which is also vCPU per 1,000 req/s;");
    println!("coll. s/1k: the same for the collector receiving the telemetry, on the same cores;");
    println!("coll. RSS: its largest resident memory over the row's two measurements.");
    println!("null receiver: the same telemetry sent to a process that answers every export unread (the sidecar's");
    println!("own telemetry cost, without a collector's on the same cores).");
    println!("dropped: telemetry records the sidecar dropped over the row; delivered: the share of the records it");
    println!("made (a span and an access-log record per request) that it exported, read a second after the row.");
    println!("B/req: bytes of span and access-log export requests per request (protobuf, uncompressed).");
}

/// A row to measure: where its requests go and whose figures are taken.
struct Scenario {
    kind: rounds::Kind,
    name: String,
    target: Target,
    /// The proxy measured, if any.
    pid: Option<u32>,
    /// The collector receiving its telemetry, if any.
    collector: Option<u32>,
    /// The sidecar's admin address, where telemetry is on.
    admin: Option<SocketAddr>,
}

/// The sidecar's telemetry counters, from its admin `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct TelemetryCounts {
    requests: f64,
    exported: f64,
    dropped: f64,
    bytes: f64,
}

impl TelemetryCounts {
    async fn read(admin: SocketAddr) -> anyhow::Result<Self> {
        let admin = crate::web_client::WebClient::plain(admin);
        let exposition = crate::views::get_text(&admin, "/metrics").await.context("reading the sidecar's /metrics")?;
        // Spans and logs; the metrics' data points are counted under their own signal.
        let records = |counter: &str| {
            ["spans", "logs"].iter().map(|signal| ingest::sample(&exposition, &format!("{counter}{{signal=\"{signal}\""))).sum::<f64>()
        };
        Ok(Self {
            requests: ingest::sample(&exposition, "meshlens_proxy_requests_total"),
            exported: records("meshlens_proxy_telemetry_exported_total"),
            dropped: records("meshlens_proxy_telemetry_dropped_total"),
            bytes: records("meshlens_proxy_telemetry_exported_bytes_total"),
        })
    }

    /// Fills `row`'s telemetry figures with what happened between `self` and `after`.
    fn fill(self, after: Self, row: &mut Row) {
        let requests = after.requests - self.requests;
        let bytes = after.bytes - self.bytes;
        row.telemetry_records = Some(2 * requests as u64);
        row.telemetry_exported = Some((after.exported - self.exported) as u64);
        row.telemetry_dropped = Some((after.dropped - self.dropped) as u64);
        row.telemetry_bytes_per_request = (bytes > 0.0 && requests > 0.0).then(|| bytes / requests);
    }
}

/// Runs every scenario, `settings.rounds` times over, and prints the report.
pub async fn run_proxy(settings: ProxyBench) -> anyhow::Result<()> {
    anyhow::ensure!(settings.rounds > 0, "--rounds must be at least 1");
    let exe = std::env::current_exe().context("locating the meshlens binary")?;
    let dir: PathBuf = std::env::temp_dir().join(format!("meshlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = |name: &str| dir.join(format!("{name}.log"));
    // Every process the rows need is started first and kept for all the rounds.
    let mut processes = Vec::new();
    let mut scenarios = Vec::new();

    let upstream_addr = free_addr()?;
    processes.push(spawn(&exe, &["bench-upstream", "--listen", &upstream_addr.to_string()], &log("upstream"))?);
    wait_listening(upstream_addr, "the upstream").await?;
    let to = |addr: SocketAddr| Target { addr, host: "upstream".into() };
    let scenario = |kind, name: &str, target, pid| Scenario { kind, name: name.into(), target, pid, collector: None, admin: None };
    scenarios.push(scenario(rounds::Kind::Direct, "direct", to(upstream_addr), None));

    match which("nginx") {
        Some(nginx) => {
            let listen = free_addr()?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(&dir, listen, upstream_addr))?;
            let proc = spawn(&nginx, &["-p", &dir.display().to_string(), "-c", &conf.display().to_string()], &log("nginx"))?;
            wait_listening(listen, "nginx").await?;
            scenarios.push(scenario(rounds::Kind::Nginx, "nginx (1 worker, keep-alive)", to(listen), Some(proc.0.id())));
            processes.push(proc);
        }
        None => eprintln!("nginx is not installed (apt-get install nginx): its row is left out"),
    }

    // The sidecar as deployed is the slim `meshlens-proxy` binary (no collector, no query
    // engine), built with the `sidecar` profile when it has been; `meshlens proxy` runs the
    // same code from the big binary, with more memory.
    let sidecar = exe.parent().and_then(sidecar_binary);
    match &sidecar {
        Some(path) => eprintln!("measuring the sidecar {}", path.display()),
        None => eprintln!(
            "meshlens-proxy is not built (cargo build --profile sidecar -p meshlens-proxy, or cargo build --release): measuring \
             `meshlens proxy`, whose memory includes the collector's code"
        ),
    }
    let collector_grpc = free_addr()?;
    let (http, web) = (free_addr()?, free_addr()?);
    let collector = spawn(
        &exe,
        &["collector", "--otlp-grpc", &collector_grpc.to_string(), "--otlp-http", &http.to_string(), "--web", &web.to_string()],
        &log("collector"),
    )?;
    wait_listening(collector_grpc, "the collector").await?;
    let null_sink = free_addr()?;
    processes.push(spawn(&exe, &["bench-sink", "--listen", &null_sink.to_string()], &log("sink"))?);
    wait_listening(null_sink, "the null receiver").await?;
    let dead = free_addr()?;
    // Rows measured through the big binary say so in their names, in the table and the JSON.
    let measured = if sidecar.is_some() { "meshlens-proxy" } else { "`meshlens proxy` (no meshlens-proxy built)" };
    let sidecars = [
        (rounds::Kind::TelemetryOff, "telemetry off", None),
        (rounds::Kind::TelemetryOn, "telemetry on (100%)", Some(collector_grpc)),
        (rounds::Kind::NullReceiver, "telemetry on, null receiver", Some(null_sink)),
        (rounds::Kind::CollectorDown, "collector down", Some(dead)),
    ];
    for (kind, name, otlp) in sidecars {
        let (listen, admin) = (free_addr()?, free_addr()?);
        let conf = dir.join(format!("sidecar-{}.toml", scenarios.len()));
        std::fs::write(&conf, sidecar_config(listen, admin, upstream_addr, otlp)?)?;
        let config_arg = conf.display().to_string();
        let proc = match &sidecar {
            Some(bin) => spawn(bin, &["--config", &config_arg, "--worker-threads", "1"], &log(name))?,
            None => spawn(&exe, &["proxy", "--config", &config_arg, "--worker-threads", "1"], &log(name))?,
        };
        wait_listening(listen, "meshlens-proxy").await?;
        let mut sidecar_row = scenario(kind, &format!("{measured}, {name}"), to(listen), Some(proc.0.id()));
        sidecar_row.collector = (otlp == Some(collector_grpc)).then(|| collector.0.id());
        sidecar_row.admin = otlp.is_some().then_some(admin);
        scenarios.push(sidecar_row);
        processes.push(proc);
    }

    let mut measured_rounds = Vec::with_capacity(settings.rounds);
    for round in 1..=settings.rounds {
        let mut rows = Vec::with_capacity(scenarios.len());
        for s in &scenarios {
            eprintln!("round {round}/{}, measuring: {}", settings.rounds, s.name);
            let before = match s.admin {
                Some(admin) => Some(TelemetryCounts::read(admin).await?),
                None => None,
            };
            let mut row = measure(&s.name, &s.target, s.pid, s.collector, &settings).await?;
            if let (Some(admin), Some(before)) = (s.admin, before) {
                // The last records leave within a flush interval (200 ms).
                tokio::time::sleep(Duration::from_secs(1)).await;
                before.fill(TelemetryCounts::read(admin).await?, &mut row);
            }
            rows.push(row);
        }
        let base = rows[0].clone();
        for row in rows.iter_mut().skip(1) {
            row.added_p50_us = Some(row.p50_us - base.p50_us);
            row.added_p99_us = Some(row.p99_us - base.p99_us);
            row.added_p999_us = Some(row.p999_us - base.p999_us);
        }
        measured_rounds.push(rows);
    }
    drop(collector);
    drop(processes);

    let kinds: Vec<rounds::Kind> = scenarios.iter().map(|s| s.kind).collect();
    let verdicts = rounds::verdicts(&kinds, &measured_rounds);
    let medians = rounds::medians(&measured_rounds)?;
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({
            "connections": settings.connections,
            "rate": settings.rate,
            "duration_s": settings.duration.as_secs_f64(),
            "rows": medians,
            "rounds": measured_rounds,
            "targets": verdicts,
        }))?);
    } else {
        if settings.rounds > 1 {
            for (i, rows) in measured_rounds.iter().enumerate() {
                println!("\nround {} of {}:", i + 1, settings.rounds);
                print_rows(rows);
            }
            println!("\nmedian of {} rounds:", settings.rounds);
        }
        print_table(&medians, &settings);
        rounds::print_verdicts(&verdicts, settings.rounds);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The `meshlens-proxy` binary to measure, given the directory of the running `meshlens`
/// (`target/release`): the newer of the `sidecar` profile's builds beside it, with a profile
/// (`target/pgo/sidecar`, `scripts/build-sidecar-pgo`) or without (`target/sidecar`), if there
/// is one, else the one in the same directory.
fn sidecar_binary(dir: &Path) -> Option<PathBuf> {
    let built = |p: &PathBuf| std::fs::metadata(p).ok().filter(|m| m.is_file()).and_then(|m| m.modified().ok());
    let shipped = dir.parent().into_iter().flat_map(|target| {
        [target.join("pgo").join("sidecar").join("meshlens-proxy"), target.join("sidecar").join("meshlens-proxy")]
    });
    shipped.filter_map(|p| built(&p).map(|at| (at, p))).max_by_key(|(at, _)| *at).map(|(_, p)| p).or_else(|| {
        let same = dir.join("meshlens-proxy");
        same.is_file().then_some(same)
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn the_newest_sidecar_build_is_measured() {
        let target = std::env::temp_dir().join(format!("meshlens-sidecar-binary-{}", std::process::id()));
        let release = target.join("release");
        for dir in [&release, &target.join("sidecar"), &target.join("pgo").join("sidecar")] {
            std::fs::create_dir_all(dir).expect("a target directory");
        }
        let make = |path: &Path, age_s: u64| {
            let file = File::create(path).expect("a binary");
            file.set_modified(SystemTime::now() - Duration::from_secs(age_s)).expect("its build time");
            path.to_path_buf()
        };
        assert_eq!(sidecar_binary(&release), None);
        let same = make(&release.join("meshlens-proxy"), 0);
        assert_eq!(sidecar_binary(&release), Some(same));
        let plain = make(&target.join("sidecar").join("meshlens-proxy"), 60);
        assert_eq!(sidecar_binary(&release), Some(plain.clone()));
        let pgo = make(&target.join("pgo").join("sidecar").join("meshlens-proxy"), 30);
        assert_eq!(sidecar_binary(&release), Some(pgo));
        // Rebuilt without a profile after a change to the proxy: that build is the current one.
        make(&plain, 0);
        assert_eq!(sidecar_binary(&release), Some(plain));
        std::fs::remove_dir_all(&target).expect("cleaned up");
    }
}
