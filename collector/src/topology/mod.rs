//! The live service topology: edges derived from spans ([`edges`]), rolled up per second
//! ([`rollup`]) with latency sketches ([`sketch`]), and viewed as a graph for any window
//! ([`graph`]).

pub mod edges;
mod fingerprints;
pub mod graph;
pub mod lateness;
pub mod rollup;
pub mod sketch;

use crate::model::{LogRecord, Span, SpanKind};

pub use edges::{EdgeObservation, Node, NodeKind, NodeRef};
pub use graph::{Grouping, TopologyView};

/// Edge derivation plus rollups.
#[derive(Debug)]
pub struct Topology {
    deriver: edges::EdgeDeriver,
    rollups: rollup::Rollups,
}

/// Edges of closed match generations emitted per span ingested, and per ingest call besides:
/// at most one span of each ingested batch waits to be retired, so they go out faster than
/// they come, a few per span, and ingest never stops for a whole generation at once.
const RETIRED_PER_SPAN: usize = 2;
const RETIRED_PER_CALL: usize = 1024;

/// Spans whose settled-set slots are read ahead at a time ([`edges::EdgeDeriver::read_ahead`]):
/// enough cache misses to overlap, few enough that their lines are still cached when used.
const READ_AHEAD: usize = 32;

/// Edges of closed match generations emitted per tick (once a second), when no spans come.
const RETIRED_PER_TICK: usize = 65_536;

impl Topology {
    /// A topology that waits at least `match_window_nanos` for the other side of a hop and keeps
    /// `retention_secs` of rollups, of at most `max_edges` edges.
    pub fn new(match_window_nanos: u64, max_pending: usize, retention_secs: u64, max_edges: usize) -> Self {
        Self {
            deriver: edges::EdgeDeriver::new(match_window_nanos, max_pending),
            rollups: rollup::Rollups::new(retention_secs, max_edges),
        }
    }

    /// Keeps the requests whose edges the rollups keep ([`rollup::Rollups::admit`]); the
    /// per-edge metrics then see only those. They arrived at `now_nanos`.
    fn admit(&mut self, out: &mut Vec<EdgeObservation>, now_nanos: u64) {
        let now_secs = now_nanos / 1_000_000_000;
        out.retain(|o| self.rollups.admit(o, now_secs));
    }

