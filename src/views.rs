//! Terminal views of the mesh, read from a collector's topology API: `meshlens stat`
//! (per service, workload or version: success rate, request rate, latency percentiles, as
//! `linkerd viz stat` shows them, and what the node's sidecars cost when they report their
//! process figures), `meshlens edges`, and `meshlens top` (live, busiest first). Each prints a
//! table, or JSON with `-o json`.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::web_client::WebClient;

/// What to ask the collector.
#[derive(Debug, Clone)]
pub struct Query {
    /// The collector's web port.
    pub collector: WebClient,
    /// Window, e.g. `1m`.
    pub window: String,
    /// `service`, `workload` or `version`.
    pub group: String,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// The body of `GET path`, as text.
pub async fn get_text(web: &WebClient, path: &str) -> anyhow::Result<String> {
    let (_, body) = web.get(path).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The status of `GET path`, once the body has been read.
pub async fn get_status(web: &WebClient, path: &str) -> anyhow::Result<u16> {
    Ok(web.get(path).await?.0.as_u16())
}

async fn topology(query: &Query) -> anyhow::Result<Value> {
    let path = format!("/api/v1/topology?window={}&group={}", query.window, query.group);
    let (status, body) = query.collector.get(&path).await?;
    let value: Value = serde_json::from_slice(&body).with_context(|| format!("the collector answered {status} with no JSON"))?;
    anyhow::ensure!(status.is_success(), "the collector refused the query: {}", value["error"].as_str().unwrap_or("unknown error"));
    Ok(value)
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |v| if v < 10.0 { format!("{v:.2}ms") } else { format!("{v:.0}ms") })
}

/// A share of an edge's or node's requests as a percentage: `-` without requests.
fn share_of_requests(t: &Value, share: impl FnOnce(f64) -> f64) -> String {
    match t["requests"].as_u64() {
        Some(0) | None => "-".into(),
        Some(n) => format!("{:.2}%", share(n as f64) * 100.0),
    }
}

fn success(t: &Value) -> String {
    share_of_requests(t, |_| 1.0 - t["error_ratio"].as_f64().unwrap_or(0.0))
}

/// Retries as a share of the requests they were made for (a request with two retries adds
/// two).
fn retries(t: &Value) -> String {
    share_of_requests(t, |n| t["retries"].as_u64().unwrap_or(0) as f64 / n)
}

/// Linkerd's "actual" success: successful attempts over all attempts, the sidecars' retries
/// included, as the collector computes it.
fn actual_success(t: &Value) -> String {
    share_of_requests(t, |_| t["actual_success_ratio"].as_f64().unwrap_or(1.0))
}

fn rps(t: &Value) -> String {
    format!("{:.1}rps", t["request_rate"].as_f64().unwrap_or(0.0))
}

pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// The sidecars among `instances` (`/api/v1/instances`) that belong to `node`: its
/// namespace and service, and its workload or version when the nodes are grouped by them.
fn sidecars_of<'a>(node: &Value, instances: &'a [Value]) -> Vec<&'a Value> {
    let matches = |key: &str, i: &Value| node[key].is_null() || node[key] == i[key];
    instances
        .iter()
        .filter(|i| i["sdk"] == "meshlens-proxy" && i["service"] == node["service"] && i["namespace"] == node["namespace"])
        .filter(|i| matches("workload", i) && matches("version", i))
        .collect()
}

