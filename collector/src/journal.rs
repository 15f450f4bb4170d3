//! The write-ahead journal: every accepted OTLP export request, in the data directory,
//! replayed at start so that telemetry survives a restart.
//!
//! Receivers append a request and wait until the writer thread has written it before
//! acknowledging it. Each record gets an ID, increasing across restarts, which the tables
//! keep with the rows it produced, so that replay skips what a Parquet segment already
//! holds ([`crate::segments`]). Records go to segment files (`journal-<seq>.log`), synced to
//! disk every `sync_interval`. A record is
//! `[len: u32 LE][crc32: u32 LE][signal: u8][id: u64 LE][payload]` (the checksum covers the
//! ID and the payload), so a record torn by a crash is detected and replay stops cleanly at
//! the last whole one. Segments rotate at `segment_bytes`; the oldest are deleted beyond
//! `max_bytes`.
//!
//! Guarantees: whatever was acknowledged was written, so after SIGTERM or `kill -9` nothing
//! acknowledged is lost (written records are in the OS page cache); after a machine crash,
//! at most the last `sync_interval` (1 s by default).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Write},
    path::{Path, PathBuf},
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

/// Which OTLP signal a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// `ExportTraceServiceRequest`.
    Traces = 1,
    /// `ExportMetricsServiceRequest`.
    Metrics = 2,
    /// `ExportLogsServiceRequest`.
    Logs = 3,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Traces),
            2 => Some(Self::Metrics),
            3 => Some(Self::Logs),
            _ => None,
        }
    }
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory of the segment files.
    pub dir: PathBuf,
    /// Size at which a segment is closed and a new one started.
    pub segment_bytes: u64,
    /// Total size kept; the oldest segments are deleted beyond it.
    pub max_bytes: u64,
    /// How often written records are synced to disk.
    pub sync_interval: Duration,
    /// Records queued for the writer before appends wait.
    pub queue: usize,
}

impl JournalConfig {
    /// Defaults for a journal in `dir`: 64 MiB segments, 1 GiB kept, synced every second.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, segment_bytes: 64 << 20, max_bytes: 1 << 30, sync_interval: Duration::from_secs(1), queue: 1024 }
    }
}

/// A record on its way to the writer, with whom to tell its ID once written.
type Pending = (RecordKind, Vec<u8>, oneshot::Sender<u64>);

/// Appends records; cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Pending>,
}

/// The writer thread; joining it drains the queue and syncs.
#[derive(Debug)]
pub struct JournalWriter {
    thread: Option<JoinHandle<()>>,
}

/// A journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file system refused.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The writer thread has stopped (after an I/O failure or at shutdown).
    #[error("the journal writer has stopped")]
    Stopped,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_owned(), source }
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("journal-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// What a replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Whole records replayed.
    pub records: u64,
    /// The highest record ID seen.
    pub last_id: u64,
    /// Segments that ended in a torn or corrupt record (a crash mid-write).
    pub torn_segments: u64,
}

/// Reads every whole record, oldest first, and hands it with its ID to `apply`.
pub fn replay(dir: &Path, mut apply: impl FnMut(RecordKind, u64, &[u8])) -> Result<ReplayReport, JournalError> {
    let mut report = ReplayReport::default();
    for (_, path) in segments(dir)? {
        let mut reader = BufReader::new(File::open(&path).map_err(io_err(&path))?);
        loop {
            let mut header = [0u8; HEADER];
            match reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io_err(&path)(e)),
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let kind = RecordKind::from_u8(header[8]);
            let mut id = [0u8; 8];
            id.copy_from_slice(&header[9..17]);
            let mut payload = vec![0u8; len];
            let whole = len <= MAX_RECORD && reader.read_exact(&mut payload).is_ok();
            match kind {
                Some(kind) if whole && checksum(&id, &payload) == crc => {
                    let id = u64::from_le_bytes(id);
                    apply(kind, id, &payload);
                    report.records += 1;
                    report.last_id = report.last_id.max(id);
                }
                _ => {
                    tracing::warn!(path = %path.display(), "journal segment ends in a torn record; replay continues with the next segment");
                    report.torn_segments += 1;
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// Bytes before a record's payload.
const HEADER: usize = 17;

/// No export request is larger (the receivers refuse bigger ones long before).
const MAX_RECORD: usize = 1 << 30;

fn checksum(id: &[u8; 8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(id);
    hasher.update(payload);
    hasher.finalize()
}

struct Segments {
    config: JournalConfig,
    file: File,
    path: PathBuf,
    seq: u64,
    written: u64,
}

impl Segments {
    fn open(config: JournalConfig) -> Result<Self, JournalError> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let seq = segments(&config.dir)?.last().map_or(0, |(s, _)| s + 1);
        let (file, path) = Self::create(&config.dir, seq)?;
        Ok(Self { config, file, path, seq, written: 0 })
    }

    fn create(dir: &Path, seq: u64) -> Result<(File, PathBuf), JournalError> {
        let path = dir.join(format!("journal-{seq:020}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        Ok((file, path))
    }

    fn append(&mut self, kind: RecordKind, id: u64, payload: &[u8]) -> Result<(), JournalError> {
        if self.written > 0 && self.written + payload.len() as u64 > self.config.segment_bytes {
            self.rotate()?;
        }
        let id = id.to_le_bytes();
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&checksum(&id, payload).to_le_bytes());
        record.push(kind as u8);
        record.extend_from_slice(&id);
        record.extend_from_slice(payload);
        self.file.write_all(&record).map_err(io_err(&self.path))?;
        self.written += record.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        self.seq += 1;
        let (file, path) = Self::create(&self.config.dir, self.seq)?;
        (self.file, self.path, self.written) = (file, path, 0);
        // Keep the newest segments within the size budget.
        let all = segments(&self.config.dir)?;
        let mut total: u64 = all.iter().filter_map(|(_, p)| fs::metadata(p).ok()).map(|m| m.len()).sum();
        for (seq, path) in all {
            if total <= self.config.max_bytes || seq == self.seq {
                break;
            }
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io_err(&path))?;
            total = total.saturating_sub(size);
        }
        Ok(())
    }
}

impl Journal {
    /// Opens a new segment in `config.dir` and starts the writer thread; records get IDs
    /// from `first_id` on.
    pub fn open(config: JournalConfig, first_id: u64) -> Result<(Self, JournalWriter), JournalError> {
        let sync_interval = config.sync_interval;
        let (tx, mut rx) = mpsc::channel::<Pending>(config.queue.max(1));
        let mut next_id = first_id;
        let mut segments = Segments::open(config)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|source| JournalError::Io { path: PathBuf::from("journal writer runtime"), source })?;
        let thread = std::thread::Builder::new()
            .name("meshlens-journal".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut sync = tokio::time::interval(sync_interval);
                    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut dirty = false;
                    loop {
                        tokio::select! {
                            next = rx.recv() => {
                                let Some((kind, payload, written)) = next else { break };
                                if let Err(error) = segments.append(kind, next_id, &payload) {
                                    tracing::error!(%error, "journal write failed; journaling stops");
                                    return;
                                }
                                let _ = written.send(next_id);
                                next_id += 1;
                                dirty = true;
                            }
                            _ = sync.tick(), if dirty => {
                                if let Err(error) = segments.sync() {
                                    tracing::error!(%error, "journal sync failed; journaling stops");
                                    return;
                                }
                                dirty = false;
                            }
                        }
                    }
                    if let Err(error) = segments.sync() {
                        tracing::error!(%error, "journal sync at shutdown failed");
                    }
                });
            })
            .map_err(|source| JournalError::Io { path: PathBuf::from("journal writer thread"), source })?;
        Ok((Self { tx }, JournalWriter { thread: Some(thread) }))
    }

    /// Writes a record and returns its ID once it is written; waits while the writer is
    /// behind, so a slow disk slows ingest instead of filling memory.
    pub async fn append(&self, kind: RecordKind, payload: Vec<u8>) -> Result<u64, JournalError> {
        let (written, id) = oneshot::channel();
        self.tx.send((kind, payload, written)).await.map_err(|_| JournalError::Stopped)?;
        id.await.map_err(|_| JournalError::Stopped)
    }
}

