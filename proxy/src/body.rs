//! Body types of the request path, and [`ObservedBody`], which watches a body stream by.
//!
//! Bodies are streamed frame by frame, never buffered. An observer counts the bytes,
//! reads trailers (where gRPC puts its status) and learns how the stream ended, so that
//! telemetry is recorded when the exchange really finishes rather than at the headers.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

use crate::{error::BoxError, grpc_messages::MessageCounter};

/// The body type every layer of the request path uses.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// Why a body stream failed. A concrete type (rather than a boxed trait object) keeps
/// the request path's futures `Send` for every layer without lifetime gymnastics.
#[derive(Debug)]
pub struct BodyError(BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl BodyError {
    /// A body error made by the sidecar itself.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }
}

/// Boxes any body into a [`BoxBody`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| BodyError(e.into())).boxed_unsync()
}

/// A complete body holding `data`.
pub fn full(data: impl Into<Bytes>) -> BoxBody {
    boxed(Full::new(data.into()))
}

/// How a body stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// All frames were delivered.
    Complete,
    /// The stream failed (for example, the peer reset it).
    Error,
    /// The body was dropped before its end (for example, the client went away).
    Dropped,
}

/// Watches one body stream.
pub trait BodyObserver: Send + Unpin + 'static {
    /// A data frame passed.
    fn on_data(&mut self, data: &[u8]);
    /// Trailers passed.
    fn on_trailers(&mut self, _trailers: &HeaderMap) {}
    /// The stream failed with `error`; [`BodyObserver::on_end`] follows with
    /// [`BodyEnd::Error`].
    fn on_error(&mut self, _error: &(dyn std::error::Error + 'static)) {}
    /// The stream ended; called exactly once.
    fn on_end(&mut self, end: BodyEnd);
}

/// How far a request body has come, shared with the record of its exchange: its bytes so
/// far (and a gRPC call's messages), when its last byte arrived (Envoy's
/// `%REQUEST_DURATION%`), and whether the sidecar cut the exchange off for carrying nothing
/// either way ([`crate::stream_idle`]).
#[derive(Debug)]
pub struct RequestProgress {
    start: Instant,
    bytes: AtomicU64,
    /// A gRPC call's messages so far; none when they are not counted.
    messages: Option<AtomicU64>,
    /// Nanoseconds from `start` to the body's end, plus one; zero until it ends complete.
    ended: AtomicU64,
    idle: AtomicBool,
}

impl RequestProgress {
    /// The progress of a request that arrived at `start`, whose gRPC messages are counted
    /// when `count_messages` ([`crate::grpc_messages`]).
    pub fn new(start: Instant, count_messages: bool) -> Arc<Self> {
        let (bytes, messages, ended) = (AtomicU64::new(0), count_messages.then(|| AtomicU64::new(0)), AtomicU64::new(0));
        Arc::new(Self { start, bytes, messages, ended, idle: AtomicBool::new(false) })
    }

    /// A figure that changes whenever the request body moves: its bytes, and its end.
    pub fn activity(&self) -> u64 {
        self.bytes().wrapping_add(u64::from(self.ended.load(Ordering::Relaxed) != 0))
    }

    /// The exchange was cut off for its stream idle timeout.
    pub fn mark_idle(&self) {
        self.idle.store(true, Ordering::Relaxed);
    }

    /// Whether the exchange was cut off for its stream idle timeout.
    pub fn went_idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    /// The body's bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A gRPC call's messages so far, when they are counted.
    pub fn messages(&self) -> Option<u64> {
        self.messages.as_ref().map(|m| m.load(Ordering::Relaxed))
    }

    /// How long after the request's start its body ended, if it has ended complete.
    pub fn ended_after(&self) -> Option<Duration> {
        self.ended.load(Ordering::Relaxed).checked_sub(1).map(Duration::from_nanos)
    }

    /// The body has ended complete (now).
    pub fn end(&self) {
        let after = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = self.ended.compare_exchange(0, after + 1, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Reports a request body's progress, counting its messages when the progress counts them.
#[derive(Debug)]
pub struct RequestObserver {
    progress: Arc<RequestProgress>,
    messages: Option<MessageCounter>,
}

impl RequestObserver {
    /// Reports to `progress`.
    pub fn new(progress: Arc<RequestProgress>) -> Self {
        let messages = progress.messages.is_some().then(MessageCounter::default);
        Self { progress, messages }
    }
}

impl BodyObserver for RequestObserver {
    fn on_data(&mut self, data: &[u8]) {
        self.progress.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let (Some(counter), Some(messages)) = (self.messages.as_mut(), self.progress.messages.as_ref()) {
            counter.feed(data);
            messages.store(counter.messages(), Ordering::Relaxed);
        }
    }
    fn on_end(&mut self, end: BodyEnd) {
        if end == BodyEnd::Complete {
            self.progress.end();
        }
    }
}

/// A body that reports its frames and its end to an observer.
pub struct ObservedBody<O: BodyObserver, B: Body + Unpin = BoxBody> {
    inner: B,
    observer: Option<O>,
}

impl<O: BodyObserver, B: Body + Unpin> ObservedBody<O, B> {
    /// Wraps `inner`, reporting to `observer`.
    pub fn new(inner: B, observer: O) -> Self {
        Self { inner, observer: Some(observer) }
    }

    fn end(&mut self, end: BodyEnd) {
        if let Some(mut observer) = self.observer.take() {
            observer.on_end(end);
        }
    }
}

impl<O: BodyObserver, B: Body<Data = Bytes> + Unpin> Body for ObservedBody<O, B>
where
    B::Error: std::error::Error + 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let mut ended = false;
                if let Some(observer) = this.observer.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        observer.on_data(data);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        observer.on_trailers(trailers);
                        // Trailers are a body's last frame, and whoever reads them may drop
                        // the body without polling it again (hyper does, writing HTTP/1.1).
                        ended = true;
                    }
                }
                if ended || this.inner.is_end_stream() {
                    this.end(BodyEnd::Complete);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(observer) = this.observer.as_mut() {
                    observer.on_error(error);
                }
                this.end(BodyEnd::Error);
            }
            Poll::Ready(None) => this.end(BodyEnd::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<O: BodyObserver, B: Body + Unpin> Drop for ObservedBody<O, B> {
    fn drop(&mut self) {
        // An empty body may never be polled: its end is known from `is_end_stream`.
        let end = if self.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Dropped };
        self.end(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        bytes: usize,
        trailers: bool,
        end: Option<BodyEnd>,
    }

    struct Probe(Arc<std::sync::Mutex<Seen>>);

    impl BodyObserver for Probe {
        fn on_data(&mut self, data: &[u8]) {
            if let Ok(mut s) = self.0.lock() {
                s.bytes += data.len();
            }
        }
        fn on_trailers(&mut self, _: &HeaderMap) {
            if let Ok(mut s) = self.0.lock() {
                s.trailers = true;
            }
        }
        fn on_end(&mut self, end: BodyEnd) {
            if let Ok(mut s) = self.0.lock() {
                assert!(s.end.is_none(), "on_end called twice");
                s.end = Some(end);
            }
        }
    }

    /// A body that yields prepared frames, one per poll.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames() -> BoxBody {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        boxed(Frames(
            [
                Frame::data(Bytes::from_static(b"hello ")),
                Frame::data(Bytes::from_static(b"world")),
                Frame::trailers(trailers),
            ]
            .into(),
        ))
    }

    #[tokio::test]
    async fn counts_bytes_sees_trailers_and_completes_once() {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let body = ObservedBody::new(frames(), Probe(seen.clone()));
        let collected = body.collect().await.expect("collect");
        assert!(collected.trailers().is_some());
        let s = seen.lock().expect("lock");
        assert_eq!(s.bytes, 11);
        assert!(s.trailers);
        assert_eq!(s.end, Some(BodyEnd::Complete));
    }

    #[tokio::test]
    async fn a_body_dropped_once_its_trailers_passed_was_complete() {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let mut body = ObservedBody::new(frames(), Probe(seen.clone()));
        while let Some(frame) = body.frame().await {
            if frame.expect("frame").is_trailers() {
                break;
            }
        }
        drop(body);
        let s = seen.lock().expect("lock");
        assert!(s.trailers);
        assert_eq!(s.end, Some(BodyEnd::Complete));
    }

    #[tokio::test]
    async fn a_request_body_counts_its_bytes_and_when_it_ended_complete() {
        let progress = RequestProgress::new(Instant::now(), false);
        let mut body = ObservedBody::new(frames(), RequestObserver::new(progress.clone()));
        let _first = body.frame().await;
        assert_eq!((progress.bytes(), progress.ended_after()), (6, None), "streaming");
        let collected = body.collect().await.expect("collect");
        assert!(collected.trailers().is_some());
        let ended = progress.ended_after().expect("ended");
        assert_eq!(progress.bytes(), 11);
        progress.end();
        assert_eq!(progress.ended_after(), Some(ended), "the first end counts");

        let cut = RequestProgress::new(Instant::now(), false);
        let mut body = ObservedBody::new(frames(), RequestObserver::new(cut.clone()));
        let _first = body.frame().await;
        drop(body);
        assert_eq!(cut.ended_after(), None, "a body dropped before its end never arrived whole");
    }

    #[tokio::test]
    async fn dropping_early_reports_dropped() {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let mut body = ObservedBody::new(frames(), Probe(seen.clone()));
        let _first = body.frame().await;
        drop(body);
        assert_eq!(seen.lock().expect("lock").end, Some(BodyEnd::Dropped));
    }
}
