//! The outbound stack: requests from the local application to other services.

use std::sync::Arc;

use tower::{ServiceBuilder, util::BoxCloneService};

use crate::{
    config::ProxyConfig,
    stack::{
        Request, Response, admit::AdmitLayer, errors::ErrorsLayer, forward::Forward, observe::ObserveLayer,
        outlier::{OutlierDetector, OutlierLayer}, retry::RetryLayer, route::RouteLayer, split::SplitLayer,
        timeout::TimeoutLayer,
    },
    telemetry::Telemetry,
};

/// The outbound service, outermost layer first.
pub fn stack(
    config: &ProxyConfig,
    telemetry: Telemetry,
    forward: Forward,
) -> BoxCloneService<Request, Response, std::convert::Infallible> {
    let detector = Arc::new(OutlierDetector::default());
    BoxCloneService::new(
        ServiceBuilder::new()
        // Records the CLIENT span, the access log and the metrics of every request.
        .layer(ObserveLayer::outbound(telemetry.clone(), config.stream_idle_timeout))
        // Turns failures inside the sidecar into responses that carry response flags.
        .layer(ErrorsLayer)
        // Refuses requests with an ambiguous target (two `Host`s, a bad one), `CONNECT`, and
        // HTTP/2 header lists over the limit.
        .layer(AdmitLayer::new(config.connections.max_request_headers))
        // Resolves the destination service from the request's authority.
        .layer(RouteLayer::new(&config.services))
        // Bounds how long the service may take to answer, all attempts together.
        .layer(TimeoutLayer)
        // Retries failed attempts as the service's retry policy says; each attempt is a span.
        .layer(RetryLayer::new(telemetry.clone()))
        // Picks one of the service's endpoints by weight (canary splits), skipping ejected ones.
        .layer(SplitLayer::new(detector.clone()))
        // Counts each endpoint's failures in a row and ejects the ones that keep failing.
        .layer(OutlierLayer::new(detector, telemetry.stats().clone()))
        .service(forward),
    )
}
