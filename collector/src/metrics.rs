//! The collector's Prometheus metrics: per-edge RED metrics from the topology, and the
//! ingest pipeline's own counters, all in one prometheus-client registry.

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge},
    registry::Registry,
};

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    instances::{Instances, InstancesCollector},
    istio::IstioMetrics,
    model::TraceId,
    topology::{EdgeObservation, NodeRef},
};

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

/// The exemplar of a latency bucket: a trace that landed in it. The ID is kept as its
/// bytes and written as 32 hex digits only when the metrics are scraped: a bucket's
/// exemplar is replaced on every observation, and formatting each one took a string.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct TraceExemplar {
    /// The trace.
    pub trace_id: TraceId,
}

impl EncodeLabelSet for TraceExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        [("trace_id", self.trace_id.to_string())].encode(encoder)
    }
}

/// Labels of ingest counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    /// `spans`, `log_records` or `metric_points`.
    pub signal: &'static str,
    /// `grpc` or `http`.
    pub transport: &'static str,
}

/// Labels of the TLS handshakes on the OTLP receivers and the web port.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `grpc` or `http` (the OTLP receivers), or `web`.
    pub transport: &'static str,
    /// `ok`, `refused` (not TLS, no common protocol, a client certificate missing or not
    /// trusted, or the client refusing the collector's), `plaintext` (plain HTTP/1 or HTTP/2,
    /// answered saying TLS is expected), `closed` (the client closed the connection before
    /// the handshake ended, as port probes do) or `timeout`.
    pub outcome: &'static str,
}

/// Labels of store gauges and eviction counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// What is held: `span_rows`, `log_rows`, `edge_buckets`, `edge_match_waiting` (spans
    /// waiting for the other side of their hop), `edge_match_fingerprints`; the memory gauge
    /// uses `spans` and `logs`.
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
    retries: Family<EdgeLabels, Counter>,
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
    /// CLIENT and SERVER spans the edge matcher could not hold (its pending state was full).
    pub match_overflow: Counter,
    /// Requests of new edges not kept because `max_edges` edges were.
    pub edge_overflow: Counter,
    /// TLS handshakes on the OTLP receivers, by outcome.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// SQL queries, by outcome.
    pub sql_queries: Family<OutcomeLabels, Counter>,
    /// The process figures of the instances that export them.
    pub instances: Arc<Mutex<Instances>>,
    /// Istio-compatible families, when asked for.
    istio: Option<IstioMetrics>,
    /// The per-edge series, found once per edge and outcome.
    series: Arc<Mutex<SeriesCache>>,
}

/// What an observation's series are found by: the parts of an [`EdgeObservation`] its
/// labels come from (a finer key than the labels, never a coarser one).
#[derive(Debug)]
struct SeriesKey {
    source: NodeRef,
    destination: NodeRef,
    protocol: Arc<str>,
    response_code: Arc<str>,
    error: bool,
}

impl SeriesKey {
    fn of(o: &EdgeObservation) -> Self {
        Self {
            source: o.source.clone(),
            destination: o.destination.clone(),
            protocol: o.protocol.clone(),
            response_code: o.response_code.clone(),
            error: o.error,
        }
    }

    fn matches(&self, o: &EdgeObservation) -> bool {
        self.error == o.error
            && self.source == o.source
            && self.destination == o.destination
            && self.protocol == o.protocol
            && self.response_code == o.response_code
    }
}

/// The series one edge and outcome update, and when they last did.
#[derive(Debug)]
struct EdgeSeries {
    key: SeriesKey,
    labels: RequestLabels,
    duration: HistogramWithExemplars<TraceExemplar>,
    request_bytes: Counter,
    response_bytes: Counter,
    retries: Counter,
    requests: Counter,
    last: Instant,
}

/// The per-edge series by a hash of their [`SeriesKey`]: an observation finds its series
/// with one hash and a few comparisons, without building label strings or hashing them
/// four times (that was ~4 % of ingest CPU, `meshlens bench ingest`, perf).
#[derive(Debug, Default)]
struct SeriesCache {
    hasher: ahash::RandomState,
    by_hash: HashMap<u64, Vec<EdgeSeries>, ahash::RandomState>,
}

