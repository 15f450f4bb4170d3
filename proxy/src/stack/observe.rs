//! The outermost layer: trace context, identity headers, and one telemetry record per exchange.
//!
//! On the way in it continues (or starts) the trace with a new span ID and rewrites
//! `traceparent` so the next hop becomes this span's child; it reads the caller's identity
//! (inbound) or stamps the sidecar's own (outbound). On the way out it wraps the response
//! body, and when that body ends — completed, failed or abandoned — it classifies the
//! exchange and hands a [`RequestRecord`] to [`Telemetry::record`], which never waits. An
//! upgraded exchange (a `101`) ends instead when its connection closes ([`Tunnel`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use http::HeaderMap;
use tower::{Layer, Service};

use crate::{
    body::{self, BodyEnd, BodyObserver, ObservedBody, RequestObserver, RequestProgress},
    grpc_messages::{self, MessageCounter},
    classify::{self, ResponseFlags},
    http_route::RouteTemplates,
    identity::{SOURCE_HEADER, WorkloadIdentity},
    error::ProxyError,
    stream_idle::{self, IdleBody},
    telemetry::{Origin, RequestRecord, Side, Telemetry, metrics::unix_nanos, stats::ActiveRequest},
    telemetry::SpanEvent,
    trace_context::{SpanContext, ensure_request_id},
};

use super::{BoxFuture, ConnectionAddrs, Request, Resolution, Response, errors, is_grpc, recorded_authority, upgrade::Tunnel};

/// Adds [`Observe`] for one side of the sidecar.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    side: Side,
    telemetry: Telemetry,
    app: Option<SocketAddr>,
    routes: Arc<RouteTemplates>,
    /// The stream idle timeout of an exchange, before and after its response headers; `None`: none.
    stream_idle: Option<Duration>,
}

impl ObserveLayer {
    /// For the inbound side, whose upstream is always the local application at `app`, whose
    /// paths match `routes`.
    pub fn inbound(telemetry: Telemetry, app: SocketAddr, routes: Arc<RouteTemplates>, stream_idle: Option<Duration>) -> Self {
        Self { side: Side::Inbound, telemetry, app: Some(app), routes, stream_idle }
    }

    /// For the outbound side, whose upstream and route the inner layers choose.
    pub fn outbound(telemetry: Telemetry, stream_idle: Option<Duration>) -> Self {
        Self { side: Side::Outbound, telemetry, app: None, routes: Arc::default(), stream_idle }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, layer: self.clone() }
    }
}

/// Records every exchange that passes through.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

