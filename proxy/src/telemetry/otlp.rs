//! Conversion of the sidecar's records into OTLP messages.
//!
//! Spans and access logs carry OpenTelemetry's HTTP semantic-convention attributes
//! plus the mesh attributes of the other side of the hop (`meshlens.destination.*` on
//! outbound records, `meshlens.source.*` on inbound ones); the resource names the
//! sidecar's own workload. Metrics are cumulative histograms and sums, labelled with both.

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Exemplar, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, exemplar, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

use meshlens_common::semconv;

use crate::{classify::Outcome, identity::WorkloadIdentity};

use super::{
    RequestRecord, Side,
    text,
    metrics::{HISTOGRAMS, RequestKey, RequestStats},
    resource::ResourceAttributes,
};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

/// One string attribute.
pub fn string_kv(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// Attribute list builder.
#[derive(Default)]
pub struct Attributes(pub Vec<KeyValue>);

impl Attributes {
    /// Adds a string attribute.
    pub fn str(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.push(key, Value::StringValue(value.into()))
    }
    /// Adds an integer attribute.
    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        self.push(key, Value::IntValue(value))
    }
    fn push(&mut self, key: &str, value: Value) -> &mut Self {
        self.0.push(kv(key, value));
        self
    }
    /// Adds the four mesh attributes of a workload under `keys` (source or destination).
    pub fn workload(&mut self, keys: &semconv::WorkloadKeys, id: &WorkloadIdentity) -> &mut Self {
        workload_attributes(self, keys, id);
        self
    }
}

/// The instrumentation scope of the sidecar's spans and logs.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "meshlens-proxy".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The resource of every message a sidecar sends: its workload's, then the `extra`
/// attributes of its deployment.
pub fn resource(id: &WorkloadIdentity, extra: &ResourceAttributes) -> Resource {
    let mut attrs = Attributes::default();
    attrs
        .workload(&semconv::RESOURCE_KEYS, id)
        .str("telemetry.sdk.name", "meshlens-proxy")
        .str("telemetry.sdk.language", "rust")
        .str("telemetry.sdk.version", env!("CARGO_PKG_VERSION"));
    for (key, value) in extra.iter() {
        attrs.str(key, value);
    }
    Resource { attributes: attrs.0, ..Default::default() }
}

/// Where attributes are written: prost `KeyValue`s ([`Attributes`]) or protobuf bytes
/// directly ([`super::wire`]), from one description of a record's attributes.
pub trait AttributeSink {
    /// A string attribute.
    fn string(&mut self, key: &str, value: &str);
    /// An integer attribute.
    fn integer(&mut self, key: &str, value: i64);
    /// A string array attribute, of header `values` (bytes that are not UTF-8 replaced).
    fn header_values(&mut self, key: &str, values: &[http::HeaderValue]);
}

impl AttributeSink for Attributes {
    fn string(&mut self, key: &str, value: &str) {
        self.str(key, value);
    }
    fn integer(&mut self, key: &str, value: i64) {
        self.int(key, value);
    }
    fn header_values(&mut self, key: &str, values: &[http::HeaderValue]) {
        let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        let values = values.iter().map(|v| AnyValue { value: Some(Value::StringValue(text(v))) });
        self.push(key, Value::ArrayValue(ArrayValue { values: values.collect() }));
    }
}

/// Writes the four mesh attributes of a workload under `keys` (source, destination or
/// resource), to whichever sink.
fn workload_attributes(a: &mut impl AttributeSink, keys: &semconv::WorkloadKeys, id: &WorkloadIdentity) {
    a.string(keys.namespace, &id.namespace);
    a.string(keys.service, &id.service);
    a.string(keys.workload, &id.workload);
    a.string(keys.version, &id.version);
}

/// `text` cut to at most `limit` bytes (at a character boundary), or whole without a limit.
fn at_most(text: &str, limit: Option<usize>) -> &str {
    match limit {
        Some(limit) if text.len() > limit => {
            let end = (0..=limit).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            &text[..end]
        }
        _ => text,
    }
}

