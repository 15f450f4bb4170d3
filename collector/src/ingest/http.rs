//! OTLP/HTTP receiver: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, with protobuf
//! (`application/x-protobuf`) or JSON (`application/json`) bodies, answered in the same
//! encoding. A body that cannot be decoded gets 400 with a `google.rpc.Status`-shaped
//! message saying why; an unsupported content type or encoding gets 415 (gzip and zstd
//! bodies are inflated, up to the size limit). When the ingest
//! budget is full the answer is 429 with `Retry-After` (retryable, per OTLP).

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use meshlens_common::rpc::RpcStatus;
use prost::Message;

use crate::pipeline::Transport;

use super::{Ingest, Logs, Metrics, Signal, Traces, grpc::MAX_MESSAGE_BYTES};

/// The OTLP/HTTP routes.
pub fn routes() -> Router<Arc<Ingest>> {
    Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/metrics", post(export::<Metrics>))
        .route("/v1/logs", post(export::<Logs>))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn encoded<M: Message + serde::Serialize>(status: StatusCode, encoding: Encoding, message: &M) -> Response {
    let (content_type, body) = match encoding {
        Encoding::Protobuf => ("application/x-protobuf", message.encode_to_vec()),
        Encoding::Json => ("application/json", json(message)),
    };
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

/// A message in OTLP's JSON: fields left unset are left out, as protobuf's JSON mapping
/// writes them (`{}` for a response without a partial success), not written as `null`.
fn json<M: serde::Serialize>(message: &M) -> Vec<u8> {
    fn without_nulls(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(fields) => {
                fields.retain(|_, v| !v.is_null());
                fields.values_mut().for_each(without_nulls);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(without_nulls),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(message).unwrap_or_default();
    without_nulls(&mut value);
    serde_json::to_vec(&value).unwrap_or_default()
}

fn rpc_error(status: StatusCode, encoding: Encoding, message: String) -> Response {
    // UNAVAILABLE and RESOURCE_EXHAUSTED are retryable; INVALID_ARGUMENT says the request
    // itself is wrong.
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::TOO_MANY_REQUESTS => 8,
        _ => 3,
    };
    encoded(status, encoding, &RpcStatus { code, message, details: Vec::new() })
}

/// How a body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Coding {
    /// The coding named `name` (a `Content-Encoding` or `grpc-encoding`), if it is one of
    /// these.
    pub(super) fn named(name: &[u8]) -> Option<Self> {
        match name {
            b"gzip" => Some(Self::Gzip),
            b"zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Inflates a compressed body, refusing to grow past [`MAX_MESSAGE_BYTES`].
pub(super) fn inflate(coding: Coding, body: &[u8]) -> Result<Bytes, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let limit = MAX_MESSAGE_BYTES as u64 + 1;
    let read = match coding {
        Coding::Gzip => flate2::read::GzDecoder::new(body).take(limit).read_to_end(&mut out),
        Coding::Zstd => zstd::stream::read::Decoder::new(body).and_then(|decoder| decoder.take(limit).read_to_end(&mut out)),
    };
    read.map_err(|e| format!("malformed {} body: {e}", if coding == Coding::Gzip { "gzip" } else { "zstd" }))?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(format!("body inflates past {MAX_MESSAGE_BYTES} bytes"));
    }
    Ok(out.into())
}

async fn export<S: Signal>(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let encoding = match content_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return rpc_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json,
                format!("unsupported content type {other:?}: use application/x-protobuf or application/json"),
            );
        }
    };
    let _admitted = match ingest.pipeline().admission.admit(body.len()) {
        Ok(permit) => permit,
        Err(refused) => {
            ingest.pipeline().refused(S::NAME, Transport::Http);
            let mut r = rpc_error(StatusCode::TOO_MANY_REQUESTS, encoding, refused.to_string());
            let seconds = refused.retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                r.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return r;
        }
    };
    let content_encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    let content_encoding = content_encoding.trim().to_ascii_lowercase();
    let body = match (content_encoding.as_str(), Coding::named(content_encoding.as_bytes())) {
        ("identity" | "", _) => body,
        (_, Some(coding)) => match inflate(coding, &body) {
            Ok(inflated) => inflated,
            Err(message) => {
                ingest.pipeline().malformed(S::NAME, Transport::Http);
                return rpc_error(StatusCode::BAD_REQUEST, encoding, message);
            }
        },
        (other, None) => {
            return rpc_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                encoding,
                format!("unsupported content encoding {other:?}: use gzip, zstd or none"),
            );
        }
    };
    let exported = match encoding {
        Encoding::Protobuf => ingest
            .export_encoded::<S>(&body, Transport::Http)
            .await
            .map(|r| r.map_err(|e| format!("malformed protobuf {} request: {e}", S::NAME))),
        Encoding::Json => match serde_json::from_slice::<S::Request>(&body) {
            Ok(request) => ingest.export::<S>(&request, Transport::Http).await.map(Ok),
            Err(e) => Ok(Err(format!("malformed JSON {} request: {e}", S::NAME))),
        },
    };
    match exported {
        Ok(Ok(response)) => encoded(StatusCode::OK, encoding, &response),
        Ok(Err(message)) => {
            ingest.pipeline().malformed(S::NAME, Transport::Http);
            rpc_error(StatusCode::BAD_REQUEST, encoding, message)
        }
        Err(e) => {
            // 503 with Retry-After is retryable for OTLP/HTTP senders.
            let mut r = rpc_error(StatusCode::SERVICE_UNAVAILABLE, encoding, e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::{config::CollectorConfig, pipeline::Pipeline};

    async fn post(app: Router, body: &'static [u8]) -> Response {
        let request = axum::http::Request::post("/v1/traces")
            .header("content-type", "application/x-protobuf")
            .body(Body::from(body))
            .expect("request");
        app.oneshot(request).await.expect("infallible")
    }

    #[tokio::test]
    async fn a_full_budget_answers_429_with_retry_after_and_garbage_answers_400() {
        let pipeline = Pipeline::new(&CollectorConfig { ingest_inflight_bytes: 4096, ..Default::default() });
        let app = routes().with_state(Arc::new(Ingest::new(pipeline.clone(), None)));
        let held = pipeline.admission.admit(4096).expect("take the whole budget");
        let r = post(app.clone(), b"").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        drop(held);
        assert_eq!(post(app.clone(), b"").await.status(), StatusCode::OK, "an empty request is valid");
        assert_eq!(post(app, b"\xff\xff\xff").await.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn gzip_and_zstd_bodies_are_inflated_and_broken_ones_answered_400() {
        use std::io::Write;
        let app = routes().with_state(Arc::new(Ingest::new(Pipeline::new(&CollectorConfig::default()), None)));
        let json = br#"{"resourceSpans":[]}"#;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(json).expect("gzip");
        let zstd = zstd::bulk::compress(json, 1).expect("zstd");
        let cases = [
            ("gzip", gzip.finish().expect("gzip"), StatusCode::OK),
            ("zstd", zstd, StatusCode::OK),
            ("ZSTD", b"not zstd".to_vec(), StatusCode::BAD_REQUEST),
            ("br", json.to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ];
        for (coding, body, status) in cases {
            let request = axum::http::Request::post("/v1/traces")
                .header("content-type", "application/json")
                .header("content-encoding", coding)
                .body(Body::from(body))
                .expect("request");
            let r = app.clone().oneshot(request).await.expect("infallible");
            assert_eq!(r.status(), status, "{coding}");
        }
    }

    #[tokio::test]
    async fn a_json_answer_leaves_unset_fields_out() {
        let app = routes().with_state(Arc::new(Ingest::new(Pipeline::new(&CollectorConfig::default()), None)));
        let request = axum::http::Request::post("/v1/traces")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"resourceSpans":[]}"#))
            .expect("request");
        let r = app.oneshot(request).await.expect("infallible");
        assert_eq!(r.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(r.into_body()).await.expect("body").to_bytes();
        assert_eq!(&body[..], b"{}");
    }
}
