//! The dashboard in a real browser: Debian's chromium driven by Playwright
//! (`tests/browser/dashboard.mjs`, playwright-core from npm) against the demo mesh, plus an
//! XSS probe (a service and span named with markup) and a sidecar's process figures sent
//! over OTLP/HTTP. Screenshots are
//! kept in `target/browser-artifacts/`. `./scripts/test` installs chromium and the npm
//! package.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use support::*;

const PROBE: &str = "<img src=x onerror=alert(1)>";

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[test]
fn the_dashboard_works_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(PathBuf::from("/usr/bin/chromium").is_file(), "/usr/bin/chromium is missing: ./scripts/test installs Debian's chromium");
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(root.join("tests/browser/node_modules/playwright-core").is_dir(), "playwright-core is missing: ./scripts/test runs npm ci in tests/browser");
    let dir = TestDir::new("browser");
    let demo = start_demo(&dir, "40", "300s");
    let (http_addr, web) = (demo.http, demo.web);

    // The probe: a CLIENT span in an ordinary service and its SERVER child in a service
    // whose name is markup, with a span name that is a script tag.
    let (start, trace) = (now_nanos(), format!("{:032x}", fastrand::u128(1..)));
    let span = |service: &str, id: &str, parent: &str, kind: u8, name: &str| {
        serde_json::json!({
            "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": service } }] },
            "scopeSpans": [{ "spans": [{
                "traceId": trace, "spanId": id, "parentSpanId": parent, "name": name, "kind": kind,
                "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 3_000_000).to_string(),
                "attributes": [{ "key": "http.request.method", "value": { "stringValue": "GET" } }]
            }] }]
        })
    };
    let body = serde_json::json!({ "resourceSpans": [
        span("xss-caller", "00000000000000a1", "", 3, "GET /probe"),
        span(PROBE, "00000000000000a2", "00000000000000a1", 2, "<script>alert(2)</script>"),
    ] });
    let reply = http(http_addr, "POST", "/v1/traces", &[("content-type", "application/json")], body.to_string().as_bytes()).expect("probe");
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Two readings of another payments sidecar's process figures, ten seconds apart, beside
    // the demo's own: 0.1 of a core, 24 MiB resident.
    for (ago, cpu) in [(10_000_000_000u128, 1.0), (0, 2.0)] {
        post_process_figures(http_addr, "payments", "payments-v1", "payments-pod-1", start - ago, cpu, 24 << 20);
    }
    // A second instance with a drawn UUID and one reading so far: memory, no CPU rate yet.
    post_process_figures(http_addr, "payments", "payments-v1", "5f0c8a0e-6a1f-4c3e-9b7d-2a1b3c4d5e6f", start, 0.5, 8 << 20);
    std::thread::sleep(Duration::from_secs(2));

    let artifacts = root.join("target/browser-artifacts");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{web}"))
        .arg(&artifacts)
        .arg(PROBE)
        .current_dir(root.join("tests/browser"))
        .output()
        .expect("run node");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "browser checks failed (screenshots in {}):\n{report}", artifacts.display());
    for shot in ["topology", "edge-panel", "node-panel", "trace", "sql", "xss-probe"] {
        assert!(artifacts.join(format!("{shot}.png")).is_file(), "screenshot {shot}.png");
    }
}
