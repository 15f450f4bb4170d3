//! TCP connection metrics: connections opened and closed, and bytes received and sent, per
//! listener side. A [`Metered`] stream counts as it goes (one atomic add per read or write);
//! the counters are served on the admin `/metrics` and exported as OTLP sums. A listener's
//! stream also keeps its own [`Activity`] (bytes crossed, exchanges in flight), which its
//! connection's idle timeout watches.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
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
    bytes: AtomicU64,
    in_flight: AtomicU64,
    busy_looks: AtomicU64,
}

impl Activity {
    /// A figure that stays the same between two looks only if the connection was idle
    /// between them: no byte crossed, and no exchange was in flight at the second (each
    /// look during one moves it).
    pub fn figure(&self) -> u64 {
        let busy = if self.0.in_flight.load(Ordering::Relaxed) > 0 {
            self.0.busy_looks.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.0.busy_looks.load(Ordering::Relaxed)
        };
        self.0.bytes.load(Ordering::Relaxed).wrapping_add(busy)
    }

    /// Counts an exchange in flight until the returned guard is dropped.
    pub fn exchange(&self) -> Exchange {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        Exchange(self.clone())
    }

    fn add(&self, n: u64) {
        self.0.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// One exchange in flight on a connection ([`Activity::exchange`]).
#[derive(Debug)]
pub struct Exchange(Activity);

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The meters of a sidecar's upstream connections: one per known upstream workload's
/// address, and one for anything else (the local application).
#[derive(Debug, Default)]
pub struct UpstreamMeters {
    known: std::collections::HashMap<std::net::SocketAddr, ConnectionMeter>,
    other: ConnectionMeter,
}

impl UpstreamMeters {
    /// Meters connections to the addresses in `known` by their own counters.
    pub fn new(known: std::collections::HashMap<std::net::SocketAddr, ConnectionMeter>) -> Self {
        Self { known, other: ConnectionMeter::default() }
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
    fn received(&self, n: usize) {
        self.meter.received.inc_by(n as u64);
        if let Some(activity) = &self.activity {
            activity.add(n as u64);
        }
    }

    fn sent(&self, n: usize) {
        self.meter.sent.inc_by(n as u64);
        if let Some(activity) = &self.activity {
            activity.add(n as u64);
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
            self.received(buf.filled().len() - before);
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
        assert_eq!(activity.figure(), busier, "and then it stays");
    }
}
