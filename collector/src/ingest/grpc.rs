//! OTLP/gRPC receiver: the trace, metrics and logs services on one tonic server.
//!
//! A request is admitted against the ingest budget ([`super::admission`]); when it is full
//! the answer is RESOURCE_EXHAUSTED with a `RetryInfo` delay, which OTLP senders retry. A
//! body that is not valid protobuf is answered INVALID_ARGUMENT (tonic itself would say
//! INTERNAL, which senders would retry forever) and counted as malformed.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_server::{LogsService, LogsServiceServer}},
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::{TraceService, TraceServiceServer}},
};
use meshlens_common::rpc::status_with_retry;
use prost::Message;
use tonic::{Code, Request, Response, Status, codec::CompressionEncoding::Gzip};

use crate::pipeline::{Pipeline, Transport};

use super::{Ingest, Logs, Metrics, Signal, Traces};

/// Largest export request accepted, bytes.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// The three OTLP services over one ingest path.
#[derive(Debug, Clone)]
pub struct OtlpGrpc {
    ingest: Arc<Ingest>,
}

impl OtlpGrpc {
    /// Services feeding `ingest`.
    pub fn new(ingest: Ingest) -> Self {
        Self { ingest: Arc::new(ingest) }
    }

    /// Serves the three services on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let pipeline = self.ingest.pipeline_arc();
        tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(move |inner| DecodeErrors { inner, pipeline: pipeline.clone() }))
            .add_service(
                TraceServiceServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).accept_compressed(Gzip),
            )
            .add_service(
                MetricsServiceServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).accept_compressed(Gzip),
            )
            .add_service(LogsServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES).accept_compressed(Gzip))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    async fn accept<S: Signal>(&self, request: Request<S::Request>) -> Result<Response<S::Response>, Status> {
        let pipeline = self.ingest.pipeline();
        let _admitted = match pipeline.admission.admit(request.get_ref().encoded_len()) {
            Ok(permit) => permit,
            Err(refused) => {
                pipeline.refused(S::NAME, Transport::Grpc);
                let message = refused.to_string();
                let details = status_with_retry(Code::ResourceExhausted as i32, &message, refused.retry_after);
                return Err(Status::with_details(Code::ResourceExhausted, message, details.into()));
            }
        };
        match self.ingest.export::<S>(request.get_ref(), None, Transport::Grpc).await {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(&self, r: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.accept::<Traces>(r).await
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(&self, r: Request<ExportLogsServiceRequest>) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.accept::<Logs>(r).await
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(&self, r: Request<ExportMetricsServiceRequest>) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.accept::<Metrics>(r).await
    }
}

/// Rewrites tonic's INTERNAL answer to an undecodable request into INVALID_ARGUMENT, and
/// counts it.
#[derive(Debug, Clone)]
pub struct DecodeErrors<S> {
    inner: S,
    pipeline: std::sync::Arc<Pipeline>,
}

fn signal_of(path: &str) -> &'static str {
    if path.contains("TraceService") {
        "spans"
    } else if path.contains("LogsService") {
        "log_records"
    } else {
        "metric_points"
    }
}

impl<S, B, ReqBody> tower::Service<http::Request<ReqBody>> for DecodeErrors<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let signal = signal_of(request.uri().path());
        let pipeline = self.pipeline.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
            let decode = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|m| m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode"));
            if internal && decode {
                headers.insert("grpc-status", http::HeaderValue::from_static("3"));
                pipeline.malformed(signal, Transport::Grpc);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;
    use crate::{config::CollectorConfig, ingest::Ingest};

    #[tokio::test]
    async fn a_full_budget_answers_resource_exhausted_with_retry_info() {
        let pipeline = Pipeline::new(&CollectorConfig { ingest_inflight_bytes: 4096, ..Default::default() });
        let grpc = OtlpGrpc::new(Ingest::new(pipeline.clone(), None));
        let span = Span { trace_id: vec![1; 16], span_id: vec![2; 8], start_time_unix_nano: 1, end_time_unix_nano: 2, ..Default::default() };
        let request = || {
            Request::new(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans { spans: vec![span.clone()], ..Default::default() }],
                    ..Default::default()
                }],
            })
        };
        let held = pipeline.admission.admit(4096).expect("take the whole budget");
        let status = TraceService::export(&grpc, request()).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(meshlens_common::rpc::retry_delay(status.details()), Some(super::super::admission::RETRY_AFTER));
        drop(held);
        assert!(TraceService::export(&grpc, request()).await.is_ok(), "accepted once there is room");
        let mut exposition = String::new();
        prometheus_client::encoding::text::encode(&mut exposition, &pipeline.metrics.registry()).expect("encode");
        assert!(exposition.contains("meshlens_collector_refused_requests_total{signal=\"spans\",transport=\"grpc\"} 1"), "{exposition}");
    }

    #[tokio::test]
    async fn undecodable_protobuf_is_invalid_argument_and_counted() {
        use http_body_util::{BodyExt, Full};
        let pipeline = Pipeline::new(&CollectorConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let grpc = OtlpGrpc::new(Ingest::new(pipeline.clone(), None));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(grpc.serve(listener, async {
            let _ = stopped.await;
        }));
        // One gRPC message frame: uncompressed, 3 bytes, not protobuf.
        let frame: &'static [u8] = &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<bytes::Bytes>>();
        let request = http::Request::post(format!("http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(bytes::Bytes::from_static(frame)))
            .expect("request");
        let response = client.request(request).await.expect("response");
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = headers.get("grpc-status").or_else(|| trailers.get("grpc-status")).cloned();
        assert_eq!(status.as_ref().and_then(|v| v.to_str().ok()), Some("3"), "{headers:?} {trailers:?}");
        let _ = stop.send(());
        let _ = server.await;
        let mut exposition = String::new();
        prometheus_client::encoding::text::encode(&mut exposition, &pipeline.metrics.registry()).expect("encode");
        assert!(exposition.contains("meshlens_collector_malformed_requests_total{signal=\"spans\",transport=\"grpc\"} 1"), "{exposition}");
    }
}
