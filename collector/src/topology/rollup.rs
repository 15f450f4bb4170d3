//! Per-edge rollups in one-second buckets: requests, errors, bytes, response codes and a
//! latency sketch. Any time window's figures are the merge of its buckets, so topology
//! queries never scan raw spans. Buckets older than the retention are evicted.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{
    edges::{EdgeObservation, NodeRef},
    sketch::Sketch,
};

/// An edge at the finest grain: source and destination workloads and the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    /// Caller.
    pub source: NodeRef,
    /// Callee.
    pub destination: NodeRef,
    /// Protocol.
    pub protocol: Arc<str>,
}

/// Aggregates of one edge over some time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeStats {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Request bytes.
    pub request_bytes: u64,
    /// Response bytes.
    pub response_bytes: u64,
    /// Requests by response code.
    pub codes: BTreeMap<Arc<str>, u64>,
    /// Latency, nanoseconds.
    pub latency: Sketch,
}

impl EdgeStats {
    /// Adds one request.
    pub fn add(&mut self, o: &EdgeObservation) {
        self.requests += 1;
        self.errors += u64::from(o.error);
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        *self.codes.entry(o.response_code.clone()).or_default() += 1;
        self.latency.add(o.duration_nanos as f64);
    }

    /// Adds everything in `other`.
    pub fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.request_bytes += other.request_bytes;
        self.response_bytes += other.response_bytes;
        for (code, n) in &other.codes {
            *self.codes.entry(code.clone()).or_default() += n;
        }
        self.latency.merge(&other.latency);
    }
}

/// All edges' per-second buckets.
#[derive(Debug)]
pub struct Rollups {
    edges: HashMap<EdgeKey, BTreeMap<u64, EdgeStats>>,
    retention_secs: u64,
    /// Buckets evicted so far.
    pub evicted_buckets: u64,
}

impl Rollups {
    /// Empty rollups that keep `retention_secs` of history.
    pub fn new(retention_secs: u64) -> Self {
        Self { edges: HashMap::new(), retention_secs: retention_secs.max(1), evicted_buckets: 0 }
    }

    /// Adds one request to its edge's bucket (by start second).
    pub fn add(&mut self, o: &EdgeObservation) {
        let key = EdgeKey { source: o.source.clone(), destination: o.destination.clone(), protocol: o.protocol.clone() };
        let second = o.start_unix_nanos / 1_000_000_000;
        self.edges.entry(key).or_default().entry(second).or_default().add(o);
    }

    /// Drops buckets older than the retention, relative to `now_secs`.
    pub fn evict(&mut self, now_secs: u64) {
        let oldest = now_secs.saturating_sub(self.retention_secs);
        self.edges.retain(|_, buckets| {
            let keep = buckets.split_off(&oldest);
            self.evicted_buckets += buckets.len() as u64;
            *buckets = keep;
            !buckets.is_empty()
        });
    }

    /// Each edge's merged stats over `[from_secs, to_secs]`, for edges with traffic then.
    pub fn window(&self, from_secs: u64, to_secs: u64) -> Vec<(EdgeKey, EdgeStats)> {
        let mut out = Vec::new();
        for (key, buckets) in &self.edges {
            let mut total = EdgeStats::default();
            for stats in buckets.range(from_secs..=to_secs).map(|(_, s)| s) {
                total.merge(stats);
            }
            if total.requests > 0 {
                out.push((key.clone(), total));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Per-second series of one set of edges (merged), for charts.
    pub fn series(&self, from_secs: u64, to_secs: u64, mut keep: impl FnMut(&EdgeKey) -> bool) -> BTreeMap<u64, EdgeStats> {
        let mut out: BTreeMap<u64, EdgeStats> = BTreeMap::new();
        for (key, buckets) in &self.edges {
            if !keep(key) {
                continue;
            }
            for (second, stats) in buckets.range(from_secs..=to_secs) {
                out.entry(*second).or_default().merge(stats);
            }
        }
        out
    }

    /// Every (edge, second, stats) bucket held.
    pub fn buckets(&self) -> impl Iterator<Item = (&EdgeKey, u64, &EdgeStats)> + '_ {
        self.edges.iter().flat_map(|(key, buckets)| buckets.iter().map(move |(second, stats)| (key, *second, stats)))
    }

    /// Number of (edge, second) buckets held.
    pub fn bucket_count(&self) -> usize {
        self.edges.values().map(BTreeMap::len).sum()
    }
}
