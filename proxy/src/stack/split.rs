//! Picks one endpoint of the resolved service, at random in proportion to the weights,
//! among those the [`OutlierDetector`] has not ejected.
//!
//! This is how a canary split works: `reviews` with v1/v2/v3 weighted 80/15/5 sends
//! each request to one version with those odds. Balancing by load replaces this layer's
//! choice later without changing its neighbours.

use std::{sync::Arc, task::{Context, Poll}, time::Instant};

use tower::{Layer, Service};

use crate::{
    config::{Endpoint, ServiceConfig},
    error::ProxyError,
};

use super::{Request, Resolution, Upstream, outlier::OutlierDetector};

/// Adds [`Split`].
#[derive(Debug, Clone, Default)]
pub struct SplitLayer {
    detector: Arc<OutlierDetector>,
}

impl SplitLayer {
    /// Skips the endpoints `detector` has ejected.
    pub fn new(detector: Arc<OutlierDetector>) -> Self {
        Self { detector }
    }
}

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;
    fn layer(&self, inner: S) -> Split<S> {
        Split { inner, detector: self.detector.clone() }
    }
}

/// Chooses the [`Upstream`] among the service's endpoints by weight.
#[derive(Debug, Clone)]
pub struct Split<S> {
    inner: S,
    detector: Arc<OutlierDetector>,
}

/// Picks an endpoint with probability proportional to its weight; `roll` is in `0..total`.
pub fn pick(endpoints: &[Endpoint], roll: u64) -> Option<&Endpoint> {
    let mut acc = 0u64;
    endpoints.iter().find(|e| {
        acc += u64::from(e.weight);
        roll < acc
    })
}

impl<S> Service<Request> for Split<S>
where
    S: Service<Request, Error = ProxyError, Future = super::BoxFuture<Result<<S as Service<Request>>::Response, ProxyError>>>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(service) = req.extensions().get::<Arc<ServiceConfig>>().cloned() else {
            return Box::pin(std::future::ready(Err(ProxyError::BadRequest(
                "no service resolved before the split".into(),
            ))));
        };
        let available = self.detector.available(&service, Instant::now());
        let endpoints = available.as_deref().unwrap_or(&service.endpoints);
        let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
        let chosen = (total > 0).then(|| pick(endpoints, fastrand::u64(0..total))).flatten();
        let Some(endpoint) = chosen else {
            return Box::pin(std::future::ready(Err(ProxyError::NoEndpoint {
                service: service.name.to_string(),
            })));
        };
        if let Some(resolution) = req.extensions().get::<Resolution>() {
            resolution.set_endpoint(endpoint.clone());
        }
        req.extensions_mut().insert(Upstream(endpoint.address));
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::WorkloadIdentity;

    fn endpoint(version: &str, weight: u32) -> Endpoint {
        Endpoint {
            address: ([127, 0, 0, 1], 1).into(),
            identity: Arc::new(WorkloadIdentity::new("ns", "svc", &format!("svc-{version}"), version)),
            weight,
        }
    }

    #[test]
    fn weights_partition_the_rolls() {
        let eps = [endpoint("v1", 80), endpoint("v2", 15), endpoint("v3", 5)];
        let version = |roll| pick(&eps, roll).map(|e| e.identity.version.to_string());
        assert_eq!(version(0).as_deref(), Some("v1"));
        assert_eq!(version(79).as_deref(), Some("v1"));
        assert_eq!(version(80).as_deref(), Some("v2"));
        assert_eq!(version(94).as_deref(), Some("v2"));
        assert_eq!(version(95).as_deref(), Some("v3"));
        assert_eq!(version(100), None);
    }

    #[test]
    fn zero_weight_endpoints_are_never_picked() {
        let eps = [endpoint("v1", 0), endpoint("v2", 1)];
        assert_eq!(pick(&eps, 0).map(|e| &*e.identity.version), Some("v2"));
    }
}
