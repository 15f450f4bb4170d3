//! In-process request metrics: count, duration histogram and bytes per label set.
//!
//! Labels are bounded by construction: direction, source and destination workload,
//! status code, gRPC status, classification and response flags; never the path. The
//! exporter reads cumulative snapshots and sends them as OTLP histograms and sums.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use crate::{
    classify::{Outcome, ResponseFlags},
    identity::WorkloadIdentity,
};

use super::{RequestRecord, Side};

/// Upper bounds of the duration histogram, in seconds: 100 µs to 30 s.
pub const DURATION_BOUNDS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The label set of one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// Which side.
    pub side: Side,
    /// The calling workload.
    pub source: Option<Arc<WorkloadIdentity>>,
    /// The destination service.
    pub destination_service: Arc<str>,
    /// The destination workload.
    pub destination: Option<Arc<WorkloadIdentity>>,
    /// HTTP status.
    pub status: u16,
    /// gRPC status.
    pub grpc_status: Option<i32>,
    /// Whether it was gRPC.
    pub grpc: bool,
    /// Verdict.
    pub outcome: Outcome,
    /// Response flags.
    pub flags: ResponseFlags,
}

/// Cumulative values of one series.
#[derive(Debug, Clone, Default)]
pub struct RequestStats {
    /// Requests.
    pub count: u64,
    /// Sum of durations, seconds.
    pub duration_sum: f64,
    /// Per-bucket counts; one more than the bounds (the overflow bucket).
    pub buckets: [u64; DURATION_BOUNDS.len() + 1],
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// The aggregation table, shared by the recorder and the exporter.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    inner: Arc<Mutex<HashMap<RequestKey, RequestStats>>>,
    start_unix_nanos: u64,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl RequestMetrics {
    /// An empty table whose cumulative series start now.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            start_unix_nanos: unix_nanos(SystemTime::now()),
        }
    }

    /// When the cumulative series started.
    pub fn start_unix_nanos(&self) -> u64 {
        self.start_unix_nanos
    }

    /// Adds one exchange.
    pub fn observe(&self, r: &RequestRecord) {
        let key = RequestKey {
            side: r.side,
            source: r.source.clone(),
            destination_service: r.destination_service.clone(),
            destination: r.destination.clone(),
            status: r.status,
            grpc_status: r.grpc_status,
            grpc: r.grpc,
            outcome: r.classification.outcome,
            flags: r.flags,
        };
        let seconds = r.duration.as_secs_f64();
        let bucket = DURATION_BOUNDS.partition_point(|b| *b < seconds);
        let Ok(mut table) = self.inner.lock() else { return };
        let stats = table.entry(key).or_default();
        stats.count += 1;
        stats.duration_sum += seconds;
        stats.buckets[bucket] += 1;
        stats.request_bytes += r.request_bytes;
        stats.response_bytes += r.response_bytes;
    }

    /// A copy of every series.
    pub fn snapshot(&self) -> Vec<(RequestKey, RequestStats)> {
        match self.inner.lock() {
            Ok(table) => table.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        }
    }
}
