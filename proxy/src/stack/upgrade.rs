//! HTTP/1.1 protocol upgrades (WebSocket and the like) carried through the sidecar.
//!
//! A request asking to switch protocols (`Connection: upgrade` with an `Upgrade` header)
//! goes to its upstream on a connection of its own, never a pooled one, with the two
//! headers kept (every other hop-by-hop header is still removed). When the upstream
//! answers `101 Switching Protocols`, the sidecar answers its caller the same, and once
//! both connections have switched it copies bytes between them in both directions until
//! either side closes, or until nothing has crossed either way for the idle timeout (Envoy's
//! stream idle timeout, 5 minutes by default): then the sidecar closes both connections, and
//! the exchange ends with flag `SI`. Any other answer is an ordinary response, and the
//! connection closes after it. As in Envoy, an upgraded exchange lasts until its connection closes: the `101`
//! carries a [`Tunnel`] through which the request's span, access log and metrics learn, at
//! the close, the bytes that crossed after the switch (added to the body sizes), and end
//! there. The listener's and the upstream's TCP counters count those bytes too.
//!
//! When the sidecar shuts down, the upgraded connections still open are closed together
//! once its listeners have finished ([`crate::drain`]), so that their records (with a
//! `sidecar_shutdown` event) go out in the telemetry's last export rather than being lost
//! with the process.
//!
//! An offer to switch to cleartext HTTP/2 (`Upgrade: h2c`) is declined, as Envoy declines
//! it: the request goes on without it, and its caller gets an HTTP/1.1 answer.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;

use crate::{
    body::{self, BoxBody},
    connection::{ConnectionMeter, UpstreamMeters},
    drain::Drain,
    error::{BoxError, ProxyError},
    stream_idle::IdleCheck,
};

/// What an upgraded connection carried, learned when it closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelEnd {
    /// Bytes from the caller to the upstream after the switch.
    pub sent: u64,
    /// Bytes from the upstream to the caller after the switch.
    pub received: u64,
    /// Whether it ended in an I/O error (a reset) rather than a close.
    pub failed: bool,
    /// Whether the sidecar closed it for carrying nothing for its idle timeout.
    pub idle: bool,
    /// Whether the sidecar closed it because it was shutting down.
    pub shutdown: bool,
}

type OnClose = Box<dyn FnOnce(TunnelEnd) + Send>;

/// Where an upgraded connection's end meets whoever waits for it, in either order.
enum Meeting {
    Open,
    Waiting(OnClose),
    Ended(TunnelEnd),
    Done,
}

/// An extension of a `101` response: the upgraded connection, open until both sides close.
#[derive(Clone)]
pub struct Tunnel(Arc<Mutex<Meeting>>);

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

impl Tunnel {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Meeting::Open)))
    }

    fn meeting(&self) -> std::sync::MutexGuard<'_, Meeting> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `then` with the connection's end: at once if it has closed, else when it does
    /// (on the task copying its bytes). Only the first caller is called.
    pub fn on_close(&self, then: impl FnOnce(TunnelEnd) + Send + 'static) {
        let mut meeting = self.meeting();
        match std::mem::replace(&mut *meeting, Meeting::Done) {
            Meeting::Open => *meeting = Meeting::Waiting(Box::new(then)),
            Meeting::Ended(end) => {
                drop(meeting);
                then(end);
            }
            taken @ (Meeting::Waiting(_) | Meeting::Done) => *meeting = taken,
        }
    }

    /// The connection closed.
    fn close(&self, end: TunnelEnd) {
        let mut meeting = self.meeting();
        match std::mem::replace(&mut *meeting, Meeting::Done) {
            Meeting::Open => *meeting = Meeting::Ended(end),
            Meeting::Waiting(then) => {
                drop(meeting);
                then(end);
            }
            Meeting::Ended(_) | Meeting::Done => {}
        }
    }
}

/// Closes its tunnel as failed if the copying task ends without closing it (the runtime
/// shutting down), so a waiting record is still written.
struct CloseOnDrop(Tunnel);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(TunnelEnd { failed: true, ..TunnelEnd::default() });
    }
}

/// The protocol a request asks to switch to: its `Upgrade` header, when `Connection`
/// names `upgrade`. Not `h2c`: as in Envoy, a request offering to switch its connection
/// to cleartext HTTP/2 (as `curl --http2` does) goes on as the plain request it also is,
/// over a pooled connection, rather than becoming a tunnel of requests the sidecar would
/// no longer see.
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    if upgrade.to_str().is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))) {
        return None;
    }
    let asks = super::forward::connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// Puts back the two headers that ask for (or agree to) the switch to `protocol`, after the
