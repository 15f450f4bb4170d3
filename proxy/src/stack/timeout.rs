//! Bounds how long the upstream may take to answer: the resolved service's `timeout`
//! (default 15 s, as Envoy's route timeout), counted until the response headers arrive, so
//! long streaming bodies are not cut. An expired request fails with
//! [`ProxyError::Timeout`]: 504 with response flag `UT` (gRPC: DEADLINE_EXCEEDED).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower::{Layer, Service};

use crate::{config::ServiceConfig, error::ProxyError};

use super::{BoxFuture, Request};

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
    S: Service<Request, Error = ProxyError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let limit = req.extensions().get::<Arc<ServiceConfig>>().and_then(|s| s.timeout);
        let fut = self.inner.call(req);
        let Some(limit) = limit else { return Box::pin(fut) };
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::Timeout { after: limit }),
            }
        })
    }
}
