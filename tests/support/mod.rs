//! Helpers for the end-to-end tests: real processes on ephemeral loopback ports.
//!
//! Every process is a `meshlens` subcommand (`collector`, `proxy`, `workload`, `load`)
//! started from the binary cargo just built. Processes are killed when their handle is
//! dropped; their output goes to files in a per-test directory, printed when a test fails.
#![allow(dead_code)]

pub mod prometheus;

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The `meshlens` binary under test.
pub fn meshlens() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshlens"))
}

/// A free loopback address, below the kernel's ephemeral range (32768 and up) so that no
/// outgoing connection takes it as its source port before the process under test binds it.
pub fn free_addr() -> SocketAddr {
    // A port is free only until its owner binds it: never hand out the same one twice.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = fastrand::u16(20_000..32_000);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !given.contains(&port) && std::net::TcpListener::bind(addr).is_ok() {
            given.insert(port);
            return addr;
        }
    }
}

/// A scratch directory for one test; kept when the test fails, so its logs can be read.
pub struct TestDir(pub PathBuf);

impl TestDir {
    /// A new, empty directory named after `test`.
    pub fn new(test: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshlens-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A command for `program` without the test run's own OpenTelemetry variables (`OTEL_*`): a
/// sidecar, or an OpenTelemetry SDK, would take its sampler, resource or export settings
/// from them. What a test sets itself still goes through.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (inherited, _) in std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("OTEL_")) {
        command.env_remove(inherited);
    }
    command
}

/// A running process, killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `meshlens <args>`, logging to `<dir>/<name>.log`.
    pub fn start(dir: &TestDir, name: &str, args: &[&str]) -> Self {
        Self::start_with_env(dir, name, args, &[])
    }

    /// [`Proc::start`], with `env` set too.
    pub fn start_with_env(dir: &TestDir, name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.path(&format!("{name}.log"));
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command(meshlens())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name: name.into(), child, log }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in bytes (from `/proc`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself (at most `limit`); returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most `limit`) for a clean exit; returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.wait_exit(limit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let out = self.output();
            let tail: Vec<&str> = out.lines().rev().take(30).collect();
            eprintln!("----- {} (last lines) -----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body, as text.
    pub body: String,
    /// Body, as bytes.
    pub bytes: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange over a fresh connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Ok(Reply { status, headers, body: String::from_utf8_lossy(&body).to_string(), bytes: body })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `meshlens demo` and its collector's addresses.
pub struct Demo {
    /// The demo process.
    pub proc: Proc,
    /// OTLP/HTTP.
    pub http: SocketAddr,
    /// The web UI and APIs.
    pub web: SocketAddr,
}

/// Starts `meshlens demo --rate <rate> --duration <duration>` on free ports and waits for its
/// collector. A port found free here can still be taken by another process before the demo
/// binds it; the demo then exits saying so, and is started again on other ports (3 tries).
pub fn start_demo(dir: &TestDir, rate: &str, duration: &str) -> Demo {
    for attempt in 1..=3 {
        let (grpc, http, web) = (free_addr(), free_addr(), free_addr());
        let (grpc_arg, http_arg, web_arg) = (grpc.to_string(), http.to_string(), web.to_string());
        let args = ["demo", "--otlp-grpc", &grpc_arg, "--otlp-http", &http_arg, "--web", &web_arg, "--rate", rate, "--duration", duration];
        // Its sidecars' configurations and logs go into the test's directory, not /tmp.
        let tmp = dir.0.display().to_string();
        let mut proc = Proc::start_with_env(dir, &format!("demo-{attempt}"), &args, &[("TMPDIR", &tmp)]);
        let up = wait_for(&format!("the demo's collector to listen on {web} or the demo to exit"), Duration::from_secs(60), || {
            if TcpStream::connect_timeout(&web, Duration::from_millis(200)).is_ok() {
                return Some(true);
            }
            (!proc.running()).then_some(false)
        });
        if up {
            return Demo { proc, http, web };
        }
        let output = proc.output();
        assert!(output.contains("Address already in use"), "the demo exited:\n{output}");
        eprintln!("attempt {attempt}: a port was taken before the demo bound it; trying other ports");
    }
    panic!("the demo could not bind free ports in 3 attempts");
}

/// Waits until something accepts connections at `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    wait_for(&format!("{what} to listen on {addr}"), Duration::from_secs(60), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    });
}

/// A collector process on free ports.
pub struct CollectorProc {
    /// The process.
    pub proc: Proc,
    /// OTLP/gRPC address.
    pub grpc: SocketAddr,
    /// OTLP/HTTP address.
    pub http: SocketAddr,
    /// Web address.
    pub web: SocketAddr,
}

impl CollectorProc {
    /// Starts `meshlens collector` with a short match window, and waits until it serves.
    pub fn start(dir: &TestDir) -> Self {
        Self::start_with_data(dir, &dir.path("data"), "collector")
    }

    /// The same, with its data directory at `data`, logging as `name`.
    pub fn start_with_data(dir: &TestDir, data: &Path, name: &str) -> Self {
        Self::start_at(dir, data, name, free_addr())
    }

    /// The same, with OTLP/gRPC on `grpc`.
    pub fn start_at(dir: &TestDir, data: &Path, name: &str, grpc: SocketAddr) -> Self {
        Self::launch(dir, data, name, grpc, &[])
    }

    /// Starts a collector with more command-line arguments.
    pub fn start_with_args(dir: &TestDir, extra: &[&str]) -> Self {
        Self::launch(dir, &dir.path("data"), "collector", free_addr(), extra)
    }

    fn launch(dir: &TestDir, data: &Path, name: &str, grpc: SocketAddr, extra: &[&str]) -> Self {
        let (http, web) = (free_addr(), free_addr());
        let (grpc_s, http_s, web_s) = (grpc.to_string(), http.to_string(), web.to_string());
        let mut args = vec![
            "collector",
            "--otlp-grpc", &grpc_s,
            "--otlp-http", &http_s,
            "--web", &web_s,
            "--data-dir", data.to_str().unwrap_or("data"),
            "--match-window", "2s",
        ];
        args.extend_from_slice(extra);
        let proc = Proc::start(dir, name, &args);
        for addr in [grpc, http, web] {
            wait_listening(addr, "collector");
        }
        Self { proc, grpc, http, web }
    }

    /// `GET` on the web port, as JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        get(self.web, path).json()
    }

    /// The access-log records `GET /api/v1/logs?{query}` returns once there are at least `n`
    /// (a sidecar closes its log batches half a flush interval after its span batches, so
    /// they can trail the spans); fails if there are more than `n`.
    pub fn logs(&self, query: &str, n: usize) -> serde_json::Value {
        let path = format!("/api/v1/logs?{query}");
        let logs = wait_for(&format!("{n} access-log records at {path}"), Duration::from_secs(10), || {
            let logs = self.json(&path);
            logs.as_array().is_some_and(|l| l.len() >= n).then_some(logs)
        });
        assert_eq!(logs.as_array().map(Vec::len), Some(n), "{path}: {logs}");
        logs
    }

    /// Runs an SQL query through `POST /api/v1/sql`; returns the reply (JSON rows on 200).
    pub fn sql(&self, query: &str) -> Reply {
        sql(self.web, query)
    }

    /// The rows of an SQL query that must succeed.
    pub fn sql_rows(&self, query: &str) -> Vec<serde_json::Value> {
        sql_rows(self.web, query)
    }
}

