//! The stream idle timeout of an ordinary exchange (Envoy's `stream_idle_timeout`): an
//! exchange that carries nothing either way for `[streams] idle_timeout` is cut off, whether
//! it is still waiting for its response headers or its response is streaming.
//!
//! Before the headers, [`until_headers`] awaits the response while watching the request's
//! progress: a request whose body has ended (or stalled) and whose upstream says nothing for
//! the timeout gets `408` with flag `SI` (the inner exchange, and its upstream stream, are
//! dropped). On the inbound side this is the only bound on an application that never
//! answers; on the outbound side a service `timeout` no longer than the idle timeout (15 s
//! by default) comes first, and then no check is armed.
//!
//! After them, [`IdleBody`] wraps the response body. It costs nothing while frames keep
//! coming; the first time the body has nothing to give, it arms a check every quarter of the
//! timeout, which compares the frames of both bodies with the last check's, so the cut comes
//! 1 to 1.25 times the timeout after the last frame (as for upgraded connections). A body
//! that is not read (its reader is held up downstream) is not checked, so a slow reader is
//! never cut. At the cut the body fails with [`StreamIdleTimeout`], which resets the
//! downstream stream (closes an HTTP/1.1 connection) and drops the upstream one, and the
//! exchange's [`RequestProgress`] remembers why, so its record gets flag `SI` and an
//! `idle_timeout` event.