/// Writes the attributes shared by a record's span and access log; `scratch` holds the
/// values that must be formatted. `url_limit` cuts `url.path` and `url.query` (Istio's
/// `max_path_tag_length` for spans; access logs keep them whole).
pub fn write_record_attributes(r: &RequestRecord, a: &mut impl AttributeSink, scratch: &mut String, url_limit: Option<usize>) {
    match r.method.as_ref().map(|method| (method, super::known_method(method))) {
        Some((_, Some(known))) => a.string("http.request.method", known),
        Some((method, None)) => {
            a.string("http.request.method", "_OTHER");
            a.string("http.request.method_original", method.as_str());
        }
        // A head never read ([`super::unread`]): its method is not known.
        None => a.string("http.request.method", "_OTHER"),
    }
    if !r.path.is_empty() {
        a.string("url.path", at_most(&r.path, url_limit));
    }
    if let Some(query) = &r.query {
        a.string("url.query", at_most(query, url_limit));
    }
    a.string("url.scheme", r.origin.scheme);
    // None when no response was sent (the caller went away before it).
    if r.status != 0 {
        a.integer("http.response.status_code", i64::from(r.status));
    }
    // `network.protocol.name` is left out: OpenTelemetry's HTTP conventions want it only when
    // it is not `http`, and a sidecar's records are all HTTP (gRPC says `rpc.system`).
    a.string("network.protocol.version", super::protocol_version(r.described_version()));
    a.integer("http.request.body.size", r.request_bytes as i64);
    a.integer("http.response.body.size", r.response_bytes as i64);
    a.string(semconv::DIRECTION, r.side.as_str());
    a.string(semconv::PROTOCOL, r.protocol());
    scratch.clear();
    r.flags.push_to(scratch);
    a.string(semconv::RESPONSE_FLAGS, scratch);
    a.string(semconv::CLASSIFICATION, r.classification.outcome.as_str());
    if r.destination.is_none() {
        a.string(semconv::DESTINATION_KEYS.service, &r.destination_service);
    }
    if let Some(host) = &r.authority {
        a.string("server.address", host);
    }
    if let Some(port) = r.server_port() {
        a.integer("server.port", i64::from(port));
    }
    if let Some(route) = &r.route {
        a.string("http.route", route);
    }
    // The peer of the connection the record describes: a SERVER span's is its client (the
    // downstream caller), a CLIENT span's its server (the endpoint the request went to), as
    // OpenTelemetry's conventions have it. So an outbound record's upstream is already
    // there; an inbound one names the application it was forwarded to apart.
    let peer = match r.side {
        Side::Inbound => r.peer,
        Side::Outbound => r.upstream,
    };
    if let Some(peer) = peer {
        scratch.clear();
        text::push_ip(scratch, peer.ip());
        a.string("network.peer.address", scratch);
        a.integer("network.peer.port", i64::from(peer.port()));
    }
    // A SERVER span's original client: the one its proxies name, else its peer.
    if let Some(client) = r.origin.client.or_else(|| r.peer.map(|p| p.ip())).filter(|_| r.side == Side::Inbound) {
        scratch.clear();
        text::push_ip(scratch, client);
        a.string("client.address", scratch);
    }
    if let (Side::Inbound, Some(upstream)) = (r.side, r.upstream) {
        scratch.clear();
        text::push_socket_addr(scratch, upstream);
        a.string(semconv::UPSTREAM_ADDRESS, scratch);
    }
    if r.grpc {
        a.string("rpc.system", "grpc");
        // `/package.Service/Method`: the RPC conventions' service and method.
        if let Some((service, method)) = r.path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            a.string("rpc.service", service);
            a.string("rpc.method", method);
        }
        if let Some(code) = r.grpc_status {
            a.integer("rpc.grpc.status_code", i64::from(code));
        }
        // A retried attempt's answer is not read: it received none.
        if let Some((sent, received)) = r.grpc_messages {
            a.integer(semconv::GRPC_REQUEST_MESSAGES, sent as i64);
            a.integer(semconv::GRPC_RESPONSE_MESSAGES, received as i64);
        }
    }
    if let Some(error) = r.error_type() {
        a.string("error.type", &error);
    }
    if let Some(ua) = &r.user_agent {
        a.string("user_agent.original", ua.as_str());
    }
    if let Some(id) = &r.request_id {
        a.string(semconv::REQUEST_ID, id.as_str());
    }
    if r.retries > 0 {
        a.integer(semconv::RETRY_COUNT, i64::from(r.retries));
    }
    if let Some(attempt) = r.attempt {
        a.integer(semconv::RETRY_ATTEMPT, i64::from(attempt));
        if attempt > 1 {
            a.integer("http.request.resend_count", i64::from(attempt - 1));
        }
    }
    if let Some(headers) = &r.headers {
        for (key, values) in headers.attributes() {
            a.header_values(key, values);
        }
    }
    // The sidecar's own workload (the source of an outbound record, the destination of an
    // inbound one) is the resource's; only the other side is written.
    match r.side {
        Side::Inbound => {
            if let Some(source) = &r.source {
                workload_attributes(a, &semconv::SOURCE_KEYS, source);
            }
        }
        Side::Outbound => {
            if let Some(dest) = &r.destination {
                workload_attributes(a, &semconv::DESTINATION_KEYS, dest);
            }
        }
    }
}

/// Writes the attributes of a record's span: [`write_record_attributes`], and on a CLIENT
/// span the `url.full` OpenTelemetry's conventions require there (the access-log record
/// has the path and query in its body line already). `url_limit` cuts the URL attributes,
/// `url.full` included.
pub fn write_span_attributes(r: &RequestRecord, a: &mut impl AttributeSink, scratch: &mut String, url_limit: Option<usize>) {
    write_record_attributes(r, a, scratch, url_limit);
    if let (Side::Outbound, Some(host)) = (r.side, &r.authority) {
        scratch.clear();
        write_url_full(r, host, scratch);
        a.string("url.full", at_most(scratch, url_limit));
    }
}

/// Writes `url.full` of an outbound request: `http://`, the authority the application
/// addressed, the path and the (redacted) query.
fn write_url_full(r: &RequestRecord, host: &str, out: &mut String) {
    out.push_str("http://");
    out.push_str(host);
    if let Some(port) = r.authority_port {
        out.push(':');
        text::push_uint(out, u64::from(port));
    }
    out.push_str(&r.path);
    if let Some(query) = &r.query {
        out.push('?');
        out.push_str(query);
    }
}

/// A span's OTLP `flags`: its W3C trace flags in the low byte, and whether its parent is
/// remote (`0x100`: said; `0x200`: remote). A sidecar's request span continues its caller's
/// span, in another process; an attempt's CLIENT span is the child of the sidecar's own
/// span for the request; a span that starts its trace has no parent.
pub fn span_flags(r: &RequestRecord) -> u32 {
    let remote_parent = r.context.parent_span_id.is_some() && r.attempt.is_none();
    u32::from(r.context.trace_flags()) | 0x100 | if remote_parent { 0x200 } else { 0 }
}

/// Whether a record's span has error status: failures, and 4xx on the client side
/// (OpenTelemetry's HTTP conventions).
pub fn span_failed(r: &RequestRecord) -> bool {
    r.classification.outcome == Outcome::Failure || (r.side == Side::Outbound && (400..500).contains(&r.status))
}

/// The span's status message when it failed.
pub fn status_message(r: &RequestRecord) -> String {
    r.classification.error_type.clone().unwrap_or_else(|| r.status.to_string())
}

/// Writes the span name: the gRPC method for gRPC calls, else `{method} {http.route}`, or
/// the method alone when no route template matched, `HTTP` standing for a method outside
/// the known ones (OpenTelemetry's HTTP conventions).
pub fn write_span_name(r: &RequestRecord, out: &mut String) {
    if r.grpc {
        out.push_str(r.path.trim_start_matches('/'));
        return;
    }
    out.push_str(r.method.as_ref().and_then(super::known_method).unwrap_or("HTTP"));
    if let Some(route) = &r.route {
        out.push(' ');
        out.push_str(route);
    }
}

