//! Derives service-to-service edges from spans.
//!
//! Three sources of evidence, so edges appear whether or not traffic passed a sidecar:
//! 1. **Mesh-reported**: a meshlens sidecar's outbound access-log record names source and
//!    destination workloads in `meshlens.source.*` / `meshlens.destination.*`: one edge, at
//!    once. Access logs cover every request whatever the trace sampling, so the counts are
//!    exact. The inbound record of the same hop is not counted again; an inbound record with
//!    no source (an unmeshed caller) gives `unknown → service`. The sidecars' spans only
//!    mark their hops as counted, so SDK spans around them are not counted twice.
//! 2. **Joined**: any OpenTelemetry SDK's SERVER span whose parent is a CLIENT span of
//!    another service gives `client service → server service`, whichever arrives first.
//! 3. **Unmatched**: a SERVER span whose parent never shows up within the match window
//!    gives `unknown → service`; a CLIENT span no server answers for gives
//!    `service → external host` (from `peer.service` or `server.address`).

use std::{
    collections::HashMap,
    hash::BuildHasherDefault,
    sync::Arc,
};

use meshlens_common::semconv;

use super::fingerprints::Fingerprints;
use crate::lookup::{KeyLengths, Prehashed};
use crate::model::{Attributes, LogRecord, Resource, Span, SpanId, SpanKind, StatusCode, TraceId, Value, attr, intern, shared_str};

/// An attribute's string value, shared with earlier equal names.
fn shared(attributes: &Attributes, key: &str) -> Option<Arc<str>> {
    attr(attributes, key).and_then(Value::as_str).map(shared_str)
}

/// What a node in the topology is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A service that sends telemetry.
    Service,
    /// Callers we know nothing about.
    Unknown,
    /// A destination outside the mesh.
    External,
}

impl NodeKind {
    /// `service`, `unknown` or `external`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Unknown => "unknown",
            Self::External => "external",
        }
    }
}

/// One end of an edge, at the finest grain known (workload and version when reported). Shared:
/// an observation, a span waiting for its other side and a rollup key each hold one pointer
/// to it, and copying it is one reference count, not four. Its hash is computed once, when
/// it is made: the rollups and per-edge metrics look every request's two nodes up, and
/// hashing their four strings each time was ~2 % of ingest. Two references to one node
/// compare by pointer first; to equal nodes made apart, by hash, then by their parts.
#[derive(Clone)]
pub struct NodeRef(Arc<Hashed>);

/// A node and its hash.
struct Hashed {
    hash: u64,
    node: Node,
}

/// Hashes node parts the same way in every thread and for the life of the process.
fn node_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x6d65_7368, 0x6c65_6e73, 0x6e6f_6465, 0x7265_6673)
}

impl PartialEq for NodeRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.node == other.0.node)
    }
}

impl Eq for NodeRef {}

impl std::hash::Hash for NodeRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for NodeRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.node.cmp(&other.0.node)
    }
}

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.node.fmt(f)
    }
}

/// What a [`NodeRef`] names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// Kind.
    pub kind: NodeKind,
    /// Namespace (`service.namespace`), empty when unknown.
    pub namespace: Arc<str>,
    /// Service name (or external host).
    pub service: Arc<str>,
    /// Workload, when known.
    pub workload: Option<Arc<str>>,
    /// Version, when known.
    pub version: Option<Arc<str>>,
}

impl std::ops::Deref for NodeRef {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.0.node
    }
}

impl From<Node> for NodeRef {
    fn from(node: Node) -> Self {
        Self(Arc::new(Hashed { hash: node_hasher().hash_one(&node), node }))
    }
}

/// Most nodes [`NodeRef::mesh`] remembers per thread; past it the memory starts again empty.
const MAX_REMEMBERED_NODES: usize = 4096;

thread_local! {
    /// The nodes made from mesh attributes, by the hash of their parts: the same few
    /// workloads are named on every request, and each is made (its four names looked up
    /// and an allocation) once, then shared.
    static MESH_NODES: std::cell::RefCell<HashMap<u64, NodeRef, BuildHasherDefault<Prehashed>>> =
        std::cell::RefCell::new(HashMap::default());
}

impl NodeRef {
    /// The node for unknown callers.
    pub fn unknown() -> Self {
        thread_local! {
            // Made for nearly every span: one copy per thread, not two interner lookups each.
            static UNKNOWN: NodeRef =
                Node { kind: NodeKind::Unknown, namespace: intern(""), service: intern("unknown"), workload: None, version: None }.into();
        }
        UNKNOWN.with(Clone::clone)
    }

    fn external(host: &str) -> Self {
        Node { kind: NodeKind::External, namespace: intern(""), service: intern(host), workload: None, version: None }.into()
    }

    /// The node a resource describes: its service, namespace, version and workload.
    pub fn of_resource(resource: &crate::model::Resource) -> Self {
        let res = &resource.attributes;
        let text = |k: &str| shared(res, k);
        Node {
            kind: NodeKind::Service,
            namespace: text(semconv::RESOURCE_KEYS.namespace).unwrap_or_else(|| intern("")),
            service: resource.service.clone(),
            workload: text(semconv::RESOURCE_KEYS.workload),
            version: text(semconv::RESOURCE_KEYS.version),
        }
        .into()
    }

    /// The node described by a workload's mesh attributes, if the service is there. A
    /// destination with neither namespace nor workload is one the sidecar found no route to:
    /// it is outside the mesh.
    pub fn of_mesh_attrs(attributes: &Attributes, keys: &semconv::WorkloadKeys) -> Option<Self> {
        let text = |k: &str| attr(attributes, k).and_then(Value::as_str);
        Self::mesh(&[text(keys.service), text(keys.namespace), text(keys.workload), text(keys.version)])
    }

    /// [`NodeRef::of_mesh_attrs`] from the four values, in [`WORKLOAD_PARTS`] order: the
    /// node made earlier from the same values, if this thread remembers it.
    fn mesh(parts: &[Option<&str>; WORKLOAD_PARTS]) -> Option<Self> {
        parts[0]?;
        let hash = node_hasher().hash_one(parts);
        let remembered = MESH_NODES.with(|nodes| nodes.borrow().get(&hash).filter(|node| node.made_of(parts)).cloned());
        if remembered.is_some() {
            return remembered;
        }
        let node = Self::make_mesh(parts)?;
        MESH_NODES.with(|nodes| {
            let mut nodes = nodes.borrow_mut();
            if nodes.len() >= MAX_REMEMBERED_NODES {
                nodes.clear();
            }
            nodes.insert(hash, node.clone());
        });
        Some(node)
    }

