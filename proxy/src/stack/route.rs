//! Resolves the destination service of an outbound request from its authority.
//!
//! Applications address services by name (`http://reviews/...`, or `Host: reviews`);
//! `reviews.shop` and `reviews.shop.svc.cluster.local` name the same service when its
//! namespace is `shop`. An unknown name fails with [`ProxyError::NoRoute`]. The path's
//! route template, if the service has one that matches, is recorded for telemetry.

use std::{collections::HashMap, sync::Arc, task::{Context, Poll}};

use tower::{Layer, Service};

use crate::{config::ServiceConfig, error::ProxyError};

use super::{Request, Resolution, request_authority};

/// The service table, by name.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    services: Arc<HashMap<Arc<str>, Arc<ServiceConfig>>>,
}

impl RouteLayer {
    /// Builds the table from the configured services.
    pub fn new(services: &[Arc<ServiceConfig>]) -> Self {
        let services = services.iter().map(|s| (s.name.clone(), s.clone())).collect();
        Self { services: Arc::new(services) }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route { inner, services: self.services.clone() }
    }
}

/// Puts the request's [`ServiceConfig`] into its extensions.
#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
    services: Arc<HashMap<Arc<str>, Arc<ServiceConfig>>>,
}

impl<S> Route<S> {
    fn resolve(&self, host: &str) -> Option<&Arc<ServiceConfig>> {
        if let Some(service) = self.services.get(host) {
            return Some(service);
        }
        let (name, rest) = host.split_once('.')?;
        let service = self.services.get(name)?;
        let namespace = rest.split('.').next()?;
        (namespace == &*service.namespace).then_some(service)
    }
}

impl<S> Service<Request> for Route<S>
where
    S: Service<Request, Error = ProxyError, Future = super::BoxFuture<Result<<S as Service<Request>>::Response, ProxyError>>>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some((host, _)) = request_authority(&req) else {
            return Box::pin(std::future::ready(Err(ProxyError::NoAuthority)));
        };
        let Some(service) = self.resolve(&host).cloned() else {
            return Box::pin(std::future::ready(Err(ProxyError::NoRoute { service: host.into_owned() })));
        };
        if let (Some(resolution), Some(route)) = (req.extensions().get::<Resolution>(), service.routes.route(req.uri().path())) {
            resolution.set_route(route.clone());
        }
        req.extensions_mut().insert(service);
        self.inner.call(req)
    }
}
