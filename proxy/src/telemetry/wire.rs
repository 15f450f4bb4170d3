//! OTLP export requests for spans and access logs, encoded straight into protobuf bytes.
//!
//! Building prost messages costs two allocations per attribute (key and value strings) and
//! a second pass to encode; at tens of thousands of requests per second that was most of
//! the sidecar's telemetry cost. Here each record's span or log record is written field
//! by field into reused buffers, from the attribute description in [`otlp::write_record_attributes`]. A test decodes
//! these bytes with prost and compares them with the same messages built as prost structs
//! (`otlp::reference`, test-only).
//!
//! Field numbers are those of `opentelemetry/proto/{trace,logs,common}/v1/*.proto`.

use prost::encoding::{WireType, encode_varint, encoded_len_varint};

use meshlens_common::semconv;

use super::{RequestRecord, Side, otlp};
use crate::classify::Outcome;

/// A varint: the field keys and most lengths written here fit in one byte.
#[inline]
fn varint(buf: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        buf.push(value as u8);
    } else {
        encode_varint(value, buf);
    }
}

/// A field key (field number and wire type).
#[inline]
fn key(buf: &mut Vec<u8>, field: u32, wire_type: WireType) {
    varint(buf, u64::from(field << 3 | wire_type as u32));
}

fn put_len(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(buf, field, WireType::LengthDelimited);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn put_fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    key(buf, field, WireType::SixtyFourBit);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put_fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    key(buf, field, WireType::ThirtyTwoBit);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put_varint(buf: &mut Vec<u8>, field: u32, value: u64) {
    key(buf, field, WireType::Varint);
    varint(buf, value);
}

/// Length of a length-delimited field with a one-byte key.
fn field_len(content: usize) -> usize {
    1 + encoded_len_varint(content as u64) + content
}

/// Starts a length-delimited field whose content is written next, straight into `buf`: two
/// bytes are left for its length (the size of a record's length), filled in by
/// [`close_item`]. Returns where the content starts.
fn open_item(buf: &mut Vec<u8>, field: u32) -> usize {
    key(buf, field, WireType::LengthDelimited);
    buf.extend_from_slice(&[0, 0]);
    buf.len()
}

/// Writes the length of the field opened at `start`: in the two bytes left for it when it
/// takes two, else (a record under 128 bytes or over 16 KiB) moving the content to fit.
fn close_item(buf: &mut Vec<u8>, start: usize) {
    let len = buf.len() - start;
    if (0x80..0x4000).contains(&len) {
        buf[start - 2] = (len & 0x7f) as u8 | 0x80;
        buf[start - 1] = (len >> 7) as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        encode_varint(len as u64, &mut prefix);
        buf.splice(start - 2..start, prefix);
    }
}

/// Writes `KeyValue`s as repeated field `field` of the enclosing message.
struct KeyValues<'a> {
    buf: &'a mut Vec<u8>,
    field: u32,
}

impl KeyValues<'_> {
    /// One `KeyValue { key: 1, value: 2 AnyValue }` whose AnyValue content is `value_len`
    /// bytes written by `write_value`.
    fn put(&mut self, name: &str, value_len: usize, write_value: impl FnOnce(&mut Vec<u8>)) {
        let kv_len = field_len(name.len()) + field_len(value_len);
        self.buf.reserve(field_len(kv_len));
        key(self.buf, self.field, WireType::LengthDelimited);
        varint(self.buf, kv_len as u64);
        put_len(self.buf, 1, name.as_bytes());
        key(self.buf, 2, WireType::LengthDelimited);
        varint(self.buf, value_len as u64);
        write_value(self.buf);
    }
}

impl otlp::AttributeSink for KeyValues<'_> {
    fn string(&mut self, key: &str, value: &str) {
        // AnyValue.string_value = 1
        self.put(key, field_len(value.len()), |buf| put_len(buf, 1, value.as_bytes()));
    }

    fn integer(&mut self, key: &str, value: i64) {
        // AnyValue.int_value = 3 (varint of the two's complement)
        self.put(key, 1 + encoded_len_varint(value as u64), |buf| put_varint(buf, 3, value as u64));
    }

    fn header_values(&mut self, name: &str, values: &[http::HeaderValue]) {
        // AnyValue.array_value = 5: ArrayValue { values = 1: AnyValue { string_value = 1 } }
        let texts = || values.iter().map(|v| String::from_utf8_lossy(v.as_bytes()));
        let array_len: usize = texts().map(|t| field_len(field_len(t.len()))).sum();
        self.put(name, field_len(array_len), |buf| {
            key(buf, 5, WireType::LengthDelimited);
            varint(buf, array_len as u64);
            for text in texts() {
                key(buf, 1, WireType::LengthDelimited);
                varint(buf, field_len(text.len()) as u64);
                put_len(buf, 1, text.as_bytes());
            }
        });
    }
}

