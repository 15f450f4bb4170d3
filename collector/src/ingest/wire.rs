//! Trace export requests converted straight from their protobuf bytes.
//!
//! The OTLP/gRPC trace path is the collector's hottest: decoding a request into prost's
//! message tree first allocates a string per key and value, a vector per attribute list
//! and a box per value, all dropped again right after [`convert`] has
//! read them. This reader walks the bytes instead and builds the collector's [`Span`]s
//! from borrowed slices, with the same validation, the same rejection messages and the
//! same result as [`convert::spans`] over the decoded message (a
//! property test holds the two to that). An attribute in the layout every encoder writes
//! (key, then a string, integer, boolean or double value, short lengths) is read by matching
//! its bytes, without walking its fields. Arrays and maps inside attribute values, which
//! are rare, are decoded with prost.

use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList, any_value};
use prost::Message;

use super::{
    convert::{self, Converted},
    key_order::{KeyOrders, Run},
    own_side::Completer,
};
use crate::model::{Attributes, Key, LogRecord, Resource, Span, SpanEvent, SpanId, SpanKind, SpanLink, TraceId, Value};
#[cfg(test)]
use crate::model::StatusCode;

/// Why the bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to decode protobuf: {0}")]
pub struct DecodeError(std::borrow::Cow<'static, str>);

impl DecodeError {
    const fn new(reason: &'static str) -> Self {
        Self(std::borrow::Cow::Borrowed(reason))
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(error: prost::DecodeError) -> Self {
        Self(error.to_string().into())
    }
}

/// How deep groups may nest (prost's recursion limit).
const MAX_GROUP_DEPTH: usize = 100;

/// One field's payload.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Read past; fields the collector keeps are never groups.
    Group,
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn varint(self) -> Result<u64, DecodeError> {
        match self {
            Self::Varint(v) => Ok(v),
            _ => Err(DecodeError::new("invalid wire type for a varint field")),
        }
    }

    fn fixed64(self) -> Result<u64, DecodeError> {
        match self {
            Self::Fixed64(v) => Ok(v),
            _ => Err(DecodeError::new("invalid wire type for a fixed64 field")),
        }
    }

    fn fixed32(self) -> Result<u32, DecodeError> {
        match self {
            Self::Fixed32(v) => Ok(v),
            _ => Err(DecodeError::new("invalid wire type for a fixed32 field")),
        }
    }

    fn bytes(self) -> Result<&'a [u8], DecodeError> {
        match self {
            Self::Bytes(b) => Ok(b),
            _ => Err(DecodeError::new("invalid wire type for a length-delimited field")),
        }
    }

    fn str(self) -> Result<&'a str, DecodeError> {
        utf8(self.bytes()?)
    }
}

/// What prost says of a string field that is not UTF-8.
fn not_utf8() -> DecodeError {
    DecodeError::new("invalid string value: data is not UTF-8 encoded")
}

/// `bytes` as text, or [`not_utf8`].
fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| not_utf8())
}

/// The fields of one message, in order.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        // Most varints on the wire (field keys, lengths of attributes and names) are one byte.
        if let Some((&first, rest)) = self.buf.split_first()
            && first < 0x80
        {
            self.buf = rest;
            return Ok(u64::from(first));
        }
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    break;
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(DecodeError::new("invalid varint"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::new("buffer underflow"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field, or `None` at the end.
    #[inline]
    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let (tag, wire_type) = self.key()?;
        let wire = match wire_type {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| DecodeError::new("buffer underflow"))?)),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::new("buffer underflow"))?;
                Wire::Bytes(self.take(len)?)
            }
            3 => {
                // Skipped; a field the collector reads is never a group, so reading one of
                // those as a group fails on its wire type, as in prost.
                self.skip_group(tag, 1)?;
                Wire::Group
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| DecodeError::new("buffer underflow"))?)),
            _ => return Err(DecodeError::new("invalid wire type")),
        };
        Ok(Some((tag, wire)))
    }

    /// A field key: its tag and wire type (as prost reads them: at most 32 bits, tag ≥ 1).
    fn key(&mut self) -> Result<(u32, u64), DecodeError> {
        let key = u32::try_from(self.varint()?).map_err(|_| DecodeError::new("invalid key value"))?;
        if key >> 3 == 0 {
            return Err(DecodeError::new("invalid tag value: 0"));
        }
        Ok((key >> 3, u64::from(key & 7)))
    }

    /// Skips a (deprecated) group up to its end marker; groups nest at most
    /// [`MAX_GROUP_DEPTH`] deep, so hostile input cannot exhaust the stack.
    fn skip_group(&mut self, tag: u32, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_GROUP_DEPTH {
            return Err(DecodeError::new("recursion limit reached"));
        }
        loop {
            if self.buf.is_empty() {
                return Err(DecodeError::new("unterminated group"));
            }
            let (inner, wire_type) = self.key()?;
            match wire_type {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::new("buffer underflow"))?;
                    self.take(len)?;
                }
                3 => self.skip_group(inner, depth + 1)?,
                4 if inner == tag => return Ok(()),
                4 => return Err(DecodeError::new("unexpected end group tag")),
                5 => {
                    self.take(4)?;
                }
                _ => return Err(DecodeError::new("invalid wire type")),
            }
        }
    }
}

