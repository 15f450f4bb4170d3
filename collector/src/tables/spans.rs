//! The `spans` table's rows ([`super::schema::SPANS`]): [`SpanRows`] writes spans into the
//! columns (the attributes queries filter on most get their own dictionary-encoded
//! columns; the rest stay together as one JSON object), and [`StoredSpans`] rebuilds a
//! span from a stored row, for trace lookups.

use std::{borrow::Cow, sync::Arc};

use datafusion::arrow::{
    array::{
        Array, ArrayAccessor, ArrayBuilder, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, Int16Array, Int32Array,
        Int64Array, Int64Builder, StringArray, StringBuilder, TimestampNanosecondArray, TimestampNanosecondBuilder,
        TypedDictionaryArray,
    },
    datatypes::{DataType, Int8Type, Int16Type, Int32Type, Int64Type, TimestampNanosecondType},
};
use meshlens_common::{hex, semconv};

use super::{
    columnar::{NextBatch, RowWriter, Sealed, column_builders, text_like, with_headroom},
    json::{ResourceJson, read_attributes, value_of, write_attributes},
    packed::{Stored, TextColumn, TextPacker},
};
use crate::lookup::KeyLengths;
use crate::model::{Resource, Span, SpanEvent, SpanId, SpanKind, SpanLink, StatusCode, TraceId, Value, key};

use super::dict::Dict;

/// String span attributes that have their own column, by position in [`STRING_COLUMNS`].
const STRING_ATTRIBUTES: [&str; 10] = [
    "http.request.method",
    "http.route",
    semconv::SOURCE_KEYS.workload,
    semconv::SOURCE_KEYS.version,
    semconv::SOURCE_KEYS.namespace,
    semconv::DESTINATION_KEYS.service,
    semconv::DESTINATION_KEYS.workload,
    semconv::DESTINATION_KEYS.version,
    semconv::DESTINATION_KEYS.namespace,
    semconv::RESPONSE_FLAGS,
];

/// The columns of [`STRING_ATTRIBUTES`].
const STRING_COLUMNS: [&str; 10] = [
    "http_method",
    "http_route",
    "source_workload",
    "source_version",
    "source_namespace",
    "destination_service",
    "destination_workload",
    "destination_version",
    "destination_namespace",
    "response_flags",
];

/// The integer attribute with its own column.
const STATUS_CODE: &str = "http.response.status_code";

/// Whether an attribute is kept in its own column rather than in `attributes`: a non-empty
/// string for a string column, an integer for the status code.
fn in_column(key: &str, value: &Value) -> bool {
    match value {
        Value::Str(s) => !s.is_empty() && STRING_ATTRIBUTES.contains(&key),
        Value::Int(_) => key == STATUS_CODE,
        _ => false,
    }
}

/// Where [`ColumnValues`] keeps an attribute: the string columns, then these.
const PEER_SERVICE: usize = STRING_ATTRIBUTES.len();
const SERVER_ADDRESS: usize = PEER_SERVICE + 1;
const STATUS: usize = SERVER_ADDRESS + 1;
/// [`semconv::DESTINATION_KEYS`]' service in [`STRING_ATTRIBUTES`].
const DESTINATION_SERVICE: usize = 5;

/// The attributes of one span that go to their own columns, found in one pass over its
/// attributes (a lookup per column scanned them a dozen times). As [`Span::attr`], the first
/// attribute with a key decides.
struct ColumnValues<'a> {
    strings: [Option<&'a str>; STATUS],
    status_code: Option<i64>,
    /// The positions (the first 64) of the attributes written to their own column, which
    /// `attributes` leaves out: found here, so the JSON writer compares no keys again.
    in_columns: u64,
}

/// The lengths of the keys [`ColumnValues`] reads.
const COLUMN_KEY_LENGTHS: KeyLengths = KeyLengths::of(&STRING_ATTRIBUTES).with(STATUS_CODE).with("peer.service").with("server.address");