use std::{
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{BodyError, BoxBody, RequestProgress};

/// Why an idle body failed.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout: nothing crossed either way for {0:?}")]
pub struct StreamIdleTimeout(pub Duration);

/// The default idle timeout: Envoy's default `stream_idle_timeout`.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Checks per timeout: the cut comes after this many quiet checks in a row.
const CHECKS: u32 = 4;

/// Watches a figure that moves with a stream's activity for a quiet spell of the idle
/// timeout. It looks every quarter of the timeout, so the spell is noticed 1 to 1.25 times
/// the timeout after the figure last moved. Shared by [`IdleBody`], upgraded connections,
/// and the idle and request headers timeouts of accepted connections.
pub struct IdleCheck {
    every: Duration,
    timer: Pin<Box<Sleep>>,
    /// The figure at the last look.
    seen: u64,
    /// Looks in a row that found it unchanged.
    quiet: u32,
}

impl IdleCheck {
    /// Starts watching for `idle` without activity, the figure being `activity` now.
    pub fn new(idle: Duration, activity: u64) -> Self {
        let every = (idle / CHECKS).max(Duration::from_millis(1));
        Self { every, timer: Box::pin(tokio::time::sleep(every)), seen: activity, quiet: 0 }
    }

    /// Ready once `activity` has stayed the same for the timeout; otherwise the next look is
    /// armed and `cx` woken for it. A look that comes late (nobody polled) counts once.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>, activity: impl Fn() -> u64) -> Poll<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            self.timer.as_mut().reset(Instant::now() + self.every);
            let now = activity();
            self.quiet = if now == self.seen { self.quiet + 1 } else { 0 };
            self.seen = now;
            if self.quiet >= CHECKS {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// Awaits `response`, the exchange's answer, unless nothing crosses for `idle` first: no
/// answer and no progress of the request's body (`request`). `None` when it timed out, the
/// answer's future dropped. The check is armed only once the answer has to be waited for,
/// and not at all if `bounded` then names a limit on the wait no longer than `idle` (a
/// service timeout, which always comes first).
pub async fn until_headers<T>(
    response: impl Future<Output = T>,
    idle: Duration,
    request: &RequestProgress,
    bounded: impl Fn() -> Option<Duration>,
) -> Option<T> {
    let mut response = pin!(response);
    // `Some(None)`: the wait is bounded by a shorter limit and needs no check.
    let mut check: Option<Option<IdleCheck>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(answer) = response.as_mut().poll(cx) {
            return Poll::Ready(Some(answer));
        }
        let armed = check.get_or_insert_with(|| {
            let covered = bounded().is_some_and(|limit| limit <= idle);
            (!covered).then(|| IdleCheck::new(idle, request.activity()))
        });
        match armed {
            Some(check) => check.poll_idle(cx, || request.activity()).map(|()| None),
            None => Poll::Pending,
        }
    })
    .await
}

/// A response body cut off once its exchange has carried nothing for the idle timeout.
pub struct IdleBody {
    inner: BoxBody,
    /// `None`: never cut off.
    idle: Option<Duration>,
    request: Arc<RequestProgress>,
    /// Armed the first time the body has nothing to give.
    check: Option<IdleCheck>,
    /// Frames of this body so far.
    frames: u64,
}

impl IdleBody {
    /// Wraps the response body `inner` of the exchange whose request is `request`.
    pub fn new(inner: BoxBody, idle: Option<Duration>, request: Arc<RequestProgress>) -> Self {
        Self { inner, idle, request, check: None, frames: 0 }
    }
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(Some(frame)) => {
                this.frames += 1;
                return Poll::Ready(Some(frame));
            }
            Poll::Ready(None) => {
                this.check = None;
                return Poll::Ready(None);
            }
        }
        let Some(idle) = this.idle else { return Poll::Pending };
        let (frames, request) = (this.frames, &this.request);
        let activity = || frames.wrapping_add(request.activity());
        let check = this.check.get_or_insert_with(|| IdleCheck::new(idle, activity()));
        if check.poll_idle(cx, activity).is_pending() {
            return Poll::Pending;
        }
        this.check = None;
        this.request.mark_idle();
        Poll::Ready(Some(Err(BodyError::new(StreamIdleTimeout(idle)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::body::{self, BodyObserver};

    const IDLE: Duration = Duration::from_secs(8);

    /// A body whose frames come from `rx`, pending in between; ends when `rx` closes.
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed(request: &Arc<RequestProgress>) -> (mpsc::UnboundedSender<Bytes>, IdleBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, IdleBody::new(body::boxed(Fed(rx)), Some(IDLE), request.clone()))
    }

    /// Reads `body` to its end (or failure), from a task of its own, noting when it ended.
    fn read(mut body: IdleBody) -> tokio::task::JoinHandle<(Result<usize, BodyError>, Instant)> {
        tokio::spawn(async move {
            let mut frames = 0;
            loop {
                match body.frame().await {
                    Some(Ok(_)) => frames += 1,
                    Some(Err(e)) => return (Err(e), Instant::now()),
                    None => return (Ok(frames), Instant::now()),
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_never_comes_times_out_one_to_one_and_a_quarter_timeouts_after_the_request() {
        let request = RequestProgress::new(std::time::Instant::now(), false);
        let mut request_body = crate::body::RequestObserver::new(Arc::clone(&request));
        BodyObserver::on_data(&mut request_body, &[0; 10]);
        request.end();
        let ended = Instant::now();
        let answer = until_headers(std::future::pending::<()>(), IDLE, &request, || None).await;
        assert_eq!(answer, None);
        let waited = ended.elapsed();
        assert!(waited >= IDLE && waited <= IDLE + IDLE / 4, "timed out {waited:?} after the request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_bounded_by_a_shorter_service_timeout_is_left_to_it() {
        let request = RequestProgress::new(std::time::Instant::now(), false);
        request.end();
        let never = |bound: Duration| {
            let request = Arc::clone(&request);
            tokio::spawn(async move { until_headers(std::future::pending::<()>(), IDLE, &request, || Some(bound)).await })
        };
        let (shorter, equal, longer) = (never(IDLE / 2), never(IDLE), never(IDLE * 2));
        tokio::time::sleep(IDLE * 10).await;
        assert!(!shorter.is_finished() && !equal.is_finished(), "no check armed under a limit no longer than the timeout");
        assert!(longer.is_finished(), "a longer limit leaves the idle timeout to come first");
        assert_eq!(longer.await.expect("task"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_body_still_arriving_keeps_the_wait_for_the_answer_open() {
        let request = RequestProgress::new(std::time::Instant::now(), false);
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let waiting = {
            let request = Arc::clone(&request);
            tokio::spawn(async move { until_headers(answer_rx, IDLE, &request, || None).await })
        };
        // A request body frame every 3/4 of the timeout (an upload the upstream answers at its
        // end), then the answer 3/4 of a timeout after the last: never idle for the timeout.
        let mut request_body = crate::body::RequestObserver::new(Arc::clone(&request));
        for _ in 0..8 {
            tokio::time::sleep(IDLE * 3 / 4).await;
            BodyObserver::on_data(&mut request_body, &[0; 7]);
        }
        tokio::time::sleep(IDLE * 3 / 4).await;
        assert!(!waiting.is_finished());
        answer_tx.send("answer").expect("send");
        let answer = waiting.await.expect("task").expect("not timed out");
        assert_eq!(answer, Ok("answer"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_is_cut_off_one_to_one_and_a_quarter_timeouts_later() {
        let request = RequestProgress::new(std::time::Instant::now(), false);
        let (tx, body) = fed(&request);
        let reader = read(body);
        tx.send(Bytes::from_static(b"first")).expect("send");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let last = Instant::now();
        let (ended, at) = reader.await.expect("reader");
        let error = ended.expect_err("cut off");
        assert!(error.to_string().contains("stream idle timeout"), "{error}");
        let quiet = at - last;
        assert!(quiet >= IDLE - Duration::from_millis(10) && quiet <= IDLE + IDLE / 4, "cut {quiet:?} after the last frame");
        assert!(request.went_idle());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_either_way_keep_the_exchange_open() {
        let request = RequestProgress::new(std::time::Instant::now(), false);
        let (tx, body) = fed(&request);
        let reader = read(body);
        // A frame of the response one time, of the request body (a bidirectional stream) the
        // next, each 3/4 of the timeout after the one before: never idle for the timeout.
        let mut request_body = crate::body::RequestObserver::new(Arc::clone(&request));
        for round in 0..10 {
            tokio::time::sleep(IDLE * 3 / 4).await;
            if round % 2 == 0 {
                tx.send(Bytes::from_static(b"response")).expect("send");
            } else {
                BodyObserver::on_data(&mut request_body, &[0; 7]);
            }
        }
        drop(tx);
        let (ended, _) = reader.await.expect("reader");
        assert_eq!(ended.expect("ended complete"), 5);
        assert!(!request.went_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_a_body_may_wait_for_ever() {
        let request = RequestProgress::new(std::time::Instant::now(), false);
        let (tx, rx) = mpsc::unbounded_channel();
        let body = IdleBody::new(body::boxed(Fed(rx)), None, request.clone());
        let reader = read(body);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!reader.is_finished());
        drop(tx);
        assert_eq!(reader.await.expect("reader").0.expect("complete"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_reads_is_not_cut_off() {
        let request = RequestProgress::new(std::time::Instant::now(), false);
        let (tx, mut body) = fed(&request);
        // Read once until it waits, then leave it unread for many timeouts (a slow reader).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        tokio::time::sleep(IDLE * 10).await;
        tx.send(Bytes::from_static(b"late")).expect("send");
        let frame = body.frame().await.expect("a frame").expect("not cut off");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"late")));
        assert!(!request.went_idle());
    }
}