/// Runs one SQL query against the collector whose web address is `web`.
pub fn sql(web: SocketAddr, query: &str) -> Reply {
    let body = serde_json::json!({ "query": query }).to_string();
    http(web, "POST", "/api/v1/sql", &[("content-type", "application/json")], body.as_bytes()).expect("SQL request")
}

/// The rows of an SQL query that must succeed, against the collector at `web`.
pub fn sql_rows(web: SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let reply = sql(web, query);
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    reply.json()["rows"].as_array().cloned().unwrap_or_default()
}

/// One meshed workload: a sample app and its sidecar.
pub struct Workload {
    /// Service name.
    pub service: String,
    /// Version.
    pub version: String,
    /// The app's address.
    pub app: SocketAddr,
    /// Sidecar inbound.
    pub inbound: SocketAddr,
    /// Sidecar outbound.
    pub outbound: SocketAddr,
    /// Sidecar admin.
    pub admin: SocketAddr,
    /// Calls the app makes.
    pub calls: Vec<String>,
    /// More `meshlens workload` arguments (`--error-ratio 0.2`, ...).
    pub app_args: Vec<String>,
    /// More lines for the sidecar's `[telemetry]` table; one setting `otlp_endpoint`
    /// replaces the collector's address given to [`sidecar_toml`].
    pub telemetry: String,
    /// Environment variables for the sidecar.
    pub sidecar_env: Vec<(String, String)>,
}

impl Workload {
    /// A workload on free ports.
    pub fn new(service: &str, calls: &[&str]) -> Self {
        Self {
            service: service.into(),
            version: "v1".into(),
            app: free_addr(),
            inbound: free_addr(),
            outbound: free_addr(),
            admin: free_addr(),
            calls: calls.iter().map(|c| (*c).to_owned()).collect(),
            app_args: Vec::new(),
            telemetry: String::new(),
            sidecar_env: Vec::new(),
        }
    }
}

