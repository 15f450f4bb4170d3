//! Accepts connections on a listener and serves HTTP/1.1 and HTTP/2 with one service.
//!
//! Each connection is served on its own task; the protocol is detected per connection
//! (HTTP/2 prior knowledge or HTTP/1.1), and an HTTP/1.1 connection may switch protocols
//! ([`crate::stack::upgrade`]). On shutdown the listener closes, open
//! connections are asked to finish, and stragglers after a grace period are left to the
//! sidecar's [`Drain`], which closes them so that their exchanges are recorded.
//!
//! A request head larger than the limit (60 KiB by default, Envoy's) gets `431`, over
//! either protocol.
//!
//! A connection with no exchange in flight that carries nothing either way for the idle
//! timeout is asked to finish the same way (Envoy's connection `idle_timeout`, an hour by
//! default; on HTTP/2 only streams count, not `PING`s): an HTTP/1.1 connection closes, an
//! HTTP/2 one gets `GOAWAY` and closes. Idle connections would otherwise hold their memory
//! until the peer closes them, which a peer that vanished never does. One still open and
//! idle a timeout later (a request head stopped half-way, which hyper waits for) is dropped.
//!
//! A request head still not whole the request headers timeout after its first byte drops
//! its connection (Envoy's `request_headers_timeout`, nginx's `client_header_timeout`):
//! otherwise a peer sending a head a byte at a time (a slowloris) holds the connection as
//! long as it likes, each byte resetting the idle timeout. It is watched as idleness is
//! ([`Activity::head_figure`]), so the cut comes 1 to 1.25 times the timeout after the
//! head's first byte; the time between requests is the idle timeout's. A connection that
//! opened with HTTP/2's preface is no longer watched; a preface that stalls half-way is a
//! late head. A head that never became a request (late, unreadable, or cut off by its
//! caller) is recorded all the same ([`crate::telemetry::unread`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    future::poll_fn,
    pin::{Pin, pin},
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};
use tower::{Service, ServiceExt};

use crate::{
    body,
    connection::{Activity, ConnectionMeter, Exchange},
    drain::Drain,
    stack::{ConnectionAddrs, Request, Response},
    stream_idle::IdleCheck,
    telemetry::unread::{UnreadHead, UnreadHeads},
};

/// How long open connections get to finish after shutdown starts.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long a connection may carry nothing before the sidecar closes it, by default.
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a request head may take from its first byte to its last, by default: hyper's
/// default `header_read_timeout`, within the 20 to 40 s Apache's `mod_reqtimeout` allows.
pub const REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head taken by default, in bytes: Envoy's `max_request_headers_kb`.
pub const MAX_REQUEST_HEADERS: usize = 60 * 1024;

/// The least [`ConnectionLimits::max_request_headers`] hyper's HTTP/1 reader takes.
const LEAST_REQUEST_HEADERS: usize = 8 * 1024;

/// What a listener bounds its connections by (`[connections]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a connection may carry nothing before it is asked to finish; `None`: no limit.
    pub idle_timeout: Option<Duration>,
    /// How long a request head may take from its first byte to its last; `None`: no limit.
    pub request_headers_timeout: Option<Duration>,
    /// The largest request head taken, in bytes (at least 8 KiB): an HTTP/1 request line
    /// and headers (a larger one gets hyper's `431`, and hyper reads no more than this at
    /// once), an HTTP/2 header list as `SETTINGS_MAX_HEADER_LIST_SIZE` counts it. A
    /// connection takes HTTP/2 header lists up to twice this, so that the stack answers (and
    /// records) those over it (`crate::stack::admit`); `h2` answers a larger one `431` itself.
    pub max_request_headers: usize,
}

impl ConnectionLimits {
    /// No timeout at all.
    pub const UNBOUNDED: Self = Self { idle_timeout: None, request_headers_timeout: None, max_request_headers: MAX_REQUEST_HEADERS };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Some(CONNECTION_IDLE_TIMEOUT),
            request_headers_timeout: Some(REQUEST_HEADERS_TIMEOUT),
            max_request_headers: MAX_REQUEST_HEADERS,
        }
    }
}