impl<'a> ColumnValues<'a> {
    fn of(span: &'a Span) -> Self {
        let mut out = Self { strings: [None; STATUS], status_code: None, in_columns: 0 };
        let mut seen = 0u16;
        for (i, (key, value)) in span.attributes.iter().enumerate() {
            if !COLUMN_KEY_LENGTHS.may_hold(key) {
                continue;
            }
            let slot = match &**key {
                STATUS_CODE => STATUS,
                "peer.service" => PEER_SERVICE,
                "server.address" => SERVER_ADDRESS,
                key => match STRING_ATTRIBUTES.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => continue,
                },
            };
            if seen & (1 << slot) != 0 {
                continue;
            }
            seen |= 1 << slot;
            let own_column = if slot == STATUS {
                out.status_code = value.as_i64();
                matches!(value, Value::Int(_))
            } else {
                out.strings[slot] = value.as_str().filter(|s| !s.is_empty());
                slot < PEER_SERVICE && out.strings[slot].is_some()
            };
            if own_column && i < 64 {
                out.in_columns |= 1 << i;
            }
        }
        out
    }

    /// Whether the attribute at position `i` went to its own column (past the 64th, as
    /// [`in_column`] says). Asked only of the first attribute with a key, as the columns take.
    fn in_column(&self, i: usize, key: &str, value: &Value) -> bool {
        if i < 64 { self.in_columns >> i & 1 == 1 } else { in_column(key, value) }
    }

    /// The span's peer: `peer.service`, the mesh destination service, or the address a
    /// client span called.
    fn peer(&self, kind: SpanKind) -> Option<&'a str> {
        self.strings[PEER_SERVICE]
            .or(self.strings[DESTINATION_SERVICE])
            .or_else(|| (kind == SpanKind::Client).then_some(self.strings[SERVER_ADDRESS]).flatten())
    }
}

/// The builders of the `spans` table.
pub struct SpanRows {
    /// IDs as their bytes (the schema's hex text is made when a copy of the open batch is
    /// read; a sealed batch keeps the bytes).
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent_span_id: FixedSizeBinaryBuilder,
    service: Dict,
    operation: Dict,
    kind: Dict,
    start_time: TimestampNanosecondBuilder,
    duration_ns: Int64Builder,
    status: Dict,
    status_message: StringBuilder,
    http_method: Dict,
    http_route: Dict,
    http_status_code: Int64Builder,
    peer_service: Dict,
    source_workload: Dict,
    source_version: Dict,
    source_namespace: Dict,
    destination_service: Dict,
    destination_workload: Dict,
    destination_version: Dict,
    destination_namespace: Dict,
    response_flags: Dict,
    /// Packed as it is written (the largest column: megabytes of JSON a batch).
    attributes: TextPacker,
    resource: Dict,
    events: StringBuilder,
    links: StringBuilder,
    scope: Dict,
    trace_state: StringBuilder,
    flags: Int64Builder,
    resource_json: ResourceJson,
}

column_builders!(SpanRows {
    trace_id, span_id, parent_span_id, service, operation, kind, start_time, duration_ns, status,
    status_message, http_method, http_route, http_status_code, peer_service, source_workload,
    source_version, source_namespace, destination_service, destination_workload,
    destination_version, destination_namespace, response_flags, attributes, resource, events,
    links, scope, trace_state, flags,
});

impl Default for SpanRows {
    fn default() -> Self {
        Self {
            trace_id: FixedSizeBinaryBuilder::new(TraceId::LEN as i32),
            span_id: FixedSizeBinaryBuilder::new(SpanId::LEN as i32),
            parent_span_id: FixedSizeBinaryBuilder::new(SpanId::LEN as i32),
            service: Dict::new(),
            operation: Dict::new(),
            kind: Dict::new(),
            start_time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            duration_ns: Int64Builder::new(),
            status: Dict::new(),
            status_message: StringBuilder::new(),
            http_method: Dict::new(),
            http_route: Dict::new(),
            http_status_code: Int64Builder::new(),
            peer_service: Dict::new(),
            source_workload: Dict::new(),
            source_version: Dict::new(),
            source_namespace: Dict::new(),
            destination_service: Dict::new(),
            destination_workload: Dict::new(),
            destination_version: Dict::new(),
            destination_namespace: Dict::new(),
            response_flags: Dict::new(),
            attributes: TextPacker::default(),
            resource: Dict::new(),
            events: StringBuilder::new(),
            links: StringBuilder::new(),
            scope: Dict::new(),
            trace_state: StringBuilder::new(),
            flags: Int64Builder::new(),
            resource_json: ResourceJson::default(),
        }
    }
}

