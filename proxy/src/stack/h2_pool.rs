//! HTTP/2 connections to upstream endpoints: one per endpoint, shared by every request to it.
//!
//! A request goes to the endpoint the split layer picked and keeps the `:authority` its
//! caller wrote (`reviews.shop:9080`, not the endpoint's address), so the upstream and the
//! next sidecar's telemetry see the service that was called, as they do for HTTP/1.1's
//! `Host`. The connection to an endpoint is opened by its first request (one at a time: the
//! requests that arrive meanwhile wait for it) and again once it has closed (GOAWAY, a
//! reset, the upstream's idle timeout). A request the connection refused before sending
//! anything (it was closing) is sent again on a new one. So is a request whose stream the
//! upstream closed unprocessed (RFC 9113, 8.7): refused (`REFUSED_STREAM`, on the same
//! connection) or left out of a `GOAWAY` (an upstream closing the connection, on a new
//! one). Any request may go again then, not only a safe one, since the upstream did nothing
//! with it; its body is kept for that as it streams ([`Again`], up to [`REPLAY_BYTES`](super::resend::REPLAY_BYTES)).
//! A connection unused for the idle timeout is dropped, and closes once its last stream
//! ends, by a sweep every [`super::pool::sweep_every`] of that timeout.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioExecutor;

use super::{
    Request, UpstreamConnection,
    pool::{Sweep, connect, sweep, sweep_every},
    resend::Again,
};
use crate::{
    body::{self, BoxBody},
    connection::UpstreamMeters,
    error::{BoxError, ProxyError},
};

/// Times a request may be sent before it fails: on a connection that was closing (or whose
/// upstream refused the stream), then again on a new one (or the same).
const ATTEMPTS: usize = 3;

type Sender = SendRequest<BoxBody>;

