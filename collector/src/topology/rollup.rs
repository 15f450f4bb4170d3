//! Per-edge rollups in one-second buckets: requests, errors, bytes, response codes and a
//! latency sketch. Any time window's figures are the merge of its buckets, so topology
//! queries never scan raw spans. Buckets older than the retention are evicted. At most
//! `max_edges` edges are kept at once: a sender naming a new service in every span (a
//! request ID in `service.name`) would otherwise grow them, and the per-edge metrics fed
//! from the same observations, without bound.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::{
    edges::{EdgeObservation, NodeRef},
    lateness::{self, Lateness},
    sketch::Sketch,
};

/// An edge at the finest grain: source and destination workloads and the protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    /// Caller.
    pub source: NodeRef,
    /// Callee.
    pub destination: NodeRef,
    /// Protocol.
    pub protocol: Arc<str>,
}

/// An edge key's parts, borrowed: what [`Rollups::add`] looks an edge up by, so a request on
/// a known edge neither clones a key (eight reference counts) nor builds one.
trait EdgeParts {
    fn parts(&self) -> (&NodeRef, &NodeRef, &str);
}

impl EdgeParts for EdgeKey {
    fn parts(&self) -> (&NodeRef, &NodeRef, &str) {
        (&self.source, &self.destination, &self.protocol)
    }
}

impl EdgeParts for EdgeObservation {
    fn parts(&self) -> (&NodeRef, &NodeRef, &str) {
        (&self.source, &self.destination, &self.protocol)
    }
}

impl<'a> Borrow<dyn EdgeParts + 'a> for EdgeKey {
    fn borrow(&self) -> &(dyn EdgeParts + 'a) {
        self
    }
}

impl Hash for dyn EdgeParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn EdgeParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn EdgeParts + '_ {}

/// Hashed as its borrowed parts are, which a lookup by them needs.
impl Hash for EdgeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn EdgeParts).hash(state);
    }
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
    /// Retries made for the requests.
    pub retries: u64,
    /// gRPC messages the callers sent, as sidecars counted them.
    pub request_messages: u64,
    /// gRPC messages the callers received.
    pub response_messages: u64,
    /// Requests by response code.
    pub codes: Codes,
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
        self.retries += o.retries;
        if let Some((sent, received)) = o.messages {
            self.request_messages += sent;
            self.response_messages += received;
        }
        self.codes.add(&o.response_code, 1);
        self.latency.add(o.duration_nanos as f64);
    }

    /// Adds everything in `other`.
    pub fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.request_bytes += other.request_bytes;
        self.response_bytes += other.response_bytes;
        self.retries += other.retries;
        self.request_messages += other.request_messages;
        self.response_messages += other.response_messages;
        for (code, n) in other.codes.iter() {
            self.codes.add(code, *n);
        }
        self.latency.merge(&other.latency);
    }
}

/// Request counts by response code, in the codes' order: an array, since a second of one
/// edge sees one to a few codes, and a shared code is found by its pointer before its text.
/// The first two are kept inline, in the bucket itself: a separate array was a cache miss
/// of its own on every request counted (~2 % of ingest, perf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Codes(smallvec::SmallVec<[(Arc<str>, u64); 2]>);

impl Codes {
    /// Counts `n` more requests answered `code`.
    fn add(&mut self, code: &Arc<str>, n: u64) {
        if let Some(entry) = self.0.iter_mut().find(|(c, _)| Arc::ptr_eq(c, code) || **c == **code) {
            entry.1 += n;
            return;
        }
        let at = self.0.partition_point(|(c, _)| **c < **code);
        self.0.insert(at, (code.clone(), n));
    }

    /// Each code and its count, in the codes' order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &u64)> {
        self.0.iter().map(|(code, n)| (code, n))
    }
}

/// How a window's request rates are reckoned.
#[derive(Debug, Clone, Copy)]
pub enum Rates {
    /// Its requests over so many seconds (the window's, or the part of it the collector was
    /// listening).
    Over(f64),
    /// For a window ending now: each edge's over a window as long, ending before its seconds
    /// that are still receiving requests ([`Lateness`]), and starting no earlier than the
    /// first whole second the collector was listening; never below its requests over
    /// `seconds`, as [`Rates::Over`] reckons them. The counts and latencies stay those of the
    /// window asked for, so that a request shows as soon as it arrives; the rate, over
    /// seconds whose requests have all arrived, is not lowered by those still on their way
    /// (an SDK's, batched every 5 s, by about a tenth of a minute's), and a new edge, or a
    /// collector just started, whose requests are all still recent, is not rated at zero.
    Settled {
        /// The current second.
        now_secs: u64,
        /// The collector's first whole second.
        listening_from_secs: u64,
        /// The seconds of the window the collector was listening.
        seconds: f64,
    },
}

impl Rates {
    /// The seconds of the window the collector was listening, which a view reports.
    pub fn seconds(self) -> f64 {
        match self {
            Rates::Over(seconds) | Rates::Settled { seconds, .. } => seconds,
        }
    }
}

