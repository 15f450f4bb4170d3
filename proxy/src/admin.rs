//! The sidecar's admin server: `/metrics` (its own counters, its request metrics and its
//! process's CPU and memory, Prometheus text) and `/ready`.

use std::{convert::Infallible, sync::Arc};

use http::{HeaderValue, StatusCode, header};
use prometheus_client::registry::Registry;
use tower::util::BoxCloneService;

use crate::{
    body,
    stack::{Request, Response},
    telemetry::{Telemetry, prometheus::RequestMetricsCollector},
};

/// Builds the admin service.
pub fn service(telemetry: &Telemetry) -> BoxCloneService<Request, Response, Infallible> {
    let mut registry = Registry::default();
    telemetry.stats().register(&mut registry);
    registry.register_collector(Box::new(RequestMetricsCollector(telemetry.metrics().clone())));
    // The sidecar's own CPU and memory, as Linkerd's proxy and Envoy show theirs.
    registry.register_collector(Box::new(meshlens_common::process::ProcessCollector));
    let registry = Arc::new(registry);
    let telemetry = telemetry.clone();
    BoxCloneService::new(tower::service_fn(move |req: Request| {
        let registry = registry.clone();
        let stats = telemetry.stats();
        stats.series.set(telemetry.metrics().series_count() as i64);
        async move { Ok::<_, Infallible>(respond(&req, &registry)) }
    }))
}

fn respond(req: &Request, registry: &Registry) -> Response {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(body::full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", out),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding failed: {e}\n")),
            }
        }
        (&http::Method::GET, "/ready") => text(StatusCode::OK, "text/plain", "ready\n".into()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /ready\n".into()),
    }
}
