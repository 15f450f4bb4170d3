//! The collector's Prometheus metrics: per-edge RED metrics from the topology, and the
//! ingest pipeline's own counters, all in one prometheus-client registry.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge},
    registry::Registry,
};

use std::time::Duration;

use crate::{istio::IstioMetrics, series_ttl::LastSeen, topology::EdgeObservation};

/// Bucket bounds of the request duration histogram, seconds.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Labels of one edge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    /// Caller namespace.
    pub source_namespace: String,
    /// Caller service.
    pub source_service: String,
    /// Caller workload (`unknown` when not reported).
    pub source_workload: String,
    /// Callee namespace.
    pub destination_namespace: String,
    /// Callee service.
    pub destination_service: String,
    /// Callee workload.
    pub destination_workload: String,
    /// Callee version.
    pub destination_version: String,
    /// `http`, `grpc`, ...
    pub protocol: String,
}

/// Edge labels plus the outcome of the request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The edge.
    #[prometheus(flatten)]
    pub edge: EdgeLabels,
    /// HTTP status or `grpc:<code>`.
    pub response_code: String,
    /// `success` or `failure`.
    pub classification: &'static str,
}

/// The exemplar of a latency bucket: a trace that landed in it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    /// Trace ID, 32 hex digits.
    pub trace_id: String,
}

/// Labels of ingest counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    /// `spans`, `log_records` or `metric_points`.
    pub signal: &'static str,
    /// `grpc` or `http`.
    pub transport: &'static str,
}

/// Labels of store gauges and eviction counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// What is stored: `spans`, `traces`, `log_records`, `metric_points`, `edge_buckets`.
    pub kind: &'static str,
}

/// Labels of an outcome count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, `rejected`, `timeout`, `memory`, `busy` or `error`.
    pub outcome: &'static str,
}

/// Every metric the collector serves.
#[derive(Debug, Clone)]
pub struct CollectorMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<EdgeLabels, HistogramWithExemplars<TraceExemplar>, fn() -> HistogramWithExemplars<TraceExemplar>>,
    request_bytes: Family<EdgeLabels, Counter>,
    response_bytes: Family<EdgeLabels, Counter>,
    /// Items received, by signal and transport.
    pub received: Family<IngestLabels, Counter>,
    /// Items accepted.
    pub accepted: Family<IngestLabels, Counter>,
    /// Items rejected as invalid.
    pub rejected: Family<IngestLabels, Counter>,
    /// Export requests that could not be decoded.
    pub malformed: Family<IngestLabels, Counter>,
    /// Export requests refused because the ingest budget was full.
    pub refused: Family<IngestLabels, Counter>,
    /// Attribute values cut to the maximum length.
    pub truncated: Family<IngestLabels, Counter>,
    /// Bytes of export requests being processed (the ingest queue).
    pub inflight: Gauge,
    /// Items held in the stores.
    pub stored: Family<StoreLabels, Gauge>,
    /// Items evicted from the stores.
    pub evicted: Family<StoreLabels, Counter>,
    /// Bytes held by the columnar tables.
    pub memory: Family<StoreLabels, Gauge>,
    /// SQL queries, by outcome.
    pub sql_queries: Family<OutcomeLabels, Counter>,
    /// Istio-compatible families, when asked for.
    istio: Option<IstioMetrics>,
    edges_seen: std::sync::Arc<LastSeen<EdgeLabels>>,
    requests_seen: std::sync::Arc<LastSeen<RequestLabels>>,
}

