//! The trace store: spans grouped by trace, with the indexes the Jaeger API needs.
//!
//! Traces are kept in arrival order; when the span budget is exceeded the oldest traces
//! are evicted whole. Services and their operations (by span kind) are indexed for the
//! service and operation lists. Search walks traces newest first and stops at the limit.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use crate::model::{Span, SpanKind, TraceId};

/// One stored trace.
#[derive(Debug, Default)]
struct TraceEntry {
    spans: Vec<Arc<Span>>,
}

/// Search criteria, as the Jaeger API takes them. A trace matches when one of its spans
/// satisfies all of them.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// Service that produced the span.
    pub service: Option<String>,
    /// Span name.
    pub operation: Option<String>,
    /// Span kind.
    pub span_kind: Option<SpanKind>,
    /// Tags that must all match (span attributes, then resource attributes).
    pub tags: Vec<(String, String)>,
    /// Earliest span start, Unix nanoseconds.
    pub start_min: Option<u64>,
    /// Latest span start, Unix nanoseconds.
    pub start_max: Option<u64>,
    /// Shortest span duration, nanoseconds.
    pub duration_min: Option<u64>,
    /// Longest span duration, nanoseconds.
    pub duration_max: Option<u64>,
    /// Most traces to return (after filtering).
    pub limit: usize,
}

impl TraceQuery {
    fn matches(&self, span: &Span) -> bool {
        let duration = span.duration_nanos();
        self.service.as_deref().is_none_or(|s| &**span.service() == s)
            && self.operation.as_deref().is_none_or(|o| span.name == o)
            && self.span_kind.is_none_or(|k| span.kind == k)
            && self.start_min.is_none_or(|t| span.start_unix_nanos >= t)
            && self.start_max.is_none_or(|t| span.start_unix_nanos <= t)
            && self.duration_min.is_none_or(|d| duration >= d)
            && self.duration_max.is_none_or(|d| duration <= d)
            && self.tags.iter().all(|(k, v)| tag_matches(span, k, v))
    }
}

fn tag_matches(span: &Span, key: &str, expected: &str) -> bool {
    match key {
        "error" => {
            let is_error = span.status == crate::model::StatusCode::Error;
            is_error == (expected == "true")
        }
        "span.kind" => span.kind.as_str() == expected,
        _ => span
            .attr(key)
            .or_else(|| crate::model::attr(&span.resource.attributes, key))
            .is_some_and(|v| v.to_text() == expected),
    }
}

/// Spans grouped by trace, bounded by a span budget.
#[derive(Debug)]
pub struct TraceStore {
    traces: HashMap<TraceId, TraceEntry>,
    order: VecDeque<TraceId>,
    /// Each service's operations, with the span kinds seen for each.
    services: BTreeMap<Arc<str>, BTreeMap<String, BTreeSet<SpanKind>>>,
    spans: usize,
    max_spans: usize,
    evicted_spans: u64,
}

impl TraceStore {
    /// An empty store that keeps at most `max_spans` spans.
    pub fn new(max_spans: usize) -> Self {
        Self {
            traces: HashMap::new(),
            order: VecDeque::new(),
            services: BTreeMap::new(),
            spans: 0,
            max_spans: max_spans.max(1),
            evicted_spans: 0,
        }
    }

    /// Adds spans, then evicts the oldest traces beyond the budget.
    pub fn insert(&mut self, spans: impl IntoIterator<Item = Arc<Span>>) {
        for span in spans {
            let ops = match self.services.get_mut(span.service()) {
                Some(ops) => ops,
                None => self.services.entry(span.service().clone()).or_default(),
            };
            match ops.get_mut(span.name.as_str()) {
                Some(kinds) => {
                    kinds.insert(span.kind);
                }
                None => {
                    ops.insert(span.name.clone(), BTreeSet::from([span.kind]));
                }
            }
            let entry = self.traces.entry(span.trace_id).or_insert_with(|| {
                self.order.push_back(span.trace_id);
                TraceEntry::default()
            });
            entry.spans.push(span);
            self.spans += 1;
        }
        while self.spans > self.max_spans {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(entry) = self.traces.remove(&oldest) {
                self.spans -= entry.spans.len();
                self.evicted_spans += entry.spans.len() as u64;
            }
        }
    }

