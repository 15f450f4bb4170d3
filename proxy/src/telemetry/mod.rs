//! What the sidecar observes, and how it leaves the request path.
//!
//! The observe layer hands one [`RequestRecord`] per finished exchange to
//! [`Telemetry::record`], which updates the in-process request metrics and encodes the
//! record into two bounded sets of export batches (spans, access logs, [`batch`]) without
//! ever waiting. Background tasks ([`export`]) send the batches with OTLP/gRPC; when the
//! batches are full the record is dropped and counted, so the request never pays for a
//! slow or absent collector.

pub mod access_log;
pub mod batch;
pub mod export;
mod export_tls;
pub mod export_headers;
pub mod headers;
pub mod metrics;
pub mod otel_env;
pub mod otlp;
pub(crate) mod otlp_http;
pub mod prometheus;
pub mod resource;
pub mod stats;
pub mod tap;
pub mod temporality;
pub mod text;
pub mod unread;
pub mod wire;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::{
    classify::{Classification, Outcome, ResponseFlags},
    config::{Sampling, TelemetryConfig},
    identity::WorkloadIdentity,
    trace_context::{Formats, SpanContext},
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

    /// 0 inbound, 1 outbound: a position in per-side arrays.
    pub fn index(self) -> usize {
        usize::from(self == Self::Outbound)
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
    /// Time from the request's arrival to its body's last byte, when it arrived whole.
    pub request_duration: Option<Duration>,
    /// Time from the request's arrival to the upstream's response headers; none for a
    /// response the sidecar made itself.
    pub response_duration: Option<Duration>,
    /// Request method; none for a request head never read ([`unread`]).
    pub method: Option<http::Method>,
    /// Request path (no query); empty when the request had none (a head never read, or
    /// `CONNECT`'s authority form).
    pub path: String,
    /// The query string, if any, with the values OpenTelemetry lists as secrets replaced
    /// ([`recorded_query`]).
    pub query: Option<String>,
    /// The route template the path matched (`http.route`).
    pub route: Option<Arc<str>>,
    /// The authority the caller addressed (`server.address`).
    pub authority: Option<Arc<str>>,
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
    /// A gRPC call's request and response messages, when they were counted
    /// ([`crate::grpc_messages`]).
    pub grpc_messages: Option<(u64, u64)>,
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
    /// The sidecar's own address on the downstream connection.
    pub local: Option<SocketAddr>,
    /// The downstream connection's ID ([`crate::stack::ConnectionAddrs::id`]).
    pub connection_id: Option<u64>,
    /// The sidecar's own address on the upstream connection that answered.
    pub upstream_local: Option<SocketAddr>,
    /// That connection's ID ([`crate::stack::UpstreamConnection::id`]).
    pub upstream_connection_id: Option<u64>,
    /// Inbound records: what the caller's proxies say of the original request
    /// (`client.address`, `url.scheme`); [`Origin::PLAIN`] on outbound ones.
    pub origin: Origin,
    /// What the sidecar itself saw going wrong.
    pub flags: ResponseFlags,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` when the code that answered says it itself (a head
    /// never read, [`unread`]); otherwise the access log derives them from the flags.
    pub code_details: Option<&'static str>,
    /// The verdict of the classifier.
    pub classification: Classification,
    /// The `user-agent` header.
    pub user_agent: Option<String>,
    /// The `x-request-id` header.
    pub request_id: Option<String>,
    /// The W3C `tracestate` of the trace context continued (the span's `trace_state`).
    pub trace_state: Option<String>,
    /// What happened along the way (failures the sidecar saw, retries).
    pub events: Vec<SpanEvent>,
    /// Retries the sidecar made (attempts beyond the first).
    pub retries: u32,
    /// Set on the record of one attempt of a request the retry layer handled: the
    /// attempt's number. Such a record is a CLIENT span only (the request's metrics and
    /// access log come from its own record).
    pub attempt: Option<u32>,
    /// The headers the stdout access log's format prints and those kept as attributes, when
    /// any is named ([`headers`]).
    pub headers: Option<Box<headers::CapturedHeaders>>,
}

/// Something that happened during an exchange, recorded as a span event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanEvent {
    /// When, relative to the start of the exchange.
    pub offset: Duration,
    /// Event name (`upstream_connect_failure`, `upstream_reset`, `stream_error`, `downstream_terminated`, `upgraded`, …).
    pub name: &'static str,
    /// Details, if any.
    pub message: Option<String>,
}

/// `1.1`, `2`, ... as OpenTelemetry's `network.protocol.version` writes `version`.
pub fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Query keys whose values are secrets (signed-URL signatures and keys), replaced by
/// `REDACTED` as OpenTelemetry's URL conventions say.
const SECRET_QUERY_KEYS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

/// A request's query as its record keeps it (`url.query`, part of `url.full`): `None` when
/// it has none, else the query with the values of `SECRET_QUERY_KEYS` redacted.
pub fn recorded_query(uri: &http::Uri) -> Option<String> {
    let query = uri.query()?;
    let secret = |pair: &str| SECRET_QUERY_KEYS.contains(&pair.split_once('=').map_or(pair, |(k, _)| k));
    if !query.split('&').any(secret) {
        return Some(query.to_owned());
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if secret(pair) => format!("{key}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    Some(pairs.join("&"))
}

/// What a request's proxies say of the original request, as OpenTelemetry's HTTP server
/// conventions want it behind them: `client.address` and `url.scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The original client, when a proxy names it by its IP address.
    pub client: Option<IpAddr>,
    /// `https` when a proxy says the original request was, else `http`.
    pub scheme: &'static str,
}

impl Origin {
    /// A request no proxy speaks for (every outbound one).
    pub const PLAIN: Self = Self { client: None, scheme: "http" };

