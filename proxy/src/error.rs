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
    #[error("upstream {addr} unreachable: {source}")]
    UpstreamConnect {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What the client reported.
        source: BoxError,
    },
    /// The upstream connection failed after the request was sent.
    #[error("upstream {addr} failed: {source}")]
    UpstreamReset {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What the client reported.
        source: BoxError,
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
    /// The request could not be rewritten for the upstream (invalid URI parts).
    #[error("request cannot be forwarded: {0}")]
    BadRequest(String),
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