impl JournalWriter {
    /// Waits until every queued record is written and synced. Every [`Journal`] handle
    /// must be dropped first.
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshlens-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn read_all(dir: &Path) -> (Vec<(RecordKind, Vec<u8>)>, ReplayReport) {
        let mut records = Vec::new();
        let report = replay(dir, |k, _, p| records.push((k, p.to_vec()))).expect("replay");
        (records, report)
    }

    #[tokio::test]
    async fn records_survive_a_reopen_in_order() {
        let dir = temp_dir("reopen");
        let mut ids = Vec::new();
        for round in 0..2u8 {
            let first_id = if dir.exists() { read_all(&dir).1.last_id + 1 } else { 1 };
            let (journal, writer) = Journal::open(JournalConfig::new(dir.clone()), first_id).expect("open");
            ids.push(journal.append(RecordKind::Traces, vec![round, 1]).await.expect("append"));
            ids.push(journal.append(RecordKind::Logs, vec![round, 2]).await.expect("append"));
            drop(journal);
            tokio::task::spawn_blocking(move || writer.finish()).await.expect("join");
        }
        let (records, report) = read_all(&dir);
        assert_eq!(report, ReplayReport { records: 4, last_id: 4, torn_segments: 0 });
        assert_eq!(ids, [1, 2, 3, 4], "IDs increase across restarts");
        assert_eq!(records[0], (RecordKind::Traces, vec![0, 1]));
        assert_eq!(records[3], (RecordKind::Logs, vec![1, 2]));
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_torn_tail_is_detected_and_the_whole_records_kept() {
        let dir = temp_dir("torn");
        let (journal, writer) = Journal::open(JournalConfig::new(dir.clone()), 1).expect("open");
        journal.append(RecordKind::Metrics, b"whole".to_vec()).await.expect("append");
        drop(journal);
        tokio::task::spawn_blocking(move || writer.finish()).await.expect("join");
        let (_, path) = segments(&dir).expect("segments").pop().expect("one segment");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open segment");
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 7, 0, 0, 0, 0, 0, 0, 0, b'p', b'a']).expect("torn write");
        let (records, report) = read_all(&dir);
        assert_eq!(records, vec![(RecordKind::Metrics, b"whole".to_vec())]);
        assert_eq!(report.torn_segments, 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn segments_rotate_and_old_ones_are_deleted_beyond_the_budget() {
        let dir = temp_dir("rotate");
        let config = JournalConfig { segment_bytes: 100, max_bytes: 250, ..JournalConfig::new(dir.clone()) };
        let (journal, writer) = Journal::open(config, 1).expect("open");
        for i in 0..20u8 {
            journal.append(RecordKind::Traces, vec![i; 60]).await.expect("append");
        }
        drop(journal);
        tokio::task::spawn_blocking(move || writer.finish()).await.expect("join");
        let (records, _) = read_all(&dir);
        assert!(records.len() < 20 && records.len() >= 3, "kept {} records", records.len());
        assert_eq!(records.last().map(|r| r.1[0]), Some(19), "the newest records are kept");
        let _ = fs::remove_dir_all(&dir);
    }
}
