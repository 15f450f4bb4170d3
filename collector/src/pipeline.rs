//! The collector's shared state and the one ingest path every transport feeds.
//!
//! An accepted batch of spans goes to the topology first (edges and rollups), then to
//! the per-edge metrics, then to the `spans` table (which is also the trace store). Locks are held only for in-memory
//! updates; nothing on this path waits on I/O.

use std::{
    sync::{Arc, RwLock},
    time::SystemTime,
};

use crate::{
    config::CollectorConfig,
    ingest::{admission::Admission, convert::Converted},
    metrics::{CollectorMetrics, IngestLabels, StoreLabels},
    model::{LogRecord, MetricPoint, Span},
    sql::SqlEngine,
    tables::{Retention, Tables},
    topology::Topology,
};

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Where a batch came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
    /// Replayed from the journal at start.
    Journal,
}

impl Transport {
    /// `grpc` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
            Self::Journal => "journal",
        }
    }
}

/// Where an accepted batch stands in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Not journaled (no data directory).
    Unjournaled,
    /// Journal record with this ID.
    Journaled(u64),
    /// A replayed journal record whose rows a loaded Parquet segment already holds: it
    /// rebuilds the topology and metrics but is not added to the tables again.
    Persisted,
}

impl Record {
    /// The journal record ID the tables keep, or `None` when the tables skip the batch.
    fn table_record(self) -> Option<Option<u64>> {
        match self {
            Self::Unjournaled => Some(None),
            Self::Journaled(id) => Some(Some(id)),
            Self::Persisted => None,
        }
    }
}

/// Everything the collector holds.
#[derive(Debug)]
pub struct Pipeline {
    /// Edges and rollups.
    pub topology: RwLock<Topology>,
    /// The columnar `spans` and `logs` tables.
    pub tables: RwLock<Tables>,
    /// Runs SQL over the tables.
    pub sql: SqlEngine,
    /// The ingest budget.
    pub admission: Admission,
    /// Prometheus metrics.
    pub metrics: CollectorMetrics,
    /// When the collector started, Unix nanoseconds.
    pub started_unix_nanos: u64,
    /// Idle per-edge series expire after this long.
    pub series_ttl: std::time::Duration,
}

impl Pipeline {
    /// Empty stores sized by `config`.
    pub fn new(config: &CollectorConfig) -> Arc<Self> {
        Arc::new(Self {
            topology: RwLock::new(Topology::new(
                config.match_window.as_nanos() as u64,
                config.max_pending_matches,
                config.rollup_retention.as_secs(),
                config.max_edges,
            )),
            tables: RwLock::new(Tables::new(Retention {
                max_age: config.retention,
                memory_budget: config.memory_budget,
                max_spans: config.max_spans,
            })),
            sql: SqlEngine::new(config.sql),
            admission: Admission::new(config.ingest_inflight_bytes),
            metrics: CollectorMetrics::new(config.istio_metrics),
            started_unix_nanos: now_nanos(),
            series_ttl: config.series_ttl,
        })
    }

    fn count<T>(&self, signal: &'static str, transport: Transport, c: &Converted<T>) {
        let labels = IngestLabels { signal, transport: transport.as_str() };
        self.metrics.received.get_or_create(&labels).inc_by(c.items.len() as u64 + c.rejected);
        self.metrics.accepted.get_or_create(&labels).inc_by(c.items.len() as u64);
        self.metrics.rejected.get_or_create(&labels).inc_by(c.rejected);
        if c.truncated > 0 {
            self.metrics.truncated.get_or_create(&labels).inc_by(c.truncated);
        }
    }

    /// Accepts converted spans.
    pub fn ingest_spans(&self, converted: Converted<Span>, transport: Transport, record: Record) {
        self.count("spans", transport, &converted);
        let spans = converted.items;
        let observations = match self.topology.write() {
            Ok(mut topology) => topology.ingest(spans.iter(), now_nanos()),
            Err(_) => Vec::new(),
        };
        self.metrics.observe_edges(&observations);
        if let Some(record) = record.table_record()
            && let Ok(mut tables) = self.tables.write()
        {
            tables.add_spans(&spans, record);
        }
    }

