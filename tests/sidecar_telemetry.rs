//! The sidecar's telemetry under sampling and foreign trace context: with trace sampling
//! off, only failed requests' spans are kept while the topology still counts every request
//! (from the access logs); a B3 caller's trace is continued, and its bare decision (`b3: 0`)
//! followed; `x-request-id` is generated once and follows the request through every hop;
//! timeouts, retries (one CLIENT span per attempt; gRPC calls, of unknown length, too) and
//! outlier ejections show as flags, spans and span events; each sidecar's own CPU and
//! memory reach the collector under its instance; a tap streams a sidecar's requests live,
//! and its log filter changes while it runs.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const REQUESTS: u64 = 120;

fn edge(topology: &Value, source: &str, target: &str) -> Option<Value> {
    topology["edges"].as_array()?.iter().find(|e| e["source"] == source && e["target"] == target).cloned()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"].as_array()?.iter().find(|t| t["key"] == key).map(|t| &t["value"])
}

/// A tester's sidecar calling `service`, whose sidecar fronts a hand-made `app` (given its
/// address), both reporting to one collector: what a test of how the sidecars carry an
/// unusual exchange needs. The processes stop when it is dropped.
struct RawHop {
    collector: CollectorProc,
    tester: Workload,
    /// The called side's inbound listener.
    called_inbound: std::net::SocketAddr,
    /// The called side's admin listener.
    called_admin: std::net::SocketAddr,
    _sidecars: [Proc; 2],
}

impl RawHop {
    fn start(dir: &TestDir, service: &str, app: fn(std::net::SocketAddr)) -> Self {
        Self::start_with(dir, service, app, "")
    }

    /// [`RawHop::start`], with `settings` (whole TOML tables) in the tester's sidecar.
    fn start_with(dir: &TestDir, service: &str, app: fn(std::net::SocketAddr), settings: &str) -> Self {
        Self::start_configured(dir, service, app, [settings, ""])
    }

    /// [`RawHop::start`], with settings (whole TOML tables) in the tester's and the called
    /// service's sidecars.
    fn start_configured(dir: &TestDir, service: &str, app: fn(std::net::SocketAddr), settings: [&str; 2]) -> Self {
        Self::launch(dir, service, app, settings, "")
    }

    /// [`RawHop::start`], with `entry` (keys and tables of its `[[services]]` entry: a
    /// timeout, a retry policy) for the called service in the tester's sidecar.
    fn start_routed(dir: &TestDir, service: &str, app: fn(std::net::SocketAddr), entry: &str) -> Self {
        Self::launch(dir, service, app, ["", ""], entry)
    }

    fn launch(dir: &TestDir, service: &str, app: fn(std::net::SocketAddr), settings: [&str; 2], entry: &str) -> Self {
        let collector = CollectorProc::start(dir);
        let mut tester = Workload::new("tester", &[]);
        let mut called = Workload::new(service, &[]);
        for (workload, settings) in [&mut tester, &mut called].into_iter().zip(settings) {
            if !settings.is_empty() {
                workload.telemetry = format!("\n{settings}");
            }
        }
        app(called.app);
        let mesh = [&tester, &called];
        let config = dir.path(&format!("{service}.toml"));
        std::fs::write(&config, sidecar_toml(&called, &mesh, collector.grpc)).expect("write");
        let sidecar = Proc::start(dir, &format!("{service}-sidecar"), &["proxy", "--config", config.to_str().unwrap_or_default()]);
        wait_listening(called.inbound, "the called inbound");
        let tester_sidecar = start_tester(dir, &tester, &mesh, &collector, service, entry);
        Self { collector, tester, called_inbound: called.inbound, called_admin: called.admin, _sidecars: [sidecar, tester_sidecar] }
    }

    /// `columns` of both sides' spans of the request to `path` (CLIENT first), once both came.
    fn both_spans(&self, columns: &str, path: &str) -> Vec<Value> {
        wait_for("both sides' spans", Duration::from_secs(15), || {
            let rows =
                self.collector.sql_rows(&format!("SELECT {columns} FROM spans WHERE attributes LIKE '%{path}%' ORDER BY kind"));
            (rows.len() == 2).then_some(rows)
        })
    }

    /// Waits until one request is in flight through both sidecars: sent, and not yet answered
    /// (a fixed pause would not do on a busy machine).
    fn wait_in_flight(&self) {
        wait_for("the request in flight through both sidecars", Duration::from_secs(15), || {
            let active = |admin, direction| prom_sum(&get(admin, "/metrics").body, "meshlens_proxy_active_requests", &[("direction", direction)]);
            (active(self.tester.admin, "outbound") == 1.0 && active(self.called_admin, "inbound") == 1.0).then_some(())
        });
    }

    /// Writes `request` to the tester's sidecar and reads until the connection closes (or 5 s
    /// pass without a byte): what came, and how long it took.
    fn exchange(&self, request: &[u8]) -> (String, Duration) {
        exchange_at(self.tester.outbound, request)
    }

    /// Opens a connection to the tester's sidecar and writes `request` on it.
    fn send(&self, request: &[u8]) -> std::net::TcpStream {
        send_to(self.tester.outbound, request)
    }
}

/// Writes `request` to `addr` and reads until the connection closes (or 5 s pass without a
/// byte): what came, and how long it took.
fn exchange_at(addr: std::net::SocketAddr, request: &[u8]) -> (String, Duration) {
    use std::io::Read;
    let sent = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = send_to(addr, request).read_to_end(&mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), sent.elapsed())
}

/// Opens a connection to `addr` and writes `request` on it.
fn send_to(addr: std::net::SocketAddr, request: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(request).expect("write");
    stream
}

#[test]
fn sampling_keeps_errors_while_counts_stay_exact() {
    let dir = TestDir::new("sampling");
    let collector = CollectorProc::start(&dir);
    let unsampled = "sampling_ratio = 0.0\nkeep_errors = true\nslow_threshold = \"0\"";
    let mut tester = Workload::new("tester", &[]);
    let mut front = Workload::new("front", &["http://back/work"]);
    let mut back = Workload::new("back", &[]);
    back.app_args = vec!["--error-ratio".into(), "0.25".into()];
    for w in [&mut tester, &mut front, &mut back] {
        w.telemetry = unsampled.into();
    }
    let _procs = start_mesh(&dir, &[&tester, &front, &back], collector.grpc);
    let report = load(&dir, tester.outbound, "http://front/", REQUESTS);
    assert_eq!(report["sent"], REQUESTS);

    let topology = wait_for("every request counted despite sampling", Duration::from_secs(20), || {
        let t = collector.json("/api/v1/topology?window=5m");
        let done = ["tester.test", "front.test"].iter().zip(["front.test", "back.test"]).all(|(s, d)| {
            edge(&t, s, d).is_some_and(|e| e["requests"] == REQUESTS)
        });
        done.then_some(t)
    });
    let errors = edge(&topology, "front.test", "back.test").and_then(|e| e["errors"].as_u64()).expect("errors");
    assert!(errors > 0 && errors < REQUESTS, "about a quarter fail: {errors}");

    // Spans: exactly the failed requests' CLIENT spans on front→back, and nothing that succeeded.
    let traces = wait_for("the error spans", Duration::from_secs(10), || {
        let found = collector.json("/api/traces?service=front&limit=1000");
        let clients = found["data"].as_array()?.iter()
            .flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default())
            .filter(|s| tag(s, "span.kind") == Some(&"client".into()) && tag(s, "meshlens.destination.service") == Some(&"back".into()))
            .count() as u64;
        (clients == errors).then_some(found)
    });
    for trace in traces["data"].as_array().expect("traces") {
        for span in trace["spans"].as_array().expect("spans") {
            assert_eq!(tag(span, "error"), Some(&Value::Bool(true)), "only failed requests are kept: {span}");
        }
    }
    // The sidecars' OTLP metrics and access logs still cover every request.
    collector.logs("service=tester&limit=1000", REQUESTS as usize);
}

#[test]
fn b3_callers_are_continued_and_request_ids_follow_the_request() {
    let dir = TestDir::new("b3");
    let collector = CollectorProc::start(&dir);
    // No span is kept for being slow, so that only sampling decides which are (below).
    let mut tester = Workload::new("tester", &[]);
    tester.telemetry = "propagation = [\"w3c\", \"b3\"]\nslow_threshold = \"0\"".into();
    let mut front = Workload::new("front", &["http://back/work"]);
    front.telemetry = "slow_threshold = \"0\"".into();
    let mut back = Workload::new("back", &[]);
    back.telemetry = "slow_threshold = \"0\"".into();
    let _procs = start_mesh(&dir, &[&tester, &front, &back], collector.grpc);

    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3 = format!("{b3_trace}-e457b5a2e4d86bd1-1");
    let forwarded = [("host", "front"), ("b3", &b3), ("x-forwarded-for", "203.0.113.7, 10.0.0.1"), ("x-forwarded-proto", "https")];
    let reply = http(tester.outbound, "GET", "/", &forwarded, b"").expect("request");
    assert_eq!(reply.status, 200, "{}", reply.body);

    let trace = wait_for("the B3 trace", Duration::from_secs(10), || {
        let t = collector.json(&format!("/api/traces/{b3_trace}"));
        (t["data"][0]["spans"].as_array().map(Vec::len) == Some(4)).then_some(t)
    });
    let spans = trace["data"][0]["spans"].as_array().expect("spans");
    let root = spans.iter().find(|s| tag(s, "span.kind") == Some(&"client".into()) && tag(s, "meshlens.source.service") == Some(&"tester".into())).expect("tester's span");
    assert_eq!(root["references"][0]["spanID"], "e457b5a2e4d86bd1", "the B3 caller is the parent");
    // A sidecar sends only the other end of a hop; the collector writes its own end back from
    // the resource, so every span and access log names both.
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut hops: Vec<(String, String)> = spans
        .iter()
        .map(|s| (text(tag(s, "meshlens.source.service")), text(tag(s, "meshlens.destination.service"))))
        .collect();
    hops.sort();
    let expected = [("front", "back"), ("front", "back"), ("tester", "front"), ("tester", "front")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(hops, expected, "{trace}");
    // front's SERVER span names the client and scheme its caller's proxies named; back's,
    // whose caller named none, its network peer and plain `http`.
    let mut clients: Vec<(String, String, String)> = spans
        .iter()
        .filter(|s| tag(s, "span.kind") == Some(&"server".into()))
        .map(|s| (text(tag(s, "meshlens.destination.service")), text(tag(s, "client.address")), text(tag(s, "url.scheme"))))
        .collect();
    clients.sort();
    let expected = [("back", "127.0.0.1", "http"), ("front", "203.0.113.7", "https")];
    assert_eq!(clients, expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())), "{trace}");

    let logs = collector.logs(&format!("trace_id={b3_trace}"), 4);
    let mut logged: Vec<(String, String)> = logs
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| (text(l["attributes"].get("meshlens.source.service")), text(l["attributes"].get("meshlens.destination.workload"))))
        .collect();
    logged.sort();
    let workloads = [("front", "back-v1"), ("front", "back-v1"), ("tester", "front-v1"), ("tester", "front-v1")];
    assert_eq!(logged, workloads.map(|(a, b)| (a.to_owned(), b.to_owned())), "{logs}");
    let ids: Vec<&Value> = logs.as_array().expect("logs").iter().map(|l| &l["attributes"]["meshlens.request_id"]).collect();
    assert_eq!(ids.len(), 4, "{logs}");
    assert!(ids.iter().all(|id| *id == ids[0] && id.as_str().is_some_and(|s| s.len() == 36)), "{ids:?}");

    // A caller may send only a decision (`b3: 0`): the trace the sidecars start for it is not
    // sampled, though its access logs are written. A request without one, sent after it
    // (and so exported no earlier), is sampled at the ratio of 1.
    for (id, decision) in [("b3-deny", Some(("b3", "0"))), ("no-decision", None)] {
        let mut headers = vec![("host", "front"), ("x-request-id", id)];
        headers.extend(decision);
        let reply = http(tester.outbound, "GET", "/", &headers, b"").expect("request");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let trace_of = |id: &str| {
        wait_for(&format!("the access log of {id}"), Duration::from_secs(10), || {
            let logs = collector.json("/api/v1/logs?service=tester&limit=100");
            let log = logs.as_array()?.iter().find(|l| l["attributes"]["meshlens.request_id"] == id)?.clone();
            log["trace_id"].as_str().map(str::to_owned)
        })
    };
    let (denied, sampled) = (trace_of("b3-deny"), trace_of("no-decision"));
    wait_for("the undecided request's spans", Duration::from_secs(10), || {
        let t = collector.json(&format!("/api/traces/{sampled}"));
        (t["data"][0]["spans"].as_array().map(Vec::len) == Some(4)).then_some(())
    });
    let reply = get(collector.web, &format!("/api/traces/{denied}"));
    let body: String = reply.body.chars().take(300).collect();
    assert_eq!(reply.status, 404, "the b3: 0 request's trace has no spans: {body}");
}

