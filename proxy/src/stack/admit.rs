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
//!
//! `Max-Forwards` on `TRACE` and `OPTIONS` is kept as RFC 9110 (7.6.2) asks of an
//! intermediary: a request that arrives with `0` is answered here, as its final recipient
//! (`OPTIONS` with an empty 200, `TRACE` with the request as received, credentials left
//! out, as `message/http`), and one with more is forwarded with one less. So a `TRACE`
//! with `Max-Forwards: n` shows what the hop after `n` others received.

use std::task::{Context, Poll};

use http::{
    HeaderMap, HeaderValue, Method, Version,
    header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, MAX_FORWARDS, PROXY_AUTHORIZATION},
    uri::Authority,
};
use tower::{Layer, Service};

use crate::error::ProxyError;

use super::{BoxFuture, Request, Response, plain_host_port};

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
    S: Service<Request, Response = Response, Error = ProxyError, Future = BoxFuture<Result<Response, ProxyError>>>,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Some(why) = refusal(&req) {
            return Box::pin(std::future::ready(Err(ProxyError::BadRequest(why.into()))));
        }
        if req.version() == Version::HTTP_2 {
            let size = header_list_size(&req);
            if size > self.max_header_list {
                return Box::pin(std::future::ready(Err(ProxyError::HeadersTooLarge { size, limit: self.max_header_list })));
            }
        }
        if let Some(answer) = last_hop(&mut req) {
            return Box::pin(std::future::ready(Ok(answer)));
        }
        self.inner.call(req)
    }
}

/// Keeps `Max-Forwards` on a `TRACE` or `OPTIONS` request: the answer when it arrived with
/// `0`, else counts this hop (RFC 9110, 7.6.2). A value that is not one decimal number is
/// left as it is.
fn last_hop(req: &mut Request) -> Option<Response> {
    if req.method() != Method::TRACE && req.method() != Method::OPTIONS {
        return None;
    }
    let mut values = req.headers().get_all(MAX_FORWARDS).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Past u64's range the count is as good as endless.
    let left = digits.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
    if left > 0 {
        req.headers_mut().insert(MAX_FORWARDS, HeaderValue::from(left - 1));
        return None;
    }
    if req.method() == Method::OPTIONS {
        return Some(Response::new(crate::body::full("")));
    }
    let mut answer = Response::new(crate::body::full(reflection(req)));
    answer.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("message/http"));
    Some(answer)
}

/// A `TRACE` request's head as this hop received it (RFC 9110, 9.3.8), without the fields
/// that carry credentials.
fn reflection(req: &Request) -> Vec<u8> {
    let mut text = Vec::with_capacity(256);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let version = crate::telemetry::protocol_version(req.version());
    text.extend_from_slice(format!("TRACE {target} HTTP/{version}\r\n").as_bytes());
    if let (None, Some(authority)) = (req.headers().get(HOST), req.uri().authority()) {
        text.extend_from_slice(format!("host: {authority}\r\n").as_bytes());
    }
    for (name, value) in req.headers() {
        if name == COOKIE || name == AUTHORIZATION || name == PROXY_AUTHORIZATION {
            continue;
        }
        text.extend_from_slice(name.as_str().as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(value.as_bytes());
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b"\r\n");
    text
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

    #[tokio::test]
    async fn max_forwards_on_trace_and_options_is_counted_and_zero_is_answered_here() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        // The inner service says which Max-Forwards it was given.
        let inner = tower::service_fn(|req: Request| async move {
            let seen = req.headers().get(MAX_FORWARDS).cloned().unwrap_or(HeaderValue::from_static("none"));
            let mut answer = http::Response::new(crate::body::full("forwarded"));
            answer.headers_mut().insert("seen", seen);
            Ok::<_, ProxyError>(answer)
        });
        let send = |method: &str, max_forwards: &[&str]| {
            let mut req = request(method, Version::HTTP_11, "/items?x=1", &["reviews"]).map(|()| crate::body::full(""));
            for value in max_forwards {
                req.headers_mut().append(MAX_FORWARDS, HeaderValue::from_str(value).expect("value"));
            }
            req.headers_mut().insert(COOKIE, HeaderValue::from_static("session=secret"));
            req.headers_mut().insert("x-hop", HeaderValue::from_static("1"));
            AdmitLayer::new(1 << 16).layer(tower::util::BoxCloneService::new(inner)).oneshot(req)
        };
        let seen = |response: &Response| response.headers().get("seen").map(|v| v.to_str().unwrap_or("?").to_owned());

        for (method, given, forwarded) in [
            ("TRACE", &["3"][..], "2"),
            ("OPTIONS", &["1"][..], "0"),
            ("OPTIONS", &["99999999999999999999999"][..], "18446744073709551614"),
            // Not a number, more than one, or another method: passed on as they came.
            ("TRACE", &["x"][..], "x"),
            ("TRACE", &["-1"][..], "-1"),
            ("GET", &["0"][..], "0"),
            ("POST", &["2"][..], "2"),
            ("TRACE", &[][..], "none"),
        ] {
            let response = send(method, given).await.expect("response");
            assert_eq!(seen(&response).as_deref(), Some(forwarded), "{method} {given:?}");
        }
        let twice = send("TRACE", &["0", "0"]).await.expect("response");
        assert!(seen(&twice).is_some(), "two Max-Forwards fields are not one count: forwarded");

        // Zero: this hop is the final recipient.
        let options = send("OPTIONS", &["0"]).await.expect("response");
        assert_eq!((options.status(), seen(&options)), (http::StatusCode::OK, None));
        assert!(options.into_body().collect().await.expect("body").to_bytes().is_empty());
        let trace = send("TRACE", &["0"]).await.expect("response");
        assert_eq!((trace.status(), seen(&trace)), (http::StatusCode::OK, None));
        assert_eq!(trace.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()), Some(&b"message/http"[..]));
        let text = String::from_utf8(trace.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("text");
        assert!(text.starts_with("TRACE /items?x=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("host: reviews\r\n") && text.contains("x-hop: 1\r\n") && text.contains("max-forwards: 0\r\n"), "{text}");
        assert!(!text.contains("secret") && text.ends_with("\r\n\r\n"), "credentials are not reflected: {text}");

        // HTTP/2: the version by its name, the authority as the host.
        let mut h2 = request("TRACE", Version::HTTP_2, "http://reviews/items", &[]).map(|()| crate::body::full(""));
        h2.headers_mut().insert(MAX_FORWARDS, HeaderValue::from_static("0"));
        let answer = AdmitLayer::new(1 << 16).layer(tower::util::BoxCloneService::new(inner)).oneshot(h2).await.expect("response");
        let text = String::from_utf8(answer.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("text");
        assert!(text.starts_with("TRACE /items HTTP/2\r\nhost: reviews\r\nmax-forwards: 0\r\n"), "{text}");
    }
}