/// Writes the Envoy-style access-log line used as a log record's body.
pub fn write_access_log_line(r: &RequestRecord, out: &mut String) {
    out.push_str(r.method.as_ref().map_or("-", http::Method::as_str));
    out.push(' ');
    out.push_str(if r.path.is_empty() { "-" } else { r.path.as_str() });
    out.push_str(" HTTP/");
    out.push_str(r.protocol_version());
    out.push(' ');
    text::push_uint(out, u64::from(r.status));
    out.push(' ');
    r.flags.push_to(out);
    for n in [r.request_bytes, r.response_bytes, r.duration.as_millis() as u64] {
        out.push(' ');
        text::push_uint(out, n);
    }
    out.push_str("ms ");
    match r.upstream {
        Some(u) => text::push_socket_addr(out, u),
        None => out.push('-'),
    }
    out.push(' ');
    meshlens_common::hex::push(&r.context.trace_id.0, out);
}

/// The attributes of a request-metrics series.
pub(crate) fn key_attributes(k: &RequestKey) -> Vec<KeyValue> {
    let mut a = Attributes::default();
    if k.status != 0 {
        a.int("http.response.status_code", i64::from(k.status));
    }
    if let Some(method) = k.method {
        a.str("http.request.method", method);
    }
    if let Some(route) = &k.route {
        a.str("http.route", &**route);
    }
    a.str("url.scheme", k.scheme).str("network.protocol.version", super::protocol_version(k.version));
    if let Some(error) = &k.error_type {
        a.str("error.type", &**error);
    }
    if k.side == Side::Outbound && !k.destination_service.is_empty() {
        // What the application addressed: the client metrics' `server.address` and port.
        a.str("server.address", &*k.destination_service);
        if let Some(port) = k.port {
            a.int("server.port", i64::from(port));
        }
    }
    a.str(semconv::DIRECTION, k.side.as_str())
        .str(semconv::PROTOCOL, if k.grpc { "grpc" } else { "http" })
        .str(semconv::CLASSIFICATION, k.outcome.as_str())
        .str(semconv::RESPONSE_FLAGS, k.flags.to_string())
        ;
    // The destination's identity names its service; without one, the service addressed.
    if !k.destination_service.is_empty() && k.destination.is_none() {
        a.str(semconv::DESTINATION_KEYS.service, &*k.destination_service);
    }
    if let Some(code) = k.grpc_status {
        a.int("rpc.grpc.status_code", i64::from(code));
    }
    if let Some(source) = &k.source {
        a.workload(&semconv::SOURCE_KEYS, source);
    }
    if let Some(dest) = &k.destination {
        a.workload(&semconv::DESTINATION_KEYS, dest);
    }
    a.0
}

/// Cumulative TCP counters of one set of connections: a listener side
/// (`meshlens.direction` inbound/outbound) or the connections to one upstream workload
/// (`meshlens.direction` upstream, with the destination's identity).
#[derive(Debug, Clone)]
pub struct TcpCounters {
    /// The point's attributes.
    pub attributes: Vec<KeyValue>,
    /// Connections opened.
    pub opened: u64,
    /// Connections closed.
    pub closed: u64,
    /// Bytes read.
    pub received: u64,
    /// Bytes written.
    pub sent: u64,
}

impl TcpCounters {
    /// The counters of one listener side.
    pub fn listener(side: Side, m: &crate::connection::ConnectionMeter) -> Self {
        Self::of(vec![string_kv(semconv::DIRECTION, side.as_str())], m)
    }

    /// The counters of the connections to one upstream workload.
    pub fn upstream(destination: &WorkloadIdentity, m: &crate::connection::ConnectionMeter) -> Self {
        let k = &semconv::DESTINATION_KEYS;
        Self::of(
            vec![
                string_kv(semconv::DIRECTION, "upstream"),
                string_kv(k.namespace, &*destination.namespace),
                string_kv(k.service, &*destination.service),
                string_kv(k.workload, &*destination.workload),
                string_kv(k.version, &*destination.version),
            ],
            m,
        )
    }

    fn of(attributes: Vec<KeyValue>, m: &crate::connection::ConnectionMeter) -> Self {
        Self { attributes, opened: m.opened.get(), closed: m.closed.get(), received: m.received.get(), sent: m.sent.get() }
    }
}

/// Cumulative TCP counters of the listeners and upstreams.
pub type TcpSnapshot = [TcpCounters];

/// A duration bucket's exemplar as OTLP has it: the request's trace and span, its duration
/// in seconds, when it ended.
fn exemplar(e: &super::metrics::Exemplar) -> Exemplar {
    Exemplar {
        time_unix_nano: e.time_unix_nanos,
        value: Some(exemplar::Value::AsDouble(e.seconds)),
        span_id: e.span_id.to_vec(),
        trace_id: e.trace_id.to_vec(),
        ..Default::default()
    }
}

