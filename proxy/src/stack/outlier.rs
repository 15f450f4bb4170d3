//! Outlier ejection, as Envoy's consecutive-5xx detection does it: an endpoint whose
//! responses fail `consecutive_failures` times in a row (5xx, connect failures, resets,
//! timeouts) leaves its service's rotation for `base_ejection_time` times the number of
//! times it has been ejected (at most 300 s), then returns. At most
//! `max_ejection_percent` of a service's endpoints are out at once (always at least one
//! may go when there are two or more; a lone endpoint is never ejected).
//!
//! The [`OutlierDetector`] is shared: [`super::split`] asks it which endpoints may be
//! picked, and [`Outlier`] (just inside the split, so it sees each attempt's endpoint)
//! reports every result to it. The request whose failure ejected an endpoint gets an
//! `ejection` event on its span.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tower::{Layer, Service};

use crate::{
    config::{Endpoint, OutlierPolicy, ServiceConfig},
    error::ProxyError,
    telemetry::TelemetryStats,
};

use super::{BoxFuture, EJECTION, Request, Resolution, Response, Upstream};

/// The longest ejection.
const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// Every endpoint's recent failures and ejections.
#[derive(Debug, Default)]
pub struct OutlierDetector {
    endpoints: Mutex<HashMap<SocketAddr, Health>>,
}

impl OutlierDetector {
    /// The service's endpoints that may be picked now; all of them without a policy.
    pub fn available(&self, service: &ServiceConfig, now: Instant) -> Option<Vec<Endpoint>> {
        service.outlier?;
        let health = self.endpoints.lock().ok()?;
        let ejected = |e: &Endpoint| health.get(&e.address).and_then(|h| h.ejected_until).is_some_and(|t| t > now);
        if !service.endpoints.iter().any(ejected) {
            return None;
        }
        Some(service.endpoints.iter().filter(|e| !ejected(e)).cloned().collect())
    }

    /// Records one result of `addr`; returns how long it was ejected for, if this ejected it.
    pub fn observe(&self, service: &ServiceConfig, addr: SocketAddr, failed: bool, now: Instant) -> Option<Duration> {
        let policy: OutlierPolicy = service.outlier?;
        let mut health = self.endpoints.lock().ok()?;
        let entry = health.entry(addr).or_default();
        if !failed {
            entry.consecutive_failures = 0;
            return None;
        }
        entry.consecutive_failures += 1;
        if entry.consecutive_failures < policy.consecutive_failures || entry.ejected_until.is_some_and(|t| t > now) {
            return None;
        }
        let total = service.endpoints.len();
        let out = service
            .endpoints
            .iter()
            .filter(|e| health.get(&e.address).and_then(|h| h.ejected_until).is_some_and(|t| t > now))
            .count();
        let allowed = (total * policy.max_ejection_percent as usize / 100).max(1).min(total.saturating_sub(1));
        if out >= allowed {
            return None;
        }
        let entry = health.entry(addr).or_default();
        entry.ejections += 1;
        entry.consecutive_failures = 0;
        let length = policy.base_ejection_time.saturating_mul(entry.ejections).min(MAX_EJECTION);
        entry.ejected_until = Some(now + length);
        Some(length)
    }
}

/// Adds [`Outlier`].
#[derive(Debug, Clone, Default)]
pub struct OutlierLayer {
    detector: Arc<OutlierDetector>,
    stats: TelemetryStats,
}

impl OutlierLayer {
    /// Reports to `detector`; ejections are counted in `stats`.
    pub fn new(detector: Arc<OutlierDetector>, stats: TelemetryStats) -> Self {
        Self { detector, stats }
    }
}

impl<S> Layer<S> for OutlierLayer {
    type Service = Outlier<S>;
    fn layer(&self, inner: S) -> Outlier<S> {
        Outlier { inner, detector: self.detector.clone(), stats: self.stats.clone() }
    }
}

/// Reports each attempt's result for its endpoint.
#[derive(Debug, Clone)]
pub struct Outlier<S> {
    inner: S,
    detector: Arc<OutlierDetector>,
    stats: TelemetryStats,
}

/// Whether a result counts against its endpoint.
fn failed(result: &Result<Response, ProxyError>) -> bool {
    match result {
        Ok(response) => response.status().is_server_error(),
        Err(
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::Timeout { .. },
        ) => true,
        Err(_) => false,
    }
}