#[test]
fn access_logs_go_to_stdout_as_json_or_envoy_text() {
    let dir = TestDir::new("stdout-log");
    let collector = CollectorProc::start(&dir);
    let tester = Workload::new("tester", &[]);
    let front = Workload::new("front", &[]);
    // The sidecar TOML's last table is [[services]]; an [access_log] table can follow it.
    let json_sidecar = dir.path("tester-json.toml");
    let text_sidecar = dir.path("front-text.toml");
    let mesh = [&tester, &front];
    std::fs::write(&json_sidecar, format!("{}\n[access_log]\nstdout = \"json\"\n", sidecar_toml(&tester, &mesh, collector.grpc))).expect("write");
    std::fs::write(
        &text_sidecar,
        format!(
            "{}\n[access_log]\nstdout = \"text\"\nformat = \"{}\"\n",
            sidecar_toml(&front, &mesh, collector.grpc),
            "%DIRECTION% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %TRACE_ID% \\\"%REQ(X-FORWARDED-FOR)%\\\" \
             %RESP(CONTENT-TYPE)% %REQ(X-MISSING?USER-AGENT):7% %REQ(X-MISSING)%",
        ),
    )
    .expect("write");
    let tester_proc = Proc::start(&dir, "tester-sidecar", &["proxy", "--config", json_sidecar.to_str().unwrap_or_default()]);
    let front_proc = Proc::start(&dir, "front-sidecar", &["proxy", "--config", text_sidecar.to_str().unwrap_or_default()]);
    let _app = Proc::start(&dir, "front-app", &["workload", "--service", "front", "--listen", &front.app.to_string(), "--sidecar", &front.outbound.to_string()]);
    for addr in [tester.outbound, front.inbound, front.app] {
        wait_listening(addr, "mesh");
    }
    let headers = [("host", "front"), ("x-forwarded-for", "203.0.113.9"), ("user-agent", "meshlens-test/1")];
    let reply = http(tester.outbound, "GET", "/hello", &headers, b"").expect("request");
    assert_eq!(reply.status, 200);

    let json_line = wait_for("a JSON access log line", Duration::from_secs(10), || {
        tester_proc.output().lines().find(|l| l.starts_with('{')).map(str::to_owned)
    });
    let v: Value = serde_json::from_str(&json_line).expect("JSON");
    assert_eq!((v["direction"].as_str(), v["path"].as_str(), v["response_code"].as_u64()), (Some("outbound"), Some("/hello"), Some(200)));
    assert_eq!(v["destination_workload"], "front-v1");
    // Envoy's phases: the request's last byte (a GET: at once), the upstream's answer, the end.
    let phase = |key: &str| v[key].as_f64().unwrap_or_else(|| panic!("{key} in {json_line}"));
    let (request, response, whole) = (phase("request_duration_ms"), phase("response_duration_ms"), phase("duration_ms"));
    assert!(request <= response && response <= whole && response > 0.0, "{json_line}");
    // A response the sidecar makes itself had no upstream answer to wait for.
    let reply = http(tester.outbound, "GET", "/nowhere", &[("host", "nowhere")], b"").expect("request");
    assert_eq!(reply.status, 404);
    let local = wait_for("the 404's JSON line", Duration::from_secs(10), || {
        tester_proc.output().lines().find(|l| l.contains("/nowhere")).map(str::to_owned)
    });
    let local: Value = serde_json::from_str(&local).expect("JSON");
    assert_eq!((local["response_flags"].as_str(), &local["response_duration_ms"]), (Some("NR"), &Value::Null), "{local}");
    let text_line = wait_for("a text access log line", Duration::from_secs(10), || {
        front_proc.output().lines().find(|l| l.starts_with("inbound ")).map(str::to_owned)
    });
    let trace_id = v["trace_id"].as_str().unwrap_or_default();
    assert_eq!(
        text_line,
        format!("inbound GET /hello 200 - {trace_id} \"203.0.113.9\" application/json meshlen -"),
        "the same trace on both sides, and any header the format names"
    );

    // Envoy's format dictionary: the keys the user names, lone fields typed, empty ones left out.
    let shaped = Workload::new("shaped", &[]);
    let dictionary_sidecar = dir.path("shaped-dictionary.toml");
    let dictionary = "[access_log]\nstdout = \"json\"\nomit_empty_values = true\n[access_log.json_format]\n\
        status = \"%RESPONSE_CODE%\"\nbytes_sent = \"%BYTES_SENT%\"\nwhen = \"%START_TIME(%s.%3f)%\"\n\
        line = \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\"\nforwarded = \"%REQ(X-FORWARDED-FOR)%\"\n\
        missing = \"%REQ(X-MISSING)%\"\ntrace = \"%TRACE_ID%\"\ndetails = \"%RESPONSE_CODE_DETAILS%\"\n\
        attempts = \"%UPSTREAM_REQUEST_ATTEMPT_COUNT%\"\npath = \"%REQ_WITHOUT_QUERY(:PATH)%\"\n\
        upstream = { cluster = \"%UPSTREAM_CLUSTER%\", host = \"%UPSTREAM_HOST%\", protocol = \"%UPSTREAM_PROTOCOL%\", \
        connection = \"%UPSTREAM_CONNECTION_ID%\" }\n\
        connection = \"%CONNECTION_ID%\"\nhostname = \"%HOSTNAME%\"\ntag = \"%ENVIRONMENT(MESHLENS_TEST_TAG)%\"\n\
        grpc_status = \"%TRAILER(GRPC-STATUS)%\"\n";
    let shaped_toml = sidecar_toml(&shaped, &[&shaped, &front], collector.grpc);
    std::fs::write(&dictionary_sidecar, format!("{shaped_toml}\n{dictionary}")).expect("write");
    let shaped_args = ["proxy", "--config", dictionary_sidecar.to_str().unwrap_or_default()];
    let shaped_proc = Proc::start_with_env(&dir, "shaped-sidecar", &shaped_args, &[("MESHLENS_TEST_TAG", "canary")]);
    wait_listening(shaped.outbound, "the dictionary sidecar");
    let reply = http(shaped.outbound, "GET", "/shaped?page=2", &headers, b"").expect("request");
    assert_eq!(reply.status, 200);
    let line = wait_for("a dictionary access log line", Duration::from_secs(10), || {
        shaped_proc.output().lines().find(|l| l.starts_with('{')).map(str::to_owned)
    });
    let v: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["status"], 200, "a number: {line}");
    assert!(v["bytes_sent"].as_u64().is_some_and(|n| n > 0), "a number: {line}");
    assert_eq!((v["line"].as_str(), v["forwarded"].as_str()), (Some("GET /shaped?page=2 HTTP/1.1"), Some("203.0.113.9")), "{line}");
    let outcome = |v: &Value| (v["path"].as_str().map(str::to_owned), v["details"].as_str().map(str::to_owned), v["attempts"].as_u64());
    assert_eq!(outcome(&v), (Some("/shaped".into()), Some("via_upstream".into()), Some(1)), "{line}");
    assert_eq!(v["upstream"]["cluster"], "front", "{line}");
    assert_eq!(v["upstream"]["host"], front.inbound.to_string(), "{line}");
    assert_eq!((v["upstream"]["protocol"].as_str(), v["tag"].as_str()), (Some("HTTP/1.1"), Some("canary")), "{line}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert_eq!(v["hostname"].as_str(), Some(hostname.trim()), "{line}");
    let first_connection = v["connection"].as_u64().unwrap_or_else(|| panic!("a number: {line}"));
    let upstream_connection = v["upstream"]["connection"].as_u64().unwrap_or_else(|| panic!("a number: {line}"));
    assert!(v.get("grpc_status").is_none(), "no trailers: {line}");
    assert!(v.get("missing").is_none(), "an unset value is left out: {line}");
    assert!(v["trace"].as_str().is_some_and(|t| t.len() == 32), "{line}");
    let when: f64 = v["when"].as_str().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("seconds.millis: {line}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    assert!((now - when).abs() < 60.0, "{when} is the request's start, now {now}: {line}");
    // A request the sidecar answers itself: never sent upstream.
    let reply = http(shaped.outbound, "GET", "/lost", &[("host", "nowhere")], b"").expect("request");
    assert_eq!(reply.status, 404);
    let line = wait_for("the 404's dictionary line", Duration::from_secs(10), || {
        shaped_proc.output().lines().find(|l| l.contains("/lost")).map(str::to_owned)
    });
    let v: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["status"], 404, "{line}");
    assert_eq!(outcome(&v), (Some("/lost".into()), Some("route_not_found".into()), Some(0)), "{line}");
    let upstream = v.get("upstream");
    let none = |key| upstream.is_some_and(|u| u.get(key).is_none());
    assert!(none("host") && none("protocol") && none("connection"), "no upstream, left out: {line}");
    let second_connection = v["connection"].as_u64().unwrap_or_else(|| panic!("a number: {line}"));
    // Exchanges on one connection share its ID; another connection has another.
    let mut stream = std::net::TcpStream::connect(shaped.outbound).expect("connect");
    let twice = "GET /again HTTP/1.1\r\nhost: front\r\n\r\nGET /again HTTP/1.1\r\nhost: front\r\nconnection: close\r\n\r\n";
    std::io::Write::write_all(&mut stream, twice.as_bytes()).expect("send");
    let mut answers = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answers).expect("read");
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");
    let again: Vec<(u64, Option<u64>)> = wait_for("both lines of one connection", Duration::from_secs(10), || {
        let ids: Vec<(u64, Option<u64>)> = shaped_proc
            .output()
            .lines()
            .filter(|l| l.contains("/again"))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| Some((v["connection"].as_u64()?, v["upstream"]["connection"].as_u64())))
            .collect();
        (ids.len() == 2).then_some(ids)
    });
    assert_eq!(again[0].0, again[1].0, "one connection, one ID");
    // The upstream connection is kept alive and used again, and numbered in the same
    // sequence as the accepted ones.
    assert_eq!([again[0].1, again[1].1], [Some(upstream_connection); 2], "{again:?}");
    let mut ids = vec![first_connection, second_connection, again[0].0, upstream_connection];
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "three connections accepted and one opened, four IDs: {ids:?}");
    // A gRPC call's status, from its response trailers.
    let report = load_with(&dir, shaped.outbound, "grpc://front/demo.Shaped/Call", 1, &["--rate", "10", "--concurrency", "1"]);
    assert_eq!(report["succeeded"], 1, "{report}");
    let line = wait_for("the gRPC call's dictionary line", Duration::from_secs(10), || {
        shaped_proc.output().lines().find(|l| l.contains("demo.Shaped/Call")).map(str::to_owned)
    });
    let v: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["grpc_status"], "0", "{line}");

    // A filter narrows stdout to the requests worth a look; the OTLP records still cover all.
    let picky = Workload::new("picky", &[]);
    let picky_sidecar = dir.path("picky-filtered.toml");
    // Its format omits empty values: the 404 it answers itself has no upstream host, printed as nothing.
    let filter = "[access_log]\nstdout = \"text\"\nformat = \"%RESPONSE_CODE% %REQ(:PATH)% [%UPSTREAM_HOST%]\"\n\
                  omit_empty_values = true\nfilter = { status_at_least = 400, duration_at_least = \"1h\" }\n";
    let picky_toml = sidecar_toml(&picky, &[&picky, &front], collector.grpc);
    std::fs::write(&picky_sidecar, format!("{picky_toml}\n{filter}")).expect("write");
    let picky_proc = Proc::start(&dir, "picky-sidecar", &["proxy", "--config", picky_sidecar.to_str().unwrap_or_default()]);
    wait_listening(picky.outbound, "the filtered sidecar");
    for (host, path, status) in [("front", "/fine", 200), ("nowhere", "/missing", 404), ("front", "/fine-again", 200)] {
        assert_eq!(http(picky.outbound, "GET", path, &[("host", host)], b"").expect("request").status, status);
    }
    wait_for("the 404's line", Duration::from_secs(10), || picky_proc.output().contains("404 /missing []").then_some(()));
    wait_for("the picky sidecar's three OTLP log records", Duration::from_secs(10), || {
        let rows = collector.sql_rows("SELECT count(*) FROM logs WHERE service = 'picky'");
        (rows.first().and_then(|r| r[0].as_u64()) == Some(3)).then_some(())
    });
    let lines: Vec<String> = picky_proc.output().lines().filter(|l| l.starts_with(char::is_numeric)).map(str::to_owned).collect();
    assert_eq!(lines, ["404 /missing []"], "only the request the filter admits, once the other two were recorded");
}