    /// Reads the first element of `Forwarded` (RFC 7239) once, for its `for=` and `proto=`;
    /// where it names neither, the first entry of `X-Forwarded-For` and of
    /// `X-Forwarded-Proto`. Only an IP address counts as a client (with its port or IPv6
    /// brackets taken off: `unknown`, obfuscated names and anything else leave the record to
    /// its network peer), and only `https` (any case) changes the scheme.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let (mut client, mut proto) = (None, None);
        for (key, value) in first_entry(headers, http::header::FORWARDED)
            .into_iter()
            .flat_map(|element| element.split(';'))
            .filter_map(|pair| pair.split_once('='))
        {
            let value = value.trim().trim_matches('"');
            match key.trim() {
                k if k.eq_ignore_ascii_case("for") && client.is_none() => client = node_ip(value),
                k if k.eq_ignore_ascii_case("proto") && proto.is_none() => proto = Some(value),
                _ => {}
            }
        }
        let client = client.or_else(|| first_entry(headers, X_FORWARDED_FOR).and_then(node_ip));
        let https = proto.or_else(|| first_entry(headers, X_FORWARDED_PROTO)).is_some_and(|p| p.eq_ignore_ascii_case("https"));
        Self { client, scheme: if https { "https" } else { "http" } }
    }
}

const X_FORWARDED_FOR: http::header::HeaderName = http::header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::header::HeaderName = http::header::HeaderName::from_static("x-forwarded-proto");

/// The first comma-separated entry of a header's first value, trimmed.
fn first_entry(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    headers.get(name)?.to_str().ok()?.split(',').next().map(str::trim)
}

/// The IP address of a proxy header's node: `192.0.2.60`, `192.0.2.60:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn node_ip(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The method as OpenTelemetry's HTTP conventions write `http.request.method`: the methods
/// of RFC 9110 and PATCH as they are, anything else `None` (written `_OTHER`, with the
/// method itself in `http.request.method_original`).
pub fn known_method(method: &http::Method) -> Option<&'static str> {
    Some(match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => return None,
    })
}

