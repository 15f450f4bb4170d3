//! `GET /api/v1/topology`: the service graph of a window.
//!
//! Parameters: `window` (duration, default `60s`) or explicit `start`/`end` (Unix
//! milliseconds), and `group` (`service`, `workload` or `version`). Rates are per second
//! over the window, or over the collector's uptime when that is shorter.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde::Deserialize;

use crate::{
    pipeline::{Pipeline, now_nanos},
    topology::{Grouping, TopologyView, rollup::Rates},
};

use super::error::{ApiError, poisoned};

/// Query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyParams {
    /// Window length ending now, e.g. `60s`, `5m`.
    pub window: Option<String>,
    /// Window start, Unix milliseconds.
    pub start: Option<u64>,
    /// Window end, Unix milliseconds.
    pub end: Option<u64>,
    /// Node grouping.
    #[serde(default)]
    pub group: Grouping,
}

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/api/v1/topology", get(topology)).route("/api/v1/series", get(series))
}

/// `GET /api/v1/series` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    /// The node receiving the traffic (a topology node ID).
    pub target: String,
    /// The calling node, for one edge; absent for everything `target` receives.
    pub source: Option<String>,
    /// Window length ending now.
    pub window: Option<String>,
    /// Node grouping the IDs are written in.
    #[serde(default)]
    pub group: Grouping,
}

/// One point of a series.
#[derive(Debug, serde::Serialize)]
pub struct SeriesPoint {
    /// Bucket start, Unix milliseconds.
    pub t: u64,
    /// The seconds of the bucket the point covers: the step, or fewer for the series' first
    /// and last buckets, which the window cuts.
    pub seconds: u64,
    /// Requests per second in the bucket.
    pub request_rate: f64,
    /// Failed / all in the bucket (0 when idle).
    pub error_ratio: f64,
    /// p50 latency, ms.
    pub p50_ms: Option<f64>,
    /// p90 latency, ms.
    pub p90_ms: Option<f64>,
    /// p99 latency, ms.
    pub p99_ms: Option<f64>,
}

/// Points per series: the window is cut into this many steps (at least one second each).
const POINTS: u64 = 60;

async fn series(
    State(pipeline): State<Arc<Pipeline>>,
    Query(p): Query<SeriesParams>,
) -> Result<Json<Vec<SeriesPoint>>, ApiError> {
    let (from, to, _) = resolve_window(p.window.as_deref(), None, None, pipeline.started_unix_nanos)?;
    let step = ((to - from) / POINTS).max(1);
    let topology = pipeline.topology.read().map_err(poisoned)?;
    // Requests are counted in the second they started and arrive some time after they end
    // (a sidecar's flush interval, an SDK's batch): the series stops before the seconds still
    // receiving them, which drawn as they stand would end every chart in a dip.
    let settled = topology.settled_end(now_nanos() / 1_000_000_000, p.group, p.source.as_deref(), &p.target);
    let to = to.min(settled).max(from);
    let points = topology
        .series(from, to, step, p.group, p.source.as_deref(), &p.target)
        .into_iter()
        .map(|(t, seconds, stats)| {
            let traffic = crate::topology::graph::Traffic::from_stats(&stats, seconds as f64);
            SeriesPoint {
                t: t * 1000,
                seconds,
                request_rate: traffic.request_rate,
                error_ratio: traffic.error_ratio,
                p50_ms: traffic.p50_ms,
                p90_ms: traffic.p90_ms,
                p99_ms: traffic.p99_ms,
            }
        })
        .collect();
    Ok(Json(points))
}

/// Resolves a window to `(from_secs, to_secs, rate_seconds)`.
pub fn resolve_window(
    window: Option<&str>,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    started_unix_nanos: u64,
) -> Result<(u64, u64, f64), ApiError> {
    let now_ms = now_nanos() / 1_000_000;
    let end_ms = end_ms.unwrap_or(now_ms);
    let start_ms = match (start_ms, window) {
        (Some(s), _) => s,
        (None, w) => {
            let w = meshlens_common::duration::parse_duration(w.unwrap_or("60s"))
                .map_err(|e| ApiError::BadRequest(format!("window: {e}")))?;
            if w.is_zero() {
                return Err(ApiError::BadRequest("window must be positive".into()));
            }
            end_ms.saturating_sub(w.as_millis() as u64)
        }
    };
    if start_ms >= end_ms {
        return Err(ApiError::BadRequest("start must be before end".into()));
    }
    // Rates count only the time the collector has been listening.
    let effective_start = start_ms.max(started_unix_nanos / 1_000_000);
    let rate_seconds = (end_ms.saturating_sub(effective_start) as f64 / 1000.0).max(1.0);
    Ok((start_ms / 1000, end_ms / 1000, rate_seconds))
}

async fn topology(
    State(pipeline): State<Arc<Pipeline>>,
    Query(params): Query<TopologyParams>,
) -> Result<Json<TopologyView>, ApiError> {
    let (from, to, rate_seconds) =
        resolve_window(params.window.as_deref(), params.start, params.end, pipeline.started_unix_nanos)?;
    // A window ending now rates each edge over its seconds whose requests have all arrived.
    let rates = match params.end {
        Some(_) => Rates::Over(rate_seconds),
        None => Rates::Settled {
            now_secs: now_nanos() / 1_000_000_000,
            listening_from_secs: pipeline.started_unix_nanos.div_ceil(1_000_000_000),
            seconds: rate_seconds,
        },
    };
    let topology = pipeline.topology.read().map_err(poisoned)?;
    Ok(Json(topology.view(from, to, params.group, rates)))
}