/// hop-by-hop headers were removed.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Sends `req`, which asks to switch to `protocol` and has its hop-by-hop headers removed,
/// to `addr` on a new connection; on `101`, joins the caller's connection to the upstream's.
pub async fn forward(
    addr: SocketAddr,
    mut req: http::Request<BoxBody>,
    protocol: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    meters: &UpstreamMeters,
    drain: &Drain,
) -> Result<http::Response<BoxBody>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    restore(req.headers_mut(), protocol);
    let (io, opened) = super::pool::connect(addr, connect_timeout, meters).await?;
    if let Some(resolution) = req.extensions().get::<super::Resolution>() {
        resolution.set_upstream_connection(opened);
    }
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| ProxyError::UpstreamConnect { addr, source: e.into() })?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    let mut response = sender.send_request(req).await.map_err(|e| ProxyError::UpstreamReset { addr, source: e.into() })?;
    let agreed = response.headers().get(header::UPGRADE).cloned();
    super::forward::strip_response(addr, &mut response)?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response.map(body::boxed));
    }
    let Some(agreed) = agreed else {
        return Err(ProxyError::UpstreamReset { addr, source: "the upstream switched protocols without naming one".into() });
    };
    restore(response.headers_mut(), agreed);
    let upstream = hyper::upgrade::on(&mut response);
    let tunnel = Tunnel::new();
    response.extensions_mut().insert(tunnel.clone());
    let (open, closing) = (drain.hold(), drain.closing());
    tokio::spawn(async move {
        // Dropped last, once the end has been handed on.
        let _open = open;
        let closer = CloseOnDrop(tunnel);
        // The caller's side counted on a meter of its own: what it read is what was sent.
        let caller = ConnectionMeter::default();
        let copying = async {
            let (downstream, upstream) = (downstream.await?, upstream.await?);
            let mut downstream = caller.meter(TokioIo::new(downstream));
            let mut upstream = TokioIo::new(upstream);
            let copy = tokio::io::copy_bidirectional(&mut downstream, &mut upstream);
            let Some(idle_timeout) = idle_timeout else {
                copy.await?;
                return Ok(Closed::ByPeer);
            };
            let crossed = || caller.received.get() + caller.sent.get();
            until_idle(copy, idle_timeout, crossed).await
        };
        let joined: Result<Closed, BoxError> = tokio::select! {
            joined = copying => joined,
            () = closing => Ok(Closed::Shutdown),
        };
        let mut end = TunnelEnd { sent: caller.received.get(), received: caller.sent.get(), ..TunnelEnd::default() };
        match joined {
            Ok(Closed::ByPeer) => tracing::debug!(%addr, end.sent, end.received, "upgraded connection closed"),
            Ok(Closed::Idle) => {
                end.idle = true;
                tracing::debug!(%addr, end.sent, end.received, "upgraded connection closed for idleness");
            }
            Ok(Closed::Shutdown) => {
                end.shutdown = true;
                tracing::debug!(%addr, end.sent, end.received, "upgraded connection closed at shutdown");
            }
            Err(e) => {
                end.failed = true;
                tracing::debug!(%addr, error = %e, "upgraded connection failed");
            }
        }
        closer.0.close(end);
    });
    Ok(response.map(body::boxed))
}

/// How an upgraded connection that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// Both sides closed it.
    ByPeer,
    /// Nothing crossed it for the idle timeout.
    Idle,
    /// The sidecar shut down.
    Shutdown,
}