    /// Learns from spans received at `now`; returns the requests they complete.
    ///
    /// A request's CLIENT spans are matched before its other spans: when a request holds both
    /// sides of a hop (a gateway forwarding whole traces), the SERVER side then finds its
    /// caller among the request's staged clients, instead of looking through every table and
    /// waiting. Ends with [`edges::EdgeDeriver::expire`], which places the clients left unjoined.
    pub fn ingest<'a>(&mut self, spans: impl IntoIterator<Item = &'a Span>, now_nanos: u64) -> Vec<EdgeObservation> {
        let (clients, others): (Vec<&Span>, Vec<&Span>) = spans.into_iter().partition(|span| span.kind == SpanKind::Client);
        // Nearly every span completes at most one request: allocated once, at that size.
        let mut out = Vec::with_capacity(clients.len() + others.len());
        for span in &clients {
            self.deriver.observe(span, now_nanos, &mut out);
        }
        for chunk in others.chunks(READ_AHEAD) {
            self.deriver.read_ahead(chunk);
            for span in chunk {
                self.deriver.observe(span, now_nanos, &mut out);
            }
        }
        let observed = clients.len() + others.len();
        self.deriver.expire(now_nanos, RETIRED_PER_SPAN * observed + RETIRED_PER_CALL, &mut out);
        self.admit(&mut out, now_nanos);
        out
    }

    /// Counts the requests that sidecars' access-log records, received at `now`, describe;
    /// returns them.
    pub fn ingest_access_logs<'a>(&mut self, logs: impl IntoIterator<Item = &'a LogRecord>, now_nanos: u64) -> Vec<EdgeObservation> {
        let mut out: Vec<EdgeObservation> = logs.into_iter().filter_map(edges::from_access_log).collect();
        self.admit(&mut out, now_nanos);
        out
    }

    /// Settles expired matches and evicts old rollups; returns the requests settled.
    pub fn tick(&mut self, now_nanos: u64) -> Vec<EdgeObservation> {
        let mut out = Vec::new();
        self.deriver.expire(now_nanos, RETIRED_PER_TICK, &mut out);
        self.admit(&mut out, now_nanos);
        self.rollups.evict(now_nanos / 1_000_000_000);
        out
    }

    /// The graph over `[from, to]` (Unix seconds), with request rates as `rates` says.
    pub fn view(&self, from_secs: u64, to_secs: u64, grouping: Grouping, rates: rollup::Rates) -> TopologyView {
        let edges = self.rollups.window(from_secs, to_secs, rates);
        graph::build(&edges, grouping, from_secs * 1000, to_secs * 1000, rates.seconds())
    }

    /// Traffic over time between `[from, to]` (Unix seconds) in steps of `step` seconds, for
    /// the edge `source → target` or, with no source, everything `target` receives (node IDs
    /// as the grouping writes them): each step's start, the seconds of it within the window,
    /// and its figures.
    pub fn series(
        &self,
        from_secs: u64,
        to_secs: u64,
        step: u64,
        grouping: Grouping,
        source: Option<&str>,
        target: &str,
    ) -> Vec<(u64, u64, rollup::EdgeStats)> {
        let step = step.max(1);
        let per_second = self.rollups.series(from_secs, to_secs, |key| into(key, grouping, source, target));
        let mut out = Vec::new();
        let mut t = from_secs - from_secs % step;
        while t <= to_secs {
            // The window's first and last steps may cover only part of theirs.
            let (first, last) = (t.max(from_secs), (t + step - 1).min(to_secs));
            let mut bucket = rollup::EdgeStats::default();
            for (_, stats) in per_second.range(first..=last) {
                bucket.merge(stats);
            }
            out.push((t, last - first + 1, bucket));
            t += step;
        }
        out
    }

    /// The last second of a series of `source → target` (or of everything `target` receives)
    /// that is settled at `now_secs`: the seconds since are still receiving requests. Its
    /// edges' requests of the last minute or two arrived within some lag of the second they
    /// started in (99 % of them; [`lateness`]).
    pub fn settled_end(&self, now_secs: u64, grouping: Grouping, source: Option<&str>, target: &str) -> u64 {
        lateness::settled_end(now_secs, self.rollups.settling_lag(now_secs, |key| into(key, grouping, source, target)))
    }

    /// The rollups, for per-edge series.
    pub fn rollups(&self) -> &rollup::Rollups {
        &self.rollups
    }

    /// Pending matches dropped for lack of room.
    pub fn overflowed(&self) -> u64 {
        self.deriver.overflowed
    }

    /// Spans waiting for the other side of their hop, and fingerprints of settled spans.
    pub fn matcher_load(&self) -> (usize, usize) {
        self.deriver.load()
    }
}

