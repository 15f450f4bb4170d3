//! Parquet segments: every batch the `spans` and `logs` tables seal is written to
//! `<data dir>/segments/<table>-<seq>.parquet` by a writer thread, and read back at start.
//! A segment is written to a temporary name, synced, then renamed, so a crash never leaves
//! half a segment under a real name; a segment evicted by retention is deleted.
//!
//! Each segment's metadata names the journal records whose rows it holds
//! (`meshlens.records`), so replaying the journal at start skips what the segments already
//! have, and its rows' time range (`meshlens.oldest`, `meshlens.newest`) for retention.

use std::{
    collections::HashSet,
    fs::{self, File},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use datafusion::arrow::{
    array::new_null_array,
    compute::concat_batches,
    datatypes::Schema,
    record_batch::RecordBatch,
};
use parquet::{
    arrow::{ArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder},
    basic::Compression,
    file::{metadata::KeyValue, properties::WriterProperties},
};

use crate::tables::{
    columnar::{BatchInfo, Sealed},
    schema::{self, Column},
};

/// A segment could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The file system refused.
    #[error("segment {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a segment this collector can read.
    #[error("segment {path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io { path: path.to_owned(), source }
}

fn format_err(path: &Path, message: impl ToString) -> SegmentError {
    SegmentError::Format { path: path.to_owned(), message: message.to_string() }
}

const RECORDS: &str = "meshlens.records";
const OLDEST: &str = "meshlens.oldest";
const NEWEST: &str = "meshlens.newest";

fn file_name(table: &str, seq: u64) -> String {
    format!("{table}-{seq:020}.parquet")
}

/// Record IDs as compact ranges: `1-5,9,12-13`.
fn encode_records(ids: &[u64]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        while i + 1 < ids.len() && ids[i + 1] <= ids[i] + 1 {
            i += 1;
        }
        out.push(if ids[i] == start { start.to_string() } else { format!("{start}-{}", ids[i]) });
        i += 1;
    }
    out.join(",")
}

fn decode_records(text: &str) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 100_000_000 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Writes one sealed batch as a segment.
pub fn write(dir: &Path, table: &str, sealed: &Sealed) -> Result<PathBuf, SegmentError> {
    let path = dir.join(file_name(table, sealed.seq));
    let tmp = dir.join(format!(".{}.tmp", file_name(table, sealed.seq)));
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let metadata = vec![
        KeyValue::new(RECORDS.to_owned(), encode_records(&sealed.records)),
        KeyValue::new(OLDEST.to_owned(), sealed.oldest_nanos.to_string()),
        KeyValue::new(NEWEST.to_owned(), sealed.newest_nanos.to_string()),
    ];
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(sealed.rows().max(1)))
        .set_key_value_metadata(Some(metadata))
        .build();
    let batch = sealed.batch().map_err(|e| format_err(&tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| format_err(&tmp, e))?;
    writer.write(&batch).map_err(|e| format_err(&tmp, e))?;
    let file = writer.into_inner().map_err(|e| format_err(&tmp, e))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// Reads one segment back; its columns must be `columns`, or the first of them when the
/// rest may be null (a segment written before they were added: they are null in its rows).
pub fn read(path: &Path, columns: &'static [Column]) -> Result<Sealed, SegmentError> {
    let schema = &schema::schema(columns);
    let seq = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".parquet"))
        .and_then(|n| n.rsplit_once('-'))
        .and_then(|(_, seq)| seq.parse::<u64>().ok())
        .ok_or_else(|| format_err(path, "not a segment name"))?;
    let file = File::open(path).map_err(io_err(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format_err(path, e))?;
    let meta = |key: &str| -> Option<String> {
        builder.metadata().file_metadata().key_value_metadata()?.iter().find(|kv| kv.key == key)?.value.clone()
    };
    let records = meta(RECORDS).and_then(|t| decode_records(&t)).ok_or_else(|| format_err(path, "no record list"))?;
    let oldest = meta(OLDEST).and_then(|t| t.parse().ok()).ok_or_else(|| format_err(path, "no time range"))?;
    let newest = meta(NEWEST).and_then(|t| t.parse().ok()).ok_or_else(|| format_err(path, "no time range"))?;
    let written = builder.schema().clone();
    if !earlier_columns(&written, schema) {
        return Err(format_err(path, "its columns are not this collector's"));
    }
    let reader = builder.with_batch_size(1 << 20).build().map_err(|e| format_err(path, e))?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| format_err(path, e))?;
    let batch = concat_batches(&written, &batches).map_err(|e| format_err(path, e))?;
    let mut arrays = batch.columns().to_vec();
    arrays.extend(schema.fields()[written.fields().len()..].iter().map(|f| new_null_array(f.data_type(), batch.num_rows())));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| format_err(path, e))?;
    Ok(Sealed::pack(batch, columns, BatchInfo { oldest_nanos: oldest, newest_nanos: newest, records: records.into(), seq }))
}

