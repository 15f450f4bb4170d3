//! The sidecar's admin server: `/metrics` (its own counters, its request metrics and its
//! process's CPU and memory; OpenMetrics for Prometheus, the classic text format for other
//! scrapers), `/ready` and `/live` (for readiness and liveness probes), `/tap`, the requests
//! it finishes as they finish ([`crate::telemetry::tap`]), and `/proxy-log-level`, the log
//! filter, read with GET and changed with PUT ([`crate::log_level`]).
//!
//! The admin port may listen beyond loopback so that Prometheus and a platform's probes
//! reach it; the tap (requests' paths, headers, peers) and changing the log filter are then
//! still for this machine's clients only (loopback peers, as `kubectl port-forward` is),
//! as Linkerd keeps its proxy's log level: others get 403.

use std::{convert::Infallible, sync::Arc};

use http::{HeaderValue, StatusCode, header};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tower::util::BoxCloneService;

use crate::{
    body, log_level,
    stack::{ConnectionAddrs, Request, Response},
    telemetry::{Telemetry, prometheus::RequestMetricsCollector, tap::TapQuery},
};

/// Builds the admin service. `own_process`: the sidecar is its process's only one, whose
/// CPU and memory `/metrics` then reports as the sidecar's. `shutdown` turns true when the
/// sidecar starts to stop: open taps end then.
pub fn service(
    telemetry: &Telemetry,
    own_process: bool,
    shutdown: watch::Receiver<bool>,
) -> BoxCloneService<Request, Response, Infallible> {
    let mut registry = Registry::default();
    telemetry.stats().register(&mut registry);
    registry.register_collector(Box::new(RequestMetricsCollector(telemetry.metrics().clone())));
    // The sidecar's own CPU and memory, as Linkerd's proxy and Envoy show theirs.
    if own_process {
        registry.register_collector(Box::new(meshlens_common::process::ProcessCollector));
    }
    let registry = Arc::new(registry);
    let telemetry = telemetry.clone();
    BoxCloneService::new(tower::service_fn(move |req: Request| {
        let (registry, telemetry, shutdown) = (registry.clone(), telemetry.clone(), shutdown.clone());
        async move {
            telemetry.stats().series.set(telemetry.metrics().series_count() as i64);
            Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                (&http::Method::GET, "/tap") | (&http::Method::PUT, "/proxy-log-level") if !from_this_machine(&req) => {
                    let why = format!("{} is only answered to clients on this machine (loopback)\n", req.uri().path());
                    text(StatusCode::FORBIDDEN, "text/plain", why)
                }
                (&http::Method::GET, "/tap") => tap(&telemetry, req.uri().query().unwrap_or_default(), shutdown),
                (&http::Method::PUT, "/proxy-log-level") => set_log_level(req).await,
                _ => respond(&req, &registry),
            })
        }
    }))
}

/// Whether the request came over a loopback connection (an IPv4-mapped loopback address
/// too); not when the connection is unknown.
fn from_this_machine(req: &Request) -> bool {
    req.extensions().get::<ConnectionAddrs>().is_some_and(|addrs| addrs.peer.ip().to_canonical().is_loopback())
}