fn header_string(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        let start_unix_nanos = unix_nanos(SystemTime::now());
        let ObserveLayer { side, telemetry, app, routes, stream_idle } = self.layer.clone();
        let active = telemetry.active(side);
        let local = telemetry.identity().clone();

        let context = SpanContext::continue_from(req.headers(), telemetry.sampling().ratio, telemetry.propagation());
        context.inject(req.headers_mut());
        req.extensions_mut().insert(context);
        let request_id = ensure_request_id(req.headers_mut());
        // What the layers under this one decide and note (on the inbound side, the pool's
        // `resent`), read back when the record is made.
        let resolution = Resolution::default();
        req.extensions_mut().insert(resolution.clone());
        let source = match side {
            Side::Inbound => WorkloadIdentity::take_from(req.headers_mut()).map(Arc::new),
            Side::Outbound => {
                req.headers_mut().insert(SOURCE_HEADER, local.to_header());
                Some(local.clone())
            }
        };
        let (authority, authority_port) = recorded_authority(&req);
        let destination_service = match side {
            Side::Inbound => local.service.clone(),
            Side::Outbound => authority.clone().unwrap_or_else(|| Arc::from("unknown")),
        };
        // A gRPC call's messages are counted both ways (not gRPC-Web's base64 text form).
        let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let request = RequestProgress::new(start, content_type.is_some_and(grpc_messages::countable));
        let addrs = req.extensions().get::<ConnectionAddrs>().copied();
        let record = RequestRecord {
            path: req.uri().path().to_owned(),
            query: crate::telemetry::recorded_query(req.uri()),
            route: routes.route(req.uri().path()).cloned(),
            authority_port,
            authority,
            version: req.version(),
            grpc: is_grpc(&req),
            source,
            destination: (side == Side::Inbound).then(|| local.clone()),
            upstream: app,
            peer: addrs.map(|a| a.peer),
            local: addrs.map(|a| a.local),
            connection_id: addrs.map(|a| a.id),
            origin: if side == Side::Inbound { Origin::of(req.headers()) } else { Origin::PLAIN },
            user_agent: header_string(req.headers(), http::header::USER_AGENT),
            request_id: Some(request_id),
            trace_state: context.trace_state(req.headers()),
            headers: telemetry.keep_request_headers(req.headers()),
            ..RequestRecord::new(side, context, start_unix_nanos, Some(req.method().clone()), destination_service)
        };
        if http_body::Body::is_end_stream(req.body()) {
            request.end();
        }
        let grpc = record.grpc;
        let req = req.map(|b| body::boxed(ObservedBody::new(b, RequestObserver::new(request.clone()))));
        let fut = self.inner.call(req);
        let waiting = Waiting { telemetry, record: Some(record), start, request, resolution };
        Box::pin(async move {
            let mut waiting = waiting;
            let (request, resolution) = (&waiting.request, &waiting.resolution);
            let response = match stream_idle {
                None => fut.await,
                Some(after) => match stream_idle::until_headers(fut, after, request, || resolution.answer_limit()).await {
                    Some(answer) => answer,
                    // Dropping the exchange dropped its upstream stream too.
                    None => Ok(errors::error_response(&ProxyError::StreamIdle { after }, grpc)),
                },
            };
            let Ok(response) = response;
            let Some(mut record) = waiting.record.take() else { return Ok(response) };
            record.status = response.status().as_u16();
            record.grpc_status = classify::grpc_status(response.headers());
            record.flags = response.extensions().get::<ResponseFlags>().copied().unwrap_or_default();
            if let Some(captured) = record.headers.as_deref_mut() {
                captured.add_response(response.headers());
            }
            resolved(&mut record, &waiting.resolution, start);
            if let Some(name) = record.flags.failure_event() {
                let message = header_string(response.headers(), crate::stack::errors::ERROR_HEADER);
                record.events.push(SpanEvent { offset: start.elapsed(), name, message });
            }
            let tunnel = response.extensions().get::<Tunnel>().cloned();
            if record.flags.is_empty() {
                // The upstream's own answer, not one the sidecar made.
                record.response_duration = Some(start.elapsed());
            }
            let (telemetry, request) = (waiting.telemetry.clone(), waiting.request.clone());
            let response_body = Streaming::new(record, request.messages().is_some());
            let in_flight = InFlight { telemetry, response_body, start, request: request.clone(), tunnel, active: Some(active) };
            Ok(response.map(|b| body::boxed(ObservedBody::new(IdleBody::new(b, stream_idle, request), in_flight))))
        })
    }
}

/// What the inner layers chose and did for the exchange: its endpoint, route and retries.
fn resolved(record: &mut RequestRecord, resolution: &Resolution, start: Instant) {
    if let Some(endpoint) = resolution.endpoint() {
        record.destination = Some(endpoint.identity.clone());
        record.upstream = Some(endpoint.address);
    }
    if let Some(route) = resolution.route() {
        record.route = Some(route.clone());
    }
    let upstream = resolution.upstream_connection();
    (record.upstream_local, record.upstream_connection_id) = (upstream.map(|c| c.local), upstream.map(|c| c.id));
    resolution.record_notes(record, start);
}

