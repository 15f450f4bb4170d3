//! Retries failed requests as the resolved service's `[services.retry]` policy says: up
//! to `attempts` in all, for the failures it names (5xx, gateway errors, resets, connect
//! failures, gRPC codes), each attempt optionally bounded by `per_try_timeout` (a gRPC
//! attempt's `grpc-timeout` says the time it has), with jittered exponential backoff
//! between them. It sits inside the service timeout, which
//! bounds all attempts together, and outside the split, so each attempt picks an endpoint.
//!
//! The request body streams to the first attempt as it arrives and is kept for the next
//! ones ([`Replay`]), up to `max_body_bytes`: a request whose body turns out larger
//! (or fails) is not sent again, and one known to be larger from the start is sent once,
//! untouched; either's failure gets a `not_retried` event saying why. So a body of unknown
//! length, as every gRPC call's, is retried too.
//!
//! Every attempt of a retried request is its own CLIENT span, a child of the request's
//! span, whose ID goes upstream in the trace context, so the server side of each attempt
//! hangs under the attempt that made it. Each retry is a `retry` event on the request's
//! span and counted in its `meshlens.retry.count` (via the [`Resolution`]).

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use http_body::Body as _;
use http_body_util::BodyExt as _;
use tower::{Layer, Service, ServiceExt};

use crate::{
    body::{self, BodyEnd, BodyObserver, ObservedBody, RequestObserver, RequestProgress},
    classify,
    config::{RetryOn, RetryPolicy, ServiceConfig},
    error::ProxyError,
    grpc_messages,
    replay::Replay,
    telemetry::{RequestRecord, Side, SpanEvent, Telemetry, metrics::unix_nanos},
    trace_context::{SpanContext, SpanId},
};

use super::{
    BoxFuture, NOT_RETRIED, RETRY, Request, Resolution, Response, copy_request, errors, is_grpc, observe, recorded_authority,
    timeout::{Deadline, GRPC_TIMEOUT, grpc_timeout_value},
};

/// Adds [`Retry`].
#[derive(Debug, Clone)]
pub struct RetryLayer {
    telemetry: Telemetry,
}

impl RetryLayer {
    /// Retries that report their attempts to `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner, telemetry: self.telemetry.clone() }
    }
}

/// Retries failed attempts of requests whose service has a retry policy.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S> Service<Request> for Retry<S>
where
    S: Service<Request, Response = Response, Error = ProxyError, Future = BoxFuture<Result<Response, ProxyError>>> + Clone + Send + 'static,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let service = req.extensions().get::<Arc<ServiceConfig>>();
        let Some((policy, service)) = service.and_then(|s| Some((s.retry.clone()?, s.name.clone()))) else {
            return self.inner.call(req);
        };
        let announced = req.body().size_hint().lower();
        if announced > policy.max_body_bytes {
            // Sent once, untouched; a failure the policy covers says why it was not retried.
            let request = req.extensions().get::<Resolution>().cloned();
            let sent = self.inner.call(req);
            return Box::pin(async move {
                let result = sent.await;
                if let Some((reason, request)) = retry_reason(&policy.on, &result).zip(request) {
                    let kept = policy.max_body_bytes;
                    let body = format!("the request body ({announced} bytes) is larger than the {kept} kept to send it again");
                    request.note(NOT_RETRIED, format!("{reason}; {body}"));
                }
                result
            });
        }
        // The ready service takes this request; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(attempts(inner, self.telemetry.clone(), service, policy, req))
    }
}

/// Why an attempt's result may be retried, or `None`.
fn retry_reason(on: &RetryOn, result: &Result<Response, ProxyError>) -> Option<String> {
    let gateway = on.server_error || on.gateway_error;
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let grpc = classify::grpc_status(response.headers());
            if (on.server_error && status >= 500) || (on.gateway_error && matches!(status, 502..=504)) {
                return Some(format!("upstream answered {status}"));
            }
            let code = grpc.and_then(|c| usize::try_from(c).ok()).filter(|c| on.grpc_codes.get(*c).copied().unwrap_or(false))?;
            Some(format!("upstream answered grpc-status {code}"))
        }
        // As in Envoy, `5xx` and `gateway-error` count every failure to get an answer as the
        // 502/503 it ends in: connect failures, resets and protocol errors alike.
        Err(ProxyError::UpstreamConnect { .. }) if on.connect_failure || gateway => Some("upstream connect failure".into()),
        Err(ProxyError::UpstreamReset { .. }) if on.reset || gateway => Some("upstream reset".into()),
        Err(ProxyError::UpstreamProtocol { .. }) if on.reset || gateway => Some("upstream protocol error".into()),
        Err(ProxyError::Timeout { after }) if gateway => {
            Some(format!("attempt timed out after {after:?}"))
        }
        Err(_) => None,
    }
}