#[test]
fn ten_thousand_distinct_paths_leave_the_series_count_flat() {
    let dir = TestDir::new("cardinality");
    let collector = CollectorProc::start(&dir);
    let tester = Workload::new("tester", &[]);
    let front = Workload::new("front", &[]);
    let _procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    let series = || prom_sum(&get(tester.admin, "/metrics").body, "meshlens_proxy_metric_series", &[]);

    load(&dir, tester.outbound, "http://front/items", 50);
    let before = series();
    assert!(before >= 1.0);
    let report = load_with(&dir, tester.outbound, "http://front/items", 10_000, &["--rate", "5000", "--concurrency", "32", "--unique-paths"]);
    assert_eq!(report["succeeded"], 10_000, "{report}");
    assert_eq!(series(), before, "paths never become labels");

    // TCP connection metrics, from both sides.
    let admin = |w: &Workload, metric: &str, direction: &str| prom_sum(&get(w.admin, "/metrics").body, metric, &[("direction", direction)]);
    assert!(admin(&tester, "meshlens_proxy_tcp_connections_opened_total", "outbound") >= 1.0);
    assert!(admin(&tester, "meshlens_proxy_tcp_received_bytes_total", "outbound") > 10_000.0 * 20.0, "request bytes from the app");
    assert!(admin(&front, "meshlens_proxy_tcp_sent_bytes_total", "inbound") > 10_000.0 * 20.0, "response bytes to the caller");
    // Every request counted in flight was counted out.
    let active = "meshlens_proxy_active_requests";
    let in_flight = || admin(&tester, active, "outbound") + admin(&front, active, "inbound");
    wait_for("no request left in flight", Duration::from_secs(5), || (in_flight() == 0.0).then_some(()));
}

#[test]
fn a_slow_upstream_times_out_with_a_flag_an_event_and_an_error_edge() {
    let dir = TestDir::new("timeout");
    let collector = CollectorProc::start(&dir);
    let tester = Workload::new("tester", &[]);
    let mut slow = Workload::new("slow", &[]);
    slow.app_args = vec!["--latency".into(), "2s".into()];
    let mesh = [&tester, &slow];
    let _procs = start_mesh(&dir, &[&slow], collector.grpc);
    let _tester = start_tester(&dir, &tester, &mesh, &collector, "slow", "timeout = \"300ms\"\n");

    let started = std::time::Instant::now();
    let reply = http(tester.outbound, "GET", "/work", &[("host", "slow")], b"").expect("request");
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_millis(1500), "answered at the timeout, not after the app: {:?}", started.elapsed());
    assert!(reply.body.contains("did not answer within 300ms"), "{}", reply.body);

    let span = wait_for("the timed-out span", Duration::from_secs(10), || {
        let found = collector.json("/api/traces?service=tester&limit=5");
        found["data"][0]["spans"].as_array()?.iter().find(|s| tag(s, "span.kind") == Some(&"client".into())).cloned()
    });
    assert_eq!(tag(&span, "meshlens.response_flags"), Some(&"UT".into()));
    assert_eq!(tag(&span, "error.type"), Some(&"timeout".into()));
    assert_eq!(span["logs"][0]["fields"][0]["value"], "timeout", "a span event marks the timeout: {span}");
    let topology = wait_for("the failed edge", Duration::from_secs(10), || {
        let t = collector.json("/api/v1/topology?window=5m");
        edge(&t, "tester.test", "slow.test").filter(|e| e["errors"] == 1).map(|_| t)
    });
    assert_eq!(edge(&topology, "tester.test", "slow.test").map(|e| e["response_codes"]["504"].clone()), Some(1.into()));
}

