//! Refuses requests whose target is ambiguous or that the sidecar cannot carry, before they
//! are routed or forwarded: 400 with response flag `DPE`, as nginx and Envoy answer them.
//!
//! - more than one `Host` header, or one that is not a host and optional port (RFC 9112,
//!   3.2: a server MUST reject both, or the sidecar and the application could read
//!   different targets from one request);
//! - an HTTP/1.1 request with neither `Host` nor an absolute-form target (the same rule);
//! - an HTTP/2 request whose `Host` names another authority than its `:authority` (RFC
//!   9113, 8.3.1);
//! - a request target with user information (`http://user@host/`, RFC 9110, 4.2.4);
//! - `CONNECT`: the sidecar forwards requests, it does not open tunnels.
//!
//! And an HTTP/2 request whose header list is over `[connections] max_request_headers_kb`
//! gets 431 (flag `DPE`). The connection takes header lists up to twice that, so that such a
//! request reaches this layer, under the observing one, and is recorded as any other: `h2`
//! answers a larger one 431 itself, and nothing records that. HTTP/1.1 heads over the limit
//! are refused and recorded where they are read (`crate::telemetry::unread`).

use std::task::{Context, Poll};

use http::{HeaderMap, Method, Version, header::HOST, uri::Authority};
use tower::{Layer, Service};

use crate::error::ProxyError;

use super::{BoxFuture, Request, plain_host_port};

/// Adds [`Admit`].
#[derive(Debug, Clone, Copy)]
pub struct AdmitLayer {
    max_header_list: usize,
}

impl AdmitLayer {
    /// Refuses what [`refusal`] refuses, and HTTP/2 header lists over `max_header_list` bytes.
    pub fn new(max_header_list: usize) -> Self {
        Self { max_header_list }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit { inner, max_header_list: self.max_header_list }
    }
}

/// Passes on the requests [`refusal`] finds nothing wrong with, and whose header list fits.
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    max_header_list: usize,
}

impl<S> Service<Request> for Admit<S>
where
    S: Service<Request, Error = ProxyError, Future = BoxFuture<Result<<S as Service<Request>>::Response, ProxyError>>>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(why) = refusal(&req) {
            return Box::pin(std::future::ready(Err(ProxyError::BadRequest(why.into()))));
        }
        if req.version() == Version::HTTP_2 {
            let size = header_list_size(&req);
            if size > self.max_header_list {
                return Box::pin(std::future::ready(Err(ProxyError::HeadersTooLarge { size, limit: self.max_header_list })));
            }
        }
        self.inner.call(req)
    }
}

/// The size of an HTTP/2 request's header list as `SETTINGS_MAX_HEADER_LIST_SIZE` counts it
/// (RFC 9113, 6.5.2): each field's name and value and 32 bytes, pseudo-header fields included.
fn header_list_size<B>(req: &http::Request<B>) -> usize {
    let field = |name: &str, value: usize| name.len() + value + 32;
    let uri = req.uri();
    let pseudo = field(":method", req.method().as_str().len())
        + uri.scheme_str().map_or(0, |scheme| field(":scheme", scheme.len()))
        + uri.authority().map_or(0, |authority| field(":authority", authority.as_str().len()))
        + field(":path", uri.path_and_query().map_or(1, |path| path.as_str().len()));
    pseudo + req.headers().iter().map(|(name, value)| field(name.as_str(), value.len())).sum::<usize>()
}

/// Why `req` cannot be forwarded, if it cannot.
pub fn refusal<B>(req: &http::Request<B>) -> Option<&'static str> {
    if req.method() == Method::CONNECT {
        return Some("CONNECT is not supported: the sidecar forwards HTTP requests, it does not open tunnels");
    }
    if req.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
        // RFC 9110, 4.2.4: user information in an http URI is to be treated as an error.
        return Some("the request target carries user information");
    }
    let host = match single_host(req.headers()) {
        Ok(host) => host,
        Err(why) => return Some(why),
    };
    match (req.version(), host, req.uri().authority()) {
        (Version::HTTP_11, None, None) => Some("an HTTP/1.1 request needs a Host header"),
        (Version::HTTP_2, Some(host), Some(authority)) if !host.eq_ignore_ascii_case(authority.as_str()) => {
            Some("the Host header names another authority than :authority")
        }
        _ => None,
    }
}