/// The wait before retry number `retry` (from 1): `base` doubled each time, at most ten
/// times `base`, with full jitter between half and all of it.
fn backoff(base: Duration, retry: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << retry.saturating_sub(1).min(4)).min(base.saturating_mul(10));
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

async fn attempts<S>(
    mut inner: S,
    telemetry: Telemetry,
    service: Arc<str>,
    policy: Arc<RetryPolicy>,
    req: Request,
) -> Result<Response, ProxyError>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    let (parts, body) = req.into_parts();
    let head = http::Request::from_parts(parts, ());
    let (replay, mut body) = Replay::new(body, usize::try_from(policy.max_body_bytes).unwrap_or(usize::MAX));
    let request = head.extensions().get::<Resolution>().cloned().unwrap_or_default();
    let parent = head.extensions().get::<SpanContext>().copied();
    let mut attempt = 1;
    loop {
        let resolution = Resolution::default();
        if let Some(route) = request.route() {
            resolution.set_route(route.clone());
        }
        let mut req = copy_request(&head, body.boxed_unsync());
        req.extensions_mut().insert(resolution.clone());
        if is_grpc(&req) {
            // The attempt's server is told the time it has: the call's, or the attempt's own.
            let left = head.extensions().get::<Deadline>().map(|d| d.0.saturating_duration_since(Instant::now()));
            if let Some(limit) = [policy.per_try_timeout, left].into_iter().flatten().min() {
                req.headers_mut().insert(GRPC_TIMEOUT, grpc_timeout_value(limit));
            }
        }
        let context = parent.map(|p| SpanContext { span_id: SpanId::random(), parent_span_id: Some(p.span_id), ..p });
        if let Some(context) = &context {
            context.inject(req.headers_mut());
        }
        let span = context.map(|context| AttemptSpan::start(&mut req, &telemetry, &resolution, attempt, context));
        let result = match inner.ready().await {
            Ok(ready) => {
                let fut = ready.call(req);
                match policy.per_try_timeout {
                    Some(limit) => tokio::time::timeout(limit, fut).await.unwrap_or(Err(ProxyError::Timeout { after: limit })),
                    None => fut.await,
                }
            }
            Err(error) => Err(error),
        };
        let reason = retry_reason(&policy.on, &result);
        // The next attempt's body takes the source over from this one's, whose request
        // has failed; none once the body outgrew what is kept of it.
        let next = (attempt < policy.attempts && reason.is_some()).then(|| replay.body()).flatten();
        let result = match span {
            // The attempt whose answer goes back lasts as long as that answer's body.
            Some(span) if next.is_none() => span.follow(result),
            Some(span) => {
                span.finish(&result, reason.as_deref());
                result
            }
            None => result,
        };
        let Some(next) = next else {
            if let Some(reason) = reason.filter(|_| attempt < policy.attempts) {
                let body = match replay.failed() {
                    true => "the request body failed".to_owned(),
                    false => format!("the request body outgrew the {} bytes kept to send it again", policy.max_body_bytes),
                };
                request.note(NOT_RETRIED, format!("{reason}; {body}"));
            }
            if let Some(endpoint) = resolution.endpoint() {
                request.set_endpoint(endpoint.clone());
            }
            if let Some(connection) = resolution.upstream_connection() {
                request.set_upstream_connection(connection);
            }
            return result;
        };
        body = next;
        request.note(RETRY, reason.unwrap_or_default());
        telemetry.stats().request_retried(&service);
        drop(result);
        tokio::time::sleep(backoff(policy.backoff, attempt)).await;
        attempt += 1;
    }
}

/// An attempt's CLIENT span, from what it needs of the request, taken before it is sent.
/// A retried attempt is recorded at its response headers (or its failure): its answer is
/// never read. The attempt whose answer goes back is recorded when that answer's body ends,
/// as the request's own span is, with what the body carried. When the request is given up
/// first (the service's timeout, or the caller going away, drop it), the attempt is
/// recorded as cancelled: so the server side's span of that attempt never hangs under a
/// span that was not sent.
struct AttemptSpan {
    record: Option<RequestRecord>,
    start: Instant,
    telemetry: Telemetry,
    resolution: Resolution,
    /// What the attempt's request body has sent: its bytes, and a gRPC call's messages.
    request: Arc<RequestProgress>,
}

