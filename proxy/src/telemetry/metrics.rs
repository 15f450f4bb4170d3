//! In-process request metrics: count, duration histogram and bytes per label set.
//!
//! Cardinality is bounded three ways: which labels are carried is configurable; the path
//! never is a label (only its route template, `http.route`); and each label admits at most
//! `max_label_values` distinct values, folding the rest into `other` and counting the
//! overflow. The exporter reads cumulative snapshots and sends them as OTLP histograms and
//! sums.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use crate::{
    classify::{Outcome, ResponseFlags},
    identity::WorkloadIdentity,
};

use super::{RequestRecord, Side, TelemetryStats};

/// A label the request metrics may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// The calling workload.
    Source,
    /// The destination service and workload.
    Destination,
    /// HTTP status and gRPC status.
    StatusCode,
    /// The HTTP method (unknown methods fold into `_OTHER`).
    Method,
    /// The route template (`http.route`).
    Route,
    /// The response flags.
    ResponseFlags,
}

impl Label {
    /// Every label.
    pub const ALL: [Label; 6] = [Self::Source, Self::Destination, Self::StatusCode, Self::Method, Self::Route, Self::ResponseFlags];

    fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
            Self::StatusCode => "status_code",
            Self::Method => "method",
            Self::Route => "route",
            Self::ResponseFlags => "response_flags",
        }
    }
}

/// Which labels are carried, and how many values each may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPolicy {
    /// The labels carried.
    pub labels: HashSet<Label>,
    /// Distinct values admitted per label before the rest fold into `other`.
    pub max_values: usize,
}

impl Default for LabelPolicy {
    fn default() -> Self {
        Self { labels: Label::ALL.into_iter().collect(), max_values: 200 }
    }
}

/// The value every label folds into past its limit.
pub const OTHER: &str = "other";

/// The distinct values seen of one label.
#[derive(Debug, Default)]
struct Seen(HashSet<Arc<str>, ahash::RandomState>);

impl Seen {
    /// Whether `value` may be a label value: already seen, or there is room.
    fn admit(&mut self, value: &Arc<str>, max: usize) -> bool {
        if self.0.contains(value) {
            return true;
        }
        if self.0.len() < max {
            self.0.insert(value.clone());
            return true;
        }
        false
    }
}

/// The HTTP method as a label: the standard ones, else `_OTHER` (as OpenTelemetry says).
/// A head never read ([`super::unread`]) has no method, so `_OTHER` too.
fn method_label(method: Option<&http::Method>) -> &'static str {
    method.and_then(super::known_method).unwrap_or("_OTHER")
}

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
    /// HTTP status (0 when the label is off).
    pub status: u16,
    /// gRPC status.
    pub grpc_status: Option<i32>,
    /// HTTP method.
    pub method: Option<&'static str>,
    /// Route template.
    pub route: Option<Arc<str>>,
    /// Whether it was gRPC.
    pub grpc: bool,
    /// Verdict.
    pub outcome: Outcome,
    /// Response flags.
    pub flags: ResponseFlags,
    /// HTTP version (`network.protocol.version`).
    pub version: http::Version,
    /// `url.scheme`.
    pub scheme: &'static str,
    /// `error.type`, with the status label.
    pub error_type: Option<Arc<str>>,
    /// The port addressed (80 when none was), outbound with the destination label.
    pub port: Option<u16>,
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
    /// Request body sizes.
    pub request_size: SizeHistogram,
    /// Response body sizes.
    pub response_size: SizeHistogram,
    /// A gRPC series' messages per call, request's and response's, of the calls counted
    /// (gRPC-Web's text form is not); none for other series.
    pub messages: Option<Box<[MessageHistogram; 2]>>,
    /// The duration buckets' exemplars since the last export: the last request of each
    /// bucket whose span was kept; none until one was.
    pub exemplars: Option<Box<DurationExemplars>>,
}