/// The one `Host` header, if any, when it is a valid host and optional port.
fn single_host(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut hosts = headers.get_all(HOST).iter();
    let Some(value) = hosts.next() else { return Ok(None) };
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let invalid = "the Host header is not a host and optional port";
    let value = value.to_str().map_err(|_| invalid)?;
    if plain_host_port(value).is_some() {
        return Ok(Some(value));
    }
    let authority: Authority = value.parse().map_err(|_| invalid)?;
    // What follows the host: nothing, `:`, or a decimal port that fits 16 bits.
    let port = value.get(authority.host().len()..).and_then(|rest| rest.strip_prefix(':'));
    let port_ok = port.is_none_or(|p| p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()));
    let well_formed = !value.contains('@') && !authority.host().is_empty() && port_ok;
    well_formed.then_some(Some(value)).ok_or(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, version: Version, uri: &str, hosts: &[&str]) -> http::Request<()> {
        let mut req = http::Request::builder().method(method).version(version).uri(uri);
        for host in hosts {
            req = req.header(HOST, *host);
        }
        req.body(()).expect("request")
    }

    #[test]
    fn ambiguous_targets_are_refused() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        let cases: [(&str, Version, &str, &[&str], bool); 18] = [
            ("GET", HTTP_11, "/", &["reviews"], true),
            ("GET", HTTP_11, "/", &["Reviews.shop:9080"], true),
            ("GET", HTTP_11, "/", &["[::1]:8080"], true),
            ("GET", HTTP_11, "http://reviews/", &[], true),
            ("GET", HTTP_10, "/", &[], true),
            ("GET", HTTP_2, "http://reviews/", &[], true),
            ("GET", HTTP_2, "http://reviews/", &["REVIEWS"], true),
            ("GET", HTTP_11, "/", &[], false),
            ("GET", HTTP_11, "/", &["reviews", "ratings"], false),
            ("GET", HTTP_11, "/", &["reviews", "reviews"], false),
            ("GET", HTTP_11, "/", &["up stream"], false),
            ("GET", HTTP_11, "/", &["[::1"], false),
            ("GET", HTTP_11, "/", &["reviews:99999"], false),
            ("GET", HTTP_11, "/", &["user@reviews"], false),
            ("GET", HTTP_11, "/", &["reviews:+80"], false),
            ("GET", HTTP_11, "http://user:secret@reviews/", &["reviews"], false),
            ("GET", HTTP_2, "http://reviews/", &["ratings"], false),
            ("CONNECT", HTTP_11, "reviews:443", &["reviews:443"], false),
        ];
        for (method, version, uri, hosts, admitted) in cases {
            let req = request(method, version, uri, hosts);
            assert_eq!(refusal(&req).is_none(), admitted, "{method} {version:?} {uri} {hosts:?}: {:?}", refusal(&req));
        }
    }

    #[tokio::test]
    async fn http2_header_lists_over_the_limit_get_431_as_the_connection_counts_them() {
        use tower::ServiceExt;
        // :method GET (42), :scheme http (43), :authority reviews (49), :path /a (39), and
        // `cookie: <n bytes>` (38 + n).
        let sized = |n: usize, version: Version| {
            let mut req = request("GET", version, "http://reviews/a", &[]).map(|()| crate::body::full(""));
            req.headers_mut().insert("cookie", http::HeaderValue::from_str(&"c".repeat(n)).expect("value"));
            req
        };
        assert_eq!(header_list_size(&sized(1000, Version::HTTP_2)), 42 + 43 + 49 + 39 + 38 + 1000);
        let limit = 42 + 43 + 49 + 39 + 38 + 1000;
        let inner = tower::service_fn(|_: Request| async { Ok::<_, ProxyError>(http::Response::new(crate::body::full("ok"))) });
        let admit = |req| AdmitLayer::new(limit).layer(tower::util::BoxCloneService::new(inner)).oneshot(req);
        assert!(admit(sized(1000, Version::HTTP_2)).await.is_ok(), "at the limit");
        let refused = admit(sized(1001, Version::HTTP_2)).await.expect_err("over it");
        assert!(matches!(refused, ProxyError::HeadersTooLarge { size, limit: l } if size == limit + 1 && l == limit), "{refused}");
        assert!(admit(sized(1001, Version::HTTP_11)).await.is_ok(), "HTTP/1.1 heads are bounded where they are read");
    }
}
