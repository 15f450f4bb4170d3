//! An append-only columnar table: rows go into Arrow builders, which are sealed into an
//! immutable batch every [`SEAL_ROWS`] rows, its ID and large text columns packed
//! ([`super::packed`]). Readers get the sealed batches plus a copy of the open one, so a
//! query never waits for a seal and never sees half a row. Eviction drops whole sealed
//! batches, oldest first, by age or by a memory budget.

use std::{collections::VecDeque, sync::Arc};

use datafusion::arrow::{
    array::{Array, ArrayBuilder, ArrayRef, AsArray, StringBuilder},
    datatypes::{DataType, SchemaRef},
    error::ArrowError,
    record_batch::{RecordBatch, RecordBatchOptions},
};

use super::{
    packed::{self, PackedText, Stored, TextPacker},
    schema::{self, Column},
};

/// Rows per sealed batch.
pub const SEAL_ROWS: usize = 8192;

/// The Arrow builders of one table, in schema order.
pub trait Builders: Send + Sync + 'static {
    /// Each column's builder, for copying.
    fn each(&self) -> Vec<&dyn ArrayBuilder>;
    /// Each column's builder, for sealing.
    fn each_mut(&mut self) -> Vec<&mut dyn ArrayBuilder>;
}

/// Implements [`Builders`] for a struct whose listed fields are its columns' builders.
macro_rules! column_builders {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl $crate::tables::columnar::Builders for $ty {
            fn each(&self) -> Vec<&dyn datafusion::arrow::array::ArrayBuilder> {
                vec![$(&self.$field),*]
            }
            fn each_mut(&mut self) -> Vec<&mut dyn datafusion::arrow::array::ArrayBuilder> {
                vec![$(&mut self.$field),*]
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

/// Builders that start each batch at the size of the last one: a batch's large columns (IDs,
/// text not packed as it is written by a [`TextPacker`]) are megabytes, and growing them by
/// doubling from nothing again at each seal copied and page-faulted them ~5 % of ingest's CPU
/// (`meshlens bench ingest`, perf).
pub trait NextBatch: Builders + Default {
    /// Empty builders with room for as many rows and bytes as these hold.
    fn next_batch(&self) -> Self;
}

/// Room for this many more than the last batch held: a batch takes whole export requests, so
/// its rows (and bytes) vary, and a builder that outgrows its buffer copies megabytes into a
/// new one and faults in its pages (~4 % of ingest CPU when the room was exact). The spare
/// room is never kept: sealing copies or packs each column.
pub fn with_headroom(n: usize) -> usize {
    n + n / 4
}

/// An empty string builder with room for `like`'s rows and bytes, and some more.
pub fn text_like(like: &StringBuilder) -> StringBuilder {
    StringBuilder::with_capacity(with_headroom(like.len()), with_headroom(like.values_slice().len()))
}

/// How rows of `T` are written into builders `Self`.
pub trait RowWriter<T>: NextBatch {
    /// Appends one row; returns the row's time (Unix nanoseconds), used for age eviction.
    fn append(&mut self, item: &T) -> u64;
}

/// A sealed batch with the time range of its rows and the journal records they came from.
/// Cloning it is cheap (its columns are shared).
#[derive(Debug, Clone)]
pub struct Sealed {
    schema: SchemaRef,
    columns: Arc<[Stored]>,
    rows: usize,
    /// The newest row time, Unix nanoseconds.
    pub newest_nanos: u64,
    /// The oldest row time, Unix nanoseconds.
    pub oldest_nanos: u64,
    /// The IDs of the journal records whose rows it holds (all of their rows).
    pub records: Arc<[u64]>,
    /// Its number in its table, increasing (names its Parquet segment).
    pub seq: u64,
    bytes: usize,
}

/// What a sealed batch holds besides its rows: their time range, the journal records they
/// came from and the batch's number in its table.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    /// The oldest row time, Unix nanoseconds.
    pub oldest_nanos: u64,
    /// The newest row time, Unix nanoseconds.
    pub newest_nanos: u64,
    /// The IDs of the journal records whose rows it holds.
    pub records: Arc<[u64]>,
    /// Its number in its table.
    pub seq: u64,
}

impl Sealed {
    /// A batch of `columns`' rows (just sealed, or read back from a segment), its columns
    /// packed as their storage says.
    pub fn pack(batch: RecordBatch, columns: &[Column], info: BatchInfo) -> Self {
        let rows = batch.num_rows();
        let arrays = batch.columns().iter().cloned().map(Finished::Array).collect();
        Self::packed(batch.schema(), arrays, rows, columns, info)
    }

    /// [`Sealed::pack`] for arrays already checked against `schema` ([`check_columns`]).
    fn packed(schema: SchemaRef, arrays: Vec<Finished>, rows: usize, columns: &[Column], info: BatchInfo) -> Self {
        let BatchInfo { oldest_nanos, newest_nanos, records, seq } = info;
        let stored: Arc<[Stored]> = arrays
            .into_iter()
            .enumerate()
            .map(|(i, finished)| match finished {
                Finished::Array(array) => Stored::pack(array, columns.get(i).map_or(schema::Storage::Plain, |c| c.storage)),
                Finished::Packed(text) => Stored::Text(Arc::new(text)),
            })
            .collect();
        let bytes = stored.iter().map(Stored::bytes).sum();
        Self { schema, columns: stored, rows, newest_nanos, oldest_nanos, records, seq, bytes }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Column `index`, as stored.
    pub fn column(&self, index: usize) -> Option<&Stored> {
        self.columns.get(index)
    }

    /// The column named `name`, as stored.
    pub fn column_by_name(&self, name: &str) -> Option<&Stored> {
        self.columns.get(self.schema.index_of(name).ok()?)
    }

    /// The columns at `projection` (all when `None`), unpacked.
    pub fn project(&self, projection: Option<&[usize]>) -> Result<RecordBatch, ArrowError> {
        let all: Vec<usize>;
        let indices = match projection {
            Some(p) => p,
            None => {
                all = (0..self.columns.len()).collect();
                &all
            }
        };
        let arrays = indices
            .iter()
            .map(|&i| self.columns.get(i).ok_or_else(|| ArrowError::SchemaError(format!("no column {i}")))?.array())
            .collect::<Result<Vec<_>, _>>()?;
        let schema = Arc::new(self.schema.project(indices)?);
        RecordBatch::try_new_with_options(schema, arrays, &RecordBatchOptions::new().with_row_count(Some(self.rows)))
    }

    /// Every column, unpacked.
    pub fn batch(&self) -> Result<RecordBatch, ArrowError> {
        self.project(None)
    }
}

/// A table of sealed batches plus one open batch.
pub struct Table<W> {
    columns: &'static [Column],
    schema: SchemaRef,
    open: W,
    open_rows: usize,
    open_oldest: u64,
    open_newest: u64,
    open_records: Vec<u64>,
    next_seq: u64,
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

/// The finished columns. Those kept as they are get copied into buffers of exactly their
/// size (builders grow by doubling; a sealed batch keeps no spare capacity, and the
/// builders' large buffers are freed whole, which gives their memory back more readily
/// than shrinking them in place); packed columns are rebuilt by packing, so not copied.
fn seal_columns(builders: Vec<&mut dyn ArrayBuilder>, columns: &[Column]) -> Vec<Finished> {
    builders
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            if let Some(packer) = b.as_any_mut().downcast_mut::<TextPacker>() {
                return Finished::Packed(packer.finish());
            }
            let array = b.finish();
            if columns.get(i).is_some_and(|c| c.storage != schema::Storage::Plain) {
                return Finished::Array(array);
            }
            Finished::Array(packed::exact(array))
        })
        .collect()
}

/// A sealed builder's column: an Arrow array, or text a [`TextPacker`] packed as it was written.
#[derive(Debug)]
enum Finished {
    Array(ArrayRef),
    Packed(PackedText),
}

impl Finished {
    fn data_type(&self) -> &DataType {
        match self {
            Self::Array(array) => array.data_type(),
            Self::Packed(_) => &DataType::Utf8,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Array(array) => array.len(),
            Self::Packed(text) => text.len(),
        }
    }

    fn null_count(&self) -> usize {
        match self {
            Self::Array(array) => array.null_count(),
            Self::Packed(text) => text.null_count(),
        }
    }
}

impl From<ArrayRef> for Finished {
    fn from(array: ArrayRef) -> Self {
        Self::Array(array)
    }
}

/// Checks sealed builders' arrays against the schema as `RecordBatch::try_new` would, except
/// that an ID column kept as bytes may be written as bytes (its schema type is hex text).
fn check_columns(schema: &SchemaRef, columns: &[Column], arrays: &[Finished], rows: usize) -> Result<(), ArrowError> {
    if arrays.len() != schema.fields().len() {
        return Err(ArrowError::SchemaError(format!("{} columns for {} fields", arrays.len(), schema.fields().len())));
    }
    for ((field, array), column) in schema.fields().iter().zip(arrays).zip(columns) {
        let as_bytes = column.storage == schema::Storage::HexBytes && matches!(array.data_type(), DataType::FixedSizeBinary(_));
        if array.data_type() != field.data_type() && !as_bytes {
            return Err(ArrowError::SchemaError(format!("column {} is {}, not {}", field.name(), array.data_type(), field.data_type())));
        }
        if array.len() != rows {
            return Err(ArrowError::SchemaError(format!("column {} has {} rows, not {rows}", field.name(), array.len())));
        }
        if !field.is_nullable() && array.null_count() > 0 {
            return Err(ArrowError::SchemaError(format!("column {} has nulls", field.name())));
        }
    }
    Ok(())
}

impl<W: NextBatch> Table<W> {
    /// An empty table of these columns (which must match the builders).
    pub fn new(columns: &'static [Column]) -> Self {
        Self {
            columns,
            schema: schema::schema(columns),
            open: W::default(),
            open_rows: 0,
            open_oldest: u64::MAX,
            open_newest: 0,
            open_records: Vec::new(),
            next_seq: 1,
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

    /// The columns.
    pub fn columns(&self) -> &'static [Column] {
        self.columns
    }

    /// Appends the rows of one journal record (`record`, when journaled); seals the open
    /// batch afterwards when it is full, so a record's rows always share a batch. Returns
    /// the batch it sealed.
    pub fn extend<'a, T: 'a>(&mut self, items: impl IntoIterator<Item = &'a T>, record: Option<u64>) -> Option<Sealed>
    where
        W: RowWriter<T>,
    {
        for item in items {
            let time = self.open.append(item);
            self.open_rows += 1;
            self.open_oldest = self.open_oldest.min(time);
            self.open_newest = self.open_newest.max(time);
        }
        if let Some(id) = record {
            self.open_records.push(id);
        }
        (self.open_rows >= SEAL_ROWS).then(|| self.seal()).flatten()
    }

    /// Seals the open batch (if it has rows); returns it.
    pub fn seal(&mut self) -> Option<Sealed> {
        if self.open_rows == 0 {
            return None;
        }
        let next = self.open.next_batch();
        let mut full = std::mem::replace(&mut self.open, next);
        let arrays = seal_columns(full.each_mut(), self.columns);
        let rows = self.open_rows;
        let checked = check_columns(&self.schema, self.columns, &arrays, rows);
        let records: Arc<[u64]> = std::mem::take(&mut self.open_records).into();
        let (oldest_nanos, newest_nanos) = (self.open_oldest, self.open_newest);
        self.open_rows = 0;
        self.open_oldest = u64::MAX;
        self.open_newest = 0;
        match checked {
            Ok(()) => {
                let info = BatchInfo { oldest_nanos, newest_nanos, records, seq: self.next_seq };
                let sealed = Sealed::packed(self.schema.clone(), arrays, rows, self.columns, info);
                self.push_sealed(sealed.clone());
                Some(sealed)
            }
            Err(error) => {
                tracing::error!(%error, "a table batch does not match its schema; rows lost");
                None
            }
        }
    }

    /// Adds a sealed batch (one just sealed, or one read back at start) as the newest.
    pub fn push_sealed(&mut self, sealed: Sealed) {
        self.next_seq = self.next_seq.max(sealed.seq + 1);
        self.sealed_rows += sealed.rows;
        self.sealed_bytes += sealed.bytes;
        self.sealed.push_back(sealed);
    }

    /// Every row now: the sealed batches and a copy of the open one ([`Table::open_batch`]).
    pub fn snapshot(&self) -> Vec<Sealed> {
        self.sealed.iter().cloned().chain(self.open_batch()).collect()
    }

    /// A copy of the open rows as a batch readers read like a sealed one (IDs as bytes,
    /// packed text with its open block uncompressed, other columns as written), numbered
    /// as it will be when sealed; `None` when there are no open rows.
    pub fn open_batch(&self) -> Option<Sealed> {
        if self.open_rows == 0 {
            return None;
        }
        let columns: Arc<[Stored]> = self
            .open
            .each()
            .into_iter()
            .map(|builder| match builder.as_any().downcast_ref::<TextPacker>() {
                Some(packer) => Stored::Text(Arc::new(packer.snapshot())),
                None => {
                    let array = builder.finish_cloned();
                    match array.as_fixed_size_binary_opt() {
                        Some(bytes) => Stored::Hex(bytes.clone()),
                        None => Stored::Plain(array),
                    }
                }
            })
            .collect();
        let bytes = columns.iter().map(Stored::bytes).sum();
        Some(Sealed {
            schema: self.schema.clone(),
            columns,
            rows: self.open_rows,
            newest_nanos: self.open_newest,
            oldest_nanos: self.open_oldest,
            records: self.open_records.as_slice().into(),
            seq: self.next_seq,
            bytes,
        })
    }

    /// The sealed batches, oldest first.
    pub fn sealed(&self) -> impl DoubleEndedIterator<Item = &Sealed> {
        self.sealed.iter()
    }

    /// The sealed batch with this sequence number, if still held.
    pub fn sealed_by_seq(&self, seq: u64) -> Option<&Sealed> {
        let i = self.sealed.partition_point(|s| s.seq < seq);
        self.sealed.get(i).filter(|s| s.seq == seq)
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

    /// Removes the sealed batches whose newest row is older than `cutoff_nanos`.
    pub fn evict_older_than(&mut self, cutoff_nanos: u64) -> Vec<Sealed> {
        let mut dropped = Vec::new();
        while self.sealed.front().is_some_and(|s| s.newest_nanos < cutoff_nanos) {
            dropped.extend(self.pop_oldest());
        }
        dropped
    }

    /// Removes the oldest sealed batch.
    pub fn pop_oldest(&mut self) -> Option<Sealed> {
        let s = self.sealed.pop_front()?;
        let rows = s.rows;
        self.sealed_rows -= rows;
        self.sealed_bytes -= s.bytes;
        self.evicted_rows += rows as u64;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{FixedSizeBinaryArray, Int64Array, StringArray};

    use super::*;

    /// A two-column table: a hex ID kept as bytes, and a plain number.
    const COLUMNS: &[Column] = &[
        Column { name: "id", ty: schema::ColumnType::Text, nullable: false, doc: "", storage: schema::Storage::HexBytes },
        Column { name: "n", ty: schema::ColumnType::Int64, nullable: true, doc: "", storage: schema::Storage::Plain },
    ];

    #[test]
    fn sealed_columns_are_checked_like_a_record_batch_but_ids_may_be_bytes() {
        let schema = schema::schema(COLUMNS);
        let ids: ArrayRef = Arc::new(FixedSizeBinaryArray::try_from_iter([[1u8, 2], [3, 4]].into_iter()).expect("ids"));
        let text: ArrayRef = Arc::new(StringArray::from(vec!["0102", "0304"]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        assert!(check_columns(&schema, COLUMNS, &[ids.clone().into(), n.clone().into()], 2).is_ok(), "bytes for a hex ID column");
        assert!(check_columns(&schema, COLUMNS, &[text.clone().into(), n.clone().into()], 2).is_ok(), "or its text");
        assert!(check_columns(&schema, COLUMNS, &[n.clone().into(), n.clone().into()], 2).is_err(), "another type");
        assert!(check_columns(&schema, COLUMNS, &[ids.clone().into(), ids.clone().into()], 2).is_err(), "bytes where the column is plain");
        assert!(check_columns(&schema, COLUMNS, &[ids.clone().into(), n.clone().into()], 3).is_err(), "another row count");
        assert!(check_columns(&schema, COLUMNS, &[ids.clone().into()], 2).is_err(), "a missing column");
        let null_id: ArrayRef = Arc::new(StringArray::from(vec![Some("0102"), None]));
        assert!(check_columns(&schema, COLUMNS, &[null_id.into(), n.into()], 2).is_err(), "a null in a non-nullable column");
    }
}
