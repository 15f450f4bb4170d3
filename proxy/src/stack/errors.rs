//! Turns every [`ProxyError`] into a response the caller can read.
//!
//! HTTP callers get a status (404 no route, 503 unreachable, 502 reset, 504 timeout, 400 bad
//! request; the observe layer's stream idle timeout, 408), a `meshlens-proxy-error` header
//! and a one-line text body; gRPC callers get a trailers-only response with the matching
//! `grpc-status`. The response carries the [`ResponseFlags`] that telemetry records. Nothing
//! below this layer can fail the connection.

use std::{convert::Infallible, task::{Context, Poll}};

use http::{HeaderValue, StatusCode};
use tower::{Layer, Service};

use crate::{body, classify::ResponseFlags, error::ProxyError};

use super::{BoxFuture, Request, Response, is_grpc};

/// Header naming the sidecar's error, on responses the sidecar generated.
pub const ERROR_HEADER: &str = "meshlens-proxy-error";

/// Adds [`Errors`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsLayer;

impl<S> Layer<S> for ErrorsLayer {
    type Service = Errors<S>;
    fn layer(&self, inner: S) -> Errors<S> {
        Errors { inner }
    }
}

/// Maps errors of the inner service to responses.
#[derive(Debug, Clone)]
pub struct Errors<S> {
    inner: S,
}

impl<S> Service<Request> for Errors<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner layers are always ready; a readiness error would be a proxy error too.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let grpc = is_grpc(&req);
        let fut = self.inner.call(req);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(response) => response,
                Err(error) => error_response(&error, grpc),
            })
        })
    }
}

/// The status and flag for an error.
pub fn status_and_flags(error: &ProxyError) -> (StatusCode, ResponseFlags, i32) {
    match error {
        ProxyError::NoAuthority | ProxyError::BadRequest(_) => {
            (StatusCode::BAD_REQUEST, ResponseFlags::BAD_REQUEST, 3)
        }
        // gRPC's code for metadata over a limit.
        ProxyError::HeadersTooLarge { .. } => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, ResponseFlags::BAD_REQUEST, 8),
        ProxyError::UnsupportedTransferCoding { .. } => (StatusCode::NOT_IMPLEMENTED, ResponseFlags::BAD_REQUEST, 12),
        ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, ResponseFlags::NO_ROUTE, 12),
        ProxyError::NoEndpoint { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::NO_HEALTHY_UPSTREAM, 14)
        }
        ProxyError::UpstreamConnect { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::UPSTREAM_CONNECT_FAILURE, 14)
        }
        ProxyError::UpstreamReset { .. } => (StatusCode::BAD_GATEWAY, ResponseFlags::UPSTREAM_RESET, 14),
        ProxyError::UpstreamProtocol { .. } => (StatusCode::BAD_GATEWAY, ResponseFlags::UPSTREAM_PROTOCOL_ERROR, 14),
        ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, ResponseFlags::UPSTREAM_TIMEOUT, 4),
        ProxyError::StreamIdle { .. } => (StatusCode::REQUEST_TIMEOUT, ResponseFlags::STREAM_IDLE_TIMEOUT, 4),
        ProxyError::RequestBody { malformed: true, .. } => (StatusCode::BAD_REQUEST, ResponseFlags::BAD_REQUEST, 3),
        // The caller is gone and reads no answer; its record says what happened.
        ProxyError::RequestBody { malformed: false, .. } => (StatusCode::BAD_REQUEST, ResponseFlags::DOWNSTREAM_TERMINATED, 1),
    }
}

/// Builds the response for `error`.
pub fn error_response(error: &ProxyError, grpc: bool) -> Response {
    let (status, flags, grpc_code) = status_and_flags(error);
    tracing::debug!(%error, %flags, "request failed in the sidecar");
    let message = error.to_string();
    let header = HeaderValue::from_str(&message)
        .unwrap_or_else(|_| HeaderValue::from_static("request failed in the sidecar"));
    let mut response = if grpc {
        let mut r = Response::new(body::full(""));
        let headers = r.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(grpc_code));
        headers.insert("grpc-message", header.clone());
        r
    } else {
        let mut r = Response::new(body::full(format!("meshlens-proxy: {message}\n")));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    response.headers_mut().insert(ERROR_HEADER, header);
    response.extensions_mut().insert(flags);
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_stream_idle_timeout_answers_408_or_deadline_exceeded_with_flag_si() {
        let error = ProxyError::StreamIdle { after: Duration::from_secs(300) };
        let http = error_response(&error, false);
        assert_eq!(http.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(http.extensions().get::<ResponseFlags>(), Some(&ResponseFlags::STREAM_IDLE_TIMEOUT));
        let header = http.headers().get(ERROR_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(header.contains("stream idle timeout"), "{header}");

        // gRPC callers read the status from a trailers-only response.
        let grpc = error_response(&error, true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"4"[..]));
        assert_eq!(grpc.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()), Some(&b"application/grpc"[..]));
        assert_eq!(grpc.extensions().get::<ResponseFlags>(), Some(&ResponseFlags::STREAM_IDLE_TIMEOUT));
    }
}
