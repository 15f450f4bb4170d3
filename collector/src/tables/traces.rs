//! The `spans` table is also the trace store: the Jaeger APIs read traces from it, so a
//! span is kept once, in columns. An index maps each trace (by the first 8 bytes of its
//! ID) to the range of sealed batches that hold its spans, so fetching a trace is a hash
//! lookup and a scan of the ID column of a batch or two.
//! The open batch is read from a copy of its rows, as a sealed batch is ([`Table::open_batch`]):
//! a span is not kept as an object once its row is written, so an accepted span's converted
//! form is freed while it is still in cache, and a search or trace read takes one path.
//!
//! Readers take a [`SpanView`] (shared sealed batches, and the open one copied only when
//! read: a search, or a trace with rows in it) under the lock and read it
//! after releasing the lock, so a slow search never holds up ingest. Search walks the
//! newest spans first, filters on the columns (service, operation, kind, time, duration,
//! then tags) and stops at the limit; the traces it found are then fetched by ID.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use super::{
    columnar::{Sealed, Table},
    json::read_attributes,
    schema,
    spans::{SpanRows, StoredSpans, rows_of, trace_ids},
};
use crate::{
    lookup::same_text,
    model::{Span, SpanKind, TraceId, attr},
};

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
    fn matches_columns(&self, service: &str, operation: &str, kind: &str, start: u64, duration: u64) -> bool {
        self.service.as_deref().is_none_or(|s| service == s)
            && self.operation.as_deref().is_none_or(|o| operation == o)
            && self.span_kind.is_none_or(|k| kind == k.as_str())
            && self.start_min.is_none_or(|t| start >= t)
            && self.start_max.is_none_or(|t| start <= t)
            && self.duration_min.is_none_or(|d| duration >= d)
            && self.duration_max.is_none_or(|d| duration <= d)
    }

    /// Whether a stored row matches.
    fn matches_row(&self, spans: &StoredSpans<'_>, row: usize) -> bool {
        self.matches_columns(spans.service(row), spans.operation(row), spans.kind(row), spans.start(row), spans.duration(row))
            && self.tags.iter().all(|(k, v)| row_tag_matches(spans, row, k, v))
    }

    /// Whether a sealed batch can hold matching rows, from its time range.
    fn may_match(&self, sealed: &Sealed) -> bool {
        self.start_min.is_none_or(|t| sealed.newest_nanos >= t) && self.start_max.is_none_or(|t| sealed.oldest_nanos <= t)
    }
}

fn row_tag_matches(spans: &StoredSpans<'_>, row: usize, key: &str, expected: &str) -> bool {
    match key {
        "error" => spans.is_error(row) == (expected == "true"),
        "span.kind" => spans.kind(row) == expected,
        _ => {
            if let Some(v) = spans.column_attribute(row, key) {
                return v == expected;
            }
            // Cheap pre-check before parsing: the key must appear in one of the objects.
            let (attributes, resource) = (spans.attributes_text(row), spans.resource_text(row));
            let found = |text: &str| {
                text.contains(key).then(|| attr(&read_attributes(text), key).map(|v| v.to_text())).flatten()
            };
            found(&attributes).or_else(|| found(resource)).is_some_and(|v| v == expected)
        }
    }
}

/// The `spans` table with trace lookups and the service/operation index.
#[derive(Debug)]
pub struct SpanTable {
    table: Table<SpanRows>,
    /// The index key of each of the open batch's rows: a trace read copies the open batch
    /// only when it holds one of the trace's rows.
    open_ids: Vec<u64>,
    /// Each service's operations, with the span kinds seen for each.
    services: BTreeMap<Arc<str>, BTreeMap<String, BTreeSet<SpanKind>>>,
    /// The (service, operation, kind)s indexed most recently: most spans repeat one of them
    /// and skip the index's lookups (string comparisons down two trees).
    recent: Vec<(Box<str>, Box<str>, SpanKind)>,
    /// The entry of `recent` replaced next.
    recent_next: usize,
    /// Each trace's first and last sealed batch (sequence numbers), by ID prefix.
    batches_of: HashMap<u64, (u64, u64)>,
}

