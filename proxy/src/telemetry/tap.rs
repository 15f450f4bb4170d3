//! Live request tap, as Linkerd's `tap`: while someone reads the admin `/tap`, each request
//! the sidecar finishes reaches them as a JSON line, the stdout JSON access log's, whatever
//! the access-log settings. The query picks which: `direction` (`inbound` or `outbound`),
//! `method`, `path` (a prefix), `authority`, `destination` (service), `source` (workload),
//! `failures=true`; the response ends after `limit` lines (100 by default, at most 10,000)
//! or `duration` (`60s`, at most `10m`), whichever comes first.
//!
//! Records reach the tap last, after the metrics, spans and access logs are done with them,
//! through a bounded broadcast channel: with no tap open that costs one atomic load a
//! request. A reader that falls behind misses records, which a line `{"tap_missed": n}`
//! says; it never slows a request. When the sidecar starts to stop (its shutdown signal,
//! which the admin server hands each tap), each open tap ends with a line
//! `{"tap_end": "the sidecar is stopping"}` instead of holding its connection through the
//! grace period.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::{broadcast, mpsc, watch};

use super::{RequestRecord, Side, access_log};
use crate::{
    body::{self, BodyError, BoxBody},
    classify::Outcome,
};

/// Records held for the slowest reader before it misses some.
const CAPACITY: usize = 1024;
/// The most lines one tap returns.
pub const MAX_LIMIT: usize = 10_000;
/// The longest one tap stays open.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// Where finished requests are offered to the open taps.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: broadcast::Sender<Arc<RequestRecord>>,
    /// Taps open: read on every request, so the check is one atomic load (the channel's
    /// own receiver count takes a lock).
    open: Arc<AtomicUsize>,
}

impl Default for Tap {
    fn default() -> Self {
        Self { tx: broadcast::channel(CAPACITY).0, open: Arc::default() }
    }
}

/// The last line of a tap the sidecar's stop ended.
const STOPPING: &str = "{\"tap_end\":\"the sidecar is stopping\"}\n";

/// Counts a tap as open until it drops.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tap {
    /// Whether a tap is open: the request path asks before it hands a record over, so
    /// with none open the record is not even moved.
    #[inline]
    pub fn listening(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// Hands a finished request to the open taps ([`Tap::listening`] said there were some;
    /// one that closed since has no receiver left, and nothing is sent).
    pub fn offer(&self, record: RequestRecord) {
        let _ = self.tx.send(Arc::new(record));
    }

    /// Opens a tap: the body streams the JSON lines of the requests `query` picks, from now
    /// on, until its limit or its time is up, the reader goes away, or `stopping` (the
    /// sidecar's shutdown signal) turns true, which a last line says.
    pub fn open(&self, query: TapQuery, mut stopping: watch::Receiver<bool>) -> BoxBody {
        let mut records = self.tx.subscribe();
        self.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(self.open.clone());
        let (lines, out) = mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            let _open = open;
            let deadline = tokio::time::sleep(query.duration);
            tokio::pin!(deadline);
            let mut sent = 0;
            while sent < query.limit {
                let received = tokio::select! {
                    () = &mut deadline => break,
                    () = lines.closed() => break,
                    // A signal whose sender is gone never turns true.
                    Ok(()) = async { stopping.wait_for(|stopping| *stopping).await.map(drop) } => {
                        let _ = lines.send(Bytes::from_static(STOPPING.as_bytes())).await;
                        break;
                    }
                    received = records.recv() => received,
                };
                let mut line = match received {
                    Ok(record) if query.admits(&record) => {
                        sent += 1;
                        access_log::json_line(&record)
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => format!("{{\"tap_missed\":{missed}}}"),
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                line.push('\n');
                if lines.send(Bytes::from(line)).await.is_err() {
                    break;
                }
            }
        });
        body::boxed(Lines(out))
    }
}

/// Which requests a tap streams, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct TapQuery {
    direction: Option<Side>,
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    destination: Option<String>,
    source: Option<String>,
    failures: bool,
    limit: usize,
    duration: Duration,
}

impl Default for TapQuery {
    fn default() -> Self {
        Self {
            direction: None,
            method: None,
            path: None,
            authority: None,
            destination: None,
            source: None,
            failures: false,
            limit: 100,
            duration: Duration::from_secs(60),
        }
    }
}

