//! Sends the request to its [`Upstream`] and streams the response back.
//!
//! HTTP/1.1 requests go over pooled HTTP/1.1 connections ([`super::pool`]), HTTP/2 requests
//! (gRPC among them) over one HTTP/2 connection per endpoint ([`super::h2_pool`], prior
//! knowledge, as between sidecars). The upstream sees the authority the caller addressed:
//! `Host` (taken from the request line when it came in absolute form) or `:authority`,
//! never the endpoint's address. Bodies stream in both directions; hop-by-hop headers are
//! removed, except those of a protocol upgrade ([`super::upgrade`]). A message framed by any
//! transfer coding but one `chunked` cannot go on as it came (its body would arrive still
//! coded, unlabelled): such a request gets 501 with `DPE` (RFC 9112, 6.1), such a response
//! 502 with `UPE`, as Envoy answers both, and so does a `101` to a request that asked for
//! no upgrade. HTTP/1 messages go on in HTTP/1.1, the sidecar's own version (RFC 9110,
//! 6.2). Connections to a known upstream workload are metered (opened, closed, bytes) under
//! that workload's identity.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Uri, header, uri::Authority};
use tower::Service;

use crate::{
    connection::{ConnectionMeter, Resends, UpstreamMeters},
    drain::Drain,
    error::ProxyError,
};

use super::{BoxFuture, Request, Response, Upstream, h2_pool::Http2Pool, pool::Http1Pool, upgrade};

/// Pooled HTTP clients, shared by both sides of a sidecar; a clone (one per request) is a
/// reference count.
#[derive(Debug, Clone)]
pub struct Forward(Arc<Clients>);

#[derive(Debug)]
struct Clients {
    http1: Http1Pool,
    http2: Http2Pool,
    /// The meters of upgraded requests' own connections.
    meters: Arc<UpstreamMeters>,
    /// How long an upgraded connection may carry nothing before it is closed.
    upgrade_idle_timeout: Option<Duration>,
    /// What closes the upgraded connections at shutdown.
    drain: Drain,
}

impl Default for Forward {
    fn default() -> Self {
        Self::new(std::collections::HashMap::new(), Resends::default(), Some(UPGRADE_IDLE_TIMEOUT), Drain::never())
    }
}

impl Forward {
    /// Creates the clients; connections to the addresses in `upstreams` are counted by
    /// their meters, and upgraded connections closed after `upgrade_idle_timeout` without
    /// traffic (never with `None`), and when `drain` closes.
    pub fn new(
        upstreams: std::collections::HashMap<std::net::SocketAddr, ConnectionMeter>,
        resends: Resends,
        upgrade_idle_timeout: Option<Duration>,
        drain: Drain,
    ) -> Self {
        let meters = Arc::new(UpstreamMeters::new(upstreams, resends));
        let http1 = Http1Pool::new(meters.clone(), CONNECT_TIMEOUT, IDLE_TIMEOUT);
        let http2 = Http2Pool::new(meters.clone(), CONNECT_TIMEOUT, IDLE_TIMEOUT);
        Self(Arc::new(Clients { http1, http2, meters, upgrade_idle_timeout, drain }))
    }
}

/// How long an upgraded connection may carry nothing, by default: Envoy's stream idle timeout.
pub const UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an upstream connection is kept idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Headers that belong to one connection and must not be forwarded. `Trailer` is not one
/// (RFC 9110, 6.6.2): hyper writes an HTTP/1.1 message's trailers only when it names them,
/// so keeping it lets trailers pass both ways.
const HOP_BY_HOP: [header::HeaderName; 5] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const KEEP_ALIVE: header::HeaderName = header::HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: header::HeaderName = header::HeaderName::from_static("proxy-connection");

