//! [`Replay`]: a request body that can be sent again, kept as it streams.
//!
//! A request is retried, or sent again after its HTTP/2 stream was refused, with the same
//! body. Rather than reading the whole body before the first attempt (a latency every
//! request would pay, and impossible to bound for a body of unknown length, such as every
//! gRPC call's), the first attempt streams it and the frames it reads are kept, up to a cap.
//! A later attempt gets a body that yields the kept frames from the start and then reads
//! on from where the source stopped, so the source is read once, whichever attempt reads
//! it. A body that outgrows its cap stops being kept (its kept frames are freed) and cannot
//! be sent again; nor can one whose source failed. Once the [`Replay`] is dropped (the
//! request has its answer: no attempt will follow), nothing more is kept and the newest
//! body frees each kept frame as it yields it, so a long request stream (a client-streaming
//! gRPC call) holds no copy of itself.
//!
//! Only the newest body made from a source reads it: an earlier attempt's body that its
//! connection still polls (an upstream that answered before reading the body, say) gets an
//! error instead of taking frames from under the newer one.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyError, BoxBody};

/// Makes the bodies of one source: each yields its frames from the start.
#[derive(Debug)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    /// The source's size hint before anything was read from it.
    hint: SizeHint,
}

/// One of a [`Replay`]'s bodies.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Which of the bodies made from the source this is: only the newest reads it.
    id: u64,
    /// Kept frames this body has yielded.
    position: usize,
    /// The source's size hint before anything was read from it.
    hint: SizeHint,
    /// Data bytes this body has yielded, for its size hint.
    yielded: u64,
    /// Whether this body has yielded the trailers.
    trailers_done: bool,
}

struct Shared {
    source: BoxBody,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    cap: usize,
    /// Data bytes read from the source.
    read: u64,
    /// The source reached its end.
    ended: bool,
    /// No more bodies will be made (the cap was passed, the source failed, or the [`Replay`]
    /// was dropped): nothing more is kept.
    spent: bool,
    /// Kept frames the newest body has yielded.
    position: usize,
    /// The source failed.
    failed: bool,
    /// The id of the newest body.
    newest: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("kept_bytes", &self.kept_bytes).field("read", &self.read).field("spent", &self.spent).finish()
    }
}

impl Replay {
    /// Wraps `source`, keeping up to `cap` bytes of it for later bodies; with the first.
    pub fn new(source: BoxBody, cap: usize) -> (Self, ReplayBody) {
        let hint = source.size_hint();
        let shared = Shared {
            source,
            kept: Vec::new(),
            kept_bytes: 0,
            trailers: None,
            cap,
            read: 0,
            ended: false,
            spent: false,
            position: 0,
            failed: false,
            newest: 0,
        };
        let shared = Arc::new(Mutex::new(shared));
        (Self { shared: shared.clone(), hint }, ReplayBody { shared, id: 0, position: 0, hint, yielded: 0, trailers_done: false })
    }

    /// A body that yields the frames read so far from the start and then reads on, and
    /// takes the source over from every body made before it; `None` once the source
    /// outgrew the cap or failed.
    pub fn body(&self) -> Option<ReplayBody> {
        let mut shared = lock(&self.shared);
        if shared.spent {
            return None;
        }
        shared.newest += 1;
        shared.position = 0;
        Some(ReplayBody { shared: self.shared.clone(), id: shared.newest, position: 0, hint: self.hint, yielded: 0, trailers_done: false })
    }