/// Whether a segment written with `written`'s columns holds `schema`'s: the same, or the
/// first of them when the others may be null.
fn earlier_columns(written: &Schema, schema: &Schema) -> bool {
    let column = |f: &Arc<datafusion::arrow::datatypes::Field>| (f.name().clone(), f.data_type().clone(), f.is_nullable());
    let (written, wanted) = (written.fields(), schema.fields());
    written.len() <= wanted.len()
        && written.iter().map(column).eq(wanted[..written.len()].iter().map(column))
        && wanted[written.len()..].iter().all(|f| f.is_nullable())
}

/// The segments of `table` in `dir`, oldest first.
fn list(dir: &Path, table: &str) -> Result<Vec<PathBuf>, SegmentError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(&format!("{table}-")) && name.ends_with(".parquet") {
            out.push(path);
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            // Half-written before a crash: its rows are still in the journal.
            let _ = fs::remove_file(&path);
        }
    }
    out.sort();
    Ok(out)
}

/// What [`load`] read.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Segments read, per table.
    pub segments: Vec<(&'static str, Vec<Sealed>)>,
    /// Every journal record whose rows the segments hold.
    pub records: HashSet<u64>,
    /// Segments skipped (unreadable, or of another schema), renamed `*.unreadable`.
    pub skipped: usize,
}

/// Reads every segment of `tables` (name and columns) in `dir`.
pub fn load(dir: &Path, tables: &[(&'static str, &'static [Column])]) -> Result<Loaded, SegmentError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut loaded = Loaded::default();
    for (table, columns) in tables {
        let mut segments = Vec::new();
        for path in list(dir, table)? {
            match read(&path, columns) {
                Ok(sealed) => {
                    loaded.records.extend(sealed.records.iter().copied());
                    segments.push(sealed);
                }
                Err(error) => {
                    tracing::warn!(%error, "skipping a segment; its rows are not loaded");
                    let _ = fs::rename(&path, path.with_extension("unreadable"));
                    loaded.skipped += 1;
                }
            }
        }
        loaded.segments.push((table, segments));
    }
    Ok(loaded)
}

enum Job {
    Write(&'static str, Sealed),
    Delete(&'static str, u64),
    Stop,
}

/// Hands sealed and evicted batches to the writer thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Segments {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Write(t, s) => write!(f, "write {t} #{}", s.seq),
            Self::Delete(t, seq) => write!(f, "delete {t} #{seq}"),
            Self::Stop => f.write_str("stop"),
        }
    }
}