/// The connections, shared by every clone.
#[derive(Debug, Clone)]
pub struct Http2Pool(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    endpoints: Mutex<HashMap<SocketAddr, Endpoint, ahash::RandomState>>,
    meters: Arc<UpstreamMeters>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// One endpoint's connection, and the gate its opening goes through.
#[derive(Debug, Default)]
struct Endpoint {
    open: Option<Open>,
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// Counts the connections opened, to tell a closing one from its successor.
    opened: u64,
}

#[derive(Debug)]
struct Open {
    sender: Sender,
    generation: u64,
    used: Instant,
    /// The connection as records name it.
    connection: UpstreamConnection,
}

impl Http2Pool {
    /// A pool metering its connections in `meters`. Made within a Tokio runtime, it sweeps
    /// out connections unused for `idle_timeout` until the last clone is dropped.
    pub fn new(meters: Arc<UpstreamMeters>, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let shared = Arc::new(Shared { endpoints: Mutex::default(), meters, connect_timeout, idle_timeout });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&shared), sweep_every(idle_timeout)));
        }
        Self(shared)
    }

    /// Sends `req` (an absolute URI naming the authority to send) to `addr` and returns its
    /// response.
    pub async fn send(&self, addr: SocketAddr, req: http::Request<BoxBody>) -> Result<http::Response<BoxBody>, ProxyError> {
        // Where the connection that answered is noted (`%UPSTREAM_LOCAL_ADDRESS%`).
        let resolution = req.extensions().get::<super::Resolution>().cloned();
        let (again, mut req) = Again::new(req);
        for round in 1..=ATTEMPTS {
            let (mut sender, generation, reused, upstream) = self.sender(addr).await?;
            if sender.ready().await.is_err() {
                self.0.forget(addr, generation);
                if reused {
                    continue;
                }
                return Err(ProxyError::UpstreamConnect { addr, source: "connection closed before the request".into() });
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    if let Some(resolution) = &resolution {
                        resolution.set_upstream_connection(upstream);
                    }
                    return Ok(response.map(body::boxed));
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was sent: the connection was closing. Try a new one.
                    Some(unsent) => {
                        self.0.forget(addr, generation);
                        req = unsent;
                    }
                    None => match self.resend(addr, generation, &again, e.error(), round) {
                        Some(copy) => req = copy,
                        None => return Err(ProxyError::upstream_send(addr, e.into_error())),
                    },
                },
            }
        }
        Err(ProxyError::UpstreamReset { addr, source: "every connection closed before the request was sent".into() })
    }

    /// The request again, counted and noted, if `error` says the upstream closed its stream
    /// unprocessed and sends remain; a connection going away is forgotten.
    fn resend(&self, addr: SocketAddr, generation: u64, again: &Again, error: &hyper::Error, round: usize) -> Option<Request> {
        let why = unprocessed(error).filter(|_| round < ATTEMPTS)?;
        let copy = again.request_again()?;
        if why.going_away {
            self.0.forget(addr, generation);
            self.0.meters.resends.goaway.inc();
        } else {
            self.0.meters.resends.refused_stream.inc();
        }
        again.note(format!("the upstream {addr} {} ({error}); sent again", why.what));
        Some(copy)
    }

    /// The open connection to `addr`, or a new one; with its generation, whether it was open
    /// already, and the connection as records name it.
    async fn sender(&self, addr: SocketAddr) -> Result<(Sender, u64, bool, UpstreamConnection), ProxyError> {
        let gate = {
            let mut endpoints = self.0.endpoints();
            let endpoint = endpoints.entry(addr).or_default();
            if let Some((sender, generation, upstream)) = endpoint.usable() {
                return Ok((sender, generation, true, upstream));
            }
            endpoint.connecting.clone()
        };
        let _opening = gate.lock().await;
        // Opened by a request that went through the gate first?
        if let Some((sender, generation, upstream)) = self.0.endpoints().get_mut(&addr).and_then(Endpoint::usable) {
            return Ok((sender, generation, true, upstream));
        }
        let (sender, upstream) = self.connect(addr).await?;
        let mut endpoints = self.0.endpoints();
        let endpoint = endpoints.entry(addr).or_default();
        endpoint.opened += 1;
        let generation = endpoint.opened;
        endpoint.open = Some(Open { sender: sender.clone(), generation, used: Instant::now(), connection: upstream });
        Ok((sender, generation, false, upstream))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<(Sender, UpstreamConnection), ProxyError> {
        let (io, opened) = connect(addr, self.0.connect_timeout, &self.0.meters).await?;
        let unreachable = |source: BoxError| ProxyError::UpstreamConnect { addr, source };
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| unreachable(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok((sender, opened))
    }

    /// Endpoints with a connection kept.
    #[cfg(test)]
    fn connections(&self) -> usize {
        self.0.endpoints().values().filter(|e| e.open.is_some()).count()
    }
}

/// Why a stream the upstream closed was left unprocessed, if it was.
struct Unprocessed {
    what: &'static str,
    /// The connection is closing: the request goes on a new one.
    going_away: bool,
}

/// Whether the upstream closed a request's stream without processing it: it refused it
/// (`RST_STREAM` with `REFUSED_STREAM`), or its `GOAWAY` left it out (the stream's ID is
/// above the last one it names, or the stream was opened after it).
fn unprocessed(error: &hyper::Error) -> Option<Unprocessed> {
    use std::error::Error as _;
    let h2 = error.source()?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() {
        return Some(Unprocessed { what: "was going away (GOAWAY) before it processed the request", going_away: true });
    }
    (h2.reason() == Some(h2::Reason::REFUSED_STREAM))
        .then_some(Unprocessed { what: "refused the request's stream (REFUSED_STREAM)", going_away: false })
}

impl Endpoint {
    /// A handle on the open connection, unless it has closed.
    fn usable(&mut self) -> Option<(Sender, u64, UpstreamConnection)> {
        let open = self.open.as_mut().filter(|o| !o.sender.is_closed())?;
        open.used = Instant::now();
        Some((open.sender.clone(), open.generation, open.connection))
    }
}

impl Shared {
    fn endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Endpoint, ahash::RandomState>> {
        // Nothing in a critical section panics; a poisoned map still holds whole entries.
        self.endpoints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops handing out connection `generation` to `addr` (it refused a request).
    fn forget(&self, addr: SocketAddr, generation: u64) {
        if let Some(endpoint) = self.endpoints().get_mut(&addr)
            && endpoint.open.as_ref().is_some_and(|o| o.generation == generation)
        {
            endpoint.open = None;
        }
    }
}

impl Sweep for Shared {
    const WHAT: &'static str = "unused HTTP/2 upstream connections dropped";

    /// Drops the connections that closed or were not used for the idle timeout, and the
    /// endpoints left with none that no request is connecting to.
    fn sweep(&self, now: Instant) -> usize {
        let mut dropped = 0;
        self.endpoints().retain(|_, endpoint| {
            if endpoint.open.as_ref().is_some_and(|o| o.sender.is_closed() || now.duration_since(o.used) >= self.idle_timeout) {
                endpoint.open = None;
                dropped += 1;
            }
            endpoint.open.is_some() || Arc::strong_count(&endpoint.connecting) > 1
        });
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::{connection::ConnectionMeter, stack::testing};

    /// An HTTP/2 upstream answering `ok`; it counts the connections it accepted, and drops
    /// each after `lifetime`.
    async fn upstream(lifetime: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        testing::upstream(move |stream| {
            let service = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))))
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service);
            tokio::spawn(tokio::time::timeout(lifetime, connection));
        })
        .await
    }

    fn pool(addr: SocketAddr, idle_timeout: Duration) -> (Http2Pool, ConnectionMeter) {
        let (meters, meter) = testing::meters(addr);
        (Http2Pool::new(meters, Duration::from_secs(2), idle_timeout), meter)
    }

    async fn read(pool: &Http2Pool, addr: SocketAddr) -> Bytes {
        let req = http::Request::get("http://reviews/").version(http::Version::HTTP_2).body(body::full("")).expect("request");
        let response = pool.send(addr, req).await.expect("response");
        response.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn requests_at_once_to_a_new_endpoint_share_one_connection() {
        let (addr, accepted) = upstream(Duration::from_secs(60)).await;
        let (pool, meter) = pool(addr, Duration::from_secs(90));
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            reads.spawn(async move { read(&pool, addr).await });
        }
        while let Some(body) = reads.join_next().await {
            assert_eq!(body.expect("read"), "ok");
        }
        assert_eq!((accepted.load(Ordering::SeqCst), meter.opened.get(), pool.connections()), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (addr, accepted) = upstream(Duration::from_millis(50)).await;
        let (pool, _) = pool(addr, Duration::from_secs(90));
        assert_eq!(read(&pool, addr).await, "ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(read(&pool, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unused_connection_is_dropped_and_closes() {
        let (addr, _) = upstream(Duration::from_secs(60)).await;
        let (pool, meter) = pool(addr, Duration::from_millis(30));
        assert_eq!(read(&pool, addr).await, "ok");
        for _ in 0..200 {
            if meter.closed.get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((meter.closed.get(), pool.connections()), (1, 0));
        assert_eq!(pool.0.endpoints().len(), 0, "the endpoint is forgotten too");
    }

    /// An HTTP/2 upstream echoing each request's body, except that it resets each
    /// connection's first `resets` streams with `reset` (before reading them); it counts the
    /// streams.
    async fn resetting_upstream(reset: h2::Reason, resets: usize) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let streams = Arc::new(AtomicUsize::new(0));
        let counted = streams.clone();
        let (addr, accepted) = testing::upstream(move |stream| {
            let streams = counted.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else { return };
                let mut seen = 0;
                while let Some(Ok((req, mut respond))) = connection.accept().await {
                    streams.fetch_add(1, Ordering::SeqCst);
                    seen += 1;
                    if seen <= resets {
                        respond.send_reset(reset);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut echo = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            echo.extend_from_slice(&chunk);
                        }
                        let Ok(mut send) = respond.send_response(http::Response::new(()), false) else { return };
                        let _ = send.send_data(Bytes::from(echo), true);
                    });
                }
            });
        })
        .await;
        (addr, accepted, streams)
    }

    /// A POST of `card=4242` (a body of unknown length), with a resolution to note on.
    fn post() -> (http::Request<BoxBody>, super::super::Resolution) {
        let resolution = super::super::Resolution::default();
        let body = body::boxed(Once(Some(Bytes::from_static(b"card=4242"))));
        let mut req = http::Request::post("http://payments/charge").version(http::Version::HTTP_2).body(body).expect("request");
        assert_eq!(http_body::Body::size_hint(req.body()).upper(), None);
        req.extensions_mut().insert(resolution.clone());
        (req, resolution)
    }

    /// A body of one data frame and no size hint.
    struct Once(Option<Bytes>);

    impl http_body::Body for Once {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.take().map(|d| Ok(http_body::Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn a_refused_stream_goes_again_with_its_body_and_other_resets_do_not() {
        let (addr, accepted, streams) = resetting_upstream(h2::Reason::REFUSED_STREAM, 1).await;
        let (refusing, _) = pool(addr, Duration::from_secs(90));
        let (req, resolution) = post();
        let response = refusing.send(addr, req).await.expect("answered the second time");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "card=4242");
        assert_eq!((accepted.load(Ordering::SeqCst), streams.load(Ordering::SeqCst)), (1, 2), "on the same connection");
        let notes = resolution.notes();
        assert_eq!(notes.iter().map(|n| n.name).collect::<Vec<_>>(), [super::super::RESENT]);
        assert!(notes[0].message.contains("REFUSED_STREAM"), "{}", notes[0].message);
        let resends = &refusing.0.meters.resends;
        assert_eq!((resends.refused_stream.get(), resends.goaway.get()), (1, 0));

        let (addr, _, streams) = resetting_upstream(h2::Reason::INTERNAL_ERROR, 1).await;
        let (other, _) = pool(addr, Duration::from_secs(90));
        let (req, resolution) = post();
        assert!(other.send(addr, req).await.is_err(), "the upstream may have done something with it");
        assert_eq!((streams.load(Ordering::SeqCst), resolution.notes().len()), (1, 0));
        assert_eq!(other.0.meters.resends.refused_stream.get(), 0);

        // An upstream refusing every stream: three sends, then its refusal is the answer.
        let (addr, _, streams) = resetting_upstream(h2::Reason::REFUSED_STREAM, usize::MAX).await;
        let (stubborn, _) = pool(addr, Duration::from_secs(90));
        let error = stubborn.send(addr, post().0).await.expect_err("refused each time");
        assert!(error.to_string().contains("refused"), "{error}");
        assert_eq!((streams.load(Ordering::SeqCst), stubborn.0.meters.resends.refused_stream.get()), (ATTEMPTS, 2));
    }

    #[tokio::test]
    async fn a_stream_an_upstream_going_away_left_out_goes_again_on_a_new_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connections = Arc::new(AtomicUsize::new(0));
        let (addr, _) = testing::upstream(move |mut stream| {
            if connections.fetch_add(1, Ordering::SeqCst) > 0 {
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let echo = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(echo)))
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                tokio::spawn(builder.serve_connection(TokioIo::new(stream), service));
                return;
            }
            // The first connection, frame by frame: SETTINGS, then at the first HEADERS a
            // GOAWAY whose last stream is 0, as an upstream shutting down sends it.
            tokio::spawn(async move {
                let _ = stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                let mut preface = [0; 24];
                if stream.read_exact(&mut preface).await.is_err() {
                    return;
                }
                let mut header = [0; 9];
                while stream.read_exact(&mut header).await.is_ok() {
                    let mut payload = vec![0; usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2])];
                    if stream.read_exact(&mut payload).await.is_err() || header[3] != 1 {
                        continue;
                    }
                    let _ = stream.write_all(&[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await;
                }
            });
        })
        .await;
        let (pool, meter) = pool(addr, Duration::from_secs(90));
        let (req, resolution) = post();
        let response = pool.send(addr, req).await.expect("answered on the second connection");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "card=4242");
        assert_eq!((meter.opened.get(), pool.0.meters.resends.goaway.get()), (2, 1));
        assert!(resolution.notes().first().is_some_and(|n| n.message.contains("GOAWAY")), "{:?}", resolution.notes());
    }

    #[tokio::test]
    async fn an_endpoint_nobody_listens_on_is_a_connect_failure() {
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        let (pool, _) = pool(addr, Duration::from_secs(90));
        let req = http::Request::get("http://reviews/").body(body::full("")).expect("request");
        assert!(matches!(pool.send(addr, req).await, Err(ProxyError::UpstreamConnect { .. })));
    }
}