impl AttemptSpan {
    /// Starts the span of the attempt `req` makes, and has its body report to the span.
    fn start(req: &mut Request, telemetry: &Telemetry, resolution: &Resolution, attempt: u32, context: SpanContext) -> Self {
        let local = telemetry.identity().clone();
        let (authority, authority_port) = recorded_authority(req);
        let destination_service = authority.clone().unwrap_or_else(|| Arc::from("unknown"));
        let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let start = Instant::now();
        let request = RequestProgress::new(start, content_type.is_some_and(grpc_messages::countable));
        let record = RequestRecord {
            path: req.uri().path().to_owned(),
            query: crate::telemetry::recorded_query(req.uri()),
            authority_port,
            authority,
            version: req.version(),
            grpc: is_grpc(req),
            request_bytes: req.body().size_hint().exact().unwrap_or(0),
            source: Some(local),
            request_id: req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned),
            trace_state: context.trace_state(req.headers()),
            headers: telemetry.keep_request_headers(req.headers()),
            attempt: Some(attempt),
            ..RequestRecord::new(Side::Outbound, context, unix_nanos(SystemTime::now()), Some(req.method().clone()), destination_service)
        };
        let body = std::mem::take(req.body_mut());
        *req.body_mut() = body::boxed(ObservedBody::new(body, RequestObserver::new(request.clone())));
        Self { record: Some(record), start, telemetry: telemetry.clone(), resolution: resolution.clone(), request }
    }

    /// The record so far, timed to now, with the endpoint and route the attempt went to,
    /// what the layers under it noted (an ejection its failure caused, say), and what its
    /// request body has sent (and no response messages: none of its answer was read).
    fn take(&mut self) -> Option<RequestRecord> {
        let mut record = self.record.take()?;
        record.duration = self.start.elapsed();
        record.route = self.resolution.route().cloned();
        if let Some(endpoint) = self.resolution.endpoint() {
            record.destination = Some(endpoint.identity.clone());
            record.upstream = Some(endpoint.address);
        }
        self.resolution.record_notes(&mut record, self.start);
        sent(&mut record, &self.request, 0);
        Some(record)
    }

    /// Records the attempt at its response headers (or its failure), `retried` saying why
    /// another attempt follows.
    fn finish(mut self, result: &Result<Response, ProxyError>, retried: Option<&str>) {
        let Some(mut record) = self.take() else { return };
        match result {
            Ok(response) => answered(&mut record, response),
            Err(error) => {
                let (status, flags, grpc_code) = errors::status_and_flags(error);
                record.status = if record.grpc { 200 } else { status.as_u16() };
                record.grpc_status = record.grpc.then_some(grpc_code);
                record.flags = flags;
                let name = flags.failure_event().unwrap_or("error");
                record.events.push(SpanEvent { offset: record.duration, name, message: Some(error.to_string()) });
            }
        }
        if let Some(reason) = retried {
            record.events.push(SpanEvent { offset: record.duration, name: "retried", message: Some(reason.to_owned()) });
        }
        record.classification = classify::classify(record.status, record.grpc_status, BodyEnd::Complete, record.flags);
        self.telemetry.record(record);
    }

    /// The last attempt: a failure is recorded now; an answer, when its body ends.
    fn follow(mut self, result: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let result = Err(error);
                self.finish(&result, None);
                return result;
            }
        };
        let Some(mut record) = self.take() else { return Ok(response) };
        answered(&mut record, &response);
        let response_body = observe::Streaming::new(record, self.request.messages().is_some());
        let answer = Answer { response_body, start: self.start, telemetry: self.telemetry.clone(), request: self.request.clone() };
        Ok(response.map(|b| body::boxed(ObservedBody::new(b, answer))))
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        let Some(mut record) = self.take() else { return };
        let message = "the request was given up before this attempt was answered".to_owned();
        record.events.push(SpanEvent { offset: record.duration, name: "cancelled", message: Some(message) });
        record.classification = classify::classify(record.status, record.grpc_status, BodyEnd::Dropped, record.flags);
        self.telemetry.record(record);
    }
}

