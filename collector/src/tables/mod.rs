//! The tables: `spans` and `logs` are columnar tables appended on ingest ([`columnar`]);
//! `spans` is also the trace store the Jaeger APIs read ([`traces`]); `edges` and
//! `services` are built from the topology's rollups when a query reads them ([`edges`]).
//! Schemas are defined once in [`schema`].
//!
//! Retention: sealed batches are evicted oldest first when their newest row is older than
//! the configured age, while the two tables together exceed the memory budget, and while
//! the spans exceed their row limit. With a data directory, every sealed batch is also
//! written as a Parquet segment ([`crate::segments`]) and read back at start.

pub mod columnar;
pub mod dict;
pub mod edges;
pub mod json;
pub mod logs;
pub mod packed;
pub mod schema;
pub mod spans;
pub mod traces;

use std::time::Duration;


use crate::{
    model::{LogRecord, Span},
    segments::Segments,
};

pub use columnar::{Sealed, Table};

/// The `spans` table's name.
pub const SPANS: &str = "spans";
/// The `logs` table's name.
pub const LOGS: &str = "logs";
pub use traces::{SpanTable, SpanView, TraceQuery};

/// Retention limits.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Rows older than this go.
    pub max_age: Duration,
    /// The spans and logs tables together stay under this many bytes.
    pub memory_budget: usize,
    /// At most this many spans are kept.
    pub max_spans: usize,
}

/// What one enforcement pass evicted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Span rows.
    pub spans: u64,
    /// Log rows.
    pub logs: u64,
}

/// The appended tables.
#[derive(Debug)]
pub struct Tables {
    /// `spans`, with trace lookups.
    pub spans: SpanTable,
    /// `logs`.
    pub logs: Table<logs::LogRows>,
    retention: Retention,
    /// Where sealed batches are persisted, when there is a data directory.
    segments: Option<Segments>,
}

impl Tables {
    /// Empty tables with these limits.
    pub fn new(retention: Retention) -> Self {
        Self {
            spans: SpanTable::default(),
            logs: Table::new(schema::LOGS),
            retention,
            segments: None,
        }
    }

    /// Persists every batch sealed from now on, and deletes the segments of evicted ones.
    pub fn persist_to(&mut self, segments: Segments) {
        self.segments = Some(segments);
    }

    /// Adds the batches read back from segments.
    pub fn restore(&mut self, loaded: Vec<(&'static str, Vec<Sealed>)>) {
        for (table, batches) in loaded {
            for sealed in batches {
                match table {
                    SPANS => self.spans.restore(sealed),
                    LOGS => self.logs.push_sealed(sealed),
                    _ => {}
                }
            }
        }
    }

    /// The appended tables' names and columns, for reading segments.
    pub fn schemas(&self) -> Vec<(&'static str, &'static [schema::Column])> {
        vec![(SPANS, self.spans.table().columns()), (LOGS, self.logs.columns())]
    }

    fn persist(&self, table: &'static str, sealed: Option<Sealed>) {
        if let (Some(segments), Some(sealed)) = (&self.segments, sealed) {
            segments.write(table, sealed);
        }
    }

    /// Appends the spans of one journal record (`record`, when journaled).
    pub fn add_spans<S: std::borrow::Borrow<Span>>(&mut self, spans: &[S], record: Option<u64>) {
        let sealed = self.spans.insert(spans, record);
        self.persist(SPANS, sealed);
    }

    /// Appends the log records of one journal record.
    pub fn add_logs<'a>(&mut self, logs: impl IntoIterator<Item = &'a LogRecord>, record: Option<u64>) {
        let sealed = self.logs.extend(logs, record);
        self.persist(LOGS, sealed);
    }

    /// Seals both open batches (persisting them), e.g. before a clean stop.
    pub fn seal_all(&mut self) {
        let sealed = self.spans.seal();
        self.persist(SPANS, sealed);
        let sealed = self.logs.seal();
        self.persist(LOGS, sealed);
    }

    fn evicted(&self, table: &'static str, sealed: Option<Sealed>) -> u64 {
        let Some(sealed) = sealed else { return 0 };
        if let Some(segments) = &self.segments {
            segments.delete(table, sealed.seq);
        }
        sealed.rows() as u64
    }

    /// Bytes held by both tables.
    pub fn bytes(&self) -> usize {
        self.spans.table().bytes() + self.logs.bytes()
    }

    /// Evicts by age, then by memory (whichever table holds the oldest batch goes first).
    pub fn enforce(&mut self, now_nanos: u64) -> Evicted {
        let cutoff = now_nanos.saturating_sub(self.retention.max_age.as_nanos() as u64);
        let mut evicted = Evicted::default();
        for sealed in self.spans.evict_older_than(cutoff) {
            evicted.spans += self.evicted(SPANS, Some(sealed));
        }
        for sealed in self.logs.evict_older_than(cutoff) {
            evicted.logs += self.evicted(LOGS, Some(sealed));
        }
        while self.spans.span_count() > self.retention.max_spans && self.spans.table().oldest_sealed().is_some() {
            let sealed = self.spans.pop_oldest();
            evicted.spans += self.evicted(SPANS, sealed);
        }
        while self.bytes() > self.retention.memory_budget {
            match (self.spans.table().oldest_sealed(), self.logs.oldest_sealed()) {
                (Some(s), Some(l)) if l < s => {
                    let sealed = self.logs.pop_oldest();
                    evicted.logs += self.evicted(LOGS, sealed);
                }
                (Some(_), _) => {
                    let sealed = self.spans.pop_oldest();
                    evicted.spans += self.evicted(SPANS, sealed);
                }
                (None, Some(_)) => {
                    let sealed = self.logs.pop_oldest();
                    evicted.logs += self.evicted(LOGS, sealed);
                }
                (None, None) => break,
            }
        }
        evicted
    }

    /// A snapshot of one appended table by name.
    pub fn snapshot(&self, name: &str) -> Option<Vec<Sealed>> {
        match name {
            "spans" => Some(self.spans.table().snapshot()),
            "logs" => Some(self.logs.snapshot()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::SpanKind, tables::traces::tests::span};

    #[test]
    fn retention_evicts_oldest_batches_by_age_and_by_memory() {
        let mut tables = Tables::new(Retention { max_age: Duration::from_secs(60), memory_budget: usize::MAX, max_spans: usize::MAX });
        let old: Vec<_> = (0..columnar::SEAL_ROWS).map(|i| span(1, (i % 250) as u8 + 1, None, "a", SpanKind::Server, 1_000, 1)).collect();
        tables.add_spans(&old, None);
        let now_ms = 1_000 + 3_600_000;
        let fresh: Vec<_> = (0..columnar::SEAL_ROWS).map(|_| span(2, 1, None, "a", SpanKind::Server, now_ms, 1)).collect();
        tables.add_spans(&fresh, None);
        assert_eq!(tables.spans.span_count(), 2 * columnar::SEAL_ROWS);
        let evicted = tables.enforce(now_ms * 1_000_000);
        assert_eq!(evicted.spans, columnar::SEAL_ROWS as u64, "the hour-old batch goes");
        assert_eq!(tables.spans.span_count(), columnar::SEAL_ROWS);
        let per_span = tables.spans.table().bytes() / tables.spans.span_count();
        assert!(per_span > 0, "memory is measured");
        tables.retention.memory_budget = 1;
        let evicted = tables.enforce(now_ms * 1_000_000);
        assert_eq!(evicted.spans, columnar::SEAL_ROWS as u64, "over budget: the rest goes");
        assert_eq!(tables.spans.table().evicted_rows, 2 * columnar::SEAL_ROWS as u64);
    }
}
