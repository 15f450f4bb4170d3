//! Derives service-to-service edges from spans.
//!
//! Three sources of evidence, so edges appear whether or not traffic passed a sidecar:
//! 1. **Mesh-reported**: a meshlens sidecar's CLIENT span names source and destination
//!    workloads in `meshlens.source.*` / `meshlens.destination.*`: one edge, at once.
//!    Its inbound SERVER span is the same hop seen from the other side and is not counted
//!    again; an inbound span with no source (an unmeshed caller) gives `unknown → service`.
//! 2. **Joined**: any OpenTelemetry SDK's SERVER span whose parent is a CLIENT span of
//!    another service gives `client service → server service`, whichever arrives first.
//! 3. **Unmatched**: a SERVER span whose parent never shows up within the match window
//!    gives `unknown → service`; a CLIENT span no server answers for gives
//!    `service → external host` (from `peer.service` or `server.address`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use meshlens_common::semconv;

use crate::model::{Span, SpanId, SpanKind, StatusCode, TraceId, Value};

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

/// One end of an edge, at the finest grain known (workload and version when reported).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
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

impl NodeRef {
    /// The node for unknown callers.
    pub fn unknown() -> Self {
        Self { kind: NodeKind::Unknown, namespace: "".into(), service: "unknown".into(), workload: None, version: None }
    }

    fn external(host: &str) -> Self {
        Self { kind: NodeKind::External, namespace: "".into(), service: host.into(), workload: None, version: None }
    }

    /// The node a span's resource describes (plus `meshlens.workload` if the resource has it).
    fn of_span(span: &Span) -> Self {
        let res = &span.resource.attributes;
        let text = |k: &str| crate::model::attr(res, k).and_then(Value::as_str).map(Arc::<str>::from);
        Self {
            kind: NodeKind::Service,
            namespace: text("service.namespace").unwrap_or_else(|| "".into()),
            service: span.service().clone(),
            workload: text(semconv::WORKLOAD),
            version: text("service.version"),
        }
    }

    /// The node described by `<prefix>.*` mesh span attributes, if the service is there.
    fn of_mesh_attrs(span: &Span, prefix: &str) -> Option<Self> {
        let text = |k: &str| span.attr_str(&semconv::field(prefix, k)).map(Arc::<str>::from);
        Some(Self {
            kind: NodeKind::Service,
            service: text("service")?,
            namespace: text("namespace").unwrap_or_else(|| "".into()),
            workload: text("workload"),
            version: text("version"),
        })
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
    /// Request bytes.
    pub request_bytes: u64,
    /// Response bytes.
    pub response_bytes: u64,
    /// A trace this request belongs to, for exemplars and drill-down.
    pub trace_id: TraceId,
}

/// The part of a span that edge matching needs.
#[derive(Debug, Clone)]
struct Brief {
    kind: SpanKind,
    node: NodeRef,
    /// Counted already (mesh-reported), so children must not count it again.
    counted: bool,
    matched: bool,
    observation: EdgeObservation,
    peer: Option<Arc<str>>,
}

fn is_error(span: &Span) -> bool {
    span.status == StatusCode::Error
        || span.attr("http.response.status_code").and_then(Value::as_i64).is_some_and(|c| c >= 500)
        || span.attr(semconv::CLASSIFICATION).and_then(Value::as_str) == Some("failure")
}

fn response_code(span: &Span) -> Arc<str> {
    if let Some(code) = span.attr("rpc.grpc.status_code").and_then(Value::as_i64) {
        if code != 0 || span.attr("http.response.status_code").is_none() {
            return format!("grpc:{code}").into();
        }
    }
    match span.attr("http.response.status_code").and_then(Value::as_i64) {
        Some(code) => code.to_string().into(),
        None if span.status == StatusCode::Error => "error".into(),
        None => "-".into(),
    }
}

fn protocol(span: &Span) -> Arc<str> {
    if let Some(p) = span.attr_str(semconv::PROTOCOL) {
        return p.into();
    }
    if let Some(rpc) = span.attr_str("rpc.system") {
        return rpc.into();
    }
    "http".into()
}

fn int(span: &Span, key: &str) -> u64 {
    span.attr(key).and_then(Value::as_i64).map_or(0, |v| v.max(0) as u64)
}

fn observation(span: &Span, source: NodeRef, destination: NodeRef) -> EdgeObservation {
    EdgeObservation {
        source,
        destination,
        protocol: protocol(span),
        start_unix_nanos: span.start_unix_nanos,
        duration_nanos: span.duration_nanos(),
        error: is_error(span),
        response_code: response_code(span),
        request_bytes: int(span, "http.request.body.size"),
        response_bytes: int(span, "http.response.body.size"),
        trace_id: span.trace_id,
    }
}

type Key = (TraceId, SpanId);

/// Matches CLIENT and SERVER spans into edges; state is bounded by the match window.
#[derive(Debug)]
pub struct EdgeDeriver {
    window_nanos: u64,
    max_pending: usize,
    briefs: HashMap<Key, Brief>,
    waiting: HashMap<Key, Vec<Brief>>,
    expiry: VecDeque<(u64, Key, bool)>,
    /// Pending state dropped because `max_pending` was reached.
    pub overflowed: u64,
}

impl EdgeDeriver {
    /// A deriver that waits up to `window_nanos` for the other side of a hop.
    pub fn new(window_nanos: u64, max_pending: usize) -> Self {
        Self {
            window_nanos,
            max_pending,
            briefs: HashMap::new(),
            waiting: HashMap::new(),
            expiry: VecDeque::new(),
            overflowed: 0,
        }
    }

