//! OTLP to the collector's own types: where protobuf stops.
//!
//! Every item is validated on its own; an invalid span (bad IDs, missing or reversed
//! timestamps) is rejected and counted while the valid items of the same batch are kept,
//! which is what OTLP's partial-success response reports back to the sender.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{AggregationTemporality, metric::Data, number_data_point},
    resource::v1::Resource as OtlpResource,
    trace::v1::{Span as OtlpSpan, status},
};

use super::own_side::Completer;
use crate::model::{
    Attributes, LogRecord, MetricKind, MetricPoint, Resource, Span, SpanEvent, SpanId, SpanKind,
    SpanLink, StatusCode, TraceId, Value,
};

/// Longest attribute string kept; longer values are cut at a character boundary.
pub const MAX_VALUE_LEN: usize = 8 * 1024;

/// Items converted from one export request, and what was rejected.
#[derive(Debug)]
pub struct Converted<T> {
    /// The valid items.
    pub items: Vec<T>,
    /// How many items were rejected.
    pub rejected: u64,
    /// The first few rejection reasons, for the partial-success message.
    pub reasons: Vec<String>,
    /// Attribute values cut to [`MAX_VALUE_LEN`].
    pub truncated: u64,
}

impl<T> Converted<T> {
    pub(super) fn new() -> Self {
        TRUNCATED.set(0);
        Self { items: Vec::new(), rejected: 0, reasons: Vec::new(), truncated: 0 }
    }

    /// Takes the count of values cut while converting this request.
    pub(super) fn finish(mut self) -> Self {
        self.truncated = TRUNCATED.replace(0);
        self
    }

    pub(super) fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < 5 {
            self.reasons.push(reason);
        }
    }

    /// The partial-success message: empty when everything was accepted.
    pub fn message(&self) -> String {
        if self.rejected == 0 {
            return String::new();
        }
        format!("{} item(s) rejected: {}", self.rejected, self.reasons.join("; "))
    }
}

