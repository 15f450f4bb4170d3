//! The telemetry pipeline's own counters, served on the sidecar's admin `/metrics`.
//!
//! Every record that does not reach the collector is counted here with a fixed label
//! set (`signal`, `reason`), so a dropping pipeline is visible, never silent.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Side;
use crate::connection::{ConnectionMeter, Resends};

/// Labels of the export counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// `spans`, `logs` or `metrics`.
    pub signal: &'static str,
    /// Why records were dropped (`queue_full`, `export_failed`, `rejected`), or `ok`.
    pub reason: &'static str,
}

/// Label of the exported-bytes counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    /// `spans`, `logs` or `metrics`.
    pub signal: &'static str,
}

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `success` or `failure`.
    pub classification: &'static str,
}

/// Counters of the telemetry pipeline, shared: a clone (layers take one per request) is a
/// reference count.
#[derive(Debug, Clone, Default)]
pub struct TelemetryStats(std::sync::Arc<Counters>);

impl std::ops::Deref for TelemetryStats {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        &self.0
    }
}

/// The counters behind [`TelemetryStats`].
#[derive(Debug, Default)]
pub struct Counters {
    requests: Family<RequestLabels, Counter>,
    exported: Family<SignalLabels, Counter>,
    exported_bytes: Family<ExportLabels, Counter>,
    dropped: Family<SignalLabels, Counter>,
    retries: Family<SignalLabels, Counter>,
    label_overflow: Family<OverflowLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    request_retries: Family<ServiceLabels, Counter>,
    resends: Family<ResendLabels, Counter>,
    /// Series in the request-metrics table (set when `/metrics` is read).
    pub series: Gauge,
    active: Family<DirectionLabels, Gauge>,
    tcp_opened: Family<DirectionLabels, Counter>,
    tcp_closed: Family<DirectionLabels, Counter>,
    tcp_received: Family<DirectionLabels, Counter>,
    tcp_sent: Family<DirectionLabels, Counter>,
    protocol_errors: Family<DirectionLabels, Counter>,
    idle_closed: Family<DirectionLabels, Counter>,
    header_timeouts: Family<DirectionLabels, Counter>,
    upstreams: std::sync::Arc<std::sync::Mutex<Vec<UpstreamMeter>>>,
}

/// One request in flight, counted in `meshlens_proxy_active_requests` until dropped.
#[derive(Debug)]
pub struct ActiveRequest(Gauge);

impl ActiveRequest {
    /// Counts a request arriving on the side whose gauge is `gauge`.
    pub fn start(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The connection counters of one upstream workload.
pub type UpstreamMeter = (std::sync::Arc<crate::identity::WorkloadIdentity>, ConnectionMeter);

/// Labels of the TCP counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
}

/// Labels of the resend counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResendLabels {
    /// Why the request went again: `idle_closed`, `refused_stream` or `goaway`.
    pub reason: &'static str,
}

/// Labels of the ejection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The destination service (one of the configured ones, so the set is bounded).
    pub service: String,
}

/// Labels of the label-overflow counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    /// The metric label that hit its limit.
    pub label: &'static str,
}