/// The sum of `key` over `of`, none when no one has it.
fn sum_of(of: &[&Value], key: &str) -> Option<f64> {
    let values: Vec<f64> = of.iter().filter_map(|i| i[key].as_f64()).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Per-node rows: the node's inbound traffic as the node itself received it, and its
/// sidecars' CPU (cores) and resident memory, all instances together, from `instances`.
///
/// As `linkerd viz stat` reads a workload's inbound side, every attempt its callers'
/// sidecars made counts: a request retried once is two requests received, the first of them
/// failed, so a service whose failures its callers' retries hide still shows them (what the
/// callers got in the end is `edges`' `SUCCESS`). Latency is of the callers' requests.
fn stat_rows(view: &Value, instances: &[Value]) -> Vec<Value> {
    let mut nodes: Vec<Value> = view["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["kind"] == "service").cloned().collect())
        .unwrap_or_default();
    nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    nodes
        .iter()
        .map(|n| {
            let t = &n["inbound"];
            let sidecars = sidecars_of(n, instances);
            let (requests, retries) = (t["requests"].as_u64().unwrap_or(0), t["retries"].as_u64().unwrap_or(0));
            // Every retry followed a failed attempt (see `actual_success_ratio`).
            let received = requests + retries;
            let effective = 1.0 - t["error_ratio"].as_f64().unwrap_or(0.0);
            let success = (requests > 0).then(|| t["actual_success_ratio"].as_f64().unwrap_or(effective));
            let rate = t["request_rate"].as_f64().unwrap_or(0.0) * if requests > 0 { received as f64 / requests as f64 } else { 1.0 };
            json!({
                "name": n["label"], "namespace": n["namespace"], "requests": received, "success_rate": success,
                "request_rate": rate, "p50_ms": t["p50_ms"], "p95_ms": t["p95_ms"], "p99_ms": t["p99_ms"],
                "proxy_instances": sidecars.len(), "proxy_cpu_cores": sum_of(&sidecars, "cpu_cores"),
                "proxy_memory_bytes": sum_of(&sidecars, "resident_bytes"),
            })
        })
        .collect()
}

/// `meshlens stat`.
pub async fn stat(query: &Query, output: Output) -> anyhow::Result<()> {
    let view = topology(query).await?;
    // A collector that lists no instances (none report, or an older one): no proxy columns.
    let instances = match query.collector.get("/api/v1/instances?sdk=meshlens-proxy").await {
        Ok((status, body)) if status.is_success() => serde_json::from_slice::<Vec<Value>>(&body).unwrap_or_default(),
        _ => Vec::new(),
    };
    let rows = stat_rows(&view, &instances);
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let (header, table) = stat_table(&rows);
    print_table(&header, &table);
    Ok(())
}

/// `meshlens stat`'s table: the proxy columns only when some node's sidecars report.
fn stat_table(rows: &[Value]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let proxies = rows.iter().any(|r| r["proxy_instances"].as_u64().is_some_and(|n| n > 0));
    let mut header = vec!["NAME", "NAMESPACE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"];
    if proxies {
        header.extend(["PROXY_CPU", "PROXY_MEM"]);
    }
    let table = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r["name"].as_str().unwrap_or("").to_owned(),
                r["namespace"].as_str().filter(|s| !s.is_empty()).unwrap_or("-").to_owned(),
                r["success_rate"].as_f64().map_or_else(|| "-".into(), |s| format!("{:.2}%", s * 100.0)),
                rps(r),
                ms(&r["p50_ms"]),
                ms(&r["p95_ms"]),
                ms(&r["p99_ms"]),
            ];
            if proxies {
                row.push(r["proxy_cpu_cores"].as_f64().map_or_else(|| "-".into(), |c| format!("{:.0}m", c * 1000.0)));
                row.push(r["proxy_memory_bytes"].as_f64().map_or_else(|| "-".into(), |b| format!("{:.1}Mi", b / 1_048_576.0)));
            }
            row
        })
        .collect();
    (header, table)
}

fn edge_rows(view: &Value) -> Vec<Vec<String>> {
    let label = |id: &Value| -> String {
        view["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == *id)).and_then(|n| n["label"].as_str()).unwrap_or("?").to_owned()
    };
    let mut edges: Vec<&Value> = view["edges"].as_array().map(|e| e.iter().collect()).unwrap_or_default();
    edges.sort_by(|a, b| b["request_rate"].as_f64().unwrap_or(0.0).total_cmp(&a["request_rate"].as_f64().unwrap_or(0.0)));
    edges
        .iter()
        .map(|e| {
            let protocol = e["protocol"].as_str().unwrap_or("").to_owned();
            let (source, target) = (label(&e["source"]), label(&e["target"]));
            let latency = [&e["p50_ms"], &e["p95_ms"], &e["p99_ms"]].map(ms);
            [vec![source, target, protocol, success(e), rps(e), retries(e), actual_success(e)], latency.to_vec()].concat()
        })
        .collect()
}

const EDGE_HEADER: [&str; 10] =
    ["SRC", "DST", "PROTOCOL", "SUCCESS", "RPS", "RETRIES", "ACTUAL_SUCCESS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"];

/// `meshlens edges`.
pub async fn edges(query: &Query, output: Output) -> anyhow::Result<()> {
    let view = topology(query).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&view["edges"])?);
        return Ok(());
    }
    print_table(&EDGE_HEADER, &edge_rows(&view));
    Ok(())
}

