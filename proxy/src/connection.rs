//! TCP connection metrics: connections opened and closed, and bytes received and sent, per
//! listener side. A [`Metered`] stream counts as it goes (one atomic add per read or write);
//! the counters are served on the admin `/metrics` and exported as OTLP sums. A listener's
//! stream also keeps its own [`Activity`] (bytes crossed, exchanges in flight, whether it
//! opened with HTTP/2's preface), which its connection's idle and request-head timeouts watch.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicU8, Ordering},
    },
    task::{Context, Poll},
};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The counters of one listener.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMeter {
    /// Connections accepted.
    pub opened: Counter,
    /// Connections closed.
    pub closed: Counter,
    /// Bytes read from peers.
    pub received: Counter,
    /// Bytes written to peers.
    pub sent: Counter,
    /// Connections a peer broke HTTP on (an unreadable request line or headers, an HTTP/2
    /// violation, TLS sent to a plaintext port): no request reached the sidecar's layers, so
    /// nothing else records them. Envoy's `downstream_cx_protocol_error`; counted on
    /// listeners.
    pub protocol_errors: Counter,
    /// Connections the sidecar closed after they carried nothing for the idle timeout
    /// (Envoy's `downstream_cx_idle_timeout`); counted on listeners.
    pub idle_closed: Counter,
    /// Connections the sidecar closed because a request head took longer than the request
    /// headers timeout to arrive (Envoy's `downstream_rq_header_timeout`); counted on
    /// listeners.
    pub header_timeouts: Counter,
}

impl ConnectionMeter {
    /// Counts a new connection and wraps its stream.
    pub fn meter<T>(&self, inner: T) -> Metered<T> {
        self.opened.inc();
        Metered { inner, meter: self.clone(), activity: None }
    }

    /// Counts a new connection and wraps its stream, which also keeps a figure of its own
    /// traffic for an idle timeout to watch.
    pub fn meter_watched<T>(&self, inner: T) -> (Metered<T>, Activity) {
        let activity = Activity::default();
        let mut metered = self.meter(inner);
        metered.activity = Some(activity.clone());
        (metered, activity)
    }
}

/// What one connection is doing: the bytes it has carried either way, and its exchanges in
/// flight (from the request's arrival until its response body is dropped).
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    received: AtomicU64,
    sent: AtomicU64,
    in_flight: AtomicU64,
    busy_looks: AtomicU64,
    /// `received` when the last exchange ended (the most, should HTTP/2 streams end
    /// together): bytes past it, with no exchange in flight, are the next request's head on
    /// its way.
    head_base: AtomicU64,
    /// What the first bytes read said: [`UNSEEN`], [`HTTP2`] or [`NOT_HTTP2`].
    opening: AtomicU8,
    /// Looks at [`Activity::head_figure`] that found no head on its way.
    head_looks: AtomicU64,
    /// Kept while the connection or any exchange on it is open ([`Activity::keep`]).
    held: std::sync::OnceLock<crate::drain::Held>,
}

/// Marks the figures of [`Activity::head_figure`] that name no head.
const HEAD_LOOKS: u64 = 1 << 63;

const UNSEEN: u8 = 0;
const HTTP2: u8 = 1;
const NOT_HTTP2: u8 = 2;