/// `PUT /proxy-log-level`: the body is the new filter directive ([`log_level::set`]); 400
/// with the reason when it is not one.
async fn set_log_level(req: Request) -> Response {
    let limited = http_body_util::Limited::new(req.into_body(), log_level::MAX_DIRECTIVE);
    let Ok(body) = http_body_util::BodyExt::collect(limited).await.map(|b| b.to_bytes()) else {
        let too_long = format!("a log filter is at most {} bytes\n", log_level::MAX_DIRECTIVE);
        return text(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", too_long);
    };
    let directive = String::from_utf8_lossy(&body);
    match log_level::set(&directive) {
        Ok(()) => text(StatusCode::OK, "text/plain", format!("{}\n", log_level::current().unwrap_or_default())),
        Err(error) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n")),
    }
}

/// A response of `body`, with its status and content type.
fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `GET /tap?…`: a JSON line per request the query picks, as they finish; 400 for a query
/// that does not parse.
fn tap(telemetry: &Telemetry, query: &str, shutdown: watch::Receiver<bool>) -> Response {
    match TapQuery::parse(query) {
        Ok(query) => {
            let mut r = Response::new(telemetry.tap().open(query, shutdown));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Err(error) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n")),
    }
}

fn respond(req: &Request, registry: &Registry) -> Response {
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
            match meshlens_common::exposition::encode(registry, accept) {
                Ok((content_type, out)) => text(StatusCode::OK, content_type, out),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding failed: {e}\n")),
            }
        }
        (&http::Method::GET, "/ready") => text(StatusCode::OK, "text/plain", "ready\n".into()),
        (&http::Method::GET, "/live") => text(StatusCode::OK, "text/plain", "live\n".into()),
        (&http::Method::GET, "/proxy-log-level") => match log_level::current() {
            Some(directive) => text(StatusCode::OK, "text/plain", format!("{directive}\n")),
            None => text(StatusCode::NOT_FOUND, "text/plain", "this process's log filter cannot be read\n".into()),
        },
        _ => {
            let known = "try /metrics, /ready, /live, /tap or /proxy-log-level (GET, PUT)";
            text(StatusCode::NOT_FOUND, "text/plain", format!("not found: {known}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    async fn metrics(own_process: bool) -> String {
        let svc = service(&crate::telemetry::tests::telemetry(), own_process, watch::channel(false).1);
        let req = http::Request::get("/metrics").header(header::ACCEPT, "application/openmetrics-text");
        let req = req.body(body::full("")).expect("request");
        let response = svc.oneshot(req).await.expect("infallible");
        assert_eq!(response.headers()[header::CONTENT_TYPE], meshlens_common::exposition::OPENMETRICS);
        let bytes = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("text")
    }

    #[tokio::test]
    async fn the_tap_and_a_new_log_filter_are_for_clients_on_this_machine_only() {
        let svc = service(&crate::telemetry::tests::telemetry(), false, watch::channel(false).1);
        let status = |method: &str, path: &str, peer: Option<&str>| {
            let mut req = http::Request::builder().method(method).uri(path).body(body::full("not a directive=")).expect("request");
            if let Some(peer) = peer {
                let local = "127.0.0.1:4191".parse().expect("addr");
                req.extensions_mut().insert(ConnectionAddrs::accepted(peer.parse().expect("peer"), local));
            }
            let svc = svc.clone();
            async move { svc.oneshot(req).await.expect("infallible").status() }
        };
        for peer in [Some("10.0.0.5:40000"), Some("[2001:db8::1]:40000"), None] {
            assert_eq!(status("GET", "/tap?limit=1", peer).await, StatusCode::FORBIDDEN, "{peer:?}");
            assert_eq!(status("PUT", "/proxy-log-level", peer).await, StatusCode::FORBIDDEN, "{peer:?}");
            assert_eq!(status("GET", "/live", peer).await, StatusCode::OK, "probes and scrapes from anywhere");
        }
        for peer in ["127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"] {
            // Taken, and refused for what it says: the filter is not a directive.
            assert_eq!(status("PUT", "/proxy-log-level", Some(peer)).await, StatusCode::BAD_REQUEST, "{peer}");
        }
    }

    #[tokio::test]
    async fn the_process_figures_are_a_sidecar_s_only_when_it_has_its_process_to_itself() {
        let own = metrics(true).await;
        assert!(own.contains("\nprocess_resident_memory_bytes ") && own.contains("meshlens_proxy_metric_series"), "{own}");
        let shared = metrics(false).await;
        assert!(!shared.contains("process_") && shared.contains("meshlens_proxy_metric_series"), "{shared}");
    }
}