/// The comma-separated tokens of every `Connection` header, trimmed.
pub(super) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Removes a message's hop-by-hop headers. Returns the `Transfer-Encoding` of a message
/// framed by anything but one `chunked` ([`codings_beyond_chunked`]), which cannot go on
/// and is the caller's to refuse.
#[must_use]
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<String> {
    // Most messages carry none of these: one pass over the names costs less than a hashed
    // lookup for each.
    let hop_by_hop = |name: &header::HeaderName| {
        HOP_BY_HOP.contains(name) || [KEEP_ALIVE, PROXY_CONNECTION, header::TE].contains(name)
    };
    if !headers.keys().any(hop_by_hop) {
        return None;
    }
    let unsupported = codings_beyond_chunked(headers);
    // A message framed by `Transfer-Encoding` and carrying a `Content-Length` too was read by
    // its chunks, and goes on with the length of what was read: an intermediary must remove
    // the received `Content-Length` (RFC 9112, 6.3), which no longer describes the body.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<header::HeaderName> = connection_tokens(headers).filter_map(|name| name.parse().ok()).collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    // `te: trailers` is the one `te` value that must pass (gRPC needs it).
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
    unsupported
}

/// Readies an upstream's response to go on: its hop-by-hop headers removed, and refused as
/// the upstream's protocol error when its framing cannot go on.
pub(super) fn strip_response<B>(addr: std::net::SocketAddr, response: &mut http::Response<B>) -> Result<(), ProxyError> {
    match strip_hop_by_hop(response.headers_mut()) {
        None => Ok(()),
        Some(codings) => {
            let reason = format!("its response is framed by transfer coding {codings:?}, which the sidecar does not decode");
            Err(ProxyError::UpstreamProtocol { addr, reason })
        }
    }
}

/// The `Transfer-Encoding` of a message framed by anything but one `chunked`, which is all
/// the sidecar (hyper) decodes. Such a message cannot go on as it came: the header is
/// hop-by-hop, so its body would reach the peer still coded with nothing saying so (and
/// `chunked` twice is not allowed at all, RFC 9112, 6.1).
fn codings_beyond_chunked(headers: &HeaderMap) -> Option<String> {
    let values = headers.get_all(header::TRANSFER_ENCODING);
    let mut codings = values.iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(<[u8]>::trim_ascii).filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(values.iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect::<Vec<_>>().join(", ")),
    }
}

impl Service<Request> for Forward {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(Upstream(addr)) = req.extensions().get::<Upstream>().copied() else {
            return Box::pin(std::future::ready(Err(ProxyError::BadRequest(
                "no upstream chosen".into(),
            ))));
        };
        let upgrade = if req.version() == http::Version::HTTP_11 { upgrade::requested(req.headers()) } else { None };
        if let Some(codings) = strip_hop_by_hop(req.headers_mut()) {
            return Box::pin(std::future::ready(Err(ProxyError::UnsupportedTransferCoding { codings })));
        }
        if req.version() != http::Version::HTTP_2 {
            // HTTP/1 goes out in origin form, whatever form it came in; a request line in
            // absolute form names the authority, which replaces any `Host` (RFC 9112, 3.2.2).
            if let Some(authority) = req.uri().authority() {
                let host = HeaderValue::from_str(authority.as_str());
                let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                match (host, Uri::try_from(path)) {
                    (Ok(host), Ok(uri)) => {
                        req.headers_mut().insert(header::HOST, host);
                        *req.uri_mut() = uri;
                    }
                    (Err(e), _) => return Box::pin(std::future::ready(Err(ProxyError::BadRequest(e.to_string())))),
                    (_, Err(e)) => return Box::pin(std::future::ready(Err(ProxyError::BadRequest(e.to_string())))),
                }
            }
            if let Some(protocol) = upgrade {
                let clients = self.0.clone();
                return Box::pin(async move {
                    let Clients { upgrade_idle_timeout, meters, drain, .. } = &*clients;
                    upgrade::forward(addr, req, protocol, CONNECT_TIMEOUT, *upgrade_idle_timeout, meters, drain).await
                });
            }
            // In the sidecar's own version too (RFC 9110, 6.2): an HTTP/1.0 request would
            // cost a connection to the upstream, another sidecar perhaps, each time.
            *req.version_mut() = http::Version::HTTP_11;
            let pool = self.0.http1.clone();
            return Box::pin(async move {
                let mut response = pool.send(addr, req).await?;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    // Not allowed without an `Upgrade` asked for (RFC 9110, 15.2.2), and a caller
                    // would take it for an interim answer and wait for the real one.
                    let reason = "it switched protocols (101) on a request that asked for no upgrade".to_owned();
                    return Err(ProxyError::UpstreamProtocol { addr, reason });
                }
                strip_response(addr, &mut response)?;
                // The same for the answer. An application's `HTTP/1.0` passed on would tell an
                // HTTP/1.1 caller, another sidecar among them, to close its connection after
                // each response (RFC 9112, 9.3); hyper answers an HTTP/1.0 caller in HTTP/1.0.
                *response.version_mut() = http::Version::HTTP_11;
                Ok(response)
            });
        }
        if let Err(e) = absolute_uri(&mut req, addr) {
            return Box::pin(std::future::ready(Err(ProxyError::BadRequest(e.to_string()))));
        }
        let pool = self.0.http2.clone();
        Box::pin(async move {
            let mut response = pool.send(addr, req).await?;
            strip_response(addr, &mut response)?;
            Ok(response)
        })
    }
}