#[test]
fn retried_requests_show_one_client_span_per_attempt() {
    let dir = TestDir::new("retry");
    let capture = "capture_request_headers = [\"content-type\"]\ncapture_response_headers = [\"content-length\"]";
    let Flaky { collector, tester, _procs } = Flaky::start_with(&dir, "5xx", capture);

    const SENT: u64 = 40;
    let mut ok = 0;
    for _ in 0..SENT {
        let reply = http(tester.outbound, "POST", "/work?id=7&sig=secret", &[("host", "flaky"), ("content-type", "text/plain")], b"order=7")
            .expect("request");
        ok += u64::from(reply.status == 200);
    }
    assert!(ok >= SENT * 3 / 4, "4 attempts at 50% failure: most requests succeed ({ok} of {SENT})");

    // A retried request: its CLIENT span counts the retries and has a `retry` event per
    // retry; each attempt is a CLIENT span under it, and flaky's SERVER span of each
    // attempt hangs under that attempt.
    let complete = |t: &Value| {
        let spans = t["spans"].as_array().cloned().unwrap_or_default();
        let retried = spans.iter().any(|s| tag(s, "meshlens.retry.count").and_then(Value::as_i64).is_some_and(|n| n >= 1));
        let servers = spans.iter().filter(|s| tag(s, "span.kind") == Some(&"server".into())).count();
        let attempts = spans.iter().filter(|s| tag(s, "meshlens.retry.attempt").is_some()).count();
        retried && attempts >= 2 && servers == attempts
    };
    let trace = wait_for("a retried request's whole trace", Duration::from_secs(15), || {
        let found = collector.json(&format!("/api/traces?service=tester&limit={SENT}"));
        found["data"].as_array()?.iter().find(|t| complete(t)).cloned()
    });
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let request = spans.iter().find(|s| tag(s, "meshlens.retry.count").is_some()).expect("the request's span");
    let retries = tag(request, "meshlens.retry.count").and_then(Value::as_i64).unwrap_or(0);
    let retry_events = request["logs"].as_array().map_or(0, |l| l.iter().filter(|l| l["fields"][0]["value"] == "retry").count());
    assert_eq!(retry_events as i64, retries, "{request}");
    let mut attempts: Vec<&Value> = spans.iter().filter(|s| tag(s, "meshlens.retry.attempt").is_some()).collect();
    attempts.sort_by_key(|s| tag(s, "meshlens.retry.attempt").and_then(Value::as_i64));
    assert_eq!(attempts.len() as i64, retries + 1, "one span per attempt: {trace}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(tag(attempt, "meshlens.retry.attempt").and_then(Value::as_i64), Some(i as i64 + 1));
        assert_eq!(tag(attempt, "span.kind"), Some(&"client".into()));
        assert_eq!(attempt["references"][0]["spanID"], request["spanID"], "attempts are children of the request's span");
        let server = spans.iter().find(|s| s["references"][0]["spanID"] == attempt["spanID"] && tag(s, "span.kind") == Some(&"server".into()));
        assert!(server.is_some(), "flaky's SERVER span of attempt {} is its child: {trace}", i + 1);
        // OpenTelemetry's HTTP conventions: a resend counts the attempts before it; a client
        // span has the full URL (its signature redacted) and the port, the scheme's here.
        assert_eq!(tag(attempt, "http.request.resend_count").and_then(Value::as_i64), (i > 0).then_some(i as i64), "{attempt}");
        assert_eq!(tag(attempt, "url.full"), Some(&"http://flaky/work?id=7&sig=REDACTED".into()), "{attempt}");
        assert_eq!(tag(attempt, "server.port").and_then(Value::as_i64), Some(80), "{attempt}");
        assert_eq!(server.and_then(|s| tag(s, "url.query")), Some(&"id=7&sig=REDACTED".into()));
        // The headers the configuration names: the request's as the attempt sent it, the
        // response's as it came back.
        assert_eq!(tag(attempt, "http.request.header.content-type"), Some(&r#"["text/plain"]"#.into()), "{attempt}");
        assert!(tag(attempt, "http.response.header.content-length").is_some(), "{attempt}");
    }
    let failed = &attempts[0];
    assert!(tag(failed, "http.response.status_code").and_then(Value::as_i64).is_some_and(|s| s >= 500), "{failed}");
    assert!(failed["logs"].as_array().is_some_and(|l| l.iter().any(|l| l["fields"][0]["value"] == "retried")), "{failed}");

    // Metrics and the topology count requests, not attempts, and the edge counts the
    // retries: flaky received one request per attempt.
    let retried = |t: &Value| edge(t, "tester.test", "flaky.test").and_then(|e| e["retries"].as_u64());
    let received = wait_for("every request and retry on the edge", Duration::from_secs(15), || {
        let t = collector.json("/api/v1/topology?window=5m");
        let rows = collector.sql_rows("SELECT count(*) FROM spans WHERE service = 'flaky' AND kind = 'server'");
        let received = rows.first().and_then(|r| r[0].as_u64())?;
        let on_edge = edge(&t, "tester.test", "flaky.test").is_some_and(|e| e["requests"] == SENT);
        (on_edge && retried(&t).is_some_and(|r| r > 0 && SENT + r == received)).then_some(received)
    });
    // The wait above is the check that the edge's retries are flaky's extra requests.
    let retries = received - SENT;
    let rows = collector.sql_rows("SELECT sum(requests), sum(retries) FROM edges WHERE source_service = 'tester' AND destination_service = 'flaky'");
    assert_eq!(rows.first().map(|r| (r[0].as_u64(), r[1].as_u64())), Some((Some(SENT), Some(retries))), "{rows:?}");
    let exposition = get(collector.web, "/metrics").body;
    let edge_labels = [("source_service", "tester"), ("destination_service", "flaky")];
    assert_eq!(prom_sum(&exposition, "meshlens_retries_total", &edge_labels), retries as f64, "{exposition}");
    assert_eq!(prom_sum(&exposition, "meshlens_requests_total", &edge_labels), SENT as f64, "{exposition}");

    // `meshlens stat` counts what flaky received, every attempt: its failures show, though
    // the retries hid most of them from the tester. Each request that succeeded had one
    // successful attempt.
    let web = collector.web.to_string();
    let rows: Value = serde_json::from_str(&run(&["stat", "--collector", &web, "--window", "5m", "-o", "json"])).expect("stat JSON");
    let flaky = rows.as_array().into_iter().flatten().find(|r| r["name"] == "flaky").cloned();
    let flaky = flaky.unwrap_or_else(|| panic!("flaky in {rows}"));
    assert_eq!(flaky["requests"].as_u64(), Some(received), "{flaky}");
    let success = flaky["success_rate"].as_f64().unwrap_or(1.0);
    assert!((success - ok as f64 / received as f64).abs() < 1e-9, "{ok} of {received} attempts succeeded: {flaky}");
}

#[test]
fn grpc_calls_of_unknown_length_are_retried_on_unavailable() {
    let dir = TestDir::new("grpc-retry");
    let Flaky { collector, tester, _procs } = Flaky::start(&dir, "unavailable");

    // `meshlens load` calls as gRPC's libraries do: its message streams with no
    // content-length, and flaky answers UNAVAILABLE in the headers (trailers-only).
    const SENT: u64 = 40;
    let report = load_with(&dir, tester.outbound, "grpc://flaky/demo.Flaky/Work", SENT, &["--rate", "200", "--concurrency", "4"]);
    let succeeded = report["succeeded"].as_u64().unwrap_or(0);
    assert!(succeeded >= SENT * 3 / 4, "4 attempts at 50% failure: most calls succeed: {report}");
    let retries = prom_sum(&get(tester.admin, "/metrics").body, "meshlens_proxy_request_retries_total", &[("service", "flaky")]);
    assert!(retries >= 5.0, "about 40 retries expected, {retries} counted");

    // Each attempt's CLIENT span carries the gRPC status it got; a failed one is `retried`.
    let failed_attempt = |t: &Value| {
        let spans = t["spans"].as_array().cloned().unwrap_or_default();
        let unavailable = |s: &Value| tag(s, "rpc.grpc.status_code").and_then(Value::as_i64) == Some(14);
        spans.into_iter().find(|s| tag(s, "meshlens.retry.attempt").is_some() && unavailable(s))
    };
    let attempt = wait_for("a failed attempt's span", Duration::from_secs(15), || {
        let found = collector.json(&format!("/api/traces?service=tester&limit={SENT}"));
        found["data"].as_array()?.iter().find_map(failed_attempt)
    });
    assert!(attempt["logs"].as_array().is_some_and(|l| l.iter().any(|l| l["fields"][0]["value"] == "retried")), "{attempt}");
    assert_eq!(tag(&attempt, "rpc.method"), Some(&"Work".into()), "{attempt}");
    let messages = |s: &Value| ["request", "response"].map(|way| tag(s, &format!("meshlens.grpc.{way}_messages")).and_then(Value::as_i64));
    assert_eq!(messages(&attempt), [Some(1), Some(0)], "it sent the call's message; its answer was not read: {attempt}");

    // The attempt whose answer went back ends with that answer: its message, and the status
    // in its trailers.
    let answered = wait_for("a retried call's answered attempt", Duration::from_secs(15), || {
        let found = collector.json(&format!("/api/traces?service=tester&limit={SENT}"));
        let spans = found["data"].as_array()?.iter().filter(|t| failed_attempt(t).is_some()).flat_map(|t| t["spans"].as_array().cloned());
        let ok = |s: &Value| tag(s, "rpc.grpc.status_code").and_then(Value::as_i64) == Some(0);
        spans.flatten().find(|s| tag(s, "meshlens.retry.attempt").is_some() && ok(s))
    });
    assert_eq!(messages(&answered), [Some(1), Some(1)], "{answered}");
    assert!(tag(&answered, "http.response.body.size").and_then(Value::as_i64).is_some_and(|n| n > 5), "{answered}");
}

/// `pay` v1, answering, and v2, failing every request; and a tester whose sidecar calls `pay`
/// with `settings`.
struct FailingCanary {
    collector: CollectorProc,
    tester: Workload,
    _procs: (Vec<Proc>, Proc),
}

impl FailingCanary {
    fn start(dir: &TestDir, settings: &str) -> Self {
        let collector = CollectorProc::start(dir);
        let tester = Workload::new("tester", &[]);
        let good = Workload::new("pay", &[]);
        let mut bad = Workload::new("pay", &[]);
        bad.version = "v2".into();
        bad.app_args = vec!["--error-ratio".into(), "1.0".into()];
        let procs = start_mesh(dir, &[&good, &bad], collector.grpc);
        let tester_sidecar = start_tester(dir, &tester, &[&tester, &good, &bad], &collector, "pay", settings);
        Self { collector, tester, _procs: (procs, tester_sidecar) }
    }

    /// Endpoints of `pay` ejected, as the tester's admin endpoint counts them.
    fn ejections(&self) -> f64 {
        prom_sum(&get(self.tester.admin, "/metrics").body, "meshlens_proxy_outlier_ejections_total", &[("service", "pay")])
    }

    /// The first span with an `ejection` event among the traces `/api/traces?{query}` finds.
    fn ejecting_span(&self, what: &str, query: &str) -> Value {
        wait_for(what, Duration::from_secs(15), || {
            let found = self.collector.json(&format!("/api/traces?{query}"));
            found["data"].as_array()?.iter().flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default()).find(|s| {
                s["logs"].as_array().is_some_and(|l| l.iter().any(|l| l["fields"][0]["value"] == "ejection"))
            })
        })
    }
}

#[test]
fn an_endpoint_that_keeps_failing_is_ejected_with_a_span_event() {
    let dir = TestDir::new("outlier");
    let canary = FailingCanary::start(&dir, "[services.outlier]\nconsecutive_failures = 3\nbase_ejection_time = \"60s\"\n");
    let tester = &canary.tester;

    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(http(tester.outbound, "GET", "/work", &[("host", "pay")], b"").expect("request").status);
    }
    let failures: Vec<usize> = statuses.iter().enumerate().filter(|(_, s)| **s >= 500).map(|(i, _)| i).collect();
    assert_eq!(failures.len(), 3, "three failures in a row from v2 eject it; v1 answers the rest: {statuses:?}");
    assert!(statuses[failures[2] + 1..].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(canary.ejections(), 1.0, "the ejection is counted on the admin endpoint");

    let ejection = canary.ejecting_span("the span of the request that ejected v2", "service=tester&tag=error:true&limit=10");
    assert_eq!(tag(&ejection, "meshlens.destination.version"), Some(&"v2".into()), "{ejection}");
    let message = ejection["logs"].as_array().and_then(|l| l.iter().find(|l| l["fields"][0]["value"] == "ejection")).map(|l| l["fields"][1]["value"].clone());
    assert!(message.as_ref().and_then(Value::as_str).is_some_and(|m| m.contains("ejected for 60s")), "{message:?}");
}

#[test]
fn an_ejection_during_a_retried_request_is_an_event_on_the_attempt_that_caused_it() {
    let dir = TestDir::new("outlier-retry");
    let policies = "[services.outlier]\nconsecutive_failures = 2\nbase_ejection_time = \"60s\"\n\
                    [services.retry]\nattempts = 3\non = [\"5xx\"]\nbackoff = \"5ms\"\n";
    let canary = FailingCanary::start(&dir, policies);
    let tester = &canary.tester;

    for _ in 0..30 {
        let status = http(tester.outbound, "GET", "/work", &[("host", "pay")], b"").expect("request").status;
        assert_eq!(status, 200, "a failed attempt on v2 is retried, on v1 in the end");
    }
    assert_eq!(canary.ejections(), 1.0, "v2 ejected once");
    // The attempt whose failure ejected v2 is a CLIENT span of its own; the event is there.
    let attempt = canary.ejecting_span("the attempt that ejected v2", "service=tester&limit=30");
    assert!(tag(&attempt, "meshlens.retry.attempt").is_some(), "{attempt}");
    assert_eq!(tag(&attempt, "meshlens.destination.version"), Some(&"v2".into()), "{attempt}");
}

/// Reads an answer's head byte by byte, so that nothing after it is read.
fn answer_head(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("read the head"), 1, "{}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An app that switches to `echo` when asked and then sends back every byte it receives.
fn echo_upgrade_app(addr: std::net::SocketAddr) {
    use std::io::{BufReader, Write};
    serve_raw(addr, |stream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let head = read_head(&mut reader);
        let mut stream = stream;
        if !head.to_ascii_lowercase().contains("upgrade: echo") {
            let _ = stream.write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n");
            return;
        }
        let _ = stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

#[test]
fn an_upgraded_connection_left_idle_is_closed_and_recorded_with_flag_si() {
    use std::io::{BufReader, Read, Write};
    let dir = TestDir::new("upgrade-idle");
    let hop = RawHop::start_with(&dir, "chat", echo_upgrade_app, "[upgrades]\nidle_timeout = \"600ms\"");
    let mut stream = hop.send(b"GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let head = read_head(&mut reader).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    stream.write_all(b"hello").expect("write");
    let mut back = [0u8; 5];
    reader.read_exact(&mut back).expect("echoed");
    let quiet = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = reader.read_to_end(&mut rest);
    let waited = quiet.elapsed();
    assert!(matches!(read, Ok(0)), "the tester's sidecar closes the connection: {read:?}");
    assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(4), "closed {waited:?} after the last byte");

    let row = wait_for("the tester's span of the idle upgrade", Duration::from_secs(15), || {
        let rows = hop.collector.sql_rows(
            "SELECT status, response_flags, events, attributes FROM spans WHERE http_status_code = 101 AND kind = 'client'",
        );
        rows.into_iter().next()
    });
    assert_eq!((row[0].as_str(), row[1].as_str()), (Some("error"), Some("SI")), "{row:?}");
    assert!(row[2].as_str().is_some_and(|e| e.contains("\"idle_timeout\"")), "an event marks the close: {row:?}");
    let attributes: Value = serde_json::from_str(row[3].as_str().unwrap_or_default()).expect("attributes JSON");
    let size = &attributes["http.request.body.size"];
    assert_eq!(size.as_u64().or_else(|| size.as_str().and_then(|v| v.parse().ok())), Some(5), "{attributes}");
    let in_flight = prom_sum(&get(hop.tester.admin, "/metrics").body, "meshlens_proxy_active_requests", &[("direction", "outbound")]);
    assert_eq!(in_flight, 0.0, "no longer in flight");
}

#[test]
fn an_upgraded_connection_open_when_its_sidecar_stops_is_still_recorded() {
    use std::io::{Read, Write};
    let dir = TestDir::new("upgrade-shutdown");
    let mut hop = RawHop::start(&dir, "chat", echo_upgrade_app);
    let mut stream = hop.send(b"GET /live HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    answer_head(&mut stream);
    stream.write_all(b"hello").expect("write");
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).expect("echoed");
    // The tester's sidecar stops (as at a rolling update) with the connection open: it
    // closes it, and its record goes out in the last export.
    assert_eq!(hop._sidecars[1].terminate(Duration::from_secs(10)), Some(0), "a clean stop");
    let mut rest = Vec::new();
    assert!(matches!(stream.read_to_end(&mut rest), Ok(0) | Err(_)), "closed");
    let row = wait_for("the stopped sidecar's span of the upgrade", Duration::from_secs(15), || {
        let rows = hop.collector.sql_rows("SELECT status, events, attributes FROM spans WHERE http_status_code = 101 AND kind = 'client'");
        rows.into_iter().next()
    });
    assert_eq!(row[0].as_str(), Some("error"), "cut, as an exchange still open then is: {row:?}");
    let events = row[1].as_str().unwrap_or_default();
    assert!(events.contains("\"sidecar_shutdown\"") && !events.contains("downstream_terminated"), "why it ended: {row:?}");
    let attributes: Value = serde_json::from_str(row[2].as_str().unwrap_or_default()).expect("attributes JSON");
    let size = &attributes["http.request.body.size"];
    assert_eq!(size.as_u64().or_else(|| size.as_str().and_then(|v| v.parse().ok())), Some(5), "{attributes}");
}

#[test]
fn an_exchange_that_outlives_its_sidecars_grace_period_is_still_recorded() {
    let dir = TestDir::new("held-at-shutdown");
    let mut hop = RawHop::start(&dir, "quiet", silent_app);
    // The app holds the request for ten seconds; the tester's sidecar stops meanwhile, gives
    // it its grace period (5 s), then closes it and records it before its last export.
    let _caller = hop.send(b"GET /held HTTP/1.1\r\nHost: quiet\r\n\r\n");
    hop.wait_in_flight();
    let stopping = std::time::Instant::now();
    assert_eq!(hop._sidecars[1].terminate(Duration::from_secs(15)), Some(0), "a clean stop");
    let stopped = stopping.elapsed();
    assert!(stopped >= Duration::from_secs(4) && stopped < Duration::from_secs(9), "after the grace period: {stopped:?}");
    let row = wait_for("the stopped sidecar's span of the held request", Duration::from_secs(15), || {
        let rows = hop.collector.sql_rows("SELECT status, response_flags, events FROM spans WHERE kind = 'client' AND attributes LIKE '%/held%'");
        rows.into_iter().next()
    });
    assert_eq!((row[0].as_str(), row[1].as_str()), (Some("error"), Some("-")), "cut, by the sidecar and not its caller: {row:?}");
    let events = row[2].as_str().unwrap_or_default();
    assert!(events.contains("\"sidecar_shutdown\"") && !events.contains("downstream_terminated"), "{row:?}");
}

#[test]
fn a_websocket_style_upgrade_crosses_two_sidecars_in_one_trace() {
    use std::io::{Read, Write};
    let dir = TestDir::new("upgrade");
    let hop = RawHop::start(&dir, "chat", echo_upgrade_app);
    let collector = &hop.collector;
    let mut stream = hop.send(b"GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let head = answer_head(&mut stream).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101") && head.contains("upgrade: echo"), "{head}");
    let opened = std::time::Instant::now();
    let messages = [&b"hello"[..], &[7u8; 100_000][..]];
    for message in messages {
        stream.write_all(message).expect("write");
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).expect("echoed");
        assert!(back == message, "{} bytes come back unchanged", message.len());
    }
    std::thread::sleep(Duration::from_millis(400));
    let held = opened.elapsed();
    // The exchange is open, in flight and unrecorded, while the upgraded connection is.
    std::thread::sleep(Duration::from_secs(1));
    let open = collector.sql_rows("SELECT count(*) FROM spans WHERE http_status_code = 101");
    assert_eq!(open[0][0].as_u64(), Some(0), "no span before the close: {open:?}");
    let in_flight = || prom_sum(&get(hop.tester.admin, "/metrics").body, "meshlens_proxy_active_requests", &[("direction", "outbound")]);
    assert_eq!(in_flight(), 1.0);
    drop(stream);

    // Both sidecars recorded the exchange until the close, in one trace, as a success, with
    // the bytes that crossed after the switch in its body sizes.
    let rows = wait_for("both sides' spans of the upgrade", Duration::from_secs(15), || {
        let rows = collector.sql_rows(
            "SELECT kind, service, status, duration_ns, attributes, events FROM spans WHERE http_status_code = 101 ORDER BY kind",
        );
        (rows.len() == 2).then_some(rows)
    });
    assert_eq!(rows[0][0], "client", "{rows:?}");
    assert_eq!(rows[0][1], "tester");
    assert_eq!(rows[1][0], "server");
    assert_eq!(rows[1][1], "chat");
    assert!(rows.iter().all(|r| r[2] != "error"), "{rows:?}");
    let carried: u64 = messages.iter().map(|m| m.len() as u64).sum();
    for row in &rows {
        let duration = Duration::from_nanos(row[3].as_u64().unwrap_or_default());
        assert!(duration >= held, "the {} span lasts as long as the connection ({held:?}): {duration:?}", row[0]);
        let attributes: Value = serde_json::from_str(row[4].as_str().unwrap_or_default()).expect("attributes JSON");
        for size in ["http.request.body.size", "http.response.body.size"] {
            let value = &attributes[size];
            let n = value.as_u64().or_else(|| value.as_str().and_then(|v| v.parse().ok()));
            assert_eq!(n, Some(carried), "{size} of the {} span: {attributes}", row[0]);
        }
        assert!(row[5].as_str().is_some_and(|e| e.contains("\"upgraded\"")), "an event marks the switch: {row:?}");
    }
    assert_eq!(in_flight(), 0.0, "no longer in flight once recorded");
    let traces = collector.sql_rows("SELECT count(DISTINCT trace_id) FROM spans WHERE http_status_code = 101");
    assert_eq!(traces[0][0].as_u64(), Some(1), "one trace");
}


/// An app that answers every request with a chunked body and a trailer.
fn trailers_app(addr: std::net::SocketAddr) {
    use std::io::{BufReader, Write};
    serve_raw(addr, |stream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut stream = stream;
        loop {
            let head = read_head(&mut reader);
            if head.is_empty() {
                return;
            }
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n";
            if stream.write_all(format!("{head}5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n").as_bytes()).is_err() {
                return;
            }
        }
    });
}

#[test]
fn a_response_ending_in_trailers_is_complete_on_both_sides() {
    let dir = TestDir::new("trailers");
    let hop = RawHop::start(&dir, "ledger", trailers_app);
    let (answer, _) = hop.exchange(b"GET /balance HTTP/1.1\r\nHost: ledger\r\nTE: trailers\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("hello"), "{answer}");
    // The trailer crossed both sidecars, announced as it was.
    assert!(answer.contains("trailer: x-checksum\r\n") && answer.ends_with("0\r\nx-checksum: 42\r\n\r\n"), "{answer:?}");

    // Each sidecar read the body to its trailers: a complete exchange, not a cancelled one.
    let rows = hop.both_spans("kind, service, status, response_flags, events", "/balance");
    assert_eq!((rows[0][0].as_str(), rows[0][1].as_str()), (Some("client"), Some("tester")), "{rows:?}");
    assert_eq!((rows[1][0].as_str(), rows[1][1].as_str()), (Some("server"), Some("ledger")), "{rows:?}");
    for row in &rows {
        assert_ne!(row[2], "error", "{row:?}");
        assert_eq!(row[3], "-", "no response flags: {row:?}");
        assert!(row[4].is_null(), "no events: {row:?}");
    }
}

/// Reads a request head from `stream` and writes `reply`; returns the reader and the stream
/// for what the app does next.
fn reply_to_one(stream: std::net::TcpStream, reply: &[u8]) -> (std::io::BufReader<std::net::TcpStream>, std::net::TcpStream) {
    use std::io::Write;
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    read_head(&mut reader);
    let mut stream = stream;
    let _ = stream.write_all(reply);
    (reader, stream)
}

/// An app that answers with half the body it announces, then closes the connection.
fn cut_short_app(addr: std::net::SocketAddr) {
    serve_raw(addr, |stream| {
        let (_, stream) = reply_to_one(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly the first half");
        let _ = stream.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn a_response_the_upstream_breaks_off_is_an_upstream_reset_on_both_sides() {
    use std::io::Read;
    let dir = TestDir::new("cut-short");
    let hop = RawHop::start(&dir, "ledger", cut_short_app);
    let mut stream = hop.send(b"GET /statement HTTP/1.1\r\nHost: ledger\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    // What reaches the caller before the sidecar closes its connection (as Envoy resets the
    // stream) is best effort: the head and part of the body, or less.
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Each side saw its upstream break the body off: `UC` and an upstream_reset event, as
    // Envoy flags a reset after the response headers, with the 200 kept.
    let rows = hop.both_spans("kind, status, response_flags, http_status_code, events", "/statement");
    for row in &rows {
        assert_eq!(row[1], "error", "{row:?}");
        assert_eq!(row[2], "UC", "{row:?}");
        assert_eq!(row[3], 200, "{row:?}");
        assert!(row[4].as_str().is_some_and(|e| e.contains("\"upstream_reset\"")), "{row:?}");
    }
}

/// An app that reads a request's head and its chunked body to the last chunk, then answers
/// `200`; a connection that closes first gets nothing.
fn body_reading_app(addr: std::net::SocketAddr) {
    use std::io::{BufRead, BufReader, Write};
    serve_raw(addr, |stream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        read_head(&mut reader);
        let mut line = String::new();
        while line != "0\r\n" {
            line.clear();
            if !reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                return;
            }
        }
        let mut stream = stream;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
}

#[test]
fn a_malformed_request_body_is_the_callers_failure_not_the_upstreams() {
    let dir = TestDir::new("malformed-body");
    let hop = RawHop::start(&dir, "upload", body_reading_app);
    let chunked = "POST /whole HTTP/1.1\r\nHost: upload\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let (whole, _) = hop.exchange(format!("{chunked}4\r\nfull\r\n0\r\n\r\n").as_bytes());
    assert!(whole.starts_with("HTTP/1.1 200"), "the app answers a whole body: {whole}");
    // An invalid chunk size after the first chunk: the tester's sidecar has already sent the
    // head and the first chunk upstream when the caller's body breaks.
    let (answer, _) = hop.exchange(b"POST /broken HTTP/1.1\r\nHost: upload\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\nzz\r\n");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("request body from the caller failed"), "{answer}");

    // The caller's side: a bad request (Envoy's DPE), not an upstream reset. The called side
    // saw its caller (the tester's sidecar) go away mid-body.
    let rows = hop.both_spans("kind, status, response_flags, http_status_code, events", "/broken");
    let (client, server) = (&rows[0], &rows[1]);
    assert_eq!((client[0].as_str(), client[2].as_str(), &client[3]), (Some("client"), Some("DPE"), &Value::from(400)), "{client:?}");
    assert!(client[4].as_str().is_some_and(|e| e.contains("\"bad_request\"") && !e.contains("upstream_reset")), "{client:?}");
    assert_eq!((server[0].as_str(), server[2].as_str()), (Some("server"), Some("DC")), "{server:?}");
    assert!(server[4].as_str().is_some_and(|e| !e.contains("upstream_reset")), "{server:?}");

    // A body gzip-coded under its chunks would reach the app still coded, with nothing saying
    // so (`Transfer-Encoding` stops at each hop): refused with 501, recorded as the caller's.
    let gzipped = "POST /gzipped HTTP/1.1\r\nHost: upload\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n";
    let (answer, _) = hop.exchange(format!("{gzipped}2\r\nok\r\n0\r\n\r\n").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 501") && answer.contains("transfer coding \"gzip, chunked\""), "{answer}");
    let row = wait_for("the refused request's span", Duration::from_secs(15), || {
        hop.collector.sql_rows("SELECT kind, response_flags, http_status_code FROM spans WHERE attributes LIKE '%/gzipped%'").pop()
    });
    assert_eq!(row, serde_json::json!(["client", "DPE", 501]), "only the caller's side, refused before any upstream");
}

/// An app that answers every request with its head as it arrived (`app saw:` first).
fn head_echo_app(addr: std::net::SocketAddr) {
    use std::io::{BufReader, Write};
    serve_raw(addr, |stream| {
        let head = read_head(&mut BufReader::new(stream.try_clone().expect("clone")));
        let body = format!("app saw:\r\n{head}");
        let mut stream = stream;
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    });
}

#[test]
fn max_forwards_counts_each_sidecar_and_the_hop_it_runs_out_at_answers_trace() {
    let dir = TestDir::new("max-forwards");
    let hop = RawHop::start(&dir, "catalog", head_echo_app);
    let trace = |path: &str, max_forwards: u32| {
        let request = format!(
            "TRACE {path} HTTP/1.1\r\nHost: catalog\r\nMax-Forwards: {max_forwards}\r\nCookie: session=secret\r\n\
             Connection: close\r\n\r\n"
        );
        hop.exchange(request.as_bytes()).0
    };
    // 0: the tester's sidecar answers, with the request as it received it.
    let first = trace("/first", 0);
    assert!(first.starts_with("HTTP/1.1 200") && first.contains("message/http"), "{first}");
    assert!(first.contains("\r\n\r\nTRACE /first HTTP/1.1\r\n") && !first.contains("secret"), "{first}");
    // 1: the called service's sidecar answers, with what the tester's sidecar sent it: one
    // hop less, and the trace context it added.
    let second = trace("/second", 1);
    assert!(second.contains("\r\n\r\nTRACE /second HTTP/1.1\r\n") && !second.contains("app saw"), "{second}");
    assert!(second.contains("max-forwards: 0\r\n") && second.contains("traceparent: 00-"), "{second}");
    // 2: the application gets it, with none left.
    let app = trace("/app", 2);
    assert!(app.contains("app saw:") && app.to_ascii_lowercase().contains("max-forwards: 0\r\n"), "{app}");
    assert!(app.contains("session=secret"), "forwarded requests keep their cookies: {app}");

    // Each answer is a request of the sidecar that gave it: the second one's on both sides.
    let rows = hop.both_spans("kind, http_status_code, response_flags", "/second");
    assert_eq!(rows, vec![serde_json::json!(["client", 200, "-"]), serde_json::json!(["server", 200, "-"])], "{rows:?}");
}

/// An app that answers the first request on each connection, then reads the next and closes
/// the connection without an answer: as when its keep-alive timeout and a request cross.
fn answers_once_per_connection_app(addr: std::net::SocketAddr) {
    serve_raw(addr, |stream| {
        let (mut reader, _stream) = reply_to_one(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        read_head(&mut reader);
    });
}

#[test]
fn a_request_an_idle_app_connection_is_closed_under_is_sent_again_and_says_so() {
    let dir = TestDir::new("resent");
    let hop = RawHop::start(&dir, "keepalive", answers_once_per_connection_app);
    let (first, _) = hop.exchange(b"GET /first HTTP/1.1\r\nHost: keepalive\r\nConnection: close\r\n\r\n");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The called sidecar's connection to the app has been idle a second when the next
    // request goes out on it, and the app closes it under that request.
    std::thread::sleep(Duration::from_millis(1200));
    let (second, _) = hop.exchange(b"GET /second HTTP/1.1\r\nHost: keepalive\r\nConnection: close\r\n\r\n");
    assert!(second.starts_with("HTTP/1.1 200"), "sent again on a new connection, not a 502: {second}");
    let rows = hop.both_spans("kind, events", "/second");
    assert!(rows[1][1].as_str().is_some_and(|e| e.contains("\"resent\"")), "the called side's span says so: {rows:?}");
}

/// An app that answers with part of the body it announces, then sends nothing more for ten
/// seconds with the connection open.
fn stalling_app(addr: std::net::SocketAddr) {
    use std::io::{BufReader, Write};
    serve_raw(addr, |stream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        read_head(&mut reader);
        let mut stream = stream;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nthe first part");
        std::thread::sleep(Duration::from_secs(10));
    });
}

#[test]
fn a_response_that_stalls_is_cut_off_at_the_stream_idle_timeout_with_flag_si() {
    let dir = TestDir::new("stream-idle");
    let hop = RawHop::start_with(&dir, "feed", stalling_app, "[streams]\nidle_timeout = \"600ms\"");
    let (answer, waited) = hop.exchange(b"GET /updates HTTP/1.1\r\nHost: feed\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("the first part"), "the head and what came: {answer}");
    // The tester's sidecar (600 ms) cuts it off long before the app ends it (10 s) or the
    // other sidecar would (its default, 5 minutes).
    assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(5), "cut off after {waited:?}");

    let rows = hop.both_spans("kind, status, response_flags, http_status_code, events, attributes", "/updates");
    let (client, server) = (&rows[0], &rows[1]);
    // The app's status is kept.
    assert_cut_off_at_the_idle_timeout(client, "client", 200);
    assert!(client[4].as_str().is_some_and(|e| !e.contains("upstream_reset")), "{client:?}");
    // The called side saw its caller go away.
    assert_eq!((server[0].as_str(), server[2].as_str()), (Some("server"), Some("DC")), "{server:?}");
}

/// Asserts that a span row (`kind, status, response_flags, http_status_code, events,
/// attributes`) is the side that gave up at the stream idle timeout: an error with flag `SI`,
/// an `idle_timeout` event and `error.type` `stream_idle_timeout`.
fn assert_cut_off_at_the_idle_timeout(row: &Value, kind: &str, http_status: u16) {
    assert_eq!((row[0].as_str(), row[1].as_str(), row[2].as_str()), (Some(kind), Some("error"), Some("SI")), "{row:?}");
    assert_eq!(row[3], http_status, "{row:?}");
    assert!(row[4].as_str().is_some_and(|e| e.contains("\"idle_timeout\"")), "{row:?}");
    let attributes: Value = serde_json::from_str(row[5].as_str().unwrap_or_default()).expect("attributes JSON");
    assert_eq!(attributes["error.type"], "stream_idle_timeout", "{attributes}");
}

/// An app that reads a request and never answers it, holding the connection for ten seconds.
fn silent_app(addr: std::net::SocketAddr) {
    use std::io::BufReader;
    serve_raw(addr, |stream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        read_head(&mut reader);
        std::thread::sleep(Duration::from_secs(10));
    });
}

#[test]
fn an_application_that_never_answers_gets_its_caller_a_408_at_the_stream_idle_timeout() {
    let dir = TestDir::new("stream-idle-headers");
    // The called side's inbound is the one to give up: the tester's sidecar keeps its
    // defaults (a 15 s service timeout, a 5 minute idle timeout).
    let hop = RawHop::start_configured(&dir, "quiet", silent_app, ["", "[streams]\nidle_timeout = \"600ms\""]);
    let (answer, waited) = hop.exchange(b"GET /never HTTP/1.1\r\nHost: quiet\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("stream idle timeout"), "{answer}");
    assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(5), "answered after {waited:?}");

    let rows = hop.both_spans("kind, status, response_flags, http_status_code, events, attributes", "/never");
    let (client, server) = (&rows[0], &rows[1]);
    assert_cut_off_at_the_idle_timeout(server, "server", 408);
    // The caller's side passed the answer on as it came.
    assert_eq!((client[0].as_str(), client[2].as_str()), (Some("client"), Some("-")), "{client:?}");
    assert_eq!(client[3], 408, "{client:?}");
}

#[test]
fn the_called_side_bounds_a_grpc_call_by_its_deadline_whoever_calls() {
    let dir = TestDir::new("inbound-grpc-deadline");
    let hop = RawHop::start(&dir, "quiet", silent_app);
    // A caller outside the mesh (no sidecar of its own to bound the call) allows 500 ms;
    // the app would hold the call for ten seconds.
    let call = b"POST /demo.Quiet/Wait HTTP/1.1\r\nHost: quiet\r\ncontent-type: application/grpc\r\ngrpc-timeout: 500m\r\n\
                 te: trailers\r\ncontent-length: 5\r\nconnection: close\r\n\r\n\0\0\0\0\0";
    let (answer, waited) = exchange_at(hop.called_inbound, call);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.to_ascii_lowercase().contains("grpc-status: 4\r\n"), "{answer}");
    assert!(waited >= Duration::from_millis(450) && waited < Duration::from_secs(4), "answered after {waited:?}");
    let row = wait_for("the called side's span", Duration::from_secs(15), || {
        hop.collector.sql_rows("SELECT kind, status, response_flags, events FROM spans WHERE service = 'quiet'").pop()
    });
    assert_eq!((row[0].as_str(), row[1].as_str(), row[2].as_str()), (Some("server"), Some("error"), Some("UT")), "{row:?}");
}

#[test]
fn the_facts_of_a_sidecars_deployment_go_on_its_resource() {
    let dir = TestDir::new("resource-attributes");
    let collector = CollectorProc::start(&dir);
    let mut shop = Workload::new("shop", &[]);
    shop.telemetry = r#"resource_attributes = { "deployment.environment.name" = "prod", "k8s.cluster.name" = "east" }"#.into();
    http1_only_app(shop.app);
    let config = dir.path("shop.toml");
    std::fs::write(&config, sidecar_toml(&shop, &[&shop], collector.grpc)).expect("write");
    // What a platform may set for every container of the pod: the table wins a key both
    // name, and the workload's own keys stay the sidecar's.
    let env = [("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=shop-7f9c%2Da,deployment.environment.name=dev,service.name=impostor")];
    let sidecar = Proc::start_with_env(&dir, "shop-sidecar", &["proxy", "--config", config.to_str().unwrap_or_default()], &env);
    wait_listening(shop.inbound, "the inbound");
    let (answer, _) = exchange_at(shop.inbound, b"GET /fine HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    for table in ["spans", "logs"] {
        let row = wait_for(&format!("the request's {table}"), Duration::from_secs(15), || {
            collector.sql_rows(&format!("SELECT service, resource FROM {table} WHERE service = 'shop'")).pop()
        });
        let resource: Value = serde_json::from_str(row[1].as_str().unwrap_or_default()).expect("the resource as JSON");
        let expected = [
            ("deployment.environment.name", "prod"),
            ("k8s.cluster.name", "east"),
            ("k8s.pod.name", "shop-7f9c-a"),
            ("service.name", "shop"),
        ];
        for (key, value) in expected {
            assert_eq!(resource[key], value, "{key} in {table}: {resource}");
        }
    }
    assert!(sidecar.output().contains("\"service.name\" skipped"), "the skipped key is named: {}", sidecar.output());
}

#[test]
fn each_sidecars_cpu_and_memory_reach_the_collector_by_instance() {
    let dir = TestDir::new("instances");
    let collector = CollectorProc::start(&dir);
    // One instance named by its platform (a pod's name), one left to draw its own ID.
    let mut named = Workload::new("shop", &[]);
    named.sidecar_env = vec![("OTEL_RESOURCE_ATTRIBUTES".into(), "service.instance.id=shop-pod-a".into())];
    let mut drawn = Workload::new("shop", &[]);
    drawn.version = "v2".into();
    // Its CPU time exported as deltas, which the collector adds up.
    drawn.sidecar_env = vec![("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE".into(), "delta".into())];
    let _procs = start_mesh(&dir, &[&named, &drawn], collector.grpc);
    // Requests through both, so each has CPU time to show.
    let report = load(&dir, named.outbound, "http://shop/", 400);
    assert_eq!(report["succeeded"], 400, "{report}");

    // Two readings each (the tests' metrics interval is a second) give each a CPU rate.
    let instances = wait_for("both sidecars' figures with a CPU rate", Duration::from_secs(20), || {
        let list = collector.json("/api/v1/instances?service=shop&sdk=meshlens-proxy");
        let list = list.as_array()?.clone();
        let ready = |i: &Value| i["cpu_cores"].is_f64() && i["cpu_seconds"].as_f64().is_some_and(|s| s > 0.0);
        (list.len() == 2 && list.iter().all(ready)).then_some(list)
    });
    let by_version = |v: &str| instances.iter().find(|i| i["version"] == v).unwrap_or_else(|| panic!("{v} in {instances:?}"));
    let (a, b) = (by_version("v1"), by_version("v2"));
    assert_eq!((a["instance"].as_str(), a["namespace"].as_str()), (Some("shop-pod-a"), Some("test")), "{a}");
    let id = b["instance"].as_str().unwrap_or_default();
    assert!(id.len() == 36 && id.as_bytes()[14] == b'4' && id != "shop-pod-a", "a drawn version-4 UUID: {b}");
    for (instance, sidecar) in [(a, &named), (b, &drawn)] {
        let cores = instance["cpu_cores"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=2.0).contains(&cores), "{instance}");
        let exported = instance["resident_bytes"].as_f64().unwrap_or_default();
        let scraped = prom_sum(&get(sidecar.admin, "/metrics").body, "process_resident_memory_bytes", &[]);
        assert!(exported > 1e6 && (exported - scraped).abs() < scraped * 0.5, "exported {exported}, scraped {scraped}: {instance}");
        assert!(instance["threads"].as_f64().is_some_and(|n| n >= 1.0) && instance["open_fds"].as_f64().is_some_and(|n| n >= 3.0));
    }

    // The same figures on the collector's /metrics, one series set per instance.
    let exposition = get(collector.web, "/metrics").body;
    let named_labels = [("service", "shop"), ("workload", "shop-v1"), ("instance", "shop-pod-a"), ("sdk", "meshlens-proxy")];
    assert!(prom_sum(&exposition, "meshlens_process_resident_memory_bytes", &named_labels) > 1e6, "{exposition}");
    let user = [named_labels.as_slice(), &[("mode", "user")]].concat();
    assert!(prom_sum(&exposition, "meshlens_process_cpu_seconds_total", &user) > 0.0, "{exposition}");
    assert!(prom_sum(&exposition, "meshlens_process_threads", &[("instance", id)]) >= 1.0, "{exposition}");

    // `meshlens stat`: the shop node's two sidecars together, and the columns in the table.
    let web = collector.web.to_string();
    let rows: Value = serde_json::from_str(&run(&["stat", "--collector", &web, "-o", "json"])).expect("JSON");
    let shop = rows.as_array().into_iter().flatten().find(|r| r["name"] == "shop").unwrap_or_else(|| panic!("shop in {rows}"));
    assert_eq!(shop["proxy_instances"], 2, "{shop}");
    assert!(shop["proxy_memory_bytes"].as_f64().is_some_and(|b| b > 2e6) && shop["proxy_cpu_cores"].is_f64(), "{shop}");
    let table = run(&["stat", "--collector", &web]);
    assert!(table.lines().next().is_some_and(|h| h.ends_with("PROXY_CPU   PROXY_MEM")), "{table}");
}

#[test]
fn a_tap_streams_the_requests_it_picks_as_they_finish() {
    let dir = TestDir::new("tap");
    let collector = CollectorProc::start(&dir);
    let (tester, front) = (Workload::new("tester", &[]), Workload::new("front", &[]));
    let mut procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    let admin = tester.admin.to_string();
    let tap = |name: &str, args: &[&str]| {
        let mut all = vec!["tap", "--admin", admin.as_str(), "--duration", "30s"];
        all.extend_from_slice(args);
        Proc::start(&dir, name, &all)
    };
    let mut json = tap("tap-json", &["--direction", "outbound", "--path", "/tapped", "--limit", "3", "-o", "json"]);
    let mut text = tap("tap-text", &["--method", "GET", "--destination", "front", "--limit", "1"]);
    // Requests until both taps have what they asked for (each tap opens as its process
    // starts, so the first requests may come before it).
    let ended = (0..40).any(|_| {
        for call in ["http://front/other", "http://front/tapped/1"] {
            assert_eq!(load(&dir, tester.outbound, call, 1)["succeeded"], 1);
        }
        !json.running() && !text.running()
    });
    assert!(ended, "both taps end at their limits: {}\n{}", json.output(), text.output());
    assert_eq!((json.wait_exit(Duration::from_secs(5)), text.wait_exit(Duration::from_secs(5))), (Some(0), Some(0)));
    let printed = json.output();
    let lines: Vec<Value> = printed.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 3, "{printed}");
    for line in &lines {
        assert_eq!((line["direction"].as_str(), line["response_code"].as_u64()), (Some("outbound"), Some(200)), "{line}");
        assert_eq!((line["path"].as_str(), line["upstream_cluster"].as_str()), (Some("/tapped/1"), Some("front")), "{line}");
        assert!(line["trace_id"].as_str().is_some_and(|t| t.len() == 32), "{line}");
    }
    let printed = text.output();
    let line = printed.lines().find(|l| l.contains(" outbound ")).unwrap_or_else(|| panic!("a request's line: {printed}"));
    assert!(line.contains(" GET front/") && line.contains(" 200 - ") && line.contains(" trace="), "{line}");

    // A query the sidecar cannot take is refused, and said why.
    let out = command(meshlens()).args(["tap", "--admin", &admin, "--limit", "0"]).output().expect("run tap");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("limit"), "{out:?}");

    // A tap open when the sidecar stops ends at once, and says why, rather than holding the
    // sidecar's stop for its grace period (5 s).
    let mut open = tap("tap-open", &[]);
    wait_for("the tap to print a request", Duration::from_secs(10), || {
        assert_eq!(load(&dir, tester.outbound, "http://front/while-open", 1)["succeeded"], 1);
        open.output().contains("/while-open").then_some(())
    });
    let asked = std::time::Instant::now();
    assert_eq!(procs[0].terminate(Duration::from_secs(10)), Some(0), "{}", procs[0].output());
    assert!(asked.elapsed() < Duration::from_secs(3), "the sidecar stopped {:?} after it was asked", asked.elapsed());
    assert_eq!(open.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(open.output().contains("… ended: the sidecar is stopping"), "{}", open.output());
}

#[test]
fn the_admin_server_answers_probes_and_changes_the_log_filter_while_the_sidecar_runs() {
    let dir = TestDir::new("admin");
    let collector = CollectorProc::start(&dir);
    let front = Workload::new("front", &[]);
    let procs = start_mesh(&dir, &[&front], collector.grpc);
    let sidecar = &procs[0];
    assert_eq!(get(front.admin, "/live").body, "live\n");
    assert_eq!(get(front.admin, "/proxy-log-level").body, "info\n", "RUST_LOG's filter");
    // A request the sidecar refuses (no such service) is logged at debug level only.
    let refused = |n: usize| {
        for _ in 0..n {
            let reply = http(front.outbound, "GET", "/", &[("host", "nowhere")], b"").expect("answered");
            assert!(reply.status >= 400, "{}", reply.status);
        }
        sidecar.output().matches("request failed in the sidecar").count()
    };
    assert_eq!(refused(2), 0, "not at info");
    let put = |body: &[u8]| http(front.admin, "PUT", "/proxy-log-level", &[], body).expect("answered");
    let reply = put(b"info,meshlens_proxy=debug");
    // The answer is the filter in effect, its directives in the filter's own order.
    assert_eq!((reply.status, reply.body.as_str()), (200, "meshlens_proxy=debug,info\n"));
    assert_eq!(get(front.admin, "/proxy-log-level").body, "meshlens_proxy=debug,info\n");
    wait_for("debug lines", Duration::from_secs(5), || (refused(1) > 0).then_some(()));
    // A directive that is not one changes nothing, and says why.
    let reply = put(b"info,[{broken");
    assert_eq!(reply.status, 400);
    assert!(reply.body.starts_with("not a log filter"), "{}", reply.body);
    assert_eq!(put(&vec![b'a'; 2000]).status, 413);
    assert_eq!(get(front.admin, "/proxy-log-level").body, "meshlens_proxy=debug,info\n");
    assert_eq!(put(b"info").status, 200);
    let before = refused(0);
    assert_eq!(refused(2), before, "back at info");
}

#[test]
fn headers_named_in_the_configuration_are_recorded_as_attributes() {
    let dir = TestDir::new("captured-headers");
    let settings =
        "capture_request_headers = [\"X-Tenant\", \"x-absent\"]\ncapture_response_headers = [\"content-length\", \"content-type\"]";
    let hop = RawHop::start_with(&dir, "legacy", http1_only_app, settings);
    let request = b"GET /tenant HTTP/1.1\r\nHost: legacy\r\nX-Tenant: acme\r\nx-tenant: <b>beta</b>\r\nX-Other: not kept\r\n\
                    Connection: close\r\n\r\n";
    let (answer, _) = hop.exchange(request);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for table in ["spans", "logs"] {
        let row = wait_for(&format!("the tester's {table}"), Duration::from_secs(15), || {
            let query = format!("SELECT attributes FROM {table} WHERE service = 'tester' AND attributes LIKE '%/tenant%'");
            hop.collector.sql_rows(&query).pop()
        });
        let attributes: Value = serde_json::from_str(row[0].as_str().unwrap_or_default()).expect("attributes as JSON");
        assert_eq!(attributes["http.request.header.x-tenant"], serde_json::json!(["acme", "<b>beta</b>"]), "{table}: {attributes}");
        assert_eq!(attributes["http.response.header.content-length"], serde_json::json!(["2"]), "{table}: {attributes}");
        let keys = attributes.as_object().map(|o| o.keys().filter(|k| k.contains(".header.")).collect::<Vec<_>>());
        let headers = keys.unwrap_or_default();
        let expected = ["http.request.header.x-tenant", "http.response.header.content-length"];
        assert_eq!(headers, expected, "only named headers that came (the app sent no content-type): {attributes}");
    }
}

#[test]
fn a_caller_that_leaves_before_the_answer_is_still_recorded_with_flag_dc() {
    let dir = TestDir::new("caller-gone");
    let hop = RawHop::start(&dir, "quiet", silent_app);
    // The caller gives up 300 ms after the request is out; the app would hold it for ten
    // seconds.
    let caller = hop.send(b"GET /gone HTTP/1.1\r\nHost: quiet\r\n\r\n");
    hop.wait_in_flight();
    std::thread::sleep(Duration::from_millis(300));
    drop(caller);

    // Both sides record the request when their caller leaves (the tester's sidecar, then
    // the called one, whose caller is that sidecar), as Envoy logs it: no response, `DC`.
    let rows = hop.both_spans("kind, status, response_flags, http_status_code, events, duration_ns", "/gone");
    for (row, kind) in rows.iter().zip(["client", "server"]) {
        assert_eq!((row[0].as_str(), row[1].as_str(), row[2].as_str()), (Some(kind), Some("error"), Some("DC")), "{row:?}");
        assert!(row[3].is_null(), "no response, no status code: {row:?}");
        assert!(row[4].as_str().is_some_and(|e| e.contains("\"downstream_terminated\"")), "{row:?}");
        let waited = Duration::from_nanos(row[5].as_u64().unwrap_or(0));
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "until the caller left: {waited:?}");
    }
    let logs = wait_for("an access log on each side", Duration::from_secs(15), || {
        let logs = hop.collector.sql_rows("SELECT body FROM logs WHERE attributes LIKE '%/gone%'");
        (logs.len() == 2).then_some(logs)
    });
    assert!(logs.iter().all(|l| l[0].as_str().is_some_and(|b| b.starts_with("GET /gone HTTP/1.1 0 DC "))), "{logs:?}");
    let topology = hop.collector.json("/api/v1/topology?window=60s");
    let edge = edge(&topology, "tester.test", "quiet.test").expect("the edge");
    assert_eq!((&edge["requests"], &edge["errors"]), (&Value::from(1), &Value::from(1)), "{edge}");
}