impl NextBatch for SpanRows {
    fn next_batch(&self) -> Self {
        let rows = with_headroom(ArrayBuilder::len(&self.trace_id));
        Self {
            trace_id: FixedSizeBinaryBuilder::with_capacity(rows, TraceId::LEN as i32),
            span_id: FixedSizeBinaryBuilder::with_capacity(rows, SpanId::LEN as i32),
            parent_span_id: FixedSizeBinaryBuilder::with_capacity(rows, SpanId::LEN as i32),
            service: Dict::like(&self.service),
            operation: Dict::like(&self.operation),
            kind: Dict::like(&self.kind),
            start_time: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            duration_ns: Int64Builder::with_capacity(rows),
            status: Dict::like(&self.status),
            status_message: text_like(&self.status_message),
            http_method: Dict::like(&self.http_method),
            http_route: Dict::like(&self.http_route),
            http_status_code: Int64Builder::with_capacity(rows),
            peer_service: Dict::like(&self.peer_service),
            source_workload: Dict::like(&self.source_workload),
            source_version: Dict::like(&self.source_version),
            source_namespace: Dict::like(&self.source_namespace),
            destination_service: Dict::like(&self.destination_service),
            destination_workload: Dict::like(&self.destination_workload),
            destination_version: Dict::like(&self.destination_version),
            destination_namespace: Dict::like(&self.destination_namespace),
            response_flags: Dict::like(&self.response_flags),
            attributes: TextPacker::like(&self.attributes),
            resource: Dict::like(&self.resource),
            events: text_like(&self.events),
            links: text_like(&self.links),
            scope: Dict::like(&self.scope),
            trace_state: text_like(&self.trace_state),
            flags: Int64Builder::with_capacity(rows),
            ..Self::default()
        }
    }
}

/// Nanoseconds as Arrow's signed timestamp (saturating far in the future).
pub fn signed(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// Events as a JSON array, or `None` when there are none.
fn events_json(span: &Span) -> Option<String> {
    if span.events.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(64 * span.events.len());
    out.push(b'[');
    for (i, e) in span.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"time_unix_nano\":{},\"name\":", e.time_unix_nanos).as_bytes());
        let _ = serde_json::to_writer(&mut out, &e.name);
        out.extend_from_slice(b",\"attributes\":");
        write_attributes(&mut out, &e.attributes, |_, _, _| false);
        out.push(b'}');
    }
    out.push(b']');
    String::from_utf8(out).ok()
}

/// Links as a JSON array, or `None` when there are none; a link's `trace_state`, `flags`
/// and `attributes` only when it has them.
fn links_json(span: &Span) -> Option<String> {
    if span.links.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(80 * span.links.len());
    out.push(b'[');
    for (i, l) in span.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"trace_id\":\"{}\",\"span_id\":\"{}\"", l.trace_id, l.span_id).as_bytes());
        if !l.trace_state.is_empty() {
            out.extend_from_slice(b",\"trace_state\":");
            let _ = serde_json::to_writer(&mut out, &l.trace_state);
        }
        if l.flags != 0 {
            out.extend_from_slice(format!(",\"flags\":{}", l.flags).as_bytes());
        }
        if !l.attributes.is_empty() {
            out.extend_from_slice(b",\"attributes\":");
            write_attributes(&mut out, &l.attributes, |_, _, _| false);
        }
        out.push(b'}');
    }
    out.push(b']');
    String::from_utf8(out).ok()
}