/// Gives an HTTP/2 request the absolute URI its `:scheme`, `:authority` and `:path` are sent
/// from: the authority it came with, else its `Host`, else the endpoint's address.
fn absolute_uri(req: &mut Request, addr: std::net::SocketAddr) -> Result<(), http::Error> {
    let parts = req.uri().clone().into_parts();
    let authority = match parts.authority {
        Some(authority) => authority,
        None => match req.headers().get(header::HOST).map(|h| Authority::try_from(h.as_bytes())) {
            Some(host) => host?,
            None => Authority::try_from(addr.to_string())?,
        },
    };
    let path = parts.path_and_query.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let scheme = parts.scheme.unwrap_or(http::uri::Scheme::HTTP);
    *req.uri_mut() = Uri::builder().scheme(scheme).authority(authority).path_and_query(path).build()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().expect("value"));
        h.insert("x-private", "1".parse().expect("value"));
        h.insert("keep-alive", "timeout=5".parse().expect("value"));
        h.insert(header::TE, "trailers".parse().expect("value"));
        h.insert("x-kept", "1".parse().expect("value"));
        // Which fields a trailer will carry: end to end, so HTTP/1.1 trailers can pass.
        h.insert(header::TRAILER, "x-checksum".parse().expect("value"));
        assert_eq!(strip_hop_by_hop(&mut h), None);
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert!(h.get("x-kept").is_some() && h.get(header::TRAILER).is_some());

        // Framed by its chunks, a message's received `Content-Length` goes; alone, it stays.
        let mut both = HeaderMap::new();
        both.insert(header::CONTENT_LENGTH, "5".parse().expect("value"));
        both.insert(header::TRANSFER_ENCODING, "chunked".parse().expect("value"));
        assert_eq!(strip_hop_by_hop(&mut both), None);
        assert!(both.is_empty(), "{both:?}");
        let mut length = HeaderMap::new();
        length.insert(header::CONTENT_LENGTH, "5".parse().expect("value"));
        length.insert(header::CONNECTION, "close".parse().expect("value"));
        assert_eq!(strip_hop_by_hop(&mut length), None);
        assert_eq!(length.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()), Some(&b"5"[..]));

        // Only `chunked` is decoded; any other coding is named, whichever field carries it.
        let codings = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, v.parse().expect("value"));
            }
            strip_hop_by_hop(&mut h)
        };
        assert_eq!(codings(&[]), None);
        assert_eq!(codings(&["chunked"]), None);
        assert_eq!(codings(&["Chunked "]), None);
        assert_eq!(codings(&["gzip, chunked"]).as_deref(), Some("gzip, chunked"));
        assert_eq!(codings(&["gzip", "chunked"]).as_deref(), Some("gzip, chunked"));
        assert_eq!(codings(&["chunked", "identity"]).as_deref(), Some("chunked, identity"));
        assert_eq!(codings(&["chunked", "chunked"]).as_deref(), Some("chunked, chunked"));
        assert_eq!(codings(&["chunked,"]), None);

        // Any one of them takes the full path; a message with none is left as it is.
        for name in ["upgrade", "proxy-connection", "te"] {
            let mut h = HeaderMap::new();
            h.insert(name, "x".parse().expect("value"));
            h.insert(header::HOST, "reviews".parse().expect("value"));
            assert_eq!(strip_hop_by_hop(&mut h), None);
            assert_eq!(h.keys().collect::<Vec<_>>(), [header::HOST], "{name}");
        }
    }
}