/// One encoded export request: a short envelope (the request, resource and scope fields with
/// their lengths) and the records after it, kept apart so the records are copied once, into
/// the gRPC frame, and their buffer is reused for the next batch.
#[derive(Debug, Default)]
pub struct Request {
    head: Vec<u8>,
    items: Vec<u8>,
}

impl Request {
    /// A message encoded elsewhere (the metrics export, by prost), sent as it is.
    pub fn encoded(bytes: Vec<u8>) -> Self {
        Self { head: Vec::new(), items: bytes }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        self.head.len() + self.items.len()
    }

    /// Appends the whole message to `out`.
    pub fn write_to(&self, out: &mut impl bytes::BufMut) {
        out.put_slice(&self.head);
        out.put_slice(&self.items);
    }

    /// Its records buffer, to build another request in.
    pub fn into_items(self) -> Vec<u8> {
        self.items
    }

    /// The whole message in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }
}

/// Reused buffers for one signal's export requests.
#[derive(Debug, Default)]
pub struct Encoder {
    items: Vec<u8>,
    nested: Vec<u8>,
    text: String,
    scratch: String,
    /// Spans' URL attributes are cut to this many bytes.
    url_limit: Option<usize>,
}

impl Encoder {
    /// An encoder whose spans' URL attributes (`url.path`, `url.query`, `url.full`) are cut
    /// to `url_limit` bytes; access-log records keep them whole.
    pub fn with_url_limit(url_limit: Option<usize>) -> Self {
        Self { url_limit, ..Self::default() }
    }

    /// Appends `r` as a span (`ScopeSpans.spans`) to the request being built.
    pub fn push_span(&mut self, r: &RequestRecord) {
        let start = open_item(&mut self.items, 2); // ScopeSpans.spans = 2
        self.span(r);
        close_item(&mut self.items, start);
    }

    /// Appends `r` as an access-log record (`ScopeLogs.log_records`) to the request being built.
    pub fn push_log(&mut self, r: &RequestRecord) {
        let start = open_item(&mut self.items, 2); // ScopeLogs.log_records = 2
        self.log_record(r);
        close_item(&mut self.items, start);
    }

    /// Bytes of the records pushed since the last request.
    pub fn pushed_bytes(&self) -> usize {
        self.items.len()
    }

    /// The request of the records pushed since the last one, with the pre-encoded `resource`
    /// and `scope` messages: an `ExportTraceServiceRequest` of spans, or an
    /// `ExportLogsServiceRequest` of log records, which share one shape:
    /// `Request { 1: Resource{Spans,Logs} { 1: resource, 2: Scope{Spans,Logs} { 1: scope, items } } }`.
    /// The next records go into `next` (a sent request's buffer, emptied here).
    pub fn finish(&mut self, resource: &[u8], scope: &[u8], mut next: Vec<u8>) -> Request {
        next.clear();
        let items = std::mem::replace(&mut self.items, next);
        let scoped_len = field_len(scope.len()) + items.len();
        let resourced_len = field_len(resource.len()) + field_len(scoped_len);
        let mut head = Vec::with_capacity(field_len(resourced_len) - items.len());
        key(&mut head, 1, WireType::LengthDelimited);
        varint(&mut head, resourced_len as u64);
        put_len(&mut head, 1, resource);
        key(&mut head, 2, WireType::LengthDelimited);
        varint(&mut head, scoped_len as u64);
        put_len(&mut head, 1, scope);
        Request { head, items }
    }

