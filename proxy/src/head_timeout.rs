//! The request headers timeout of an accepted connection (Envoy's `request_headers_timeout`,
//! nginx's `client_header_timeout`): a connection whose request head is still not whole the
//! timeout after its first byte is closed. Without it a peer that sends a head a byte at a
//! time (a slowloris) holds the connection and its memory as long as it likes, since every
//! byte resets the idle timeout.
//!
//! The connection's task looks at its [`Activity`] every quarter of the timeout; the first
//! look that finds a head on its way starts the clock, so the connection closes 1 to 1.25
//! times the timeout after the head's first byte. The time between requests is not a head's:
//! an idle keep-alive connection is the idle timeout's. A connection that opened with
//! HTTP/2's preface is no longer looked at: what crosses it between streams (`PING`,
//! `SETTINGS`, `WINDOW_UPDATE`) is not a request head, and a stalled preface is one.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

use crate::connection::Activity;

/// The default request headers timeout: hyper's default `header_read_timeout`, within the
/// 20 to 40 s Apache's `mod_reqtimeout` allows.
pub const REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// Looks per timeout.
const LOOKS: u32 = 4;

/// Watches one connection for a request head slower than the timeout.
pub struct HeadCheck {
    timeout: Duration,
    every: Duration,
    /// `None` once the connection has shown it speaks HTTP/2.
    timer: Option<Pin<Box<Sleep>>>,
    /// The head on its way at the last look, and when a look first saw it.
    seen: Option<(u64, Instant)>,
}

impl HeadCheck {
    /// Starts watching for heads slower than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let every = (timeout / LOOKS).max(Duration::from_millis(1));
        Self { timeout, every, timer: Some(Box::pin(tokio::time::sleep(every))), seen: None }
    }

    /// Ready once one request head has been on its way on the connection of `activity` for
    /// the timeout; otherwise the next look is armed and `cx` woken for it.
    pub fn poll_late(&mut self, cx: &mut Context<'_>, activity: &Activity) -> Poll<()> {
        while let Some(timer) = self.timer.as_mut() {
            if timer.as_mut().poll(cx).is_pending() {
                break;
            }
            if activity.is_http2() {
                self.timer = None;
                break;
            }
            let now = Instant::now();
            match (activity.head_on_its_way(), self.seen) {
                (Some(head), Some((seen, since))) if head == seen => {
                    if now.duration_since(since) >= self.timeout {
                        return Poll::Ready(());
                    }
                }
                (head, _) => self.seen = head.map(|head| (head, now)),
            }
            timer.as_mut().reset(now + self.every);
        }
        Poll::Pending
    }
}