/// The record of an exchange still waiting for its response headers. When the caller goes
/// away meanwhile, the server drops the exchange with it; the record is then made here, as
/// Envoy logs such a request: no response (status 0), flag `DC`, a `downstream_terminated`
/// event, and what the inner layers had done by then.
struct Waiting {
    telemetry: Telemetry,
    record: Option<RequestRecord>,
    start: Instant,
    request: Arc<RequestProgress>,
    resolution: Resolution,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else { return };
        resolved(&mut record, &self.resolution, self.start);
        record.request_bytes = self.request.bytes();
        record.grpc_messages = self.request.messages().map(|sent| (sent, 0));
        record.request_duration = self.request.ended_after();
        finish(&self.telemetry, record, self.start, BodyEnd::Dropped);
    }
}

/// The record of an exchange whose response body is still streaming.
struct InFlight {
    telemetry: Telemetry,
    response_body: Streaming,
    start: Instant,
    request: Arc<RequestProgress>,
    /// On a `101`: the upgraded connection, whose close ends the exchange.
    tunnel: Option<Tunnel>,
    /// Counts the exchange in flight until it ends (dropped with this, or with the tunnel).
    active: Option<ActiveRequest>,
}

impl BodyObserver for InFlight {
    fn on_data(&mut self, data: &[u8]) {
        self.response_body.data(data);
    }

    fn on_trailers(&mut self, trailers: &HeaderMap) {
        self.response_body.trailers(trailers);
    }

    fn on_error(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.response_body.error(error);
    }

    fn on_end(&mut self, end: BodyEnd) {
        let Some(mut record) = self.response_body.take() else { return };
        record.request_bytes = self.request.bytes();
        record.grpc_messages = self.request.messages().zip(self.response_body.messages());
        record.request_duration = self.request.ended_after();
        let start = self.start;
        match self.tunnel.take() {
            // The `101`'s empty body ends at once; the exchange goes on in the upgraded
            // connection, and ends when it closes.
            Some(tunnel) => {
                record.events.push(SpanEvent { offset: start.elapsed(), name: "upgraded", message: None });
                let (telemetry, active) = (self.telemetry.clone(), self.active.take());
                tunnel.on_close(move |closed| {
                    let _active = active;
                    record.request_bytes += closed.sent;
                    record.response_bytes += closed.received;
                    if closed.idle {
                        record.flags |= ResponseFlags::STREAM_IDLE_TIMEOUT;
                        record.events.push(SpanEvent { offset: start.elapsed(), name: "idle_timeout", message: None });
                    }
                    // Closed by the stopping sidecar: cut, as an exchange still open then is.
                    let end = match (closed.failed, closed.shutdown) {
                        (true, _) => BodyEnd::Error,
                        (false, true) => BodyEnd::Dropped,
                        (false, false) => BodyEnd::Complete,
                    };
                    finish(&telemetry, record, start, end);
                });
            }
            None => {
                if end == BodyEnd::Error && self.request.went_idle() {
                    // The sidecar cut it off: nothing crossed either way for its idle timeout.
                    record.flags |= ResponseFlags::STREAM_IDLE_TIMEOUT;
                    record.events.push(SpanEvent { offset: start.elapsed(), name: "idle_timeout", message: None });
                } else if end == BodyEnd::Error {
                    self.response_body.broken_off(&mut record, start.elapsed());
                }
                finish(&self.telemetry, record, start, end);
            }
        }
    }
}

/// A record whose response body is streaming, and what the body has carried so far: its
/// bytes, a gRPC call's messages, the status in its trailers and the trailers kept, and how
/// it failed, if it did. The request's span follows its answer with one, and so does the
/// last attempt of a retried request ([`super::retry`]).
pub(crate) struct Streaming {
    /// The record, until the body ends and it is taken.
    record: Option<RequestRecord>,
    /// A gRPC call's response messages.
    messages: Option<MessageCounter>,
    /// How the body failed: whether the upstream broke HTTP in it, and the error's causes.
    failure: Option<(bool, String)>,
}