    /// Whether [`NodeRef::make_mesh`] makes this node of `parts`.
    fn made_of(&self, [service, namespace, workload, version]: &[Option<&str>; WORKLOAD_PARTS]) -> bool {
        *service == Some(&*self.service)
            && *namespace.unwrap_or("") == *self.namespace
            && *workload == self.workload.as_deref()
            && *version == self.version.as_deref()
    }

    /// The node of [`NodeRef::mesh`], made.
    fn make_mesh(parts: &[Option<&str>; WORKLOAD_PARTS]) -> Option<Self> {
        let [service, namespace, workload, version] = parts.map(|part| part.map(shared_str));
        let mut node = Node {
            kind: NodeKind::Service,
            service: service?,
            namespace: namespace.unwrap_or_else(|| intern("")),
            workload,
            version,
        };
        if node.workload.is_none() && node.namespace.is_empty() {
            node.kind = NodeKind::External;
        }
        Some(node.into())
    }
}

/// One request on an edge.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeObservation {
    /// Caller.
    pub source: NodeRef,
    /// Callee.
    pub destination: NodeRef,
    /// `http`, `grpc`, or the span's `rpc.system` / `network.protocol.name`.
    pub protocol: Arc<str>,
    /// Start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// Latency seen by the caller (or the callee when that is all there is), nanoseconds.
    pub duration_nanos: u64,
    /// Whether the request failed.
    pub error: bool,
    /// Response code (HTTP status, or gRPC status name), if known.
    pub response_code: Arc<str>,
    /// The HTTP status, when one was seen.
    pub http_status: Option<u16>,
    /// The gRPC status, for gRPC calls.
    pub grpc_status: Option<i32>,
    /// Envoy-style response flags reported by a sidecar (`-` when none or unknown).
    pub response_flags: Arc<str>,
    /// Request bytes.
    pub request_bytes: u64,
    /// Response bytes.
    pub response_bytes: u64,
    /// Retries the caller's sidecar made for it (`meshlens.retry.count`).
    pub retries: u64,
    /// A gRPC call's request and response messages, when a sidecar counted them
    /// (`meshlens.grpc.request_messages`, `meshlens.grpc.response_messages`).
    pub messages: Option<(u64, u64)>,
    /// A trace this request belongs to, for exemplars and drill-down.
    pub trace_id: Option<TraceId>,
}

/// The part of a span that edge matching needs.
#[derive(Debug, Clone)]
struct Brief {
    kind: SpanKind,
    node: NodeRef,
    /// Counted already (mesh-reported), so children must not count it again.
    counted: bool,
    observation: EdgeObservation,
    peer: Option<Arc<str>>,
}

/// Service, namespace, workload and version: the parts of a workload's mesh attributes.
const WORKLOAD_PARTS: usize = 4;

/// Where [`Facts`] keeps each attribute edge matching reads.
const HTTP_STATUS: usize = 0;
const GRPC_STATUS: usize = 1;
const CLASSIFICATION: usize = 2;
const PROTOCOL: usize = 3;
const RPC_SYSTEM: usize = 4;
const RESPONSE_FLAGS: usize = 5;
const REQUEST_BYTES: usize = 6;
const RESPONSE_BYTES: usize = 7;
const DURATION_NS: usize = 8;
const DIRECTION: usize = 9;
const EVENT_NAME: usize = 10;
const PEER_SERVICE: usize = 11;
const SERVER_ADDRESS: usize = 12;
const RETRY_COUNT: usize = 13;
const REQUEST_MESSAGES: usize = 14;
const RESPONSE_MESSAGES: usize = 15;
/// The source workload's parts, then the destination's.
const SOURCE: usize = 16;
const DESTINATION: usize = SOURCE + WORKLOAD_PARTS;
const SLOTS: usize = DESTINATION + WORKLOAD_PARTS;

const SOURCE_SERVICE: &str = semconv::SOURCE_KEYS.service;
const SOURCE_NAMESPACE: &str = semconv::SOURCE_KEYS.namespace;
const SOURCE_WORKLOAD: &str = semconv::SOURCE_KEYS.workload;
const SOURCE_VERSION: &str = semconv::SOURCE_KEYS.version;
const DESTINATION_SERVICE: &str = semconv::DESTINATION_KEYS.service;
const DESTINATION_NAMESPACE: &str = semconv::DESTINATION_KEYS.namespace;
const DESTINATION_WORKLOAD: &str = semconv::DESTINATION_KEYS.workload;
const DESTINATION_VERSION: &str = semconv::DESTINATION_KEYS.version;

/// The attribute keys edge matching reads, with their [`Facts`] slots.
const SLOT_KEYS: [(&str, usize); SLOTS] = [
    ("http.response.status_code", HTTP_STATUS),
    ("rpc.grpc.status_code", GRPC_STATUS),
    (semconv::CLASSIFICATION, CLASSIFICATION),
    (semconv::PROTOCOL, PROTOCOL),
    ("rpc.system", RPC_SYSTEM),
    (semconv::RESPONSE_FLAGS, RESPONSE_FLAGS),
    ("http.request.body.size", REQUEST_BYTES),
    ("http.response.body.size", RESPONSE_BYTES),
    (semconv::DURATION_NS, DURATION_NS),
    (semconv::DIRECTION, DIRECTION),
    ("event.name", EVENT_NAME),
    ("peer.service", PEER_SERVICE),
    ("server.address", SERVER_ADDRESS),
    (semconv::RETRY_COUNT, RETRY_COUNT),
    (semconv::GRPC_REQUEST_MESSAGES, REQUEST_MESSAGES),
    (semconv::GRPC_RESPONSE_MESSAGES, RESPONSE_MESSAGES),
    (SOURCE_SERVICE, SOURCE),
    (SOURCE_NAMESPACE, SOURCE + 1),
    (SOURCE_WORKLOAD, SOURCE + 2),
    (SOURCE_VERSION, SOURCE + 3),
    (DESTINATION_SERVICE, DESTINATION),
    (DESTINATION_NAMESPACE, DESTINATION + 1),
    (DESTINATION_WORKLOAD, DESTINATION + 2),
    (DESTINATION_VERSION, DESTINATION + 3),
];

