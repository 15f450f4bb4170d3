//! An append-only columnar table: rows go into Arrow builders, which are sealed into an
//! immutable `RecordBatch` every [`SEAL_ROWS`] rows. Readers get the sealed batches plus a
//! copy of the open one, so a query never waits for a seal and never sees half a row.
//! A table may name a column its sealed batches are sorted by (the `spans` table sorts by
//! trace ID, so one trace is a binary search per batch). Eviction drops whole sealed
//! batches, oldest first, by age or by a memory budget.

use std::collections::VecDeque;

use datafusion::arrow::{
    array::{ArrayBuilder, ArrayRef},
    compute::{sort_to_indices, take_record_batch},
    datatypes::SchemaRef,
    record_batch::RecordBatch,
};

/// Rows per sealed batch.
pub const SEAL_ROWS: usize = 8192;

/// The Arrow builders of one table, in schema order.
pub trait Builders: Send + Sync + 'static {
    /// Each column's builder, for copying.
    fn each(&self) -> Vec<&dyn ArrayBuilder>;
    /// Each column's builder, for sealing.
    fn each_mut(&mut self) -> Vec<&mut dyn ArrayBuilder>;
    /// The column sealed batches are sorted by, if any.
    fn sorted_by() -> Option<&'static str>
    where
        Self: Sized,
    {
        None
    }
}

/// Implements [`Builders`] for a struct whose listed fields are its columns' builders.
/// Optionally `sorted_by "column"` after the struct name.
macro_rules! column_builders {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        $crate::tables::columnar::column_builders!(@impl $ty, None, { $($field),* });
    };
    ($ty:ident sorted_by $column:literal { $($field:ident),* $(,)? }) => {
        $crate::tables::columnar::column_builders!(@impl $ty, Some($column), { $($field),* });
    };
    (@impl $ty:ident, $sorted:expr, { $($field:ident),* }) => {
        impl $crate::tables::columnar::Builders for $ty {
            fn each(&self) -> Vec<&dyn datafusion::arrow::array::ArrayBuilder> {
                vec![$(&self.$field),*]
            }
            fn each_mut(&mut self) -> Vec<&mut dyn datafusion::arrow::array::ArrayBuilder> {
                vec![$(&mut self.$field),*]
            }
            fn sorted_by() -> Option<&'static str> {
                $sorted
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty)).finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use column_builders;

/// How rows of `T` are written into builders `Self`.
pub trait RowWriter<T>: Builders + Default {
    /// Appends one row; returns the row's time (Unix nanoseconds), used for age eviction.
    fn append(&mut self, item: &T) -> u64;
}

/// A sealed batch with the time range of its rows.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The rows.
    pub batch: RecordBatch,
    /// The newest row time, Unix nanoseconds.
    pub newest_nanos: u64,
    /// The oldest row time, Unix nanoseconds.
    pub oldest_nanos: u64,
    bytes: usize,
}

/// A table of sealed batches plus one open batch.
pub struct Table<W> {
    schema: SchemaRef,
    open: W,
    open_rows: usize,
    open_oldest: u64,
    open_newest: u64,
    sealed: VecDeque<Sealed>,
    sealed_rows: usize,
    sealed_bytes: usize,
    /// Rows evicted so far.
    pub evicted_rows: u64,
}

impl<W> std::fmt::Debug for Table<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("rows", &(self.sealed_rows + self.open_rows))
            .field("sealed_batches", &self.sealed.len())
            .field("bytes", &self.sealed_bytes)
            .finish()
    }
}

fn seal_columns(columns: Vec<&mut dyn ArrayBuilder>) -> Vec<ArrayRef> {
    columns.into_iter().map(|b| b.finish()).collect()
}

/// The batch with its rows sorted by `column`.
fn sorted(batch: RecordBatch, column: &str) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let Some(key) = batch.column_by_name(column) else { return Ok(batch) };
    let order = sort_to_indices(key, None, None)?;
    take_record_batch(&batch, &order)
}

