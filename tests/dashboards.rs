//! `dashboards/` against the real thing: `promtool check rules` and `promtool test rules`
//! pass; then the demo mesh runs, a real Prometheus scrapes its collector and evaluates
//! the rules, and every PromQL expression of the Grafana dashboards (panels and template
//! variables, with the variables set to real values and to "All") and of the rules returns
//! data. The SLO alerts fire for what the demo makes fail: payments' errors and ratings'
//! latency; the malformed-telemetry alert fires after a malformed export.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::Value;
use support::{prometheus::*, *};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every `expr:` of a rules file, with its rule's name.
fn rule_exprs(path: &str) -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(repo(path)).expect("rules file");
    let mut out = Vec::new();
    let mut name = String::new();
    let mut alert = false;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start().trim_start_matches("- ");
        if let Some(n) = t.strip_prefix("record: ") {
            (name, alert) = (n.to_owned(), false);
        } else if let Some(n) = t.strip_prefix("alert: ") {
            (name, alert) = (n.to_owned(), true);
        } else if let Some(e) = t.strip_prefix("expr: ") {
            let indent = line.len() - line.trim_start().len();
            let mut expr = if e == ">-" { String::new() } else { e.to_owned() };
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if e != ">-" || next.trim().is_empty() || next_indent <= indent {
                    break;
                }
                expr.push(' ');
                expr.push_str(next.trim());
                lines.next();
            }
            out.push((name.clone(), expr.trim().to_owned(), alert));
        }
    }
    out
}

/// `dashboards/grafana/{file}.json`.
fn dashboard(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo(&format!("dashboards/grafana/{file}.json"))).expect("dashboard")).expect("JSON")
}

/// Every expression of a dashboard: panel targets and template-variable queries (Grafana's
/// `label_values(selector, label)` becomes `group by (label) (selector)`).
fn dashboard_exprs(board: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in board["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((panel["title"].as_str().unwrap_or("").to_owned(), target["expr"].as_str().expect("expr").to_owned()));
        }
    }
    for var in board["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("label_values query");
            let (selector, label) = inner.rsplit_once(',').expect("selector and label");
            out.push((format!("variable {}", var["name"]), format!("group by ({}) ({selector})", label.trim())));
        }
    }
    out
}

fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut e = expr.replace("$__rate_interval", "1m");
    for (var, value) in values {
        e = e.replace(&format!("${var}"), value);
    }
    assert!(!e.contains('$'), "unsubstituted variable in {e}");
    e
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    let promtool = require("promtool");
    let rules = [repo("dashboards/prometheus/meshlens-recording.rules.yml"), repo("dashboards/prometheus/meshlens-slo.rules.yml")];
    let out = Command::new(&promtool).arg("check").arg("rules").args(&rules).output().expect("promtool");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(repo("dashboards/prometheus/meshlens-slo.rules.test.yml"))
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_dashboard_and_rule_expression_returns_data_from_the_demo_mesh() {
    let dir = TestDir::new("dashboards");
    let demo = start_demo(&dir, "60", "240s");
    let (http_addr, web) = (demo.http, demo.web);
    let rules_dir = repo("dashboards/prometheus");
    let prom = Prometheus::start(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {0}/meshlens-recording.rules.yml\n  - {0}/meshlens-slo.rules.yml\n\
             scrape_configs:\n  - job_name: meshlens\n    static_configs:\n      - targets: ['{web}']\n",
            rules_dir.display()
        ),
    );
    // One more checkout sidecar's process figures, beside the demo's own, for the panels
    // of what the sidecars cost.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
    post_process_figures(http_addr, "checkout", "checkout-v1", "checkout-pod-1", now, 0.5, 20 << 20);
    // A malformed export, for the malformed-telemetry alert.
    let garbage = http(http_addr, "POST", "/v1/traces", &[("content-type", "application/x-protobuf")], b"\xff\xff\xff").expect("post");
    assert_eq!(garbage.status, 400);
    // Enough samples for rates and quantiles over every edge, incl. payments' rare errors.
    wait_for("payments' errors in Prometheus", Duration::from_secs(90), || {
        let r = prom.value("sum(rate(meshlens_requests_total{destination_service=\"payments\",classification=\"failure\"}[1m]))");
        r.filter(|v| *v > 0.0)
    });
    // Two scrapes of the checkout sidecar's CPU time, for its rate.
    wait_for("a rate of the sidecar's CPU time", Duration::from_secs(30), || {
        (!prom.vector("rate(meshlens_process_cpu_seconds_total[1m])").is_empty()).then_some(())
    });
    // The load generator's sidecar exports over OTLP/HTTP, every other sidecar over gRPC:
    // both transports' spans and access logs are stored.
    let stored = |table: &str, service: &str| {
        let rows = sql_rows(web, &format!("SELECT count(*) AS n FROM {table} WHERE service = '{service}'"));
        rows.first().and_then(|r| r[0].as_u64()).unwrap_or(0)
    };
    for table in ["spans", "logs"] {
        for service in ["loadgen", "frontend"] {
            assert!(stored(table, service) > 0, "{service}'s sidecar's {table} are stored");
        }
    }
    let mut rules = rule_exprs("dashboards/prometheus/meshlens-recording.rules.yml");
    rules.extend(rule_exprs("dashboards/prometheus/meshlens-slo.rules.yml"));
    assert!(rules.len() >= 20, "{rules:?}");
    wait_for("every recording rule to be evaluated", Duration::from_secs(30), || {
        rules.iter().filter(|(_, _, alert)| !alert).all(|(name, _, _)| !prom.vector(name).is_empty()).then_some(())
    });

    let mut checked = 0;
    let mut failures = Vec::new();
    let concrete = [("namespace", "shop"), ("service", "checkout"), ("workload", "checkout-v1"), ("source", "checkout"), ("destination", "payments")];
    let all = [("namespace", ".*"), ("service", ".*"), ("workload", ".*"), ("source", ".*"), ("destination", ".*")];
    for file in ["mesh-overview", "service-detail", "workload-detail", "collector-health"] {
        let board = dashboard(file);
        assert!(board["uid"].as_str().is_some_and(|u| u.starts_with("meshlens-")), "{file}: uid");
        for (title, expr) in dashboard_exprs(&board) {
            for values in [&concrete[..], &all[..]] {
                let query = substitute(&expr, values);
                checked += 1;
                if prom.vector(&query).is_empty() {
                    failures.push(format!("{file} / {title}: {query} -> {}", prom.query(&query)));
                }
            }
        }
    }
    for (name, expr, alert) in &rules {
        // An alert filters with comparisons; with `bool` it answers 0 or 1 for every series,
        // so "no data" still means a broken expression, not a quiet mesh.
        let query = if *alert { expr.replace(" > ", " > bool ") } else { expr.clone() };
        checked += 1;
        if prom.vector(&query).is_empty() {
            failures.push(format!("rule {name}: {query} -> {}", prom.query(&query)));
        }
        if !alert && prom.vector(name).is_empty() {
            failures.push(format!("recorded series {name} is empty"));
        }
    }
    assert!(failures.is_empty(), "{} of {checked} expressions returned no data:\n{}", failures.len(), failures.join("\n"));

    // Payments failed, so checkout answered 502 and the frontend's sidecar retried: over the
    // whole run, fewer of frontend → checkout's attempts succeeded than of its requests. The
    // frontend's sidecar exports that attempt apart from checkout's export of payments'
    // failure, so it may reach Prometheus a scrape or two later.
    let overview = dashboard("mesh-overview");
    let panel = |title: &str| {
        let (_, expr) = dashboard_exprs(&overview).into_iter().find(|(t, _)| t == title).expect("panel");
        let edge = [("namespace", "shop"), ("source", "frontend"), ("destination", "checkout")];
        let query = substitute(&expr, &edge).replace("[1m]", "[10m]");
        prom.vector(&query).first().map(|(_, v)| *v)
    };
    let retried = |actual: Option<f64>, effective: Option<f64>| matches!((actual, effective), (Some(a), Some(e)) if a < 1.0 && a < e);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (actual, effective) = loop {
        let (actual, effective) = (panel("Actual success by edge"), panel("Success ratio"));
        if retried(actual, effective) || std::time::Instant::now() > deadline {
            break (actual, effective);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(retried(actual, effective), "actual success {actual:?}, success ratio {effective:?}");

    // The alerts fire for what the demo breaks, and only there: payments fails ~5% (50x its
    // budget), and its failures reach checkout and frontend, which call it; the services
    // off that path stay quiet.
    let firing = |name: &str| -> Vec<String> {
        let (_, expr, _) = rules.iter().find(|(n, _, _)| n == name).expect("alert");
        let mut services: Vec<String> = prom.vector(expr).iter().map(|(m, _)| m["destination_service"].as_str().unwrap_or("").to_owned()).collect();
        services.sort();
        services
    };
    // The burn-rate series lag the raw counters by a rule evaluation or two.
    let burning = wait_for("the fast-burn alert for payments", Duration::from_secs(60), || {
        let burning = firing("MeshlensErrorBudgetFastBurn");
        burning.contains(&"payments".to_owned()).then_some(burning)
    });
    assert!(burning.iter().all(|s| ["checkout", "frontend", "payments"].contains(&s.as_str())), "{burning:?}");
    wait_for("the latency alert for ratings (60-140 ms)", Duration::from_secs(60), || {
        firing("MeshlensLatencyBudgetFastBurn").contains(&"ratings".to_owned()).then_some(())
    });
    assert!(!firing("MeshlensLatencyBudgetFastBurn").contains(&"inventory".to_owned()), "inventory is fast");
    let (_, malformed, _) = rules.iter().find(|(n, _, _)| n == "MeshlensCollectorMalformedTelemetry").expect("alert");
    assert!(prom.vector(malformed).iter().any(|(m, _)| m["signal"] == "spans" && m["transport"] == "http"));
}