#[test]
fn request_heads_the_sidecar_cannot_read_are_still_logged_and_counted() {
    let dir = TestDir::new("unread-heads");
    let hop = RawHop::start_with(&dir, "shop", silent_app, "[connections]\nrequest_headers_timeout = \"500ms\"");
    // A header line without a colon: answered 400 (by hyper), the connection closed.
    let (broken, _) = hop.exchange(b"GET /items HTTP/1.1\r\nHost: shop\r\nno colon here\r\n\r\n");
    assert!(broken.starts_with("HTTP/1.1 400"), "{broken}");
    // A head that stops half-way: its connection dropped at the request headers timeout.
    let (late, waited) = hop.exchange(b"GET /items HTTP/1.1\r\nHost: shop\r\n");
    assert!(late.is_empty() && waited >= Duration::from_millis(450) && waited < Duration::from_secs(3), "{late:?} after {waited:?}");
    // A head its caller gives up on half-way.
    drop(hop.send(b"GET /items HTTP/1.1\r\nHo"));

    // None reached a layer, let alone the app; each is one request in the access log.
    let logs = wait_for("three access logs", Duration::from_secs(15), || {
        let rows = hop.collector.sql_rows("SELECT body FROM logs WHERE starts_with(body, '- - ') ORDER BY body");
        (rows.len() == 3).then_some(rows)
    });
    let bodies: Vec<&str> = logs.iter().filter_map(|row| row[0].as_str()).collect();
    for (body, start) in bodies.iter().zip(["- - HTTP/1.1 0 DC 0 0 ", "- - HTTP/1.1 400 DPE 0 0 ", "- - HTTP/1.1 408 - 0 0 "]) {
        assert!(body.starts_with(start), "{body} for {start} in {bodies:?}");
    }
    let row = wait_for("the broken head's span", Duration::from_secs(15), || {
        let query = "SELECT kind, operation, response_flags, http_status_code, events FROM spans WHERE response_flags = 'DPE'";
        hop.collector.sql_rows(query).pop()
    });
    assert_eq!((&row[0], &row[1], &row[2], &row[3]), (&Value::from("client"), &Value::from("HTTP"), &Value::from("DPE"), &Value::from(400)));
    assert!(row[4].as_str().is_some_and(|e| e.contains("\"downstream_protocol_error\"") && e.contains("invalid HTTP header")), "{row:?}");
    // And in the request metrics, with the listener's own counters.
    let exposition = get(hop.tester.admin, "/metrics").body;
    let requests = |classification: &str| {
        prom_sum(&exposition, "meshlens_proxy_requests_total", &[("direction", "outbound"), ("classification", classification)])
    };
    assert_eq!((requests("failure"), requests("success")), (2.0, 1.0), "DPE and DC fail; a 408 is the caller's own error");
    assert_eq!(prom_sum(&exposition, "meshlens_proxy_downstream_header_timeouts_total", &[("direction", "outbound")]), 1.0);
}