impl RowWriter<Span> for SpanRows {
    fn append(&mut self, span: &Span) -> u64 {
        // The widths are the builders' own, so these appends cannot fail.
        let _ = self.trace_id.append_value(span.trace_id.0);
        let _ = self.span_id.append_value(span.span_id.0);
        match span.parent_span_id {
            Some(parent) => {
                let _ = self.parent_span_id.append_value(parent.0);
            }
            None => self.parent_span_id.append_null(),
        }
        self.service.append_value(span.service());
        self.operation.append_value(&span.name);
        self.kind.append_value(span.kind.as_str());
        self.start_time.append_value(signed(span.start_unix_nanos));
        self.duration_ns.append_value(signed(span.duration_nanos()));
        self.status.append_value(match span.status {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        });
        self.status_message.append_option(Some(span.status_message.as_str()).filter(|m| !m.is_empty()));
        let found = ColumnValues::of(span);
        self.http_status_code.append_option(found.status_code);
        self.peer_service.append_option(found.peer(span.kind));
        let columns = [
            &mut self.http_method,
            &mut self.http_route,
            &mut self.source_workload,
            &mut self.source_version,
            &mut self.source_namespace,
            &mut self.destination_service,
            &mut self.destination_workload,
            &mut self.destination_version,
            &mut self.destination_namespace,
            &mut self.response_flags,
        ];
        for (column, value) in columns.into_iter().zip(found.strings) {
            column.append_option(value);
        }
        self.attributes.append_attributes(&span.attributes, |i, key, value| found.in_column(i, key, value));
        self.resource.append_value(self.resource_json.of(&span.resource));
        self.events.append_option(events_json(span));
        self.links.append_option(links_json(span));
        self.scope.append_value(&span.scope);
        self.trace_state.append_option(Some(span.trace_state.as_str()).filter(|t| !t.is_empty()));
        self.flags.append_option((span.flags != 0).then_some(i64::from(span.flags)));
        span.start_unix_nanos
    }
}

/// A dictionary column of a sealed batch, with 32-, 16- or 8-bit keys.
enum DictColumn<'a> {
    Wide(TypedDictionaryArray<'a, Int32Type, StringArray>),
    Narrow(TypedDictionaryArray<'a, Int16Type, StringArray>),
    Tiny(TypedDictionaryArray<'a, Int8Type, StringArray>),
}

impl<'a> DictColumn<'a> {
    fn is_valid(&self, row: usize) -> bool {
        match self {
            Self::Wide(d) => d.is_valid(row),
            Self::Narrow(d) => d.is_valid(row),
            Self::Tiny(d) => d.is_valid(row),
        }
    }

    /// Row `row`'s value (empty when null).
    fn value(&self, row: usize) -> &'a str {
        match self {
            Self::Wide(d) => d.value(row),
            Self::Narrow(d) => d.value(row),
            Self::Tiny(d) => d.value(row),
        }
    }
}

/// An ID column of a sealed batch: bytes, or hex text when it could not be packed.
enum IdColumn<'a> {
    Bytes(&'a FixedSizeBinaryArray),
    Hex(&'a StringArray),
}

impl<'a> IdColumn<'a> {
    fn new(stored: &'a Stored) -> Option<Self> {
        match stored {
            Stored::Hex(bytes) => Some(Self::Bytes(bytes)),
            Stored::Plain(array) => array.as_string_opt::<i32>().map(Self::Hex),
            Stored::Text(_) | Stored::SmallKeys(_) | Stored::TinyKeys(_) | Stored::SmallInts(_) => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Hex(h) => h.len(),
        }
    }

    /// Row `row`'s ID bytes (`N` of them), unless null.
    fn get<const N: usize>(&self, row: usize) -> Option<[u8; N]> {
        match self {
            Self::Bytes(b) => b.is_valid(row).then(|| b.value(row).try_into().ok()).flatten(),
            Self::Hex(h) => h.is_valid(row).then(|| hex::decode(h.value(row).as_bytes())).flatten(),
        }
    }

    /// The rows whose ID is `id`.
    fn rows_of<const N: usize>(&self, id: &[u8; N]) -> Vec<usize> {
        match self {
            Self::Bytes(b) => (0..b.len()).filter(|&i| b.value(i) == id).collect(),
            Self::Hex(_) => (0..self.len()).filter(|&i| self.get::<N>(i).as_ref() == Some(id)).collect(),
        }
    }
}

/// The columns of one sealed batch of spans, typed, for reading rows back.
pub struct StoredSpans<'a> {
    trace_id: IdColumn<'a>,
    span_id: IdColumn<'a>,
    parent_span_id: IdColumn<'a>,
    service: DictColumn<'a>,
    operation: DictColumn<'a>,
    kind: DictColumn<'a>,
    start_time: &'a TimestampNanosecondArray,
    duration_ns: IntColumn<'a>,
    status: DictColumn<'a>,
    status_message: TextColumn<'a>,
    http_status_code: IntColumn<'a>,
    strings: [DictColumn<'a>; 10],
    attributes: TextColumn<'a>,
    resource: DictColumn<'a>,
    events: TextColumn<'a>,
    links: TextColumn<'a>,
    scope: DictColumn<'a>,
    trace_state: TextColumn<'a>,
    flags: IntColumn<'a>,
}

fn plain<'a>(sealed: &'a Sealed, name: &str) -> Option<&'a ArrayRef> {
    match sealed.column_by_name(name)? {
        Stored::Plain(array) => Some(array),
        _ => None,
    }
}

