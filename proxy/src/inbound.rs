//! The inbound stack: requests from other workloads to the local application.

use tower::{ServiceBuilder, util::BoxCloneService};

use crate::{
    config::ProxyConfig,
    stack::{
        Request, Response, Upstream, admit::AdmitLayer, errors::ErrorsLayer, forward::Forward, observe::ObserveLayer,
        timeout::TimeoutLayer,
    },
    telemetry::Telemetry,
};

/// The inbound service, outermost layer first.
pub fn stack(
    config: &ProxyConfig,
    telemetry: Telemetry,
    forward: Forward,
) -> BoxCloneService<Request, Response, std::convert::Infallible> {
    let app = config.app;
    BoxCloneService::new(
        ServiceBuilder::new()
        // Records the SERVER span, the access log and the metrics of every request.
        .layer(ObserveLayer::inbound(telemetry, app, config.inbound_routes.clone(), config.stream_idle_timeout))
        // Turns failures inside the sidecar into responses that carry response flags.
        .layer(ErrorsLayer)
        // Refuses requests with an ambiguous target (two `Host`s, a bad one), `CONNECT`, and
        // HTTP/2 header lists over the limit.
        .layer(AdmitLayer::new(config.connections.max_request_headers))
        // Bounds a gRPC call by its caller's deadline, as the caller's own sidecar does: the
        // call's span here ends with it too, whether or not the caller is in the mesh. Plain
        // HTTP requests have no inbound timeout (the application's own time).
        .layer(TimeoutLayer)
        // Every inbound request is for the local application.
        .map_request(move |mut req: Request| {
            req.extensions_mut().insert(Upstream(app));
            req
        })
        .service(forward),
    )
}