/// Calls `f` on every field of `buf`.
fn each_field<'a>(buf: &'a [u8], mut f: impl FnMut(u32, Wire<'a>) -> Result<(), DecodeError>) -> Result<(), DecodeError> {
    let mut fields = Fields::new(buf);
    while let Some((tag, wire)) = fields.next_field()? {
        f(tag, wire)?;
    }
    Ok(())
}

/// Converts an encoded `ExportTraceServiceRequest`.
pub fn spans(request: &[u8]) -> Result<Converted<Span>, DecodeError> {
    let mut orders = KeyOrders::default();
    let mut attributes = Vec::new();
    let mut own_side = Completer::default();
    resources(request, |buf, resource, scope, out| {
        let room = own_side.room(resource);
        match span(buf, Item { resource, room, orders: &mut orders, attributes: &mut attributes }, scope)? {
            Ok(mut span) => {
                own_side.complete(&mut span.attributes, &span.resource);
                out.items.push(span);
            }
            Err(reason) => out.reject(reason),
        }
        Ok(())
    })
}

/// Converts an encoded `ExportLogsServiceRequest`.
pub fn logs(request: &[u8]) -> Result<Converted<LogRecord>, DecodeError> {
    let mut orders = KeyOrders::default();
    let mut attributes = Vec::new();
    let mut own_side = Completer::default();
    resources(request, |buf, resource, _scope, out| {
        let room = own_side.room(resource);
        match log_record(buf, Item { resource, room, orders: &mut orders, attributes: &mut attributes })? {
            Ok(mut record) => {
                own_side.complete(&mut record.attributes, &record.resource);
                out.items.push(record);
            }
            Err(reason) => out.reject(reason),
        }
        Ok(())
    })
}

/// Walks an export request of any signal: they all nest items in scopes in resources
/// (field 1 of the request, of the resource entry and of the scope entry is the next level
/// down; field 2 of the scope entry holds the items). `item` converts one encoded item.
///
/// The items are found first and converted after, so the output is allocated once at its
/// size (grown by doubling, a batch's spans were copied about twice over).
fn resources<'a, T>(
    request: &'a [u8],
    mut item: impl FnMut(&'a [u8], &Arc<Resource>, &Arc<str>, &mut Converted<T>) -> Result<(), DecodeError>,
) -> Result<Converted<T>, DecodeError> {
    let mut scopes = Vec::new();
    each_field(request, |tag, wire| {
        if tag == 1 {
            resource_entry(wire.bytes()?, &mut scopes)?;
        }
        Ok(())
    })?;
    let mut out = Converted::new();
    out.items.reserve_exact(scopes.iter().map(|s| s.items.len()).sum());
    for scope in scopes {
        for buf in scope.items {
            item(buf, &scope.resource, &scope.name, &mut out)?;
        }
    }
    Ok(out.finish())
}

/// The encoded items of one scope entry, with their resource and scope name.
struct ScopeItems<'a> {
    resource: Arc<Resource>,
    name: Arc<str>,
    items: Vec<&'a [u8]>,
}

fn resource_entry<'a>(buf: &'a [u8], out: &mut Vec<ScopeItems<'a>>) -> Result<(), DecodeError> {
    // The resource may follow its items on the wire; repeated occurrences merge.
    let mut resource_attrs = Vec::new();
    let mut scopes = Vec::new();
    each_field(buf, |tag, wire| {
        match tag {
            1 => each_field(wire.bytes()?, |tag, wire| {
                if tag == 1 {
                    resource_attrs.push(wire.bytes()?);
                }
                Ok(())
            })?,
            2 => scopes.push(wire.bytes()?),
            _ => {}
        }
        Ok(())
    })?;
    let attributes = attributes(&resource_attrs)?;
    let resource = Arc::new(Resource { service: convert::service_name(&attributes), attributes });
    for scope_entry in scopes {
        let mut scope = "";
        let mut items = Vec::new();
        each_field(scope_entry, |tag, wire| {
            match tag {
                1 => each_field(wire.bytes()?, |tag, wire| {
                    if tag == 1 {
                        scope = wire.str()?;
                    }
                    Ok(())
                })?,
                2 => items.push(wire.bytes()?),
                _ => {}
            }
            Ok(())
        })?;
        out.push(ScopeItems { resource: resource.clone(), name: scope.into(), items });
    }
    Ok(())
}

