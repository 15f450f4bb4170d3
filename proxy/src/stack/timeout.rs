//! Bounds how long the upstream may take to answer, counted until the response headers
//! arrive, so long streaming bodies are not cut: an outbound HTTP request by the resolved
//! service's `timeout` (default 15 s, as Envoy's route timeout; inbound ones, which resolve
//! no service, are not bounded); a gRPC call, on both sides, by its caller's deadline
//! (`grpc-timeout`), none without one, either capped at the service's timeout only when
//! one was set (as Istio has Envoy do: `max_grpc_timeout` 0, no cap, unless a route
//! timeout is set, which then caps it). An expired request fails with [`ProxyError::Timeout`]: 504 with response flag `UT`
//! (gRPC: DEADLINE_EXCEEDED). The limit is noted in the request's [`Resolution`], so that
//! the observe layer knows the wait is bounded.
//!
//! A gRPC call's limit goes upstream as its `grpc-timeout` when it is shorter than the
//! caller's (so the server knows the time it really has), and its end as a [`Deadline`],
//! by which the retry layer tells each attempt the time left.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower::{Layer, Service};

use crate::{config::ServiceConfig, error::ProxyError};

use super::{BoxFuture, Request, Resolution, is_grpc};

/// gRPC's deadline header.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// When a gRPC call's limit runs out (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// A call's `grpc-timeout`: at most 8 digits and a unit, `H`, `M`, `S`, `m`, `u` or `n`
/// (hours to nanoseconds); `None` when absent or not of that form.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let (&unit, digits) = headers.get(GRPC_TIMEOUT)?.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `limit` as a `grpc-timeout` value: in the finest unit that holds it in 8 digits, rounded
/// up (a call is not told it has less time than it has).
pub fn grpc_timeout_value(limit: Duration) -> HeaderValue {
    const UNITS: [(u128, char); 6] =
        [(1, 'n'), (1_000, 'u'), (1_000_000, 'm'), (1_000_000_000, 'S'), (60_000_000_000, 'M'), (3_600_000_000_000, 'H')];
    let nanos = limit.as_nanos();
    let (count, unit) = UNITS.iter().map(|&(per, unit)| (nanos.div_ceil(per), unit)).find(|(n, _)| *n < 100_000_000).unwrap_or((99_999_999, 'H'));
    let mut value = String::with_capacity(9);
    crate::telemetry::text::push_uint(&mut value, u64::try_from(count).unwrap_or(99_999_999));
    value.push(unit);
    HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("99999999H"))
}

/// The time a request may wait for its answer, and whether that is shorter than its
/// caller's deadline (so that the call's `grpc-timeout` must be rewritten).
fn limit_of(req: &Request) -> (Option<Duration>, bool) {
    let service = req.extensions().get::<Arc<ServiceConfig>>();
    if !is_grpc(req) {
        return (service.and_then(|s| s.timeout), false);
    }
    let cap = service.and_then(|s| s.max_grpc_timeout);
    match (grpc_timeout(req.headers()), cap) {
        (Some(deadline), Some(cap)) if cap < deadline => (Some(cap), true),
        (Some(deadline), _) => (Some(deadline), false),
        (None, cap) => (cap, cap.is_some()),
    }
}

/// Adds [`Timeout`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}

/// Fails requests whose upstream does not answer in time.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
}

impl<S> Service<Request> for Timeout<S>
where
    S: Service<Request, Error = ProxyError, Future = BoxFuture<Result<<S as Service<Request>>::Response, ProxyError>>>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let (limit, shorter) = limit_of(&req);
        let Some(limit) = limit else { return self.inner.call(req) };
        if let Some(resolution) = req.extensions().get::<Resolution>() {
            resolution.set_answer_limit(limit);
        }
        if shorter {
            req.headers_mut().insert(GRPC_TIMEOUT, grpc_timeout_value(limit));
        }
        if is_grpc(&req) {
            req.extensions_mut().insert(Deadline(Instant::now() + limit));
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::Timeout { after: limit }),
            }
        })
    }
}

