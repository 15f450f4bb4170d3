//! HTTP/1.1 protocol upgrades (WebSocket and the like) carried through the sidecar.
//!
//! A request asking to switch protocols (`Connection: upgrade` with an `Upgrade` header)
//! goes to its upstream on a connection of its own, never a pooled one, with the two
//! headers kept (every other hop-by-hop header is still removed). When the upstream
//! answers `101 Switching Protocols`, the sidecar answers its caller the same, and once
//! both connections have switched it copies bytes between them in both directions until
//! either side closes. Any other answer is an ordinary response, and the connection closes
//! after it. The request's span, access log and metrics record the exchange up to the
//! `101`; the listener's and the upstream's TCP counters count the bytes that follow.

use std::{net::SocketAddr, time::Duration};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;

use crate::{
    body::{self, BoxBody},
    connection::UpstreamMeters,
    error::{BoxError, ProxyError},
};

/// The protocol a request asks to switch to: its `Upgrade` header, when `Connection`
/// names `upgrade`.
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
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
    meters: &UpstreamMeters,
) -> Result<http::Response<BoxBody>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    restore(req.headers_mut(), protocol);
    let io = super::pool::connect(addr, connect_timeout, meters).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| ProxyError::UpstreamConnect { addr, source: e.into() })?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    let mut response = sender.send_request(req).await.map_err(|e| ProxyError::UpstreamReset { addr, source: e.into() })?;
    let agreed = response.headers().get(header::UPGRADE).cloned();
    super::forward::strip_hop_by_hop(response.headers_mut());
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response.map(body::boxed));
    }
    let Some(agreed) = agreed else {
        return Err(ProxyError::UpstreamReset { addr, source: "the upstream switched protocols without naming one".into() });
    };
    restore(response.headers_mut(), agreed);
    let upstream = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let joined: Result<(u64, u64), BoxError> = async {
            let (downstream, upstream) = (downstream.await?, upstream.await?);
            Ok(tokio::io::copy_bidirectional(&mut TokioIo::new(downstream), &mut TokioIo::new(upstream)).await?)
        }
        .await;
        match joined {
            Ok((sent, received)) => tracing::debug!(%addr, sent, received, "upgraded connection closed"),
            Err(e) => tracing::debug!(%addr, error = %e, "upgraded connection failed"),
        }
    });
    Ok(response.map(body::boxed))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    async fn proxy(upstream: SocketAddr) -> SocketAddr {
        use tower::Service;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let forward = crate::stack::forward::Forward::default();
        let service = tower::service_fn(move |mut req: crate::stack::Request| {
            req.extensions_mut().insert(crate::stack::Upstream(upstream));
            let mut forward = forward.clone();
            async move {
                Ok::<_, std::convert::Infallible>(match forward.call(req).await {
                    Ok(response) => response,
                    Err(e) => crate::stack::errors::error_response(&e, false),
                })
            }
        });
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _keep = _keep;
            crate::server::serve(listener, service, crate::connection::ConnectionMeter::default(), shutdown).await;
        });
        addr
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

    #[tokio::test]
    async fn a_websocket_style_upgrade_joins_the_two_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sidecar = proxy(echo_upstream().await).await;

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

        for message in [&b"ping"[..], b"\x00\x01binary\xff", b"GET / HTTP/1.1\r\n\r\n"] {
            stream.write_all(message).await.expect("write");
            let mut back = vec![0u8; message.len()];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.expect("echoed in time").expect("read");
            assert_eq!(back, message, "bytes pass both ways unchanged, HTTP or not");
        }
    }
}