/// The lengths of [`SLOT_KEYS`].
const SLOT_KEY_LENGTHS: KeyLengths = {
    let mut lengths = KeyLengths::NONE;
    let mut i = 0;
    while i < SLOT_KEYS.len() {
        lengths = lengths.with(SLOT_KEYS[i].0);
        i += 1;
    }
    lengths
};

/// The [`Facts`] slot of an attribute key, if edge matching reads it.
fn slot(key: &str) -> Option<usize> {
    if !SLOT_KEY_LENGTHS.may_hold(key) {
        return None;
    }
    SLOT_KEYS.iter().find(|(k, _)| *k == key).map(|(_, slot)| *slot)
}

/// What edge figures are read from: the attributes of a span or an access log that edge
/// matching reads, found in one pass (a lookup per key scanned a span's attributes about a
/// dozen times, ~5 % of ingest CPU in `meshlens bench ingest`). As with [`attr`], the first
/// attribute with a key decides.
struct Facts<'a> {
    values: [Option<&'a Value>; SLOTS],
    status_error: bool,
}

impl<'a> Facts<'a> {
    fn of(attributes: &'a Attributes, status_error: bool) -> Self {
        let mut values = [None; SLOTS];
        for (key, value) in attributes {
            if let Some(i) = slot(key) {
                values[i].get_or_insert(value);
            }
        }
        Self { values, status_error }
    }

    fn text(&self, slot: usize) -> Option<&'a str> {
        self.values[slot].and_then(Value::as_str)
    }

    fn int(&self, slot: usize) -> Option<i64> {
        self.values[slot].and_then(Value::as_i64)
    }

    fn count(&self, slot: usize) -> u64 {
        self.int(slot).map_or(0, |v| v.max(0) as u64)
    }

    /// The workload whose parts start at `side` ([`SOURCE`] or [`DESTINATION`]), as
    /// [`NodeRef::of_mesh_attrs`] gives it.
    fn node(&self, side: usize) -> Option<NodeRef> {
        NodeRef::mesh(&std::array::from_fn(|part| self.text(side + part)))
    }

    /// The peer a CLIENT span names: `peer.service`, or the address it called.
    fn peer(&self) -> Option<Arc<str>> {
        self.text(PEER_SERVICE).or_else(|| self.text(SERVER_ADDRESS)).map(shared_str)
    }

    fn is_error(&self) -> bool {
        self.status_error || self.int(HTTP_STATUS).is_some_and(|c| c >= 500) || self.text(CLASSIFICATION) == Some("failure")
    }

    fn response_code(&self) -> Arc<str> {
        let http = self.int(HTTP_STATUS);
        if let Some(code) = self.int(GRPC_STATUS)
            && (code != 0 || http.is_none())
        {
            return intern(&format!("grpc:{code}"));
        }
        match http {
            // Formatted on the stack: a status code is shared like any other name.
            Some(code) => intern(itoa::Buffer::new().format(code)),
            None if self.status_error => intern("error"),
            None => none_text(),
        }
    }

    fn protocol(&self) -> Arc<str> {
        match self.text(PROTOCOL).or_else(|| self.text(RPC_SYSTEM)) {
            Some(protocol) => intern(protocol),
            None => HTTP.with(Arc::clone),
        }
    }

    fn observation(&self, source: NodeRef, destination: NodeRef, start: u64, duration: u64, trace_id: Option<TraceId>) -> EdgeObservation {
        EdgeObservation {
            source,
            destination,
            protocol: self.protocol(),
            start_unix_nanos: start,
            duration_nanos: duration,
            error: self.is_error(),
            response_code: self.response_code(),
            http_status: self.int(HTTP_STATUS).and_then(|c| u16::try_from(c).ok()),
            grpc_status: self.int(GRPC_STATUS).and_then(|c| i32::try_from(c).ok()),
            response_flags: self.text(RESPONSE_FLAGS).map_or_else(none_text, shared_str),
            request_bytes: self.count(REQUEST_BYTES),
            response_bytes: self.count(RESPONSE_BYTES),
            retries: self.count(RETRY_COUNT),
            messages: self.int(REQUEST_MESSAGES).zip(self.int(RESPONSE_MESSAGES)).map(|(q, r)| (q.max(0) as u64, r.max(0) as u64)),
            trace_id,
        }
    }

    /// The observation of a span between `source` and `destination`.
    fn of_span(&self, span: &Span, source: NodeRef, destination: NodeRef) -> EdgeObservation {
        self.observation(source, destination, span.start_unix_nanos, span.duration_nanos(), Some(span.trace_id))
    }
}

thread_local! {
    // The names most observations take, made once per thread instead of looked up in the
    // interner for each.
    static HTTP: Arc<str> = intern("http");
    static NONE: Arc<str> = intern("-");
    /// The host of a call that names none.
    static EXTERNAL: Arc<str> = intern("external");
}

/// `-`: no response code or response flags.
fn none_text() -> Arc<str> {
    NONE.with(Arc::clone)
}

/// The request a sidecar's access-log record describes, when it is one to count: every
/// outbound record, and inbound records from callers outside the mesh.
pub fn from_access_log(log: &LogRecord) -> Option<EdgeObservation> {
    let facts = Facts::of(&log.attributes, false);
    if facts.text(EVENT_NAME) != Some(semconv::ACCESS_LOG_EVENT) {
        return None;
    }
    let destination = facts.node(DESTINATION)?;
    let source = match (facts.text(DIRECTION)?, facts.node(SOURCE)) {
        ("outbound", Some(source)) => source,
        ("inbound", None) => NodeRef::unknown(),
        _ => return None,
    };
    Some(facts.observation(source, destination, log.time_unix_nanos, facts.count(DURATION_NS), log.trace_id))
}

type Key = (TraceId, SpanId);

/// Span-keyed state, hashed with aHash (SipHash showed in ingest profiles; aHash is keyed
/// per process, so senders cannot pick colliding IDs).
type ByKey<V> = HashMap<Key, V, ahash::RandomState>;

/// Fingerprints kept for each span the matcher may hold waiting (`max_pending`): settled
/// spans are the bulk of a busy mesh's, and a window of them must fit.
const SETTLED_PER_PENDING: usize = 16;

/// Staged CLIENT spans whose table room is kept between requests (a request of a couple of
/// thousand spans; at 184 bytes an entry, the room is under half a MiB).
const STAGED_KEPT: usize = 1024;

