//! The web port: UI, topology, Jaeger query API, logs and Prometheus `/metrics`, each a
//! function returning a `Router`, merged into one [`app`].

pub mod error;
pub mod jaeger;
pub mod logs;
pub mod metrics;
pub mod topology;
pub mod ui;

use std::sync::Arc;

use axum::Router;

use crate::pipeline::Pipeline;

/// The whole web application.
pub fn app(pipeline: Arc<Pipeline>) -> Router {
    Router::new()
        .merge(topology::routes())
        .merge(jaeger::routes())
        .merge(logs::routes())
        .merge(metrics::routes())
        .merge(ui::routes())
        .with_state(pipeline)
}