impl RequestRecord {
    /// The record of an exchange on `side` begun at `start_unix_nanos` (since the Unix
    /// epoch): of its request only `method` and where it goes are known yet, of its answer
    /// nothing. The layers fill in the rest as the exchange goes.
    pub fn new(
        side: Side,
        context: SpanContext,
        start_unix_nanos: u64,
        method: Option<http::Method>,
        destination_service: Arc<str>,
    ) -> Self {
        Self {
            side,
            context,
            start_unix_nanos,
            duration: Duration::ZERO,
            request_duration: None,
            response_duration: None,
            method,
            path: String::new(),
            query: None,
            route: None,
            authority: None,
            authority_port: None,
            version: http::Version::HTTP_11,
            grpc: false,
            status: 0,
            grpc_status: None,
            request_bytes: 0,
            response_bytes: 0,
            grpc_messages: None,
            source: None,
            destination_service,
            destination: None,
            upstream: None,
            peer: None,
            local: None,
            connection_id: None,
            upstream_local: None,
            upstream_connection_id: None,
            origin: Origin::PLAIN,
            flags: ResponseFlags::empty(),
            code_details: None,
            classification: Classification { outcome: Outcome::Success, error_type: None },
            user_agent: None,
            request_id: None,
            trace_state: None,
            events: Vec::new(),
            retries: 0,
            attempt: None,
            headers: None,
        }
    }

    /// OpenTelemetry's `error.type`: the classifier's (a 5xx status, a gRPC status name, the
    /// failure kind), and on the client side a 4xx status too, which the HTTP conventions
    /// count as a client's error.
    pub fn error_type(&self) -> Option<std::borrow::Cow<'_, str>> {
        match &self.classification.error_type {
            Some(error) => Some(std::borrow::Cow::Borrowed(error.as_str())),
            None if self.side == Side::Outbound && (400..500).contains(&self.status) => Some(self.status.to_string().into()),
            None => None,
        }
    }

    /// OpenTelemetry's `server.port`: the port the caller addressed, else the scheme's (80);
    /// `None` when no authority was addressed.
    pub fn server_port(&self) -> Option<u16> {
        self.authority.as_ref().map(|_| self.authority_port.unwrap_or(80))
    }

    /// The caller's HTTP version (`1.0`, `1.1`, `2`), as access logs write their protocol
    /// (Envoy's `%PROTOCOL%` is the downstream one).
    pub fn protocol_version(&self) -> &'static str {
        protocol_version(self.version)
    }

    /// The HTTP version of the connection the record's span describes: an inbound (SERVER)
    /// record's caller's, an outbound (CLIENT) record's upstream's, where HTTP/1.0 goes on
    /// in the sidecar's own HTTP/1.1.
    pub fn described_version(&self) -> http::Version {
        match self.side {
            Side::Inbound => self.version,
            Side::Outbound => self.upstream_version(),
        }
    }

    /// The HTTP version the request went upstream in: HTTP/2 stays HTTP/2, and the sidecar
    /// speaks HTTP/1.1 for the rest.
    pub fn upstream_version(&self) -> http::Version {
        match self.version {
            http::Version::HTTP_2 => http::Version::HTTP_2,
            _ => http::Version::HTTP_11,
        }
    }

    /// `grpc` or `http`.
    pub fn protocol(&self) -> &'static str {
        if self.grpc { "grpc" } else { "http" }
    }
}

/// One signal's bounded export batches: full means dropped, and counted.
#[derive(Debug, Clone)]
struct Queue {
    batches: Arc<batch::Batches>,
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
    sampling: Sampling,
    propagation: Formats,
    metrics: RequestMetrics,
    stats: TelemetryStats,
    spans: Option<Queue>,
    logs: Option<Queue>,
    /// Whether metric points carry exemplars: spans and metrics are both exported.
    exemplars: bool,
    stdout: Option<access_log::StdoutAccessLog>,
    /// The headers records keep: those the stdout access log prints and those kept as
    /// attributes.
    kept_headers: Option<Arc<headers::HeaderNames>>,
    /// The requests-in-flight gauges, inbound and outbound.
    active: [prometheus_client::metrics::gauge::Gauge; 2],
    /// The request counters, by side (inbound, outbound) and outcome (success, failure).
    requests: [[prometheus_client::metrics::counter::Counter; 2]; 2],
    /// Set when the sidecar closes what is still open as it stops.
    shutting_down: std::sync::atomic::AtomicBool,
    /// The open taps' feed (the admin `/tap`).
    tap: tap::Tap,
}

