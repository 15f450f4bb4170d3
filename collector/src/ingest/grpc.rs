//! OTLP/gRPC receiver: the trace, metrics and logs services on one tonic server.
//!
//! Each service takes its export request as bytes (tonic's framing and gzip, no message
//! decoding) and hands them to [`Ingest::export_encoded`], which converts them
//! ([`wire`](super::wire) for traces and logs). A request is admitted against the ingest
//! budget ([`super::admission`]) by its size; when it is full the answer is
//! RESOURCE_EXHAUSTED with a `RetryInfo` delay, which OTLP senders retry. A body that is
//! not valid protobuf is answered INVALID_ARGUMENT and counted as malformed.

use std::sync::Arc;

use meshlens_common::rpc::status_with_retry;
use prost::Message;
use tonic::{Code, Request, Response, Status, codec::CompressionEncoding::Gzip};

use crate::pipeline::{Pipeline, Transport};

use super::{Ingest, Logs, Metrics, Signal, Traces};

/// Largest export request accepted, bytes.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Largest HTTP/2 frame senders may send, bytes (HTTP/2's default is 16 KiB). An export
/// request of a thousand spans is about 330 KB: in 16 KiB frames each one is twenty frames to
/// read, account for and copy, one at a time.
const MAX_FRAME_BYTES: u32 = 1024 * 1024;

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
        tonic::transport::Server::builder()
            .max_frame_size(MAX_FRAME_BYTES)
            .add_service(WireExport::<Traces>::new(self.ingest.clone()))
            .add_service(WireExport::<Metrics>::new(self.ingest.clone()))
            .add_service(WireExport::<Logs>::new(self.ingest))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }
}

/// One signal's export service.
struct WireExport<S> {
    ingest: Arc<Ingest>,
    signal: std::marker::PhantomData<fn() -> S>,
}

impl<S> WireExport<S> {
    fn new(ingest: Arc<Ingest>) -> Self {
        Self { ingest, signal: std::marker::PhantomData }
    }
}

impl<S> Clone for WireExport<S> {
    fn clone(&self) -> Self {
        Self::new(self.ingest.clone())
    }
}

impl<S: Signal> tonic::server::NamedService for WireExport<S> {
    const NAME: &'static str = S::SERVICE;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for WireExport<S>
where
    S: Signal + 'static,
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().strip_prefix('/').and_then(|p| p.strip_prefix(S::SERVICE)) != Some("/Export") {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let method = ExportMethod::<S>(self.clone());
        Box::pin(async move {
            let mut accept = tonic::codec::EnabledCompressionEncodings::default();
            accept.enable(Gzip);
            let mut grpc = tonic::server::Grpc::new(RawCodec::<S::Response>::default())
                .apply_compression_config(accept, tonic::codec::EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The export method over the request's bytes.
struct ExportMethod<S>(WireExport<S>);

impl<S: Signal + 'static> tonic::server::UnaryService<bytes::Bytes> for ExportMethod<S> {
    type Response = S::Response;
    type Future = BoxFuture<Result<Response<S::Response>, Status>>;

    fn call(&mut self, request: Request<bytes::Bytes>) -> Self::Future {
        let ingest = self.0.ingest.clone();
        Box::pin(async move {
            let encoded = request.into_inner();
            let pipeline = ingest.pipeline();
            let _admitted = match pipeline.admission.admit(encoded.len()) {
                Ok(permit) => permit,
                Err(refused) => return Err(exhausted::<S>(pipeline, &refused)),
            };
            match ingest.export_encoded::<S>(&encoded, Transport::Grpc).await {
                Ok(Ok(response)) => Ok(Response::new(response)),
                Ok(Err(error)) => {
                    pipeline.malformed(S::NAME, Transport::Grpc);
                    Err(Status::invalid_argument(error.to_string()))
                }
                Err(e) => Err(Status::unavailable(e.to_string())),
            }
        })
    }
}

/// Reads a request's bytes as they are; writes the response `R` with prost.
struct RawCodec<R>(std::marker::PhantomData<fn() -> R>);

impl<R> Default for RawCodec<R> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

#[derive(Debug)]
struct BytesDecoder;

impl tonic::codec::Decoder for BytesDecoder {
    type Item = bytes::Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

struct ResponseEncoder<R>(std::marker::PhantomData<fn() -> R>);

impl<R: Message> tonic::codec::Encoder for ResponseEncoder<R> {
    type Item = R;
    type Error = Status;
    fn encode(&mut self, item: R, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding the export response: {e}")))
    }
}

impl<R: Message + Send + 'static> tonic::codec::Codec for RawCodec<R> {
    type Encode = R;
    type Decode = bytes::Bytes;
    type Encoder = ResponseEncoder<R>;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> ResponseEncoder<R> {
        ResponseEncoder(std::marker::PhantomData)
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// RESOURCE_EXHAUSTED with a RetryInfo, counted.
fn exhausted<S: Signal>(pipeline: &Pipeline, refused: &super::admission::Refused) -> Status {
    pipeline.refused(S::NAME, Transport::Grpc);
    let message = refused.to_string();
    let details = status_with_retry(Code::ResourceExhausted as i32, &message, refused.retry_after);
    Status::with_details(Code::ResourceExhausted, message, details.into())
}


#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use tonic::server::UnaryService;

    use super::*;
    use crate::{config::CollectorConfig, ingest::Ingest};

    #[tokio::test]
    async fn a_full_budget_answers_resource_exhausted_with_retry_info() {
        let pipeline = Pipeline::new(&CollectorConfig { ingest_inflight_bytes: 4096, ..Default::default() });
        let mut grpc = ExportMethod::<Traces>(WireExport::new(Arc::new(Ingest::new(pipeline.clone(), None))));
        let span = Span { trace_id: vec![1; 16], span_id: vec![2; 8], start_time_unix_nano: 1, end_time_unix_nano: 2, ..Default::default() };
        let request = || {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans { spans: vec![span.clone()], ..Default::default() }],
                    ..Default::default()
                }],
            };
            Request::new(bytes::Bytes::from(request.encode_to_vec()))
        };
        let held = pipeline.admission.admit(4096).expect("take the whole budget");
        let status = grpc.call(request()).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(meshlens_common::rpc::retry_delay(status.details()), Some(super::super::admission::RETRY_AFTER));
        drop(held);
        assert!(grpc.call(request()).await.is_ok(), "accepted once there is room");
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