/// The sidecar TOML of `w`, routing to every workload in `mesh`, exporting to `otlp` unless
/// its `telemetry` names an endpoint.
pub fn sidecar_toml(w: &Workload, mesh: &[&Workload], otlp: SocketAddr) -> String {
    let endpoint = match w.telemetry.lines().any(|l| l.trim_start().starts_with("otlp_endpoint")) {
        true => String::new(),
        false => format!("otlp_endpoint = \"http://{otlp}\"\n"),
    };
    let mut toml = format!(
        "[workload]\nservice = \"{}\"\nversion = \"{}\"\nnamespace = \"test\"\n\n\
         [inbound]\nlisten = \"{}\"\napp = \"{}\"\n\n[outbound]\nlisten = \"{}\"\n\n[admin]\nlisten = \"{}\"\n\n\
         [telemetry]\n{endpoint}flush_interval = \"200ms\"\nmetrics_interval = \"1s\"\n{}\n",
        w.service, w.version, w.inbound, w.app, w.outbound, w.admin, w.telemetry
    );
    let mut services: Vec<&str> = mesh.iter().map(|m| m.service.as_str()).collect();
    services.sort();
    services.dedup();
    for s in services {
        toml.push_str(&format!("\n[[services]]\nname = \"{s}\"\n"));
        for m in mesh.iter().filter(|m| m.service == s) {
            toml.push_str(&format!("[[services.endpoints]]\naddress = \"{}\"\nversion = \"{}\"\n", m.inbound, m.version));
        }
    }
    toml
}

/// Starts `tester`'s sidecar with `settings` (keys, then tables) added to `service`'s entry.
pub fn start_tester(
    dir: &TestDir,
    tester: &Workload,
    mesh: &[&Workload],
    collector: &CollectorProc,
    service: &str,
    settings: &str,
) -> Proc {
    let entry = format!("name = \"{service}\"\n");
    let toml = sidecar_toml(tester, mesh, collector.grpc).replace(&entry, &format!("{entry}{settings}"));
    assert!(toml.contains(settings), "{toml}");
    let config = dir.path("tester.toml");
    std::fs::write(&config, toml).expect("write");
    let proc = Proc::start(dir, "tester-sidecar", &["proxy", "--config", config.to_str().unwrap_or_default()]);
    wait_listening(tester.outbound, "tester outbound");
    proc
}

/// `flaky`, failing half its requests (503, or gRPC UNAVAILABLE), and a tester whose
/// sidecar retries it up to 4 attempts on `on`.
pub struct Flaky {
    /// The collector both sidecars report to.
    pub collector: CollectorProc,
    /// The caller, whose sidecar retries.
    pub tester: Workload,
    /// The processes, stopped when dropped.
    pub _procs: (Vec<Proc>, Proc),
}

impl Flaky {
    /// Starts them, `on` naming what the tester's sidecar retries.
    pub fn start(dir: &TestDir, on: &str) -> Self {
        Self::start_with(dir, on, "")
    }

    /// Starts them, the tester's sidecar with `telemetry`'s lines in its `[telemetry]`.
    pub fn start_with(dir: &TestDir, on: &str, telemetry: &str) -> Self {
        let collector = CollectorProc::start(dir);
        let mut tester = Workload::new("tester", &[]);
        tester.telemetry = telemetry.to_owned();
        let mut flaky = Workload::new("flaky", &[]);
        flaky.app_args = vec!["--error-ratio".into(), "0.5".into()];
        let procs = start_mesh(dir, &[&flaky], collector.grpc);
        let retry = format!("[services.retry]\nattempts = 4\non = [\"{on}\"]\nbackoff = \"5ms\"\n");
        let sidecar = start_tester(dir, &tester, &[&tester, &flaky], &collector, "flaky", &retry);
        Self { collector, tester, _procs: (procs, sidecar) }
    }
}