impl TelemetryStats {
    /// Registers the counters into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "meshlens_proxy_requests",
            "Requests handled by the sidecar",
            self.requests.clone(),
        );
        registry.register(
            "meshlens_proxy_telemetry_exported",
            "Telemetry records accepted by the collector",
            self.exported.clone(),
        );
        registry.register(
            "meshlens_proxy_telemetry_exported_bytes",
            "Bytes of the export requests the collector accepted (protobuf, before any compression)",
            self.exported_bytes.clone(),
        );
        registry.register(
            "meshlens_proxy_telemetry_dropped",
            "Telemetry records dropped before reaching the collector, by reason",
            self.dropped.clone(),
        );
        registry.register("meshlens_proxy_metric_series", "Series in the sidecar's request metrics", self.series.clone());
        registry.register(
            "meshlens_proxy_active_requests",
            "Requests in flight: arrived and not yet finished (an upgraded connection until it closes)",
            self.active.clone(),
        );
        registry.register("meshlens_proxy_tcp_connections_opened", "TCP connections accepted", self.tcp_opened.clone());
        registry.register("meshlens_proxy_tcp_connections_closed", "TCP connections closed", self.tcp_closed.clone());
        registry.register("meshlens_proxy_tcp_received_bytes", "Bytes received from peers", self.tcp_received.clone());
        registry.register("meshlens_proxy_tcp_sent_bytes", "Bytes sent to peers", self.tcp_sent.clone());
        registry.register(
            "meshlens_proxy_downstream_protocol_errors",
            "Connections closed because the peer broke HTTP before any request could be read (bad request line or headers, \
             HTTP/2 violations, TLS to a plaintext port)",
            self.protocol_errors.clone(),
        );
        registry.register(
            "meshlens_proxy_downstream_idle_timeouts",
            "Connections the sidecar closed after they were idle (no exchange in flight, no byte either way, HTTP/2 frames \
             between streams aside) for `[connections] idle_timeout`",
            self.idle_closed.clone(),
        );
        registry.register(
            "meshlens_proxy_downstream_header_timeouts",
            "Connections the sidecar closed because a request head was still not whole `[connections] request_headers_timeout` \
             after its first byte",
            self.header_timeouts.clone(),
        );
        registry.register(
            "meshlens_proxy_metric_label_overflow",
            "Observations whose label value was folded into `other` because the label hit its limit",
            self.label_overflow.clone(),
        );
        registry.register(
            "meshlens_proxy_outlier_ejections",
            "Endpoints ejected by outlier detection, by destination service",
            self.ejections.clone(),
        );
        registry.register(
            "meshlens_proxy_request_retries",
            "Requests sent again by their service's retry policy, by destination service (Envoy's `upstream_rq_retry`)",
            self.request_retries.clone(),
        );
        registry.register(
            "meshlens_proxy_upstream_resends",
            "Requests the sidecar sent again by itself, whatever the retry policy: the idle HTTP/1.1 connection was closed \
             under them (`idle_closed`), or the HTTP/2 upstream refused their stream (`refused_stream`) or left it out of its \
             GOAWAY (`goaway`)",
            self.resends.clone(),
        );
        registry.register(
            "meshlens_proxy_telemetry_export_retries",
            "Export attempts retried after a retryable error, by the error's code",
            self.retries.clone(),
        );
    }

    /// The gauge of one side's requests in flight (a handle onto this registry's).
    pub fn active(&self, side: Side) -> Gauge {
        self.active.get_or_create_owned(&DirectionLabels { direction: side.as_str() })
    }

    /// Counts an endpoint of `service` ejected by outlier detection.
    pub fn ejected(&self, service: &str) {
        self.ejections.get_or_create(&ServiceLabels { service: service.to_owned() }).inc();
    }

    /// Counts a request to `service` sent again by its retry policy.
    pub fn request_retried(&self, service: &str) {
        self.request_retries.get_or_create(&ServiceLabels { service: service.to_owned() }).inc();
    }

    /// The counters of the requests the upstream pools send again (handles onto this
    /// registry's).
    pub fn resends(&self) -> Resends {
        let counter = |reason| self.resends.get_or_create_owned(&ResendLabels { reason });
        Resends { idle_closed: counter("idle_closed"), refused_stream: counter("refused_stream"), goaway: counter("goaway") }
    }

    /// The connection counters of one listener (handles onto this registry's counters).
    pub fn connections(&self, side: Side) -> ConnectionMeter {
        let labels = DirectionLabels { direction: side.as_str() };
        ConnectionMeter {
            opened: self.tcp_opened.get_or_create_owned(&labels),
            closed: self.tcp_closed.get_or_create_owned(&labels),
            received: self.tcp_received.get_or_create_owned(&labels),
            sent: self.tcp_sent.get_or_create_owned(&labels),
            protocol_errors: self.protocol_errors.get_or_create_owned(&labels),
            idle_closed: self.idle_closed.get_or_create_owned(&labels),
            header_timeouts: self.header_timeouts.get_or_create_owned(&labels),
        }
    }

    /// The counters of connections to one upstream workload (exported over OTLP with the
    /// destination's identity, for per-edge TCP metrics).
    pub fn upstream_connections(&self, destination: std::sync::Arc<crate::identity::WorkloadIdentity>) -> ConnectionMeter {
        let meter = ConnectionMeter::default();
        if let Ok(mut upstreams) = self.upstreams.lock() {
            upstreams.push((destination, meter.clone()));
        }
        meter
    }

    /// Every upstream workload's connection counters.
    pub fn upstreams(&self) -> Vec<UpstreamMeter> {
        self.upstreams.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// The counter of one side's requests with one outcome (a handle onto this registry's,
    /// taken once, so counting a request is one atomic add).
    pub(crate) fn requests(&self, side: Side, outcome: crate::classify::Outcome) -> Counter {
        self.requests.get_or_create_owned(&RequestLabels { direction: side.as_str(), classification: outcome.as_str() })
    }

    /// Counts `n` records of `signal` accepted in an export request of `bytes` bytes.
    pub(crate) fn exported(&self, signal: &'static str, n: u64, bytes: u64) {
        self.exported.get_or_create(&SignalLabels { signal, reason: "ok" }).inc_by(n);
        self.exported_bytes.get_or_create(&ExportLabels { signal }).inc_by(bytes);
    }

    pub(crate) fn dropped(&self, signal: &'static str, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&SignalLabels { signal, reason }).inc_by(n);
    }

    pub(crate) fn retried(&self, signal: &'static str, reason: &'static str) {
        self.retries.get_or_create(&SignalLabels { signal, reason }).inc();
    }

    pub(crate) fn label_overflow(&self, label: &'static str) {
        self.label_overflow.get_or_create(&OverflowLabels { label }).inc();
    }

    /// Observations folded into `other` so far for `label`.
    pub fn label_overflow_count(&self, label: &'static str) -> u64 {
        self.label_overflow.get_or_create(&OverflowLabels { label }).get()
    }

    /// Records dropped so far for `signal` and `reason` (for tests and the benchmark).
    pub fn dropped_count(&self, signal: &'static str, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&SignalLabels { signal, reason }).get()
    }

    /// Records exported so far for `signal`.
    pub fn exported_count(&self, signal: &'static str) -> u64 {
        self.exported.get_or_create(&SignalLabels { signal, reason: "ok" }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pools_resends_are_counted_on_the_admin_metrics_by_reason() {
        let stats = TelemetryStats::default();
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let resends = stats.resends();
        resends.goaway.inc_by(2);
        resends.idle_closed.inc();
        let mut exposed = String::new();
        prometheus_client::encoding::text::encode(&mut exposed, &registry).expect("encode");
        for (reason, n) in [("idle_closed", 1), ("refused_stream", 0), ("goaway", 2)] {
            let line = format!("meshlens_proxy_upstream_resends_total{{reason=\"{reason}\"}} {n}");
            assert!(exposed.lines().any(|l| l == line), "{line} in\n{exposed}");
        }
    }
}
