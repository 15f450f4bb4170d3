//! The collector's own telemetry types. OTLP is converted into these at the ingest edge
//! ([`crate::ingest::convert`]); the store, topology and APIs never see protobuf.

use std::sync::Arc;

pub use meshlens_common::ids::{SpanId, TraceId};

/// What a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpanKind {
    /// Not specified.
    Unspecified,
    /// Internal operation.
    Internal,
    /// Server side of a remote call.
    Server,
    /// Client side of a remote call.
    Client,
    /// Producer of a message.
    Producer,
    /// Consumer of a message.
    Consumer,
}

impl SpanKind {
    /// From the OTLP enum value; unknown values are `Unspecified`.
    pub fn from_otlp(value: i32) -> Self {
        match value {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
    /// Lower-case name, as Jaeger's `span.kind` tag and `spanKind` query use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Internal => "internal",
            Self::Server => "server",
            Self::Client => "client",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }
}

/// A span's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// Not set.
    Unset,
    /// Explicitly OK.
    Ok,
    /// Failed.
    Error,
}

/// Attribute text: inline up to 24 bytes (most values: methods, routes, hosts, status
/// words), so converting a value neither allocates nor looks anything up.
pub type Text = compact_str::CompactString;

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(Text),
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Double(f64),
    /// Bytes, kept as base-16 text.
    Bytes(Text),
    /// Arrays and maps, kept as JSON text.
    Json(Text),
}

impl Value {
    /// The value as text (for tag matching and display).
    pub fn to_text(&self) -> String {
        match self {
            Self::Str(s) | Self::Bytes(s) | Self::Json(s) => s.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Double(d) => d.to_string(),
        }
    }
    /// The value as JSON: strings, booleans and numbers as themselves, arrays and maps
    /// parsed back from their JSON text.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Str(s) | Self::Bytes(s) => (**s).into(),
            Self::Bool(b) => (*b).into(),
            Self::Int(i) => (*i).into(),
            Self::Double(d) => serde_json::Number::from_f64(*d).map_or(serde_json::Value::Null, Into::into),
            Self::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| (**s).into()),
        }
    }
    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value if it is an integer (or a string holding one).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// Ordered key/value attributes. Keys are shared ([`intern`]): the same few dozen keys
/// repeat on every span, and one copy of each is enough.
pub type Attributes = Vec<(Arc<str>, Value)>;

/// Most distinct keys kept for sharing per thread; beyond it keys are copied.
const MAX_INTERNED: usize = 16 * 1024;

/// A set of shared strings, hashed with aHash (the attribute path hashes twice per
/// attribute; SipHash showed in ingest profiles).
type StringSet = std::collections::HashSet<Arc<str>, ahash::RandomState>;

thread_local! {
    static INTERNED: std::cell::RefCell<StringSet> = std::cell::RefCell::new(StringSet::default());
}

/// Values up to this long are shared by [`shared_str`]; longer ones rarely repeat.
const MAX_SHARED_VALUE: usize = 48;

thread_local! {
    static VALUES: std::cell::RefCell<StringSet> = std::cell::RefCell::new(StringSet::default());
}

/// A shared copy of `value` (node and label names the topology keeps), shared with earlier
/// equal values when short. The set is emptied when it fills, so values that stop
/// repeating do not stay forever.
pub fn shared_str(value: &str) -> Arc<str> {
    if value.len() > MAX_SHARED_VALUE {
        return Arc::from(value);
    }
    VALUES.with(|set| {
        let mut set = set.borrow_mut();
        if let Some(v) = set.get(value) {
            return v.clone();
        }
        if set.len() >= MAX_INTERNED {
            set.clear();
        }
        let v: Arc<str> = Arc::from(value);
        set.insert(v.clone());
        v
    })
}

/// The shared copy of an attribute key (one per thread that converts telemetry).
pub fn intern(key: &str) -> Arc<str> {
    INTERNED.with(|set| {
        let mut set = set.borrow_mut();
        if let Some(k) = set.get(key) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(key);
        if set.len() < MAX_INTERNED {
            set.insert(k.clone());
        }
        k
    })
}

/// Looks up an attribute by key.
pub fn attr<'a>(attributes: &'a Attributes, key: &str) -> Option<&'a Value> {
    attributes.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
}

/// The entity that produced telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `service.name`, or `unknown_service` when absent.
    pub service: Arc<str>,
    /// All resource attributes.
    pub attributes: Attributes,
}

/// A timestamped event inside a span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    /// When, in Unix nanoseconds.
    pub time_unix_nanos: u64,
    /// Event name.
    pub name: String,
    /// Event attributes.
    pub attributes: Attributes,
}

/// A link from a span to another span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanLink {
    /// The linked trace.
    pub trace_id: TraceId,
    /// The linked span.
    pub span_id: SpanId,
}

/// One span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Trace ID.
    pub trace_id: TraceId,
    /// Span ID.
    pub span_id: SpanId,
    /// Parent span ID; `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    /// Operation name.
    pub name: String,
    /// Kind.
    pub kind: SpanKind,
    /// Start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// End, Unix nanoseconds (never before the start).
    pub end_unix_nanos: u64,
    /// Status code.
    pub status: StatusCode,
    /// Status message.
    pub status_message: String,
    /// Span attributes.
    pub attributes: Attributes,
    /// Events.
    pub events: Vec<SpanEvent>,
    /// Links.
    pub links: Vec<SpanLink>,
    /// The producing resource, shared by the spans of one batch.
    pub resource: Arc<Resource>,
    /// The instrumentation scope's name.
    pub scope: Arc<str>,
}

impl Span {
    /// Duration in nanoseconds.
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nanos - self.start_unix_nanos
    }
    /// The producing service.
    pub fn service(&self) -> &Arc<str> {
        &self.resource.service
    }
    /// A span attribute by key.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        attr(&self.attributes, key)
    }
    /// A string span attribute by key.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }
}

/// One log record (application log or access log).
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// When it happened (or was observed), Unix nanoseconds.
    pub time_unix_nanos: u64,
    /// OTLP severity number.
    pub severity_number: i32,
    /// Severity text.
    pub severity_text: String,
    /// The body, as text.
    pub body: String,
    /// Attributes.
    pub attributes: Attributes,
    /// Related trace.
    pub trace_id: Option<TraceId>,
    /// Related span.
    pub span_id: Option<SpanId>,
    /// Producer.
    pub resource: Arc<Resource>,
}

/// What kind of metric a point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A gauge.
    Gauge,
    /// A sum (counter or up-down counter).
    Sum,
    /// An explicit-bucket histogram.
    Histogram,
    /// An exponential histogram.
    ExponentialHistogram,
    /// A summary.
    Summary,
}

/// One metric data point, reduced to what queries use.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// Metric name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Kind.
    pub kind: MetricKind,
    /// Point time, Unix nanoseconds.
    pub time_unix_nanos: u64,
    /// The value: the gauge or sum value, or the histogram's sum.
    pub value: f64,
    /// Observations, for histograms and summaries.
    pub count: u64,
    /// Point attributes.
    pub attributes: Attributes,
    /// Producer.
    pub resource: Arc<Resource>,
}