impl<W: Builders + Default> Table<W> {
    /// An empty table with this schema (which must match the builders).
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            open: W::default(),
            open_rows: 0,
            open_oldest: u64::MAX,
            open_newest: 0,
            sealed: VecDeque::new(),
            sealed_rows: 0,
            sealed_bytes: 0,
            evicted_rows: 0,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Appends rows, sealing the open batch when it is full.
    pub fn extend<'a, T: 'a>(&mut self, items: impl IntoIterator<Item = &'a T>)
    where
        W: RowWriter<T>,
    {
        for item in items {
            let time = self.open.append(item);
            self.open_rows += 1;
            self.open_oldest = self.open_oldest.min(time);
            self.open_newest = self.open_newest.max(time);
            if self.open_rows >= SEAL_ROWS {
                self.seal();
            }
        }
    }

    /// Seals the open batch (if it has rows).
    pub fn seal(&mut self) {
        if self.open_rows == 0 {
            return;
        }
        let columns = seal_columns(self.open.each_mut());
        let batch = RecordBatch::try_new(self.schema.clone(), columns);
        match batch.and_then(|b| match W::sorted_by() {
            Some(column) => sorted(b, column),
            None => Ok(b),
        }) {
            Ok(batch) => {
                let bytes = batch.get_array_memory_size();
                self.sealed_rows += batch.num_rows();
                self.sealed_bytes += bytes;
                self.sealed.push_back(Sealed {
                    batch,
                    newest_nanos: self.open_newest,
                    oldest_nanos: self.open_oldest,
                    bytes,
                });
            }
            Err(error) => tracing::error!(%error, "a table batch does not match its schema; rows lost"),
        }
        self.open_rows = 0;
        self.open_oldest = u64::MAX;
        self.open_newest = 0;
    }

    /// Every row now: the sealed batches and a copy of the open one.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let mut out: Vec<RecordBatch> = self.sealed.iter().map(|s| s.batch.clone()).collect();
        if self.open_rows > 0 {
            let columns = self.open.each().into_iter().map(|b| b.finish_cloned()).collect();
            match RecordBatch::try_new(self.schema.clone(), columns) {
                Ok(batch) => out.push(batch),
                Err(error) => tracing::error!(%error, "the open batch does not match its schema"),
            }
        }
        out
    }

    /// The sealed batches, oldest first.
    pub fn sealed(&self) -> impl DoubleEndedIterator<Item = &Sealed> {
        self.sealed.iter()
    }

    /// Rows in the open batch.
    pub fn open_rows(&self) -> usize {
        self.open_rows
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.sealed_rows + self.open_rows
    }

    /// Bytes held by sealed batches, plus the open rows estimated at the sealed average.
    pub fn bytes(&self) -> usize {
        let per_row = self.sealed_bytes.checked_div(self.sealed_rows).unwrap_or(256);
        self.sealed_bytes + self.open_rows * per_row
    }

    /// The oldest row time of the oldest sealed batch, if any.
    pub fn oldest_sealed(&self) -> Option<u64> {
        self.sealed.front().map(|s| s.oldest_nanos)
    }

    /// Drops sealed batches whose newest row is older than `cutoff_nanos`.
    pub fn evict_older_than(&mut self, cutoff_nanos: u64) -> u64 {
        let mut dropped = 0;
        while self.sealed.front().is_some_and(|s| s.newest_nanos < cutoff_nanos) {
            dropped += self.pop_oldest();
        }
        dropped
    }

    /// Drops the oldest sealed batch; returns its rows.
    pub fn pop_oldest(&mut self) -> u64 {
        let Some(s) = self.sealed.pop_front() else { return 0 };
        let rows = s.batch.num_rows();
        self.sealed_rows -= rows;
        self.sealed_bytes -= s.bytes;
        self.evicted_rows += rows as u64;
        rows as u64
    }
}
