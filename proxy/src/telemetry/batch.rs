//! One signal's export batches, encoded as the records arrive.
//!
//! [`Telemetry::record`](super::Telemetry::record) encodes each finished exchange straight
//! into the open batch of its signal (a span, an access-log record), while the record is
//! still in the cache; the export task only closes batches and sends them. Encoding a whole
//! batch at its flush (about 100 records, cold by then) held the request thread for
//! 0.5–0.9 ms at 1,000 req/s, and the request that arrived meanwhile waited for all of it:
//! most of the slowest 1 % of requests were those (`meshlens bench proxy`,
//! docs/performance.md). Now each request pays for its own records, a few µs.
//!
//! The batches waiting to be sent hold at most `capacity` records and [`HELD_BYTES`] of
//! them; past either a record is dropped and counted, so a slow or absent collector costs
//! memory up to that bound and no time, however large the records a caller's requests make
//! (a path or a `User-Agent` of tens of kilobytes). A batch closes when it holds `max_batch`
//! records or [`BATCH_BYTES`], or when the export task closes it at its flush time, so no
//! export request comes near the 4 MiB that OTLP receivers take by default. The export task
//! is woken for a batch's first record and for a full batch, never for each record.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{sync::Notify, time::Instant};

use super::{RequestRecord, wire};

/// Encoded records a signal's batches hold unsent at most: twice what the default 4,096
/// records of under 1 KB take.
pub const HELD_BYTES: usize = 8 << 20;

/// Encoded records past which a batch closes.
pub const BATCH_BYTES: usize = 1 << 20;

/// A closed batch, ready to send.
#[derive(Debug)]
pub struct Closed {
    /// The export request.
    pub request: wire::Request,
    /// The records it holds.
    pub records: u64,
    /// Their encoded bytes.
    bytes: usize,
}

/// One signal's open batch and the closed ones waiting for the export task.
#[derive(Debug)]
pub struct Batches {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
    max_batch: usize,
    encode: fn(&mut wire::Encoder, &RequestRecord),
    resource: Arc<Vec<u8>>,
    scope: Arc<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    encoder: wire::Encoder,
    /// Records in the open batch.
    open: usize,
    /// When the open batch took its first record.
    open_since: Option<Instant>,
    closed: VecDeque<Closed>,
    /// Records in the open and closed batches.
    held: usize,
    /// Encoded bytes of the closed batches (the open one's are the encoder's).
    closed_bytes: usize,
    /// A sent request's records buffer, for the next batch.
    spare: Option<Vec<u8>>,
    /// Shut down: records are no longer taken.
    shut: bool,
}