thread_local! {
    /// Values cut during the conversion running on this thread (one request at a time).
    static TRUNCATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn truncate(mut s: String) -> String {
    let kept = truncated(&s).len();
    s.truncate(kept);
    s
}

/// `s` cut to [`MAX_VALUE_LEN`] at a character boundary (and counted when cut).
#[inline]
pub(super) fn truncated(s: &str) -> &str {
    if s.len() <= MAX_VALUE_LEN {
        return s;
    }
    TRUNCATED.set(TRUNCATED.get() + 1);
    char_prefix(s, MAX_VALUE_LEN)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn char_prefix(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Runs `f` without counting the values it cuts.
pub(super) fn uncounted<T>(f: impl FnOnce() -> T) -> T {
    let before = TRUNCATED.get();
    let out = f();
    TRUNCATED.set(before);
    out
}

/// A string attribute value.
pub(super) fn string_value(s: &str) -> Value {
    Value::Str(truncated(s).into())
}

/// A bytes attribute value.
pub(super) fn bytes_value(b: &[u8]) -> Value {
    Value::Bytes(truncate(hex(b)).into())
}

/// An array or map attribute value (kept as JSON).
pub(super) fn json_value(v: &any_value::Value) -> Value {
    Value::Json(truncate(any_to_json(v).to_string()).into())
}

fn any_to_json(value: &any_value::Value) -> serde_json::Value {
    use any_value::Value as V;
    match value {
        V::StringValue(s) => s.clone().into(),
        V::BoolValue(b) => (*b).into(),
        V::IntValue(i) => (*i).into(),
        V::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or(serde_json::Value::Null, Into::into),
        V::BytesValue(b) => hex(b).into(),
        V::ArrayValue(a) => a.values.iter().filter_map(|v| v.value.as_ref()).map(any_to_json).collect(),
        V::KvlistValue(kv) => kv
            .values
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.as_ref().and_then(|v| v.value.as_ref()).map_or(serde_json::Value::Null, any_to_json)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        V::StringValueStrindex(i) => format!("strindex:{i}").into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    meshlens_common::hex::push(bytes, &mut out);
    out
}

/// Converts an OTLP value.
pub fn value(v: &AnyValue) -> Option<Value> {
    use any_value::Value as V;
    Some(match v.value.as_ref()? {
        V::StringValue(s) => string_value(s),
        V::BoolValue(b) => Value::Bool(*b),
        V::IntValue(i) => Value::Int(*i),
        V::DoubleValue(d) => Value::Double(*d),
        V::BytesValue(b) => bytes_value(b),
        other => json_value(other),
    })
}

/// Converts OTLP attributes, dropping those without a value, sorted by key (repeated keys
/// keep their order), so a span reads the same whether it comes from memory or is rebuilt
/// from the `spans` table.
pub fn attributes(kvs: &[KeyValue]) -> Attributes {
    let mut out: Attributes =
        kvs.iter().filter_map(|kv| Some((crate::model::key(&kv.key), value(kv.value.as_ref()?)?))).collect();
    sort_by_key(&mut out);
    out
}

/// Sorts attributes by key, keeping the order of repeated keys; most senders (the sidecar
/// among them) already send them sorted, which costs one pass to see.
pub(super) fn sort_by_key(attributes: &mut Attributes) {
    if !attributes.is_sorted_by(|a, b| a.0 <= b.0) {
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
    }
}

/// Converts a resource; the service is `service.name` or `unknown_service`.
pub fn resource(r: Option<&OtlpResource>) -> Arc<Resource> {
    let attributes = r.map(|r| attributes(&r.attributes)).unwrap_or_default();
    Arc::new(Resource { service: service_name(&attributes), attributes })
}

/// A resource's service: its `service.name`, or `unknown_service`.
pub(super) fn service_name(attributes: &Attributes) -> Arc<str> {
    crate::model::attr(attributes, "service.name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown_service")
        .into()
}

/// A span's status from its OTLP code and message (the message only goes with a set code).
pub(super) fn status(code: i32, message: &str) -> (StatusCode, String) {
    if code == status::StatusCode::Error as i32 {
        (StatusCode::Error, message.to_owned())
    } else if code == status::StatusCode::Ok as i32 {
        (StatusCode::Ok, message.to_owned())
    } else {
        (StatusCode::Unset, String::new())
    }
}

/// Converts one OTLP span, or says why it is invalid.
pub fn span(s: &OtlpSpan, resource: &Arc<Resource>, scope: &Arc<str>) -> Result<Span, String> {
    let trace_id = TraceId::from_bytes(&s.trace_id)
        .ok_or_else(|| format!("span {:?}: invalid trace_id ({} bytes)", s.name, s.trace_id.len()))?;
    let span_id = SpanId::from_bytes(&s.span_id)
        .ok_or_else(|| format!("span {:?}: invalid span_id ({} bytes)", s.name, s.span_id.len()))?;
    let parent_span_id = if s.parent_span_id.is_empty() {
        None
    } else {
        Some(SpanId::from_bytes(&s.parent_span_id).ok_or_else(|| format!("span {:?}: invalid parent_span_id", s.name))?)
    };
    if s.start_time_unix_nano == 0 || s.end_time_unix_nano == 0 {
        return Err(format!("span {:?}: missing start or end time", s.name));
    }
    if s.end_time_unix_nano < s.start_time_unix_nano {
        return Err(format!("span {:?}: ends before it starts", s.name));
    }
    let (status, status_message) = s.status.as_ref().map_or_else(|| status(0, ""), |st| status(st.code, &st.message));
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        trace_state: s.trace_state.clone(),
        flags: s.flags,
        name: truncated(&s.name).to_owned(),
        kind: SpanKind::from_otlp(s.kind),
        start_unix_nanos: s.start_time_unix_nano,
        end_unix_nanos: s.end_time_unix_nano,
        status,
        status_message,
        attributes: attributes(&s.attributes),
        events: s
            .events
            .iter()
            .map(|e| SpanEvent { time_unix_nanos: e.time_unix_nano, name: e.name.clone(), attributes: attributes(&e.attributes) })
            .collect(),
        links: s
            .links
            .iter()
            .filter_map(|l| {
                Some(SpanLink {
                    trace_id: TraceId::from_bytes(&l.trace_id)?,
                    span_id: SpanId::from_bytes(&l.span_id)?,
                    trace_state: l.trace_state.clone(),
                    flags: l.flags,
                    attributes: attributes(&l.attributes),
                })
            })
            .collect(),
        resource: resource.clone(),
        scope: scope.clone(),
    })
}

/// Converts a trace export request.
pub fn spans(req: &ExportTraceServiceRequest) -> Converted<Span> {
    let mut out = Converted::new();
    let mut own_side = Completer::default();
    for rs in &req.resource_spans {
        let resource = resource(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            let scope: Arc<str> = ss.scope.as_ref().map_or("", |s| s.name.as_str()).into();
            for s in &ss.spans {
                match span(s, &resource, &scope) {
                    Ok(mut span) => {
                        own_side.complete(&mut span.attributes, &span.resource);
                        out.items.push(span);
                    }
                    Err(reason) => out.reject(reason),
                }
            }
        }
    }
    out.finish()
}

/// Converts a logs export request.
pub fn logs(req: &ExportLogsServiceRequest) -> Converted<LogRecord> {
    let mut out = Converted::new();
    let mut own_side = Completer::default();
    for rl in &req.resource_logs {
        let resource = resource(rl.resource.as_ref());
        for sl in &rl.scope_logs {
            for l in &sl.log_records {
                let trace_id = TraceId::from_bytes(&l.trace_id);
                if !l.trace_id.is_empty() && trace_id.is_none() {
                    out.reject(format!("log record: invalid trace_id ({} bytes)", l.trace_id.len()));
                    continue;
                }
                let time = if l.time_unix_nano != 0 { l.time_unix_nano } else { l.observed_time_unix_nano };
                let mut record = LogRecord {
                    time_unix_nanos: time,
                    severity_number: l.severity_number,
                    severity_text: l.severity_text.clone(),
                    body: l.body.as_ref().and_then(value).map(|v| v.to_text()).unwrap_or_default(),
                    attributes: attributes(&l.attributes),
                    trace_id,
                    span_id: SpanId::from_bytes(&l.span_id),
                    resource: resource.clone(),
                };
                own_side.complete(&mut record.attributes, &record.resource);
                out.items.push(record);
            }
        }
    }
    out.finish()
}

/// Converts a metrics export request into one point per data point.
pub fn metrics(req: &ExportMetricsServiceRequest) -> Converted<MetricPoint> {
    let mut out = Converted::new();
    for rm in &req.resource_metrics {
        let resource = resource(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let point = |kind, time, value, count, attrs: &[KeyValue]| MetricPoint {
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    kind,
                    time_unix_nanos: time,
                    value,
                    count,
                    attributes: attributes(attrs),
                    resource: resource.clone(),
                };
                let number = |v: &Option<number_data_point::Value>| match v {
                    Some(number_data_point::Value::AsDouble(d)) => *d,
                    Some(number_data_point::Value::AsInt(i)) => *i as f64,
                    None => f64::NAN,
                };
                match &m.data {
                    Some(Data::Gauge(g)) => out.items.extend(
                        g.data_points.iter().map(|p| point(MetricKind::Gauge, p.time_unix_nano, number(&p.value), 0, &p.attributes)),
                    ),
                    Some(Data::Sum(s)) => {
                        let delta = s.aggregation_temporality == AggregationTemporality::Delta as i32;
                        let kind = if delta { MetricKind::DeltaSum } else { MetricKind::Sum };
                        out.items.extend(s.data_points.iter().map(|p| point(kind, p.time_unix_nano, number(&p.value), 0, &p.attributes)))
                    }
                    Some(Data::Histogram(h)) => out.items.extend(h.data_points.iter().map(|p| {
                        point(MetricKind::Histogram, p.time_unix_nano, p.sum.unwrap_or(f64::NAN), p.count, &p.attributes)
                    })),
                    Some(Data::ExponentialHistogram(h)) => out.items.extend(h.data_points.iter().map(|p| {
                        point(MetricKind::ExponentialHistogram, p.time_unix_nano, p.sum.unwrap_or(f64::NAN), p.count, &p.attributes)
                    })),
                    Some(Data::Summary(s)) => out.items.extend(
                        s.data_points.iter().map(|p| point(MetricKind::Summary, p.time_unix_nano, p.sum, p.count, &p.attributes)),
                    ),
                    None => out.reject(format!("metric {:?} has no data", m.name)),
                }
            }
        }
    }
    out.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    fn otlp_span(trace: Vec<u8>, span: Vec<u8>, start: u64, end: u64) -> OtlpSpan {
        OtlpSpan {
            trace_id: trace,
            span_id: span,
            name: "op".into(),
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Default::default()
        }
    }

    #[test]
    fn invalid_spans_are_rejected_one_by_one() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        otlp_span(vec![1; 16], vec![2; 8], 10, 20),
                        otlp_span(vec![0; 16], vec![2; 8], 10, 20),
                        otlp_span(vec![1; 15], vec![2; 8], 10, 20),
                        otlp_span(vec![1; 16], vec![2; 8], 20, 10),
                        otlp_span(vec![1; 16], vec![2; 8], 0, 10),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let out = spans(&req);
        assert_eq!(out.items.len(), 1);
        assert_eq!(out.rejected, 4);
        assert_eq!(&*out.items[0].resource.service, "unknown_service");
        assert!(out.message().contains("invalid trace_id"), "{}", out.message());
    }

    #[test]
    fn long_values_are_truncated_on_char_boundaries() {
        let long = "é".repeat(MAX_VALUE_LEN);
        let v = value(&AnyValue { value: Some(any_value::Value::StringValue(long)) });
        let Some(Value::Str(s)) = v else { panic!("string expected") };
        assert!(s.len() <= MAX_VALUE_LEN);
    }

    /// A request with every kind of field: attributes of each type, nested values, events,
    /// links, an oversized value.
    pub(crate) fn rich_request() -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::{
            common::v1::{ArrayValue, KeyValueList},
            trace::v1::span::{Event, Link},
        };
        let kv = |k: &str, v: any_value::Value| KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() };
        let mut span = otlp_span(vec![7; 16], vec![8; 8], 10, 20);
        span.attributes = vec![
            kv("s", any_value::Value::StringValue("<img src=x onerror=alert(1)>".into())),
            kv("i", any_value::Value::IntValue(-3)),
            kv("d", any_value::Value::DoubleValue(f64::NAN)),
            kv("b", any_value::Value::BoolValue(true)),
            kv("x", any_value::Value::BytesValue(vec![0, 255])),
            kv("a", any_value::Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(any_value::Value::IntValue(1)) }] })),
            kv("m", any_value::Value::KvlistValue(KeyValueList { values: vec![kv("k", any_value::Value::StringValue("v".into()))] })),
            kv("big", any_value::Value::StringValue("é".repeat(MAX_VALUE_LEN))),
        ];
        span.events = vec![Event { time_unix_nano: 15, name: "retry".into(), ..Default::default() }];
        span.links = vec![Link { trace_id: vec![9; 16], span_id: vec![9; 8], ..Default::default() }];
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span.clone(), otlp_span(vec![1; 16], vec![2; 8], 5, 6)], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn oversized_values_are_cut_and_counted() {
        let converted = spans(&rich_request());
        assert_eq!(converted.items.len(), 2);
        assert_eq!(converted.truncated, 1);
        let big = converted.items[0].attr_str("big").expect("kept");
        assert!(big.len() <= MAX_VALUE_LEN && big.chars().all(|c| c == 'é'));
    }

    /// `source` with one to three random mutations: a bit flipped, a cut, an inserted byte,
    /// or random bytes instead.
    pub(crate) fn mutated(source: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut bytes = source.to_vec();
        for _ in 0..rng.usize(1..4) {
            match rng.u8(0..4) {
                0 if !bytes.is_empty() => {
                    let i = rng.usize(..bytes.len());
                    bytes[i] ^= 1 << rng.u8(0..8);
                }
                1 => bytes.truncate(rng.usize(..=bytes.len())),
                2 if !bytes.is_empty() => {
                    let i = rng.usize(..bytes.len());
                    bytes.insert(i, rng.u8(..));
                }
                3 => bytes = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
                _ => {}
            }
        }
        bytes
    }

    /// Property: any byte string, decoded as an export request if it decodes at all, then
    /// converted and ingested, never panics, and valid items of a batch are never lost to
    /// invalid neighbours. Mutations of a rich valid request (bit flips, cuts, splices, random
    /// bytes) reach the decoder's and the converter's corners; the seed is fixed.
    #[test]
    fn mutated_requests_never_panic() {
        use prost::Message;
        let pipeline = crate::pipeline::Pipeline::new(&crate::config::CollectorConfig::default());
        let valid = rich_request().encode_to_vec();
        let json = serde_json::to_vec(&rich_request()).expect("json");
        let mut rng = fastrand::Rng::with_seed(0x6d65_7368);
        let mut decoded = 0;
        for round in 0..20_000 {
            let source = if round % 4 == 0 { &json } else { &valid };
            let bytes = mutated(source, &mut rng);
            let request = if round % 4 == 0 {
                serde_json::from_slice::<ExportTraceServiceRequest>(&bytes).ok()
            } else {
                ExportTraceServiceRequest::decode(bytes.as_slice()).ok()
            };
            if let Some(request) = request {
                decoded += 1;
                let converted = spans(&request);
                let total: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                assert_eq!(converted.items.len() + converted.rejected as usize, total, "every span accepted or rejected");
                pipeline.ingest_spans(converted, crate::pipeline::Transport::Grpc, crate::pipeline::Record::Unjournaled);
            }
        }
        assert!(decoded > 1_000, "mutations still decode often enough to exercise conversion ({decoded})");
        pipeline.tick();
    }
}