impl Telemetry {
    /// Creates the recorder and, when an OTLP endpoint is configured, its export tasks.
    /// `own_process`: the sidecar is its process's one, whose CPU and memory its metrics
    /// export reports.
    pub fn start(
        identity: Arc<WorkloadIdentity>,
        config: &TelemetryConfig,
        own_process: bool,
    ) -> Result<(Self, ExportHandle), crate::error::StartError> {
        let stats = TelemetryStats::default();
        let metrics = RequestMetrics::new(config.labels.clone(), stats.clone());
        let (spans, logs, handle, exemplars) = match export::spawn(config, identity.clone(), metrics.clone(), stats.clone(), own_process)? {
            Some(started) => (
                started.spans.map(|batches| Queue { batches, signal: "spans" }),
                started.logs.map(|batches| Queue { batches, signal: "logs" }),
                started.handle,
                started.metrics,
            ),
            None => (None, None, ExportHandle::disabled(), false),
        };
        // An exemplar names an exported span on an exported metric point.
        let exemplars = exemplars && spans.is_some();
        let filter = &config.stdout_access_log_filter;
        let start = |format| access_log::StdoutAccessLog::start(format, filter.clone(), config.queue_capacity);
        let stdout = config.stdout_access_log.clone().map(start);
        let printed = config.stdout_access_log.as_ref().and_then(access_log::AccessLogFormat::header_names);
        let kept = printed.map(|names| (*names).clone()).unwrap_or_default();
        let kept = kept.with_attributes(&config.capture_request_headers, &config.capture_response_headers);
        let kept_headers = (!kept.is_empty()).then(|| Arc::new(kept));
        let active = [Side::Inbound, Side::Outbound].map(|side| stats.active(side));
        let requests = [Side::Inbound, Side::Outbound].map(|side| [Outcome::Success, Outcome::Failure].map(|o| stats.requests(side, o)));
        let inner = Inner {
            stdout,
            kept_headers,
            active,
            requests,
            identity,
            sampling: config.sampling,
            propagation: config.propagation,
            metrics,
            stats,
            spans,
            logs,
            exemplars,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            tap: tap::Tap::default(),
        };
        Ok((Self { inner: Arc::new(inner) }, handle))
    }

    /// The workload this recorder speaks for.
    pub fn identity(&self) -> &Arc<WorkloadIdentity> {
        &self.inner.identity
    }

    /// The request metrics table.
    pub fn metrics(&self) -> &RequestMetrics {
        &self.inner.metrics
    }

    /// Which spans are kept.
    pub fn sampling(&self) -> Sampling {
        self.inner.sampling
    }

    /// What a record keeps of a request's `headers`, for the stdout access log and as
    /// attributes: nothing when no header is named.
    pub fn keep_request_headers(&self, headers: &http::HeaderMap) -> Option<Box<headers::CapturedHeaders>> {
        self.inner.kept_headers.as_ref().map(|names| Box::new(names.capture_request(headers)))
    }

    /// Counts a request arriving on `side` as in flight until the returned guard drops.
    pub fn active(&self, side: Side) -> stats::ActiveRequest {
        stats::ActiveRequest::start(&self.inner.active[side.index()])
    }

    /// The trace-context formats to emit.
    pub fn propagation(&self) -> Formats {
        self.inner.propagation
    }

    /// Whether a finished exchange's span is kept: its trace is sampled, or it failed, or
    /// it was slow (tail decisions, so errors and outliers are never lost to sampling).
    pub fn keeps_span(&self, record: &RequestRecord) -> bool {
        let s = &self.inner.sampling;
        record.context.sampled
            || (s.keep_errors && record.classification.outcome == Outcome::Failure)
            || s.slow_threshold.is_some_and(|t| record.duration >= t)
    }