fn dict<'a>(sealed: &'a Sealed, name: &str) -> Option<DictColumn<'a>> {
    match sealed.column_by_name(name)? {
        Stored::Plain(array) => array.as_dictionary_opt::<Int32Type>()?.downcast_dict::<StringArray>().map(DictColumn::Wide),
        Stored::SmallKeys(dict) => dict.downcast_dict::<StringArray>().map(DictColumn::Narrow),
        Stored::TinyKeys(dict) => dict.downcast_dict::<StringArray>().map(DictColumn::Tiny),
        _ => None,
    }
}

/// A 64-bit integer column of a sealed batch, read as it is kept (a search reads a row or
/// two of many batches: widening each whole column first would cost more than the reads).
enum IntColumn<'a> {
    Wide(&'a Int64Array),
    Int32(&'a Int32Array),
    Int16(&'a Int16Array),
}

impl IntColumn<'_> {
    fn is_valid(&self, row: usize) -> bool {
        match self {
            Self::Wide(a) => a.is_valid(row),
            Self::Int32(a) => a.is_valid(row),
            Self::Int16(a) => a.is_valid(row),
        }
    }

    fn value(&self, row: usize) -> i64 {
        match self {
            Self::Wide(a) => a.value(row),
            Self::Int32(a) => a.value(row).into(),
            Self::Int16(a) => a.value(row).into(),
        }
    }
}

fn ints<'a>(sealed: &'a Sealed, name: &str) -> Option<IntColumn<'a>> {
    match sealed.column_by_name(name)? {
        Stored::Plain(array) => array.as_primitive_opt::<Int64Type>().map(IntColumn::Wide),
        Stored::SmallInts(array) => match array.data_type() {
            DataType::Int32 => array.as_primitive_opt::<Int32Type>().map(IntColumn::Int32),
            DataType::Int16 => array.as_primitive_opt::<Int16Type>().map(IntColumn::Int16),
            _ => None,
        },
        _ => None,
    }
}

fn text_column<'a>(sealed: &'a Sealed, name: &str) -> Option<TextColumn<'a>> {
    TextColumn::new(sealed.column_by_name(name)?)
}

fn id_column<'a>(sealed: &'a Sealed, name: &str) -> Option<IdColumn<'a>> {
    IdColumn::new(sealed.column_by_name(name)?)
}

fn dict_value<'a>(column: &DictColumn<'a>, row: usize) -> Option<&'a str> {
    column.is_valid(row).then(|| column.value(row))
}

/// The rows of trace `id` in a sealed `spans` batch (reading its ID column only).
pub fn rows_of(sealed: &Sealed, id: &TraceId) -> Vec<usize> {
    id_column(sealed, "trace_id").map(|ids| ids.rows_of(&id.0)).unwrap_or_default()
}