/// One edge's per-second buckets, and how late its requests arrive.
#[derive(Debug, Default)]
struct EdgeRollup {
    buckets: BTreeMap<u64, EdgeStats>,
    lateness: Lateness,
}

impl EdgeRollup {
    fn add(&mut self, o: &EdgeObservation, now_secs: u64) {
        let second = o.start_unix_nanos / 1_000_000_000;
        self.buckets.entry(second).or_default().add(o);
        self.lateness.record(now_secs, second);
    }
}

/// All edges' per-second buckets.
#[derive(Debug)]
pub struct Rollups {
    /// Hashed with aHash: SipHash over the key's strings took ~1 % of ingest CPU.
    edges: HashMap<EdgeKey, EdgeRollup, ahash::RandomState>,
    retention_secs: u64,
    max_edges: usize,
    /// Buckets evicted so far.
    pub evicted_buckets: u64,
    /// Requests of new edges not kept because `max_edges` edges were.
    pub refused: u64,
}

impl Rollups {
    /// Empty rollups that keep `retention_secs` of history, of at most `max_edges` edges.
    pub fn new(retention_secs: u64, max_edges: usize) -> Self {
        Self { edges: HashMap::default(), retention_secs: retention_secs.max(1), max_edges, evicted_buckets: 0, refused: 0 }
    }

    /// Adds one request to its edge's bucket (by start second) if the edge is kept: one
    /// already kept, or a new one while fewer than `max_edges` are. Returns whether it was
    /// added; a request refused is counted. One lookup for a kept edge, as most are.
    /// `now_secs` is when it arrived, for the edge's [`Lateness`].
    pub fn admit(&mut self, o: &EdgeObservation, now_secs: u64) -> bool {
        if let Some(edge) = self.edges.get_mut(o as &dyn EdgeParts) {
            edge.add(o, now_secs);
            return true;
        }
        if self.edges.len() >= self.max_edges {
            self.refused += 1;
            return false;
        }
        let key = EdgeKey { source: o.source.clone(), destination: o.destination.clone(), protocol: o.protocol.clone() };
        self.edges.entry(key).or_default().add(o, now_secs);
        true
    }

    /// Edges kept.
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Drops buckets older than the retention, relative to `now_secs`.
    pub fn evict(&mut self, now_secs: u64) {
        let oldest = now_secs.saturating_sub(self.retention_secs);
        self.edges.retain(|_, edge| {
            let keep = edge.buckets.split_off(&oldest);
            self.evicted_buckets += edge.buckets.len() as u64;
            edge.buckets = keep;
            !edge.buckets.is_empty()
        });
    }

