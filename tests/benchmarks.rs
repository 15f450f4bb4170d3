//! The benchmark commands run from the built binaries and report what they claim to measure.
//! Their figures are not checked here (a debug build on a shared machine says nothing about
//! speed); what is checked is that every row is measured and that the telemetry counts say
//! where the sidecar's records went.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn bench_proxy_measures_every_row_and_counts_the_sidecars_telemetry() {
    let dir = TestDir::new("bench-proxy");
    let args = ["bench", "proxy", "--duration", "1s", "--rate", "200", "--connections", "4", "--rounds", "2", "--json"];
    let mut bench = Proc::start(&dir, "bench", &args);
    assert_eq!(bench.wait_exit(Duration::from_secs(300)), Some(0), "bench proxy failed:\n{}", bench.output());
    let output = bench.output();
    // Progress lines go to stderr, the report to stdout, after them: the JSON is the rest.
    let json_at = output.find("\n{").map(|i| i + 1).unwrap_or_else(|| panic!("no JSON report in:\n{output}"));
    let report: serde_json::Value = serde_json::from_str(&output[json_at..]).expect("JSON report");
    // Each round's rows, measured apart (the telemetry counts are that round's own).
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{report:#}");
    for round in rounds {
        check_rows(round.as_array().expect("a round's rows"));
    }
    // The medians: one row per scenario, as in each round.
    let medians = report["rows"].as_array().expect("rows");
    assert_eq!(medians.len(), rounds[0].as_array().map_or(0, Vec::len), "{report:#}");
    assert!(medians.iter().all(|r| r["max_rps"].as_f64().is_some_and(|v| v > 0.0)), "{report:#}");
    // The targets, judged in both rounds; the nginx ratio only where nginx ran.
    let targets = report["targets"].as_array().expect("targets");
    let target = |name: &str| targets.iter().find(|t| t["target"] == name);
    for name in ["throughput lost to telemetry (on vs off)", "added latency p99, telemetry on", "CPU per 1,000 requests, telemetry on"] {
        let t = target(name).unwrap_or_else(|| panic!("no `{name}` in {report:#}"));
        assert_eq!(t["rounds"].as_array().map(Vec::len), Some(2), "{t:#}");
        assert!(t["met"].as_u64().is_some_and(|met| met <= 2), "{t:#}");
    }
    let nginx_ran = medians.iter().any(|r| r["scenario"].as_str().is_some_and(|s| s.starts_with("nginx")));
    assert_eq!(target("throughput, telemetry on / nginx").is_some(), nginx_ran, "{report:#}");
    let ceiling = target("ceiling: telemetry on / nginx, every core busy");
    assert_eq!(ceiling.is_some(), nginx_ran, "{report:#}");
    assert_eq!(target("records delivered, telemetry on").map(|t| t["rounds"].as_array().map(Vec::len)), Some(Some(2)));
}

/// One round's rows: every row measured, and the sidecar's records where its telemetry says.
fn check_rows(rows: &[serde_json::Value]) {
    let report = serde_json::Value::from(rows.to_vec());
    let row = |suffix: &str| {
        rows.iter()
            .find(|r| r["scenario"].as_str().is_some_and(|s| s.ends_with(suffix)))
            .unwrap_or_else(|| panic!("no `{suffix}` row in {report:#}"))
    };
    for r in rows {
        assert!(r["max_rps"].as_f64().is_some_and(|v| v > 0.0), "{r:#}");
        assert_eq!(r["errors"], 0, "{r:#}");
        // The load generator alone keeps a core partly busy: every row costs the machine CPU.
        assert!(r["machine_cpu_us_per_request"].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()), "{r:#}");
        // Every proxy ran on a core while the maximum was measured; the direct path has no proxy.
        if r["scenario"] == "direct" {
            assert!(r["proxy_busy_at_max"].is_null() && r["proxy_waiting_at_max"].is_null(), "{r:#}");
        } else {
            assert!(r["proxy_busy_at_max"].as_f64().is_some_and(|v| v > 0.0 && v < 64.0), "{r:#}");
            assert!(r["proxy_waiting_at_max"].as_f64().is_some_and(|v| v >= 0.0), "{r:#}");
        }
    }
    let off = row("telemetry off");
    assert!(off["telemetry_exported"].is_null() && off["telemetry_dropped"].is_null(), "{off:#}");
    assert!(off["telemetry_bytes_per_request"].is_null(), "{off:#}");
    // Telemetry on: a span and an access-log record per request reached the collector.
    let on = row("telemetry on (100%)");
    let exported = on["telemetry_exported"].as_u64().expect("exported count");
    let made = on["telemetry_records"].as_u64().expect("records made");
    assert!(exported >= 2 * 150 && exported <= made, "{on:#}");
    assert!(on["telemetry_dropped"].as_u64().is_some_and(|d| exported + d <= made), "{on:#}");
    assert!(on["collector_cpu_s_per_1k_requests"].as_f64().is_some(), "{on:#}");
    assert!(on["collector_busy_at_max"].as_f64().is_some_and(|c| c > 0.0 && c < 64.0), "{on:#}");
    // A span and an access-log record with their attributes: a few hundred bytes each.
    assert!(on["telemetry_bytes_per_request"].as_f64().is_some_and(|b| (600.0..10_000.0).contains(&b)), "{on:#}");
    // The null receiver answers every export unread: all of it leaves the sidecar, and there
    // is no collector to measure.
    let null = row("telemetry on, null receiver");
    let exported = null["telemetry_exported"].as_u64().expect("exported count");
    assert!(exported >= 2 * 150 && exported <= null["telemetry_records"].as_u64().expect("records made"), "{null:#}");
    assert_eq!(null["telemetry_dropped"], 0, "{null:#}");
    assert!(null["collector_cpu_s_per_1k_requests"].is_null() && null["collector_busy_at_max"].is_null(), "{null:#}");
    // Collector down: nothing exported. Whether records were dropped yet depends on how many
    // requests a debug build served: 4,096 records of each signal are held and a failing batch is retried for
    // `max_retry_time` (15 s) before it is dropped, so only the count's presence is checked.
    let down = row("collector down");
    assert_eq!(down["telemetry_exported"], 0, "{down:#}");
    assert!(down["telemetry_dropped"].as_u64().is_some(), "{down:#}");
}
