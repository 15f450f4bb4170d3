//! HTTP/1.1 connections to upstream endpoints, kept open and reused.
//!
//! A request takes an idle connection to its endpoint (the most recently used first) or
//! opens a new one; the connection goes back to the pool when the response body has been
//! read to its end, and is closed instead if the body is dropped early or fails. A request
//! that a reused connection refused before sending anything (the upstream closed it while
//! idle) is sent again on another. So is a request safe to repeat (`repeatable`; its body,
//! if any, kept as it streams, see [`Again`]) that went out on a connection idle for
//! [`REPLAY_AFTER_IDLE`] or more and
//! found it closed without an answer: the upstream closed it as idle while the request was
//! on its way, the race every client of an application with a keep-alive timeout meets
//! (Node's is five seconds), which would otherwise be the caller's 502. RFC 9110 (9.2.2)
//! allows sending such a request again; Go's HTTP client does the same.
//!
//! Idle connections are closed after `idle_timeout` (found stale when their endpoint is next
//! used, and by a sweep every [`sweep_every`] of that timeout, so an endpoint no longer
//! called does not keep its connections open), and at most [`MAX_IDLE`] are kept per
//! endpoint. Each connection is metered by its endpoint's meter in [`UpstreamMeters`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use http::header;
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;

use super::{UpstreamConnection, resend::Again};
use crate::{
    body::{self, BodyEnd, BodyObserver, BoxBody, ObservedBody},
    connection::{Metered, UpstreamMeters},
    error::{BoxError, ProxyError},
};

/// Most idle connections kept per endpoint.
pub const MAX_IDLE: usize = 1024;

/// How long a connection has been idle before a request that finds it closed under it may
/// be sent again: keep-alive timeouts are a second or more, and connections busier than that
/// cost no copy of their requests.
pub const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A connection's request sender, with the connection as records name it.
#[derive(Debug)]
struct Sender {
    send: SendRequest<BoxBody>,
    connection: UpstreamConnection,
}

