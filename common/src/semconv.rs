//! Attribute names of the mesh, beside OpenTelemetry's own semantic conventions.
//!
//! A workload is described by four attributes under a prefix:
//! `<prefix>.namespace`, `<prefix>.service`, `<prefix>.workload`, `<prefix>.version`,
//! with [`SOURCE`] for the caller and [`DESTINATION`] for the callee.

/// Prefix of the calling workload's attributes.
pub const SOURCE: &str = "meshlens.source";
/// Prefix of the called workload's attributes.
pub const DESTINATION: &str = "meshlens.destination";
/// `inbound` (SERVER span) or `outbound` (CLIENT span): which sidecar side recorded it.
pub const DIRECTION: &str = "meshlens.direction";
/// `http` or `grpc`.
pub const PROTOCOL: &str = "meshlens.protocol";
/// Envoy-style response flags (`-` when none).
pub const RESPONSE_FLAGS: &str = "meshlens.response_flags";
/// `success` or `failure`, the sidecar classifier's verdict.
pub const CLASSIFICATION: &str = "meshlens.classification";
/// The address the sidecar forwarded to.
pub const UPSTREAM_ADDRESS: &str = "meshlens.upstream.address";
/// The request's `x-request-id`.
pub const REQUEST_ID: &str = "meshlens.request_id";
/// Access-log attribute: the exchange's duration in nanoseconds.
pub const DURATION_NS: &str = "meshlens.duration_ns";
/// `event.name` of a sidecar's access-log record.
pub const ACCESS_LOG_EVENT: &str = "meshlens.access_log";
/// Resource attribute: the workload name.
pub const WORKLOAD: &str = "meshlens.workload";

/// The name of one part of a workload's attributes: `field(SOURCE, "service")`.
pub fn field(prefix: &str, part: &str) -> String {
    format!("{prefix}.{part}")
}