/// A metrics export request from a cumulative snapshot.
pub fn metrics_request(
    resource: &Resource,
    start_unix_nanos: u64,
    now_unix_nanos: u64,
    snapshot: &[(RequestKey, RequestStats)],
    tcp: &TcpSnapshot,
    active: &[(Side, i64)],
    process: Option<&meshlens_common::process::Reading>,
) -> ExportMetricsServiceRequest {
    let cumulative = AggregationTemporality::Cumulative as i32;
    // Each series' attributes once, for every histogram of its side.
    let attributed: Vec<(Side, Vec<KeyValue>, &RequestStats)> =
        snapshot.iter().map(|(key, stats)| (key.side, key_attributes(key), stats)).collect();
    // A family no series has (a side with no requests yet, messages per call without a gRPC
    // call) is left out.
    let histograms = HISTOGRAMS.iter().filter_map(|family| {
        let points: Vec<HistogramDataPoint> = attributed
            .iter()
            .filter(|(side, _, _)| *side == family.side)
            .filter_map(|(_, attributes, stats)| {
                let view = (family.view)(stats)?;
                Some(HistogramDataPoint {
                    attributes: attributes.clone(),
                    start_time_unix_nano: start_unix_nanos,
                    time_unix_nano: now_unix_nanos,
                    count: view.buckets.iter().sum(),
                    sum: Some(view.sum),
                    bucket_counts: view.buckets.to_vec(),
                    explicit_bounds: view.bounds.to_vec(),
                    exemplars: view.exemplars.map(|slots| slots.iter().flatten().map(exemplar).collect()).unwrap_or_default(),
                    ..Default::default()
                })
            })
            .collect();
        (!points.is_empty()).then(|| Metric {
            name: family.name.into(),
            description: family.description.into(),
            unit: family.unit.into(),
            data: Some(Data::Histogram(Histogram { data_points: points, aggregation_temporality: cumulative })),
            ..Default::default()
        })
    });
    let sum = |name: &str, description: &str, points| Metric {
        name: name.into(),
        description: description.into(),
        unit: "By".into(),
        data: Some(Data::Sum(Sum { data_points: points, aggregation_temporality: cumulative, is_monotonic: true })),
        ..Default::default()
    };
    let tcp_points = |pick: fn(&TcpCounters) -> u64| -> Vec<NumberDataPoint> {
        tcp.iter()
            .map(|t| NumberDataPoint {
                attributes: t.attributes.clone(),
                start_time_unix_nano: start_unix_nanos,
                time_unix_nano: now_unix_nanos,
                value: Some(number_data_point::Value::AsInt(pick(t) as i64)),
                ..Default::default()
            })
            .collect()
    };
    let connections = |name: &str, description: &str, points| Metric { unit: "{connection}".into(), ..sum(name, description, points) };
    // An up-down counter: OpenTelemetry's non-monotonic cumulative sum.
    let in_flight = active
        .iter()
        .map(|(side, n)| NumberDataPoint {
            attributes: vec![string_kv(semconv::DIRECTION, side.as_str())],
            start_time_unix_nano: start_unix_nanos,
            time_unix_nano: now_unix_nanos,
            value: Some(number_data_point::Value::AsInt(*n)),
            ..Default::default()
        })
        .collect();
    let active_requests = Metric {
        name: "meshlens.proxy.active_requests".into(),
        description: "Requests in flight".into(),
        unit: "{request}".into(),
        data: Some(Data::Sum(Sum { data_points: in_flight, aggregation_temporality: cumulative, is_monotonic: false })),
        ..Default::default()
    };
    let mut metrics: Vec<Metric> = histograms.collect();
    metrics.extend([
        connections("meshlens.proxy.tcp.connections.opened", "TCP connections opened", tcp_points(|t| t.opened)),
        connections("meshlens.proxy.tcp.connections.closed", "TCP connections closed", tcp_points(|t| t.closed)),
        sum("meshlens.proxy.tcp.received", "Bytes received from peers", tcp_points(|t| t.received)),
        sum("meshlens.proxy.tcp.sent", "Bytes sent to peers", tcp_points(|t| t.sent)),
        active_requests,
    ]);
    metrics.extend(process.map(|reading| process_metrics(reading, now_unix_nanos)).into_iter().flatten());
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// The process's own figures under OpenTelemetry's process metric names, as an SDK's process
/// instrumentation reports them: `process.cpu.time` by `cpu.mode` (`user`, `system`) since
/// the process started, and the up-down counters `process.memory.usage` (resident),
/// `process.memory.virtual`, `process.thread.count` and `process.unix.file_descriptor.count`.
/// A figure that could not be read is left out.
fn process_metrics(r: &meshlens_common::process::Reading, now_unix_nanos: u64) -> Vec<Metric> {
    let start = r.start_time_seconds.map_or(0, |seconds| (seconds * 1e9) as u64);
    let point = |attributes, value| NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now_unix_nanos,
        value: Some(value),
        ..Default::default()
    };
    let sum = |name: &str, description: &str, unit: &str, is_monotonic, data_points: Vec<NumberDataPoint>| {
        let aggregation_temporality = AggregationTemporality::Cumulative as i32;
        (!data_points.is_empty()).then(|| Metric {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            data: Some(Data::Sum(Sum { data_points, aggregation_temporality, is_monotonic })),
            ..Default::default()
        })
    };
    let cpu = [("user", r.cpu_user_seconds), ("system", r.cpu_system_seconds)]
        .into_iter()
        .filter_map(|(mode, seconds)| Some(point(vec![string_kv("cpu.mode", mode)], number_data_point::Value::AsDouble(seconds?))))
        .collect();
    let count = |value: Option<u64>| -> Vec<NumberDataPoint> {
        let value = value.and_then(|v| i64::try_from(v).ok());
        value.map(|v| point(Vec::new(), number_data_point::Value::AsInt(v))).into_iter().collect()
    };
    [
        sum("process.cpu.time", "CPU time, by mode", "s", true, cpu),
        sum("process.memory.usage", "Resident memory", "By", false, count(r.resident_bytes)),
        sum("process.memory.virtual", "Virtual memory", "By", false, count(r.virtual_bytes)),
        sum("process.thread.count", "Operating system threads", "{thread}", false, count(r.threads)),
        sum("process.unix.file_descriptor.count", "Open file descriptors", "{file_descriptor}", false, count(r.open_fds)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The same span and log messages built as prost structs: the reference `wire`'s bytes are
/// checked against.
#[cfg(test)]
pub(crate) mod reference {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::{
        collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
        common::v1::{AnyValue, KeyValue, any_value::Value},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, span::SpanKind, status::StatusCode},
    };

    use meshlens_common::semconv;

    use super::*;
    use crate::classify::Outcome;

    /// The attributes shared by a record's span and access log, as `KeyValue`s.
    pub(crate) fn record_attributes(r: &RequestRecord) -> Vec<KeyValue> {
        let mut a = Attributes::default();
        write_record_attributes(r, &mut a, &mut String::new(), None);
        a.0
    }

    /// The attributes of a record's span, as `KeyValue`s.
    pub(crate) fn span_attributes(r: &RequestRecord) -> Vec<KeyValue> {
        let mut a = Attributes::default();
        write_span_attributes(r, &mut a, &mut String::new(), None);
        a.0
    }

    /// One record as an OTLP span.
    pub(crate) fn span(r: &RequestRecord) -> Span {
        let kind = match r.side {
            Side::Inbound => SpanKind::Server,
            Side::Outbound => SpanKind::Client,
        };
        // Server spans do not mark 4xx as errors; client spans do (OpenTelemetry HTTP conventions).
        let status = if span_failed(r) {
            Status { code: StatusCode::Error as i32, message: status_message(r) }
        } else {
            Status::default()
        };
        Span {
            trace_id: r.context.trace_id.0.to_vec(),
            span_id: r.context.span_id.0.to_vec(),
            parent_span_id: r.context.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
            trace_state: r.trace_state.clone().unwrap_or_default(),
            flags: span_flags(r),
            name: { let mut n = String::new(); write_span_name(r, &mut n); n },
            kind: kind as i32,
            start_time_unix_nano: r.start_unix_nanos,
            end_time_unix_nano: r.start_unix_nanos + r.duration.as_nanos() as u64,
            attributes: span_attributes(r),
            events: r
                .events
                .iter()
                .map(|e| span::Event {
                    time_unix_nano: r.start_unix_nanos + e.offset.as_nanos() as u64,
                    name: e.name.into(),
                    attributes: e.message.iter().map(|m| string_kv("exception.message", m.as_str())).collect(),
                    ..Default::default()
                })
                .collect(),
            status: Some(status),
            ..Default::default()
        }
    }

    /// The Envoy-style access-log line used as a log record's body.
    pub(crate) fn access_log_line(r: &RequestRecord) -> String {
        let mut line = String::new();
        write_access_log_line(r, &mut line);
        line
    }

    /// One record as an OTLP access-log record.
    pub(crate) fn log_record(r: &RequestRecord) -> LogRecord {
        let severity = match r.classification.outcome {
            Outcome::Success => SeverityNumber::Info,
            Outcome::Failure => SeverityNumber::Warn,
        };
        let end = r.start_unix_nanos + r.duration.as_nanos() as u64;
        LogRecord {
            time_unix_nano: r.start_unix_nanos,
            observed_time_unix_nano: end,
            severity_number: severity as i32,
            severity_text: if severity == SeverityNumber::Info { "INFO" } else { "WARN" }.into(),
            body: Some(AnyValue { value: Some(Value::StringValue(access_log_line(r))) }),
            attributes: {
                let mut attrs = record_attributes(r);
                attrs.push(string_kv("event.name", semconv::ACCESS_LOG_EVENT));
                attrs.push(kv(semconv::DURATION_NS, Value::IntValue(r.duration.as_nanos() as i64)));
                attrs
            },
            flags: u32::from(r.context.trace_flags()),
            trace_id: r.context.trace_id.0.to_vec(),
            span_id: r.context.span_id.0.to_vec(),
            ..Default::default()
        }
    }

    /// A trace export request for a batch.
    pub(crate) fn trace_request(resource: &Resource, batch: &[Arc<RequestRecord>]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: batch.iter().map(|r| span(r)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A logs export request for a batch.
    pub(crate) fn logs_request(resource: &Resource, batch: &[Arc<RequestRecord>]) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: batch.iter().map(|r| log_record(r)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::classify::ResponseFlags;

    #[test]
    fn access_log_line_has_envoy_style_fields_in_order() {
        let mut r = super::super::tests::record(true, Outcome::Failure, 1234);
        r.method = Some(http::Method::POST);
        r.path = "/orders/7?x=1".into();
        r.version = http::Version::HTTP_2;
        r.request_bytes = 17;
        r.response_bytes = 0;
        r.duration = Duration::from_micros(1_234_900);
        r.upstream = Some("10.1.200.3:8080".parse().expect("address"));
        r.flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE | ResponseFlags::UPSTREAM_TIMEOUT;
        let trace = meshlens_common::hex::Hex::<32>::new(&r.context.trace_id.0);
        let mut line = String::new();
        write_access_log_line(&r, &mut line);
        assert_eq!(line, format!("POST /orders/7?x=1 HTTP/2 503 {} 17 0 1234ms 10.1.200.3:8080 {}", r.flags, trace.as_str()));
        assert!(line.contains(" UF,"), "{line}");

        r.upstream = None;
        r.flags = ResponseFlags::empty();
        r.status = 200;
        line.clear();
        write_access_log_line(&r, &mut line);
        assert_eq!(line, format!("POST /orders/7?x=1 HTTP/2 200 - 17 0 1234ms - {}", trace.as_str()));
    }

    #[test]
    fn span_flags_carry_the_trace_flags_and_say_whose_parent_is_remote() {
        let mut r = super::super::tests::record(true, Outcome::Success, 1);
        assert_eq!(span_flags(&r), 0x103, "a trace the sidecar started: sampled, random, no parent");
        r.context.parent_span_id = Some(crate::trace_context::SpanId::random());
        r.context.random = false;
        assert_eq!(span_flags(&r), 0x301, "a caller's span is in another process");
        r.attempt = Some(2);
        r.context.sampled = false;
        assert_eq!(span_flags(&r), 0x100, "an attempt's parent is the sidecar's own span");
        assert_eq!(reference::log_record(&r).flags, 0, "a log record carries only the trace flags");
    }

    #[test]
    fn spans_cut_their_url_attributes_and_access_logs_keep_them_whole() {
        let mut r = super::super::tests::record(true, Outcome::Success, 1);
        r.side = Side::Outbound;
        r.authority = Some("reviews".into());
        // 300 bytes of path, the last ones two-byte characters; a 300-byte query.
        r.path = format!("/{}{}", "a".repeat(250), "é".repeat(25));
        r.query = Some("q".repeat(300));
        let strings = |a: Attributes| -> Vec<(String, String)> {
            a.0.into_iter()
                .filter_map(|kv| match kv.value.and_then(|v| v.value) {
                    Some(Value::StringValue(s)) if kv.key.starts_with("url.") && kv.key != "url.scheme" => Some((kv.key, s)),
                    _ => None,
                })
                .collect()
        };
        let mut span = Attributes::default();
        write_span_attributes(&r, &mut span, &mut String::new(), Some(256));
        let span = strings(span);
        assert_eq!(span.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["url.path", "url.query", "url.full"]);
        for (key, value) in &span {
            assert!(value.len() <= 256 && value.len() >= 255, "{key}: {} bytes", value.len());
        }
        assert!(span[0].1.ends_with('é') && r.path.starts_with(span[0].1.as_str()), "cut at a character boundary");
        assert!(span[2].1.starts_with("http://reviews/aaa"));
        let mut log = Attributes::default();
        write_record_attributes(&r, &mut log, &mut String::new(), None);
        let log = strings(log);
        assert_eq!((log[0].1.as_str(), log[1].1.len()), (r.path.as_str(), 300), "access logs keep them whole");
    }

    #[test]
    fn records_name_the_other_side_of_the_hop_and_leave_their_own_to_the_resource() {
        let own = Arc::new(WorkloadIdentity::new("shop", "checkout", "checkout-v2", "v2"));
        let peer = Arc::new(WorkloadIdentity::new("shop", "payments", "payments-v1", "v1"));
        let keys = |r: &RequestRecord| {
            let mut a = Attributes::default();
            write_record_attributes(r, &mut a, &mut String::new(), None);
            a.0.into_iter()
                .filter(|kv| kv.key.starts_with("meshlens.source.") || kv.key.starts_with("meshlens.destination."))
                .map(|kv| kv.key)
                .collect::<Vec<_>>()
        };
        let mut outbound = super::super::tests::record(true, Outcome::Success, 1);
        outbound.side = Side::Outbound;
        outbound.source = Some(own.clone());
        outbound.destination = Some(peer.clone());
        let outbound_keys = keys(&outbound);
        let mut inbound = outbound;
        inbound.side = Side::Inbound;
        inbound.source = Some(peer);
        inbound.destination = Some(own);
        assert_eq!(
            (outbound_keys, keys(&inbound)),
            (
                ["namespace", "service", "workload", "version"].map(|k| format!("meshlens.destination.{k}")).to_vec(),
                ["namespace", "service", "workload", "version"].map(|k| format!("meshlens.source.{k}")).to_vec(),
            )
        );
    }

    #[test]
    fn records_follow_the_http_conventions_for_methods_urls_ports_and_resends() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
        let attributes = |r: &RequestRecord| -> Vec<(String, String)> {
            let mut a = Attributes::default();
            write_span_attributes(r, &mut a, &mut String::new(), None);
            a.0.into_iter()
                .map(|kv| match kv.value.and_then(|v| v.value) {
                    Some(V::StringValue(s)) => (kv.key, s),
                    Some(V::IntValue(i)) => (kv.key, i.to_string()),
                    other => (kv.key, format!("{other:?}")),
                })
                .collect()
        };
        let get = |a: &[(String, String)], key: &str| a.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());

        let mut r = super::super::tests::record(true, Outcome::Success, 1);
        r.method = Some(http::Method::from_bytes(b"PURGE").expect("method"));
        r.path = "/items/7".into();
        r.query = crate::telemetry::recorded_query(&"/items/7?a=1&sig=abc&X-Goog-Signature=z&signature=kept".parse().expect("uri"));
        r.authority = Some("reviews.shop".into());
        r.authority_port = None;
        r.attempt = Some(3);
        r.route = Some("/items/{id}".into());
        let mut name = String::new();
        write_span_name(&r, &mut name);
        assert_eq!(name, "HTTP /items/{id}", "an unknown method's span is named `HTTP`");
        let out = attributes(&r);
        let query = "a=1&sig=REDACTED&X-Goog-Signature=REDACTED&signature=kept";
        for (key, value) in [
            ("http.request.method", "_OTHER"),
            ("http.request.method_original", "PURGE"),
            ("url.path", "/items/7"),
            ("url.query", query),
            ("url.full", &format!("http://reviews.shop/items/7?{query}")),
            ("server.address", "reviews.shop"),
            ("server.port", "80"),
            ("http.request.resend_count", "2"),
        ] {
            assert_eq!(get(&out, key).as_deref(), Some(value), "{key} in {out:?}");
        }

        // A known method as it is; the port addressed; no query, no resend on a first attempt;
        // `url.full` is a client span's attribute only.
        r.method = Some(http::Method::GET);
        r.query = None;
        r.authority_port = Some(9080);
        r.attempt = Some(1);
        let out = attributes(&r);
        assert_eq!(get(&out, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(get(&out, "url.full").as_deref(), Some("http://reviews.shop:9080/items/7"));
        assert_eq!(get(&out, "server.port").as_deref(), Some("9080"));
        for absent in ["http.request.method_original", "url.query", "http.request.resend_count"] {
            assert_eq!(get(&out, absent), None, "{absent}");
        }
        assert_eq!(get(&out, "rpc.service"), None, "not a gRPC call");
        r.grpc = true;
        r.path = "/shop.Inventory/Check".into();
        let out = attributes(&r);
        assert_eq!((get(&out, "rpc.service").as_deref(), get(&out, "rpc.method").as_deref()), (Some("shop.Inventory"), Some("Check")));
        r.grpc = false;
        r.side = Side::Inbound;
        assert_eq!(get(&attributes(&r), "url.full"), None);
        r.side = Side::Outbound;
        assert!(super::reference::record_attributes(&r).iter().all(|kv| kv.key != "url.full"), "not on access logs");
        assert_eq!(crate::telemetry::recorded_query(&"/x".parse().expect("uri")), None);

        // A CLIENT span's network peer is the endpoint it called; a SERVER span's is its caller,
        // and the application the request went on to is named apart.
        r.peer = Some(([10, 0, 0, 7], 41_000).into());
        r.upstream = Some(([10, 0, 0, 9], 9080).into());
        // `client.address` is a SERVER span's: the client its proxies name, else its peer.
        let peers = |r: &RequestRecord| {
            let out = attributes(r);
            ["network.peer.address", "network.peer.port", semconv::UPSTREAM_ADDRESS, "client.address"].map(|key| get(&out, key))
        };
        let some = |s: &str| Some(s.to_owned());
        r.origin.client = Some([203, 0, 113, 9].into());
        assert_eq!(peers(&r), [some("10.0.0.9"), some("9080"), None, None], "outbound");
        r.side = Side::Inbound;
        assert_eq!(peers(&r), [some("10.0.0.7"), some("41000"), some("10.0.0.9:9080"), some("203.0.113.9")], "inbound");
        r.origin.client = None;
        assert_eq!(peers(&r)[3], some("10.0.0.7"), "no proxy named a client: the peer");
        r.origin.scheme = "https";
        assert_eq!(get(&attributes(&r), "url.scheme").as_deref(), Some("https"), "the scheme its proxies named");

        // An HTTP/1.0 caller: its SERVER span says so, a CLIENT span names the HTTP/1.1 the
        // request went on in; the access-log line keeps the caller's, as Envoy's `%PROTOCOL%`.
        r.version = http::Version::HTTP_10;
        let versions = |r: &RequestRecord| {
            let mut line = String::new();
            write_access_log_line(r, &mut line);
            (get(&attributes(r), "network.protocol.version"), line.split(' ').nth(2).map(str::to_owned))
        };
        assert_eq!(versions(&r), (some("1.0"), some("HTTP/1.0")), "inbound");
        r.side = Side::Outbound;
        assert_eq!(versions(&r), (some("1.1"), some("HTTP/1.0")), "outbound");
    }

    #[test]
    fn the_process_figures_go_under_opentelemetrys_process_metric_names() {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let reading = meshlens_common::process::Reading {
            cpu_user_seconds: Some(1.5),
            cpu_system_seconds: Some(0.25),
            resident_bytes: Some(14_000_000),
            threads: Some(3),
            start_time_seconds: Some(1_700_000_000.0),
            ..Default::default()
        };
        let resource = resource(&WorkloadIdentity::new("shop", "catalog", "catalog-v1", "v1"), &ResourceAttributes::default());
        let request = metrics_request(&resource, 0, 1_800_000_000_000_000_000, &[], &[], &[], Some(&reading));
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let sum = |name: &str| {
            let metric = metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name}"));
            let Some(Data::Sum(sum)) = &metric.data else { panic!("{name} is a sum") };
            (metric.unit.clone(), sum.is_monotonic, sum.data_points.clone())
        };
        let (unit, monotonic, cpu) = sum("process.cpu.time");
        assert_eq!((unit.as_str(), monotonic), ("s", true));
        let modes: Vec<(String, Option<number_data_point::Value>)> =
            cpu.iter().map(|p| (format!("{:?}", p.attributes[0].value), p.value)).collect();
        assert!(modes[0].0.contains("user") && modes[1].0.contains("system"), "{modes:?}");
        let seconds = |s| Some(number_data_point::Value::AsDouble(s));
        assert_eq!((modes[0].1, modes[1].1), (seconds(1.5), seconds(0.25)));
        assert_eq!(cpu[0].start_time_unix_nano, 1_700_000_000_000_000_000, "counted from the process's start");
        let (unit, monotonic, memory) = sum("process.memory.usage");
        assert_eq!((unit.as_str(), monotonic, memory[0].value), ("By", false, Some(number_data_point::Value::AsInt(14_000_000))));
        assert_eq!(sum("process.thread.count").2[0].value, Some(number_data_point::Value::AsInt(3)));
        for unread in ["process.memory.virtual", "process.unix.file_descriptor.count"] {
            assert!(metrics.iter().all(|m| m.name != unread), "{unread}: not read, left out");
        }
        let without = metrics_request(&resource, 0, 1, &[], &[], &[], None);
        assert!(without.resource_metrics[0].scope_metrics[0].metrics.iter().all(|m| !m.name.starts_with("process.")));
    }

    #[test]
    fn request_metrics_carry_the_http_conventions_attributes() {
        use opentelemetry_proto::tonic::{common::v1::any_value::Value as V, metrics::v1::metric::Data};
        use crate::telemetry::{metrics::{LabelPolicy, RequestMetrics}, stats::TelemetryStats};
        let metrics = RequestMetrics::new(LabelPolicy::default(), TelemetryStats::default());
        let mut client = super::super::tests::record(true, Outcome::Success, 1);
        client.status = 404;
        client.authority = Some("reviews".into());
        client.authority_port = None;
        client.destination_service = "reviews".into();
        client.request_bytes = 0;
        client.response_bytes = 2_500;
        // Sent upstream in HTTP/1.1, as the attributes say.
        client.version = http::Version::HTTP_10;
        metrics.observe(&client, true);
        let mut server = super::super::tests::record(true, Outcome::Success, 1);
        server.side = Side::Inbound;
        server.version = http::Version::HTTP_2;
        metrics.observe(&server, false);

        let resource = resource(&WorkloadIdentity::new("shop", "catalog", "catalog-v1", "v1"), &ResourceAttributes::default());
        let active = [(Side::Inbound, 0), (Side::Outbound, 2)];
        let request = metrics_request(&resource, 0, 1, &metrics.snapshot_for_export(), &[], &active, None);
        // The client's duration bucket links to its span (its span was kept), nothing else does.
        let exemplars = |name: &str| {
            let metric = request.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == name).expect("metric");
            let Some(Data::Histogram(h)) = &metric.data else { panic!("{name} is a histogram") };
            h.data_points[0].exemplars.clone()
        };
        let linked = exemplars("http.client.request.duration");
        assert_eq!(linked.len(), 1, "{linked:?}");
        assert_eq!((&linked[0].trace_id[..], &linked[0].span_id[..]), (&client.context.trace_id.0[..], &client.context.span_id.0[..]));
        assert_eq!(linked[0].value, Some(exemplar::Value::AsDouble(0.001)));
        assert!(exemplars("http.server.request.duration").is_empty() && exemplars("http.client.response.body.size").is_empty());
        let point = |name: &str| -> Vec<(String, String)> {
            let metric = request.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == name).expect("metric");
            let Some(Data::Histogram(h)) = &metric.data else { panic!("{name} is a histogram") };
            h.data_points[0]
                .attributes
                .iter()
                .map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(V::StringValue(s)) => (kv.key.clone(), s.clone()),
                    Some(V::IntValue(i)) => (kv.key.clone(), i.to_string()),
                    other => (kv.key.clone(), format!("{other:?}")),
                })
                .collect()
        };
        let has = |attributes: &[(String, String)], key: &str, value: &str| attributes.iter().any(|(k, v)| k == key && v == value);
        let client = point("http.client.request.duration");
        for (key, value) in [
            ("http.request.method", "GET"),
            ("url.scheme", "http"),
            ("network.protocol.version", "1.1"),
            ("server.address", "reviews"),
            ("server.port", "80"),
            ("http.response.status_code", "404"),
            ("error.type", "404"),
        ] {
            assert!(has(&client, key, value), "{key}={value} in {client:?}");
        }
        let server = point("http.server.request.duration");
        assert!(has(&server, "url.scheme", "http") && has(&server, "network.protocol.version", "2"), "{server:?}");
        assert!(server.iter().all(|(k, _)| k != "server.address" && k != "error.type"), "{server:?}");
        // Body sizes: histograms with OpenTelemetry's names and the same attributes, in
        // Istio's buckets (powers of ten).
        let sizes = |name: &str| {
            let metric = request.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == name).expect("metric");
            let Some(Data::Histogram(h)) = &metric.data else { panic!("{name} is a histogram") };
            assert_eq!(metric.unit, "By");
            let p = &h.data_points[0];
            (p.count, p.sum, p.bucket_counts.clone(), p.explicit_bounds.len())
        };
        let buckets = |i: usize| (0..10).map(|b| u64::from(b == i)).collect::<Vec<u64>>();
        assert_eq!(sizes("http.client.request.body.size"), (1, Some(0.0), buckets(0), 9), "an empty body: the first bucket");
        assert_eq!(sizes("http.client.response.body.size"), (1, Some(2_500.0), buckets(4), 9), "(1,000, 10,000]");
        assert_eq!(point("http.client.response.body.size"), client, "the duration's attributes");
        assert_eq!(sizes("http.server.request.body.size").0, 1);
        let active = request.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == "meshlens.proxy.active_requests");
        let Some(Data::Sum(active)) = active.and_then(|m| m.data.as_ref()) else { panic!("requests in flight: {active:?}") };
        assert!(!active.is_monotonic, "an up-down counter");
        let values: Vec<_> = active.data_points.iter().map(|p| p.value).collect();
        assert_eq!(values, [0, 2].map(|n| Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(n))));
        let names: Vec<&str> = request.resource_metrics[0].scope_metrics[0].metrics.iter().map(|m| m.name.as_str()).collect();
        assert!(names.iter().all(|n| !n.starts_with("rpc.")), "no gRPC call, no messages per call: {names:?}");
    }

    #[test]
    fn grpc_calls_count_their_messages_per_call() {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        use crate::telemetry::{metrics::{LabelPolicy, RequestMetrics}, stats::TelemetryStats};
        let metrics = RequestMetrics::new(LabelPolicy::default(), TelemetryStats::default());
        let mut call = super::super::tests::record(true, Outcome::Success, 1);
        call.grpc = true;
        call.path = "/shop.Feed/Watch".into();
        call.grpc_messages = Some((1, 40));
        metrics.observe(&call, false);
        call.grpc_messages = Some((1, 1));
        metrics.observe(&call, false);
        let mut http = super::super::tests::record(true, Outcome::Success, 1);
        http.side = Side::Inbound;
        metrics.observe(&http, false);

        let resource = resource(&WorkloadIdentity::new("shop", "catalog", "catalog-v1", "v1"), &ResourceAttributes::default());
        let request = metrics_request(&resource, 0, 1, &metrics.snapshot(), &[], &[], None);
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let per_call = |name: &str| {
            let metric = metrics.iter().find(|m| m.name == name)?;
            let Some(Data::Histogram(h)) = &metric.data else { panic!("{name} is a histogram") };
            assert_eq!(metric.unit, "{count}");
            let p = &h.data_points[0];
            Some((h.data_points.len(), p.count, p.sum, p.bucket_counts.clone()))
        };
        let bucket = |counts: &[(usize, u64)]| {
            (0..12).map(|b| counts.iter().find(|(i, _)| *i == b).map_or(0, |(_, n)| *n)).collect::<Vec<_>>()
        };
        assert_eq!(per_call("rpc.client.requests_per_rpc"), Some((1, 2, Some(2.0), bucket(&[(1, 2)]))), "one message each");
        assert_eq!(per_call("rpc.client.responses_per_rpc"), Some((1, 2, Some(41.0), bucket(&[(1, 1), (6, 1)]))), "(25, 50]");
        assert_eq!(per_call("rpc.server.requests_per_rpc"), None, "the inbound series is not of gRPC calls");
        let attributes = reference::record_attributes(&call);
        let messages = attributes.iter().filter(|kv| kv.key.starts_with("meshlens.grpc.")).count();
        assert_eq!(messages, 2, "on the call's span and access log: {attributes:?}");
        call.attempt = Some(1);
        call.grpc_messages = None;
        let attributes = reference::record_attributes(&call);
        assert!(attributes.iter().all(|kv| !kv.key.starts_with("meshlens.grpc.")), "none counted, none said");
    }
}
