//! The layers a request passes through, and the types they share.
//!
//! Each layer is one behaviour in its own module; [`crate::inbound`] and
//! [`crate::outbound`] stack them. Layers talk to each other through request
//! extensions: [`route`] puts the resolved service there, [`split`] the chosen
//! [`Upstream`], [`forward`] reads it. The [`Resolution`] lets [`observe`] learn which
//! route and endpoint were chosen, and what [`retry`] and [`outlier`] did, even when the
//! request then fails.

pub mod admit;
pub mod errors;
pub mod forward;
pub mod h2_pool;
pub mod observe;
pub mod outlier;
pub mod pool;
pub mod resend;
pub mod retry;
pub mod route;
pub mod split;
pub mod timeout;
pub mod upgrade;

use std::{
    borrow::Cow,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::{
    body::BoxBody,
    config::Endpoint,
    telemetry::{RequestRecord, SpanEvent},
};

/// A request on the proxy's path.
pub type Request = http::Request<BoxBody>;
/// A response on the proxy's path.
pub type Response = http::Response<BoxBody>;
/// A boxed, sendable future: what every layer's `call` returns. A layer with nothing to add
/// to a request (no timeout, no retry policy, no outlier detection configured, or one that
/// only reads and tags the request) returns its inner layer's future as is, so a request
/// pays one allocation per layer that does work, not one per layer.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where [`forward::Forward`] sends the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream(pub SocketAddr);

/// The connection a request arrived on (a request extension): its two ends and its ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionAddrs {
    /// The downstream peer.
    pub peer: SocketAddr,
    /// The sidecar's own end.
    pub local: SocketAddr,
    /// The connection's number among those the process accepted, from 1 (Envoy's
    /// `%CONNECTION_ID%`): every exchange on one connection has the same.
    pub id: u64,
}

impl ConnectionAddrs {
    /// A newly accepted connection's, numbered after every one the process opened before.
    pub fn accepted(peer: SocketAddr, local: SocketAddr) -> Self {
        Self { peer, local, id: next_connection_id() }
    }
}

/// The next connection number: the connections the process accepts and those it opens
/// upstream are numbered in one sequence, from 1, as Envoy numbers its connections.
fn next_connection_id() -> u64 {
    static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// An upstream connection as records name it: the sidecar's address on it, and its number
/// (Envoy's `%UPSTREAM_LOCAL_ADDRESS%` and `%UPSTREAM_CONNECTION_ID%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConnection {
    /// The sidecar's own address on it.
    pub local: SocketAddr,
    /// Its number ([`ConnectionAddrs::id`]'s sequence).
    pub id: u64,
}

impl UpstreamConnection {
    /// A connection just opened from `local`, numbered.
    pub fn opened(local: SocketAddr) -> Self {
        Self { local, id: next_connection_id() }
    }
}

/// What inner layers decided about a request, read back by the observe layer (even when
/// the request then fails): the route template (route layer), the endpoint (split layer)
/// and the retries (retry layer).
#[derive(Debug, Clone, Default)]
pub struct Resolution(Arc<Resolved>);

#[derive(Debug, Default)]
struct Resolved {
    route: OnceLock<Arc<str>>,
    endpoint: OnceLock<Endpoint>,
    answer_limit: OnceLock<Duration>,
    upstream: OnceLock<UpstreamConnection>,
    notes: Mutex<Vec<Note>>,
}

/// Something an inner layer did that the request's span should show as an event:
/// a `retry` (what failed), an `ejection` (which endpoint, for how long).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// When.
    pub at: Instant,
    /// The span event's name.
    pub name: &'static str,
    /// Details.
    pub message: String,
}

impl Resolution {
    /// Records the matched route template (the first wins).
    pub fn set_route(&self, route: Arc<str>) {
        let _ = self.0.route.set(route);
    }
    /// The matched route template, if any.
    pub fn route(&self) -> Option<&Arc<str>> {
        self.0.route.get()
    }
    /// Records the chosen endpoint (the first choice wins).
    pub fn set_endpoint(&self, endpoint: Endpoint) {
        let _ = self.0.endpoint.set(endpoint);
    }
    /// The chosen endpoint, if any.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.0.endpoint.get()
    }
    /// Records the upstream connection that answered (the first wins).
    pub fn set_upstream_connection(&self, connection: UpstreamConnection) {
        let _ = self.0.upstream.set(connection);
    }
    /// The upstream connection that answered, if one did.
    pub fn upstream_connection(&self) -> Option<UpstreamConnection> {
        self.0.upstream.get().copied()
    }
    /// Records the service timeout that bounds the wait for the response headers.
    pub fn set_answer_limit(&self, limit: Duration) {
        let _ = self.0.answer_limit.set(limit);
    }
    /// The service timeout that bounds the wait for the response headers, if any.
    pub fn answer_limit(&self) -> Option<Duration> {
        self.0.answer_limit.get().copied()
    }
    /// Records a note for the request's span.
    pub fn note(&self, name: &'static str, message: String) {
        if let Ok(mut notes) = self.0.notes.lock() {
            notes.push(Note { at: Instant::now(), name, message });
        }
    }
    /// The notes, oldest first.
    pub fn notes(&self) -> Vec<Note> {
        self.0.notes.lock().map(|r| r.clone()).unwrap_or_default()
    }
    /// Puts the notes on `record` as span events timed from `start`, counting its retries.
    pub fn record_notes(&self, record: &mut RequestRecord, start: Instant) {
        for note in self.notes() {
            record.retries += u32::from(note.name == RETRY);
            let offset = note.at.saturating_duration_since(start);
            record.events.push(SpanEvent { offset, name: note.name, message: Some(note.message) });
        }
    }
    /// The retries made (`retry` notes).
    pub fn retries(&self) -> usize {
        self.0.notes.lock().map(|n| n.iter().filter(|n| n.name == RETRY).count()).unwrap_or(0)
    }
}