/// What an attempt's response headers say: its status, a gRPC status sent with them, and
/// the headers the configuration keeps.
fn answered(record: &mut RequestRecord, response: &Response) {
    record.status = response.status().as_u16();
    record.grpc_status = classify::grpc_status(response.headers());
    if let Some(kept) = record.headers.as_mut() {
        kept.add_response(response.headers());
    }
}

/// What the attempt's request body has sent, and for a gRPC call the messages `received`.
fn sent(record: &mut RequestRecord, request: &RequestProgress, received: u64) {
    record.request_bytes = record.request_bytes.max(request.bytes());
    record.grpc_messages = request.messages().map(|sent| (sent, received));
}

/// The span of the last attempt while its answer's body streams to the caller.
struct Answer {
    response_body: observe::Streaming,
    start: Instant,
    telemetry: Telemetry,
    request: Arc<RequestProgress>,
}

impl BodyObserver for Answer {
    fn on_data(&mut self, data: &[u8]) {
        self.response_body.data(data);
    }

    fn on_trailers(&mut self, trailers: &http::HeaderMap) {
        self.response_body.trailers(trailers);
    }

    fn on_error(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.response_body.error(error);
    }

    fn on_end(&mut self, end: BodyEnd) {
        let Some(mut record) = self.response_body.take() else { return };
        record.duration = self.start.elapsed();
        let offset = record.duration;
        sent(&mut record, &self.request, self.response_body.messages().unwrap_or(0));
        match end {
            BodyEnd::Complete => {}
            BodyEnd::Error => self.response_body.broken_off(&mut record, offset),
            BodyEnd::Dropped => {
                let message = "the request was given up before this attempt's answer ended".to_owned();
                record.events.push(SpanEvent { offset, name: "cancelled", message: Some(message) });
            }
        }
        record.classification = classify::classify(record.status, record.grpc_status, end, record.flags);
        self.telemetry.record(record);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        pin::Pin,
        sync::atomic::{AtomicU32, Ordering},
    };

    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt as _;

    use super::*;
    use crate::body::{self, BodyError};