impl<S> Service<Request> for Outlier<S>
where
    S: Service<Request, Response = Response, Error = ProxyError, Future = BoxFuture<Result<Response, ProxyError>>>,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let service = req.extensions().get::<Arc<ServiceConfig>>().filter(|s| s.outlier.is_some()).cloned();
        let upstream = req.extensions().get::<Upstream>().copied();
        let resolution = req.extensions().get::<Resolution>().cloned();
        let fut = self.inner.call(req);
        let (Some(service), Some(Upstream(addr))) = (service, upstream) else { return fut };
        let (detector, stats) = (self.detector.clone(), self.stats.clone());
        Box::pin(async move {
            let result = fut.await;
            if let Some(length) = detector.observe(&service, addr, failed(&result), Instant::now()) {
                tracing::info!(service = %service.name, endpoint = %addr, ?length, "endpoint ejected");
                stats.ejected(&service.name);
                if let Some(resolution) = resolution {
                    resolution.note(EJECTION, format!("endpoint {addr} ejected for {length:?} after consecutive failures"));
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::WorkloadIdentity;

    fn service(endpoints: u16, policy: Option<OutlierPolicy>) -> ServiceConfig {
        ServiceConfig {
            name: "payments".into(),
            namespace: "shop".into(),
            endpoints: (1..=endpoints)
                .map(|i| Endpoint {
                    address: ([127, 0, 0, 1], i).into(),
                    identity: Arc::new(WorkloadIdentity::new("shop", "payments", &format!("payments-v{i}"), &format!("v{i}"))),
                    weight: 1,
                })
                .collect(),
            routes: Arc::default(),
            timeout: None,
            max_grpc_timeout: None,
            retry: None,
            outlier: policy,
        }
    }

    const POLICY: OutlierPolicy = OutlierPolicy { consecutive_failures: 3, base_ejection_time: Duration::from_secs(10), max_ejection_percent: 50 };

    #[test]
    fn consecutive_failures_eject_for_a_growing_time_then_the_endpoint_returns() {
        let detector = OutlierDetector::default();
        let svc = service(4, Some(POLICY));
        let bad = svc.endpoints[0].address;
        let t0 = Instant::now();
        assert_eq!(detector.observe(&svc, bad, true, t0), None);
        assert_eq!(detector.observe(&svc, bad, false, t0), None, "a success resets the count");
        assert_eq!(detector.observe(&svc, bad, true, t0), None);
        assert_eq!(detector.observe(&svc, bad, true, t0), None);
        assert_eq!(detector.observe(&svc, bad, true, t0), Some(Duration::from_secs(10)));
        let available = detector.available(&svc, t0).expect("one is out");
        assert_eq!(available.len(), 3);
        assert!(available.iter().all(|e| e.address != bad));
        let later = t0 + Duration::from_secs(11);
        assert!(detector.available(&svc, later).is_none(), "back after its ejection time");
        for _ in 0..3 {
            detector.observe(&svc, bad, true, later);
        }
        assert!(detector.available(&svc, later).is_some_and(|a| a.len() == 3), "ejected again");
        assert_eq!(
            detector.endpoints.lock().expect("lock").get(&bad).and_then(|h| h.ejected_until),
            Some(later + Duration::from_secs(20)),
            "the second ejection lasts twice as long"
        );
    }

    #[test]
    fn only_the_upstreams_failures_count_against_it() {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        assert!(failed(&Err(ProxyError::UpstreamReset { addr, source: "reset".into() })));
        assert!(failed(&Err(ProxyError::UpstreamProtocol { addr, reason: "invalid HTTP status-code parsed".into() })));
        assert!(failed(&Err(ProxyError::Timeout { after: Duration::from_secs(1) })));
        for malformed in [true, false] {
            let caller = Err(ProxyError::RequestBody { reason: "the caller's body broke".into(), malformed });
            assert!(!failed(&caller), "the caller's body failing says nothing of the endpoint");
        }
    }

    #[test]
    fn ejections_are_capped_and_need_a_policy() {
        let detector = OutlierDetector::default();
        let svc = service(2, Some(POLICY));
        let now = Instant::now();
        for e in &svc.endpoints {
            for _ in 0..3 {
                detector.observe(&svc, e.address, true, now);
            }
        }
        assert_eq!(detector.available(&svc, now).map(|a| a.len()), Some(1), "50% of 2: only one is ejected");
        let lone = service(1, Some(POLICY));
        for _ in 0..10 {
            assert_eq!(detector.observe(&lone, lone.endpoints[0].address, true, now), None, "a lone endpoint stays");
        }
        let plain = service(2, None);
        for _ in 0..10 {
            assert_eq!(detector.observe(&plain, plain.endpoints[0].address, true, now), None);
        }
        assert!(detector.available(&plain, now).is_none());
    }
}