    /// Whether the source failed (so no body can be made).
    pub fn failed(&self) -> bool {
        lock(&self.shared).failed
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Nothing panics while the lock is held; a poisoned state is still whole.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut shared = lock(&this.shared);
        if this.id != shared.newest {
            return Poll::Ready(Some(Err(BodyError::new("the request body was taken over by a later attempt"))));
        }
        let spent = shared.spent;
        if let Some(kept) = shared.kept.get_mut(this.position) {
            // No body will yield it again once no more are made.
            let data = if spent { std::mem::take(kept) } else { kept.clone() };
            this.position += 1;
            shared.position = this.position;
            this.yielded += data.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = shared.trailers.as_ref().filter(|_| !this.trailers_done) {
            this.trailers_done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
        }
        if shared.ended {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(Pin::new(&mut shared.source).poll_frame(cx)) {
            None => {
                shared.ended = true;
                return Poll::Ready(None);
            }
            Some(Err(error)) => {
                shared.failed = true;
                shared.give_up();
                return Poll::Ready(Some(Err(error)));
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                shared.read += data.len() as u64;
                this.yielded += data.len() as u64;
                if !shared.spent && shared.kept_bytes + data.len() <= shared.cap {
                    shared.kept_bytes += data.len();
                    shared.kept.push(data.clone());
                    this.position = shared.kept.len();
                    shared.position = this.position;
                } else {
                    shared.give_up();
                }
                Frame::data(data)
            }
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref().filter(|_| !shared.spent) {
                    shared.trailers = Some(trailers.clone());
                    this.trailers_done = true;
                }
                frame
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        if self.id != shared.newest || self.position < shared.kept.len() || (shared.trailers.is_some() && !self.trailers_done) {
            return false;
        }
        shared.ended || shared.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut left = SizeHint::new();
        left.set_lower(self.hint.lower().saturating_sub(self.yielded));
        if let Some(upper) = self.hint.upper() {
            left.set_upper(upper.saturating_sub(self.yielded));
        }
        left
    }
}

impl Drop for Replay {
    /// Keeps nothing more, and frees the frames the newest body has yielded.
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        shared.spent = true;
        let yielded = shared.position;
        for kept in shared.kept.iter_mut().take(yielded) {
            *kept = Bytes::new();
        }
    }
}

impl Shared {
    /// Frees the kept frames (the newest body has yielded them all): no copy can be made
    /// any more.
    fn give_up(&mut self) {
        self.spent = true;
        self.kept = Vec::new();
        self.kept_bytes = 0;
        self.trailers = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;
    use crate::body;

    /// A source yielding prepared frames, one per poll; `Pending` (waking at once) before
    /// each frame marked `None`.
    struct Frames(VecDeque<Option<Frame<Bytes>>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            match self.0.pop_front() {
                Some(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    /// A source yielding one byte, then failing.
    struct Failing(bool);

    impl Body for Failing {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            let failed = std::mem::replace(&mut self.0, true);
            Poll::Ready(Some(if failed { Err(BodyError::new("reset")) } else { Ok(Frame::data(Bytes::from_static(b"x"))) }))
        }
    }

    fn source(chunks: &[&'static str], trailers: bool) -> BoxBody {
        let mut frames: VecDeque<_> = chunks.iter().flat_map(|c| [None, Some(Frame::data(Bytes::from_static(c.as_bytes())))]).collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push_back(Some(Frame::trailers(t)));
        }
        body::boxed(Frames(frames))
    }

    async fn read(body: ReplayBody) -> (String, Option<HeaderMap>) {
        let collected = body.collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        (String::from_utf8(collected.to_bytes().to_vec()).expect("utf-8"), trailers)
    }

    #[tokio::test]
    async fn a_copy_yields_the_same_frames_and_trailers_once_the_first_has_read_them() {
        let (replay, first) = Replay::new(source(&["card=", "4242"], true), 64);
        let second = replay.body().expect("a copy");
        let (text, trailers) = read(second).await;
        assert_eq!(text, "card=4242");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        let third = replay.body().expect("kept");
        assert_eq!(read(third).await.0, "card=4242", "and again");
        assert_eq!(lock(&replay.shared).read, 9, "the source was read once");
        let mut earlier = std::pin::pin!(first);
        let polled = std::future::poll_fn(|cx| earlier.as_mut().poll_frame(cx)).await;
        assert!(matches!(polled, Some(Err(_))), "a body made before the newest may not read");
    }

    #[tokio::test]
    async fn a_copy_made_half_way_yields_what_was_read_then_reads_on() {
        let (replay, mut first) = Replay::new(source(&["a", "b", "c"], false), 64);
        let frame = first.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "a");
        let second = replay.body().expect("second");
        assert_eq!(read(second).await.0, "abc");
        assert!(first.frame().await.expect("an answer").is_err(), "the first gave the source up");
    }

    #[tokio::test]
    async fn a_body_past_its_cap_or_failed_makes_no_copies() {
        let (replay, first) = Replay::new(source(&["12345", "67890"], true), 8);
        let (text, trailers) = read(first).await;
        assert_eq!((text.as_str(), trailers.is_some()), ("1234567890", true), "the body itself goes on whole");
        assert!(replay.body().is_none(), "10 bytes kept in 8: none");

        let (replay, first) = Replay::new(body::boxed(Failing(false)), 64);
        assert!(!replay.failed());
        assert!(first.collect().await.is_err());
        assert!(replay.body().is_none() && replay.failed());
    }

    /// The kept frames not freed.
    fn held(body: &ReplayBody) -> usize {
        lock(&body.shared).kept.iter().filter(|b| !b.is_empty()).count()
    }

    #[tokio::test]
    async fn once_the_replay_is_dropped_nothing_more_is_kept_and_what_was_is_freed_as_it_goes() {
        let (replay, first) = Replay::new(source(&["a", "b", "c", "d"], false), 64);
        assert_eq!(read(first).await.0, "abcd");
        let mut second = replay.body().expect("a copy");
        assert_eq!(second.frame().await.expect("a frame").expect("data").into_data().expect("data"), "a");
        drop(replay);
        assert_eq!(held(&second), 3, "the frame yielded is freed");
        assert_eq!(read(second).await.0, "bcd", "the rest, whole");

        let (replay, mut first) = Replay::new(source(&["a", "b", "c"], false), 64);
        assert_eq!(first.frame().await.expect("a frame").expect("data").into_data().expect("data"), "a");
        drop(replay);
        assert_eq!(held(&first), 0);
        let rest = first.collect().await.expect("body").to_bytes();
        assert_eq!(rest, "bc", "read on, and not kept");
    }

    #[test]
    fn copies_keep_the_sources_size_hint_and_end() {
        let (replay, first) = Replay::new(body::full("twelve bytes"), 64);
        assert_eq!((first.size_hint().exact(), replay.body().expect("copy").size_hint().exact()), (Some(12), Some(12)));
        let (replay, first) = Replay::new(body::full(Bytes::new()), 64);
        assert!(first.is_end_stream(), "a bodiless request stays bodiless (HTTP/2 ends it with its headers)");
        let copy = replay.body().expect("copy");
        assert!(copy.is_end_stream());
        assert_eq!(copy.size_hint().exact(), Some(0));
    }
}