/// Starts the app and the sidecar of every workload, and waits until all listen.
pub fn start_mesh(dir: &TestDir, mesh: &[&Workload], otlp: SocketAddr) -> Vec<Proc> {
    let mut procs = Vec::new();
    for w in mesh {
        let config = dir.path(&format!("{}-{}.toml", w.service, w.version));
        fs::write(&config, sidecar_toml(w, mesh, otlp)).expect("write sidecar config");
        let env: Vec<(&str, &str)> = w.sidecar_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sidecar_args = ["proxy", "--config", config.to_str().unwrap_or_default()];
        procs.push(Proc::start_with_env(dir, &format!("{}-sidecar", w.service), &sidecar_args, &env));
        let mut args = vec![
            "workload".to_owned(), "--service".into(), w.service.clone(), "--version".into(), w.version.clone(),
            "--listen".into(), w.app.to_string(), "--sidecar".into(), w.outbound.to_string(),
        ];
        for c in &w.calls {
            args.push("--call".into());
            args.push(c.clone());
        }
        args.extend(w.app_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        procs.push(Proc::start(dir, &format!("{}-app", w.service), &args));
    }
    for w in mesh {
        for (addr, what) in [(w.app, "app"), (w.inbound, "inbound"), (w.outbound, "outbound"), (w.admin, "admin")] {
            wait_listening(addr, &format!("{} {what}", w.service));
        }
    }
    procs
}

/// Runs `meshlens load` and returns its JSON report.
pub fn load(dir: &TestDir, sidecar: SocketAddr, call: &str, requests: u64) -> serde_json::Value {
    load_with(dir, sidecar, call, requests, &["--rate", "200", "--concurrency", "8"])
}

/// Runs `meshlens load` with more arguments and returns its JSON report.
pub fn load_with(dir: &TestDir, sidecar: SocketAddr, call: &str, requests: u64, more: &[&str]) -> serde_json::Value {
    let out = Command::new(meshlens())
        .args(["load", "--sidecar", &sidecar.to_string(), "--call", call, "--requests", &requests.to_string()])
        .args(more)
        .current_dir(&dir.0)
        .output()
        .expect("run meshlens load");
    assert!(out.status.success(), "meshlens load failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("load report ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Sums the samples of a Prometheus metric whose labels include all of `labels`.
pub fn prom_sum(exposition: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if name != metric {
                return None;
            }
            let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Reads a file, for assertions on logs.
pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Runs `meshlens <args>` to completion; returns its stdout, failing on a non-zero exit.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(meshlens()).args(args).env("RUST_BACKTRACE", "0").output().expect("run meshlens");
    assert!(out.status.success(), "meshlens {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Posts one reading of a sidecar's process figures over OTLP/HTTP JSON, as a sidecar of
/// `service` (`workload`, namespace `shop`: the demo's) with `instance` as its
/// `service.instance.id` would export it: `cpu_seconds` of user CPU and `rss` bytes resident,
/// read at `at_unix_nanos`. The demo's own sidecars share its process and send none.
pub fn post_process_figures(
    http_addr: SocketAddr,
    service: &str,
    workload: &str,
    instance: &str,
    at_unix_nanos: u128,
    cpu_seconds: f64,
    rss: u64,
) {
    let at = at_unix_nanos.to_string();
    let text = |key: &str, value: &str| serde_json::json!({ "key": key, "value": { "stringValue": value } });
    let body = serde_json::json!({ "resourceMetrics": [{
        "resource": { "attributes": [
            text("service.name", service), text("service.namespace", "shop"), text("meshlens.workload", workload),
            text("service.version", "v1"), text("service.instance.id", instance), text("telemetry.sdk.name", "meshlens-proxy"),
        ] },
        "scopeMetrics": [{ "metrics": [
            { "name": "process.cpu.time", "unit": "s", "sum": { "aggregationTemporality": 2, "isMonotonic": true,
              "dataPoints": [{ "timeUnixNano": at, "asDouble": cpu_seconds, "attributes": [text("cpu.mode", "user")] }] } },
            { "name": "process.memory.usage", "unit": "By", "sum": { "aggregationTemporality": 2,
              "dataPoints": [{ "timeUnixNano": at, "asInt": rss.to_string() }] } },
        ] }]
    }] });
    let json = [("content-type", "application/json")];
    let reply = http(http_addr, "POST", "/v1/metrics", &json, body.to_string().as_bytes()).expect("post figures");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Serves each connection to `addr` with `handle`, on a thread of its own: an application
/// that answers in raw bytes what a real server would not.
pub fn serve_raw(addr: SocketAddr, handle: impl Fn(TcpStream) + Send + Sync + 'static) {
    let listener = std::net::TcpListener::bind(addr).expect("bind the app");
    let handle = std::sync::Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = std::sync::Arc::clone(&handle);
            std::thread::spawn(move || handle(stream));
        }
    });
}

/// Reads a request head, up to its blank line (empty if the connection closed first).
pub fn read_head(reader: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    while reader.read_line(&mut head).is_ok_and(|n| n > 0) && !head.ends_with("\r\n\r\n") {}
    head
}

/// Certificates for TLS tests, written into a test directory.
#[allow(unused_imports, reason = "used by the TLS tests only")]
pub use meshlens_common::test_pki::Pki;

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}