#[test]
fn an_http2_header_list_over_the_limit_gets_431_and_is_recorded() {
    let dir = TestDir::new("h2-head-limit");
    let hop = RawHop::start_with(&dir, "shop", silent_app, "[connections]\nmax_request_headers_kb = 8");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status = runtime.block_on(async {
        let mut sender = http2_caller(hop.tester.outbound).await;
        let cookie = "c".repeat(12 * 1024);
        let get = http::Request::get("http://shop/big-cookie").header("cookie", cookie);
        let answer = sender.send_request(get.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request")).await;
        answer.expect("an answer").status()
    });
    assert_eq!(status, 431);
    // Recorded as any request the sidecar refuses: access log, span, request metrics.
    let body = wait_for("the access log", Duration::from_secs(15), || {
        let rows = hop.collector.sql_rows("SELECT body FROM logs WHERE body LIKE '%/big-cookie%'");
        rows.into_iter().next().and_then(|row| row[0].as_str().map(str::to_owned))
    });
    assert!(body.starts_with("GET /big-cookie HTTP/2 431 DPE "), "{body}");
    let row = wait_for("the span", Duration::from_secs(15), || {
        let query = "SELECT response_flags, http_status_code FROM spans WHERE kind = 'client' AND attributes LIKE '%/big-cookie%'";
        hop.collector.sql_rows(query).pop()
    });
    assert_eq!((&row[0], &row[1]), (&Value::from("DPE"), &Value::from(431)));
    let exposition = get(hop.tester.admin, "/metrics").body;
    let failures = prom_sum(&exposition, "meshlens_proxy_requests_total", &[("direction", "outbound"), ("classification", "failure")]);
    assert_eq!(failures, 1.0);
}

/// An app that answers its first request `502` at once, and reads every later one and never
/// answers it (holding the connection for ten seconds).
fn fails_then_hangs_app(addr: std::net::SocketAddr) {
    use std::{io::{BufReader, Write}, sync::atomic::{AtomicUsize, Ordering}};
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    serve_raw(addr, |stream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        if read_head(&mut reader).is_empty() {
            return;
        }
        if SEEN.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        std::thread::sleep(Duration::from_secs(10));
    });
}