/// The matcher's state from one stretch of time, at least a match window long.
#[derive(Debug, Default)]
struct Generation {
    /// SDK CLIENT spans waiting for their SERVER side (boxed: a brief is hundreds of bytes,
    /// and a map's free slots would be as large).
    clients: ByKey<Box<Brief>>,
    /// SERVER spans waiting for their parent, by the parent's key.
    waiting: ByKey<Vec<Brief>>,
    /// Spans whose children add no edge, by a 64-bit fingerprint of their key: a SERVER span
    /// (a child SERVER span is a hop inside its service) and a sidecar's CLIENT span (its
    /// access log counts the hop). Kept so that such children neither wait nor end up as
    /// calls from an unknown caller. These are most spans, so each costs 11–21 bytes here
    /// (an 8-byte slot, the table ⅜ to ¾ full), not a key, an entry and a place in a queue.
    /// An SDK CLIENT span joined to its SERVER side is not kept at all: a request has one
    /// SERVER side.
    settled: Fingerprints,
    /// When it became the current generation, and when it last took a span.
    opened: u64,
    newest: u64,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.waiting.is_empty() && self.settled.is_empty()
    }

    /// Hands its unmatched spans to `retired` once no match can come. It is left empty, its
    /// tables' capacity kept for reuse up to twice what they held, so a burst's tables do not
    /// stay.
    fn close(&mut self, retired: &mut Retired) {
        let held = (self.clients.len(), self.waiting.len(), self.settled.len());
        for (_, children) in self.waiting.drain() {
            retired.children.extend(children.into_iter().filter(|child| !child.counted));
        }
        retired.clients.extend(self.clients.drain().map(|(_, client)| client));
        self.settled.clear();
        self.clients.shrink_to(2 * held.0);
        self.waiting.shrink_to(2 * held.1);
        self.settled.shrink_to(2 * held.2);
    }
}

/// Spans of closed generations whose edges are still to be emitted: emitted a bounded number
/// at a time ([`EdgeDeriver::expire`]), so closing a generation of a million waiting spans
/// does not stall ingest for the second it takes to count them all.
#[derive(Debug, Default)]
struct Retired {
    /// SERVER spans whose parent never came: calls from an unknown caller.
    children: Vec<Brief>,
    /// SDK CLIENT spans whose SERVER side never came: calls to an external host.
    #[expect(clippy::vec_box, reason = "moved here from the map's boxes: a pointer each, not a brief copied")]
    clients: Vec<Box<Brief>>,
    /// The external nodes made so far, by host: a closed generation can hold a million calls
    /// to a few hosts, and a shared node is one reference count where a new one is an
    /// allocation, two interner lookups and a rollup key compared string by string.
    externals: HashMap<Arc<str>, NodeRef, ahash::RandomState>,
}

/// External hosts whose nodes [`Retired`] keeps (past it, it starts over).
const MAX_EXTERNALS: usize = 1024;

impl Retired {
    /// Emits up to `budget` of their edges.
    fn emit(&mut self, budget: usize, out: &mut Vec<EdgeObservation>) {
        let children = budget.min(self.children.len());
        out.extend(self.children.drain(self.children.len() - children..).map(|child| child.observation));
        let clients = (budget - children).min(self.clients.len());
        for client in self.clients.drain(self.clients.len() - clients..) {
            let mut obs = client.observation;
            let host = client.peer.unwrap_or_else(|| EXTERNAL.with(Arc::clone));
            obs.destination = match self.externals.get(&host) {
                Some(node) => node.clone(),
                None => {
                    if self.externals.len() >= MAX_EXTERNALS {
                        self.externals.clear();
                    }
                    let node = NodeRef::external(&host);
                    self.externals.insert(host, node.clone());
                    node
                }
            };
            out.push(obs);
        }
    }
}

/// Matches CLIENT and SERVER spans into edges. State lives in two generations: spans go
/// into the current one; when it is a match window old it becomes the previous one, and
/// the previous one is closed once its newest span is a window old. So every span waits
/// at least the window for its other side, at most about two, with no per-span timer.
/// Waiting spans are bounded by `max_pending`, fingerprints by a multiple of it; what does
/// not fit is counted in `overflowed`.
#[derive(Debug)]
pub struct EdgeDeriver {
    window_nanos: u64,
    max_pending: usize,
    current: Generation,
    previous: Generation,
    retired: Retired,
    /// Keys the fingerprints (per process, like the maps').
    fingerprint: ahash::RandomState,
    /// SDK CLIENT spans received since the last [`EdgeDeriver::expire`] (that is, of the
    /// export request being ingested) and not joined yet. A request that carries both sides
    /// of its hops (a gateway forwarding whole traces) joins most of them here, in a table
    /// small enough to stay in cache, instead of inserting each into the generation's table
    /// of every waiting client (millions of entries at a few hundred thousand spans/s, so a
    /// cache miss per insert and per removal: ~5 % of ingest, perf) and boxing it.
    /// `expire` moves those left into the current generation.
    staged: ByKey<Brief>,
    /// The node of the resource the last span came from: the spans of one export request's
    /// resource entry share it, so it is built once for them.
    resource_node: Option<(Arc<Resource>, NodeRef)>,
    /// Spans dropped from matching (each counted once) because `max_pending` (or the
    /// fingerprints' share of it) was reached; the edges they would have completed are missing.
    pub overflowed: u64,
}

impl EdgeDeriver {
    /// A deriver that waits at least `window_nanos` for the other side of a hop.
    pub fn new(window_nanos: u64, max_pending: usize) -> Self {
        Self {
            window_nanos,
            max_pending,
            current: Generation::default(),
            previous: Generation::default(),
            retired: Retired::default(),
            staged: ByKey::default(),
            fingerprint: ahash::RandomState::new(),
            resource_node: None,
            overflowed: 0,
        }
    }

    fn node_of(&mut self, resource: &Arc<Resource>) -> NodeRef {
        match &self.resource_node {
            Some((last, node)) if Arc::ptr_eq(last, resource) => node.clone(),
            _ => {
                let node = NodeRef::of_resource(resource);
                self.resource_node = Some((resource.clone(), node.clone()));
                node
            }
        }
    }