/// One log record: a decode error fails the request, an invalid record only itself (the
/// checks and messages of [`convert::logs`]).
fn log_record<'a>(buf: &'a [u8], item: Item<'_, 'a>) -> Result<Result<LogRecord, String>, DecodeError> {
    let (mut time, mut observed, mut severity_number, mut severity_text) = (0, 0, 0, "");
    let mut body: Option<&[u8]> = None;
    let Item { resource, room, orders, attributes: attrs } = item;
    attrs.clear();
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    each_field(buf, |tag, wire| {
        match tag {
            1 => time = wire.fixed64()?,
            2 => severity_number = wire.varint()? as i32,
            3 => severity_text = wire.str()?,
            5 => body = Some(wire.bytes()?),
            6 => attrs.push(wire.bytes()?),
            9 => trace_id = wire.bytes()?,
            10 => span_id = wire.bytes()?,
            11 => observed = wire.fixed64()?,
            12 => {
                wire.str()?;
            }
            _ => {}
        }
        Ok(())
    })?;
    let trace = TraceId::from_bytes(trace_id);
    if !trace_id.is_empty() && trace.is_none() {
        convert::uncounted(|| body.map(any_value).transpose().and(attributes(attrs)))?;
        return Ok(Err(format!("log record: invalid trace_id ({} bytes)", trace_id.len())));
    }
    // A text body (a sidecar's access-log line) keeps its allocation.
    let body = match body.map(any_value).transpose()?.flatten() {
        Some(Value::Str(text)) => text.into_string(),
        other => other.map(|v| v.to_text()).unwrap_or_default(),
    };
    Ok(Ok(LogRecord {
        time_unix_nanos: if time != 0 { time } else { observed },
        severity_number,
        severity_text: severity_text.to_owned(),
        body,
        attributes: attributes_in(attrs, orders.start(attrs.len()), room)?,
        trace_id: trace,
        span_id: SpanId::from_bytes(span_id),
        resource: resource.clone(),
    }))
}

/// What converting one span or log record takes besides its bytes.
struct Item<'r, 'a> {
    /// Its resource.
    resource: &'r Arc<Resource>,
    /// Room to leave in its attribute list for the own end of a sidecar's hop
    /// ([`Completer::room`]).
    room: usize,
    /// The key orders of the request's attribute lists so far.
    orders: &'r mut KeyOrders,
    /// The encoded attributes, a list kept from one item to the next (it grew from nothing
    /// for each).
    attributes: &'r mut Vec<&'a [u8]>,
}

/// The fields of a span as they are on the wire.
#[derive(Default)]
struct RawSpan<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    trace_state: &'a str,
    flags: u32,
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    attributes: Vec<&'a [u8]>,
    events: Vec<&'a [u8]>,
    links: Vec<&'a [u8]>,
    status_code: i32,
    status_message: &'a str,
}

/// One span: a decode error fails the request, an invalid span only itself.
fn span<'a>(buf: &'a [u8], item: Item<'_, 'a>, scope: &Arc<str>) -> Result<Result<Span, String>, DecodeError> {
    item.attributes.clear();
    let mut s = RawSpan { attributes: std::mem::take(item.attributes), ..RawSpan::default() };
    let converted = span_from(buf, &mut s, item.resource, scope, item.orders, item.room);
    *item.attributes = s.attributes;
    converted
}

fn span_from<'a>(
    buf: &'a [u8],
    s: &mut RawSpan<'a>,
    resource: &Arc<Resource>,
    scope: &Arc<str>,
    orders: &mut KeyOrders,
    room: usize,
) -> Result<Result<Span, String>, DecodeError> {
    each_field(buf, |tag, wire| {
        match tag {
            1 => s.trace_id = wire.bytes()?,
            2 => s.span_id = wire.bytes()?,
            3 => s.trace_state = wire.str()?,
            4 => s.parent_span_id = wire.bytes()?,
            5 => s.name = wire.str()?,
            6 => s.kind = wire.varint()? as i32,
            7 => s.start = wire.fixed64()?,
            8 => s.end = wire.fixed64()?,
            9 => s.attributes.push(wire.bytes()?),
            11 => s.events.push(wire.bytes()?),
            13 => s.links.push(wire.bytes()?),
            15 => each_field(wire.bytes()?, |tag, wire| {
                match tag {
                    2 => s.status_message = wire.str()?,
                    3 => s.status_code = wire.varint()? as i32,
                    _ => {}
                }
                Ok(())
            })?,
            16 => s.flags = wire.fixed32()?,
            _ => {}
        }
        Ok(())
    })?;
    let (trace_id, span_id, parent_span_id) = match validate(s) {
        Ok(ids) => ids,
        Err(reason) => {
            // A broken nested message fails the whole request even under a rejected span,
            // as decoding the request first would; nothing of it is counted.
            convert::uncounted(|| nested(s, Run::plain(), 0))?;
            return Ok(Err(reason));
        }
    };
    let (attributes, events, links) = nested(s, orders.start(s.attributes.len()), room)?;
    let (status, status_message) = convert::status(s.status_code, s.status_message);
    Ok(Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        trace_state: s.trace_state.to_owned(),
        flags: s.flags,
        name: convert::truncated(s.name).to_owned(),
        kind: SpanKind::from_otlp(s.kind),
        start_unix_nanos: s.start,
        end_unix_nanos: s.end,
        status,
        status_message,
        attributes,
        events,
        links,
        resource: resource.clone(),
        scope: scope.clone(),
    }))
}