/// Serves `service` on `listener` until `shutdown` turns true, counting connections in `meter`
/// and closing those that outlive `limits`; request heads that never make a request are
/// recorded by `unread`. Connections still open after the grace period are left to `drain`,
/// which holds them open until it closes them.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    meter: ConnectionMeter,
    limits: ConnectionLimits,
    unread: Option<UnreadHeads>,
    drain: Drain,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let head_limit = limits.max_request_headers.max(LEAST_REQUEST_HEADERS);
    builder.http1().max_buf_size(head_limit);
    builder.http2().max_header_list_size(u32::try_from(head_limit.saturating_mul(2)).unwrap_or(u32::MAX));
    // Every connection's task holds a receiver; the sender sees them all gone.
    let (open, open_rx) = watch::channel(());
    let listening = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        tokio::select! {
            (stream, peer) = meshlens_common::accept::next(&listener) => {
                let addrs = ConnectionAddrs::accepted(peer, stream.local_addr().unwrap_or(listening));
                let service = service.clone();
                let (stream, activity) = meter.meter_watched(stream);
                activity.keep(drain.hold());
                let exchanges = activity.clone();
                let hyper_service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let mut req = req.map(body::boxed);
                    req.extensions_mut().insert(addrs);
                    let exchange = exchanges.exchange();
                    let answer = service.clone().oneshot(req);
                    async move {
                        let Ok(response) = answer.await;
                        Ok::<_, Infallible>(response.map(|body| Answer { body, _exchange: exchange }))
                    }
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service).into_owned();
                let (meter, shutdown, open, unread) = (meter.clone(), shutdown.clone(), open_rx.clone(), unread.clone());
                let closing = drain.closing();
                tokio::spawn(async move {
                    let _open = open;
                    let mut connection = pin!(connection);
                    let mut closing = pin!(closing);
                    let idle_timeout = limits.idle_timeout;
                    let mut idle = idle_timeout.map(|timeout| IdleCheck::new(timeout, activity.figure()));
                    let mut head = limits.request_headers_timeout.map(|timeout| IdleCheck::new(timeout, activity.head_figure()));
                    let (mut shutdown, mut asked) = (shutdown, false);
                    // Drives the connection to its end, asking it to finish once the sidecar shuts
                    // down or once it has carried nothing for the idle timeout, and dropping it if
                    // it then carries nothing for another (a request head stopped half-way: hyper
                    // waits for its end before closing) or if a request head is late.
                    let ended = loop {
                        tokio::select! {
                            biased;
                            ended = connection.as_mut() => break ended,
                            _ = shutdown.changed(), if !asked => {
                                asked = true;
                                connection.as_mut().graceful_shutdown();
                            }
                            () = closing.as_mut() => {
                                tracing::debug!(%peer, "closing a connection still open at shutdown");
                                break Ok(());
                            }
                            () = poll_fn(|cx| poll_idle(cx, idle.as_mut(), &activity)) => {
                                if asked {
                                    tracing::debug!(%peer, "dropping a connection still idle after it was asked to finish");
                                    break Ok(());
                                }
                                asked = true;
                                meter.idle_closed.inc();
                                tracing::debug!(%peer, ?idle_timeout, "closing an idle connection");
                                idle = idle_timeout.map(|timeout| IdleCheck::new(timeout, activity.figure()));
                                connection.as_mut().graceful_shutdown();
                            }
                            () = poll_fn(|cx| {
                                // HTTP/2 has no heads to watch: the check is dropped, its timer with it.
                                if activity.is_http2() {
                                    head = None;
                                }
                                head.as_mut().map_or(Poll::Pending, |check| check.poll_idle(cx, || activity.head_figure()))
                            }) => {
                                meter.header_timeouts.inc();
                                tracing::debug!(%peer, "dropping a connection whose request head is late");
                                if let (Some(unread), Some(after)) = (&unread, limits.request_headers_timeout) {
                                    unread.record(addrs, UnreadHead::Late { after });
                                }
                                break Ok(());
                            }
                        }
                    };
                    if let Err(error) = ended {
                        if crate::error::broke_http(error.as_ref()) {
                            meter.protocol_errors.inc();
                        }
                        let head = unread.as_ref().zip(UnreadHead::of_error(error.as_ref(), activity.head_on_its_way()));
                        if let Some((unread, head)) = head {
                            unread.record(addrs, head);
                        }
                        tracing::debug!(%peer, %error, "connection closed with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop((listener, open_rx));
    if tokio::time::timeout(GRACE, open.closed()).await.is_err() {
        tracing::debug!("connections still open after the grace period are left to the drain");
    }
}

/// Ready once `idle` sees `activity` unchanged for its timeout; never without a check.
fn poll_idle(cx: &mut Context<'_>, idle: Option<&mut IdleCheck>, activity: &Activity) -> Poll<()> {
    idle.map_or(Poll::Pending, |check| check.poll_idle(cx, || activity.figure()))
}

/// A response body, its exchange counted in flight until hyper drops it.
struct Answer {
    body: body::BoxBody,
    _exchange: Exchange,
}

impl hyper::body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = body::BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[tokio::test]
    async fn connections_that_break_http_are_counted_and_closed_ones_are_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let meter = ConnectionMeter::default();
        let (_stop, stop) = watch::channel(false);
        let ok = tower::service_fn(|_req: Request| async { Ok::<_, Infallible>(Response::new(body::full("ok"))) });
        tokio::spawn(serve(listener, ok, meter.clone(), ConnectionLimits::UNBOUNDED, None, Drain::never(), stop));
        let exchange = move |bytes: &'static [u8], answered: bool| {
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                stream.write_all(bytes).expect("write");
                // What gets no answer ends with the client's end of the stream (hyper would
                // drop an answer once the client has closed its half).
                if !answered {
                    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
                }
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                answer
            })
        };
        let cases: [(&[u8], &str, bool); 5] = [
            (b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "HTTP/1.1 200", false),
            (b"GET /x?q=\xff HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400", true),
            // A TLS ClientHello's first bytes on a plaintext port.
            (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "", true),
            // The HTTP/2 preface, then a SETTINGS frame of 5 bytes (a multiple of 6 is required).
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x05\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "", true),
            // Closed half-way through a head: the peer left, it did not break HTTP.
            (b"GET /ok HTTP/1.1\r\nHo", "", false),
        ];
        let mut broken = 0;
        for (i, (bytes, expected, breaks)) in cases.into_iter().enumerate() {
            let answered = !expected.is_empty();
            let answer = tokio::task::spawn_blocking(move || exchange(bytes, answered).join().expect("client")).await.expect("join");
            assert!(answer.starts_with(expected), "{bytes:?}: {answer}");
            // The counters move as the connection's task ends.
            for _ in 0..100 {
                if meter.closed.get() == i as u64 + 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            broken += u64::from(breaks);
            assert_eq!((meter.closed.get(), meter.protocol_errors.get()), (i as u64 + 1, broken), "{bytes:?}");
        }
    }

    /// Sends one request on `stream` and reads its answer (`ok`).
    async fn exchange(stream: &mut tokio::net::TcpStream, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut buf = [0; 512];
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).expect("utf-8")
    }

    /// A server answering `ok`, `/slow` after `slow`, bounding connections by `limits`.
    struct Served {
        addr: std::net::SocketAddr,
        meter: ConnectionMeter,
        stop: watch::Sender<bool>,
        server: tokio::task::JoinHandle<()>,
    }

    async fn serve_ok(limits: ConnectionLimits, slow: Duration) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (meter, (stop, stopped)) = (ConnectionMeter::default(), watch::channel(false));
        let app = tower::service_fn(move |req: Request| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(slow).await;
            }
            Ok::<_, Infallible>(Response::new(body::full("ok")))
        });
        let server = tokio::spawn(serve(listener, app, meter.clone(), limits, None, Drain::never(), stopped));
        Served { addr, meter, stop, server }
    }

    #[tokio::test]
    async fn request_heads_up_to_the_limit_are_taken_over_either_protocol_and_larger_ones_get_431() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Served { addr, stop: _stop, .. } = serve_ok(ConnectionLimits::default(), Duration::ZERO).await;
        let cookie = |kib: usize| "c".repeat(kib * 1024);
        for (kib, status) in [(50, "HTTP/1.1 200"), (70, "HTTP/1.1 431")] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let head = format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: {}\r\nConnection: close\r\n\r\n", cookie(kib));
            stream.write_all(head.as_bytes()).await.expect("write");
            let mut answer = String::new();
            let read = stream.read_to_string(&mut answer).await;
            // The refused head's last bytes are never read, so its connection may close with
            // a reset that reaches the client before the answer does.
            let reset = read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) && answer.is_empty();
            assert!(answer.starts_with(status) || (reset && kib == 70), "{kib} KiB over HTTP/1.1: {answer}");
        }
        // An HTTP/2 connection takes up to twice as much (hyper's own default is 16 KiB): the
        // stack refuses what is over the limit, and records it.
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut h2, connection) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        for (kib, taken) in [(50, true), (110, true), (130, false)] {
            let req = http::Request::get(format!("http://{addr}/")).header("cookie", cookie(kib)).body(body::full("")).expect("request");
            h2.ready().await.expect("ready");
            let answer = h2.send_request(req).await;
            let status = answer.as_ref().map(|r| r.status().as_u16());
            assert_eq!(status.as_ref().is_ok_and(|s| *s == 200), taken, "{kib} KiB over HTTP/2: {status:?}");
        }
    }

    #[tokio::test]
    async fn at_shutdown_idle_connections_close_and_exchanges_in_flight_finish() {
        use tokio::io::AsyncReadExt;
        let Served { addr, stop, server, .. } = serve_ok(ConnectionLimits::default(), Duration::from_millis(500)).await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(exchange(&mut idle, "/").await.starts_with("HTTP/1.1 200"));
        let mut busy = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let slow = tokio::spawn(async move { exchange(&mut busy, "/slow").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = std::time::Instant::now();
        stop.send(true).expect("stop");
        let read = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut [0; 16])).await;
        assert_eq!(read.expect("closed at once").expect("read"), 0);
        let slow = slow.await.expect("the slow exchange");
        assert!(slow.starts_with("HTTP/1.1 200") && slow.contains("connection: close"), "{slow}");
        tokio::time::timeout(GRACE, server).await.expect("serving ends once its connections have").expect("server");
        assert!(asked.elapsed() < Duration::from_secs(2), "ended {:?} after shutdown began", asked.elapsed());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }

    #[tokio::test]
    async fn a_connection_that_carries_nothing_for_the_idle_timeout_is_closed_and_counted() {
        use tokio::io::AsyncReadExt;
        let idle = Duration::from_millis(400);
        let limits = ConnectionLimits { idle_timeout: Some(idle), ..ConnectionLimits::UNBOUNDED };
        let Served { addr, meter, stop: _stop, .. } = serve_ok(limits, Duration::from_millis(1200)).await;

        // Idle after its answer: closed between the timeout and a quarter more.
        let mut quiet = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(exchange(&mut quiet, "/").await.starts_with("HTTP/1.1 200"));
        let answered = std::time::Instant::now();
        let quiet = tokio::spawn(async move {
            let read = tokio::time::timeout(Duration::from_secs(5), quiet.read(&mut [0; 16])).await;
            assert_eq!(read.expect("closed within 5 s").expect("read"), 0, "the idle connection is closed");
            answered.elapsed()
        });
        // A request every 150 ms keeps another open on the same connection, well past the timeout.
        let mut busy = tokio::net::TcpStream::connect(addr).await.expect("connect");
        for _ in 0..8 {
            assert!(exchange(&mut busy, "/").await.starts_with("HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let closed = quiet.await.expect("reader");
        assert!(closed >= idle && closed < idle * 2, "closed {closed:?} after the last byte");
        assert_eq!((meter.idle_closed.get(), meter.closed.get()), (1, 1), "the busy connection is open");

        // An exchange in flight keeps its connection open however quiet (a response three
        // timeouts late); the timeout runs from its end.
        let slow = exchange(&mut busy, "/slow").await;
        assert!(slow.starts_with("HTTP/1.1 200") && !slow.contains("connection: close"), "{slow}");
        let answered = std::time::Instant::now();
        assert_eq!(meter.idle_closed.get(), 1);
        assert_eq!(busy.read(&mut [0; 16]).await.expect("read"), 0, "then it is closed as idle");
        assert!(answered.elapsed() >= idle, "closed {:?} after the answer", answered.elapsed());
        assert_eq!(meter.idle_closed.get(), 2);

        // A head that stopped half-way is dropped an idle timeout after it was asked to finish.
        {
            use tokio::io::AsyncWriteExt;
            let mut partial = tokio::net::TcpStream::connect(addr).await.expect("connect");
            partial.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
            let started = std::time::Instant::now();
            let read = tokio::time::timeout(Duration::from_secs(5), partial.read(&mut [0; 64])).await;
            assert_eq!(read.expect("closed within 5 s").expect("read"), 0);
            let closed = started.elapsed();
            assert!(closed >= idle * 2 && closed < idle * 3, "closed {closed:?} after the last byte");
        }
        assert_eq!(meter.idle_closed.get(), 3);

        // An HTTP/2 connection without a stream gets `GOAWAY` and is closed, though its client
        // sends a `PING` every 50 ms.
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut client = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        client.timer(hyper_util::rt::TokioTimer::new()).keep_alive_interval(Duration::from_millis(50)).keep_alive_while_idle(true);
        let (mut h2, connection) = client.handshake(TokioIo::new(stream)).await.expect("h2");
        let connection = tokio::spawn(connection);
        let answer = h2.send_request(http::Request::get("http://a/").body(body::full("")).expect("request")).await.expect("answer");
        assert_eq!(answer.status(), http::StatusCode::OK);
        let ended = tokio::time::timeout(Duration::from_secs(5), connection).await.expect("closed within 5 s");
        assert!(ended.expect("driver").is_ok(), "closed cleanly");
        assert_eq!(meter.idle_closed.get(), 4);
    }

    #[tokio::test]
    async fn a_request_head_still_not_whole_the_headers_timeout_after_its_first_byte_drops_its_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let late = Duration::from_millis(400);
        let limits = ConnectionLimits { request_headers_timeout: Some(late), ..ConnectionLimits::UNBOUNDED };
        let Served { addr, meter, stop: _stop, .. } = serve_ok(limits, Duration::from_millis(1200)).await;
        // Writes `head` a byte every `pause` (each byte well within any idle timeout), then
        // reads until the server closes: what came back, and when it closed after the first byte.
        let dribble = |head: &'static [u8], pause: Duration| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let started = std::time::Instant::now();
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
            assert!(read.expect("closed within 5 s").is_ok() || answer.is_empty());
            (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
        };

        // A slowloris: a byte every 50 ms of a head that would take 2.5 s.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let (answer, closed) = dribble(head, Duration::from_millis(50)).await;
        assert!(answer.is_empty() && closed >= late && closed < late * 2, "{answer:?} closed after {closed:?}");
        assert_eq!((meter.header_timeouts.get(), meter.closed.get()), (1, 1));
        // A preface of HTTP/2 that stops half-way is a late head too.
        let (_, closed) = dribble(b"PRI * HTTP/2.0\r\n", Duration::ZERO).await;
        assert!(closed >= late && closed < late * 2, "closed after {closed:?}");
        assert_eq!(meter.header_timeouts.get(), 2);

        // A slow head that is whole within the timeout is answered.
        let (answer, _) = dribble(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Duration::from_millis(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Neither the time between requests nor a slow answer is a head's: a keep-alive
        // connection idle for three timeouts, then waiting three for its answer, stays open.
        let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(exchange(&mut kept, "/").await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(late * 3).await;
        assert!(exchange(&mut kept, "/slow").await.starts_with("HTTP/1.1 200"));
        assert!(exchange(&mut kept, "/").await.starts_with("HTTP/1.1 200"));
        // Nor is what crosses an HTTP/2 connection between its streams: `PING`s every 100 ms
        // for three timeouts.
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut client = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        client.timer(hyper_util::rt::TokioTimer::new()).keep_alive_interval(Duration::from_millis(100)).keep_alive_while_idle(true);
        let (mut h2, connection) = client.handshake(TokioIo::new(stream)).await.expect("h2");
        let connection = tokio::spawn(connection);
        let get = || http::Request::get("http://a/").body(body::full("")).expect("request");
        assert_eq!(h2.send_request(get()).await.expect("answer").status(), http::StatusCode::OK);
        tokio::time::sleep(late * 3).await;
        assert_eq!(h2.send_request(get()).await.expect("answer after the pings").status(), http::StatusCode::OK);
        assert!(!connection.is_finished());
        let counts = (meter.header_timeouts.get(), meter.closed.get());
        assert_eq!(counts, (2, 3), "the one that asked to close is closed, the kept and HTTP/2 ones are open");
    }
}