    /// Accepts converted log records.
    pub fn ingest_logs(&self, converted: Converted<LogRecord>, transport: Transport, record: Record) {
        self.count("log_records", transport, &converted);
        let observations = match self.topology.write() {
            Ok(mut topology) => topology.ingest_access_logs(&converted.items, now_nanos()),
            Err(_) => Vec::new(),
        };
        self.metrics.observe_edges(&observations);
        if let Some(record) = record.table_record()
            && let Ok(mut tables) = self.tables.write()
        {
            tables.add_logs(&converted.items, record);
        }
    }

    /// Accepts converted metric points.
    pub fn ingest_metrics(&self, converted: Converted<MetricPoint>, transport: Transport) {
        self.count("metric_points", transport, &converted);
        self.metrics.observe_points(&converted.items);
    }

    /// Counts an export request refused for lack of room.
    pub fn refused(&self, signal: &'static str, transport: Transport) {
        self.metrics.refused.get_or_create(&IngestLabels { signal, transport: transport.as_str() }).inc();
    }

    /// Counts an export request that could not be decoded.
    pub fn malformed(&self, signal: &'static str, transport: Transport) {
        self.metrics.malformed.get_or_create(&IngestLabels { signal, transport: transport.as_str() }).inc();
    }

    /// Periodic work: settle expired edge matches, evict old rollups, expire idle series,
    /// refresh gauges.
    pub fn tick(&self) {
        let observations = match self.topology.write() {
            Ok(mut topology) => {
                // The matcher counts its overflow itself; the counter catches up with it.
                let overflowed = topology.overflowed();
                let counted = self.metrics.match_overflow.get();
                self.metrics.match_overflow.inc_by(overflowed.saturating_sub(counted));
                let refused = topology.rollups().refused;
                self.metrics.edge_overflow.inc_by(refused.saturating_sub(self.metrics.edge_overflow.get()));
                topology.tick(now_nanos())
            }
            Err(_) => Vec::new(),
        };
        self.metrics.observe_edges(&observations);
        self.metrics.expire_idle(self.series_ttl);
        if let Ok(mut tables) = self.tables.write() {
            let evicted = tables.enforce(now_nanos());
            self.metrics.evicted.get_or_create(&StoreLabels { kind: "span_rows" }).inc_by(evicted.spans);
            self.metrics.evicted.get_or_create(&StoreLabels { kind: "log_rows" }).inc_by(evicted.logs);
        }
        self.refresh_gauges();
    }

    /// Updates the store-size gauges.
    pub fn refresh_gauges(&self) {
        self.metrics.inflight.set(self.admission.inflight_bytes() as i64);
        let set = |kind, v: usize| {
            self.metrics.stored.get_or_create(&StoreLabels { kind }).set(v as i64);
        };
        if let Ok(tables) = self.tables.read() {
            set("span_rows", tables.spans.span_count());
            set("log_rows", tables.logs.rows());
            let memory = |kind, v: usize| self.metrics.memory.get_or_create(&StoreLabels { kind }).set(v as i64);
            memory("spans", tables.spans.table().bytes());
            memory("logs", tables.logs.bytes());
        }
        if let Ok(topology) = self.topology.read() {
            set("edge_buckets", topology.rollups().bucket_count());
            set("edges", topology.rollups().edge_count());
            let (waiting, settled) = topology.matcher_load();
            set("edge_match_waiting", waiting);
            set("edge_match_fingerprints", settled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::CollectorConfig, ingest::convert::Converted, model::SpanKind, tables::traces::tests::span};

    #[test]
    fn spans_the_edge_matcher_cannot_hold_are_counted() {
        let pipeline = Pipeline::new(&CollectorConfig { max_pending_matches: 2, ..Default::default() });
        // Four SERVER spans whose callers have not arrived: two wait, two do not fit.
        let items = (1..=4).map(|trace| (*span(trace, 2, Some(1), "cart", SpanKind::Server, 100, 5)).clone()).collect();
        pipeline.ingest_spans(Converted { items, rejected: 0, reasons: Vec::new(), truncated: 0 }, Transport::Grpc, Record::Unjournaled);
        assert_eq!(pipeline.metrics.match_overflow.get(), 0, "counted at the next tick");
        pipeline.tick();
        assert_eq!(pipeline.metrics.match_overflow.get(), 2);
        pipeline.tick();
        assert_eq!(pipeline.metrics.match_overflow.get(), 2, "a tick adds only what is new");
        let stored = |kind| pipeline.metrics.stored.get_or_create(&crate::metrics::StoreLabels { kind }).get();
        assert_eq!((stored("edge_match_waiting"), stored("edge_match_fingerprints")), (2, 4), "the matcher's load is shown");
    }
}
