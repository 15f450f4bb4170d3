//! Sends the request to its [`Upstream`] and streams the response back.
//!
//! HTTP/1.1 requests go over pooled HTTP/1.1 connections ([`super::pool`]), HTTP/2 requests
//! (gRPC among them) over pooled HTTP/2 connections (prior knowledge, as between sidecars). Bodies
//! stream in both directions; hop-by-hop headers are removed. Connections to a known
//! upstream workload are metered (opened, closed, bytes) under that workload's identity.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Uri, header, uri::Authority};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower::Service;

use crate::{
    body,
    connection::{ConnectionMeter, Metered, UpstreamMeters},
    error::ProxyError,
};

use super::{BoxFuture, Request, Response, Upstream, pool::Http1Pool};

/// Connects over TCP and meters each connection by the upstream it reaches.
#[derive(Debug, Clone)]
pub struct MeteredConnector {
    inner: HttpConnector,
    meters: Arc<UpstreamMeters>,
}

type Connected = hyper_util::rt::TokioIo<Metered<tokio::net::TcpStream>>;
type ConnectError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for MeteredConnector {
    type Response = Connected;
    type Error = ConnectError;
    type Future = BoxFuture<Result<Connected, ConnectError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Authorities are `ip:port` (built from the endpoint's address); anything else is
        // counted with the unknown upstreams.
        let meter = match uri.authority().and_then(|a| a.as_str().parse().ok()) {
            Some(addr) => self.meters.of(addr),
            None => self.meters.other(),
        }
        .clone();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(hyper_util::rt::TokioIo::new(meter.meter(io.into_inner())))
        })
    }
}

/// Pooled HTTP clients, shared by both sides of a sidecar; a clone (one per request) is a
/// reference count.
#[derive(Debug, Clone)]
pub struct Forward(Arc<Clients>);

#[derive(Debug)]
struct Clients {
    http1: Http1Pool,
    http2: Client<MeteredConnector, body::BoxBody>,
    /// The URI authority of each configured upstream, built once.
    authorities: HashMap<std::net::SocketAddr, Authority>,
}

impl Default for Forward {
    fn default() -> Self {
        Self::new(HashMap::new(), None)
    }
}

impl Forward {
    /// Creates the clients; connections to the addresses in `upstreams` are counted by
    /// their meters. `app` is the local application's address, if any: the inbound side's
    /// upstream.
    pub fn new(upstreams: HashMap<std::net::SocketAddr, ConnectionMeter>, app: Option<std::net::SocketAddr>) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let authorities =
            upstreams.keys().chain(&app).filter_map(|a| Some((*a, Authority::try_from(a.to_string()).ok()?))).collect();
        let meters = Arc::new(UpstreamMeters::new(upstreams));
        let http1 = Http1Pool::new(meters.clone(), CONNECT_TIMEOUT, IDLE_TIMEOUT);
        let connector = MeteredConnector { inner, meters };
        let http2 = Client::builder(TokioExecutor::new()).http2_only(true).pool_idle_timeout(IDLE_TIMEOUT).build(connector);
        Self(Arc::new(Clients { http1, http2, authorities }))
    }

    /// The URI authority that addresses `addr`.
    fn authority(&self, addr: std::net::SocketAddr) -> Result<Authority, http::Error> {
        match self.0.authorities.get(&addr) {
            Some(authority) => Ok(authority.clone()),
            None => Ok(Authority::try_from(addr.to_string())?),
        }
    }
}

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an upstream connection is kept idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Headers that belong to one connection and must not be forwarded.
const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const KEEP_ALIVE: header::HeaderName = header::HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: header::HeaderName = header::HeaderName::from_static("proxy-connection");

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names costs less than a hashed
    // lookup for each.
    let hop_by_hop = |name: &header::HeaderName| {
        HOP_BY_HOP.contains(name) || [KEEP_ALIVE, PROXY_CONNECTION, header::TE].contains(name)
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| name.trim().parse().ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    // `te: trailers` is the one `te` value that must pass (gRPC needs it).
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
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
        strip_hop_by_hop(req.headers_mut());
        if req.version() != http::Version::HTTP_2 {
            // HTTP/1 goes out in origin form, whatever form it came in.
            if req.uri().authority().is_some() {
                let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                match Uri::try_from(path) {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(e) => return Box::pin(std::future::ready(Err(ProxyError::BadRequest(e.to_string())))),
                }
            }
            let pool = self.0.http1.clone();
            return Box::pin(async move {
                let mut response = pool.send(addr, req).await?;
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            });
        }
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let uri = match self.authority(addr).and_then(|a| Uri::builder().scheme("http").authority(a).path_and_query(path).build()) {
            Ok(uri) => uri,
            Err(e) => return Box::pin(std::future::ready(Err(ProxyError::BadRequest(e.to_string())))),
        };
        *req.uri_mut() = uri;
        let fut = self.0.http2.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(response) => {
                    let mut response = response.map(body::boxed);
                    strip_hop_by_hop(response.headers_mut());
                    Ok(response)
                }
                Err(e) if e.is_connect() => Err(ProxyError::UpstreamConnect { addr, source: e.into() }),
                Err(e) => Err(ProxyError::UpstreamReset { addr, source: e.into() }),
            }
        })
    }
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
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert!(h.get("x-kept").is_some());

        // Any one of them takes the full path; a message with none is left as it is.
        for name in ["upgrade", "proxy-connection", "te"] {
            let mut h = HeaderMap::new();
            h.insert(name, "x".parse().expect("value"));
            h.insert(header::HOST, "reviews".parse().expect("value"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.keys().collect::<Vec<_>>(), [header::HOST], "{name}");
        }
    }
}