    fn span(&mut self, r: &RequestRecord) {
        let buf = &mut self.items;
        put_len(buf, 1, &r.context.trace_id.0);
        put_len(buf, 2, &r.context.span_id.0);
        if let Some(state) = &r.trace_state {
            put_len(buf, 3, state.as_bytes());
        }
        if let Some(parent) = r.context.parent_span_id {
            put_len(buf, 4, &parent.0);
        }
        self.text.clear();
        otlp::write_span_name(r, &mut self.text);
        put_len(buf, 5, self.text.as_bytes());
        let kind = match r.side {
            Side::Inbound => 2u64,  // SPAN_KIND_SERVER
            Side::Outbound => 3u64, // SPAN_KIND_CLIENT
        };
        put_varint(buf, 6, kind);
        put_fixed64(buf, 7, r.start_unix_nanos);
        put_fixed64(buf, 8, r.start_unix_nanos + r.duration.as_nanos() as u64);
        otlp::write_span_attributes(r, &mut KeyValues { buf, field: 9 }, &mut self.scratch, self.url_limit);
        for e in &r.events {
            // Event { 1: time, 2: name, 3: attributes }
            self.nested.clear();
            put_fixed64(&mut self.nested, 1, r.start_unix_nanos + e.offset.as_nanos() as u64);
            put_len(&mut self.nested, 2, e.name.as_bytes());
            if let Some(message) = &e.message {
                otlp::AttributeSink::string(&mut KeyValues { buf: &mut self.nested, field: 3 }, "exception.message", message);
            }
            put_len(buf, 11, &self.nested);
        }
        // Status { 2: message, 3: code }, always present (empty when unset).
        self.nested.clear();
        if otlp::span_failed(r) {
            put_len(&mut self.nested, 2, otlp::status_message(r).as_bytes());
            put_varint(&mut self.nested, 3, 2); // STATUS_CODE_ERROR
        }
        put_len(buf, 15, &self.nested);
        put_fixed32(buf, 16, otlp::span_flags(r));
    }

    fn log_record(&mut self, r: &RequestRecord) {
        let buf = &mut self.items;
        let (severity, text) = match r.classification.outcome {
            Outcome::Success => (9u64, "INFO"),  // SEVERITY_NUMBER_INFO
            Outcome::Failure => (13u64, "WARN"), // SEVERITY_NUMBER_WARN
        };
        put_fixed64(buf, 1, r.start_unix_nanos);
        put_varint(buf, 2, severity);
        put_len(buf, 3, text.as_bytes());
        self.text.clear();
        otlp::write_access_log_line(r, &mut self.text);
        // body: AnyValue { 1: string_value }
        key(buf, 5, WireType::LengthDelimited);
        varint(buf, field_len(self.text.len()) as u64);
        put_len(buf, 1, self.text.as_bytes());
        let mut attributes = KeyValues { buf, field: 6 };
        otlp::write_record_attributes(r, &mut attributes, &mut self.scratch, None);
        otlp::AttributeSink::string(&mut attributes, "event.name", semconv::ACCESS_LOG_EVENT);
        otlp::AttributeSink::integer(&mut attributes, semconv::DURATION_NS, r.duration.as_nanos() as i64);
        let buf = attributes.buf;
        // LogRecord.flags: the W3C trace flags.
        let flags = r.context.trace_flags();
        if flags != 0 {
            put_fixed32(buf, 8, u32::from(flags));
        }
        put_len(buf, 9, &r.context.trace_id.0);
        put_len(buf, 10, &r.context.span_id.0);
        put_fixed64(buf, 11, r.start_unix_nanos + r.duration.as_nanos() as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use opentelemetry_proto::tonic::collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest};
    use prost::Message;

    use super::*;
    use crate::{
        classify::{Outcome, ResponseFlags},
        identity::WorkloadIdentity,
        telemetry::{SpanEvent, tests::record},
        trace_context::SpanId,
    };

    /// Records covering every optional part: routes, gRPC, events, identities, failures.
    fn records() -> Vec<Arc<RequestRecord>> {
        let id = |s: &str| Arc::new(WorkloadIdentity::new("shop", s, &format!("{s}-v1"), "v1"));
        let mut plain = record(true, Outcome::Success, 3);
        plain.start_unix_nanos = 1_700_000_000_000_000_000;
        let mut rich = record(false, Outcome::Failure, 250);
        rich.side = Side::Inbound;
        rich.context.parent_span_id = Some(SpanId::random());
        rich.route = Some("/items/{id}".into());
        rich.path = "/items/42?x=<b>".into();
        rich.authority = Some("payments".into());
        rich.authority_port = Some(8080);
        rich.version = http::Version::HTTP_2;
        rich.grpc = true;
        rich.grpc_status = Some(14);
        rich.request_bytes = 1234;
        rich.response_bytes = u64::from(u32::MAX) + 7;
        rich.source = Some(id("checkout"));
        rich.destination = Some(id("payments"));
        rich.upstream = Some("127.0.0.1:9001".parse().expect("addr"));
        rich.peer = Some("[::1]:40000".parse().expect("addr"));
        rich.flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE;
        rich.classification.error_type = Some("connect_error".into());
        rich.user_agent = Some("curl/8 ünïcode".into());
        rich.request_id = Some("rid-1".into());
        rich.trace_state = Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into());
        let names = crate::telemetry::headers::HeaderNames::default();
        let (tenant, cache) = (http::HeaderName::from_static("x-tenant"), http::HeaderName::from_static("x-cache"));
        let names = Arc::new(names.with_attributes(&[tenant], std::slice::from_ref(&cache)));
        let mut request = http::HeaderMap::new();
        request.append("x-tenant", http::HeaderValue::from_static("acme"));
        request.append("x-tenant", http::HeaderValue::from_bytes(b"caf\xe9").expect("opaque bytes"));
        let mut captured = names.capture_request(&request);
        captured.add_response(&http::HeaderMap::from_iter([(cache, http::HeaderValue::from_static("HIT"))]));
        rich.headers = Some(Box::new(captured));
        rich.events = vec![
            SpanEvent { offset: Duration::from_millis(5), name: "retry", message: Some("reset by peer".into()) },
            SpanEvent { offset: Duration::from_millis(9), name: "timeout", message: None },
        ];
        let mut client_4xx = record(true, Outcome::Success, 1);
        client_4xx.status = 404;
        client_4xx.route = Some("/cart".into());
        // Over 16 KiB: its length takes three bytes.
        let mut long_path = record(true, Outcome::Success, 1);
        long_path.path = format!("/{}", "x".repeat(20_000));
        vec![Arc::new(plain), Arc::new(rich), Arc::new(client_4xx), Arc::new(long_path)]
    }