/// A request that landed in a duration bucket, whose span links the bucket to its trace
/// (OpenTelemetry's exemplars: a trace-based filter, one reservoir slot per bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// The request's trace.
    pub trace_id: [u8; 16],
    /// Its span.
    pub span_id: [u8; 8],
    /// Its duration, seconds.
    pub seconds: f64,
    /// When it ended.
    pub time_unix_nanos: u64,
}

/// One exemplar slot per duration bucket.
pub type DurationExemplars = [Option<Exemplar>; DURATION_BOUNDS.len() + 1];

/// Upper bounds of the body-size buckets, bytes: powers of ten, as Istio's
/// `istio_request_bytes` and `istio_response_bytes`.
pub const SIZE_BOUNDS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// Upper bounds of the messages-per-call buckets of gRPC series: a unary call's one message,
/// and streams of up to thousands.
pub const MESSAGE_BOUNDS: [f64; 11] = [0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 10000.0];

/// Cumulative whole-number observations of one series (body sizes, messages per call):
/// their sum, and their count per bucket (`N`, one more than the bounds: the overflow bucket).
#[derive(Debug, Clone)]
pub struct CountHistogram<const N: usize> {
    /// The observations added up.
    pub sum: u64,
    /// Observations per bucket.
    pub buckets: [u64; N],
}

impl<const N: usize> Default for CountHistogram<N> {
    fn default() -> Self {
        Self { sum: 0, buckets: [0; N] }
    }
}

impl<const N: usize> CountHistogram<N> {
    /// Adds `value`, counted in the first bucket of `bounds` (`N - 1` of them) that holds it.
    fn observe(&mut self, value: u64, bounds: &[f64]) {
        self.sum += value;
        self.buckets[bounds.partition_point(|b| *b < value as f64).min(N - 1)] += 1;
    }
}

/// Body sizes, in [`SIZE_BOUNDS`].
pub type SizeHistogram = CountHistogram<{ SIZE_BOUNDS.len() + 1 }>;

/// Messages per call, in [`MESSAGE_BOUNDS`].
pub type MessageHistogram = CountHistogram<{ MESSAGE_BOUNDS.len() + 1 }>;

/// One histogram of a series, as exported: its sum, its per-bucket counts and their upper
/// bounds (the counts have one more, the overflow bucket).
#[derive(Debug)]
pub struct HistogramView<'a> {
    /// Sum of the observations.
    pub sum: f64,
    /// Observations per bucket.
    pub buckets: &'a [u64],
    /// Upper bounds of the buckets.
    pub bounds: &'static [f64],
    /// Exemplars, by bucket, for the histograms that keep them (durations).
    pub exemplars: Option<&'a DurationExemplars>,
}

/// A histogram the request metrics export, for the series of one side: its OpenTelemetry
/// name, description and unit, and where a series keeps it. The OTLP export and the admin
/// `/metrics` both read this table.
#[derive(Debug)]
pub struct HistogramFamily {
    /// OpenTelemetry's name (`http.client.request.duration`).
    pub name: &'static str,
    /// What it measures.
    pub description: &'static str,
    /// UCUM unit: `s` or `By`.
    pub unit: &'static str,
    /// The side whose series it holds.
    pub side: Side,
    /// The histogram in a series; none when the series has none (messages per call, of a
    /// series not of gRPC calls).
    pub view: fn(&RequestStats) -> Option<HistogramView<'_>>,
    /// The unit on Prometheus's side (a suffix of the name), when there is one.
    pub prometheus_unit: Option<&'static str>,
}

fn durations(s: &RequestStats) -> HistogramView<'_> {
    HistogramView { sum: s.duration_sum, buckets: &s.buckets, bounds: &DURATION_BOUNDS, exemplars: s.exemplars.as_deref() }
}

fn sizes(h: &SizeHistogram) -> HistogramView<'_> {
    HistogramView { sum: h.sum as f64, buckets: &h.buckets, bounds: &SIZE_BOUNDS, exemplars: None }
}