    /// A body of unknown length (as a gRPC call's): chunks with no size hint.
    struct Chunks(VecDeque<&'static str>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))))
        }
    }

    fn on(conditions: &[&str]) -> RetryOn {
        let raw = crate::config::RawRetry {
            attempts: 3,
            on: conditions.iter().map(|c| (*c).to_owned()).collect(),
            per_try_timeout: Duration::ZERO,
            backoff: Duration::from_millis(1),
            max_body_bytes: 1024,
        };
        RetryPolicy::try_from(raw).expect("valid policy").on
    }

    fn response(status: u16, grpc: Option<i32>) -> Result<Response, ProxyError> {
        let mut r = Response::new(body::full(""));
        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
        if let Some(code) = grpc {
            r.headers_mut().insert("grpc-status", code.into());
        }
        Ok(r)
    }

    #[test]
    fn only_the_named_failures_are_retried() {
        let gateway = on(&["gateway-error"]);
        assert!(retry_reason(&gateway, &response(503, None)).is_some());
        assert!(retry_reason(&gateway, &response(500, None)).is_none(), "500 is not a gateway error");
        assert!(retry_reason(&on(&["5xx"]), &response(500, None)).is_some());
        assert!(retry_reason(&on(&["5xx"]), &response(404, None)).is_none());
        assert!(retry_reason(&on(&["unavailable"]), &response(200, Some(14))).is_some());
        assert!(retry_reason(&on(&["unavailable"]), &response(200, Some(13))).is_none());
        let addr = ([127, 0, 0, 1], 1).into();
        let reset = Err(ProxyError::UpstreamReset { addr, source: "reset".into() });
        let protocol = Err(ProxyError::UpstreamProtocol { addr, reason: "invalid HTTP status-code parsed".into() });
        let connect = Err(ProxyError::UpstreamConnect { addr, source: "refused".into() });
        for failure in [&reset, &protocol] {
            assert!(retry_reason(&on(&["reset"]), failure).is_some());
            assert!(retry_reason(&on(&["connect-failure"]), failure).is_none());
        }
        assert!(retry_reason(&on(&["connect-failure"]), &connect).is_some());
        assert!(retry_reason(&on(&["reset"]), &connect).is_none());
        // As in Envoy, a failure to get any answer counts as the 5xx it ends in.
        for failure in [&reset, &protocol, &connect] {
            assert!(retry_reason(&on(&["5xx"]), failure).is_some());
            assert!(retry_reason(&on(&["gateway-error"]), failure).is_some());
            assert!(retry_reason(&on(&["unavailable"]), failure).is_none());
        }
        assert!(retry_reason(&on(&["5xx"]), &Err(ProxyError::NoRoute { service: "x".into() })).is_none(), "no route is final");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_ten_times_the_base() {
        let base = Duration::from_millis(20);
        for _ in 0..100 {
            let first = backoff(base, 1);
            assert!(first >= base / 2 && first <= base);
            let fourth = backoff(base, 4);
            assert!(fourth >= base * 4 && fourth <= base * 8);
            assert!(backoff(base, 9) <= base * 10);
        }
    }

    #[test]
    fn bad_policies_are_rejected() {
        let raw = |attempts, on: &str| crate::config::RawRetry {
            attempts,
            on: vec![on.to_owned()],
            per_try_timeout: Duration::ZERO,
            backoff: Duration::from_millis(25),
            max_body_bytes: 1024,
        };
        assert!(RetryPolicy::try_from(raw(1, "5xx")).is_err());
        assert!(RetryPolicy::try_from(raw(11, "5xx")).is_err());
        assert!(RetryPolicy::try_from(raw(3, "sometimes")).is_err());
    }

    /// Fails the first `failures` calls with 503, then answers 200; echoes the body length.
    #[derive(Clone)]
    struct Flaky {
        calls: Arc<AtomicU32>,
        failures: u32,
    }

    impl Service<Request> for Flaky {
        type Response = Response;
        type Error = ProxyError;
        type Future = BoxFuture<Result<Response, ProxyError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request) -> Self::Future {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let failures = self.failures;
            Box::pin(async move {
                let body = req.into_body().collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
                let status = if n < failures { 503 } else { 200 };
                let mut r = Response::new(body::full(body.to_string()));
                *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                Ok(r)
            })
        }
    }

    fn request_for(policy: Option<RetryPolicy>, body_text: &'static str) -> (Request, Resolution) {
        let service = crate::config::ServiceConfig {
            name: "payments".into(),
            namespace: "shop".into(),
            endpoints: vec![],
            routes: Arc::default(),
            timeout: None,
            max_grpc_timeout: None,
            retry: policy.map(Arc::new),
            outlier: None,
        };
        let resolution = Resolution::default();
        let mut req = http::Request::post("http://payments/charge").body(body::full(body_text)).expect("request");
        req.extensions_mut().insert(Arc::new(service));
        req.extensions_mut().insert(resolution.clone());
        (req, resolution)
    }

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            on: on(&["gateway-error"]),
            per_try_timeout: None,
            backoff: Duration::from_millis(1),
            max_body_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn each_grpc_attempt_is_told_the_time_it_has() {
        use super::super::timeout::grpc_timeout;
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        // (per-try timeout, the call's time left): what each of two attempts may be told.
        for (per_try, left, most) in [(Some(ms(300)), secs(2), ms(300)), (Some(secs(1)), ms(200), ms(200)), (None, ms(200), ms(200))] {
            let told = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = told.clone();
            let inner = tower::service_fn(move |req: Request| -> BoxFuture<Result<Response, ProxyError>> {
                let mut told = seen.lock().expect("lock");
                told.push(grpc_timeout(req.headers()));
                let status = if told.len() == 1 { 503 } else { 200 };
                Box::pin(async move { response(status, None) })
            });
            let mut retry = RetryLayer::new(crate::telemetry::tests::telemetry()).layer(inner);
            let (mut req, _) = request_for(Some(RetryPolicy { per_try_timeout: per_try, ..policy(2) }), "");
            req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            req.headers_mut().insert(super::super::timeout::GRPC_TIMEOUT, http::HeaderValue::from_static("9S"));
            req.extensions_mut().insert(Deadline(Instant::now() + left));
            let response = retry.ready().await.expect("ready").call(req).await.expect("response");
            assert_eq!(response.status(), 200);
            let told = told.lock().expect("lock").clone();
            assert_eq!(told.len(), 2, "{told:?}");
            assert!(told.iter().all(|t| t.is_some_and(|t| t <= most && t > Duration::ZERO)), "{per_try:?} {left:?}: {told:?}");
            if per_try.is_none_or(|p| p > left) {
                assert!(told[1] < told[0], "the second attempt has less time left: {told:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_failed_attempt_is_retried_with_the_same_body_and_noted() {
        let calls = Arc::new(AtomicU32::new(0));
        let telemetry = crate::telemetry::tests::telemetry();
        let mut registry = prometheus_client::registry::Registry::default();
        telemetry.stats().register(&mut registry);
        let mut retry = RetryLayer::new(telemetry).layer(Flaky { calls: calls.clone(), failures: 2 });
        let (req, resolution) = request_for(Some(policy(3)), "card=4242");
        let response = retry.ready().await.expect("ready").call(req).await.expect("response");
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"9", "the third attempt got the whole body again");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let notes = resolution.notes();
        assert_eq!((resolution.retries(), notes.len()), (2, 2));
        assert_eq!((notes[0].name, notes[0].message.as_str()), (RETRY, "upstream answered 503"));
        let mut exposed = String::new();
        prometheus_client::encoding::text::encode(&mut exposed, &registry).expect("encode");
        let line = "meshlens_proxy_request_retries_total{service=\"payments\"} 2";
        assert!(exposed.lines().any(|l| l == line), "{line} in\n{exposed}");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_retried_while_it_fits_and_sent_once_past_it() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut retry = RetryLayer::new(crate::telemetry::tests::telemetry()).layer(Flaky { calls: calls.clone(), failures: 1 });
        for (chunks, calls_made, answer) in [(vec!["card=", "4242"], 2, ("200", "9")), (vec!["x"; 1025], 1, ("503", "1025"))] {
            calls.store(0, Ordering::SeqCst);
            let (mut req, resolution) = request_for(Some(policy(3)), "");
            *req.body_mut() = body::boxed(Chunks(chunks.into()));
            assert_eq!(req.body().size_hint().upper(), None);
            let response = retry.ready().await.expect("ready").call(req).await.expect("response");
            let status = response.status();
            let body = response.into_body().collect().await.expect("body").to_bytes();
            assert_eq!((status.as_str(), std::str::from_utf8(&body).expect("text")), answer);
            assert_eq!((calls.load(Ordering::SeqCst), resolution.retries() as u32), (calls_made, calls_made - 1), "1,024 bytes are kept");
            let abandoned: Vec<String> = resolution.notes().into_iter().filter(|n| n.name == NOT_RETRIED).map(|n| n.message).collect();
            let outgrew = "upstream answered 503; the request body outgrew the 1024 bytes kept to send it again";
            let expected = (calls_made == 1).then(|| outgrew.to_owned());
            assert_eq!(abandoned, Vec::from_iter(expected));
        }
    }

    #[tokio::test]
    async fn a_body_announced_larger_than_is_kept_goes_once_and_its_failure_says_so() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut retry = RetryLayer::new(crate::telemetry::tests::telemetry()).layer(Flaky { calls: calls.clone(), failures: 1 });
        let (mut req, resolution) = request_for(Some(policy(3)), "");
        *req.body_mut() = body::full(vec![b'x'; 2_000]);
        let response = retry.ready().await.expect("ready").call(req).await.expect("response");
        assert_eq!((response.status().as_u16(), calls.load(Ordering::SeqCst), resolution.retries()), (503, 1, 0));
        let notes = resolution.notes();
        assert_eq!(notes.iter().map(|n| n.name).collect::<Vec<_>>(), [NOT_RETRIED]);
        let expected = "upstream answered 503; the request body (2000 bytes) is larger than the 1024 kept to send it again";
        assert_eq!(notes[0].message, expected);
    }

    #[tokio::test]
    async fn attempts_stop_at_the_limit_and_without_a_policy_there_is_one() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut retry = RetryLayer::new(crate::telemetry::tests::telemetry()).layer(Flaky { calls: calls.clone(), failures: 10 });
        let (req, resolution) = request_for(Some(policy(2)), "");
        let response = retry.ready().await.expect("ready").call(req).await.expect("response");
        assert_eq!(response.status(), 503, "the last attempt's answer goes back");
        assert_eq!((calls.load(Ordering::SeqCst), resolution.retries()), (2, 1));

        calls.store(0, Ordering::SeqCst);
        let (req, resolution) = request_for(None, "");
        let response = retry.ready().await.expect("ready").call(req).await.expect("response");
        assert_eq!((response.status().as_u16(), calls.load(Ordering::SeqCst), resolution.retries()), (503, 1, 0));
    }
}