/// Drives `copy` until it ends, or until `crossed` (the bytes carried so far) stays the same
/// for `idle` ([`IdleCheck`]). Dropping the copy closes both connections.
async fn until_idle<F>(copy: F, idle: Duration, crossed: impl Fn() -> u64) -> Result<Closed, BoxError>
where
    F: std::future::Future<Output = std::io::Result<(u64, u64)>>,
{
    tokio::pin!(copy);
    let mut check = IdleCheck::new(idle, crossed());
    tokio::select! {
        copied = &mut copy => copied.map(|_| Closed::ByPeer).map_err(Into::into),
        () = std::future::poll_fn(|cx| check.poll_idle(cx, &crossed)) => Ok(Closed::Idle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnels_end_reaches_its_waiter_whichever_comes_first() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let waiter = |tag: &'static str| {
            let seen = seen.clone();
            move |end: TunnelEnd| seen.lock().expect("lock").push((tag, end))
        };
        let end = TunnelEnd { sent: 3, received: 5, ..TunnelEnd::default() };
        let waited = Tunnel::new();
        waited.on_close(waiter("waited"));
        waited.on_close(waiter("second waiter"));
        assert!(seen.lock().expect("lock").is_empty(), "nothing before the close");
        waited.close(end);
        waited.close(TunnelEnd::default());
        let closed_first = Tunnel::new();
        closed_first.close(end);
        closed_first.on_close(waiter("late"));
        let dropped = Tunnel::new();
        dropped.on_close(waiter("dropped"));
        drop(CloseOnDrop(dropped.clone()));
        let failed = TunnelEnd { failed: true, ..TunnelEnd::default() };
        assert_eq!(*seen.lock().expect("lock"), [("waited", end), ("late", end), ("dropped", failed)]);
    }

    #[test]
    fn an_upgrade_is_asked_for_with_both_headers() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        let websocket = Some(HeaderValue::from_static("websocket"));
        assert_eq!(requested(&headers(&[("connection", "Upgrade"), ("upgrade", "websocket")])), websocket);
        assert_eq!(requested(&headers(&[("connection", "keep-alive, upgrade"), ("upgrade", "websocket")])), websocket);
        assert_eq!(requested(&headers(&[("connection", "keep-alive"), ("connection", "Upgrade"), ("upgrade", "websocket")])), websocket);
        assert_eq!(requested(&headers(&[("upgrade", "websocket")])), None, "Upgrade alone is not a request to switch");
        assert_eq!(requested(&headers(&[("connection", "upgrade")])), None);
        assert_eq!(requested(&headers(&[("connection", "upgrades"), ("upgrade", "h2c")])), None);
        // The offer of cleartext HTTP/2 is declined; the request goes on as it is.
        assert_eq!(requested(&headers(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")])), None);
    }

    /// An upstream that switches to `echo` when asked (and sends back what it receives
    /// after), and answers anything else `426`; on `/unnamed` it answers `101` without
    /// naming a protocol.
    async fn echo_upstream() -> SocketAddr {
        let (addr, _) = crate::stack::testing::upstream(|stream| {
            let service = hyper::service::service_fn(|mut req: http::Request<hyper::body::Incoming>| async move {
                let mut response = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                if requested(req.headers()).is_none() {
                    *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
                    return Ok::<_, std::convert::Infallible>(response);
                }
                if req.uri().path() == "/unnamed" {
                    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    return Ok(response);
                }
                let switched = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let (mut read, mut write) = tokio::io::split(TokioIo::new(switched.await.expect("switched")));
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                restore(response.headers_mut(), HeaderValue::from_static("echo"));
                Ok(response)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades());
        })
        .await;
        addr
    }

    /// A sidecar-like server in front of `upstream`: the server and forward layers only.
    /// The ends of the connections it upgrades come out of the returned channel.
    async fn proxy(upstream: SocketAddr) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<TunnelEnd>) {
        proxy_with(upstream, Some(crate::stack::forward::UPGRADE_IDLE_TIMEOUT), crate::server::ConnectionLimits::UNBOUNDED).await
    }

    /// [`proxy`], closing upgraded connections after `idle` without traffic, and bounding the
    /// connections it accepts by `limits`.
    async fn proxy_with(
        upstream: SocketAddr,
        idle: Option<Duration>,
        limits: crate::server::ConnectionLimits,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<TunnelEnd>) {
        use tower::Service;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let forward = crate::stack::forward::Forward::new(std::collections::HashMap::new(), Default::default(), idle, Drain::never());
        let (ends, ended) = tokio::sync::mpsc::unbounded_channel();
        let service = tower::service_fn(move |mut req: crate::stack::Request| {
            req.extensions_mut().insert(crate::stack::Upstream(upstream));
            let (mut forward, ends) = (forward.clone(), ends.clone());
            async move {
                Ok::<_, std::convert::Infallible>(match forward.call(req).await {
                    Ok(response) => {
                        if let Some(tunnel) = response.extensions().get::<Tunnel>() {
                            tunnel.on_close(move |end| {
                                let _ = ends.send(end);
                            });
                        }
                        response
                    }
                    Err(e) => crate::stack::errors::error_response(&e, false),
                })
            }
        });
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _keep = _keep;
            crate::server::serve(listener, service, crate::connection::ConnectionMeter::default(), limits, None, Drain::never(), shutdown).await;
        });
        (addr, ended)
    }

    /// Sends `head` and reads the response head.
    async fn exchange(stream: &mut tokio::net::TcpStream, head: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.expect("read"), 1, "closed after {:?}", String::from_utf8_lossy(&got));
            got.push(byte[0]);
        }
        String::from_utf8(got).expect("UTF-8").to_ascii_lowercase()
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_closed_once_nothing_crossed_it_for_the_idle_timeout() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let idle = Duration::from_secs(300);
        let never = std::future::pending::<std::io::Result<(u64, u64)>>();
        let started = tokio::time::Instant::now();
        assert_eq!(until_idle(never, idle, || 0).await.ok(), Some(Closed::Idle));
        let quiet = started.elapsed();
        assert!(quiet >= idle && quiet <= idle + idle / 4, "closed {quiet:?} after the last byte");

        // A byte every minute keeps it open; the close comes an idle timeout after the last.
        let crossed = Arc::new(AtomicU64::new(0));
        let talker = tokio::spawn({
            let crossed = crossed.clone();
            async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    crossed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<std::io::Result<(u64, u64)>>();
        assert_eq!(until_idle(never, idle, || crossed.load(Ordering::Relaxed)).await.ok(), Some(Closed::Idle));
        let open = started.elapsed();
        let last = Duration::from_secs(600);
        assert!(open >= last + idle && open <= last + idle + idle / 4, "open {open:?}, the last byte at {last:?}");
        talker.await.expect("talker");

        let closed = std::future::ready(Ok((3, 5)));
        assert_eq!(until_idle(closed, idle, || 0).await.ok(), Some(Closed::ByPeer));
        let reset = std::future::ready(Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(until_idle(reset, idle, || 0).await.is_err());
    }

    #[tokio::test]
    async fn an_idle_upgraded_connection_is_closed_and_its_end_says_so() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_millis(300);
        let (sidecar, mut ended) = proxy_with(echo_upstream().await, Some(idle), crate::server::ConnectionLimits::UNBOUNDED).await;
        let mut stream = tokio::net::TcpStream::connect(sidecar).await.expect("connect");
        let head = exchange(&mut stream, "GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        stream.write_all(b"ping").await.expect("write");
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.expect("echoed");
        let quiet = std::time::Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "the sidecar closed the caller's side: {read:?}");
        assert!(quiet.elapsed() >= idle, "not before the idle timeout: {:?}", quiet.elapsed());
        let end = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await.expect("ended").expect("an end");
        assert_eq!(end, TunnelEnd { sent: 4, received: 4, idle: true, ..TunnelEnd::default() });
    }

    #[tokio::test]
    async fn a_websocket_style_upgrade_joins_the_two_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (sidecar, mut ended) = proxy(echo_upstream().await).await;

        // Without the upgrade headers it is an ordinary request.
        let mut plain = tokio::net::TcpStream::connect(sidecar).await.expect("connect");
        let head = exchange(&mut plain, "GET /ws HTTP/1.1\r\nhost: chat\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 426"), "{head}");

        let mut stream = tokio::net::TcpStream::connect(sidecar).await.expect("connect");
        let head = exchange(&mut stream, "GET /ws HTTP/1.1\r\nhost: chat\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("connection: upgrade\r\n") && head.contains("upgrade: echo\r\n"), "{head}");
        let mut unnamed = tokio::net::TcpStream::connect(sidecar).await.expect("connect");
        let head = exchange(&mut unnamed, "GET /unnamed HTTP/1.1\r\nhost: chat\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 502"), "a switch to no protocol is the upstream's fault: {head}");

        let messages = [&b"ping"[..], b"\x00\x01binary\xff", b"GET / HTTP/1.1\r\n\r\n"];
        for message in messages {
            stream.write_all(message).await.expect("write");
            let mut back = vec![0u8; message.len()];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.expect("echoed in time").expect("read");
            assert_eq!(back, message, "bytes pass both ways unchanged, HTTP or not");
        }
        assert!(ended.try_recv().is_err(), "open while both sides are");
        drop(stream);
        let end = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await.expect("closed in time").expect("an end");
        let carried = messages.iter().map(|m| m.len() as u64).sum();
        assert_eq!(end, TunnelEnd { sent: carried, received: carried, ..TunnelEnd::default() }, "what crossed after the switch");
    }

    #[tokio::test]
    async fn a_tunnel_is_no_request_head_however_long_its_bytes_keep_coming() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let late = Duration::from_millis(200);
        let limits = crate::server::ConnectionLimits { request_headers_timeout: Some(late), ..crate::server::ConnectionLimits::UNBOUNDED };
        let (sidecar, mut ended) = proxy_with(echo_upstream().await, None, limits).await;
        let mut stream = tokio::net::TcpStream::connect(sidecar).await.expect("connect");
        let head = exchange(&mut stream, "GET /ws HTTP/1.1\r\nhost: chat\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // A byte every 50 ms for five timeouts, as a head sent that slowly would come.
        for _ in 0..20 {
            stream.write_all(b"x").await.expect("write");
            let mut back = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.expect("echoed in time").expect("read");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ended.try_recv().is_err(), "open while both sides are");
    }
}