/// The pool, shared by every clone.
#[derive(Debug, Clone)]
pub struct Http1Pool(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, ahash::RandomState>>,
    meters: Arc<UpstreamMeters>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

impl Http1Pool {
    /// A pool metering its connections in `meters`. Made within a Tokio runtime, it sweeps
    /// out stale idle connections on a timer until the last clone is dropped.
    pub fn new(meters: Arc<UpstreamMeters>, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            idle: Mutex::default(),
            meters,
            connect_timeout,
            idle_timeout,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&shared), sweep_every(idle_timeout)));
        }
        Self(shared)
    }

    /// Sends `req` (origin-form URI, as received) to `addr` and returns its response, whose
    /// body hands the connection back when read to the end.
    pub async fn send(&self, addr: SocketAddr, mut req: http::Request<BoxBody>) -> Result<http::Response<BoxBody>, ProxyError> {
        if !req.headers().contains_key(header::HOST) {
            let host = http::HeaderValue::try_from(addr.to_string()).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            req.headers_mut().insert(header::HOST, host);
        }
        // Where the connection that answered is noted (`%UPSTREAM_LOCAL_ADDRESS%`).
        let resolution = req.extensions().get::<super::Resolution>().cloned();
        let mut replayed = false;
        loop {
            // A request sent again goes on a new connection: the idle ones may have been
            // closed at the same moment.
            let taken = if replayed { None } else { self.take(addr) };
            let (mut sender, idle_for) = match taken {
                Some((sender, idle_for)) => (sender, Some(idle_for)),
                None => (self.connect(addr).await?, None),
            };
            let reused = idle_for.is_some();
            if sender.send.ready().await.is_err() {
                // Closed while idle (or just opened and refused at once).
                if reused {
                    continue;
                }
                return Err(ProxyError::UpstreamConnect { addr, source: "connection closed before the request".into() });
            }
            let (again, sent) = match !replayed && idle_for.is_some_and(|d| d >= REPLAY_AFTER_IDLE) && repeatable(&req) {
                true => {
                    let (again, sent) = Again::new(req);
                    (Some(again), sent)
                }
                false => (None, req),
            };
            match sender.send.try_send_request(sent).await {
                Ok(response) => {
                    if let Some(resolution) = &resolution {
                        resolution.set_upstream_connection(sender.connection);
                    }
                    let release = Release { pool: self.clone(), addr, sender: Some(sender) };
                    return Ok(response.map(|incoming| body::boxed(ObservedBody::<Release, Incoming>::new(incoming, release))));
                }
                Err(mut e) => {
                    let unsent = e.take_message();
                    // Only a request that went out makes a copy (which takes its body over).
                    let resend = match (&unsent, again) {
                        (None, Some(again)) if closed_under_it(e.error()) => again.request_again().map(|copy| (copy, again)),
                        _ => None,
                    };
                    match (unsent, resend) {
                        // Nothing was sent: the reused connection had been closed. Try another.
                        (Some(unsent), _) if reused => req = unsent,
                        (None, Some((copy, again))) => {
                            again.note(format!("the idle connection to {addr} was closed under the request ({}); sent again", e.error()));
                            self.0.meters.resends.idle_closed.inc();
                            replayed = true;
                            req = copy;
                        }
                        _ => return Err(ProxyError::upstream_send(addr, e.into_error())),
                    }
                }
            }
        }
    }

    /// The most recently used idle connection to `addr` that is still open, if any, and how
    /// long it has been idle.
    fn take(&self, addr: SocketAddr) -> Option<(Sender, Duration)> {
        let mut idle = self.0.idle.lock().ok()?;
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            let idle_for = entry.since.elapsed();
            if !entry.sender.send.is_closed() && idle_for < self.0.idle_timeout {
                return Some((entry.sender, idle_for));
            }
        }
        None
    }

    /// Returns a connection whose last response was read to its end.
    fn put(&self, addr: SocketAddr, sender: Sender) {
        let Ok(mut idle) = self.0.idle.lock() else { return };
        let list = idle.entry(addr).or_default();
        // The oldest come first: drop those past the idle timeout or over the bound.
        let now = Instant::now();
        let stale = list.iter().take_while(|e| now.duration_since(e.since) >= self.0.idle_timeout).count();
        let over = (list.len() - stale + 1).saturating_sub(MAX_IDLE);
        list.drain(..stale + over);
        list.push(Idle { sender, since: now });
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, ProxyError> {
        let (io, opened) = connect(addr, self.0.connect_timeout, &self.0.meters).await?;
        let unreachable = |source: BoxError| ProxyError::UpstreamConnect { addr, source };
        let (send, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| unreachable(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(Sender { send, connection: opened })
    }

    /// Idle connections kept for `addr`.
    #[cfg(test)]
    fn idle(&self, addr: SocketAddr) -> usize {
        self.0.idle.lock().map(|idle| idle.get(&addr).map_or(0, Vec::len)).unwrap_or(0)
    }

    /// Endpoints with idle connections kept.
    #[cfg(test)]
    fn endpoints(&self) -> usize {
        self.0.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

impl Sweep for Shared {
    const WHAT: &'static str = "idle upstream connections closed";

    /// Drops (and so closes) every idle connection that is closed or past the idle timeout,
    /// and forgets endpoints left with none. Returns how many were dropped.
    fn sweep(&self, now: Instant) -> usize {
        let Ok(mut idle) = self.idle.lock() else { return 0 };
        let mut dropped = 0;
        idle.retain(|_, list| {
            let before = list.len();
            list.retain(|e| !e.sender.send.is_closed() && now.duration_since(e.since) < self.idle_timeout);
            dropped += before - list.len();
            !list.is_empty()
        });
        dropped
    }
}

/// Whether `req` may be sent again should its connection close under it, as Go's client
/// decides it: a GET, HEAD, OPTIONS or TRACE, or any request carrying an idempotency key (a
/// POST with its body, say). Not a bare PUT or DELETE: idempotent as HTTP defines them (RFC
/// 9110, 9.2.2), but a DELETE done twice often answers `404`.
fn repeatable(req: &http::Request<BoxBody>) -> bool {
    use http::Method;
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(req.method());
    safe || ["idempotency-key", "x-idempotency-key"].iter().any(|k| req.headers().contains_key(*k))
}

/// Whether a request sent on a connection failed because the upstream closed it before
/// answering: hyper saw the connection end, or the upstream reset it, before any response.
fn closed_under_it(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    let io = error.source().and_then(|s| s.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
    error.is_incomplete_message() || matches!(io, Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe))
}

/// A metered TCP connection to `addr` (no Nagle delay), opened within `timeout`, and its
/// local address and number.
pub(super) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    meters: &UpstreamMeters,
) -> Result<(TokioIo<Metered<tokio::net::TcpStream>>, UpstreamConnection), ProxyError> {
    let unreachable = |source: BoxError| ProxyError::UpstreamConnect { addr, source };
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable(format!("connect timed out after {timeout:?}").into()))?
        .map_err(|e| unreachable(e.into()))?;
    stream.set_nodelay(true).map_err(|e| unreachable(e.into()))?;
    let local = stream.local_addr().map_err(|e| unreachable(e.into()))?;
    Ok((TokioIo::new(meters.of(addr).meter(stream)), UpstreamConnection::opened(local)))
}

/// How often the pool is swept: a quarter of the idle timeout, between 10 ms and 30 s, so a
/// connection stays idle at most that much past the timeout.
pub fn sweep_every(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30))
}