/// The writer thread.
#[derive(Debug)]
pub struct SegmentWriter {
    tx: mpsc::Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

impl Segments {
    /// Starts the writer thread for `dir`.
    pub fn start(dir: PathBuf) -> Result<(Self, SegmentWriter), SegmentError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("meshlens-segments".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Write(table, sealed) => match write(&dir, table, &sealed) {
                            Ok(path) => tracing::debug!(path = %path.display(), rows = sealed.rows(), "segment written"),
                            // The rows stay in memory and in the journal.
                            Err(error) => tracing::error!(%error, "segment not written"),
                        },
                        Job::Delete(table, seq) => {
                            let path = dir.join(file_name(table, seq));
                            if let Err(error) = fs::remove_file(&path)
                                && error.kind() != std::io::ErrorKind::NotFound
                            {
                                tracing::warn!(%error, path = %path.display(), "evicted segment not deleted");
                            }
                        }
                        Job::Stop => break,
                    }
                }
            })
            .map_err(|source| SegmentError::Io { path: PathBuf::from("segment writer thread"), source })?;
        Ok((Self { tx: tx.clone() }, SegmentWriter { tx, thread: Some(thread) }))
    }

    /// Queues a sealed batch for writing.
    pub fn write(&self, table: &'static str, sealed: Sealed) {
        let _ = self.tx.send(Job::Write(table, sealed));
    }

    /// Queues the deletion of an evicted batch's segment.
    pub fn delete(&self, table: &'static str, seq: u64) {
        let _ = self.tx.send(Job::Delete(table, seq));
    }
}

impl SegmentWriter {
    /// Writes what is queued, then stops.
    pub fn finish(mut self) {
        let _ = self.tx.send(Job::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{Retention, Tables, traces::tests::span};
    use crate::model::SpanKind;

    #[test]
    fn record_lists_are_compact_ranges() {
        assert_eq!(encode_records(&[5, 1, 2, 3, 9, 12, 13]), "1-3,5,9,12-13");
        assert_eq!(decode_records("1-3,5,9,12-13"), Some(vec![1, 2, 3, 5, 9, 12, 13]));
        assert_eq!(decode_records(""), Some(vec![]));
        assert_eq!(decode_records("3-1"), None);
        assert_eq!(decode_records("x"), None);
    }

    #[test]
    fn a_sealed_spans_batch_reads_back_from_its_segment() {
        let dir = std::env::temp_dir().join(format!("meshlens-segments-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let mut tables = Tables::new(Retention { max_age: std::time::Duration::from_secs(3600), memory_budget: usize::MAX, max_spans: usize::MAX });
        let spans: Vec<_> = (0..10u8).map(|i| span(i + 1, 1, None, "a", SpanKind::Server, u64::from(i), 1)).collect();
        tables.spans.insert(&spans, Some(41));
        let sealed = tables.spans.seal().expect("sealed");
        let path = write(&dir, "spans", &sealed).expect("write");
        let columns = tables.spans.table().columns();
        let back = read(&path, columns).expect("read");
        assert_eq!(back.batch().expect("batch"), sealed.batch().expect("batch"), "same rows, same dictionary columns");
        assert_eq!((&*back.records, back.oldest_nanos, back.newest_nanos, back.seq), (&[41][..], 0, 9_000_000, sealed.seq));
        let loaded = load(&dir, &tables.schemas()).expect("load");
        assert_eq!(loaded.records, HashSet::from([41]));
        assert_eq!(loaded.segments[0].1.len(), 1);
        // A file that is not a segment of this schema is set aside, not loaded.
        fs::write(dir.join("spans-00000000000000000099.parquet"), b"not parquet").expect("write");
        let loaded = load(&dir, &[("spans", columns)]).expect("load");
        assert_eq!((loaded.skipped, loaded.segments[0].1.len()), (1, 1));

        // Read by a collector whose table has since gained columns: null in its rows if they
        // may be null, else not this collector's.
        let grown = |nullable: bool| -> &'static [Column] {
            let added = schema::Column { name: "added", ty: schema::ColumnType::Int64, nullable, doc: "", storage: schema::Storage::Plain };
            Box::leak(columns.iter().copied().chain([added]).collect::<Vec<_>>().into_boxed_slice())
        };
        let back = read(&path, grown(true)).expect("read with a column more").batch().expect("batch");
        assert_eq!((back.num_columns(), back.num_rows()), (columns.len() + 1, 10));
        assert_eq!(back.column(columns.len()).null_count(), 10);
        assert_eq!(back.project(&(0..columns.len()).collect::<Vec<_>>()).expect("project"), sealed.batch().expect("batch"));
        assert!(read(&path, grown(false)).is_err(), "a column that may not be null");
        assert!(read(&path, &columns[1..]).is_err(), "other columns");
        let _ = fs::remove_dir_all(&dir);
    }
}