/// How often [`keep_timer_armed`] wakes.
pub const ANCHOR_PERIOD: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`ANCHOR_PERIOD`] always pending on the runtime it runs on.
///
/// tokio's timer wakes its own driver (an eventfd write, then an extra `epoll_wait` round)
/// whenever a new timer is due earlier than every pending one. At low request rates no
/// timer is pending between requests, so each request's timeout paid that wake: 0.8 extra
/// syscalls per request at 1,000 req/s (`perf stat`, `meshlens bench proxy`). With a timer
/// always due within a second, timeouts longer than that register without waking anything;
/// shorter ones wake the driver as before, so every deadline still fires on time.
pub async fn keep_timer_armed() {
    let mut tick = tokio::time::interval(ANCHOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    fn service(timeout: Option<Duration>, max_grpc_timeout: Option<Duration>) -> Arc<ServiceConfig> {
        Arc::new(ServiceConfig {
            name: "reviews".into(),
            namespace: "shop".into(),
            endpoints: Vec::new(),
            routes: Arc::default(),
            timeout,
            max_grpc_timeout,
            retry: None,
            outlier: None,
        })
    }

    /// What the layer under the timeout layer got of a request to `service` with `headers`
    /// (its `grpc-timeout`, whether it has a [`Deadline`]), the limit noted for the observe
    /// layer, and whether an answer taking `answer` came back or the request timed out.
    async fn bounded(service: Arc<ServiceConfig>, headers: &[(&'static str, &'static str)], answer: Duration) -> Bounded {
        let resolution = Resolution::default();
        let mut req = Request::new(crate::body::full(""));
        for (name, value) in headers {
            req.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        req.extensions_mut().insert(service);
        req.extensions_mut().insert(resolution.clone());
        let seen = Arc::new(std::sync::Mutex::new(None));
        let inner = seen.clone();
        let answer = move |req: Request| -> BoxFuture<Result<(), ProxyError>> {
            let header = req.headers().get(GRPC_TIMEOUT).map(|v| v.to_str().unwrap_or_default().to_owned());
            *inner.lock().expect("lock") = Some((header, req.extensions().get::<Deadline>().is_some()));
            Box::pin(async move {
                tokio::time::sleep(answer).await;
                Ok(())
            })
        };
        let result = TimeoutLayer.layer(tower::service_fn(answer)).oneshot(req).await;
        let (header, deadline) = seen.lock().expect("lock").take().expect("called");
        Bounded { header, deadline, noted: resolution.answer_limit(), timed_out: matches!(result, Err(ProxyError::Timeout { .. })) }
    }

    #[derive(Debug, PartialEq)]
    struct Bounded {
        header: Option<String>,
        deadline: bool,
        noted: Option<Duration>,
        timed_out: bool,
    }

    const GRPC: (&str, &str) = ("content-type", "application/grpc");

    #[tokio::test]
    async fn http_requests_have_the_service_timeout_noted_for_the_observe_layer() {
        let quick = Duration::from_millis(1);
        for limit in [Some(Duration::from_secs(15)), None] {
            let got = bounded(service(limit, None), &[], quick).await;
            assert_eq!(got, Bounded { header: None, deadline: false, noted: limit, timed_out: false });
        }
        let slow = bounded(service(Some(Duration::from_millis(20)), None), &[], Duration::from_secs(5)).await;
        assert!(slow.timed_out, "{slow:?}");
        // `grpc-timeout` means nothing outside gRPC.
        let got = bounded(service(Some(Duration::from_secs(15)), None), &[("grpc-timeout", "1S")], quick).await;
        assert_eq!((got.noted, got.header.as_deref()), (Some(Duration::from_secs(15)), Some("1S")));
    }

    #[tokio::test]
    async fn grpc_calls_wait_as_long_as_their_deadline_allows_up_to_the_services_cap() {
        let (secs, ms) = (Duration::from_secs, Duration::from_millis);
        // No deadline, no cap: not bounded, whatever the service timeout (a stream may stay
        // quiet long before its first message).
        let got = bounded(service(Some(ms(20)), None), &[GRPC], ms(100)).await;
        assert_eq!(got, Bounded { header: None, deadline: false, noted: None, timed_out: false });
        // The caller's deadline, longer than the service timeout, is the limit; it goes on as sent.
        let got = bounded(service(Some(ms(20)), None), &[GRPC, ("grpc-timeout", "5S")], ms(100)).await;
        assert_eq!(got, Bounded { header: Some("5S".into()), deadline: true, noted: Some(secs(5)), timed_out: false });
        let got = bounded(service(None, None), &[GRPC, ("grpc-timeout", "30m")], secs(5)).await;
        assert!(got.timed_out && got.noted == Some(ms(30)), "{got:?}");
        // A cap shorter than the deadline, or no deadline, bounds the call and goes upstream.
        let got = bounded(service(None, Some(secs(2))), &[GRPC, ("grpc-timeout", "1M")], ms(1)).await;
        assert_eq!(got, Bounded { header: Some("2000000u".into()), deadline: true, noted: Some(secs(2)), timed_out: false });
        let got = bounded(service(None, Some(secs(2))), &[GRPC], ms(1)).await;
        assert_eq!((got.header.as_deref(), got.noted), (Some("2000000u"), Some(secs(2))));
        let got = bounded(service(None, Some(secs(2))), &[GRPC, ("grpc-timeout", "500m")], ms(1)).await;
        assert_eq!((got.header.as_deref(), got.noted), (Some("500m"), Some(ms(500))), "a shorter deadline stays");
        // A malformed deadline is no deadline.
        let got = bounded(service(None, None), &[GRPC, ("grpc-timeout", "1.5S")], ms(1)).await;
        assert_eq!(got.noted, None);
    }

    #[test]
    fn grpc_timeouts_read_and_written() {
        let read = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_TIMEOUT, HeaderValue::from_bytes(value.as_bytes()).expect("a header value"));
            grpc_timeout(&headers)
        };
        let (secs, ms) = (Duration::from_secs, Duration::from_millis);
        for (value, expected) in [
            ("1H", Some(secs(3600))),
            ("2M", Some(secs(120))),
            ("30S", Some(secs(30))),
            ("250m", Some(ms(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("99999999H", Some(secs(99_999_999 * 3600))),
            ("0S", Some(Duration::ZERO)),
        ] {
            assert_eq!(read(value), expected, "{value}");
        }
        for malformed in ["", "S", "100000000S", "1s", "1.5S", "-1S", " 1S", "1 S", "1x", "١S"] {
            assert_eq!(read(malformed), None, "{malformed:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
        for (limit, written) in [
            (Duration::from_nanos(5), "5n"),
            (Duration::from_nanos(123_456_789), "123457u"),
            (secs(2), "2000000u"),
            (secs(1800), "1800000m"),
            (secs(30 * 24 * 3600), "2592000S"),
            (secs(99_999_999 * 3600 + 1), "99999999H"),
        ] {
            assert_eq!(grpc_timeout_value(limit), written, "{limit:?}");
        }
        // Read back, a written limit is never shorter than it was.
        for limit in [Duration::from_nanos(123_456_789), Duration::from_micros(100_000_001), secs(7 * 24 * 3600 + 1)] {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_TIMEOUT, grpc_timeout_value(limit));
            assert!(grpc_timeout(&headers).is_some_and(|read| read >= limit), "{limit:?}");
        }
    }
}