/// A pool whose stale connections a timer drops.
pub(super) trait Sweep: Send + Sync + 'static {
    /// What the log line calls the connections.
    const WHAT: &'static str;
    /// Drops the connections that closed or stayed unused too long; returns how many.
    fn sweep(&self, now: Instant) -> usize;
}

/// Sweeps `pool` every `every` while it exists.
pub(super) async fn sweep<P: Sweep>(pool: Weak<P>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let dropped = pool.sweep(Instant::now());
        if dropped > 0 {
            tracing::debug!(dropped, "{}", P::WHAT);
        }
    }
}

/// Carries a response's connection until its body ends.
struct Release {
    pool: Http1Pool,
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl BodyObserver for Release {
    fn on_data(&mut self, _data: &[u8]) {}

    fn on_end(&mut self, end: BodyEnd) {
        // A body dropped early or failed leaves its connection unusable: it closes.
        if let (BodyEnd::Complete, Some(sender)) = (end, self.sender.take()) {
            self.pool.put(self.addr, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;
    use crate::{connection::ConnectionMeter, stack::testing};

    /// An upstream answering `ok` (and closing after the answer when the path is
    /// `/close`); it counts the connections it accepted.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        testing::upstream(|stream| {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let mut response = http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")));
                    if req.uri().path() == "/close" {
                        response.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        })
        .await
    }

    /// A pool for `addr`, and the meter of its connections there.
    fn pool(addr: SocketAddr, idle_timeout: Duration) -> (Http1Pool, ConnectionMeter) {
        let (meters, meter) = testing::meters(addr);
        (Http1Pool::new(meters, Duration::from_secs(2), idle_timeout), meter)
    }

    /// Waits up to two seconds for `meter` to count `n` closed connections.
    async fn closed(meter: &ConnectionMeter, n: u64) -> u64 {
        for _ in 0..200 {
            if meter.closed.get() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        meter.closed.get()
    }

    fn get(path: &str) -> http::Request<BoxBody> {
        http::Request::get(path).header("host", "upstream").body(body::full(Bytes::new())).expect("request")
    }

    async fn read(pool: &Http1Pool, addr: SocketAddr, path: &str) -> Bytes {
        let response = pool.send(addr, get(path)).await.expect("response");
        response.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted) = upstream().await;
        let (pool, meter) = pool(addr, Duration::from_secs(90));
        for _ in 0..3 {
            assert_eq!(read(&pool, addr, "/").await, "ok");
        }
        assert_eq!((accepted.load(Ordering::SeqCst), meter.opened.get()), (1, 1));
        assert_eq!(pool.idle(addr), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own_and_all_come_back() {
        let (addr, accepted) = upstream().await;
        let (pool, meter) = pool(addr, Duration::from_secs(90));
        let first = pool.send(addr, get("/")).await.expect("first");
        let second = pool.send(addr, get("/")).await.expect("second");
        assert_eq!((accepted.load(Ordering::SeqCst), meter.opened.get()), (2, 2));
        for response in [first, second] {
            response.into_body().collect().await.expect("body");
        }
        assert_eq!(pool.idle(addr), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_early_closes_its_connection() {
        let (addr, accepted) = upstream().await;
        let (pool, meter) = pool(addr, Duration::from_secs(90));
        drop(pool.send(addr, get("/")).await.expect("response"));
        assert_eq!(pool.idle(addr), 0);
        assert_eq!(closed(&meter, 1).await, 1, "the abandoned connection is closed");
        assert_eq!(read(&pool, addr, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (addr, accepted) = upstream().await;
        let (pool, meter) = pool(addr, Duration::from_secs(90));
        assert_eq!(read(&pool, addr, "/close").await, "ok");
        // Closed by the upstream after its answer: the next request opens another.
        for _ in 0..2 {
            assert_eq!(read(&pool, addr, "/").await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(closed(&meter, 1).await, 1);
    }

    #[tokio::test]
    async fn an_upstream_closing_each_connection_silently_costs_no_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection, keep-alive implied, then closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            }
        });
        let (pool, meter) = pool(addr, Duration::from_secs(90));
        for _ in 0..5 {
            assert_eq!(read(&pool, addr, "/").await, "ok");
        }
        assert_eq!(meter.opened.get(), 5);
    }

    /// One request's head and body (as its `content-length` says), read whole.
    async fn read_request(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut text = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let whole = std::str::from_utf8(&text).ok().and_then(|t| {
                let (head, body) = t.split_once("\r\n\r\n")?;
                let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")?.parse().ok()).unwrap_or(0);
                (body.len() >= length).then(|| t.to_owned())
            });
            match whole {
                Some(request) => return request,
                None => match stream.read(&mut buf).await {
                    Ok(n) if n > 0 => text.extend_from_slice(&buf[..n]),
                    _ => return String::from_utf8_lossy(&text).into_owned(),
                },
            }
        }
    }

    #[tokio::test]
    async fn a_request_an_idle_connection_closes_under_is_sent_again_if_it_may_be() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers the first request on each connection, then reads the next and closes
        // without an answer: as if its keep-alive timeout and that request had crossed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        // What each connection's answered request ended with.
        let answered = Arc::new(Mutex::new(Vec::new()));
        let seen = answered.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let request = read_request(&mut stream).await;
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(request.rsplit("\r\n").next().unwrap_or_default().to_owned());
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        let (pool, _) = pool(addr, Duration::from_secs(90));
        assert_eq!(read(&pool, addr, "/").await, "ok");
        tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(100)).await;
        // A GET on the connection idle for a second: closed under it, sent again on another,
        // and noted for the request's span.
        let resolution = crate::stack::Resolution::default();
        let mut req = get("/");
        req.extensions_mut().insert(resolution.clone());
        let response = pool.send(addr, req).await.expect("sent again");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(resolution.notes().iter().map(|n| n.name).collect::<Vec<_>>(), [crate::stack::RESENT]);
        tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(100)).await;
        // A DELETE may not be sent twice (a second one would find nothing to delete)...
        let delete = http::Request::delete("/").header("host", "upstream").body(body::full(Bytes::new())).expect("request");
        assert!(matches!(pool.send(addr, delete).await, Err(ProxyError::UpstreamReset { .. })));
        // ...unless its caller gave it an idempotency key.
        assert_eq!(read(&pool, addr, "/").await, "ok");
        tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(100)).await;
        let keyed = http::Request::delete("/").header("host", "upstream").header("idempotency-key", "k1");
        let response = pool.send(addr, keyed.body(body::full(Bytes::new())).expect("request")).await.expect("sent again");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok");
        // A keyed POST goes again with its body.
        tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(100)).await;
        let keyed = http::Request::post("/charge").header("host", "upstream").header("idempotency-key", "k2");
        let resolution = crate::stack::Resolution::default();
        let mut req = keyed.body(body::full("card=4242")).expect("request");
        req.extensions_mut().insert(resolution.clone());
        let response = pool.send(addr, req).await.expect("sent again");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok");
        assert_eq!(resolution.notes().len(), 1);
        let last = answered.lock().map(|a| a.last().cloned()).ok().flatten();
        assert_eq!(last.as_deref(), Some("card=4242"), "the body went again");
        // Nor a GET on a connection that answered a moment ago: no copy was kept.
        assert!(matches!(pool.send(addr, get("/")).await, Err(ProxyError::UpstreamReset { .. })));
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
        assert_eq!(pool.0.meters.resends.idle_closed.get(), 3, "the GET, the keyed DELETE and the keyed POST");
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_closed_not_reused() {
        let (addr, accepted) = upstream().await;
        let (pool, meter) = pool(addr, Duration::from_millis(30));
        assert_eq!(read(&pool, addr, "/").await, "ok");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(read(&pool, addr, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(closed(&meter, 1).await, 1);
    }

    #[tokio::test]
    async fn the_sweep_closes_idle_connections_of_endpoints_no_longer_called_and_ends_with_the_pool() {
        let (addr, _) = upstream().await;
        let (pool, meter) = pool(addr, Duration::from_millis(40));
        assert_eq!(read(&pool, addr, "/").await, "ok");
        assert_eq!(pool.endpoints(), 1);
        // No request to that endpoint again: the sweep (every 10 ms) closes its connection.
        assert_eq!(closed(&meter, 1).await, 1, "closed without another request");
        assert_eq!((pool.idle(addr), pool.endpoints()), (0, 0));
        let weak = Arc::downgrade(&pool.0);
        drop(pool);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(weak.upgrade().is_none(), "the sweep task holds no strong reference");
    }

    #[test]
    fn sweeps_come_at_a_quarter_of_the_idle_timeout_within_bounds() {
        assert_eq!(sweep_every(Duration::from_secs(90)), Duration::from_millis(22_500));
        assert_eq!(sweep_every(Duration::from_secs(3600)), Duration::from_secs(30));
        assert_eq!(sweep_every(Duration::from_millis(1)), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_connect_error_and_a_missing_host_is_set() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let (pool, _) = pool(addr, Duration::from_secs(90));
        let err = pool.send(addr, get("/")).await.expect_err("refused");
        assert!(matches!(err, ProxyError::UpstreamConnect { .. }), "{err}");

        let (addr, _) = upstream().await;
        let (pool, _) = self::pool(addr, Duration::from_secs(90));
        let req = http::Request::get("/").body(body::full(Bytes::new())).expect("request");
        let response = pool.send(addr, req).await.expect("response");
        assert!(response.status().is_success());
    }
}