/// The distinct trace IDs of a sealed `spans` batch.
pub fn trace_ids(sealed: &Sealed) -> Vec<TraceId> {
    let Some(ids) = id_column(sealed, "trace_id") else { return Vec::new() };
    let mut out: Vec<TraceId> = (0..ids.len()).filter_map(|row| ids.get(row).map(TraceId)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl<'a> StoredSpans<'a> {
    /// The typed columns of a sealed `spans` batch; `None` if it is not one.
    pub fn new(sealed: &'a Sealed) -> Option<Self> {
        let mut strings = Vec::with_capacity(STRING_COLUMNS.len());
        for name in STRING_COLUMNS {
            strings.push(dict(sealed, name)?);
        }
        Some(Self {
            trace_id: id_column(sealed, "trace_id")?,
            span_id: id_column(sealed, "span_id")?,
            parent_span_id: id_column(sealed, "parent_span_id")?,
            service: dict(sealed, "service")?,
            operation: dict(sealed, "operation")?,
            kind: dict(sealed, "kind")?,
            start_time: plain(sealed, "start_time")?.as_primitive_opt::<TimestampNanosecondType>()?,
            duration_ns: ints(sealed, "duration_ns")?,
            status: dict(sealed, "status")?,
            status_message: text_column(sealed, "status_message")?,
            http_status_code: ints(sealed, "http_status_code")?,
            strings: strings.try_into().ok()?,
            attributes: text_column(sealed, "attributes")?,
            resource: dict(sealed, "resource")?,
            events: text_column(sealed, "events")?,
            links: text_column(sealed, "links")?,
            scope: dict(sealed, "scope")?,
            trace_state: text_column(sealed, "trace_state")?,
            flags: ints(sealed, "flags")?,
        })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.trace_id.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A row's trace ID.
    pub fn trace_id(&self, row: usize) -> Option<TraceId> {
        self.trace_id.get(row).map(TraceId)
    }

    /// A row's service.
    pub fn service(&self, row: usize) -> &'a str {
        self.service.value(row)
    }

    /// A row's span name.
    pub fn operation(&self, row: usize) -> &'a str {
        self.operation.value(row)
    }

    /// A row's kind, as [`SpanKind::as_str`] spells it.
    pub fn kind(&self, row: usize) -> &'a str {
        self.kind.value(row)
    }

    /// A row's start, Unix nanoseconds.
    pub fn start(&self, row: usize) -> u64 {
        self.start_time.value(row).max(0) as u64
    }

    /// A row's duration, nanoseconds.
    pub fn duration(&self, row: usize) -> u64 {
        self.duration_ns.value(row).max(0) as u64
    }

    /// Whether a row's status is error.
    pub fn is_error(&self, row: usize) -> bool {
        self.status.value(row) == "error"
    }

    /// A row's attribute as text, if it has its own column and is set there.
    pub fn column_attribute(&self, row: usize, key: &str) -> Option<String> {
        if key == STATUS_CODE {
            return self.http_status_code.is_valid(row).then(|| self.http_status_code.value(row).to_string());
        }
        let i = STRING_ATTRIBUTES.iter().position(|k| *k == key)?;
        dict_value(&self.strings[i], row).map(str::to_owned)
    }

    /// A row's `attributes` JSON text.
    pub fn attributes_text(&self, row: usize) -> Cow<'_, str> {
        self.attributes.get(row).unwrap_or(Cow::Borrowed("{}"))
    }

    /// A row's `resource` JSON text.
    pub fn resource_text(&self, row: usize) -> &'a str {
        self.resource.value(row)
    }

    /// The span stored in a row, its attributes sorted by key as ingest sorts them.
    /// `resources` shares equal resources between the spans it rebuilds.
    pub fn span(&self, row: usize, resources: &mut Vec<(String, Arc<Resource>)>) -> Option<Span> {
        let trace_id = self.trace_id(row)?;
        let span_id = SpanId(self.span_id.get(row)?);
        let mut attributes = read_attributes(&self.attributes_text(row));
        if self.http_status_code.is_valid(row) && !attributes.iter().any(|(k, _)| &**k == STATUS_CODE) {
            attributes.push((key(STATUS_CODE), Value::Int(self.http_status_code.value(row))));
        }
        for (column, key) in self.strings.iter().zip(STRING_ATTRIBUTES) {
            if let Some(v) = dict_value(column, row)
                && !attributes.iter().any(|(k, _)| &**k == key)
            {
                attributes.push((self::key(key), Value::Str(v.into())));
            }
        }
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
        let resource_text = self.resource.value(row);
        let service = self.service.value(row);
        let resource = match resources.iter().find(|(text, r)| text == resource_text && &*r.service == service) {
            Some((_, r)) => r.clone(),
            None => {
                let r = Arc::new(Resource { service: service.into(), attributes: read_attributes(resource_text) });
                resources.push((resource_text.to_owned(), r.clone()));
                r
            }
        };
        let start = self.start(row);
        Some(Span {
            trace_id,
            span_id,
            parent_span_id: self.parent_span_id.get(row).map(SpanId),
            trace_state: self.trace_state.get(row).unwrap_or_default().into_owned(),
            flags: if self.flags.is_valid(row) { u32::try_from(self.flags.value(row)).unwrap_or_default() } else { 0 },
            name: self.operation.value(row).to_owned(),
            kind: kind_from_str(self.kind.value(row)),
            start_unix_nanos: start,
            end_unix_nanos: start.saturating_add(self.duration(row)),
            status: match self.status.value(row) {
                "ok" => StatusCode::Ok,
                "error" => StatusCode::Error,
                _ => StatusCode::Unset,
            },
            status_message: self.status_message.get(row).unwrap_or_default().into_owned(),
            attributes,
            events: self.events.get(row).map(|text| read_events(&text)).unwrap_or_default(),
            links: self.links.get(row).map(|text| read_links(&text)).unwrap_or_default(),
            resource,
            scope: self.scope.value(row).into(),
        })
    }
}