impl Streaming {
    /// Follows the body of `record`'s answer, counting its messages if `count_messages`.
    pub(crate) fn new(record: RequestRecord, count_messages: bool) -> Self {
        Self { record: Some(record), messages: count_messages.then(MessageCounter::default), failure: None }
    }

    /// A data frame passed.
    pub(crate) fn data(&mut self, data: &[u8]) {
        if let Some(r) = self.record.as_mut() {
            r.response_bytes += data.len() as u64;
        }
        if let Some(counter) = self.messages.as_mut() {
            counter.feed(data);
        }
    }

    /// The trailers passed.
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        let Some(r) = self.record.as_mut() else { return };
        if let Some(code) = classify::grpc_status(trailers) {
            r.grpc_status = Some(code);
        }
        if let Some(kept) = r.headers.as_mut() {
            kept.add_trailers(trailers);
        }
    }

    /// The body failed with `error`.
    pub(crate) fn error(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.failure = Some((crate::error::broke_http(error), crate::error::causes(error)));
    }

    /// The record, once: when the body has ended.
    pub(crate) fn take(&mut self) -> Option<RequestRecord> {
        self.record.take()
    }

    /// The messages received, when they are counted.
    pub(crate) fn messages(&self) -> Option<u64> {
        self.messages.map(|counter| counter.messages())
    }

    /// Marks `record`, whose response body failed, as the upstream's doing, whatever the
    /// status said: it broke the body off after its headers (Envoy's `UC`), or broke HTTP in
    /// it (`UPE`, a bad chunk).
    pub(crate) fn broken_off(&mut self, record: &mut RequestRecord, offset: Duration) {
        let (broke_http, cause) = self.failure.take().unwrap_or_default();
        let (flag, name) = if broke_http {
            (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, "upstream_protocol_error")
        } else {
            (ResponseFlags::UPSTREAM_RESET, "upstream_reset")
        };
        record.flags |= flag;
        record.events.push(SpanEvent { offset, name, message: Some(cause).filter(|c| !c.is_empty()) });
    }
}

/// The event of an upgraded connection the sidecar closed as it shut down.
pub const SHUTDOWN_EVENT: &str = "sidecar_shutdown";

/// The flags of a response body that failed for a known reason, each with its own event.
const BROKEN_OFF: ResponseFlags = ResponseFlags::STREAM_IDLE_TIMEOUT
    .union(ResponseFlags::UPSTREAM_RESET)
    .union(ResponseFlags::UPSTREAM_PROTOCOL_ERROR);

/// Ends an exchange's record as its response (or upgraded connection) ended, and records it.
fn finish(telemetry: &Telemetry, mut record: RequestRecord, start: Instant, end: BodyEnd) {
    record.duration = start.elapsed();
    match end {
        // Its `downstream_terminated` event came with the sidecar's answer.
        BodyEnd::Dropped if record.flags.contains(ResponseFlags::DOWNSTREAM_TERMINATED) => {}
        // Still open at the end of the grace period, closed by the stopping sidecar.
        BodyEnd::Dropped if telemetry.is_shutting_down() => {
            record.events.push(SpanEvent { offset: record.duration, name: SHUTDOWN_EVENT, message: None });
        }
        BodyEnd::Dropped => {
            record.flags |= ResponseFlags::DOWNSTREAM_TERMINATED;
            record.events.push(SpanEvent { offset: record.duration, name: "downstream_terminated", message: None });
        }
        // Its `idle_timeout`, `upstream_reset` or `upstream_protocol_error` event says why.
        BodyEnd::Error if record.flags.intersects(BROKEN_OFF) => {}
        BodyEnd::Error => record.events.push(SpanEvent { offset: record.duration, name: "stream_error", message: None }),
        BodyEnd::Complete => {}
    }
    record.classification = classify::classify(record.status, record.grpc_status, end, record.flags);
    telemetry.record(record);
}
