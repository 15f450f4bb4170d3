//! OTLP over TLS: a collector started with `--otlp-tls-cert` and `--otlp-tls-key` takes
//! exports over TLS on both receivers, from sidecars exporting to `https://` endpoints over
//! gRPC and over HTTP, trusting its CA by their `[telemetry.tls]` table or OpenTelemetry's
//! variables. A sidecar that does not trust the collector's certificate, or that speaks plain
//! text to it, drops its telemetry and counts it, its traffic untouched, and the collector
//! counts the refused handshakes; plain text is told, in its own protocol, that the port
//! expects TLS. With `--otlp-tls-client-ca` (mutual TLS) only sidecars
//! presenting a certificate of that CA are taken. A certificate renewed in its files is
//! presented without a restart. Files that are missing or hold no certificate stop the
//! start with their path named. With `--web-tls-cert` the web port speaks TLS too, to the
//! CLI (`--collector https://…`, `--collector-ca`) and to a real Prometheus.

mod support;

use std::{net::SocketAddr, path::Path, time::Duration};

use support::*;

fn admin_metric(w: &Workload, metric: &str, labels: &[(&str, &str)]) -> f64 {
    prom_sum(&get(w.admin, "/metrics").body, metric, labels)
}

fn handshakes(collector: &CollectorProc, transport: &str, outcome: &str) -> f64 {
    let exposition = get(collector.web, "/metrics").body;
    prom_sum(&exposition, "meshlens_collector_tls_handshakes_total", &[("transport", transport), ("outcome", outcome)])
}

/// The number of spans the collector holds from `service`.
fn spans_of(collector: &CollectorProc, service: &str) -> u64 {
    let rows = collector.sql_rows(&format!("SELECT count(*) FROM spans WHERE service = '{service}'"));
    rows.first().and_then(|r| r[0].as_u64()).unwrap_or(0)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A collector whose OTLP receivers speak TLS with a certificate of `pki` for localhost
/// and 127.0.0.1 (in `collector.pem` and `collector-key.pem`), asking for client
/// certificates of `client_ca` if given.
fn tls_collector(dir: &TestDir, pki: &Pki, client_ca: Option<&Path>) -> CollectorProc {
    let (cert, key) = pki.issue("collector", &["localhost", "127.0.0.1"]).expect("a test certificate");
    let mut args = vec!["--otlp-tls-cert", path(&cert), "--otlp-tls-key", path(&key)];
    if let Some(ca) = client_ca {
        args.extend(["--otlp-tls-client-ca", path(ca)]);
    }
    CollectorProc::start_with_args(dir, &args)
}

/// Sends `n` requests from `tester` to `front`; all must succeed.
fn traffic(dir: &TestDir, tester: &Workload, n: u64) {
    let report = load(dir, tester.outbound, "http://front/", n);
    assert_eq!(report["succeeded"], n, "traffic is unaffected: {report}");
}

/// A workload exporting with `telemetry` and `env`.
fn workload(service: &str, telemetry: String, env: &[(&str, &str)]) -> Workload {
    let mut w = Workload::new(service, &[]);
    w.telemetry = format!("export_timeout = \"500ms\"\nmax_retry_time = \"1s\"\n{telemetry}");
    w.sidecar_env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    w
}

#[test]
fn sidecars_export_over_tls_by_grpc_and_http_and_one_not_trusting_the_collector_drops_and_counts() {
    let dir = TestDir::new("otlp-tls");
    let pki = Pki::new(&dir, "mesh").expect("a test CA");
    let collector = tls_collector(&dir, &pki, None);
    let (grpc, http) = (collector.grpc.port(), collector.http.port());

    // The caller over gRPC, trusting the CA by its table; the callee over OTLP/HTTP to
    // `localhost`, trusting it by OpenTelemetry's variable.
    let tester =
        workload("tester", format!("otlp_endpoint = \"https://127.0.0.1:{grpc}\"\n[telemetry.tls]\nca_file = \"{}\"", path(&pki.ca)), &[]);
    let front = workload(
        "front",
        format!("otlp_protocol = \"http/protobuf\"\notlp_endpoint = \"https://localhost:{http}\""),
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&pki.ca))],
    );
    let _procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    traffic(&dir, &tester, 100);
    wait_for("both sidecars' spans in the collector", Duration::from_secs(15), || {
        (spans_of(&collector, "tester") >= 100 && spans_of(&collector, "front") >= 100).then_some(())
    });
    for w in [&tester, &front] {
        assert_eq!(admin_metric(w, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0, "{}: nothing dropped", w.service);
    }
    let logs = collector.sql_rows("SELECT service, count(*) FROM logs GROUP BY service ORDER BY service");
    assert_eq!(serde_json::Value::from(logs), serde_json::json!([["front", 100], ["tester", 100]]), "access logs too");
    assert!(handshakes(&collector, "grpc", "ok") >= 1.0 && handshakes(&collector, "http", "ok") >= 1.0);
    assert_eq!(handshakes(&collector, "grpc", "refused") + handshakes(&collector, "http", "refused"), 0.0);

    // A sidecar trusting the system's roots only, and one speaking plain text to the TLS port.
    let dir = TestDir::new("otlp-tls-untrusted");
    let stranger = workload("tester", format!("otlp_endpoint = \"https://127.0.0.1:{grpc}\""), &[]);
    let plain = workload("front", format!("otlp_endpoint = \"http://127.0.0.1:{grpc}\""), &[]);
    let procs = start_mesh(&dir, &[&stranger, &plain], collector.grpc);
    traffic(&dir, &stranger, 50);
    wait_for("both sidecars to drop their telemetry", Duration::from_secs(20), || {
        let dropped = |w| admin_metric(w, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]);
        (dropped(&stranger) > 0.0 && dropped(&plain) > 0.0).then_some(())
    });
    assert!(handshakes(&collector, "grpc", "refused") >= 1.0, "the collector counted the stranger's refusal");
    assert!(handshakes(&collector, "grpc", "plaintext") >= 1.0, "and the plain text");
    let log = procs[0].output();
    assert!(log.contains("UnknownIssuer") || log.contains("unknown issuer"), "the stranger says why:\n{log}");
    let log = procs[2].output();
    assert!(log.contains("this port expects TLS: send to an https:// endpoint"), "so does the plain one:\n{log}");
    assert_eq!(spans_of(&collector, "tester"), 100, "nothing from the stranger was taken");

    // Plain HTTP/1 to the OTLP/HTTP port, as from a sender given an `http://` endpoint.
    let reply = support::http(collector.http, "POST", "/v1/traces", &[("content-type", "application/x-protobuf")], b"").expect("an answer");
    assert_eq!((reply.status, reply.body.as_str()), (400, "this port expects TLS: send to an https:// endpoint\n"));
    assert!(handshakes(&collector, "http", "plaintext") >= 1.0);
}

