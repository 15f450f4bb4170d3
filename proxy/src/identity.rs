//! Workload identity: who a sidecar speaks for, and how the caller's identity travels.
//!
//! The outbound side stamps each request with its own identity in the
//! [`SOURCE_HEADER`]; the inbound side of the next hop reads and removes it, so both
//! sides of a hop agree on source and destination. Applications cannot spoof it: the
//! outbound side overwrites whatever the application sent.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

/// Header carrying the calling workload's identity between sidecars.
pub const SOURCE_HEADER: http::HeaderName = http::HeaderName::from_static("x-meshlens-source");

/// The identity of one workload: a version of a service in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadIdentity {
    /// Namespace, e.g. `shop`.
    pub namespace: Arc<str>,
    /// Service name, e.g. `reviews`.
    pub service: Arc<str>,
    /// Workload name, e.g. `reviews-v2`.
    pub workload: Arc<str>,
    /// Version label, e.g. `v2`.
    pub version: Arc<str>,
    /// [`Self::to_header`], built once.
    header: HeaderValue,
}

impl WorkloadIdentity {
    /// Builds an identity from its four parts.
    pub fn new(namespace: &str, service: &str, workload: &str, version: &str) -> Self {
        let text = format!("{namespace}/{service}/{workload}/{version}");
        Self {
            namespace: namespace.into(),
            service: service.into(),
            workload: workload.into(),
            version: version.into(),
            header: HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }

    /// The header value that carries this identity: `namespace/service/workload/version`.
    pub fn to_header(&self) -> HeaderValue {
        self.header.clone()
    }

    /// Parses the value written by [`Self::to_header`]; `None` if it is not four non-empty parts.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let text = value.to_str().ok()?;
        let mut parts = text.split('/');
        let (ns, svc, wl, ver) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [ns, svc, wl, ver].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(Self::new(ns, svc, wl, ver))
    }

    /// Removes the source header from `headers` and returns the identity it carried.
    pub fn take_from(headers: &mut HeaderMap) -> Option<Self> {
        headers.remove(SOURCE_HEADER).as_ref().and_then(Self::from_header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let id = WorkloadIdentity::new("shop", "reviews", "reviews-v2", "v2");
        assert_eq!(WorkloadIdentity::from_header(&id.to_header()), Some(id));
    }

    #[test]
    fn malformed_header_is_no_identity() {
        for bad in ["", "a/b/c", "a/b/c/d/e", "a//c/d"] {
            let value = HeaderValue::from_str(bad).expect("ascii");
            assert_eq!(WorkloadIdentity::from_header(&value), None, "{bad:?}");
        }
    }
}