/// The request's (0) or the response's (1) messages per call of a gRPC series.
fn messages(s: &RequestStats, which: usize) -> Option<HistogramView<'_>> {
    let h = &s.messages.as_ref()?[which];
    Some(HistogramView { sum: h.sum as f64, buckets: &h.buckets, bounds: &MESSAGE_BOUNDS, exemplars: None })
}

/// Every histogram of the request metrics.
pub const HISTOGRAMS: [HistogramFamily; 10] = [
    HistogramFamily {
        name: "http.server.request.duration",
        description: "Duration of inbound requests",
        unit: "s",
        side: Side::Inbound,
        view: |s| Some(durations(s)),
        prometheus_unit: Some("seconds"),
    },
    HistogramFamily {
        name: "http.client.request.duration",
        description: "Duration of outbound requests",
        unit: "s",
        side: Side::Outbound,
        view: |s| Some(durations(s)),
        prometheus_unit: Some("seconds"),
    },
    HistogramFamily {
        name: "http.server.request.body.size",
        description: "Body sizes of inbound requests",
        unit: "By",
        side: Side::Inbound,
        view: |s| Some(sizes(&s.request_size)),
        prometheus_unit: Some("bytes"),
    },
    HistogramFamily {
        name: "http.server.response.body.size",
        description: "Body sizes of the responses to inbound requests",
        unit: "By",
        side: Side::Inbound,
        view: |s| Some(sizes(&s.response_size)),
        prometheus_unit: Some("bytes"),
    },
    HistogramFamily {
        name: "http.client.request.body.size",
        description: "Body sizes of outbound requests",
        unit: "By",
        side: Side::Outbound,
        view: |s| Some(sizes(&s.request_size)),
        prometheus_unit: Some("bytes"),
    },
    HistogramFamily {
        name: "http.client.response.body.size",
        description: "Body sizes of the responses to outbound requests",
        unit: "By",
        side: Side::Outbound,
        view: |s| Some(sizes(&s.response_size)),
        prometheus_unit: Some("bytes"),
    },
    HistogramFamily {
        name: "rpc.server.requests_per_rpc",
        description: "Messages received per inbound gRPC call",
        unit: "{count}",
        side: Side::Inbound,
        view: |s| messages(s, 0),
        prometheus_unit: None,
    },
    HistogramFamily {
        name: "rpc.server.responses_per_rpc",
        description: "Messages sent per inbound gRPC call",
        unit: "{count}",
        side: Side::Inbound,
        view: |s| messages(s, 1),
        prometheus_unit: None,
    },
    HistogramFamily {
        name: "rpc.client.requests_per_rpc",
        description: "Messages sent per outbound gRPC call",
        unit: "{count}",
        side: Side::Outbound,
        view: |s| messages(s, 0),
        prometheus_unit: None,
    },
    HistogramFamily {
        name: "rpc.client.responses_per_rpc",
        description: "Messages received per outbound gRPC call",
        unit: "{count}",
        side: Side::Outbound,
        view: |s| messages(s, 1),
        prometheus_unit: None,
    },
];

/// The table and the values seen per label. Both are looked up for every request: hashed
/// with aHash (randomly keyed), not SipHash, which was ~1 % of a saturated sidecar's CPU.
#[derive(Debug, Default)]
struct Table {
    series: HashMap<RequestKey, RequestStats, ahash::RandomState>,
    seen: HashMap<Label, Seen, ahash::RandomState>,
}

