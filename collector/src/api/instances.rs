//! `GET /api/v1/instances`: the process figures of every instance that exports them
//! (sidecars, and applications whose OpenTelemetry SDK sends `process.*` metrics), each
//! with its CPU use between its last two readings, optionally only those of one
//! `namespace`, `service`, `workload`, `version` or `sdk` (`meshlens-proxy` for the
//! sidecars).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde::Deserialize;

use crate::{instances::InstanceView, pipeline::Pipeline};

use super::error::{ApiError, poisoned};

/// Query parameters: each one given must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceParams {
    /// `service.namespace`.
    pub namespace: Option<String>,
    /// `service.name`.
    pub service: Option<String>,
    /// `meshlens.workload`.
    pub workload: Option<String>,
    /// `service.version`.
    pub version: Option<String>,
    /// `telemetry.sdk.name`.
    pub sdk: Option<String>,
}

impl InstanceParams {
    fn admits(&self, view: &InstanceView) -> bool {
        let k = &view.key;
        let is = |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        is(&self.namespace, &k.namespace)
            && is(&self.service, &k.service)
            && is(&self.workload, &k.workload)
            && is(&self.version, &k.version)
            && is(&self.sdk, &k.sdk)
    }
}

/// The routes.
pub fn routes() -> Router<Arc<Pipeline>> {
    Router::new().route("/api/v1/instances", get(instances))
}

async fn instances(State(pipeline): State<Arc<Pipeline>>, Query(p): Query<InstanceParams>) -> Result<Json<Vec<InstanceView>>, ApiError> {
    let list = pipeline.metrics.instances.lock().map_err(poisoned)?.list();
    Ok(Json(list.into_iter().filter(|view| p.admits(view)).collect()))
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::{
        config::CollectorConfig,
        instances::tests::{reading, resource},
    };

    use super::*;

    #[tokio::test]
    async fn instances_are_listed_with_their_cpu_rate_and_filtered() {
        let pipeline = Pipeline::new(&CollectorConfig::default());
        for (service, instance) in [("checkout", "a"), ("checkout", "b"), ("payments", "c")] {
            let r = resource(service, instance);
            pipeline.metrics.observe_points(&reading(&r, 100, 1.0, 0.0, 8e6));
            pipeline.metrics.observe_points(&reading(&r, 110, 1.5, 0.5, 9e6));
        }
        let app = crate::api::app(pipeline);
        let get = |uri: &str| {
            let app = app.clone();
            let request = Request::get(uri).body(Body::empty()).expect("request");
            async move {
                let response = app.oneshot(request).await.expect("infallible");
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.expect("body").to_bytes();
                (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default())
            }
        };
        let (status, all) = get("/api/v1/instances").await;
        assert_eq!((status, all.as_array().map(Vec::len)), (200, Some(3)), "{all}");
        let (_, checkout) = get("/api/v1/instances?service=checkout&sdk=meshlens-proxy").await;
        let listed: Vec<&str> = checkout.as_array().into_iter().flatten().filter_map(|i| i["instance"].as_str()).collect();
        assert_eq!(listed, ["a", "b"]);
        let first = &checkout[0];
        assert_eq!((first["workload"].as_str(), first["resident_bytes"].as_f64()), (Some("checkout-v1"), Some(9e6)));
        assert!((first["cpu_cores"].as_f64().unwrap_or_default() - 0.1).abs() < 1e-9, "{first}");
        assert_eq!(first["last_seen_ms"], 110_000);
        let (_, none) = get("/api/v1/instances?sdk=opentelemetry").await;
        assert_eq!(none, serde_json::json!([]));
        let (status, _) = get("/api/v1/instances?pod=x").await;
        assert_eq!(status, 400);
    }
}