impl Default for SpanTable {
    fn default() -> Self {
        Self {
            table: Table::new(schema::SPANS),
            open_ids: Vec::new(),
            services: BTreeMap::new(),
            recent: Vec::new(),
            recent_next: 0,
            batches_of: HashMap::new(),
        }
    }
}

/// How many (service, operation, kind)s [`SpanTable`] remembers having indexed.
const RECENTLY_INDEXED: usize = 8;

/// The index key of a trace: the first 8 bytes of its ID.
fn prefix(id: &TraceId) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(first)
}

/// The distinct index keys of a sealed batch's rows.
fn prefixes(sealed: &Sealed) -> Vec<u64> {
    let mut out: Vec<u64> = trace_ids(sealed).iter().map(prefix).collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl SpanTable {
    /// Appends the spans of one journal record (`record`, when journaled); returns the batch
    /// this sealed, if any.
    pub fn insert<S: Borrow<Span>>(&mut self, spans: &[S], record: Option<u64>) -> Option<Sealed> {
        for span in spans {
            let span = span.borrow();
            self.index(span.service(), &span.name, span.kind);
            self.open_ids.push(prefix(&span.trace_id));
        }
        let sealed = self.table.extend(spans.iter().map(Borrow::borrow), record);
        if let Some(sealed) = &sealed {
            self.open_ids.clear();
            self.index_batch(sealed);
        }
        sealed
    }

    fn index_batch(&mut self, sealed: &Sealed) {
        for key in prefixes(sealed) {
            let range = self.batches_of.entry(key).or_insert((sealed.seq, sealed.seq));
            *range = (range.0.min(sealed.seq), range.1.max(sealed.seq));
        }
    }

    fn unindex_batch(&mut self, sealed: &Sealed) {
        for key in prefixes(sealed) {
            if let Some(range) = self.batches_of.get_mut(&key) {
                if range.1 <= sealed.seq {
                    self.batches_of.remove(&key);
                } else if range.0 <= sealed.seq {
                    range.0 = sealed.seq + 1;
                }
            }
        }
    }

    /// Removes the sealed batches whose newest row is older than `cutoff_nanos`.
    pub fn evict_older_than(&mut self, cutoff_nanos: u64) -> Vec<Sealed> {
        let evicted = self.table.evict_older_than(cutoff_nanos);
        for sealed in &evicted {
            self.unindex_batch(sealed);
        }
        evicted
    }

    /// Removes the oldest sealed batch.
    pub fn pop_oldest(&mut self) -> Option<Sealed> {
        let sealed = self.table.pop_oldest()?;
        self.unindex_batch(&sealed);
        Some(sealed)
    }

    fn index(&mut self, service: &str, operation: &str, kind: SpanKind) {
        let seen = |(s, o, k): &(Box<str>, Box<str>, SpanKind)| {
            *k == kind && same_text(o.as_bytes(), operation.as_bytes()) && same_text(s.as_bytes(), service.as_bytes())
        };
        if self.recent.iter().any(seen) {
            return;
        }
        let remembered = (Box::from(service), Box::from(operation), kind);
        if self.recent.len() < RECENTLY_INDEXED {
            self.recent.push(remembered);
        } else {
            self.recent[self.recent_next] = remembered;
            self.recent_next = (self.recent_next + 1) % RECENTLY_INDEXED;
        }
        let ops = match self.services.get_mut(service) {
            Some(ops) => ops,
            None => self.services.entry(Arc::from(service)).or_default(),
        };
        match ops.get_mut(operation) {
            Some(kinds) => {
                kinds.insert(kind);
            }
            None => {
                ops.insert(operation.to_owned(), BTreeSet::from([kind]));
            }
        }
    }

    /// Seals the open batch; returns it.
    pub fn seal(&mut self) -> Option<Sealed> {
        self.open_ids.clear();
        let sealed = self.table.seal();
        if let Some(sealed) = &sealed {
            self.index_batch(sealed);
        }
        sealed
    }

    /// Adds a batch read back from a segment (as the newest sealed batch), indexing its
    /// services and operations.
    pub fn restore(&mut self, sealed: Sealed) {
        if let Some(stored) = StoredSpans::new(&sealed) {
            for row in 0..stored.len() {
                self.index(stored.service(row), stored.operation(row), super::spans::kind_from_str(stored.kind(row)));
            }
        }
        self.index_batch(&sealed);
        self.table.push_sealed(sealed);
    }

    /// The columnar table (for SQL snapshots and sizes).
    pub fn table(&self) -> &Table<SpanRows> {
        &self.table
    }

    /// What readers search: shared batches and a copy of the open one.
    pub fn view(&self) -> SpanView {
        SpanView { sealed: self.table.sealed().cloned().collect(), open: self.table.open_batch() }
    }

    /// What reading the traces `ids` needs: only the batches that hold them, and a copy of
    /// the open batch if it holds them.
    pub fn traces(&self, ids: &[TraceId]) -> SpanView {
        let mut seqs: Vec<u64> = Vec::new();
        for id in ids {
            if let Some(&(first, last)) = self.batches_of.get(&prefix(id)) {
                seqs.extend(first..=last);
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        let sealed = seqs.iter().filter_map(|seq| self.table.sealed_by_seq(*seq)).cloned().collect();
        let keys: Vec<u64> = ids.iter().map(prefix).collect();
        let open = self.open_ids.iter().any(|key| keys.contains(key)).then(|| self.table.open_batch()).flatten();
        SpanView { sealed, open }
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
        self.table.rows()
    }
}

/// A consistent set of spans to read, taken from a [`SpanTable`].
#[derive(Debug)]
pub struct SpanView {
    sealed: Vec<Sealed>,
    /// A copy of the open batch, when it is read.
    open: Option<Sealed>,
}

impl SpanView {
    /// The spans of one trace, ordered by start time.
    pub fn get(&self, id: &TraceId) -> Option<Vec<Arc<Span>>> {
        let mut resources = Vec::new();
        let mut spans: Vec<Arc<Span>> = Vec::new();
        for sealed in self.sealed.iter().chain(&self.open) {
            // Read the ID column alone first: a full view holds many batches without the trace.
            let rows = rows_of(sealed, id);
            if rows.is_empty() {
                continue;
            }
            let Some(stored) = StoredSpans::new(sealed) else { continue };
            for row in rows {
                if let Some(span) = stored.span(row, &mut resources) {
                    spans.push(Arc::new(span));
                }
            }
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|s| (s.start_unix_nanos, s.span_id));
        Some(spans)
    }

    /// The IDs of the traces matching `query`, the most recently active first (fetch them
    /// with [`SpanTable::traces`]).
    pub fn search(&self, query: &TraceQuery) -> Vec<TraceId> {
        let mut ids: Vec<TraceId> = Vec::new();
        let mut seen: HashSet<TraceId> = HashSet::new();
        for sealed in self.open.iter().chain(self.sealed.iter().rev()) {
            if ids.len() >= query.limit {
                break;
            }
            if !query.may_match(sealed) {
                continue;
            }
            let Some(stored) = StoredSpans::new(sealed) else { continue };
            let mut hits: Vec<(u64, usize)> =
                (0..stored.len()).filter(|&row| query.matches_row(&stored, row)).map(|row| (stored.start(row), row)).collect();
            hits.sort_unstable_by(|a, b| b.cmp(a));
            for (_, row) in hits {
                if ids.len() >= query.limit {
                    break;
                }
                if let Some(id) = stored.trace_id(row)
                    && seen.insert(id)
                {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        model::{Resource, SpanEvent, SpanId, SpanLink, StatusCode, Value},
        tables::columnar::SEAL_ROWS,
    };

    /// A span for tests: `trace`, `span`, optional parent, service, kind, start and duration in ms.
    pub fn span(trace: u8, id: u8, parent: Option<u8>, service: &str, kind: SpanKind, start_ms: u64, dur_ms: u64) -> Arc<Span> {
        Arc::new(Span {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            trace_state: String::new(),
            flags: 0,
            name: format!("op-{id}"),
            kind,
            start_unix_nanos: start_ms * 1_000_000,
            end_unix_nanos: (start_ms + dur_ms) * 1_000_000,
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: vec![("http.response.status_code".into(), Value::Int(200))],
            events: vec![],
            links: vec![],
            resource: Arc::new(Resource { service: service.into(), attributes: vec![("service.name".into(), Value::Str(service.into()))] }),
            scope: "test".into(),
        })
    }

    /// A span with every field set, in trace `trace`.
    fn rich(trace: u8, id: u8) -> Span {
        let mut s = (*span(trace, id, Some(1), "checkout", SpanKind::Client, 100, 7)).clone();
        s.status = StatusCode::Error;
        s.status_message = "upstream reset".into();
        s.attributes = vec![
            ("http.request.method".into(), Value::Str("POST".into())),
            ("custom".into(), Value::Str("<b>x</b>".into())),
            ("http.response.status_code".into(), Value::Int(503)),
            ("retries".into(), Value::Int(2)),
            ("peer.service".into(), Value::Str("payments".into())),
            ("meshlens.destination.workload".into(), Value::Str("payments-v1".into())),
        ];
        s.events = vec![SpanEvent { time_unix_nanos: 101, name: "retry".into(), attributes: vec![("attempt".into(), Value::Int(1))] }];
        s.links = vec![
            SpanLink { trace_id: TraceId([9; 16]), span_id: SpanId([9; 8]), trace_state: String::new(), flags: 0, attributes: vec![] },
            SpanLink {
                trace_id: TraceId([8; 16]),
                span_id: SpanId([8; 8]),
                trace_state: "congo=\"q\"".into(),
                flags: 0x301,
                attributes: vec![("batch".into(), Value::Int(3)), ("queue".into(), Value::Str("<orders>".into()))],
            },
        ];
        (s.trace_state, s.flags) = ("ot=th:c,congo=t61rcWkgMzE".into(), 0x301);
        s
    }

    fn table_with(spans: impl IntoIterator<Item = Arc<Span>>) -> SpanTable {
        let mut table = SpanTable::default();
        table.insert(&spans.into_iter().collect::<Vec<_>>(), None);
        table
    }

    #[test]
    fn the_index_holds_every_service_operation_and_kind_however_often_they_repeat() {
        // More combinations than are remembered as recent, each seen many times, interleaved.
        let mut spans = Vec::new();
        for round in 0..5u8 {
            for id in 0..12u8 {
                let kind = if id % 2 == 0 { SpanKind::Server } else { SpanKind::Client };
                spans.push(span(round, id, None, ["web", "cart", "web-api"][usize::from(id % 3)], kind, 1, 1));
            }
        }
        spans.push(span(9, 0, None, "web", SpanKind::Client, 1, 1));
        let table = table_with(spans);
        assert_eq!(table.services().iter().map(|s| &**s).collect::<Vec<_>>(), ["cart", "web", "web-api"]);
        let web = table.operations("web");
        let want: Vec<(String, SpanKind)> = vec![
            ("op-0".into(), SpanKind::Server),
            ("op-0".into(), SpanKind::Client),
            ("op-3".into(), SpanKind::Client),
            ("op-6".into(), SpanKind::Server),
            ("op-9".into(), SpanKind::Client),
        ];
        let mut sorted_web = web.clone();
        sorted_web.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.as_str().cmp(b.1.as_str())));
        let mut sorted_want = want;
        sorted_want.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.as_str().cmp(b.1.as_str())));
        assert_eq!(sorted_web, sorted_want);
        assert_eq!(table.operations("cart").len(), 4);
    }

    #[test]
    fn a_sealed_span_reads_back_as_it_went_in() {
        let original = rich(3, 2);
        let mut table = table_with([Arc::new(original.clone())]);
        let mut expected = original;
        expected.attributes.sort_by(|a, b| a.0.cmp(&b.0));
        let open = table.view().get(&TraceId([3; 16])).expect("open trace");
        assert_eq!(*open[0], expected, "as ingest gives it: attributes sorted by key");
        table.seal();
        let back = table.view().get(&TraceId([3; 16])).expect("sealed trace");
        assert_eq!(*back[0], expected, "sealed, the same");
        assert!(table.view().get(&TraceId([4; 16])).is_none(), "unknown trace");
    }

    #[test]
    fn traces_are_found_across_sealed_batches_and_the_open_one() {
        assert_eq!(schema::SPANS[0].name, "trace_id", "lookups read the first column");
        let mut spans = Vec::new();
        for i in 0..(SEAL_ROWS + 10) {
            let trace = (i % 200) as u8 + 1;
            spans.push(span(trace, (i % 250) as u8 + 1, None, "a", SpanKind::Server, i as u64, 1));
        }
        let rest = spans.split_off(SEAL_ROWS);
        let mut table = table_with(spans);
        assert!(table.insert(&rest, None).is_none(), "the second call leaves an open batch");
        assert_eq!(table.table().sealed().count(), 1);
        assert_eq!(table.open_ids.len(), 10);
        let id = TraceId([2; 16]);
        let view = table.traces(&[id]);
        assert_eq!((view.sealed.len(), view.open.is_some()), (1, true), "only the batch that holds the trace, and the open one");
        let other = TraceId([150; 16]);
        assert!(table.traces(&[other]).open.is_none(), "the open batch is not copied for a trace it does not hold");
        let trace = view.get(&id).expect("trace 2");
        assert_eq!(table.view().get(&id), Some(trace.clone()), "the index finds what a full scan finds");
        let expected = (0..SEAL_ROWS + 10).filter(|i| i % 200 == 1).count();
        assert_eq!(trace.len(), expected);
        assert!(trace.windows(2).all(|w| w[0].start_unix_nanos <= w[1].start_unix_nanos), "ordered by start");
        assert_eq!(table.span_count(), SEAL_ROWS + 10);
        assert!(table.traces(&[TraceId([201; 16])]).sealed.is_empty(), "an unknown trace reads no batch");
        assert!(table.pop_oldest().is_some());
        assert!(table.batches_of.is_empty(), "evicting the batch drops its traces from the index");
        assert_eq!(table.traces(&[id]).get(&id).map(|t| t.len()), Some(1), "the open span is left");
    }

    #[test]
    fn search_filters_then_limits_newest_first() {
        for sealed in [false, true] {
            let mut table = table_with((1..=5u8).map(|t| span(t, t, None, "a", SpanKind::Server, u64::from(t), u64::from(t) * 10)));
            table.insert(&[rich(6, 6)], None);
            if sealed {
                table.seal();
            }
            let view = table.view();
            let q = TraceQuery { service: Some("a".into()), duration_min: Some(25_000_000), limit: 2, ..Default::default() };
            let found = view.search(&q);
            assert_eq!(found.len(), 2, "limit applies after the filter (sealed: {sealed})");
            assert_eq!(found[0], TraceId([5; 16]), "newest first");
            let q = TraceQuery { service: Some("a".into()), tags: vec![("http.response.status_code".into(), "200".into())], limit: 10, ..Default::default() };
            assert_eq!(view.search(&q).len(), 5);
            let q = TraceQuery { service: Some("nope".into()), limit: 10, ..Default::default() };
            assert!(view.search(&q).is_empty());
            for (key, value, hits) in [
                ("custom", "<b>x</b>", 1),
                ("retries", "2", 1),
                ("retries", "3", 0),
                ("error", "true", 1),
                ("span.kind", "client", 1),
                ("meshlens.destination.workload", "payments-v1", 1),
                ("service.name", "checkout", 1),
            ] {
                let q = TraceQuery { service: Some("checkout".into()), tags: vec![(key.into(), value.into())], limit: 10, ..Default::default() };
                assert_eq!(view.search(&q).len(), hits, "{key}={value} (sealed: {sealed})");
            }
            let q = TraceQuery { start_min: Some(50_000_000), limit: 10, ..Default::default() };
            assert_eq!(view.search(&q).len(), 1, "time bounds");
        }
    }
}