    #[test]
    fn item_lengths_are_canonical_varints_whatever_their_size() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let mut buf = vec![9u8];
            let start = open_item(&mut buf, 2);
            buf.extend(std::iter::repeat_n(7u8, len));
            close_item(&mut buf, start);
            let mut expected = vec![9u8, 0x12];
            encode_varint(len as u64, &mut expected);
            expected.extend(std::iter::repeat_n(7u8, len));
            assert_eq!(buf, expected, "content of {len} bytes");
        }
    }

    #[test]
    fn wire_bytes_decode_to_the_prost_messages() {
        let identity = WorkloadIdentity::new("shop", "checkout", "checkout-v1", "v1");
        let resource = otlp::resource(&identity, &crate::telemetry::resource::ResourceAttributes::default());
        let (resource_bytes, scope_bytes) = (resource.encode_to_vec(), otlp::scope().encode_to_vec());
        let batch = records();
        let mut encoder = Encoder::default();
        let mut spare = Vec::new();
        for _ in 0..2 {
            // Twice: reused buffers must not leak one request into the next.
            for r in &batch {
                encoder.push_span(r);
            }
            let request = encoder.finish(&resource_bytes, &scope_bytes, spare);
            let bytes = request.to_vec();
            assert_eq!(bytes.len(), request.encoded_len());
            let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("valid protobuf");
            assert_eq!(decoded, otlp::reference::trace_request(&resource, &batch));
            assert_eq!(bytes, decoded.encode_to_vec(), "the same bytes as prost writes");
            for r in &batch {
                encoder.push_log(r);
            }
            let request = encoder.finish(&resource_bytes, &scope_bytes, request.into_items());
            let bytes = request.to_vec();
            let decoded = ExportLogsServiceRequest::decode(bytes.as_slice()).expect("valid protobuf");
            assert_eq!(decoded, otlp::reference::logs_request(&resource, &batch));
            assert_eq!(bytes, decoded.encode_to_vec(), "the same bytes as prost writes");
            spare = request.into_items();
        }
    }
}
