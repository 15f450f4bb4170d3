//! Collector settings, validated into typed values once at start.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// How a collector runs.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// OTLP/gRPC listener (default 127.0.0.1:4317).
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP listener (default 127.0.0.1:4318).
    pub otlp_http: SocketAddr,
    /// Web UI and query APIs (default 127.0.0.1:16686, Jaeger's query port).
    pub web: SocketAddr,
    /// TLS of both OTLP receivers, if they speak it (and whether they require client
    /// certificates); `None`: plain text.
    pub otlp_tls: Option<meshlens_common::tls::ServerTls>,
    /// TLS of the web port (UI, query APIs, `/metrics`), if it speaks it; `None`: plain HTTP.
    pub web_tls: Option<meshlens_common::tls::ServerTls>,
    /// Directory for the collector's files; created if missing.
    pub data_dir: Option<PathBuf>,
    /// Most spans held in memory; the oldest traces are evicted beyond it.
    pub max_spans: usize,
    /// History kept in the per-edge rollups.
    pub rollup_retention: Duration,
    /// How long a CLIENT or SERVER span waits for the other side of its hop (at least this
    /// long, at most about twice).
    pub match_window: Duration,
    /// Most spans waiting for a match. Spans that need none but may still be named as a
    /// parent (most of them) are kept as fingerprints, up to 16 times as many.
    pub max_pending_matches: usize,
    /// Most edges (caller workload, destination workload, protocol) kept at once in the
    /// topology and the per-edge metrics; requests of new edges past it are counted only.
    pub max_edges: usize,
    /// Also expose the mesh metrics under Istio's names and labels.
    pub istio_metrics: bool,
    /// Per-edge Prometheus series not updated for this long are removed.
    pub series_ttl: Duration,
    /// Rows of the `spans` and `logs` tables older than this are evicted.
    pub retention: Duration,
    /// The `spans` and `logs` tables together stay under this many bytes.
    pub memory_budget: usize,
    /// Bytes of export requests processed at once; more are refused as retryable.
    pub ingest_inflight_bytes: usize,
    /// Limits on each SQL query.
    pub sql: crate::sql::SqlLimits,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            web: SocketAddr::from(([127, 0, 0, 1], 16686)),
            otlp_tls: None,
            web_tls: None,
            data_dir: None,
            max_spans: 1_000_000,
            rollup_retention: Duration::from_secs(3600),
            match_window: Duration::from_secs(15),
            max_pending_matches: 500_000,
            max_edges: 10_000,
            istio_metrics: false,
            series_ttl: Duration::from_secs(15 * 60),
            retention: Duration::from_secs(6 * 3600),
            memory_budget: 1 << 30,
            sql: crate::sql::SqlLimits::default(),
            ingest_inflight_bytes: 256 << 20,
        }
    }
}

impl CollectorConfig {
    /// Checks the values that could make the collector misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_spans == 0 {
            return Err("the span limit must be positive".into());
        }
        if self.rollup_retention < Duration::from_secs(60) {
            return Err("rollup retention must be at least 60s".into());
        }
        if self.series_ttl.is_zero() {
            return Err("series ttl must be positive".into());
        }
        if self.retention < Duration::from_secs(60) {
            return Err("retention must be at least 60s".into());
        }
        if self.memory_budget < (16 << 20) {
            return Err("memory budget must be at least 16 MiB".into());
        }
        if self.sql.timeout.is_zero() || self.sql.max_rows == 0 || self.sql.memory_bytes == 0 {
            return Err("SQL limits must be positive".into());
        }
        if self.match_window.is_zero() {
            return Err("match window must be positive".into());
        }
        Ok(())
    }
}
