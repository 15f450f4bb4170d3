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
/// A gRPC call's request messages (sidecar records of gRPC calls).
pub const GRPC_REQUEST_MESSAGES: &str = "meshlens.grpc.request_messages";
/// A gRPC call's response messages.
pub const GRPC_RESPONSE_MESSAGES: &str = "meshlens.grpc.response_messages";
/// How many times the sidecar retried the request (on its span and access log, when > 0).
pub const RETRY_COUNT: &str = "meshlens.retry.count";
/// On the CLIENT span of one attempt of a retried request: the attempt's number, from 1.
pub const RETRY_ATTEMPT: &str = "meshlens.retry.attempt";
/// Access-log attribute: the exchange's duration in nanoseconds.
pub const DURATION_NS: &str = "meshlens.duration_ns";
/// `event.name` of a sidecar's access-log record.
pub const ACCESS_LOG_EVENT: &str = "meshlens.access_log";
/// Resource attribute: the workload name.
pub const WORKLOAD: &str = "meshlens.workload";

/// The four attribute names that describe one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadKeys {
    /// `<prefix>.namespace`.
    pub namespace: &'static str,
    /// `<prefix>.service`.
    pub service: &'static str,
    /// `<prefix>.workload`.
    pub workload: &'static str,
    /// `<prefix>.version`.
    pub version: &'static str,
}

impl WorkloadKeys {
    /// The four names: namespace, service, workload, version.
    pub const fn all(&self) -> [&'static str; 4] {
        [self.namespace, self.service, self.workload, self.version]
    }
}

/// The resource attributes naming the workload that sends telemetry (a sidecar's own).
pub const RESOURCE_KEYS: WorkloadKeys =
    WorkloadKeys { namespace: "service.namespace", service: "service.name", workload: WORKLOAD, version: "service.version" };

/// The calling workload's attribute names (written once, not formatted per request).
pub const SOURCE_KEYS: WorkloadKeys = WorkloadKeys {
    namespace: "meshlens.source.namespace",
    service: "meshlens.source.service",
    workload: "meshlens.source.workload",
    version: "meshlens.source.version",
};

/// The called workload's attribute names.
pub const DESTINATION_KEYS: WorkloadKeys = WorkloadKeys {
    namespace: "meshlens.destination.namespace",
    service: "meshlens.destination.service",
    workload: "meshlens.destination.workload",
    version: "meshlens.destination.version",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_keys_follow_their_prefix() {
        for (prefix, keys) in [(SOURCE, SOURCE_KEYS), (DESTINATION, DESTINATION_KEYS)] {
            for (key, part) in keys.all().iter().zip(["namespace", "service", "workload", "version"]) {
                assert_eq!(*key, format!("{prefix}.{part}"));
            }
        }
    }
}