#[test]
fn an_attempt_the_service_timeout_cuts_off_is_still_a_span_with_its_servers_under_it() {
    let dir = TestDir::new("attempt-cut-off");
    let entry = "timeout = \"500ms\"\n[services.retry]\nattempts = 2\non = [\"gateway-error\"]\nbackoff = \"5ms\"\n";
    let hop = RawHop::start_routed(&dir, "slow", fails_then_hangs_app, entry);
    let (answer, _) = hop.exchange(b"GET /slow HTTP/1.1\r\nHost: slow\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 504"), "the service timeout ends both attempts: {answer}");

    // The request's span, one CLIENT span per attempt, and the called side's SERVER span of
    // each attempt.
    let rows = wait_for("five spans", Duration::from_secs(15), || {
        let sql = "SELECT kind, span_id, parent_span_id, response_flags, http_status_code, events, attributes \
                   FROM spans WHERE attributes LIKE '%/slow%' ORDER BY start_time";
        let rows = hop.collector.sql_rows(sql);
        (rows.len() == 5).then_some(rows)
    });
    let attempt = |row: &Value| {
        let attributes: Value = serde_json::from_str(row[6].as_str().unwrap_or_default()).expect("attributes JSON");
        attributes["meshlens.retry.attempt"].as_i64()
    };
    let find = |kind: &str, n: Option<i64>| rows.iter().find(|r| r[0] == kind && attempt(r) == n).cloned().expect("the span");
    let request = find("client", None);
    assert_eq!((request[3].as_str(), &request[4]), (Some("UT"), &Value::from(504)), "{request:?}");
    let (first, second) = (find("client", Some(1)), find("client", Some(2)));
    assert!(first[5].as_str().is_some_and(|e| e.contains("\"retried\"")), "{first:?}");
    assert!(second[4].is_null() && second[5].as_str().is_some_and(|e| e.contains("\"cancelled\"")), "{second:?}");
    for client in [&first, &second] {
        assert_eq!(client[2], request[1], "each attempt is a child of the request's span: {client:?}");
        let server = rows.iter().find(|r| r[0] == "server" && r[2] == client[1]);
        assert!(server.is_some(), "the called side's span of attempt {:?} hangs under it: {rows:?}", attempt(client));
    }
}

/// An app that answers every other request `502`, and the rest, by path: `/stream` with
/// `hello`, then, 400 ms later, ` world`; `/cut` with half the body it announces, then
/// closing the connection.
fn fails_then_streams_app(addr: std::net::SocketAddr) {
    use std::{io::{BufReader, Write}, sync::atomic::{AtomicUsize, Ordering}};
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    serve_raw(addr, |stream| {
        let head = read_head(&mut BufReader::new(stream.try_clone().expect("clone")));
        let mut stream = stream;
        if SEEN.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        } else if head.contains("/stream") {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello");
            std::thread::sleep(Duration::from_millis(400));
            let _ = stream.write_all(b" world");
        } else {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly the first half");
        }
    });
}

