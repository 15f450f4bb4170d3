//! The proxy's error type: every way a request can fail inside the sidecar.
//!
//! Errors never escape to hyper: the error layer ([`crate::stack::errors`]) turns each
//! one into an HTTP response with an Envoy-style response flag that telemetry records.

use std::net::SocketAddr;

/// A boxed error, as carried by bodies and clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the sidecar could not complete a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request named no destination service (no authority and no Host header).
    #[error("request names no destination: it has neither an authority nor a Host header")]
    NoAuthority,
    /// The destination service is not in the sidecar's service table.
    #[error("no route to service {service:?}: it is not in this sidecar's service table")]
    NoRoute {
        /// The service the request asked for.
        service: String,
    },
    /// The service exists but has no endpoint with a positive weight.
    #[error("service {service:?} has no available endpoint")]
    NoEndpoint {
        /// The service the request asked for.
        service: String,
    },
    /// The upstream could not be reached (connection refused, reset during connect, ...).
    #[error("upstream {addr} unreachable: {}", causes(.source.as_ref()))]
    UpstreamConnect {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What the client reported.
        source: BoxError,
    },
    /// The upstream connection failed after the request was sent.
    #[error("upstream {addr} failed: {}", causes(.source.as_ref()))]
    UpstreamReset {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What the client reported.
        source: BoxError,
    },
    /// The upstream answered in a way HTTP does not allow: an unreadable status line or
    /// headers over HTTP/1.1, a protocol violation over HTTP/2 (an application that speaks
    /// only HTTP/1.1 given an HTTP/2 request, say). Envoy's `UPE`.
    #[error("upstream {addr} broke the HTTP protocol: {reason}")]
    UpstreamProtocol {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What the client reported, its causes joined.
        reason: String,
    },
    /// The upstream did not answer within the service's timeout.
    #[error("upstream did not answer within {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: std::time::Duration,
    },
    /// Nothing crossed either way for the stream idle timeout before the response started.
    #[error("no response, and nothing from the caller, for {after:?} (stream idle timeout)")]
    StreamIdle {
        /// The idle timeout that expired.
        after: std::time::Duration,
    },
    /// An HTTP/2 request's header list is over `[connections] max_request_headers_kb`.
    #[error("the request's header list is {size} bytes, over the limit of {limit}")]
    HeadersTooLarge {
        /// Its size, as HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE` counts it.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request could not be rewritten for the upstream (invalid URI parts).
    #[error("request cannot be forwarded: {0}")]
    BadRequest(String),
    /// The request's body is framed by a transfer coding besides `chunked` (`gzip, chunked`,
    /// say). The sidecar decodes only `chunked`, and `Transfer-Encoding` belongs to one
    /// connection, so the body would reach the application still coded with nothing saying
    /// so: refused with 501 (RFC 9112, 6.1), as Envoy refuses it.
    #[error("transfer coding {codings:?} is not supported: the sidecar forwards plain and chunked bodies only")]
    UnsupportedTransferCoding {
        /// The `Transfer-Encoding` the request came with.
        codings: String,
    },
    /// The caller's request body failed while it was being sent upstream: it was malformed
    /// (an invalid chunk, say) or the caller went away. The caller's failure, not the
    /// upstream's: no outlier counts it and no retry repeats it.
    #[error("the request body from the caller failed: {reason}")]
    RequestBody {
        /// What went wrong, its causes joined.
        reason: String,
        /// Malformed (Envoy's `DPE`), rather than cut off by the caller (`DC`).
        malformed: bool,
    },
}

impl ProxyError {
    /// What a request that failed on its way to `addr` with `error` (hyper's client error)
    /// failed of. The sidecar's request bodies come from the caller, so when the body it was
    /// sending failed, the caller did. hyper reports that over HTTP/1.1 as its own error
    /// (`User(Body)`, the body's error as its source); over HTTP/2 it resets the stream
    /// itself, and the exchange fails with that reset: `CANCEL` when the caller cancelled
    /// its stream, `INTERNAL_ERROR` for any other failure, taken as the caller having gone,
    /// the usual case. An answer that broke HTTP ([`broke_http`]) is the upstream's protocol
    /// error. Anything else is the upstream's reset.
    pub fn upstream_send(addr: SocketAddr, error: hyper::Error) -> Self {
        use std::error::Error as _;
        let h2 = error.source().and_then(|s| s.downcast_ref::<h2::Error>());
        if let Some(reset) = h2.filter(|e| e.is_reset() && !e.is_remote() && !e.is_library()) {
            let reason = reset.reason().unwrap_or(h2::Reason::INTERNAL_ERROR);
            let malformed = ![h2::Reason::CANCEL, h2::Reason::INTERNAL_ERROR].contains(&reason);
            return Self::RequestBody { reason: format!("the sidecar reset the upstream stream ({reason})"), malformed };
        }
        let body = error.is_user().then(|| error.source()).flatten().filter(|s| s.is::<crate::body::BodyError>());
        match body {
            Some(body) => Self::RequestBody { reason: causes(body), malformed: broke_http(body) },
            None if broke_http(&error) => Self::UpstreamProtocol { addr, reason: causes(&error) },
            None => Self::UpstreamReset { addr, source: error.into() },
        }
    }
}

/// Whether `error` (or one of its causes) says a peer broke HTTP: hyper could not parse what
/// it sent, hyper's HTTP/1.1 body decoder found invalid data (a bad chunk), or the `h2`
/// library caught an HTTP/2 violation. A peer that went away, or reset a stream, did not.
pub fn broke_http(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        let parse = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse);
        let h2 = e.downcast_ref::<h2::Error>().is_some_and(h2::Error::is_library);
        let io = e.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
        if parse || h2 || matches!(io, Some(std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `error` and its causes, joined with `: `, each left out where the message before it
/// already ends with it.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let message = e.to_string();
        if !text.ends_with(&message) {
            text = format!("{text}: {message}");
        }
        cause = e.source();
    }
    text
}

/// Errors of starting or configuring a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("could not bind the {what} listener on {addr}")]
    Bind {
        /// Which listener (inbound, outbound, admin).
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error (for example, address already in use).
        source: std::io::Error,
    },
    /// The OTLP endpoint is not a valid URI.
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    OtlpEndpoint {
        /// The configured endpoint.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
}