fn duration_histogram() -> HistogramWithExemplars<TraceExemplar> {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

/// Every signal and transport, so the ingest counters start at zero (rates and alerts
/// then see 0 rather than no data).
const SIGNALS: [&str; 3] = ["spans", "log_records", "metric_points"];
const TRANSPORTS: [&str; 2] = ["grpc", "http"];

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl CollectorMetrics {
    /// Every family, plus Istio's when `istio` is set.
    pub fn new(istio: bool) -> Self {
        let metrics = Self {
            istio: istio.then(IstioMetrics::default),
            edges_seen: Default::default(),
            requests_seen: Default::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            received: Family::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            malformed: Family::default(),
            refused: Family::default(),
            truncated: Family::default(),
            inflight: Gauge::default(),
            stored: Family::default(),
            evicted: Family::default(),
            memory: Family::default(),
            sql_queries: Family::default(),
        };
        for signal in SIGNALS {
            for transport in TRANSPORTS {
                let labels = IngestLabels { signal, transport };
                for family in [&metrics.received, &metrics.accepted, &metrics.rejected, &metrics.malformed, &metrics.refused, &metrics.truncated] {
                    let _ = family.get_or_create(&labels);
                }
            }
        }
        metrics
    }
}

fn or_unknown(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("unknown").to_owned()
}

impl CollectorMetrics {
    /// A registry holding every metric.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register("meshlens_requests", "Requests between services, by edge and response", self.requests.clone());
        r.register_with_unit(
            "meshlens_request_duration",
            "Request latency between services as seen by the caller",
            prometheus_client::registry::Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit("meshlens_request", "Request body bytes between services", prometheus_client::registry::Unit::Bytes, self.request_bytes.clone());
        r.register_with_unit("meshlens_response", "Response body bytes between services", prometheus_client::registry::Unit::Bytes, self.response_bytes.clone());
        let c = r.sub_registry_with_prefix("meshlens_collector");
        c.register("received", "Telemetry items received over OTLP", self.received.clone());
        c.register("accepted", "Telemetry items accepted into the store", self.accepted.clone());
        c.register("rejected", "Telemetry items rejected as invalid", self.rejected.clone());
        c.register("malformed_requests", "OTLP export requests that could not be decoded", self.malformed.clone());
        c.register("refused_requests", "OTLP export requests refused while the ingest budget was full (retryable)", self.refused.clone());
        c.register("truncated_values", "Attribute values cut to the maximum length", self.truncated.clone());
        c.register_with_unit("ingest_inflight", "Bytes of export requests being processed", prometheus_client::registry::Unit::Bytes, self.inflight.clone());
        c.register("stored", "Telemetry items held in memory", self.stored.clone());
        c.register("evicted", "Telemetry items evicted by retention", self.evicted.clone());
        c.register_with_unit("store_memory", "Memory held by the columnar tables", prometheus_client::registry::Unit::Bytes, self.memory.clone());
        c.register("sql_queries", "SQL queries run, by outcome", self.sql_queries.clone());
        if let Some(istio) = &self.istio {
            istio.register(&mut r);
        }
        r
    }

    /// Feeds metric points from sidecars to the Istio TCP families (when enabled).
    pub fn observe_points(&self, points: &[crate::model::MetricPoint]) {
        if let Some(istio) = &self.istio {
            istio.observe_tcp(points);
        }
    }

    /// Counts one request on an edge.
    pub fn observe_edge(&self, o: &EdgeObservation) {
        if let Some(istio) = &self.istio {
            istio.observe(o);
        }
        let edge = EdgeLabels {
            source_namespace: o.source.namespace.to_string(),
            source_service: o.source.service.to_string(),
            source_workload: or_unknown(o.source.workload.as_deref()),
            destination_namespace: o.destination.namespace.to_string(),
            destination_service: o.destination.service.to_string(),
            destination_workload: or_unknown(o.destination.workload.as_deref()),
            destination_version: or_unknown(o.destination.version.as_deref()),
            protocol: o.protocol.to_string(),
        };
        self.edges_seen.touch(&edge);
        let exemplar = o.trace_id.map(|t| TraceExemplar { trace_id: t.to_string() });
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(o.start_unix_nanos + o.duration_nanos);
        self.duration.get_or_create(&edge).observe(o.duration_nanos as f64 / 1e9, exemplar, Some(at));
        self.request_bytes.get_or_create(&edge).inc_by(o.request_bytes);
        self.response_bytes.get_or_create(&edge).inc_by(o.response_bytes);
        let labels = RequestLabels {
            edge,
            response_code: o.response_code.to_string(),
            classification: if o.error { "failure" } else { "success" },
        };
        self.requests_seen.touch(&labels);
        self.requests.get_or_create(&labels).inc();
    }

    /// Removes the per-edge series not updated within `ttl`; returns how many.
    pub fn expire_idle(&self, ttl: Duration) -> usize {
        let mut removed = 0;
        for labels in self.edges_seen.expire(ttl) {
            self.duration.remove(&labels);
            self.request_bytes.remove(&labels);
            self.response_bytes.remove(&labels);
            removed += 1;
        }
        for labels in self.requests_seen.expire(ttl) {
            self.requests.remove(&labels);
            removed += 1;
        }
        if let Some(istio) = &self.istio {
            removed += istio.expire_idle(ttl);
        }
        removed
    }
}