impl TapQuery {
    /// Reads a `/tap` query string; an error names what is wrong.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut q = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let text = Some(value.to_string()).filter(|v| !v.is_empty());
            match &*key {
                "direction" => {
                    q.direction = match &*value {
                        "inbound" => Some(Side::Inbound),
                        "outbound" => Some(Side::Outbound),
                        other => return Err(format!("direction: {other:?} is neither inbound nor outbound")),
                    }
                }
                "method" => q.method = text.map(|m| m.to_ascii_uppercase()),
                "path" => q.path = text,
                "authority" => q.authority = text,
                "destination" => q.destination = text,
                "source" => q.source = text,
                "failures" => q.failures = value.parse().map_err(|_| format!("failures: {value:?} is neither true nor false"))?,
                "limit" => {
                    q.limit = value.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                        format!("limit: {value:?} is not a number of lines from 1 to {MAX_LIMIT}")
                    })?;
                }
                "duration" => {
                    let duration = meshlens_common::duration::parse_duration(&value).map_err(|e| format!("duration: {e}"))?;
                    if duration.is_zero() || duration > MAX_DURATION {
                        return Err(format!("duration: {value:?} is not between 0 and {}s", MAX_DURATION.as_secs()));
                    }
                    q.duration = duration;
                }
                other => {
                    let known = "direction, method, path, authority, destination, source, failures, limit, duration";
                    return Err(format!("unknown parameter {other:?}: a tap takes {known}"));
                }
            }
        }
        Ok(q)
    }

    /// Whether `r` is one of the requests asked for.
    fn admits(&self, r: &RequestRecord) -> bool {
        let is = |wanted: &Option<String>, value: Option<&str>| wanted.as_deref().is_none_or(|w| Some(w) == value);
        self.direction.is_none_or(|side| side == r.side)
            && is(&self.method, r.method.as_ref().map(http::Method::as_str))
            && self.path.as_deref().is_none_or(|prefix| r.path.starts_with(prefix))
            && is(&self.authority, r.authority.as_deref())
            && is(&self.destination, Some(&r.destination_service))
            && is(&self.source, r.source.as_ref().map(|s| &*s.workload))
            && (!self.failures || r.classification.outcome == Outcome::Failure)
    }
}

/// A response body of the lines a tap's task sends.
struct Lines(mpsc::Receiver<Bytes>);

impl Body for Lines {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.0.poll_recv(cx).map(|line| line.map(|line| Ok(Frame::data(line))))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::telemetry::tests::record;

    /// A shutdown signal that never turns true (its sender is gone).
    fn running() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    #[test]
    fn queries_are_read_and_checked() {
        let q = TapQuery::parse("direction=outbound&method=get&path=%2Fapi&failures=true&limit=5&duration=2s").expect("valid");
        assert_eq!((q.direction, q.method.as_deref(), q.path.as_deref()), (Some(Side::Outbound), Some("GET"), Some("/api")));
        assert_eq!((q.failures, q.limit, q.duration), (true, 5, Duration::from_secs(2)));
        assert_eq!(TapQuery::parse("").expect("valid"), TapQuery::default());
        for (bad, says) in [
            ("direction=up", "direction"),
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("duration=11m", "duration"),
            ("duration=soon", "duration"),
            ("failures=maybe", "failures"),
            ("pod=x", "unknown parameter \"pod\""),
        ] {
            let error = TapQuery::parse(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_query_picks_its_requests() {
        let ok = record(true, Outcome::Success, 3);
        let failed = record(true, Outcome::Failure, 3);
        let admits = |query: &str, r: &RequestRecord| TapQuery::parse(query).expect("valid").admits(r);
        assert!(admits("", &ok) && admits("", &failed));
        assert!(!admits("failures=true", &ok) && admits("failures=true", &failed));
        let side = if ok.side == Side::Inbound { "inbound" } else { "outbound" };
        let other = if ok.side == Side::Inbound { "outbound" } else { "inbound" };
        assert!(admits(&format!("direction={side}"), &ok) && !admits(&format!("direction={other}"), &ok));
        assert!(admits("method=GET&path=/", &ok) && !admits("method=POST", &ok) && !admits("path=/nope", &ok));
        assert!(admits(&format!("destination={}", ok.destination_service), &ok) && !admits("destination=elsewhere", &ok));
    }

    #[tokio::test]
    async fn a_tap_streams_what_it_picks_until_its_limit_and_a_slow_reader_misses_records() {
        let tap = Tap::default();
        assert!(!tap.listening());
        let body = tap.open(TapQuery::parse("failures=true&limit=2").expect("valid"), running());
        for outcome in [Outcome::Success, Outcome::Failure, Outcome::Success, Outcome::Failure, Outcome::Failure] {
            tap.offer(record(true, outcome, 1));
        }
        let text = String::from_utf8(body.collect().await.expect("body").to_bytes().to_vec()).expect("UTF-8");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
        assert_eq!(lines.len(), 2, "the limit, and nothing offered before it opened: {text}");
        assert!(lines.iter().all(|l| l["classification"] == "failure"), "{text}");

        // Nobody reads: past the channel's room, the tap says what it missed.
        let mut body = tap.open(TapQuery::parse(&format!("limit={MAX_LIMIT}&duration=1s")).expect("valid"), running());
        for _ in 0..CAPACITY + 100 {
            tap.offer(record(true, Outcome::Success, 1));
        }
        let mut missed = false;
        while let Some(Ok(frame)) = body.frame().await {
            let line = frame.into_data().unwrap_or_default();
            missed |= line.starts_with(b"{\"tap_missed\":");
        }
        assert!(missed, "a reader that falls behind is told");
        drop(body);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(tap.open.load(Ordering::Relaxed), 0, "ended taps are not counted as open");
    }

    #[tokio::test]
    async fn taps_end_when_the_sidecar_stops() {
        let tap = Tap::default();
        let (shutdown, stopping) = watch::channel(false);
        let body = tap.open(TapQuery::default(), stopping.clone());
        tap.offer(record(true, Outcome::Success, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = shutdown.send(true);
        let ended = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.expect("ends before its duration");
        let text = String::from_utf8(ended.expect("body").to_bytes().to_vec()).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(format!("{}\n", lines[1]), STOPPING);
        let late = tap.open(TapQuery::default(), stopping).collect().await.expect("body").to_bytes();
        assert_eq!(late, STOPPING.as_bytes(), "one opened while stopping ends at once");
    }
}