#[test]
fn the_attempt_whose_answer_goes_back_lasts_until_that_answer_ends() {
    let dir = TestDir::new("attempt-answer");
    let entry = "[services.retry]\nattempts = 2\non = [\"gateway-error\"]\nbackoff = \"5ms\"\n";
    let hop = RawHop::start_routed(&dir, "stream", fails_then_streams_app, entry);
    let spans = |path: &str| {
        wait_for("the request's span and both attempts'", Duration::from_secs(15), || {
            let sql = format!(
                "SELECT duration_ns, http_status_code, response_flags, events, attributes FROM spans \
                 WHERE kind = 'client' AND attributes LIKE '%{path}%' ORDER BY start_time"
            );
            let rows = hop.collector.sql_rows(&sql);
            (rows.len() == 3).then_some(rows)
        })
    };
    let attribute = |row: &Value, key: &str| {
        let attributes: Value = serde_json::from_str(row[4].as_str().unwrap_or_default()).expect("attributes JSON");
        attributes[key].clone()
    };

    // The first attempt is answered 502 and retried; the second's answer streams for 400 ms.
    let (answer, took) = hop.exchange(b"GET /stream HTTP/1.1\r\nHost: stream\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello world"), "{answer}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    let rows = spans("/stream");
    let (request, first, last) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!((attribute(first, "meshlens.retry.attempt"), attribute(last, "meshlens.retry.attempt")), (1.into(), 2.into()));
    assert!(first[3].as_str().is_some_and(|e| e.contains("\"retried\"")), "{first:?}");
    // The last attempt ends with its answer's body, as the request does, and says what it
    // carried.
    assert!(last[0].as_u64().is_some_and(|d| d >= 400_000_000), "{last:?}");
    assert!(first[0].as_u64() < last[0].as_u64(), "a retried attempt ends with its answer's head: {first:?} {last:?}");
    assert!(request[0].as_u64() >= last[0].as_u64(), "{request:?} {last:?}");
    assert_eq!((&last[1], attribute(last, "http.response.body.size")), (&Value::from(200), 11.into()), "{last:?}");

    // An answer the app breaks off: the last attempt is marked as the request is.
    let (answer, _) = hop.exchange(b"GET /cut HTTP/1.1\r\nHost: stream\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("only the first half"), "{answer}");
    let rows = spans("/cut");
    for span in [&rows[0], &rows[2]] {
        assert_eq!((&span[1], span[2].as_str()), (&Value::from(200), Some("UC")), "{rows:?}");
        assert!(span[3].as_str().is_some_and(|e| e.contains("\"upstream_reset\"")), "{span:?}");
        assert_eq!(attribute(span, "error.type"), "upstream_reset", "{span:?}");
    }
}

/// An HTTP/2 (cleartext) app: `/ok` answers `ok`; anything else answers with headers and one
/// body frame, then sends nothing more on that stream.
fn stalling_h2_app(addr: std::net::SocketAddr) {
    use futures_util::StreamExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    type Frame = Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>;
    type Frames = http_body_util::StreamBody<futures_util::stream::BoxStream<'static, Frame>>;
    let listener = std::net::TcpListener::bind(addr).expect("bind the app");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let ok = req.uri().path() == "/ok";
                    let first = http_body::Frame::data(bytes::Bytes::from_static(if ok { b"ok" } else { b"the first part" }));
                    let frames = futures_util::stream::once(async move { Ok(first) });
                    let frames = if ok { frames.boxed() } else { frames.chain(futures_util::stream::pending()).boxed() };
                    Ok::<_, std::convert::Infallible>(http::Response::new(Frames::new(frames)))
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                tokio::spawn(connection.serve_connection(TokioIo::new(stream), service));
            }
        });
    });
}

/// An HTTP/2 (prior knowledge) connection to `addr`, driven on the current runtime.
async fn http2_caller(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    sender
}

#[test]
fn an_http2_stream_that_stalls_is_reset_and_its_connection_kept() {
    use http_body_util::BodyExt;
    let dir = TestDir::new("stream-idle-h2");
    let hop = RawHop::start_with(&dir, "feed", stalling_h2_app, "[streams]\nidle_timeout = \"600ms\"");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut sender = http2_caller(hop.tester.outbound).await;
        let get = |path: &str| {
            let uri = format!("http://feed{path}");
            http::Request::get(uri).body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request")
        };
        let sent = std::time::Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(get("/updates"))).await;
        let mut body = response.expect("headers in time").expect("response").into_body();
        let first = body.frame().await.expect("a frame").expect("the first frame");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"the first part"[..]));
        let next = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("the stream ends in time");
        let waited = sent.elapsed();
        assert!(matches!(next, Some(Err(_))), "the stream is reset, not ended: {next:?}");
        assert!(waited >= Duration::from_millis(600), "cut off after {waited:?}");

        // The connection carries on.
        let ok = sender.send_request(get("/ok")).await.expect("a second request on the connection");
        let bytes = ok.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"ok");
    });

    let row = wait_for("the tester's span", Duration::from_secs(15), || {
        let rows = hop.collector.sql_rows(
            "SELECT status, response_flags, http_status_code FROM spans WHERE kind = 'client' AND attributes LIKE '%/updates%'",
        );
        rows.into_iter().next()
    });
    assert_eq!((row[0].as_str(), row[1].as_str()), (Some("error"), Some("SI")), "{row:?}");
    assert_eq!(row[2], 200, "{row:?}");
}

/// An app that speaks only HTTP/1.1: `/garbage` gets an unreadable status line, `/bad-chunk`
/// a chunked body whose second chunk size is not hex, anything else `ok`; an HTTP/2
/// connection's preface reads as a request head and gets `ok` too. It holds
/// each connection a second after answering, as a server waiting for the next request does
/// (closing at once could reset the HTTP/2 client's writes before it reads the answer).
fn http1_only_app(addr: std::net::SocketAddr) {
    use std::io::{BufReader, Write};
    serve_raw(addr, |stream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let head = read_head(&mut reader);
        let answer: &[u8] = if head.starts_with("GET /garbage ") {
            b"HTTP/1.1 abc\r\n\r\n"
        } else if head.starts_with("GET /bad-chunk ") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"
        } else if head.starts_with("GET /length-and-chunks ") {
            // Both framings: the chunks win (RFC 9112), and the length is stale.
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        };
        let mut stream = stream;
        let _ = stream.write_all(answer);
        std::thread::sleep(Duration::from_secs(1));
    });
}

#[test]
fn an_answer_that_breaks_http_is_the_upstreams_protocol_error_with_flag_upe() {
    use http_body_util::BodyExt;
    let dir = TestDir::new("upstream-protocol-error");
    let hop = RawHop::start(&dir, "legacy", http1_only_app);
    let (ok, _) = hop.exchange(b"GET /fine HTTP/1.1\r\nHost: legacy\r\nConnection: close\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok"), "the app answers HTTP/1.1: {ok}");
    let (garbage, _) = hop.exchange(b"GET /garbage HTTP/1.1\r\nHost: legacy\r\nConnection: close\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 502") && garbage.contains("broke the HTTP protocol"), "{garbage}");

    // An HTTP/2 caller: the sidecars keep its protocol up to the app, which cannot speak it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (status, message) = runtime.block_on(async {
        let mut sender = http2_caller(hop.tester.outbound).await;
        let req = http::Request::get("http://legacy/over-h2").body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
        let response = sender.send_request(req).await.expect("a response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    assert_eq!(status, 502, "{message}");
    assert!(message.contains("broke the HTTP protocol") && message.contains("http2 error: "), "the cause is named: {message}");

    // A response framed both ways is read by its chunks and goes on without its stale
    // length: the caller gets the whole body, and neither side saw a failure.
    let (both, _) = hop.exchange(b"GET /length-and-chunks HTTP/1.1\r\nHost: legacy\r\nConnection: close\r\n\r\n");
    assert!(both.starts_with("HTTP/1.1 200") && !both.to_lowercase().contains("content-length: 5"), "{both}");
    assert!(both.ends_with("2\r\nok\r\n0\r\n\r\n") || both.ends_with("\r\n\r\nok"), "the whole body: {both:?}");
    let rows = hop.both_spans("kind, status, response_flags", "/length-and-chunks");
    assert!(rows.iter().all(|r| r[1] == "unset" && r[2] == "-"), "{rows:?}");

    // A bad chunk after the head: the status stays as sent, the body is cut off.
    let (cut, _) = hop.exchange(b"GET /bad-chunk HTTP/1.1\r\nHost: legacy\r\nConnection: close\r\n\r\n");
    assert!(cut.starts_with("HTTP/1.1 200") && !cut.ends_with("0\r\n\r\n"), "{cut}");

    // The called side's sidecar saw the app break the protocol (Envoy's UPE), not a reset;
    // the caller's side passed its 502 on, or saw the body broken off (UC).
    for (path, status, caller_flags) in [("/garbage", 502, "-"), ("/over-h2", 502, "-"), ("/bad-chunk", 200, "UC")] {
        let rows = hop.both_spans("kind, status, response_flags, http_status_code, events, attributes", path);
        let (client, server) = (&rows[0], &rows[1]);
        assert_eq!((client[0].as_str(), client[2].as_str(), &client[3]), (Some("client"), Some(caller_flags), &Value::from(status)), "{client:?}");
        assert_eq!((server[0].as_str(), server[1].as_str(), server[2].as_str()), (Some("server"), Some("error"), Some("UPE")), "{server:?}");
        assert_eq!(server[3], status, "{server:?}");
        assert!(server[4].as_str().is_some_and(|e| e.contains("\"upstream_protocol_error\"") && !e.contains("upstream_reset")), "{server:?}");
        let attributes: Value = serde_json::from_str(server[5].as_str().unwrap_or_default()).expect("attributes JSON");
        assert_eq!(attributes["error.type"], "upstream_protocol_error", "{attributes}");
    }
    // The event of the bad chunk names it.
    let rows = hop.both_spans("events", "/bad-chunk");
    assert!(rows[1][0].as_str().is_some_and(|e| e.to_lowercase().contains("chunk")), "{rows:?}");
}

#[test]
fn check_prints_the_configuration_the_sidecar_would_run_with() {
    let dir = TestDir::new("check");
    let tester = Workload::new("tester", &[]);
    let config = dir.path("tester.toml");
    // The TOML names no endpoint: OpenTelemetry's variable gives it.
    let toml = sidecar_toml(&tester, &[&tester], free_addr());
    let toml: String = toml.lines().filter(|l| !l.starts_with("otlp_endpoint")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&config, toml).expect("write");
    let check = |env: &[(&str, &str)], path: &std::path::Path| {
        let out = command(meshlens())
            .args(["proxy", "--check", "--config", path.to_str().unwrap_or_default()])
            .envs(env.iter().copied())
            .output()
            .expect("run meshlens proxy --check");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gateway:4317"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret"),
        ("OTEL_PROPAGATORS", "b3,jaeger"),
    ];
    // That it returned at all is the check that nothing started: a sidecar runs until
    // signalled.
    let (ok, stdout, stderr) = check(&env, &config);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("export        OTLP/gRPC") && stdout.contains("  traces      http://gateway:4317\n"), "{stdout}");
    let batches = "  batches     sent every 200ms or at 256 records, 4096 records a signal queued at most; metrics every 1s\n";
    assert!(stdout.contains(batches), "{stdout}");
    assert!(stdout.contains("export headers x-api-key (value hidden)") && stdout.contains("propagation   b3,"), "{stdout}");
    assert!(stderr.contains("\"jaeger\" ignored") && !format!("{stdout}{stderr}").contains("s3cret"), "{stderr}");
    // A configuration the sidecar refuses fails the check, saying why.
    let broken = dir.path("broken.toml");
    std::fs::write(&broken, "[workload]\nservice = \"\"\n").expect("write");
    let (ok, _, stderr) = check(&[], &broken);
    assert!(!ok && stderr.contains("broken.toml"), "{stderr}");
    // So does an export endpoint the sidecar would refuse at its start.
    let ftp = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://tempo:4318/v1/traces")];
    let (ok, _, stderr) = check(&ftp, &config);
    assert!(!ok && stderr.contains("ftp://tempo:4318/v1/traces") && stderr.contains("starts with http:// or https://"), "{stderr}");
    // An https:// endpoint is reached over TLS, as the check says.
    let tls = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://tempo:4318/v1/traces")];
    let (ok, stdout, stderr) = check(&tls, &config);
    assert!(ok && stdout.contains("  traces      https://tempo:4318/v1/traces (TLS trusting the system's roots)\n"), "{stdout}{stderr}");
}
