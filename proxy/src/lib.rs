//! meshlens-proxy: the sidecar that sits beside every workload.
//!
//! A sidecar has two sides. The **inbound** side receives requests from other sidecars
//! and forwards them to the local application; the **outbound** side receives the
//! application's requests for other services, resolves the destination service, picks
//! one of its endpoints by weight, and forwards the request to that endpoint's inbound side.
//!
//! Each side is a stack of [`tower`] layers assembled in one place ([`inbound`],
//! [`outbound`]), so routing, balancing and resilience layers slot in without rewriting
//! the request path. The outermost layer observes: for every request it records a span, an
//! access-log record and metrics ([`telemetry`]), which are exported with OTLP to the
//! collector by background tasks that never block or slow the request.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod classify;
pub mod cli;
pub mod config;
pub mod connection;
pub mod describe;
pub mod drain;
pub mod error;
pub mod grpc_messages;
pub mod http_route;
pub mod identity;
pub mod inbound;
pub mod log_level;
pub mod outbound;
pub mod replay;
pub mod server;
pub mod sidecar;
pub mod stack;
pub mod stream_idle;
pub mod telemetry;
pub mod trace_context;

pub use config::ProxyConfig;
pub use error::ProxyError;
pub use identity::WorkloadIdentity;
pub use sidecar::{Sidecar, SidecarAddrs};