#[cfg(test)]
mod authority_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper_util::rt::TokioExecutor;

    use super::*;
    use crate::{body, stack::testing};

    /// An upstream (HTTP/1.1 and HTTP/2) answering with what it saw: the request target,
    /// the URI's authority and every `Host` header. It counts the connections it accepted.
    async fn echo_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        testing::upstream(|stream| {
            let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let hosts: Vec<_> = req.headers().get_all(header::HOST).iter().map(|v| v.to_str().unwrap_or("?")).collect();
                let authority = req.uri().authority().map_or("-", Authority::as_str);
                let seen = format!("{} {authority} {hosts:?}", req.uri().path());
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(seen))))
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .into_owned(),
            );
        })
        .await
    }

    async fn seen(forward: &mut Forward, addr: std::net::SocketAddr, version: http::Version, uri: &str, host: Option<&str>) -> String {
        let mut req = http::Request::get(uri).version(version);
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        let mut req = req.body(body::full("")).expect("request");
        req.extensions_mut().insert(Upstream(addr));
        let response = forward.call(req).await.expect("forwarded");
        String::from_utf8(response.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn upstreams_see_the_authority_the_caller_addressed() {
        use http::Version;
        let (addr, accepted) = echo_upstream().await;
        let mut forward = Forward::default();
        for (version, uri, host, expected) in [
            // HTTP/1.1: the request line's authority replaces `Host`.
            (Version::HTTP_11, "http://reviews.shop:9080/x", Some("other"), r#"/x - ["reviews.shop:9080"]"#),
            (Version::HTTP_11, "/x", Some("reviews.shop"), r#"/x - ["reviews.shop"]"#),
            // HTTP/1.0 goes on as HTTP/1.1, so its connection stays open for the next.
            (Version::HTTP_10, "/x", Some("reviews.shop"), r#"/x - ["reviews.shop"]"#),
            (Version::HTTP_10, "/y", Some("reviews.shop"), r#"/y - ["reviews.shop"]"#),
            // HTTP/2: `:authority` as the caller sent it, or from `Host`.
            (Version::HTTP_2, "http://reviews.shop:9080/x", None, "/x reviews.shop:9080 []"),
            (Version::HTTP_2, "http://reviews.shop/x", Some("reviews.shop"), r#"/x reviews.shop ["reviews.shop"]"#),
            (Version::HTTP_2, "/x", Some("catalog:81"), r#"/x catalog:81 ["catalog:81"]"#),
        ] {
            assert_eq!(seen(&mut forward, addr, version, uri, host).await, expected, "{version:?} {uri} {host:?}");
        }
        // One HTTP/1.1 connection for all four, then one HTTP/2 connection for all three.
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream (HTTP/1.1 and HTTP/2) that reads the whole request body, then answers
    /// with its length.
    async fn reading_upstream() -> std::net::SocketAddr {
        let (addr, _) = testing::upstream(|stream| {
            let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let read = req.into_body().collect().await.map(|b| b.to_bytes().len().to_string()).unwrap_or_else(|e| e.to_string());
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(read))))
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .into_owned(),
            );
        })
        .await;
        addr
    }

    /// A caller's body that sends four bytes, then fails with its error.
    struct BrokenBody {
        sent: bool,
        error: Option<crate::error::BoxError>,
    }

    impl http_body::Body for BrokenBody {
        type Data = bytes::Bytes;
        type Error = crate::error::BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, crate::error::BoxError>>> {
            if !std::mem::replace(&mut self.sent, true) {
                return Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"half")))));
            }
            Poll::Ready(self.error.take().map(Err))
        }
    }

    #[tokio::test]
    async fn a_request_body_the_caller_breaks_is_the_callers_failure() {
        use std::io::{Error, ErrorKind};
        use http::Version;
        let addr = reading_upstream().await;
        let mut forward = Forward::default();
        // What the caller's side reports: hyper's HTTP/1.1 decoder, an invalid chunk
        // (`InvalidInput`) or the connection closed mid-body (`UnexpectedEof`); its HTTP/2
        // streams, a reset. Over HTTP/1.1 the upstream side tells them apart; over HTTP/2 only
        // the reset's reason is left, and an error that was not a reset counts as the
        // caller having gone.
        type Caller = fn() -> crate::error::BoxError;
        let cases: [(Version, Caller, bool); 6] = [
            (Version::HTTP_11, || Error::from(ErrorKind::InvalidInput).into(), true),
            (Version::HTTP_11, || Error::from(ErrorKind::UnexpectedEof).into(), false),
            (Version::HTTP_2, || Error::from(ErrorKind::InvalidInput).into(), false),
            (Version::HTTP_2, || Error::from(ErrorKind::UnexpectedEof).into(), false),
            (Version::HTTP_2, || h2::Error::from(h2::Reason::CANCEL).into(), false),
            (Version::HTTP_2, || h2::Error::from(h2::Reason::PROTOCOL_ERROR).into(), true),
        ];
        for (version, error, malformed) in cases {
            let broken = BrokenBody { sent: false, error: Some(error()) };
            let mut req = http::Request::post("http://reviews/x").version(version).body(body::boxed(broken)).expect("request");
            req.extensions_mut().insert(Upstream(addr));
            match forward.call(req).await {
                Err(ProxyError::RequestBody { malformed: m, reason }) => assert_eq!(m, malformed, "{version:?}: {reason}"),
                other => panic!("{version:?}: {:?}", other.map(|r| r.status())),
            }
        }
        // The upstream connections are still fine for the next request.
        let mut whole = http::Request::post("http://reviews/x").body(body::full("whole")).expect("request");
        whole.extensions_mut().insert(Upstream(addr));
        let response = forward.call(whole).await.expect("forwarded");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "5");
    }

    /// An upstream that reads a request's head and answers `reply`, then closes.
    async fn raw_upstream(reply: &'static [u8]) -> std::net::SocketAddr {
        let (addr, _) = testing::upstream(move |mut stream| {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(reply).await;
            });
        })
        .await;
        addr
    }

    #[tokio::test]
    async fn an_answer_that_breaks_http_is_the_upstreams_protocol_error_and_a_cut_one_its_reset() {
        use http::Version;
        let mut forward = Forward::default();
        // An HTTP/1.1 application answering an HTTP/2 request (its preface) with a 400 breaks
        // HTTP/2, as does an unreadable status line HTTP/1.1; a connection closed before any
        // answer is a reset.
        let http1_only = raw_upstream(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        let garbage = raw_upstream(b"HTTP/1.1 abc\r\n\r\n").await;
        let silent = raw_upstream(b"").await;
        // A body still gzip-coded under its chunks would reach the caller unlabelled.
        let gzipped = raw_upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").await;
        // A switch of protocols no one asked for: a caller would wait for the real answer.
        let switched = raw_upstream(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").await;
        for (addr, version, protocol_error) in [
            (http1_only, Version::HTTP_2, true),
            (garbage, Version::HTTP_11, true),
            (gzipped, Version::HTTP_11, true),
            (switched, Version::HTTP_11, true),
            (silent, Version::HTTP_11, false),
        ] {
            let mut req = http::Request::get("http://reviews/x").version(version).body(body::full("")).expect("request");
            req.extensions_mut().insert(Upstream(addr));
            match forward.call(req).await {
                Err(ProxyError::UpstreamProtocol { reason, .. }) if protocol_error => {
                    // The causes are named, not only hyper's "http2 error".
                    assert_ne!(reason, "http2 error", "{version:?}");
                }
                Err(ProxyError::UpstreamReset { .. }) if !protocol_error => {}
                other => panic!("{version:?} {protocol_error}: {:?}", other.map(|r| r.status())),
            }
        }
    }

    #[tokio::test]
    async fn an_http1_0_answer_goes_on_in_the_sidecars_own_version() {
        let addr = raw_upstream(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let mut req = http::Request::get("http://reviews/x").body(body::full("")).expect("request");
        req.extensions_mut().insert(Upstream(addr));
        let response = Forward::default().call(req).await.expect("forwarded");
        assert_eq!(response.version(), http::Version::HTTP_11);
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok");
    }

    #[tokio::test]
    async fn an_http2_request_without_an_authority_names_the_endpoint() {
        let (addr, _) = echo_upstream().await;
        let seen = seen(&mut Forward::default(), addr, http::Version::HTTP_2, "/x", None).await;
        assert_eq!(seen, format!("/x {addr} []"));
    }
}