    /// Learns from one span (received at `now`); pushes the edges it completes into `out`.
    pub fn observe(&mut self, span: &Span, now: u64, out: &mut Vec<EdgeObservation>) {
        let key = (span.trace_id, span.span_id);
        let node = NodeRef::of_span(span);
        match span.kind {
            SpanKind::Client => {
                let mesh_dest = NodeRef::of_mesh_attrs(span, semconv::DESTINATION);
                let counted = mesh_dest.is_some();
                let source = NodeRef::of_mesh_attrs(span, semconv::SOURCE).unwrap_or_else(|| node.clone());
                if let Some(mut dest) = mesh_dest {
                    // A sidecar that found no route knows only the name the app asked for:
                    // that destination is outside the mesh.
                    if dest.workload.is_none() && dest.namespace.is_empty() {
                        dest.kind = NodeKind::External;
                    }
                    out.push(observation(span, source.clone(), dest));
                }
                let peer = span
                    .attr_str("peer.service")
                    .or_else(|| span.attr_str("server.address"))
                    .map(Arc::<str>::from);
                let mut brief = Brief {
                    kind: SpanKind::Client,
                    node: source.clone(),
                    counted,
                    matched: false,
                    observation: observation(span, source, NodeRef::unknown()),
                    peer,
                };
                if let Some(children) = self.waiting.remove(&key) {
                    brief.matched = true;
                    for child in children {
                        self.join(&brief, &child, out);
                    }
                }
                self.remember(key, brief, now);
            }
            SpanKind::Server => {
                let is_mesh_inbound = span.attr_str(semconv::DIRECTION) == Some("inbound");
                let destination = if is_mesh_inbound {
                    NodeRef::of_mesh_attrs(span, semconv::DESTINATION).unwrap_or_else(|| node.clone())
                } else {
                    node.clone()
                };
                let brief = Brief {
                    kind: SpanKind::Server,
                    node: destination.clone(),
                    counted: is_mesh_inbound,
                    matched: false,
                    observation: observation(span, NodeRef::unknown(), destination),
                    peer: None,
                };
                // SDK spans that arrived before this one and name it as parent are settled:
                // a SERVER parent means the hop was inside one service.
                if let Some(children) = self.waiting.remove(&key) {
                    for child in children {
                        self.join(&brief, &child, out);
                    }
                }
                let mesh_source = NodeRef::of_mesh_attrs(span, semconv::SOURCE);
                if is_mesh_inbound {
                    // The caller's sidecar reports this hop; without one the caller is unknown.
                    if mesh_source.is_none() {
                        out.push(brief.observation.clone());
                    }
                } else {
                    match span.parent_span_id {
                        None => out.push(brief.observation.clone()),
                        Some(parent) => {
                            let parent_key = (span.trace_id, parent);
                            if let Some(parent_brief) = self.briefs.get_mut(&parent_key) {
                                parent_brief.matched = true;
                                let parent_brief = parent_brief.clone();
                                self.join(&parent_brief, &brief, out);
                            } else if self.pending() < self.max_pending {
                                self.waiting.entry(parent_key).or_default().push(brief.clone());
                                self.expiry.push_back((now + self.window_nanos, parent_key, true));
                            } else {
                                self.overflowed += 1;
                            }
                        }
                    }
                }
                self.remember(key, brief, now);
            }
            _ => {}
        }
    }

    fn pending(&self) -> usize {
        self.briefs.len() + self.waiting.len()
    }

    fn remember(&mut self, key: Key, brief: Brief, now: u64) {
        if self.pending() >= self.max_pending {
            self.overflowed += 1;
            return;
        }
        self.briefs.insert(key, brief);
        self.expiry.push_back((now + self.window_nanos, key, false));
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
        }
        out.push(obs);
    }

    /// Settles everything older than the match window: unknown callers, external callees.
    pub fn expire(&mut self, now: u64, out: &mut Vec<EdgeObservation>) {
        while let Some(&(deadline, key, waiting)) = self.expiry.front() {
            if deadline > now {
                break;
            }
            self.expiry.pop_front();
            if waiting {
                // SERVER spans whose parent never arrived: their caller is unknown.
                for child in self.waiting.remove(&key).unwrap_or_default() {
                    if !child.counted {
                        out.push(child.observation);
                    }
                }
            } else if let Some(brief) = self.briefs.remove(&key) {
                if brief.kind == SpanKind::Client && !brief.counted && !brief.matched {
                    let mut obs = brief.observation;
                    obs.destination = NodeRef::external(brief.peer.as_deref().unwrap_or("external"));
                    out.push(obs);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::traces::tests::span;

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
            d.expire(t, &mut out);
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
    fn mesh_client_span_counts_once_and_its_server_side_does_not() {
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
        assert_eq!(edges(&[client, server], Some(10_000)), vec![pair("a", "b")]);
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