    /// The spans of one trace, ordered by start time.
    pub fn get(&self, id: &TraceId) -> Option<Vec<Arc<Span>>> {
        let entry = self.traces.get(id)?;
        let mut spans = entry.spans.clone();
        spans.sort_by_key(|s| (s.start_unix_nanos, s.span_id));
        Some(spans)
    }

    /// Traces matching `query`, newest first.
    pub fn search(&self, query: &TraceQuery) -> Vec<Vec<Arc<Span>>> {
        let mut found = Vec::new();
        for id in self.order.iter().rev() {
            if found.len() >= query.limit {
                break;
            }
            let Some(entry) = self.traces.get(id) else { continue };
            if entry.spans.iter().any(|s| query.matches(s))
                && let Some(spans) = self.get(id) {
                    found.push(spans);
                }
        }
        found
    }

    /// Every service that sent spans.
    pub fn services(&self) -> Vec<Arc<str>> {
        self.services.keys().cloned().collect()
    }

    /// A service's operations with their span kinds.
    pub fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        self.services
            .get(service)
            .map(|ops| ops.iter().flat_map(|(name, kinds)| kinds.iter().map(|k| (name.clone(), *k))).collect())
            .unwrap_or_default()
    }

    /// Each service's number of distinct operations.
    pub fn operation_counts(&self) -> BTreeMap<Arc<str>, usize> {
        self.services.iter().map(|(s, ops)| (s.clone(), ops.len())).collect()
    }

    /// Spans held.
    pub fn span_count(&self) -> usize {
        self.spans
    }

    /// Traces held.
    pub fn trace_count(&self) -> usize {
        self.traces.len()
    }

    /// Spans evicted so far.
    pub fn evicted_spans(&self) -> u64 {
        self.evicted_spans
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Resource, SpanId, StatusCode, Value};

    /// A span for tests: `trace`, `span`, optional parent, service, kind, start and duration in ms.
    pub fn span(trace: u8, id: u8, parent: Option<u8>, service: &str, kind: SpanKind, start_ms: u64, dur_ms: u64) -> Arc<Span> {
        Arc::new(Span {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            name: format!("op-{id}"),
            kind,
            start_unix_nanos: start_ms * 1_000_000,
            end_unix_nanos: (start_ms + dur_ms) * 1_000_000,
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: vec![("http.response.status_code".into(), Value::Int(200))],
            events: vec![],
            links: vec![],
            resource: Arc::new(Resource { service: service.into(), attributes: vec![] }),
            scope: "test".into(),
        })
    }

    #[test]
    fn groups_by_trace_and_evicts_oldest_whole_traces() {
        let mut store = TraceStore::new(3);
        store.insert([span(1, 1, None, "a", SpanKind::Server, 0, 5), span(1, 2, Some(1), "a", SpanKind::Client, 1, 3)]);
        store.insert([span(2, 3, None, "b", SpanKind::Server, 10, 5)]);
        assert_eq!(store.get(&TraceId([1; 16])).map(|s| s.len()), Some(2));
        store.insert([span(3, 4, None, "b", SpanKind::Server, 20, 5)]);
        assert!(store.get(&TraceId([1; 16])).is_none(), "oldest trace evicted");
        assert_eq!(store.evicted_spans(), 2);
        assert_eq!(store.span_count(), 2);
    }

    #[test]
    fn search_filters_then_limits() {
        let mut store = TraceStore::new(100);
        for t in 1..=5u8 {
            store.insert([span(t, t, None, "a", SpanKind::Server, u64::from(t), u64::from(t) * 10)]);
        }
        let q = TraceQuery { service: Some("a".into()), duration_min: Some(25_000_000), limit: 2, ..Default::default() };
        let found = store.search(&q);
        assert_eq!(found.len(), 2, "limit applies after the filter");
        assert_eq!(found[0][0].trace_id, TraceId([5; 16]), "newest first");
        let q = TraceQuery { service: Some("a".into()), tags: vec![("http.response.status_code".into(), "200".into())], limit: 10, ..Default::default() };
        assert_eq!(store.search(&q).len(), 5);
        let q = TraceQuery { service: Some("nope".into()), limit: 10, ..Default::default() };
        assert!(store.search(&q).is_empty());
    }
}