#[test]
fn with_mutual_tls_only_sidecars_presenting_a_certificate_of_the_client_ca_are_taken() {
    let dir = TestDir::new("otlp-mtls");
    let ca = |name| Pki::new(&dir, name).expect("a test CA");
    let (servers, clients, others) = (ca("servers"), ca("sidecars"), ca("others"));
    let collector = tls_collector(&dir, &servers, Some(&clients.ca));
    let endpoint = format!("https://127.0.0.1:{}", collector.grpc.port());
    let (cert, key) = clients.issue("tester", &["tester.test"]).expect("a test certificate");
    let (other_cert, other_key) = others.issue("front", &["front.test"]).expect("a test certificate");

    // The tester's certificate by its table; the front's, of another CA, by the variables.
    let tester = workload(
        "tester",
        format!(
            "otlp_endpoint = \"{endpoint}\"\n[telemetry.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            path(&servers.ca),
            path(&cert),
            path(&key)
        ),
        &[],
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&servers.ca)),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path(&other_cert)),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path(&other_key)),
    ];
    let front = workload("front", format!("otlp_endpoint = \"{endpoint}\""), &env);
    let procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    traffic(&dir, &tester, 50);
    wait_for("the tester's spans in the collector", Duration::from_secs(15), || (spans_of(&collector, "tester") >= 50).then_some(()));
    wait_for("the front to drop its telemetry", Duration::from_secs(20), || {
        (admin_metric(&front, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]) > 0.0).then_some(())
    });
    assert_eq!(admin_metric(&tester, "meshlens_proxy_telemetry_dropped_total", &[]), 0.0);
    assert_eq!(spans_of(&collector, "front"), 0, "the front's certificate is not of the sidecars' CA");
    assert!(handshakes(&collector, "grpc", "refused") >= 1.0);
    drop(procs);

    // A sidecar presenting no certificate at all.
    let dir = TestDir::new("otlp-mtls-none");
    let bare = workload("tester", format!("otlp_endpoint = \"{endpoint}\""), &[("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&servers.ca))]);
    let front = workload("front", String::new(), &[]);
    let _procs = start_mesh(&dir, &[&bare, &front], collector.grpc);
    let before = spans_of(&collector, "tester");
    traffic(&dir, &bare, 20);
    wait_for("the bare sidecar to drop its telemetry", Duration::from_secs(20), || {
        (admin_metric(&bare, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]) > 0.0).then_some(())
    });
    assert_eq!(spans_of(&collector, "tester"), before, "nothing from the sidecar without a certificate");
}

#[test]
fn tls_files_that_are_missing_or_hold_no_certificate_stop_the_start_with_their_path() {
    let dir = TestDir::new("otlp-tls-files");
    let missing = dir.path("missing.pem");
    let empty = dir.path("empty.pem");
    std::fs::write(&empty, "no PEM here\n").expect("write");
    let pki = Pki::new(&dir, "files").expect("a test CA");
    let (cert, _) = pki.issue("collector", &["localhost"]).expect("a test certificate");

    let out = command(meshlens())
        .args(["collector", "--otlp-tls-cert", path(&cert), "--otlp-tls-key", path(&missing)])
        .args(["--otlp-grpc", &free_addr().to_string(), "--otlp-http", &free_addr().to_string(), "--web", &free_addr().to_string()])
        .output()
        .expect("run the collector");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("missing.pem") && stderr.contains("cannot read it"), "{stderr}");
    let out = command(meshlens()).args(["collector", "--otlp-tls-cert", path(&cert)]).output().expect("run the collector");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--otlp-tls-key"), "a certificate needs its key");

    let w = workload("tester", format!("otlp_endpoint = \"https://127.0.0.1:4317\"\n[telemetry.tls]\nca_file = \"{}\"", path(&empty)), &[]);
    let config = dir.path("sidecar.toml");
    std::fs::write(&config, sidecar_toml(&w, &[&w], SocketAddr::from(([127, 0, 0, 1], 4317)))).expect("write");
    let out = command(meshlens()).args(["proxy", "--check", "--config", path(&config)]).output().expect("run the sidecar");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && printed.contains("telemetry.tls") && printed.contains("empty.pem"), "{printed}");
    assert!(printed.contains("holds no PEM certificate"), "{printed}");
}