/// Whether the edge `key` goes into `target` (from `source`, when given), in node IDs as
/// `grouping` writes them.
fn into(key: &rollup::EdgeKey, grouping: Grouping, source: Option<&str>, target: &str) -> bool {
    graph::node_id(&key.destination, grouping) == target && source.is_none_or(|s| graph::node_id(&key.source, grouping) == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_step_counts_only_the_seconds_of_it_within_the_window() {
        let mut topology = Topology::new(1_000_000_000, 100, 3600, 10);
        for second in 100..120 {
            for _ in 0..2 {
                assert!(topology.rollups.admit(&rollup::tests::observation(second, "200", 1_000_000), second));
            }
        }
        // Seconds 103 to 117 in steps of five: the first step has two of its seconds in the
        // window, the last three.
        let points = topology.series(103, 117, 5, Grouping::Service, Some("web.shop"), "cart.shop");
        let shape: Vec<(u64, u64, u64)> = points.iter().map(|(t, seconds, stats)| (*t, *seconds, stats.requests)).collect();
        assert_eq!(shape, [(100, 2, 4), (105, 5, 10), (110, 5, 10), (115, 3, 6)]);
        let rate = |(_, seconds, stats): &(u64, u64, rollup::EdgeStats)| graph::Traffic::from_stats(stats, *seconds as f64).request_rate;
        let rates: Vec<f64> = points.iter().map(rate).collect();
        assert_eq!(rates, [2.0; 4], "the rate over the seconds covered: no dip at either end");
        assert!(topology.series(103, 117, 5, Grouping::Service, None, "web.shop").iter().all(|(_, _, s)| s.requests == 0));
    }

    #[test]
    fn a_window_ending_now_rates_each_edge_over_its_settled_seconds() {
        let mut topology = Topology::new(1_000_000_000, 100, 3600, 10);
        let mut request = rollup::tests::observation(0, "200", 1_000_000);
        // Two requests a second on each edge: web → cart's arrive within a second, cart →
        // ledger's (an SDK's batches) up to 6 s late, so its last 6 seconds are still to come.
        for (destination, lag, last) in [("cart", 1, 6_059), ("ledger", 6, 6_053)] {
            request.source = rollup::tests::node(if destination == "cart" { "web" } else { "cart" });
            request.destination = rollup::tests::node(destination);
            for second in 5_940..=last {
                request.start_unix_nanos = second * 1_000_000_000;
                for _ in 0..2 {
                    assert!(topology.rollups.admit(&request, second + lag));
                }
            }
        }
        let rate = |view: &TopologyView, target: &str| {
            let edge = view.edges.iter().find(|e| e.target == target).map(|e| (e.traffic.requests, e.traffic.request_rate));
            let node = view.nodes.iter().find(|n| n.id == target).map(|n| n.inbound.request_rate);
            (edge, node)
        };
        let over = topology.view(6_000, 6_060, Grouping::Service, rollup::Rates::Over(60.0));
        assert_eq!(rate(&over, "ledger.shop"), (Some((108, 1.8)), Some(1.8)), "the seconds still to come lower the rate");
        let settled_from = |listening_from_secs, seconds| rollup::Rates::Settled { now_secs: 6_060, listening_from_secs, seconds };
        let settled = topology.view(6_000, 6_060, Grouping::Service, settled_from(0, 60.0));
        assert_eq!(rate(&settled, "ledger.shop"), (Some((108, 2.0)), Some(2.0)), "rated over its settled seconds, counted as arrived");
        assert_eq!(rate(&settled, "cart.shop"), (Some((120, 2.0)), Some(2.0)));
        // A collector listening since 6030 has only the requests since.
        let mut young = Topology::new(1_000_000_000, 100, 3600, 10);
        for second in 6_030..=6_053 {
            request.start_unix_nanos = second * 1_000_000_000;
            for _ in 0..2 {
                assert!(young.rollups.admit(&request, second + 6));
            }
        }
        let young = young.view(6_000, 6_060, Grouping::Service, settled_from(6_030, 30.0));
        assert_eq!(rate(&young, "ledger.shop").0, Some((48, 2.0)), "over the seconds the collector was listening");
        // No second settled since the collector started: its rate as the window's.
        let newborn = topology.view(6_000, 6_060, Grouping::Service, settled_from(6_059, 60.0));
        assert_eq!(rate(&newborn, "cart.shop"), (Some((120, 2.0)), Some(2.0)));
        // A new edge whose requests are all still recent: not rated at zero.
        request.start_unix_nanos = 6_059 * 1_000_000_000;
        request.destination = rollup::tests::node("ads");
        assert!(topology.rollups.admit(&request, 6_060));
        let new_edge = topology.view(6_000, 6_060, Grouping::Service, settled_from(0, 60.0));
        assert_eq!(rate(&new_edge, "ads.shop").0, Some((1, 1.0 / 60.0)));
    }

    #[test]
    fn a_series_ends_before_the_seconds_whose_requests_are_still_arriving() {
        let mut topology = Topology::new(1_000_000_000, 100, 3600, 10);
        let end = |t: &Topology| t.settled_end(6_060, Grouping::Service, None, "cart.shop");
        assert_eq!(end(&topology), 6_058, "no traffic: the current second and the one before");
        // A sidecar's requests: exported within a second of their end.
        for second in 6_000..6_060 {
            assert!(topology.rollups.admit(&rollup::tests::observation(second, "200", 1_000_000), second + second % 2));
        }
        assert_eq!(end(&topology), 6_058);
        // An SDK's: in batches every 5 s, a request arriving up to 6 s after its second.
        let mut late = rollup::tests::observation(0, "200", 1_000_000);
        (late.source, late.destination) = (rollup::tests::node("cart"), rollup::tests::node("ledger"));
        for second in 6_000..6_054 {
            late.start_unix_nanos = second * 1_000_000_000;
            assert!(topology.rollups.admit(&late, second + 6 - second % 5));
        }
        assert_eq!(end(&topology), 6_058, "another node's lateness does not hold cart's series back");
        assert_eq!(topology.settled_end(6_060, Grouping::Service, None, "ledger.shop"), 6_053);
        assert_eq!(topology.settled_end(6_060, Grouping::Service, Some("cart.shop"), "ledger.shop"), 6_053);
        assert_eq!(topology.settled_end(6_060, Grouping::Service, Some("web.shop"), "ledger.shop"), 6_058, "no such edge");
    }
}