    /// Learns from one span (received at `now`); pushes the edges it completes into `out`.
    pub fn observe(&mut self, span: &Span, now: u64, out: &mut Vec<EdgeObservation>) {
        if !matches!(span.kind, SpanKind::Client | SpanKind::Server) {
            return;
        }
        if self.current.is_empty() && self.previous.is_empty() {
            self.current.opened = now;
        }
        self.current.newest = self.current.newest.max(now);
        let key = (span.trace_id, span.span_id);
        let node = self.node_of(&span.resource);
        let facts = Facts::of(&span.attributes, span.status == StatusCode::Error);
        match span.kind {
            SpanKind::Client => {
                // A sidecar's CLIENT span: its access log counts the hop; children must not.
                let counted = facts.text(DIRECTION).is_some();
                let source = facts.node(SOURCE).unwrap_or(node);
                let brief = Brief {
                    kind: SpanKind::Client,
                    node: source.clone(),
                    counted,
                    observation: facts.of_span(span, source, NodeRef::unknown()),
                    peer: facts.peer(),
                };
                let children = self.take_waiting(&key);
                for child in &children {
                    self.join(&brief, child, out);
                }
                if brief.counted {
                    if !self.settle(key) {
                        self.overflowed += 1;
                    }
                } else if !children.is_empty() {
                    // Joined: nothing more can come of it.
                } else if self.pending() < self.max_pending {
                    self.staged.insert(key, brief);
                } else {
                    self.overflowed += 1;
                }
            }
            SpanKind::Server => {
                let is_mesh_inbound = facts.text(DIRECTION) == Some("inbound");
                let destination = if is_mesh_inbound { facts.node(DESTINATION).unwrap_or(node) } else { node };
                let brief = Brief {
                    kind: SpanKind::Server,
                    node: destination.clone(),
                    counted: is_mesh_inbound,
                    observation: facts.of_span(span, NodeRef::unknown(), destination),
                    peer: None,
                };
                // SDK spans that arrived before this one and name it as parent are settled:
                // a SERVER parent means the hop was inside one service.
                for child in self.take_waiting(&key) {
                    self.join(&brief, &child, out);
                }
                // A sidecar's inbound span is counted by the access logs; SDK spans by their parent.
                let placed = is_mesh_inbound || self.find_caller(span, brief, out);
                // One count per span, whether its wait, its fingerprint or both found no room.
                if !self.settle(key) || !placed {
                    self.overflowed += 1;
                }
            }
            _ => {}
        }
    }

    /// A SDK SERVER span's edge: joined with its CLIENT parent if that is here, nothing if
    /// the parent is settled, `unknown → service` if it has none; otherwise it waits. False
    /// if it had to wait and there was no room.
    fn find_caller(&mut self, span: &Span, brief: Brief, out: &mut Vec<EdgeObservation>) -> bool {
        let Some(parent) = span.parent_span_id else {
            out.push(brief.observation);
            return true;
        };
        let parent_key = (span.trace_id, parent);
        if let Some(client) = self.staged.remove(&parent_key) {
            self.join(&client, &brief, out);
            return true;
        }
        let client = match self.current.clients.remove(&parent_key) {
            Some(client) => Some(client),
            None => self.previous.clients.remove(&parent_key),
        };
        if let Some(client) = client {
            self.join(&client, &brief, out);
        } else if !self.is_settled(&parent_key) {
            if self.pending() >= self.max_pending {
                return false;
            }
            self.current.waiting.entry(parent_key).or_default().push(brief);
        }
        true
    }

    /// The SERVER spans waiting for `key`, from both generations.
    fn take_waiting(&mut self, key: &Key) -> Vec<Brief> {
        let mut children = self.current.waiting.remove(key).unwrap_or_default();
        if let Some(older) = self.previous.waiting.remove(key) {
            children.extend(older);
        }
        children
    }

    /// Spans waiting for a match, and fingerprints of settled spans.
    pub fn load(&self) -> (usize, usize) {
        (self.pending(), self.current.settled.len() + self.previous.settled.len())
    }

    fn pending(&self) -> usize {
        self.staged.len()
            + self.current.clients.len() + self.current.waiting.len() + self.previous.clients.len() + self.previous.waiting.len()
    }

    /// Reads ahead the settled-set slots of `spans`' SERVER spans, which all settle (see
    /// `Fingerprints::touch`): the set is large and read at random, and its cache miss was
    /// nearly all of settling's time, ~5 % of ingest (perf).
    pub fn read_ahead(&self, spans: &[&Span]) {
        for span in spans.iter().filter(|s| s.kind == SpanKind::Server) {
            self.current.settled.touch(self.fingerprint.hash_one((span.trace_id, span.span_id)));
        }
    }

    /// Marks `key` as a span whose children add no edge; false if there was no room.
    fn settle(&mut self, key: Key) -> bool {
        if self.current.settled.len() + self.previous.settled.len() >= self.max_pending.saturating_mul(SETTLED_PER_PENDING) {
            return false;
        }
        self.current.settled.insert(self.fingerprint.hash_one(key));
        true
    }

    fn is_settled(&self, key: &Key) -> bool {
        let fingerprint = self.fingerprint.hash_one(key);
        self.current.settled.contains(fingerprint) || self.previous.settled.contains(fingerprint)
    }

    /// A parent span and its SERVER child: an edge when the parent is another service's
    /// CLIENT span that no sidecar has counted.
    fn join(&self, parent: &Brief, child: &Brief, out: &mut Vec<EdgeObservation>) {
        if parent.kind != SpanKind::Client || parent.counted || child.counted {
            return;
        }
        if parent.node.service == child.node.service && parent.node.namespace == child.node.namespace {
            return;
        }
        let mut obs = parent.observation.clone();
        obs.destination = child.node.clone();
        obs.error |= child.observation.error;
        if &*obs.response_code == "-" {
            obs.response_code = child.observation.response_code.clone();
            obs.http_status = obs.http_status.or(child.observation.http_status);
            obs.grpc_status = obs.grpc_status.or(child.observation.grpc_status);
        }
        out.push(obs);
    }

    /// Closes out what has waited a whole match window (unknown callers, external callees),
    /// emitting at most `budget` of their edges now and the rest on later calls.
    pub fn expire(&mut self, now: u64, budget: usize, out: &mut Vec<EdgeObservation>) {
        self.place_staged();
        if self.previous.newest.saturating_add(self.window_nanos) <= now {
            self.close_previous();
            if self.current.opened.saturating_add(self.window_nanos) <= now {
                // The current generation is a window old: it becomes the previous one, and
                // the emptied tables (their capacity kept) start the next.
                std::mem::swap(&mut self.previous, &mut self.current);
                self.current.opened = now;
                self.current.newest = now;
                if self.previous.newest.saturating_add(self.window_nanos) <= now {
                    self.close_previous();
                }
            }
        }
        self.retired.emit(budget, out);
    }