type Ids = (TraceId, SpanId, Option<SpanId>);

/// A span's IDs, or why it is invalid (the checks and messages of [`convert::span`]).
fn validate(s: &RawSpan<'_>) -> Result<Ids, String> {
    let trace_id =
        TraceId::from_bytes(s.trace_id).ok_or_else(|| format!("span {:?}: invalid trace_id ({} bytes)", s.name, s.trace_id.len()))?;
    let span_id =
        SpanId::from_bytes(s.span_id).ok_or_else(|| format!("span {:?}: invalid span_id ({} bytes)", s.name, s.span_id.len()))?;
    let parent_span_id = if s.parent_span_id.is_empty() {
        None
    } else {
        Some(SpanId::from_bytes(s.parent_span_id).ok_or_else(|| format!("span {:?}: invalid parent_span_id", s.name))?)
    };
    if s.start == 0 || s.end == 0 {
        return Err(format!("span {:?}: missing start or end time", s.name));
    }
    if s.end < s.start {
        return Err(format!("span {:?}: ends before it starts", s.name));
    }
    Ok((trace_id, span_id, parent_span_id))
}

/// A span's attributes (with `room` to spare), events and links.
fn nested(s: &RawSpan<'_>, run: Run<'_>, room: usize) -> Result<(Attributes, Vec<SpanEvent>, Vec<SpanLink>), DecodeError> {
    let attributes = attributes_in(&s.attributes, run, room)?;
    let events = s.events.iter().map(|e| event(e)).collect::<Result<Vec<_>, _>>()?;
    let links = s.links.iter().map(|l| link(l)).collect::<Result<Vec<Option<_>>, _>>()?;
    Ok((attributes, events, links.into_iter().flatten().collect()))
}