/// What an HTTP/2 connection sends first (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Activity {
    /// A figure that stays the same between two looks only if the connection was idle
    /// between them: no exchange was in flight at the second (each look during one moves
    /// it), none ended between them, and on HTTP/1 no byte crossed. What crosses an HTTP/2
    /// connection between its streams (`PING`s, `SETTINGS`) does not keep it from being idle,
    /// as Envoy's connection idle timeout counts streams.
    pub fn figure(&self) -> u64 {
        let busy = if self.0.in_flight.load(Ordering::Relaxed) > 0 {
            self.0.busy_looks.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.0.busy_looks.load(Ordering::Relaxed)
        };
        // `head_base` moves whenever an exchange ends.
        let ended = self.0.head_base.load(Ordering::Relaxed);
        let bytes = match self.is_http2() {
            true => 0,
            false => self.0.received.load(Ordering::Relaxed).wrapping_add(self.0.sent.load(Ordering::Relaxed)),
        };
        bytes.wrapping_add(busy).wrapping_add(ended)
    }

    /// A figure that stays the same between two looks only while one request head is on
    /// its way: bytes have arrived since the last exchange ended, and none is in flight. At
    /// any other look (between exchanges, during one, on HTTP/2, whose connections carry
    /// frames between streams) it moves, so a request headers timeout watches it as an idle
    /// timeout watches [`Activity::figure`].
    pub fn head_figure(&self) -> u64 {
        let base = self.0.head_base.load(Ordering::Relaxed);
        let waiting = self.0.in_flight.load(Ordering::Relaxed) == 0 && self.0.received.load(Ordering::Relaxed) > base;
        if waiting && !self.is_http2() {
            // Below 2^63: the bytes received when the last exchange ended.
            base & !HEAD_LOOKS
        } else {
            self.0.head_looks.fetch_add(1, Ordering::Relaxed) | HEAD_LOOKS
        }
    }

    /// Whether a request head is on its way: bytes have arrived since the last exchange
    /// ended, none is in flight, and the connection speaks HTTP/1.
    pub fn head_on_its_way(&self) -> bool {
        self.head_figure() & HEAD_LOOKS == 0
    }

    /// Whether the connection opened with HTTP/2's preface.
    pub fn is_http2(&self) -> bool {
        self.0.opening.load(Ordering::Relaxed) == HTTP2
    }

    /// Keeps `held` until the connection and every exchange on it have ended (the first
    /// one given only).
    pub fn keep(&self, held: crate::drain::Held) {
        let _ = self.0.held.set(held);
    }

    /// Counts an exchange in flight until the returned guard is dropped.
    pub fn exchange(&self) -> Exchange {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        Exchange(self.clone())
    }

    /// Counts bytes read from the peer; the first ones tell whether it speaks HTTP/2.
    fn received(&self, bytes: &[u8]) {
        let before = self.0.received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let rest = HTTP2_PREFACE.get(usize::try_from(before).unwrap_or(usize::MAX)..).filter(|rest| !rest.is_empty());
        if let Some(rest) = rest {
            let n = rest.len().min(bytes.len());
            let opening = match (rest[..n] == bytes[..n], n == rest.len()) {
                (false, _) => NOT_HTTP2,
                (true, true) => HTTP2,
                (true, false) => return,
            };
            // A mismatch in an earlier read stands.
            let _ = self.0.opening.compare_exchange(UNSEEN, opening, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn sent(&self, n: u64) {
        self.0.sent.fetch_add(n, Ordering::Relaxed);
    }
}

/// One exchange in flight on a connection ([`Activity::exchange`]).
#[derive(Debug)]
pub struct Exchange(Activity);

impl Drop for Exchange {
    fn drop(&mut self) {
        let counts = &self.0.0;
        counts.head_base.fetch_max(counts.received.load(Ordering::Relaxed), Ordering::Relaxed);
        counts.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The requests the upstream pools sent again by themselves, by why.
#[derive(Debug, Clone, Default)]
pub struct Resends {
    /// The idle HTTP/1.1 connection a request went out on was closed under it.
    pub idle_closed: Counter,
    /// The HTTP/2 upstream refused the request's stream.
    pub refused_stream: Counter,
    /// The HTTP/2 upstream's GOAWAY left the request's stream out.
    pub goaway: Counter,
}

/// The meters of a sidecar's upstream connections: one per known upstream workload's
/// address, and one for anything else (the local application); and the pools' resends.
#[derive(Debug, Default)]
pub struct UpstreamMeters {
    known: std::collections::HashMap<std::net::SocketAddr, ConnectionMeter>,
    other: ConnectionMeter,
    /// Requests sent again by the pools.
    pub resends: Resends,
}

impl UpstreamMeters {
    /// Meters connections to the addresses in `known` by their own counters, and resends by
    /// `resends`.
    pub fn new(known: std::collections::HashMap<std::net::SocketAddr, ConnectionMeter>, resends: Resends) -> Self {
        Self { known, other: ConnectionMeter::default(), resends }
    }

    /// The meter of connections to `addr`.
    pub fn of(&self, addr: std::net::SocketAddr) -> &ConnectionMeter {
        self.known.get(&addr).unwrap_or(&self.other)
    }

    /// The meter of connections to addresses that are not known upstreams.
    pub fn other(&self) -> &ConnectionMeter {
        &self.other
    }
}

/// A stream whose traffic is counted; counted as closed when dropped.
#[derive(Debug)]
pub struct Metered<T> {
    inner: T,
    meter: ConnectionMeter,
    activity: Option<Activity>,
}

impl<T> Metered<T> {
    fn received(&self, bytes: &[u8]) {
        self.meter.received.inc_by(bytes.len() as u64);
        if let Some(activity) = &self.activity {
            activity.received(bytes);
        }
    }

    fn sent(&self, n: usize) {
        self.meter.sent.inc_by(n as u64);
        if let Some(activity) = &self.activity {
            activity.sent(n as u64);
        }
    }
}

impl<T> Drop for Metered<T> {
    fn drop(&mut self) {
        self.meter.closed.inc();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.received(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent(n);
        }
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_bytes_both_ways_and_the_close() {
        let meter = ConnectionMeter::default();
        let (a, mut b) = tokio::io::duplex(64);
        let mut metered = meter.meter(a);
        metered.write_all(b"hello").await.expect("write");
        b.write_all(b"hi there").await.expect("write");
        let mut buf = [0u8; 8];
        metered.read_exact(&mut buf).await.expect("read");
        drop(metered);
        assert_eq!((meter.opened.get(), meter.closed.get()), (1, 1));
        assert_eq!((meter.sent.get(), meter.received.get()), (5, 8));

        let (a, mut b) = tokio::io::duplex(64);
        let (mut metered, activity) = meter.meter_watched(a);
        metered.write_all(b"abc").await.expect("write");
        b.write_all(b"de").await.expect("write");
        metered.read_exact(&mut buf[..2]).await.expect("read");
        assert_eq!((activity.figure(), meter.sent.get(), meter.received.get()), (5, 8, 10));
        assert_eq!(activity.figure(), 5, "quiet: the same figure at every look");
        let exchange = activity.exchange();
        let (busy, busier) = (activity.figure(), activity.figure());
        assert!(busy != 5 && busier != busy, "an exchange in flight moves it at every look");
        drop(exchange);
        let ended = activity.figure();
        assert_ne!(ended, busier, "its end moves it");
        assert_eq!(activity.figure(), ended, "and then it stays");
    }

    #[tokio::test]
    async fn the_first_bytes_tell_http2_and_bytes_between_exchanges_are_a_head_on_its_way() {
        // Reads `chunks` through a watched stream, one read each.
        async fn read(chunks: &[&[u8]]) -> Activity {
            let (a, mut b) = tokio::io::duplex(256);
            let (mut metered, activity) = ConnectionMeter::default().meter_watched(a);
            for chunk in chunks {
                b.write_all(chunk).await.expect("write");
                let mut buf = vec![0; chunk.len()];
                metered.read_exact(&mut buf).await.expect("read");
            }
            activity
        }
        assert!(read(&[HTTP2_PREFACE, b"\0\0\0\x04"]).await.is_http2());
        assert!(read(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM", b"\r\n\r\n"]).await.is_http2(), "in pieces");
        assert!(!read(&[b"PRI * HTTP/2.0\r\n"]).await.is_http2(), "not yet whole");
        assert!(!read(&[b"POST / HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]).await.is_http2(), "the rest of it after a mismatch");
        assert!(!read(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).await.is_http2());

        // Between HTTP/2 streams, frames crossing leave the connection idle; a stream does not.
        let h2 = read(&[HTTP2_PREFACE]).await;
        let idle = h2.figure();
        h2.received(b"\0\0\x08\x06\0\0\0\0\0pingping");
        h2.sent(17);
        assert_eq!(h2.figure(), idle, "a PING and its answer");
        let (first, second) = (h2.exchange(), h2.exchange());
        h2.received(b"a request");
        drop((first, second));
        assert_ne!(h2.figure(), idle, "streams that began and ended between two looks");

        let activity = read(&[b"GE"]).await;
        let head = activity.head_figure();
        assert_eq!(activity.head_figure(), head, "the first head, from the connection's first byte");
        let exchange = activity.exchange();
        let during = activity.head_figure();
        assert!(during != head && activity.head_figure() != during, "whole: an exchange is in flight");
        drop(exchange);
        let between = activity.head_figure();
        assert!(between != during && activity.head_figure() != between, "between exchanges");
        activity.received(b"G");
        let next = activity.head_figure();
        assert!(![head, during, between].contains(&next), "the next head is another");
        activity.received(b"ET");
        assert_eq!(activity.head_figure(), next, "the same head while it comes");
        let h2 = read(&[HTTP2_PREFACE, b"\0\0\x08\x06"]).await;
        assert_ne!(h2.head_figure(), h2.head_figure(), "no heads on HTTP/2");
    }
}