/// A copy of `req` (method, URI, version, headers and extensions) with `body`: a request
/// sent again, by the retry layer or the HTTP/1.1 pool.
pub fn copy_request<B, C>(req: &http::Request<B>, body: C) -> http::Request<C> {
    let mut copy = http::Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// The name of a retry's note and span event.
pub const RETRY: &str = "retry";
/// The name of the note and span event of a failure a retry policy covered but that was not
/// retried: the request body had outgrown what was kept of it.
pub const NOT_RETRIED: &str = "not_retried";
/// The name of an ejection's note and span event.
pub const EJECTION: &str = "ejection";
/// The name of the note and span event of a request sent again because the idle upstream
/// connection it went out on was closed under it ([`pool`]).
pub const RESENT: &str = "resent";

/// The host (lowercased) and port a request addresses: the URI's authority, else the `Host`
/// header. Borrowed from the request unless the host had to be lowercased.
pub fn request_authority<B>(req: &http::Request<B>) -> Option<(Cow<'_, str>, Option<u16>)> {
    if let Some(authority) = req.uri().authority() {
        return Some((lowercase(authority.host()), authority.port_u16()));
    }
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    if let Some((name, port)) = plain_host_port(host) {
        return Some((lowercase(name), port));
    }
    let authority: http::uri::Authority = host.parse().ok()?;
    Some((Cow::Owned(authority.host().to_ascii_lowercase()), authority.port_u16()))
}

/// [`request_authority`] as a request's record keeps it: the host as a shared string, and
/// the port.
pub fn recorded_authority<B>(req: &http::Request<B>) -> (Option<Arc<str>>, Option<u16>) {
    request_authority(req).map_or((None, None), |(host, port)| (Some(Arc::from(host)), port))
}

/// A `Host` value made of a DNS name or IPv4 address and an optional decimal port, read
/// without copying it; anything else (IPv6, user info, other characters) is `None` and
/// left to the URI parser.
fn plain_host_port(value: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port.parse().ok()?)),
        Some(_) => return None,
        None => (value, None),
    };
    let plain = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    plain.then_some((host, port))
}

fn lowercase(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(host.to_ascii_lowercase()) } else { Cow::Borrowed(host) }
}

/// Whether a request is a gRPC call.
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Upstreams for the tests of the layers that send requests.
#[cfg(test)]
pub mod testing {
    use std::{
        net::SocketAddr,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use crate::connection::{ConnectionMeter, UpstreamMeters};

    /// Listens on a loopback port and hands each connection to `serve`; counts the
    /// connections it accepted.
    pub async fn upstream(serve: impl Fn(tokio::net::TcpStream) + Send + 'static) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                serve(stream);
            }
        });
        (addr, accepted)
    }

    /// Meters for a pool's connections, with the one of `addr`.
    pub fn meters(addr: SocketAddr) -> (Arc<UpstreamMeters>, ConnectionMeter) {
        let meter = ConnectionMeter::default();
        (Arc::new(UpstreamMeters::new([(addr, meter.clone())].into(), Default::default())), meter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_uri_or_host_header() {
        let req = http::Request::get("http://Reviews:9080/x").body(()).expect("request");
        assert_eq!(request_authority(&req), Some(("reviews".into(), Some(9080))));
        let req = http::Request::get("/x").header("host", "catalog").body(()).expect("request");
        assert_eq!(request_authority(&req), Some(("catalog".into(), None)));
        let req = http::Request::get("/x").body(()).expect("request");
        assert_eq!(request_authority(&req), None);
    }

    #[test]
    fn host_headers_read_as_the_uri_parser_reads_them() {
        for host in ["catalog", "Catalog.Shop:8080", "10.0.0.7:80", "a_b:1", "[::1]:9090", "[::1]", "h:", "h:+80", "h:65536", "h:8:8", "a b", ""] {
            let req = http::Request::get("/x").header("host", host).body(()).expect("request");
            let parsed = host.parse::<http::uri::Authority>().ok().map(|a| (a.host().to_ascii_lowercase(), a.port_u16()));
            let ours = request_authority(&req).map(|(h, p)| (h.into_owned(), p));
            assert_eq!(ours, parsed, "{host:?}");
        }
        let req = http::Request::get("/x").header("host", "catalog:80").body(()).expect("request");
        assert!(matches!(request_authority(&req), Some((Cow::Borrowed("catalog"), Some(80)))));
    }
}