#[test]
fn a_renewed_collector_certificate_is_presented_without_a_restart() {
    // The collector's certificate files are replaced by one of another CA; a sidecar
    // trusting only that CA exports once the collector has looked at its files again.
    let dir = TestDir::new("otlp-tls-renewal");
    let (old, new) = (Pki::new(&dir, "old").expect("a test CA"), Pki::new(&dir, "new").expect("a test CA"));
    let collector = tls_collector(&dir, &old, None);
    let (cert, key) = new.issue("renewed", &["127.0.0.1"]).expect("a test certificate");
    std::fs::copy(&cert, dir.path("collector.pem")).expect("renew the certificate");
    std::fs::copy(&key, dir.path("collector-key.pem")).expect("renew the key");
    let endpoint = format!("otlp_endpoint = \"https://127.0.0.1:{}\"", collector.grpc.port());
    let mut tester = Workload::new("tester", &[]);
    tester.telemetry = format!("max_retry_time = \"15s\"\n{endpoint}\n[telemetry.tls]\nca_file = \"{}\"", path(&new.ca));
    let front = workload("front", String::new(), &[]);
    let _procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    // Retried for 15 s, past the collector's next look at its files (at most 5 s).
    let report = load(&dir, tester.outbound, "http://front/", 20);
    assert_eq!(report["succeeded"], 20, "{report}");
    wait_for("the tester's spans, over the renewed certificate", Duration::from_secs(20), || {
        (spans_of(&collector, "tester") >= 20).then_some(())
    });
    assert!(collector.proc.output().contains("TLS certificate read again"), "the collector says so");
}

