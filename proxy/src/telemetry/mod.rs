//! What the sidecar observes, and how it leaves the request path.
//!
//! The observe layer hands one [`RequestRecord`] per finished exchange to
//! [`Telemetry::record`], which updates the in-process request metrics and offers the
//! record to two bounded queues (spans, access logs) without ever waiting. Background
//! tasks ([`export`]) drain the queues in batches and export them with OTLP/gRPC; when a
//! queue is full the record is dropped and counted, so the request never pays for a slow
//! or absent collector.

pub mod export;
pub mod metrics;
pub mod otlp;
pub mod stats;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::mpsc;

use crate::{
    classify::{Classification, ResponseFlags},
    config::TelemetryConfig,
    identity::WorkloadIdentity,
    trace_context::SpanContext,
};

pub use export::ExportHandle;
pub use metrics::RequestMetrics;
pub use stats::TelemetryStats;

/// Which side of the sidecar saw the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Requests from other workloads to the local application (SERVER spans).
    Inbound,
    /// Requests from the local application to other services (CLIENT spans).
    Outbound,
}

impl Side {
    /// `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Everything the sidecar learned about one finished exchange.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Which side handled it.
    pub side: Side,
    /// Trace, span and parent IDs, and the sampling decision.
    pub context: SpanContext,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// Time from the request's arrival to the response body's end.
    pub duration: Duration,
    /// Request method.
    pub method: http::Method,
    /// Request path (no query).
    pub path: String,
    /// The authority the caller addressed (`server.address`).
    pub authority: Option<String>,
    /// The port the caller addressed, if any.
    pub authority_port: Option<u16>,
    /// HTTP version of the request.
    pub version: http::Version,
    /// Whether it was a gRPC call (`content-type: application/grpc...`).
    pub grpc: bool,
    /// Response status code.
    pub status: u16,
    /// gRPC status from the response headers or trailers.
    pub grpc_status: Option<i32>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// The calling workload, when known.
    pub source: Option<Arc<WorkloadIdentity>>,
    /// The destination service name.
    pub destination_service: Arc<str>,
    /// The destination workload, when an endpoint was chosen.
    pub destination: Option<Arc<WorkloadIdentity>>,
    /// The address the request was forwarded to.
    pub upstream: Option<SocketAddr>,
    /// The downstream peer's address.
    pub peer: Option<SocketAddr>,
    /// What the sidecar itself saw going wrong.
    pub flags: ResponseFlags,
    /// The verdict of the classifier.
    pub classification: Classification,
    /// The `user-agent` header.
    pub user_agent: Option<String>,
    /// The `x-request-id` header.
    pub request_id: Option<String>,
}

impl RequestRecord {
    /// `1.1`, `2`, ... as OpenTelemetry's `network.protocol.version` writes it.
    pub fn protocol_version(&self) -> &'static str {
        match self.version {
            http::Version::HTTP_09 => "0.9",
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            _ => "1.1",
        }
    }

    /// `grpc` or `http`.
    pub fn protocol(&self) -> &'static str {
        if self.grpc { "grpc" } else { "http" }
    }
}

/// A bounded queue that never waits: full means dropped, and counted.
#[derive(Debug, Clone)]
struct Queue {
    tx: mpsc::Sender<Arc<RequestRecord>>,
    signal: &'static str,
}

/// The sidecar's telemetry recorder; cheap to clone.
#[derive(Debug, Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    identity: Arc<WorkloadIdentity>,
    metrics: RequestMetrics,
    stats: TelemetryStats,
    spans: Option<Queue>,
    logs: Option<Queue>,
}

impl Telemetry {
    /// Creates the recorder and, when an OTLP endpoint is configured, its export tasks.
    pub fn start(
        identity: Arc<WorkloadIdentity>,
        config: &TelemetryConfig,
    ) -> Result<(Self, ExportHandle), crate::error::StartError> {
        let stats = TelemetryStats::default();
        let metrics = RequestMetrics::new();
        let (spans, logs, handle) = match &config.otlp_endpoint {
            Some(endpoint) => {
                let (span_tx, span_rx) = mpsc::channel(config.queue_capacity);
                let (log_tx, log_rx) = mpsc::channel(config.queue_capacity);
                let handle = export::spawn(
                    endpoint,
                    config,
                    identity.clone(),
                    span_rx,
                    log_rx,
                    metrics.clone(),
                    stats.clone(),
                )?;
                (
                    Some(Queue { tx: span_tx, signal: "spans" }),
                    Some(Queue { tx: log_tx, signal: "logs" }),
                    handle,
                )
            }
            None => (None, None, ExportHandle::disabled()),
        };
        let inner = Inner { identity, metrics, stats, spans, logs };
        Ok((Self { inner: Arc::new(inner) }, handle))
    }

    /// The workload this recorder speaks for.
    pub fn identity(&self) -> &Arc<WorkloadIdentity> {
        &self.inner.identity
    }

    /// The recorder's own counters (for the admin `/metrics`).
    pub fn stats(&self) -> &TelemetryStats {
        &self.inner.stats
    }

    /// Records one finished exchange. Never blocks: full queues drop and count.
    pub fn record(&self, record: RequestRecord) {
        let inner = &*self.inner;
        inner.metrics.observe(&record);
        inner.stats.observe_request(&record);
        let sampled = record.context.sampled;
        let record = Arc::new(record);
        if sampled {
            self.offer(inner.spans.as_ref(), record.clone());
        }
        self.offer(inner.logs.as_ref(), record);
    }

    fn offer(&self, queue: Option<&Queue>, record: Arc<RequestRecord>) {
        let Some(queue) = queue else { return };
        if queue.tx.try_send(record).is_err() {
            self.inner.stats.dropped(queue.signal, "queue_full", 1);
        }
    }
}