    /// Moves the staged CLIENT spans into the current generation (their room was counted
    /// when they were staged).
    fn place_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        self.current.clients.extend(self.staged.drain().map(|(key, brief)| (key, Box::new(brief))));
        // A request's worth is kept for the next (its table stays warm); a burst's is not.
        self.staged.shrink_to(STAGED_KEPT);
    }

    /// Closes the previous generation, unless it is closed already: closing it again would
    /// shrink the tables it keeps for the next generation.
    fn close_previous(&mut self) {
        if !self.previous.is_empty() {
            self.previous.close(&mut self.retired);
        }
    }

    /// Spans of closed generations whose edges are not emitted yet.
    #[cfg(test)]
    fn retired(&self) -> usize {
        self.retired.children.len() + self.retired.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::traces::tests::span;

    #[test]
    fn nodes_made_apart_are_equal_and_hash_alike_and_mesh_nodes_are_shared() {
        let hash = |n: &NodeRef| ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(n);
        let parts = [Some("cart"), Some("shop"), Some("cart-v2"), Some("v2")];
        let (a, b) = (NodeRef::mesh(&parts).expect("node"), NodeRef::mesh(&parts).expect("node"));
        assert!(Arc::ptr_eq(&a.0, &b.0), "the same parts give the node made first");
        let apart = NodeRef::make_mesh(&parts).expect("node");
        assert!(!Arc::ptr_eq(&a.0, &apart.0) && a == apart && hash(&a) == hash(&apart), "equal by their parts");
        let other_thread = std::thread::spawn(move || NodeRef::mesh(&parts)).join().expect("thread").expect("node");
        assert!(a == other_thread && hash(&a) == hash(&other_thread), "hashed alike in every thread");
        for different in [
            [Some("cart"), Some("shop"), Some("cart-v2"), Some("v3")],
            [Some("cart"), Some("shop"), None, Some("v2")],
            [Some("cart"), None, Some("cart-v2"), Some("v2")],
            [Some("carts"), Some("shop"), Some("cart-v2"), Some("v2")],
        ] {
            let node = NodeRef::mesh(&different).expect("node");
            assert!(node != a && node.cmp(&a) != std::cmp::Ordering::Equal, "{different:?}");
            assert!(node.made_of(&different) && !a.made_of(&different));
        }
        assert_eq!(NodeRef::mesh(&[Some("api.example.com"), None, None, None]).expect("node").kind, NodeKind::External);
        assert_eq!(NodeRef::mesh(&[Some("api.example.com"), Some(""), None, None]).expect("node").kind, NodeKind::External);
        assert!(NodeRef::mesh(&[None, Some("shop"), None, None]).is_none(), "no service, no node");
        let mut sorted = [NodeRef::mesh(&[Some("b"), None, None, None]), NodeRef::mesh(&[Some("a"), None, None, None])].map(Option::unwrap);
        sorted.sort();
        assert_eq!(&*sorted[0].service, "a", "ordered by their parts");
    }

    #[test]
    fn every_read_key_has_its_own_slot() {
        let mut slots = Vec::new();
        for (key, want) in SLOT_KEYS {
            assert_eq!(slot(key), Some(want), "{key}");
            slots.push(want);
        }
        slots.sort_unstable();
        assert_eq!(slots, (0..SLOTS).collect::<Vec<_>>());
        for key in ["peer.servicf", "url.path", "bench.attr.10", "server.addresz"] {
            assert_eq!(slot(key), None, "{key}");
        }
    }

    fn with_attrs(s: Arc<Span>, attrs: &[(&str, &str)]) -> Span {
        let mut s = (*s).clone();
        for (k, v) in attrs {
            s.attributes.push(((*k).into(), Value::Str((*v).into())));
        }
        s
    }

    fn edges(spans: &[Span], expire_at: Option<u64>) -> Vec<(String, String)> {
        let mut d = EdgeDeriver::new(1_000, 1_000);
        let mut out = Vec::new();
        for s in spans {
            d.observe(s, 0, &mut out);
        }
        if let Some(t) = expire_at {
            d.expire(t, usize::MAX, &mut out);
        }
        out.iter().map(|o| (o.source.service.to_string(), o.destination.service.to_string())).collect()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.into(), b.into())
    }

    #[test]
    fn sdk_client_and_server_join_in_either_order() {
        let client = (*span(1, 1, None, "a", SpanKind::Client, 0, 10)).clone();
        let server = (*span(1, 2, Some(1), "b", SpanKind::Server, 1, 8)).clone();
        assert_eq!(edges(&[client.clone(), server.clone()], None), vec![pair("a", "b")]);
        assert_eq!(edges(&[server, client], None), vec![pair("a", "b")]);
    }

    #[test]
    fn spans_wait_a_whole_window_across_the_generations() {
        let mut d = EdgeDeriver::new(1_000, 100);
        let mut out = Vec::new();
        let seen = |out: &mut Vec<EdgeObservation>| {
            out.drain(..).map(|o| (o.source.service.to_string(), o.destination.service.to_string())).collect::<Vec<_>>()
        };
        d.observe(&span(1, 1, None, "a", SpanKind::Client, 0, 10), 0, &mut out);
        d.expire(600, usize::MAX, &mut out);
        d.observe(&span(2, 2, Some(9), "c", SpanKind::Server, 0, 10), 900, &mut out);
        // A window after the first span its generation becomes the previous one.
        d.expire(1_000, usize::MAX, &mut out);
        assert!(seen(&mut out).is_empty());
        // The client's SERVER side, later than a window after it, is still matched.
        d.observe(&span(1, 3, Some(1), "b", SpanKind::Server, 1, 8), 1_500, &mut out);
        assert_eq!(seen(&mut out), vec![pair("a", "b")]);
        // The orphan waits a whole window from its own arrival; the matched client is gone.
        d.expire(1_899, usize::MAX, &mut out);
        assert!(seen(&mut out).is_empty());
        d.expire(1_900, usize::MAX, &mut out);
        assert_eq!(seen(&mut out), vec![pair("unknown", "c")]);
        // At 2,000 the generation holding the SERVER span (opened at 1,000) is a window old
        // and becomes the previous one; from there it still settles its SDK child.
        d.expire(2_000, usize::MAX, &mut out);
        assert!(seen(&mut out).is_empty());
        assert_eq!((d.current.settled.len(), d.previous.settled.len()), (0, 1));
        d.observe(&span(1, 4, Some(3), "b", SpanKind::Server, 2, 6), 2_500, &mut out);
        d.expire(10_000, usize::MAX, &mut out);
        assert!(seen(&mut out).is_empty());
        assert_eq!(d.overflowed, 0);
    }

    #[test]
    fn a_burst_leaves_no_large_tables_behind() {
        let mut d = EdgeDeriver::new(1_000, 100_000);
        let mut out = Vec::new();
        for id in 0..50_000u32 {
            let mut s = (*span(1, 1, None, "a", SpanKind::Server, 0, 10)).clone();
            s.span_id = SpanId(u64::from(id).to_be_bytes());
            d.observe(&s, 0, &mut out);
        }
        // The burst's generation goes by, then a quiet one with a single span.
        d.expire(1_000, usize::MAX, &mut out);
        d.expire(2_000, usize::MAX, &mut out);
        d.observe(&span(2, 1, None, "a", SpanKind::Server, 2_000, 10), 2_000, &mut out);
        d.expire(3_000, usize::MAX, &mut out);
        d.expire(4_000, usize::MAX, &mut out);
        let capacity = d.current.settled.capacity() + d.previous.settled.capacity();
        assert!(capacity < 1_000, "{capacity} fingerprint slots kept after the burst");
    }

    #[test]
    fn a_closed_generation_is_emitted_a_budget_at_a_time() {
        let mut d = EdgeDeriver::new(1_000, 1_000);
        let mut out = Vec::new();
        // Ten SDK CLIENT spans with no SERVER side and three SERVER spans with no parent.
        for trace in 0..10 {
            d.observe(&span(trace, 1, None, "a", SpanKind::Client, 0, 10), 0, &mut out);
        }
        for trace in 100..103 {
            d.observe(&span(trace, 2, Some(1), "b", SpanKind::Server, 0, 10), 0, &mut out);
        }
        assert!(out.is_empty());
        // A window on, the generation is closed and four of its edges emitted; four more on
        // the next call, the rest when the budget allows.
        d.expire(1_000, 4, &mut out);
        assert_eq!((out.len(), d.retired()), (4, 9));
        d.expire(1_001, 4, &mut out);
        assert_eq!((out.len(), d.retired()), (8, 5));
        d.expire(1_002, 100, &mut out);
        assert_eq!((out.len(), d.retired()), (13, 0));
        let count = |service: &str| out.iter().filter(|o| &*o.source.service == service || &*o.destination.service == service).count();
        assert_eq!((count("unknown"), count("b"), count("a")), (3, 3, 10));
        let externals: Vec<&NodeRef> = out.iter().map(|o| &o.destination).filter(|d| d.kind == NodeKind::External).collect();
        assert_eq!(externals.len(), 10);
        assert!(externals.iter().all(|d| Arc::ptr_eq(&d.0, &externals[0].0)), "calls to one host share its node");
    }

    #[test]
    fn clients_staged_in_a_request_join_there_or_wait_in_the_generation() {
        let mut d = EdgeDeriver::new(1_000, 2);
        let mut out = Vec::new();
        // One request: two SDK CLIENT spans and the SERVER side of the first. A third CLIENT
        // span finds no room: staged spans count against the bound.
        for trace in 1..=3 {
            d.observe(&span(trace, 1, None, "a", SpanKind::Client, 0, 10), 0, &mut out);
        }
        assert_eq!((d.staged.len(), d.overflowed), (2, 1));
        d.observe(&span(1, 2, Some(1), "b", SpanKind::Server, 1, 8), 0, &mut out);
        assert_eq!((out.len(), d.staged.len()), (1, 1));
        // The request ends: the unjoined one waits in the generation, where the SERVER side
        // sent in a later request finds it.
        d.expire(10, usize::MAX, &mut out);
        assert_eq!((d.staged.len(), d.current.clients.len()), (0, 1));
        d.observe(&span(2, 2, Some(1), "c", SpanKind::Server, 1, 8), 20, &mut out);
        let hops: Vec<_> = out.iter().map(|o| pair(&o.source.service, &o.destination.service)).collect();
        assert_eq!(hops, vec![pair("a", "b"), pair("a", "c")]);
        assert_eq!(d.load().0, 0);
    }

    #[test]
    fn spans_past_the_bounds_are_counted() {
        // One waiting span, sixteen fingerprints.
        let mut d = EdgeDeriver::new(1_000, 1);
        let mut out = Vec::new();
        for trace in 0..20 {
            d.observe(&span(trace, 1, None, "a", SpanKind::Server, 0, 10), 0, &mut out);
        }
        assert_eq!((out.len(), d.overflowed), (20, 4), "root spans are counted; four find no room to settle");
        d.observe(&span(30, 2, Some(1), "b", SpanKind::Server, 0, 10), 0, &mut out);
        d.observe(&span(31, 2, Some(1), "b", SpanKind::Server, 0, 10), 0, &mut out);
        assert_eq!(d.overflowed, 4 + 1 + 1, "neither orphan settles, the second cannot wait either: one count each");
    }

    fn access_log(direction: &str, attrs: &[(&str, &str)], duration_ns: i64) -> LogRecord {
        let mut attributes: Attributes = vec![
            ("event.name".into(), Value::Str("meshlens.access_log".into())),
            ("meshlens.direction".into(), Value::Str(direction.into())),
            ("meshlens.duration_ns".into(), Value::Int(duration_ns)),
            ("http.response.status_code".into(), Value::Int(200)),
        ];
        attributes.extend(attrs.iter().map(|(k, v)| (crate::model::Key::from(*k), Value::Str((*v).into()))));
        LogRecord {
            time_unix_nanos: 1,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: String::new(),
            attributes,
            trace_id: None,
            span_id: None,
            resource: Arc::new(crate::model::Resource { service: "a".into(), attributes: vec![] }),
        }
    }

    #[test]
    fn mesh_hops_are_counted_from_outbound_access_logs_only() {
        let hop = [
            ("meshlens.source.service", "a"),
            ("meshlens.source.namespace", "ns"),
            ("meshlens.destination.service", "b"),
            ("meshlens.destination.namespace", "ns"),
            ("meshlens.destination.workload", "b-v1"),
        ];
        let out = from_access_log(&access_log("outbound", &hop, 7_000)).expect("outbound counts");
        assert_eq!((&*out.source.service, &*out.destination.service, out.duration_nanos, out.retries), ("a", "b", 7_000, 0));
        let mut retried = access_log("outbound", &hop, 7_000);
        retried.attributes.push((semconv::RETRY_COUNT.into(), Value::Int(2)));
        assert_eq!(from_access_log(&retried).map(|o| o.retries), Some(2), "one request, retried twice");
        assert!(from_access_log(&access_log("inbound", &hop, 5_000)).is_none(), "the same hop seen from b");
        let unmeshed = from_access_log(&access_log("inbound", &hop[2..], 5_000)).expect("unmeshed caller");
        assert_eq!(unmeshed.source, NodeRef::unknown());
        let no_route = from_access_log(&access_log("outbound", &[("meshlens.source.service", "a"), ("meshlens.destination.service", "nosuch")], 1))
            .expect("counted");
        assert_eq!(no_route.destination.kind, NodeKind::External);
    }

    #[test]
    fn mesh_spans_are_not_counted_and_shield_their_sdk_children() {
        let client = with_attrs(span(1, 1, None, "a", SpanKind::Client, 0, 10), &[
            ("meshlens.source.service", "a"),
            ("meshlens.destination.service", "b"),
            ("meshlens.direction", "outbound"),
        ]);
        let server = with_attrs(span(1, 2, Some(1), "b", SpanKind::Server, 1, 8), &[
            ("meshlens.source.service", "a"),
            ("meshlens.destination.service", "b"),
            ("meshlens.direction", "inbound"),
        ]);
        // The app behind b's sidecar has an SDK whose SERVER span is a child of the sidecar's.
        let app = (*span(1, 3, Some(2), "b", SpanKind::Server, 2, 6)).clone();
        assert!(edges(&[app.clone(), client.clone(), server.clone()], Some(10_000)).is_empty());
        assert!(edges(&[client, server, app], Some(10_000)).is_empty());
    }

    #[test]
    fn facts_read_each_key_as_a_lookup_by_key_does() {
        let keys = [
            "http.response.status_code", "rpc.grpc.status_code", semconv::CLASSIFICATION, semconv::PROTOCOL, "rpc.system",
            semconv::RESPONSE_FLAGS, "http.request.body.size", "http.response.body.size", semconv::DURATION_NS,
            semconv::DIRECTION, "event.name", "peer.service", "server.address", semconv::RETRY_COUNT,
            semconv::GRPC_REQUEST_MESSAGES, semconv::GRPC_RESPONSE_MESSAGES, SOURCE_SERVICE,
            SOURCE_NAMESPACE, SOURCE_WORKLOAD, SOURCE_VERSION, DESTINATION_SERVICE, DESTINATION_NAMESPACE, DESTINATION_WORKLOAD,
            DESTINATION_VERSION,
        ];
        assert_eq!(keys.len(), SLOTS);
        let mut slots: Vec<usize> = keys.iter().filter_map(|k| slot(k)).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots, (0..SLOTS).collect::<Vec<_>>(), "every key has its own slot");
        // Each key absent, once, or repeated with another type first; other keys around them.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut attributes: Attributes = vec![("other".into(), Value::Str("x".into()))];
            for key in keys {
                for _ in 0..rng.usize(0..3) {
                    let value = match rng.u8(0..3) {
                        0 => Value::Str(format!("v{}", rng.u8(0..9)).into()),
                        1 => Value::Int(rng.i64(-5..600)),
                        _ => Value::Str(String::new().into()),
                    };
                    attributes.push((key.into(), value));
                }
            }
            rng.shuffle(&mut attributes);
            let facts = Facts::of(&attributes, false);
            for key in keys {
                let i = slot(key).expect("slot");
                assert_eq!(facts.values[i], attr(&attributes, key), "{key} in {attributes:?}");
            }
            for (side, keys) in [(SOURCE, semconv::SOURCE_KEYS), (DESTINATION, semconv::DESTINATION_KEYS)] {
                assert_eq!(facts.node(side), NodeRef::of_mesh_attrs(&attributes, &keys));
            }
        }
    }

    #[test]
    fn a_status_code_is_its_own_response_code() {
        let attributes: Attributes = vec![("http.response.status_code".into(), Value::Int(503))];
        assert_eq!(&*Facts::of(&attributes, false).response_code(), "503");
        let grpc: Attributes = vec![("http.response.status_code".into(), Value::Int(200)), ("rpc.grpc.status_code".into(), Value::Int(14))];
        assert_eq!(&*Facts::of(&grpc, false).response_code(), "grpc:14");
        assert_eq!(&*Facts::of(&Attributes::new(), true).response_code(), "error");
        assert_eq!(&*Facts::of(&Attributes::new(), false).response_code(), "-");
    }

    #[test]
    fn a_sidecars_message_counts_of_a_grpc_call_reach_its_observation() {
        let (source, destination) = (NodeRef::unknown(), NodeRef::unknown());
        let counted: Attributes =
            vec![(semconv::GRPC_REQUEST_MESSAGES.into(), Value::Int(1)), (semconv::GRPC_RESPONSE_MESSAGES.into(), Value::Int(40))];
        let observed = Facts::of(&counted, false).observation(source.clone(), destination.clone(), 1, 2, None);
        assert_eq!(observed.messages, Some((1, 40)));
        let uncounted = Facts::of(&Attributes::new(), false).observation(source, destination, 1, 2, None);
        assert_eq!(uncounted.messages, None, "an SDK's span says nothing of messages");
    }

    #[test]
    fn unmatched_spans_become_unknown_callers_and_external_callees() {
        let orphan_server = (*span(1, 2, Some(9), "b", SpanKind::Server, 1, 8)).clone();
        let lone_client = with_attrs(span(2, 3, None, "a", SpanKind::Client, 0, 10), &[("server.address", "api.example.com")]);
        let root_server = (*span(3, 4, None, "c", SpanKind::Server, 0, 10)).clone();
        let mut got = edges(&[orphan_server, lone_client, root_server], Some(10_000));
        got.sort();
        assert_eq!(got, vec![pair("a", "api.example.com"), pair("unknown", "b"), pair("unknown", "c")]);
    }

    #[test]
    fn same_service_parent_is_not_an_edge() {
        let client = (*span(1, 1, None, "a", SpanKind::Client, 0, 10)).clone();
        let server = (*span(1, 2, Some(1), "a", SpanKind::Server, 1, 8)).clone();
        assert!(edges(&[client, server], Some(10_000)).is_empty());
    }
}
