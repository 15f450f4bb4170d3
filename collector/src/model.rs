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

/// Ordered key/value attributes. Keys are shared ([`Key`]): the same few dozen keys
/// repeat on every span, and one copy of each is enough.
pub type Attributes = Vec<(Key, Value)>;

/// An attribute key. The first [`MAX_STATIC_KEYS`] distinct keys (of at most
/// [`MAX_STATIC_KEY_BYTES`] each) are kept for the life of the process and shared as
/// `&'static str`, which is copied without touching a reference count: a span's twenty keys
/// cost twenty atomic increments and as many decrements as `Arc`s, about a twentieth of
/// ingest. Keys past that bound are each an `Arc` of their own (of a `Box<str>`, a thin
/// pointer, so that a key takes 16 bytes either way).
#[derive(Clone)]
pub enum Key {
    /// A kept key.
    Static(&'static str),
    /// A key past the bound.
    Shared(Arc<Box<str>>),
}

/// Most distinct keys kept for the life of the process (at most 4 MiB of text).
pub const MAX_STATIC_KEYS: usize = 16 * 1024;

/// Longest key kept.
pub const MAX_STATIC_KEY_BYTES: usize = 255;

impl Key {
    /// The key's text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
        }
    }

    /// Where its text lives: equal for clones of one key, and unique among keys alive.
    #[inline]
    pub fn address(&self) -> usize {
        self.as_str().as_ptr() as usize
    }

    /// Whether the two are one key (the same text at the same place).
    #[inline]
    pub fn same(&self, other: &Key) -> bool {
        self.address() == other.address() && self.as_str().len() == other.as_str().len()
    }
}

impl std::ops::Deref for Key {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.same(other) || self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        key(text)
    }
}

type KeySet = std::collections::HashSet<&'static str, ahash::RandomState>;

/// The kept keys, shared by every thread.
static STATIC_KEYS: std::sync::LazyLock<std::sync::Mutex<KeySet>> = std::sync::LazyLock::new(Default::default);

thread_local! {
    /// The kept keys this thread has met: found here without a lock.
    static LOCAL_KEYS: std::cell::RefCell<KeySet> = std::cell::RefCell::new(KeySet::default());
}

/// The shared [`Key`] for `text`.
pub fn key(text: &str) -> Key {
    LOCAL_KEYS.with(|local| {
        let mut local = local.borrow_mut();
        if let Some(&k) = local.get(text) {
            return Key::Static(k);
        }
        let mut kept = STATIC_KEYS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = match kept.get(text) {
            Some(&k) => k,
            None if kept.len() < MAX_STATIC_KEYS && text.len() <= MAX_STATIC_KEY_BYTES => {
                let k: &'static str = Box::leak(Box::from(text));
                kept.insert(k);
                k
            }
            None => return Key::Shared(Arc::new(Box::from(text))),
        };
        local.insert(k);
        Key::Static(k)
    })
}

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

/// The shared copy of a name the topology keeps among few (a namespace, protocol or
/// response code; one copy per thread that derives edges).
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
    attributes.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
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
    /// The W3C `tracestate` of the linked span's context; empty when it has none.
    pub trace_state: String,
    /// OTLP's link flags: the linked context's W3C trace flags in bits 0–7, and in bits 8
    /// and 9 whether its remoteness is known and whether it is remote; 0 when unset.
    pub flags: u32,
    /// The link's attributes.
    pub attributes: Attributes,
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
    /// The W3C `tracestate` of the span's context; empty when it has none.
    pub trace_state: String,
    /// OTLP's span flags: the W3C trace flags in bits 0–7 (`01`: sampled), and in bits 8
    /// and 9 whether the parent's remoteness is known and whether it is remote; 0 when unset.
    pub flags: u32,
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
    /// A sum (counter or up-down counter), cumulative: each point counts since its start.
    Sum,
    /// A sum whose points each count only since the one before (delta temporality).
    DeltaSum,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shared_and_compare_by_text() {
        assert_eq!(std::mem::size_of::<Key>(), 16, "a key is two words, kept or not");
        let (a, b) = (key("http.route"), std::thread::spawn(|| key("http.route")).join().expect("thread"));
        assert!(matches!(a, Key::Static(_)) && a.same(&b), "one kept copy for every thread");
        let long = "k".repeat(MAX_STATIC_KEY_BYTES + 1);
        let (c, d) = (key(&long), key(&long));
        assert!(matches!(c, Key::Shared(_)) && !c.same(&d), "a key past the length bound is its own copy");
        assert_eq!(c, d);
        let shared = Key::Shared(Arc::new(Box::from("http.route")));
        assert!(shared == a && !shared.same(&a));
        let hash = |k: &Key| ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(k);
        assert_eq!(hash(&shared), hash(&a));
        assert_eq!(hash(&a), ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one("http.route"), "hashed as its text (`Borrow<str>`)");
        let mut keys = [key("b"), c.clone(), key("a")];
        keys.sort();
        assert_eq!(keys.iter().map(|k| &k[..1]).collect::<String>(), "abk");
        assert_eq!(format!("{a} {a:?}"), "http.route \"http.route\"");
    }
}