/// The kind [`SpanKind::as_str`] spells this way.
pub fn kind_from_str(text: &str) -> SpanKind {
    match text {
        "internal" => SpanKind::Internal,
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    }
}

/// The `attributes` object of a stored event or link, taken out of it.
fn attributes_member(item: &mut serde_json::Value) -> Vec<(crate::model::Key, Value)> {
    match item["attributes"].take() {
        serde_json::Value::Object(map) => map.into_iter().filter_map(|(k, v)| Some((key(&k), value_of(v)?))).collect(),
        _ => Vec::new(),
    }
}

fn read_events(text: &str) -> Vec<SpanEvent> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) else { return Vec::new() };
    items
        .into_iter()
        .map(|mut e| SpanEvent {
            time_unix_nanos: e["time_unix_nano"].as_u64().unwrap_or(0),
            name: e["name"].as_str().unwrap_or_default().to_owned(),
            attributes: attributes_member(&mut e),
        })
        .collect()
}

fn read_links(text: &str) -> Vec<SpanLink> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) else { return Vec::new() };
    items
        .into_iter()
        .filter_map(|mut l| {
            Some(SpanLink {
                trace_id: TraceId::parse_hex(l["trace_id"].as_str()?)?,
                span_id: SpanId::parse_hex(l["span_id"].as_str()?)?,
                trace_state: l["trace_state"].as_str().unwrap_or_default().to_owned(),
                flags: l["flags"].as_u64().and_then(|f| u32::try_from(f).ok()).unwrap_or(0),
                attributes: attributes_member(&mut l),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};

    use super::*;
    use crate::{
        model::{Attributes, SpanEvent, SpanKind},
        tables::traces::tests::span,
        tables::{columnar::Table, schema},
    };

    #[test]
    fn spans_fill_every_column_in_schema_order() {
        let mut table: Table<SpanRows> = Table::new(schema::SPANS);
        let mut client = (*span(1, 2, Some(1), "frontend", SpanKind::Client, 10, 5)).clone();
        client.attributes.push(("server.address".into(), Value::Str("reviews".into())));
        client.attributes.push(("http.request.method".into(), Value::Str("GET".into())));
        client.attributes.push(("custom".into(), Value::Str("<b>x</b>".into())));
        client.events.push(SpanEvent { time_unix_nanos: 12, name: "retry".into(), attributes: vec![] });
        let root = span(1, 1, None, "frontend", SpanKind::Server, 9, 20);
        table.extend([&*root, &client], None);
        let parts = table.snapshot();
        assert_eq!(parts.len(), 1);
        let batch = &parts[0].project(None).expect("batch");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column_by_name("trace_id").expect("col").as_string::<i32>().value(0), "01".repeat(16));
        assert!(batch.column_by_name("parent_span_id").expect("col").is_null(0));
        let peer = batch.column_by_name("peer_service").expect("col");
        assert!(peer.is_null(0) && peer.is_valid(1));
        let attrs = batch.column_by_name("attributes").expect("col").as_string::<i32>();
        assert_eq!(attrs.value(1), r#"{"server.address":"reviews","custom":"<b>x</b>"}"#, "arrival order");
        assert!(!attrs.value(0).contains("\"http.response.status_code\""), "column attributes are not repeated");
        let events = batch.column_by_name("events").expect("col").as_string::<i32>();
        assert!(events.is_null(0) && events.value(1).contains("\"retry\""));
        let sealed = table.seal().expect("sealed");
        assert_eq!(table.snapshot().len(), 1, "sealing moves the open rows, it does not copy them");
        assert_eq!(table.rows(), 2);
        // IDs are written as bytes and kept so; read back as the same text.
        let unpacked = sealed.batch().expect("unpacked");
        for id in ["trace_id", "span_id", "parent_span_id"] {
            assert_eq!(unpacked.column_by_name(id).expect("col").as_ref(), batch.column_by_name(id).expect("col").as_ref(), "{id}");
            let Some(Stored::Hex(bytes)) = sealed.column_by_name(id) else { panic!("{id} kept as bytes") };
            assert_eq!(bytes.value_data().len(), 2 * bytes.value_length() as usize, "{id}");
        }
    }

    #[test]
    fn column_values_take_the_first_attribute_of_each_key() {
        assert_eq!(STRING_ATTRIBUTES[DESTINATION_SERVICE], semconv::DESTINATION_KEYS.service);
        let mut s = (*span(1, 2, Some(1), "frontend", SpanKind::Client, 10, 5)).clone();
        s.attributes = vec![
            ("server.address".into(), Value::Str("10.0.0.7".into())),
            ("http.route".into(), Value::Int(3)),
            ("http.route".into(), Value::Str("/later".into())),
            ("http.request.method".into(), Value::Str("GET".into())),
            ("http.request.method".into(), Value::Str("PUT".into())),
            (STATUS_CODE.into(), Value::Str("503".into())),
            ("meshlens.response_flags".into(), Value::Str(String::new().into())),
        ];
        let found = ColumnValues::of(&s);
        assert_eq!(found.strings[0], Some("GET"));
        assert_eq!(found.strings[1], None, "the first http.route is not a string");
        assert_eq!(found.strings[9], None, "empty strings are no value");
        assert_eq!(found.status_code, Some(503));
        assert_eq!(found.peer(SpanKind::Client), Some("10.0.0.7"), "a client's called address");
        assert_eq!(found.peer(SpanKind::Server), None);
        s.attributes.push((semconv::DESTINATION_KEYS.service.into(), Value::Str("reviews".into())));
        assert_eq!(ColumnValues::of(&s).peer(SpanKind::Client), Some("reviews"), "the mesh destination before the address");
        s.attributes.push(("peer.service".into(), Value::Str("ratings".into())));
        assert_eq!(ColumnValues::of(&s).peer(SpanKind::Client), Some("ratings"), "peer.service first");
    }

    #[test]
    fn attributes_left_out_of_the_json_are_those_in_their_own_columns() {
        // Column keys early and past the 64th attribute, repeated, empty, of other types.
        let column_attributes = |at: usize| -> Attributes {
            vec![
                ("http.route".into(), Value::Int(3)),
                ("http.route".into(), Value::Str("/later".into())),
                ("http.request.method".into(), Value::Str("GET".into())),
                ("http.request.method".into(), Value::Str("PUT".into())),
                (STATUS_CODE.into(), Value::Str("503".into())),
                (semconv::RESPONSE_FLAGS.into(), Value::Str(String::new().into())),
                ("peer.service".into(), Value::Str("ratings".into())),
                (semconv::SOURCE_KEYS.workload.into(), Value::Str(format!("w{at}").into())),
            ]
        };
        let mut s = (*span(1, 2, Some(1), "frontend", SpanKind::Client, 10, 5)).clone();
        s.attributes = column_attributes(0);
        s.attributes.extend((0..60).map(|i| (key(&format!("k{i}")), Value::Int(i))));
        s.attributes.push((STATUS_CODE.into(), Value::Int(200)));
        s.attributes.extend(column_attributes(1));
        s.attributes.push((semconv::DESTINATION_KEYS.service.into(), Value::Str("reviews".into())));
        assert!(s.attributes.len() > 64);
        let found = ColumnValues::of(&s);
        let (mut by_position, mut by_key) = (Vec::new(), Vec::new());
        write_attributes(&mut by_position, &s.attributes, |i, key, value| found.in_column(i, key, value));
        write_attributes(&mut by_key, &s.attributes, |_, key, value| in_column(key, value));
        let text = String::from_utf8(by_position).expect("utf-8");
        assert_eq!(text, String::from_utf8(by_key).expect("utf-8"));
        for kept in ["\"http.route\":3", "\"http.response.status_code\":\"503\"", "\"peer.service\"", "\"meshlens.response_flags\":\"\""] {
            assert!(text.contains(kept), "{kept} in {text}");
        }
        for left in ["GET", "w0", "\"reviews\"", "\"http.response.status_code\":200"] {
            assert!(!text.contains(left), "{left} not in {text}");
        }
    }
}
