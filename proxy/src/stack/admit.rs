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

use std::task::{Context, Poll};

use http::{HeaderMap, Method, Version, header::HOST, uri::Authority};
use tower::{Layer, Service};

use crate::error::ProxyError;

use super::{BoxFuture, Request, plain_host_port};

/// Adds [`Admit`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitLayer;

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit { inner }
    }
}

/// Passes on the requests [`refusal`] finds nothing wrong with.
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
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
        match refusal(&req) {
            None => self.inner.call(req),
            Some(why) => Box::pin(std::future::ready(Err(ProxyError::BadRequest(why.into())))),
        }
    }
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
}