fn event(buf: &[u8]) -> Result<SpanEvent, DecodeError> {
    let (mut time, mut name, mut attrs) = (0, "", Vec::new());
    each_field(buf, |tag, wire| {
        match tag {
            1 => time = wire.fixed64()?,
            2 => name = wire.str()?,
            3 => attrs.push(wire.bytes()?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(SpanEvent { time_unix_nanos: time, name: name.to_owned(), attributes: attributes(&attrs)? })
}

/// A link; `None` (dropped) when its IDs are invalid.
fn link(buf: &[u8]) -> Result<Option<SpanLink>, DecodeError> {
    let (mut trace_id, mut span_id, mut trace_state, mut attrs): (&[u8], &[u8], &str, Vec<&[u8]>) = (&[], &[], "", Vec::new());
    let mut flags = 0;
    each_field(buf, |tag, wire| {
        match tag {
            1 => trace_id = wire.bytes()?,
            2 => span_id = wire.bytes()?,
            3 => trace_state = wire.str()?,
            4 => attrs.push(wire.bytes()?),
            6 => flags = wire.fixed32()?,
            _ => {}
        }
        Ok(())
    })?;
    let attributes = attributes(&attrs)?;
    Ok(TraceId::from_bytes(trace_id)
        .zip(SpanId::from_bytes(span_id))
        .map(|(trace_id, span_id)| SpanLink { trace_id, span_id, trace_state: trace_state.to_owned(), flags, attributes }))
}

/// Encoded `KeyValue`s converted as [`convert::attributes`] does: without the ones that
/// have no value, sorted by key.
fn attributes(kvs: &[&[u8]]) -> Result<Attributes, DecodeError> {
    attributes_in(kvs, Run::plain(), 0)
}

/// [`attributes`], its keys and their order taken from `run` when they match, with `room`
/// to spare for attributes added after conversion.
///
/// The list is made at its full length first and each attribute written into its place:
/// pushed, an attribute was put together on the stack and copied into the list, and the
/// copy read it back in wider words than it had just been written in, each such read
/// waiting for the writes to reach the cache (this function went from 10.6 % to 4.4 % of
/// ingest's samples, perf).
fn attributes_in(kvs: &[&[u8]], mut run: Run<'_>, room: usize) -> Result<Attributes, DecodeError> {
    let mut out = Attributes::with_capacity(kvs.len() + room);
    out.resize_with(kvs.len(), || (Key::Static(""), Value::Bool(false)));
    let mut kept = 0;
    for kv in kvs {
        // Short strings, most values, are built in their place: through a variable of its
        // own, a value is copied with its padding, in pieces other than it was written in.
        let plain = plain_key_value(kv);
        if let Some((key, value)) = plain
            && let Some(text) = plain_str(value)
        {
            let text = utf8(text)?;
            let slot = &mut out[kept];
            slot.0 = run.key(kept, key).ok_or_else(not_utf8)?;
            slot.1 = Value::Str(convert::truncated(text).into());
            kept += 1;
            continue;
        }
        let (key, value) = match plain {
            Some((key, value)) => match plain_any_value(value) {
                Some(plain) => (key, Some(plain?)),
                None => (key, any_value(value)?),
            },
            None => key_value(kv)?,
        };
        // The key's bytes: checked to be UTF-8 when the attribute has no value, and by `run`
        // unless they are a remembered key (most keys, most of the time).
        match value {
            Some(value) => {
                let slot = &mut out[kept];
                slot.0 = run.key(kept, key).ok_or_else(not_utf8)?;
                slot.1 = value;
                kept += 1;
            }
            None => {
                utf8(key)?;
            }
        }
    }
    out.truncate(kept);
    run.finish(&mut out);
    Ok(out)
}

/// A `KeyValue` in any layout, read field by field: its key's bytes (a replaced key is checked
/// to be UTF-8) and its value, if it has one.
fn key_value(kv: &[u8]) -> Result<(&[u8], Option<Value>), DecodeError> {
    let (mut key, mut value): (Option<&[u8]>, _) = (None, None);
    each_field(kv, |tag, wire| {
        match tag {
            1 => {
                if let Some(replaced) = key {
                    utf8(replaced)?;
                }
                key = Some(wire.bytes()?);
            }
            2 => value = Some(any_value(wire.bytes()?)?),
            _ => {}
        }
        Ok(())
    })?;
    Ok((key.unwrap_or_default(), value.flatten()))
}

/// A `KeyValue` laid out as encoders write it: the key (field 1), then the value (field 2),
/// each with a one-byte length, and nothing else. `None` for any other layout (repeated or
/// reordered fields, longer lengths, no value), which the general reader takes.
#[inline]
fn plain_key_value(kv: &[u8]) -> Option<(&[u8], &[u8])> {
    let [0x0a, key_len @ 0..0x80, rest @ ..] = kv else { return None };
    let (key, rest) = rest.split_at_checked(usize::from(*key_len))?;
    let [0x12, value_len @ 0..0x80, value @ ..] = rest else { return None };
    (usize::from(*value_len) == value.len()).then_some((key, value))
}

/// The bytes of an `AnyValue` holding exactly one string field, with a one-byte length.
#[inline]
fn plain_str(buf: &[u8]) -> Option<&[u8]> {
    match buf {
        [0x0a, len @ 0..0x80, text @ ..] if usize::from(*len) == text.len() => Some(text),
        _ => None,
    }
}

/// An `AnyValue` holding exactly one string (one-byte length), integer, boolean or double
/// field, as [`any_value`] would convert it; `None` for anything else, which it reads.
#[inline]
fn plain_any_value(buf: &[u8]) -> Option<Result<Value, DecodeError>> {
    if let Some(text) = plain_str(buf) {
        return Some(utf8(text).map(convert::string_value));
    }
    match buf {
        [0x10, b @ 0..0x80] => Some(Ok(Value::Bool(*b != 0))),
        [0x18, rest @ ..] => {
            let mut fields = Fields::new(rest);
            let int = fields.varint().ok()?;
            fields.buf.is_empty().then_some(Ok(Value::Int(int as i64)))
        }
        [0x21, rest @ ..] => Some(Ok(Value::Double(f64::from_bits(u64::from_le_bytes(rest.try_into().ok()?))))),
        _ => None,
    }
}

/// An encoded `AnyValue`; `None` when no value is set.
fn any_value(buf: &[u8]) -> Result<Option<Value>, DecodeError> {
    // A oneof: the last field on the wire wins.
    let mut last: Option<(u32, Wire<'_>, &str)> = None;
    each_field(buf, |tag, wire| {
        if (1..=8).contains(&tag) {
            // Checked now, so a malformed value fails even when a later one replaces it; a
            // string's text is kept, so it is checked once.
            let text = if tag == 1 {
                wire.str()?
            } else {
                check_any(tag, wire)?;
                ""
            };
            last = Some((tag, wire, text));
        }
        Ok(())
    })?;
    let Some((tag, wire, text)) = last else { return Ok(None) };
    Ok(Some(match tag {
        1 => convert::string_value(text),
        2 => Value::Bool(wire.varint()? != 0),
        3 => Value::Int(wire.varint()? as i64),
        4 => Value::Double(f64::from_bits(wire.fixed64()?)),
        5 => convert::json_value(&any_value::Value::ArrayValue(
            ArrayValue::decode(wire.bytes()?).map_err(|_| DecodeError::new("invalid array value"))?,
        )),
        6 => convert::json_value(&any_value::Value::KvlistValue(
            KeyValueList::decode(wire.bytes()?).map_err(|_| DecodeError::new("invalid key-value list"))?,
        )),
        7 => convert::bytes_value(wire.bytes()?),
        _ => convert::json_value(&any_value::Value::StringValueStrindex(wire.varint()? as i32)),
    }))
}

fn check_any(tag: u32, wire: Wire<'_>) -> Result<(), DecodeError> {
    match tag {
        1 => wire.str().map(|_| ()),
        2 | 3 | 8 => wire.varint().map(|_| ()),
        4 => wire.fixed64().map(|_| ()),
        _ => wire.bytes().map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
        resource::v1::Resource as OtlpResource,
        trace::v1::{Status, status::StatusCode as OtlpStatusCode},
    };

    use super::*;

    /// The converter's rich request, with a resource, a scope, statuses and invalid spans.
    fn request() -> ExportTraceServiceRequest {
        let mut req = convert::tests::rich_request();
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        };
        let rs = &mut req.resource_spans[0];
        let resource = vec![kv("service.name", "checkout"), kv("host.name", "h1"), kv("meshlens.workload", "checkout-v2")];
        rs.resource = Some(OtlpResource { attributes: resource, ..Default::default() });
        let ss = &mut rs.scope_spans[0];
        // A sidecar's outbound span: its own end of the hop is the resource's.
        ss.spans[0].attributes.push(kv("meshlens.direction", "outbound"));
        ss.scope = Some(InstrumentationScope { name: "meshlens-proxy".into(), version: "1".into(), ..Default::default() });
        ss.spans[0].status = Some(Status { message: "boom".into(), code: OtlpStatusCode::Error as i32 });
        ss.spans[1].status = Some(Status { message: "ignored".into(), code: OtlpStatusCode::Unset as i32 });
        // Sampled, with a remote parent.
        (ss.spans[0].trace_state, ss.spans[0].flags) = ("ot=th:8,vendor=x".into(), 0x301);
        let link = ss.spans[0].links.first_mut().expect("a link");
        (link.trace_state, link.flags) = ("vendor=y".into(), 0x101);
        link.attributes = vec![kv("z.reason", "retry"), kv("a.queue", "orders")];
        let mut bad = ss.spans[1].clone();
        bad.trace_id = vec![0; 16];
        ss.spans.push(bad);
        let mut reversed = ss.spans[1].clone();
        reversed.end_time_unix_nano = 1;
        ss.spans.push(reversed);
        req
    }

    fn same<T: std::fmt::Debug>(wire: &Converted<T>, decoded: &Converted<T>) -> bool {
        format!("{:?}", wire.items) == format!("{:?}", decoded.items)
            && (wire.rejected, &wire.reasons, wire.truncated) == (decoded.rejected, &decoded.reasons, decoded.truncated)
    }

    #[test]
    fn converts_as_decoding_then_converting_does() {
        let req = request();
        let bytes = req.encode_to_vec();
        let (wire, decoded) = (spans(&bytes).expect("valid"), convert::spans(&req));
        assert_eq!((wire.items.len(), wire.rejected, wire.truncated), (2, 2, 1));
        assert!(same(&wire, &decoded), "{:?}\n{:?}", wire.items, decoded.items);
        assert_eq!(&*wire.items[0].resource.service, "checkout");
        assert_eq!(&*wire.items[0].scope, "meshlens-proxy");
        let own_end = ["service", "workload"].map(|k| wire.items[0].attr_str(&format!("meshlens.source.{k}")));
        assert_eq!(own_end, [Some("checkout"), Some("checkout-v2")], "written back from the resource");
        // `Vec::with_capacity` is exact: converted with room for those two, the list did not grow.
        let written_back = &wire.items[0].attributes;
        assert_eq!(written_back.capacity(), written_back.len(), "converted with room for the own end");
        assert_eq!((wire.items[0].status, wire.items[0].status_message.as_str()), (StatusCode::Error, "boom"));
        assert_eq!(wire.items[1].status_message, "", "a message without a set code is dropped");
        let context = |s: &Span| (s.trace_state.clone(), s.flags);
        assert_eq!((context(&wire.items[0]), context(&wire.items[1])), (("ot=th:8,vendor=x".into(), 0x301), (String::new(), 0)));
        let link = &wire.items[0].links[0];
        let keys: Vec<&str> = link.attributes.iter().map(|(k, _)| &**k).collect();
        assert_eq!(
            (link.trace_state.as_str(), link.flags, keys),
            ("vendor=y", 0x101, vec!["a.queue", "z.reason"]),
            "a link's context and attributes, sorted"
        );
    }

    #[test]
    fn spans_repeating_or_varying_key_orders_convert_the_same_either_way() {
        // Remembered key orders must give what sorting each span's attributes gives:
        // spans with the same keys in the same order, in another order, with one key
        // changed, with a repeated key, with a value-less key, in a mixed sequence.
        let mut req = request();
        let ss = &mut req.resource_spans[0].scope_spans[0];
        let template = ss.spans[0].clone();
        let kv = |k: &str, v: Option<i64>| KeyValue {
            key: k.into(),
            value: v.map(|v| AnyValue { value: Some(any_value::Value::IntValue(v)) }),
            ..Default::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let keys = ["c", "a", "b", "a", "d", "e"];
        ss.spans.clear();
        for i in 0..200 {
            let mut span = template.clone();
            span.span_id = (i as u64 + 1).to_be_bytes().to_vec();
            let n = rng.usize(3..=keys.len());
            let mut attrs: Vec<KeyValue> = keys[..n].iter().map(|k| kv(k, Some(i))).collect();
            match rng.u8(0..4) {
                0 => rng.shuffle(&mut attrs),
                1 => attrs[rng.usize(0..n)].key = "z".into(),
                2 => attrs[rng.usize(0..n)].value = None,
                _ => {}
            }
            span.attributes = attrs;
            ss.spans.push(span);
        }
        let bytes = req.encode_to_vec();
        let (wire, decoded) = (spans(&bytes).expect("valid"), convert::spans(&req));
        assert_eq!(wire.items.len(), 200);
        assert!(same(&wire, &decoded), "{:?}\n{:?}", wire.items, decoded.items);
    }

    #[test]
    fn keys_that_are_not_utf8_fail_the_request_even_after_a_remembered_order() {
        // A key is compared as bytes with the remembered keys before it is checked; one that
        // is not UTF-8 must still fail, with a value (after spans that taught the order) or
        // without one. The marker is replaced by as many invalid bytes after encoding.
        for value_less in [false, true] {
            let mut req = request();
            let ss = &mut req.resource_spans[0].scope_spans[0];
            let template = ss.spans[0].clone();
            ss.spans.clear();
            for i in 0..3u8 {
                let mut span = template.clone();
                span.span_id = vec![1, 2, 3, 4, 5, 6, 7, i + 1];
                let last = if i == 2 { "~~~~" } else { "dddd" };
                span.attributes = ["aaaa", "cccc", last]
                    .iter()
                    .map(|k| KeyValue {
                        key: (*k).into(),
                        value: (!(value_less && *k == "~~~~")).then_some(AnyValue { value: Some(any_value::Value::IntValue(1)) }),
                        ..Default::default()
                    })
                    .collect();
                ss.spans.push(span);
            }
            let mut bytes = req.encode_to_vec();
            assert!(spans(&bytes).is_ok_and(|c| c.items.len() == 3), "valid before the damage");
            let at = bytes.windows(4).position(|w| w == b"~~~~").expect("marker");
            bytes[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xff, 0xfe]);
            let error = spans(&bytes).expect_err("a key that is not UTF-8");
            assert!(error.to_string().contains("UTF-8"), "{error}");
            assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_err(), "prost agrees");
        }
    }

    #[test]
    fn plain_key_values_read_as_the_general_reader_reads_them() {
        // The short path must be taken for what encoders write and give what the field
        // walk gives; a layout it does not know is left to the walk.
        let kv = |value: any_value::Value| KeyValue {
            key: "k.e.y".into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        };
        let values = [
            any_value::Value::StringValue("GET".into()),
            any_value::Value::StringValue(String::new()),
            any_value::Value::IntValue(-7),
            any_value::Value::IntValue(1 << 40),
            any_value::Value::BoolValue(true),
            any_value::Value::BoolValue(false),
            any_value::Value::DoubleValue(0.25),
        ];
        for value in values {
            let bytes = kv(value.clone()).encode_to_vec();
            let (key, encoded) = plain_key_value(&bytes).unwrap_or_else(|| panic!("{value:?} is plain"));
            assert_eq!(key, b"k.e.y");
            let short = plain_any_value(encoded).unwrap_or_else(|| panic!("{value:?} is plain")).expect("valid");
            assert_eq!(Some(short), any_value(encoded).expect("valid"), "{value:?}");
        }
        let long = kv(any_value::Value::StringValue("x".repeat(200))).encode_to_vec();
        assert!(plain_key_value(&long).is_none(), "a two-byte length");
        let mut repeated = kv(any_value::Value::IntValue(1)).encode_to_vec();
        repeated.extend_from_slice(&[0x0a, 1, b'z']);
        assert!(plain_key_value(&repeated).is_none(), "a key after the value");
        assert!(plain_any_value(&[0x18, 0x01, 0x18, 0x02]).is_none(), "a repeated field");
        assert!(plain_any_value(&[0x0a, 0x01, 0xff]).is_some_and(|v| v.is_err()), "a string that is not UTF-8");
    }

    #[test]
    fn broken_bytes_are_a_decode_error() {
        let bytes = request().encode_to_vec();
        assert!(spans(&bytes[..bytes.len() - 3]).is_err(), "cut short");
        assert!(spans(&[0x0a, 0x05, 0x01]).is_err(), "length past the end");
        assert!(spans(&[0x08, 0x80]).is_err(), "unfinished varint");
        assert!(spans(&[0x0f]).is_err(), "wire type 7");
        assert!(spans(&[0x09, 1, 2]).is_err(), "short fixed64");
        assert!(spans(&[]).is_ok_and(|c| c.items.is_empty()), "an empty request is valid");
        assert!(spans(&[0xf8, 0xff, 0xff, 0xff, 0x1f, 0x00]).is_err(), "a key past 32 bits");
        // 100,000 nested groups (start-group of field 1) must be an error, not a stack overflow.
        assert!(spans(&vec![0x0b; 100_000]).is_err(), "deeply nested groups");
        assert!(spans(&[0x13, 0x08, 0x01, 0x14]).is_ok(), "a group of an unknown field is skipped");
        assert!(spans(&[0x0b, 0x0c]).is_err(), "a field read as a message cannot be a group");
    }

    /// Property: for any byte string prost decodes, converting the bytes directly gives
    /// exactly what converting the decoded message gives (items, rejections, reasons,
    /// truncations). Mutations of a rich request (bit flips, cuts, inserted bytes, random
    /// bytes) reach the corners; the seed is fixed. Bytes prost rejects may still be
    /// accepted here only when the damage is in a field the collector does not read.
    fn convert_the_same_either_way<R: Message + Default, T: std::fmt::Debug>(
        valid: &R,
        direct: impl Fn(&[u8]) -> Result<Converted<T>, DecodeError>,
        decoded: impl Fn(&R) -> Converted<T>,
    ) {
        let valid = valid.encode_to_vec();
        let mut rng = fastrand::Rng::with_seed(0x7769_7265);
        let (mut agreed, mut rejected_both) = (0, 0);
        for _ in 0..30_000 {
            let bytes = convert::tests::mutated(&valid, &mut rng);
            let wire = direct(&bytes);
            match R::decode(bytes.as_slice()) {
                Ok(req) => {
                    let wire = wire.unwrap_or_else(|e| panic!("prost decodes {bytes:?} but the wire reader says {e}"));
                    let decoded = decoded(&req);
                    assert!(same(&wire, &decoded), "{bytes:?}:\n{:?}\n{:?}", wire.items, decoded.items);
                    agreed += 1;
                }
                Err(_) => rejected_both += usize::from(wire.is_err()),
            }
        }
        assert!(agreed > 1_500 && rejected_both > 3_000, "both outcomes exercised ({agreed} agreed, {rejected_both} rejected)");
    }

    #[test]
    fn mutated_trace_requests_convert_the_same_either_way() {
        convert_the_same_either_way(&request(), spans, convert::spans);
    }

    /// Log records with every kind of body and field, one with an invalid trace ID.
    fn logs_request() -> ExportLogsServiceRequest {
        let trace = request();
        let span = &trace.resource_spans[0].scope_spans[0].spans[0];
        let body = |v: any_value::Value| Some(AnyValue { value: Some(v) });
        let record = LogRecord {
            time_unix_nano: 10,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: body(any_value::Value::StringValue("GET /api <b>200</b>".into())),
            attributes: span.attributes.clone(),
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            ..Default::default()
        };
        let observed = LogRecord {
            observed_time_unix_nano: 20,
            body: body(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue { key: "k".into(), value: body(any_value::Value::IntValue(1)), ..Default::default() }],
            })),
            ..Default::default()
        };
        let invalid = LogRecord { trace_id: vec![1; 5], body: body(any_value::Value::IntValue(3)), ..record.clone() };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: trace.resource_spans[0].resource.clone(),
                scope_logs: vec![ScopeLogs {
                    scope: trace.resource_spans[0].scope_spans[0].scope.clone(),
                    log_records: vec![record, observed, invalid],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn log_requests_convert_as_decoding_then_converting_does() {
        let req = logs_request();
        let (wire, decoded) = (logs(&req.encode_to_vec()).expect("valid"), convert::logs(&req));
        assert_eq!((wire.items.len(), wire.rejected, wire.truncated), (2, 1, 1));
        assert!(same(&wire, &decoded), "{:?}\n{:?}", wire.items, decoded.items);
        assert_eq!((wire.items[1].time_unix_nanos, wire.items[1].body.as_str()), (20, r#"{"k":1}"#));
    }

    #[test]
    fn mutated_log_requests_convert_the_same_either_way() {
        convert_the_same_either_way(&logs_request(), logs, convert::logs);
    }
}