/// The aggregation table, shared by the recorder and the exporter.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    inner: Arc<Mutex<Table>>,
    policy: Arc<LabelPolicy>,
    other: Arc<WorkloadIdentity>,
    stats: TelemetryStats,
    start_unix_nanos: u64,
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl RequestMetrics {
    /// An empty table whose cumulative series start now; overflows are counted in `stats`.
    pub fn new(policy: LabelPolicy, stats: TelemetryStats) -> Self {
        Self {
            inner: Arc::default(),
            policy: Arc::new(policy),
            other: Arc::new(WorkloadIdentity::new(OTHER, OTHER, OTHER, OTHER)),
            stats,
            start_unix_nanos: unix_nanos(SystemTime::now()),
        }
    }

    /// `value` if `label` has room for it, else `other` (counted).
    fn bounded<T: Clone>(&self, table: &mut Table, label: Label, key: &Arc<str>, value: T, other: T) -> T {
        if table.seen.entry(label).or_default().admit(key, self.policy.max_values) {
            value
        } else {
            self.stats.label_overflow(label.name());
            other
        }
    }

    /// When the cumulative series started.
    pub fn start_unix_nanos(&self) -> u64 {
        self.start_unix_nanos
    }

    /// Adds one exchange; `exemplar`: its span is kept, so it may stand for its duration
    /// bucket.
    pub fn observe(&self, r: &RequestRecord, exemplar: bool) {
        let on = |l| self.policy.labels.contains(&l);
        let Ok(mut guard) = self.inner.lock() else { return };
        let table = &mut *guard;
        let source = match &r.source {
            Some(s) if on(Label::Source) => Some(self.bounded(table, Label::Source, &s.workload, s.clone(), self.other.clone())),
            _ => None,
        };
        let (destination_service, destination) = if on(Label::Destination) {
            let service = self.bounded(table, Label::Destination, &r.destination_service, r.destination_service.clone(), self.other.service.clone());
            let workload = if &*service == OTHER { Some(self.other.clone()) } else { r.destination.clone() };
            (service, workload)
        } else {
            (Arc::from(""), None)
        };
        let route = match &r.route {
            Some(route) if on(Label::Route) => Some(self.bounded(table, Label::Route, route, route.clone(), self.other.service.clone())),
            _ => None,
        };
        let key = RequestKey {
            side: r.side,
            source,
            destination_service,
            destination,
            status: if on(Label::StatusCode) { r.status } else { 0 },
            grpc_status: r.grpc_status.filter(|_| on(Label::StatusCode)),
            method: on(Label::Method).then(|| method_label(r.method.as_ref())),
            route,
            grpc: r.grpc,
            outcome: r.classification.outcome,
            flags: if on(Label::ResponseFlags) { r.flags } else { ResponseFlags::empty() },
            version: r.described_version(),
            scheme: r.origin.scheme,
            error_type: r.error_type().filter(|_| on(Label::StatusCode)).map(|e| Arc::from(&*e)),
            port: r.server_port().filter(|_| r.side == Side::Outbound && on(Label::Destination)),
        };
        let seconds = r.duration.as_secs_f64();
        let bucket = DURATION_BOUNDS.partition_point(|b| *b < seconds);
        let stats = table.series.entry(key).or_default();
        stats.count += 1;
        stats.duration_sum += seconds;
        stats.buckets[bucket] += 1;
        if exemplar {
            let slots = stats.exemplars.get_or_insert_with(|| Box::new([None; DURATION_BOUNDS.len() + 1]));
            slots[bucket] = Some(Exemplar {
                trace_id: r.context.trace_id.0,
                span_id: r.context.span_id.0,
                seconds,
                time_unix_nanos: r.start_unix_nanos + r.duration.as_nanos() as u64,
            });
        }
        stats.request_size.observe(r.request_bytes, &SIZE_BOUNDS);
        stats.response_size.observe(r.response_bytes, &SIZE_BOUNDS);
        if let Some((sent, received)) = r.grpc_messages {
            let messages = stats.messages.get_or_insert_with(Box::default);
            messages[0].observe(sent, &MESSAGE_BOUNDS);
            messages[1].observe(received, &MESSAGE_BOUNDS);
        }
    }

    /// How many series the table holds.
    pub fn series_count(&self) -> usize {
        self.inner.lock().map_or(0, |t| t.series.len())
    }

    /// A copy of every series, without exemplars (the admin `/metrics`).
    pub fn snapshot(&self) -> Vec<(RequestKey, RequestStats)> {
        self.copies(false)
    }

    /// A copy of every series with the exemplars gathered since the last export, which
    /// start again empty: each export shows the requests of its own interval.
    pub fn snapshot_for_export(&self) -> Vec<(RequestKey, RequestStats)> {
        self.copies(true)
    }

    /// Every series copied without its exemplars, which the copy takes when `take_exemplars`
    /// and the series keeps otherwise.
    fn copies(&self, take_exemplars: bool) -> Vec<(RequestKey, RequestStats)> {
        let Ok(mut table) = self.inner.lock() else { return Vec::new() };
        table
            .series
            .iter_mut()
            .map(|(key, stats)| {
                let exemplars = stats.exemplars.take();
                let mut copy = stats.clone();
                if take_exemplars {
                    copy.exemplars = exemplars;
                } else {
                    stats.exemplars = exemplars;
                }
                (key.clone(), copy)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::record;

    fn table(labels: &[Label], max_values: usize) -> (RequestMetrics, TelemetryStats) {
        let stats = TelemetryStats::default();
        let policy = LabelPolicy { labels: labels.iter().copied().collect(), max_values };
        (RequestMetrics::new(policy, stats.clone()), stats)
    }

    #[test]
    fn ten_thousand_paths_make_one_series() {
        let (m, _) = table(&Label::ALL, 200);
        for i in 0..10_000 {
            let mut r = record(true, Outcome::Success, 1);
            r.path = format!("/users/{i}");
            m.observe(&r, false);
        }
        let snapshot = m.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].1.count, 10_000);
    }

    #[test]
    fn duration_buckets_keep_the_last_kept_span_as_exemplar_until_the_export_takes_it() {
        let (m, _) = table(&Label::ALL, 200);
        let (fast, slow) = (record(true, Outcome::Success, 2), record(true, Outcome::Success, 700));
        let unkept = record(false, Outcome::Success, 3);
        for (r, kept) in [(&fast, true), (&slow, true), (&unkept, false)] {
            m.observe(r, kept);
        }
        assert!(m.snapshot()[0].1.exemplars.is_none(), "the admin /metrics gets none");
        let exported = m.snapshot_for_export();
        let slots = exported[0].1.exemplars.as_deref().expect("exemplars");
        let bucket = |seconds: f64| DURATION_BOUNDS.partition_point(|b| *b < seconds);
        let at = |r: &RequestRecord| slots[bucket(r.duration.as_secs_f64())];
        assert_eq!(at(&fast).map(|e| (e.trace_id, e.span_id)), Some((fast.context.trace_id.0, fast.context.span_id.0)));
        assert_eq!(at(&slow).map(|e| e.seconds), Some(0.7));
        assert_eq!(slots.iter().flatten().count(), 2, "the request whose span was not kept stands for nothing");
        assert!(m.snapshot_for_export()[0].1.exemplars.is_none(), "each export has its own interval's");
        assert_eq!(m.snapshot()[0].1.count, 3, "counts go on");
    }

    #[test]
    fn labels_past_their_limit_fold_into_other_and_are_counted() {
        let (m, stats) = table(&Label::ALL, 5);
        for i in 0..50 {
            let mut r = record(true, Outcome::Success, 1);
            r.route = Some(format!("/route{i}/{{id}}").into());
            m.observe(&r, false);
        }
        let snapshot = m.snapshot();
        assert_eq!(snapshot.len(), 6, "five routes and `other`");
        let other = snapshot.iter().find(|(k, _)| k.route.as_deref() == Some(OTHER)).expect("other");
        assert_eq!(other.1.count, 45);
        assert_eq!(stats.label_overflow_count("route"), 45);
    }

    #[test]
    fn labels_that_are_off_are_not_carried() {
        let (m, _) = table(&[Label::Destination], 200);
        for status in [200, 404, 503] {
            let mut r = record(true, Outcome::Success, 1);
            r.status = status;
            r.method = Some(http::Method::POST);
            m.observe(&r, false);
        }
        let snapshot = m.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!((snapshot[0].0.status, snapshot[0].0.method), (0, None));
    }
}
