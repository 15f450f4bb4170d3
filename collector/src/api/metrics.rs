//! `GET /metrics`: the collector's Prometheus exposition.
//!
//! Content is negotiated as a Prometheus server does it: clients that accept
//! `application/openmetrics-text` (Prometheus itself) get OpenMetrics, as prometheus-client
//! writes it; others (`curl`, `promtool check metrics`, older scrapers) get the classic text
//! format 0.0.4, where a counter's HELP and TYPE name its `_total` series, and there are no
//! `# UNIT` or `# EOF` lines and no exemplars. Exemplars (OpenMetrics only) link each
//! latency bucket to a trace that landed in it.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::pipeline::Pipeline;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/metrics", get(metrics))
}

/// OpenMetrics text rewritten as the classic Prometheus text format.
pub fn to_text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            // Exemplars follow a sample after ` # `; the classic format has none.
            None if !line.starts_with('#') => out.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample)),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

async fn metrics(State(pipeline): State<Arc<Pipeline>>, headers: HeaderMap) -> Response {
    pipeline.refresh_gauges();
    let registry = pipeline.metrics.registry();
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding metrics failed");
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response();
    }
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], out).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT_004)], to_text_004(&out)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series_in_the_classic_format() {
        let om = "# HELP requests Requests.\n# TYPE requests counter\nrequests_total{a=\"b\"} 3\n\
                  # HELP latency Latency.\n# TYPE latency histogram\n# UNIT latency seconds\nlatency_count 1 # {trace_id=\"ab\"} 0.2 1.5\n# EOF\n";
        let text = to_text_004(om);
        assert_eq!(
            text,
            "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{a=\"b\"} 3\n\
             # HELP latency Latency.\n# TYPE latency histogram\nlatency_count 1\n"
        );
    }
}