impl SeriesCache {
    fn hash(&self, o: &EdgeObservation) -> u64 {
        self.hasher.hash_one((&o.source, &o.destination, &o.protocol, &o.response_code, o.error))
    }
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
            instances: Default::default(),
            series: Default::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            retries: Family::default(),
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
            match_overflow: Counter::default(),
            edge_overflow: Counter::default(),
            tls_handshakes: Family::default(),
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
        // At zero from the start, as the ingest counters, so rates read 0 rather than nothing.
        for transport in TRANSPORTS.into_iter().chain(["web"]) {
            for outcome in ["ok", "refused", "plaintext", "closed", "timeout"] {
                let _ = metrics.tls_handshakes.get_or_create(&HandshakeLabels { transport, outcome });
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
        r.register("meshlens_retries", "Retries the callers' sidecars made, by edge (requests count once)", self.retries.clone());
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
        c.register("tls_handshakes", "TLS handshakes on the OTLP receivers and the web port, by outcome", self.tls_handshakes.clone());
        c.register(
            "edge_match_overflow",
            "CLIENT and SERVER spans the edge matcher could not hold because max_pending_matches was reached; edges they would have completed are missing",
            self.match_overflow.clone(),
        );
        c.register(
            "edge_overflow",
            "Requests of new edges not kept because max_edges edges already were; they are missing from the topology and \
             the per-edge metrics (their spans are stored)",
            self.edge_overflow.clone(),
        );
        if let Some(istio) = &self.istio {
            istio.register(&mut r);
        }
        // The collector's own CPU and memory, and those the sidecars and SDKs export.
        r.register_collector(Box::new(meshlens_common::process::ProcessCollector));
        r.register_collector(Box::new(InstancesCollector(self.instances.clone())));
        r
    }

    /// Feeds metric points to the instances' process figures, and sidecars' to the Istio
    /// TCP families (when enabled).
    pub fn observe_points(&self, points: &[crate::model::MetricPoint]) {
        if let Ok(mut instances) = self.instances.lock() {
            instances.observe(points);
        }
        if let Some(istio) = &self.istio {
            istio.observe_tcp(points);
        }
    }

    /// Counts requests on edges: the series cache is locked, and the clock read, once for
    /// all of them (an export request's spans give hundreds).
    pub fn observe_edges(&self, observations: &[EdgeObservation]) {
        if observations.is_empty() {
            return;
        }
        if let Some(istio) = &self.istio {
            for o in observations {
                istio.observe(o);
            }
        }
        let Ok(mut cache) = self.series.lock() else { return };
        let now = Instant::now();
        for o in observations {
            let exemplar = o.trace_id.map(|trace_id| TraceExemplar { trace_id });
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(o.start_unix_nanos + o.duration_nanos);
            let hash = cache.hash(o);
            let bucket = cache.by_hash.entry(hash).or_default();
            let index = match bucket.iter().position(|s| s.key.matches(o)) {
                Some(index) => index,
                None => {
                    bucket.push(self.series_of(o));
                    bucket.len() - 1
                }
            };
            let series = &mut bucket[index];
            series.last = now;
            series.duration.observe(o.duration_nanos as f64 / 1e9, exemplar, Some(at));
            series.request_bytes.inc_by(o.request_bytes);
            series.response_bytes.inc_by(o.response_bytes);
            series.retries.inc_by(o.retries);
            series.requests.inc();
        }
    }

    /// The series of `o`'s edge and outcome, from their families.
    fn series_of(&self, o: &EdgeObservation) -> EdgeSeries {
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
        let labels = RequestLabels {
            edge,
            response_code: o.response_code.to_string(),
            classification: if o.error { "failure" } else { "success" },
        };
        EdgeSeries {
            key: SeriesKey::of(o),
            duration: self.duration.get_or_create(&labels.edge).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels.edge).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels.edge).clone(),
            retries: self.retries.get_or_create(&labels.edge).clone(),
            requests: self.requests.get_or_create(&labels).clone(),
            labels,
            last: Instant::now(),
        }
    }

    /// Removes the per-edge series not updated within `ttl`; returns how many.
    pub fn expire_idle(&self, ttl: Duration) -> usize {
        let mut removed = 0;
        if let Ok(mut cache) = self.series.lock() {
            let now = Instant::now();
            let mut idle = Vec::new();
            for bucket in cache.by_hash.values_mut() {
                let (gone, kept): (Vec<EdgeSeries>, Vec<EdgeSeries>) =
                    std::mem::take(bucket).into_iter().partition(|s| now.duration_since(s.last) > ttl);
                *bucket = kept;
                idle.extend(gone);
            }
            cache.by_hash.retain(|_, bucket| !bucket.is_empty());
            // Two keys can share labels (they differ in what labels leave out): a series
            // goes only when no key still in use updates it.
            let live: Vec<&RequestLabels> = cache.by_hash.values().flatten().map(|s| &s.labels).collect();
            let live_requests: HashSet<&RequestLabels> = live.iter().copied().collect();
            let live_edges: HashSet<&EdgeLabels> = live.iter().map(|l| &l.edge).collect();
            let mut edges_gone: HashSet<&EdgeLabels> = HashSet::new();
            for series in &idle {
                if !live_requests.contains(&series.labels) && self.requests.remove(&series.labels) {
                    removed += 1;
                }
                if !live_edges.contains(&series.labels.edge) && edges_gone.insert(&series.labels.edge) {
                    self.duration.remove(&series.labels.edge);
                    self.request_bytes.remove(&series.labels.edge);
                    self.response_bytes.remove(&series.labels.edge);
                    self.retries.remove(&series.labels.edge);
                    removed += 1;
                }
            }
        }
        if let Some(istio) = &self.istio {
            removed += istio.expire_idle(ttl);
        }
        if let Ok(mut instances) = self.instances.lock() {
            removed += instances.expire_idle(ttl);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::intern,
        topology::{Node, NodeKind},
    };

    fn node(service: &str, version: Option<&str>) -> NodeRef {
        Node { kind: NodeKind::Service, namespace: intern("shop"), service: intern(service), workload: None, version: version.map(intern) }.into()
    }

    fn observation(source_version: Option<&str>, code: &str) -> EdgeObservation {
        EdgeObservation {
            source: node("web", source_version),
            destination: node("cart", Some("v1")),
            protocol: intern("http"),
            start_unix_nanos: 1,
            duration_nanos: 2_000_000,
            error: code == "503",
            response_code: intern(code),
            http_status: code.parse().ok(),
            grpc_status: None,
            response_flags: intern("-"),
            request_bytes: 10,
            response_bytes: 20,
            retries: u64::from(code == "503"),
            messages: None,
            trace_id: None,
        }
    }

    fn exposition(metrics: &CollectorMetrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).expect("encodes");
        text
    }

    /// The values of the series starting with `prefix`, sorted (series come in hash order).
    fn value(text: &str, prefix: &str) -> Vec<String> {
        let mut values: Vec<String> = text.lines().filter(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap_or("").to_owned()).collect();
        values.sort();
        values
    }

    #[test]
    fn observations_reuse_their_series_and_idle_ones_expire() {
        let metrics = CollectorMetrics::new(false);
        // The source's version is not a label: both keys update one series.
        for _ in 0..3 {
            metrics.observe_edges(&[observation(Some("v1"), "200"), observation(Some("v2"), "200")]);
        }
        metrics.observe_edges(&[observation(None, "503")]);
        let text = exposition(&metrics);
        assert_eq!(value(&text, "meshlens_requests_total{"), vec!["1", "6"], "{text}");
        assert_eq!(value(&text, "meshlens_request_bytes_total{"), vec!["70"], "{text}");
        assert_eq!(value(&text, "meshlens_retries_total{"), vec!["1"], "{text}");
        assert_eq!(value(&text, "meshlens_request_duration_seconds_count{"), vec!["7"], "{text}");

        // One key of the shared series stays in use: nothing of it goes.
        std::thread::sleep(Duration::from_millis(30));
        metrics.observe_edges(&[observation(Some("v2"), "200")]);
        assert_eq!(metrics.expire_idle(Duration::from_millis(15)), 1, "only the 503 series");
        let text = exposition(&metrics);
        assert_eq!(value(&text, "meshlens_requests_total{"), vec!["7"], "{text}");

        // All idle: every series goes, and traffic brings them back from zero.
        assert_eq!(metrics.expire_idle(Duration::ZERO), 2, "the request series and the edge's");
        assert!(value(&exposition(&metrics), "meshlens_requests_total{").is_empty());
        metrics.observe_edges(&[observation(Some("v1"), "200")]);
        let text = exposition(&metrics);
        assert_eq!(value(&text, "meshlens_requests_total{"), vec!["1"], "{text}");
        assert_eq!(value(&text, "meshlens_request_duration_seconds_count{"), vec!["1"], "{text}");
    }

    #[test]
    fn a_bucket_exemplar_names_its_trace_in_hex() {
        let metrics = CollectorMetrics::new(false);
        let mut o = observation(Some("v1"), "200");
        o.trace_id = Some(TraceId([0xab; 16]));
        metrics.observe_edges(std::slice::from_ref(&o));
        let text = exposition(&metrics);
        let hex = "ab".repeat(16);
        assert!(text.lines().any(|l| l.starts_with("meshlens_request_duration_seconds_bucket") && l.contains(&format!("# {{trace_id=\"{hex}\"}} 0.002"))), "{text}");
    }
}