impl Batches {
    /// Batches of at most `max_batch` records, holding at most `capacity` records unsent,
    /// each record written by `encode` with `encoder`, the requests wrapped in the
    /// pre-encoded `resource` and `scope`.
    pub fn new(
        capacity: usize,
        max_batch: usize,
        (encoder, encode): (wire::Encoder, fn(&mut wire::Encoder, &RequestRecord)),
        resource: Arc<Vec<u8>>,
        scope: Arc<Vec<u8>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State { encoder, ..State::default() }),
            wake: Notify::new(),
            capacity,
            max_batch: max_batch.max(1),
            encode,
            resource,
            scope,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing in a critical section panics; a poisoned lock still holds whole batches.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Encodes `record` into the open batch; false if it was dropped (the batches are full,
    /// or export has shut down). Never waits, except for another thread's encoding of a
    /// record.
    pub fn offer(&self, record: &RequestRecord) -> bool {
        let mut state = self.state();
        if state.shut || state.held >= self.capacity || state.closed_bytes + state.encoder.pushed_bytes() >= HELD_BYTES {
            return false;
        }
        (self.encode)(&mut state.encoder, record);
        state.open += 1;
        state.held += 1;
        let wake = if state.open == 1 {
            state.open_since = Some(Instant::now());
            true
        } else {
            false
        };
        let full = state.open >= self.max_batch || state.encoder.pushed_bytes() >= BATCH_BYTES;
        if full {
            self.close(&mut state);
        }
        drop(state);
        if wake || full {
            self.wake.notify_one();
        }
        true
    }

    fn close(&self, state: &mut State) {
        if state.open == 0 {
            return;
        }
        let next = state.spare.take().unwrap_or_default();
        let bytes = state.encoder.pushed_bytes();
        let request = state.encoder.finish(&self.resource, &self.scope, next);
        state.closed.push_back(Closed { request, records: state.open as u64, bytes });
        state.closed_bytes += bytes;
        state.open = 0;
        state.open_since = None;
    }

    /// Closes the open batch (its flush time has come).
    pub fn close_open(&self) {
        let mut state = self.state();
        self.close(&mut state);
    }

    /// The oldest closed batch; its records no longer count against the capacity.
    pub fn take_closed(&self) -> Option<Closed> {
        let mut state = self.state();
        let closed = state.closed.pop_front()?;
        state.held -= closed.records as usize;
        state.closed_bytes -= closed.bytes;
        Some(closed)
    }

    /// When the open batch took its first record, if it has one.
    pub fn open_since(&self) -> Option<Instant> {
        self.state().open_since
    }

    /// Waits until a batch takes its first record or fills (at once if that happened since
    /// the last call).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Takes back a sent request's buffer for a later batch.
    pub fn recycle(&self, request: wire::Request) {
        let mut state = self.state();
        if state.spare.is_none() {
            state.spare = Some(request.into_items());
        }
    }

    /// Stops taking records and closes the open batch, for a last flush.
    pub fn shut(&self) {
        let mut state = self.state();
        state.shut = true;
        self.close(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{classify::Outcome, telemetry::tests::record};

    fn batches(capacity: usize, max_batch: usize) -> Arc<Batches> {
        Batches::new(capacity, max_batch, (wire::Encoder::default(), |e, r| e.push_span(r)), Arc::new(Vec::new()), Arc::new(Vec::new()))
    }

    #[test]
    fn a_batch_closes_when_full_and_the_rest_waits_for_its_flush() {
        let b = batches(100, 3);
        for _ in 0..4 {
            assert!(b.offer(&record(true, Outcome::Success, 1)));
        }
        let full = b.take_closed().expect("the first three records closed a batch");
        assert_eq!(full.records, 3);
        assert!(b.take_closed().is_none(), "the fourth is in the open batch");
        assert!(b.open_since().is_some());
        b.close_open();
        assert_eq!(b.take_closed().map(|c| c.records), Some(1));
        assert!(b.open_since().is_none(), "nothing open");
        b.close_open();
        assert!(b.take_closed().is_none(), "an empty batch is not sent");
    }

    #[test]
    fn records_past_the_capacity_are_dropped_until_batches_are_taken() {
        let b = batches(4, 2);
        let offered: Vec<bool> = (0..6).map(|_| b.offer(&record(true, Outcome::Success, 1))).collect();
        assert_eq!(offered, [true, true, true, true, false, false]);
        assert_eq!(b.take_closed().map(|c| c.records), Some(2));
        assert!(b.offer(&record(true, Outcome::Success, 1)), "room again");
        b.shut();
        assert!(!b.offer(&record(true, Outcome::Success, 1)), "shut: dropped");
        let left: u64 = std::iter::from_fn(|| b.take_closed()).map(|c| c.records).sum();
        assert_eq!(left, 3, "what was held is flushed");
    }

    #[test]
    fn large_records_close_batches_by_size_and_are_held_up_to_a_byte_bound() {
        // A caller's request with a 60 KB path: about 60 KB encoded.
        let mut large = record(true, Outcome::Success, 1);
        large.path = format!("/{}", "a".repeat(60_000));
        let b = batches(100_000, 1_000);
        let mut offered = 0_usize;
        while b.offer(&large) {
            offered += 1;
            assert!(offered < 1_000, "the byte bound stops them");
        }
        let mut one = wire::Encoder::default();
        one.push_span(&large);
        let size = one.pushed_bytes();
        assert!(size > 60_000, "{size}");
        assert_eq!(offered, HELD_BYTES.div_ceil(size), "held up to HELD_BYTES, then dropped");
        let first = b.take_closed().expect("batches closed by size");
        assert_eq!(first.records as usize, BATCH_BYTES.div_ceil(size));
        assert!(first.request.encoded_len() < BATCH_BYTES + size + 1_000, "{}", first.request.encoded_len());
        assert!(b.offer(&large), "room again once a batch is taken");
        // Ordinary records still fill batches by count.
        let small = batches(100, 3);
        (0..3).for_each(|_| assert!(small.offer(&record(true, Outcome::Success, 1))));
        assert_eq!(small.take_closed().map(|c| c.records), Some(3));
    }

    #[tokio::test]
    async fn the_export_task_is_woken_for_a_first_record_and_a_full_batch_only() {
        let b = batches(100, 3);
        b.offer(&record(true, Outcome::Success, 1));
        tokio::time::timeout(std::time::Duration::from_secs(1), b.changed()).await.expect("woken by the first record");
        b.offer(&record(true, Outcome::Success, 1));
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(20), b.changed()).await;
        assert!(quiet.is_err(), "not woken by a record that neither opens nor fills a batch");
        b.offer(&record(true, Outcome::Success, 1));
        tokio::time::timeout(std::time::Duration::from_secs(1), b.changed()).await.expect("woken by a full batch");
    }
}