    /// Each edge's merged stats over `[from_secs, to_secs]`, for edges with traffic then, and
    /// its requests per second, reckoned as `rates` says.
    pub fn window(&self, from_secs: u64, to_secs: u64, rates: Rates) -> Vec<(EdgeKey, EdgeStats, f64)> {
        let mut out = Vec::new();
        for (key, edge) in &self.edges {
            let mut total = EdgeStats::default();
            for stats in edge.buckets.range(from_secs..=to_secs).map(|(_, s)| s) {
                total.merge(stats);
            }
            if total.requests == 0 {
                continue;
            }
            let over = |seconds: f64| total.requests as f64 / seconds.max(f64::MIN_POSITIVE);
            let rate = match rates {
                Rates::Over(seconds) => over(seconds),
                Rates::Settled { now_secs, listening_from_secs, seconds } => {
                    // The window's length of whole seconds, ending before the edge's seconds
                    // that are still receiving requests; none when the collector started
                    // after the last of those.
                    let end = to_secs.min(lateness::settled_end(now_secs, edge.lateness.lag(now_secs)));
                    let start = (end + 1).saturating_sub(to_secs - from_secs).max(listening_from_secs);
                    let settled = if start > end {
                        0.0
                    } else {
                        let requests: u64 = edge.buckets.range(start..=end).map(|(_, s)| s.requests).sum();
                        requests as f64 / (end + 1 - start) as f64
                    };
                    settled.max(over(seconds))
                }
            };
            out.push((key.clone(), total, rate));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Per-second series of one set of edges (merged), for charts.
    pub fn series(&self, from_secs: u64, to_secs: u64, mut keep: impl FnMut(&EdgeKey) -> bool) -> BTreeMap<u64, EdgeStats> {
        let mut out: BTreeMap<u64, EdgeStats> = BTreeMap::new();
        for (key, edge) in &self.edges {
            if !keep(key) {
                continue;
            }
            for (second, stats) in edge.buckets.range(from_secs..=to_secs) {
                out.entry(*second).or_default().merge(stats);
            }
        }
        out
    }

    /// The lag within which 99 % of the last minute or two's requests of a set of edges
    /// arrived ([`lateness`]), or `None` when none came.
    pub fn settling_lag(&self, now_secs: u64, mut keep: impl FnMut(&EdgeKey) -> bool) -> Option<u64> {
        let mut counts = [0; lateness::SLOTS];
        for (_, edge) in self.edges.iter().filter(|(key, _)| keep(key)) {
            edge.lateness.add_to(now_secs, &mut counts);
        }
        lateness::settling_lag(&counts)
    }

    /// Every (edge, second, stats) bucket held.
    pub fn buckets(&self) -> impl Iterator<Item = (&EdgeKey, u64, &EdgeStats)> + '_ {
        self.edges.iter().flat_map(|(key, edge)| edge.buckets.iter().map(move |(second, stats)| (key, *second, stats)))
    }

    /// Number of (edge, second) buckets held.
    pub fn bucket_count(&self) -> usize {
        self.edges.values().map(|edge| edge.buckets.len()).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::topology::{Node, NodeKind};

    /// A node whose strings are fresh copies, not the interned ones: equal text, other
    /// pointers.
    pub(crate) fn node(service: &str) -> NodeRef {
        Node { kind: NodeKind::Service, namespace: Arc::from("shop"), service: Arc::from(service), workload: None, version: None }.into()
    }

    /// A request from `web` to `cart` (namespace `shop`) that started at `start_secs`.
    pub(crate) fn observation(start_secs: u64, code: &str, duration_nanos: u64) -> EdgeObservation {
        EdgeObservation {
            source: node("web"),
            destination: node("cart"),
            protocol: Arc::from("http"),
            start_unix_nanos: start_secs * 1_000_000_000,
            duration_nanos,
            error: code == "503",
            response_code: Arc::from(code),
            http_status: code.parse().ok(),
            grpc_status: None,
            response_flags: Arc::from("-"),
            request_bytes: 10,
            response_bytes: 20,
            retries: u64::from(code == "503") * 2,
            messages: None,
            trace_id: None,
        }
    }

    #[test]
    fn requests_on_one_edge_share_its_buckets_whatever_their_strings_point_to() {
        let mut rollups = Rollups::new(3600, 10);
        for (second, code) in [(100, "200"), (100, "200"), (100, "503"), (101, "200")] {
            rollups.admit(&observation(second, code, 1_000_000), second);
        }
        let mut other = observation(101, "200", 3_000_000);
        other.destination = node("payments");
        rollups.admit(&other, 101);

        assert_eq!(rollups.bucket_count(), 3, "two seconds of web → cart, one of web → payments");
        let window = rollups.window(100, 101, Rates::Over(1.0));
        assert_eq!(window.len(), 2);
        let (key, stats, _) = &window[0];
        assert_eq!((&*key.source.service, &*key.destination.service), ("web", "cart"));
        assert_eq!((stats.requests, stats.errors, stats.request_bytes, stats.response_bytes, stats.retries), (4, 1, 40, 80, 2));
        let codes: Vec<(&str, u64)> = stats.codes.iter().map(|(c, n)| (&**c, *n)).collect();
        assert_eq!(codes, [("200", 3), ("503", 1)]);
        assert_eq!(stats.latency.count(), 4);
        assert_eq!(window[1].1.requests, 1);
    }

    #[test]
    fn a_grpc_edges_messages_add_up_over_its_seconds() {
        let mut rollups = Rollups::new(3600, 10);
        for (second, messages) in [(100, Some((1, 25))), (100, Some((1, 1))), (101, Some((3, 1))), (101, None)] {
            rollups.admit(&EdgeObservation { messages, ..observation(second, "200", 1_000) }, second);
        }
        let mut total = EdgeStats::default();
        for (_, stats, _) in rollups.window(100, 101, Rates::Over(1.0)) {
            total.merge(&stats);
        }
        assert_eq!((total.requests, total.request_messages, total.response_messages), (4, 5, 27), "uncounted calls add nothing");
    }

    #[test]
    fn new_edges_past_the_limit_are_refused_and_counted_until_old_ones_are_evicted() {
        let mut rollups = Rollups::new(60, 2);
        let to = |service: &str, second: u64| EdgeObservation { destination: node(service), ..observation(second, "200", 1_000) };
        assert!(rollups.admit(&to("cart", 100), 100) && rollups.admit(&to("payments", 100), 100));
        assert!(!rollups.admit(&to("ads", 101), 101), "a third edge");
        assert!(rollups.admit(&to("cart", 150), 150), "a kept edge still counts its requests");
        assert_eq!((rollups.edge_count(), rollups.refused), (2, 1));
        assert_eq!(rollups.window(100, 150, Rates::Over(1.0)).iter().map(|(_, s, _)| s.requests).sum::<u64>(), 3);
        // payments' last bucket (second 100) leaves the retention at 161: room again.
        rollups.evict(161);
        assert!(rollups.admit(&to("ads", 161), 161));
        assert_eq!((rollups.edge_count(), rollups.refused), (2, 1));
    }

    #[test]
    fn a_key_hashes_as_its_borrowed_parts() {
        let hasher = ahash::RandomState::new();
        let o = observation(1, "200", 1);
        let key = EdgeKey { source: node("web"), destination: node("cart"), protocol: Arc::from("http") };
        assert_eq!(hasher.hash_one(&key), hasher.hash_one(&o as &dyn EdgeParts));
        assert!(*Borrow::<dyn EdgeParts>::borrow(&key) == *(&o as &dyn EdgeParts));
    }
}