    /// Notes that the sidecar is closing what is still open as it stops: an exchange dropped
    /// from now on is the sidecar's doing, not its caller's.
    pub fn shutting_down(&self) {
        self.inner.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Telemetry::shutting_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The recorder's own counters (for the admin `/metrics`).
    pub fn stats(&self) -> &TelemetryStats {
        &self.inner.stats
    }

    /// Records one finished exchange. Never blocks: full batches drop and count.
    pub fn record(&self, record: RequestRecord) {
        let inner = &*self.inner;
        if record.attempt.is_some() {
            if self.keeps_span(&record) {
                self.offer(inner.spans.as_ref(), &record);
            }
            return;
        }
        // A request whose span is exported may stand for its duration bucket (an exemplar).
        let keeps_span = self.keeps_span(&record);
        inner.metrics.observe(&record, keeps_span && inner.exemplars);
        inner.requests[record.side.index()][usize::from(record.classification.outcome == Outcome::Failure)].inc();
        if let Some(stdout) = &inner.stdout {
            stdout.write(&record, &inner.stats);
        }
        if keeps_span {
            self.offer(inner.spans.as_ref(), &record);
        }
        self.offer(inner.logs.as_ref(), &record);
        if inner.tap.listening() {
            inner.tap.offer(record);
        }
    }

    /// The open taps' feed (the admin `/tap`).
    pub fn tap(&self) -> &tap::Tap {
        &self.inner.tap
    }

    fn offer(&self, queue: Option<&Queue>, record: &RequestRecord) {
        let Some(queue) = queue else { return };
        if !queue.batches.offer(record) {
            self.inner.stats.dropped(queue.signal, "queue_full", 1);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        classify::Outcome,
        config::Sampling,
        trace_context::{SpanId, TraceId},
    };

    fn header_map(headers: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(http::header::HeaderName::from_bytes(name.as_bytes()).expect("name"), value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn the_original_client_is_the_first_ip_its_proxies_name() {
        let client = |headers: &[(&str, &str)]| Origin::of(&header_map(headers)).client.map(|ip| ip.to_string());
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(client(&[]), None);
        assert_eq!(client(&[("x-forwarded-for", "203.0.113.195, 70.41.3.18")]), some("203.0.113.195"));
        assert_eq!(client(&[("x-forwarded-for", " 2001:db8::1 ")]), some("2001:db8::1"));
        assert_eq!(client(&[("x-forwarded-for", "203.0.113.195:4711")]), some("203.0.113.195"));
        assert_eq!(client(&[("x-forwarded-for", "[2001:db8::1]:4711, 10.0.0.1")]), some("2001:db8::1"));
        // `Forwarded` first, its first element's `for`, quoted or not, in any case.
        let both = [("forwarded", "proto=http; For=\"[2001:db8:cafe::17]:4711\", for=192.0.2.43"), ("x-forwarded-for", "198.51.100.1")];
        assert_eq!(client(&both), some("2001:db8:cafe::17"));
        assert_eq!(client(&[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")]), some("192.0.2.60"));
        // A node that is not an IP address does not count; the other header still may.
        assert_eq!(client(&[("forwarded", "for=unknown"), ("x-forwarded-for", "198.51.100.1")]), some("198.51.100.1"));
        assert_eq!(client(&[("forwarded", "for=_hidden")]), None);
        assert_eq!(client(&[("x-forwarded-for", "<script>alert(1)</script>")]), None);
        assert_eq!(client(&[("x-forwarded-for", "")]), None);
    }

    #[test]
    fn the_original_scheme_is_the_one_its_proxies_name_when_it_is_https() {
        let scheme = |headers: &[(&str, &str)]| Origin::of(&header_map(headers)).scheme;
        assert_eq!(scheme(&[]), "http");
        assert_eq!(scheme(&[("x-forwarded-proto", "https")]), "https");
        assert_eq!(scheme(&[("x-forwarded-proto", "HTTPS, http")]), "https");
        assert_eq!(scheme(&[("forwarded", "for=192.0.2.60;proto=\"https\", proto=http")]), "https");
        assert_eq!(scheme(&[("forwarded", "for=192.0.2.60"), ("x-forwarded-proto", "https")]), "https");
        assert_eq!(scheme(&[("forwarded", "proto=http"), ("x-forwarded-proto", "https")]), "http", "Forwarded first");
        assert_eq!(scheme(&[("x-forwarded-proto", "gopher")]), "http", "only http and https");
    }

    /// A finished outbound exchange for tests.
    pub(crate) fn record(sampled: bool, outcome: Outcome, duration_ms: u64) -> RequestRecord {
        let context = SpanContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            sampled,
            emit: Formats::W3C,
            w3c_parent: false,
            debug: false,
            random: true,
        };
        RequestRecord {
            duration: Duration::from_millis(duration_ms),
            path: "/".into(),
            status: if outcome == Outcome::Failure { 503 } else { 200 },
            classification: Classification { outcome, error_type: None },
            ..RequestRecord::new(Side::Outbound, context, 1, Some(http::Method::GET), "svc".into())
        }
    }

    /// A recorder that exports nothing.
    pub(crate) fn telemetry() -> Telemetry {
        recorder(Sampling { ratio: 1.0, keep_errors: true, slow_threshold: None })
    }

    fn recorder(sampling: Sampling) -> Telemetry {
        let config = TelemetryConfig { otlp_endpoint: None, sampling, ..TelemetryConfig::default() };
        let identity = Arc::new(WorkloadIdentity::new("ns", "svc", "svc-v1", "v1"));
        Telemetry::start(identity, &config, false).map(|(t, _)| t).expect("no export")
    }

    #[test]
    fn requests_are_counted_by_side_and_outcome_and_in_flight_until_done() {
        let t = telemetry();
        let mut inbound = record(true, Outcome::Success, 1);
        inbound.side = Side::Inbound;
        t.record(inbound);
        t.record(record(true, Outcome::Failure, 1));
        t.record(record(true, Outcome::Failure, 1));
        let mut retried = record(true, Outcome::Failure, 1);
        retried.attempt = Some(1);
        t.record(retried);
        let in_flight = t.active(Side::Outbound);
        let mut registry = prometheus_client::registry::Registry::default();
        t.stats().register(&mut registry);
        let text = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
            out
        };
        let exposed = text();
        for line in [
            "meshlens_proxy_requests_total{direction=\"inbound\",classification=\"success\"} 1",
            "meshlens_proxy_requests_total{direction=\"outbound\",classification=\"failure\"} 2",
            "meshlens_proxy_requests_total{direction=\"outbound\",classification=\"success\"} 0",
            "meshlens_proxy_active_requests{direction=\"outbound\"} 1",
            "meshlens_proxy_active_requests{direction=\"inbound\"} 0",
        ] {
            assert!(exposed.lines().any(|l| l == line), "{line} in\n{exposed}");
        }
        drop(in_flight);
        assert!(text().lines().any(|l| l == "meshlens_proxy_active_requests{direction=\"outbound\"} 0"), "counted out");
    }

    #[test]
    fn unsampled_spans_are_kept_only_when_they_fail_or_are_slow() {
        let t = recorder(Sampling { ratio: 0.0, keep_errors: true, slow_threshold: Some(Duration::from_millis(500)) });
        assert!(!t.keeps_span(&record(false, Outcome::Success, 10)));
        assert!(t.keeps_span(&record(false, Outcome::Failure, 10)), "errors are always kept");
        assert!(t.keeps_span(&record(false, Outcome::Success, 700)), "slow requests are always kept");
        assert!(t.keeps_span(&record(true, Outcome::Success, 10)), "sampled traces are kept");
        let strict = recorder(Sampling { ratio: 0.0, keep_errors: false, slow_threshold: None });
        assert!(!strict.keeps_span(&record(false, Outcome::Failure, 10_000)));
    }
}
