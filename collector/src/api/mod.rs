//! The web port: UI, topology, Jaeger query API, logs and Prometheus `/metrics`, each a
//! function returning a `Router`, merged into one [`app`].

pub mod error;
pub mod instances;
pub mod jaeger;
pub mod jaeger_v3;
pub mod logs;
pub mod metrics;
pub mod sql;
pub mod topology;
pub mod ui;

use std::sync::Arc;

use axum::Router;

use crate::pipeline::Pipeline;

/// The whole web application.
pub fn app(pipeline: Arc<Pipeline>) -> Router {
    Router::new()
        .merge(topology::routes())
        .merge(instances::routes())
        .merge(jaeger::routes())
        .merge(jaeger_v3::routes())
        .merge(logs::routes())
        .merge(metrics::routes())
        .merge(sql::routes())
        .merge(ui::routes())
        .with_state(pipeline)
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::config::CollectorConfig;

    async fn call(uri: &str) -> (u16, Option<String>, String) {
        let app = app(Pipeline::new(&CollectorConfig::default()));
        let response = app.oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("infallible");
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, content_type, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn topology_rejects_bad_windows_plainly() {
        let (status, _, body) = call("/api/v1/topology?window=banana").await;
        assert_eq!(status, 400);
        assert!(body.contains("window"), "{body}");
        let (status, _, body) = call("/api/v1/topology?window=60s&group=planets").await;
        assert_eq!(status, 400, "{body}");
        let (status, _, body) = call("/api/v1/topology?window=60s").await;
        assert_eq!(status, 200);
        assert!(body.contains("\"nodes\":[]"), "{body}");
    }

    #[tokio::test]
    async fn series_cover_the_window_but_its_newest_seconds_and_need_a_target() {
        let (status, _, body) = call("/api/v1/series?target=a&window=60s").await;
        assert_eq!(status, 200);
        let points: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
        assert!((58..=60).contains(&points.len()), "{} points", points.len());
        assert!(points.iter().all(|p| p["request_rate"] == 0.0 && p["seconds"] == 1));
        let now_ms = crate::pipeline::now_nanos() / 1_000_000;
        let newest = points.last().and_then(|p| p["t"].as_u64()).unwrap_or(u64::MAX);
        assert!(newest + 2_000 <= now_ms, "the seconds still arriving are left out: {newest} at {now_ms}");
        let (status, _, _) = call("/api/v1/series?window=60s").await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn jaeger_errors_use_the_envelope() {
        let (status, _, body) = call("/api/traces/abc").await;
        assert_eq!(status, 404);
        assert!(body.contains("\"code\":404") && body.contains("\"data\":null"), "{body}");
        let (status, _, body) = call("/api/traces/not-hex").await;
        assert_eq!(status, 400, "{body}");
        let (status, _, body) = call("/api/traces?limit=5").await;
        assert_eq!(status, 400);
        assert!(body.contains("parameter 'service' is required"), "{body}");
        let (status, _, body) = call("/api/traces?service=a&minDuration=5ms&maxDuration=1ms").await;
        assert_eq!(status, 400, "{body}");
        let (status, _, body) = call("/api/traces?service=a&tag=novalue").await;
        assert_eq!(status, 400, "{body}");
        let (status, _, body) = call("/api/services").await;
        assert_eq!((status, body.as_str()), (200, r#"{"data":[],"errors":null,"limit":0,"offset":0,"total":0}"#));
    }

    #[tokio::test]
    async fn metrics_and_ui_are_served() {
        let (status, content_type, body) = call("/metrics").await;
        assert_eq!(status, 200);
        assert!(content_type.is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
        assert!(!body.contains("# EOF"), "{body}");
        let (status, content_type, _) = call("/").await;
        assert_eq!((status, content_type.as_deref()), (200, Some("text/html; charset=utf-8")));
        let (status, _, _) = call("/ui/../../etc/passwd").await;
        assert_eq!(status, 404);
    }
}