/// `meshlens top`: edges, busiest first, redrawn every `interval` until Ctrl-C (or `iterations`).
pub async fn top(query: &Query, interval: Duration, iterations: Option<u64>, output: Output) -> anyhow::Result<()> {
    let mut n = 0;
    loop {
        let view = topology(query).await?;
        match output {
            Output::Json => println!("{}", serde_json::to_string(&view["edges"])?),
            Output::Table => {
                // Clear the screen and go home, as `top` does.
                print!("\x1b[2J\x1b[H");
                println!("meshlens top · {} · window {} · every {:?} · Ctrl-C to quit\n", query.collector.address(), query.window, interval);
                print_table(&EDGE_HEADER, &edge_rows(&view));
            }
        }
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {},
            () = meshlens_proxy::cli::shutdown_signal() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_row_shows_its_retries_and_the_success_of_every_attempt() {
        let view = json!({
            "nodes": [{"id": "a", "label": "frontend"}, {"id": "b", "label": "checkout"}, {"id": "c", "label": "idle"}],
            "edges": [
                {"source": "a", "target": "b", "protocol": "http", "requests": 400, "errors": 1, "retries": 10, "error_ratio": 0.0025,
                 "actual_success_ratio": 0.973_170_731_707_317, "request_rate": 6.7, "p50_ms": 16.9, "p95_ms": 40.4, "p99_ms": 49.3},
                {"source": "a", "target": "c", "protocol": "grpc", "requests": 0, "retries": 0, "request_rate": 0.0},
            ],
        });
        let rows = edge_rows(&view);
        // 399 of 410 attempts succeeded: the 10 retries and the last attempt of the failed request failed.
        assert_eq!(rows[0], ["frontend", "checkout", "http", "99.75%", "6.7rps", "2.50%", "97.32%", "17ms", "40ms", "49ms"]);
        assert_eq!(rows[1][3..7], ["-", "0.0rps", "-", "-"]);
        assert_eq!(rows[0].len(), EDGE_HEADER.len());
    }

    #[test]
    fn a_node_counts_every_attempt_it_received_so_retries_hide_no_failure() {
        let inbound = json!({"requests": 400, "errors": 1, "retries": 10, "error_ratio": 0.0025,
                             "actual_success_ratio": 0.973_170_731_707_317, "request_rate": 6.7, "p50_ms": 16.9});
        let view = json!({"nodes": [{"id": "checkout", "label": "checkout", "kind": "service", "namespace": "shop", "inbound": inbound}]});
        let rows = stat_rows(&view, &[]);
        assert_eq!((rows[0]["requests"].as_u64(), rows[0]["success_rate"].as_f64()), (Some(410), Some(0.973_170_731_707_317)));
        assert!((rows[0]["request_rate"].as_f64().unwrap_or(0.0) - 6.7 * 410.0 / 400.0).abs() < 1e-9, "{}", rows[0]);
        assert_eq!(stat_table(&rows).1[0][2..4], ["97.32%", "6.9rps"]);
        let idle = json!({"nodes": [{"id": "x", "label": "x", "kind": "service", "inbound": {"requests": 0, "request_rate": 0.0}}]});
        assert_eq!(stat_rows(&idle, &[])[0]["success_rate"], Value::Null, "no requests, no success rate");
    }

    #[test]
    fn a_node_shows_what_its_sidecars_cost_when_they_report() {
        let node = |id: &str, service: &str, version: Value| {
            json!({"id": id, "label": id, "kind": "service", "namespace": "shop", "service": service, "version": version,
                   "inbound": {"requests": 10, "error_ratio": 0.0, "request_rate": 1.0}})
        };
        let view = json!({"nodes": [node("shop-v1", "shop", json!("v1")), node("cart", "cart", Value::Null)]});
        let instance = |version: &str, cores: Value, rss: f64| {
            json!({"sdk": "meshlens-proxy", "namespace": "shop", "service": "shop", "version": version,
                   "cpu_cores": cores, "resident_bytes": rss})
        };
        let instances =
            [instance("v1", json!(0.012), 10_485_760.0), instance("v1", Value::Null, 5_242_880.0), instance("v2", json!(0.5), 1.0)];
        let rows = stat_rows(&view, &instances);
        // Sorted by ID: cart has no reporting sidecar; shop-v1 has two (v2's is another node's).
        assert_eq!((rows[0]["proxy_instances"].as_u64(), rows[0]["proxy_cpu_cores"].as_f64()), (Some(0), None));
        assert_eq!(rows[1]["proxy_instances"], 2);
        assert_eq!((rows[1]["proxy_cpu_cores"].as_f64(), rows[1]["proxy_memory_bytes"].as_f64()), (Some(0.012), Some(15_728_640.0)));
        let (header, table) = stat_table(&rows);
        assert_eq!(header[7..], ["PROXY_CPU", "PROXY_MEM"]);
        assert_eq!((table[0][7..].join(" "), table[1][7..].join(" ")), ("- -".to_owned(), "12m 15.0Mi".to_owned()));
        let (header, table) = stat_table(&stat_rows(&view, &[]));
        assert_eq!((header.len(), table[0].len()), (7, 7), "no proxy columns when no sidecar reports");
    }
}