#[test]
fn a_web_port_over_tls_serves_prometheus_the_cli_and_tells_plain_http_so() {
    let dir = TestDir::new("web-tls");
    let pki = Pki::new(&dir, "web").expect("a test CA");
    let (cert, key) = pki.issue("collector-web", &["localhost", "127.0.0.1"]).expect("a test certificate");
    let collector = CollectorProc::start_with_args(&dir, &["--web-tls-cert", path(&cert), "--web-tls-key", path(&key)]);
    let web = format!("https://localhost:{}", collector.web.port());

    // The CLI, trusting the CA; the OTLP ports stay plain text.
    let tester = Workload::new("tester", &[]);
    let front = Workload::new("front", &[]);
    let _procs = start_mesh(&dir, &[&tester, &front], collector.grpc);
    traffic(&dir, &tester, 20);
    let ca = path(&pki.ca);
    let rows = wait_for("the CLI to show the front over https", Duration::from_secs(15), || {
        let rows: serde_json::Value = serde_json::from_str(&run(&["stat", "--collector", &web, "--collector-ca", ca, "-o", "json"])).ok()?;
        rows.as_array()?.iter().any(|r| r["name"] == "front").then_some(rows)
    });
    assert!(rows.to_string().contains("tester"), "{rows}");
    let count = run(&["sql", "--collector", &web, "--collector-ca", ca, "-o", "csv", "SELECT count(*) AS n FROM spans WHERE service = 'front'"]);
    let n: u64 = count.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    assert!(count.lines().next().is_some_and(|h| h.trim() == "n") && n > 0, "{count:?}");

    // Without the CA the CLI does not trust the collector, and says why.
    let out = std::process::Command::new(meshlens()).args(["stat", "--collector", &web]).output().expect("run meshlens");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && (error.contains("UnknownIssuer") || error.contains("unknown issuer")), "{error}");

    // Plain HTTP to the port is told to use TLS.
    let reply = get(collector.web, "/metrics");
    assert_eq!((reply.status, reply.body.as_str()), (400, "this port expects TLS: send to an https:// endpoint\n"));

    // A real Prometheus scraping over TLS, trusting the CA.
    let prom = support::prometheus::Prometheus::start(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: meshlens\n    scheme: https\n    \
             tls_config:\n      ca_file: {ca}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            collector.web.port()
        ),
    );
    assert!(prom.value("sum(meshlens_collector_tls_handshakes_total{transport=\"web\",outcome=\"ok\"})").is_some_and(|n| n >= 2.0));
    assert!(prom.value("sum(meshlens_collector_tls_handshakes_total{transport=\"web\",outcome=\"plaintext\"})").is_some_and(|n| n >= 1.0));
}

#[test]
fn a_server_name_lets_a_sidecar_reach_the_collector_by_an_address_its_certificate_does_not_name() {
    let dir = TestDir::new("otlp-tls-server-name");
    let pki = Pki::new(&dir, "names").expect("a test CA");
    let (cert, key) = pki.issue("collector", &["collector.mesh"]).expect("a test certificate");
    let collector = CollectorProc::start_with_args(&dir, &["--otlp-tls-cert", path(&cert), "--otlp-tls-key", path(&key)]);
    let endpoint = format!("https://127.0.0.1:{}", collector.grpc.port());
    let tls = |name: &str| format!("otlp_endpoint = \"{endpoint}\"\n[telemetry.tls]\nca_file = \"{}\"\n{name}", path(&pki.ca));
    let named = workload("tester", tls("server_name = \"collector.mesh\""), &[]);
    let unnamed = workload("front", tls(""), &[]);
    let procs = start_mesh(&dir, &[&named, &unnamed], collector.grpc);
    traffic(&dir, &named, 30);
    wait_for("the named sidecar's spans", Duration::from_secs(15), || (spans_of(&collector, "tester") >= 30).then_some(()));
    wait_for("the other to drop its telemetry", Duration::from_secs(20), || {
        (admin_metric(&unnamed, "meshlens_proxy_telemetry_dropped_total", &[("reason", "export_failed")]) > 0.0).then_some(())
    });
    assert_eq!(spans_of(&collector, "front"), 0);
    let log = procs[2].output();
    assert!(log.contains("certificate not valid for name \"127.0.0.1\""), "the certificate does not name 127.0.0.1:\n{log}");
}
