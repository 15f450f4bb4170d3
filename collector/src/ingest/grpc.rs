//! OTLP/gRPC receiver: the trace, metrics and logs services on one tonic server.
//!
//! tonic serves the connections (HTTP/2, routing); each service reads its unary export
//! request's one message itself, as bytes, and hands them to [`Ingest::export_encoded`],
//! which converts them ([`wire`](super::wire) for traces and logs). A request is admitted
//! against the ingest budget ([`super::admission`]) by its size; when it is full the
//! answer is RESOURCE_EXHAUSTED with a `RetryInfo` delay, which OTLP senders retry. A body
//! that is not valid protobuf (or not valid gzip) is answered INVALID_ARGUMENT and counted
//! as malformed.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use meshlens_common::rpc::status_with_retry;
use prost::Message;
use tonic::{Code, Status};

use crate::{
    pipeline::{Pipeline, Transport},
    tls::Listener,
};

use super::{Ingest, Logs, Metrics, Signal, Traces, http::Coding};

/// Largest export request accepted, bytes.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Largest HTTP/2 frame senders may send, bytes (HTTP/2's default is 16 KiB). An export
/// request of a thousand spans is about 330 KB: in 16 KiB frames each one is twenty frames to
/// read, account for and copy, one at a time (and for the sender, twenty writes).
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// A gRPC message's prefix: a compression flag and the message's length (four bytes, big-endian).
const PREFIX_BYTES: usize = 5;

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
        listener: Listener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let server = tonic::transport::Server::builder()
            .max_frame_size(MAX_FRAME_BYTES)
            .add_service(WireExport::<Traces>::new(self.ingest.clone()))
            .add_service(WireExport::<Metrics>::new(self.ingest.clone()))
            .add_service(WireExport::<Logs>::new(self.ingest));
        match listener {
            Listener::Plain(listener) => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                server.serve_with_incoming_shutdown(incoming, shutdown).await
            }
            Listener::Tls(listener) => server.serve_with_incoming_shutdown(listener.into_incoming(), shutdown).await,
        }
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
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
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
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let answer = match read_message::<S, B>(&ingest, request).await {
                Ok(encoded) => export::<S>(&ingest, encoded).await.map(|response| reply(&response)),
                Err(status) => Err(status),
            };
            Ok(answer.unwrap_or_else(Status::into_http))
        })
    }
}

/// The request's one message, inflated if it came compressed. Read here rather than by
/// tonic's decoder, which copies a message into its buffer and then copies it again
/// growing the buffer by the message's length (~3 % of ingest CPU in `meshlens bench
/// ingest`); a message that arrives in one HTTP/2 frame is not copied at all.
async fn read_message<S: Signal, B>(ingest: &Ingest, request: http::Request<B>) -> Result<Bytes, Status>
where
    B: tonic::codegen::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let coding = match request.headers().get("grpc-encoding").map(http::HeaderValue::as_bytes) {
        None | Some(b"identity") => None,
        Some(name) => match Coding::named(name) {
            Some(coding) => Some(coding),
            None => {
                let mut status = Status::unimplemented(format!(
                    "grpc-encoding {:?} is not supported: use gzip, zstd or identity",
                    String::from_utf8_lossy(name)
                ));
                let accepted = tonic::metadata::MetadataValue::from_static("gzip,zstd,identity");
                status.metadata_mut().insert("grpc-accept-encoding", accepted);
                return Err(status);
            }
        },
    };
    let body = match http_body_util::Limited::new(request.into_body(), PREFIX_BYTES + MAX_MESSAGE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::out_of_range(format!("the export request is larger than {MAX_MESSAGE_BYTES} bytes")));
        }
        Err(e) => return Err(Status::cancelled(format!("reading the export request: {e}"))),
    };
    let message = unframe(body)?;
    if !message.compressed {
        return Ok(message.bytes);
    }
    let Some(coding) = coding else {
        return Err(Status::internal("a compressed message in a request without grpc-encoding"));
    };
    super::http::inflate(coding, &message.bytes).map_err(|e| {
        ingest.pipeline().malformed(S::NAME, Transport::Grpc);
        Status::invalid_argument(e)
    })
}

/// A gRPC message taken out of its prefix.
#[derive(Debug, PartialEq)]
struct Unframed {
    compressed: bool,
    bytes: Bytes,
}

/// The one message of a unary request's body.
fn unframe(mut body: Bytes) -> Result<Unframed, Status> {
    if body.len() < PREFIX_BYTES {
        return Err(Status::internal("the request ended before its message's prefix"));
    }
    let compressed = match body.get_u8() {
        0 => false,
        1 => true,
        flag => return Err(Status::internal(format!("invalid compression flag {flag} (0 or 1)"))),
    };
    let len = body.get_u32() as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(Status::out_of_range(format!("a message of {len} bytes is larger than {MAX_MESSAGE_BYTES}")));
    }
    if body.len() != len {
        return Err(Status::invalid_argument(format!(
            "a unary export request carries one message of {len} bytes; the body holds {} after the prefix",
            body.len()
        )));
    }
    Ok(Unframed { compressed, bytes: body })
}

/// Admits, ingests and answers one export request's bytes.
async fn export<S: Signal>(ingest: &Ingest, encoded: Bytes) -> Result<S::Response, Status> {
    let pipeline = ingest.pipeline();
    let _admitted = match pipeline.admission.admit(encoded.len()) {
        Ok(permit) => permit,
        Err(refused) => return Err(exhausted::<S>(pipeline, &refused)),
    };
    match ingest.export_encoded::<S>(&encoded, Transport::Grpc).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => {
            pipeline.malformed(S::NAME, Transport::Grpc);
            Err(Status::invalid_argument(error.to_string()))
        }
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

/// A successful unary answer: `response` in one message, then `grpc-status: 0`.
fn reply(response: &impl Message) -> http::Response<tonic::body::Body> {
    let len = response.encoded_len();
    let mut frame = BytesMut::with_capacity(PREFIX_BYTES + len);
    frame.put_u8(0);
    frame.put_u32(len as u32);
    // Encoding into a buffer of the message's own length cannot run out of room.
    let _ = response.encode(&mut frame);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(frame.freeze()).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut answer = http::Response::new(tonic::body::Body::new(body));
    answer.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    answer
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

    use super::*;
    use crate::{config::CollectorConfig, ingest::Ingest};

    #[tokio::test]
    async fn a_full_budget_answers_resource_exhausted_with_retry_info() {
        let pipeline = Pipeline::new(&CollectorConfig { ingest_inflight_bytes: 4096, ..Default::default() });
        let ingest = Ingest::new(pipeline.clone(), None);
        let span =
            Span { trace_id: vec![1; 16], span_id: vec![2; 8], start_time_unix_nano: 1, end_time_unix_nano: 2, ..Default::default() };
        let request = || {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans { spans: vec![span.clone()], ..Default::default() }],
                    ..Default::default()
                }],
            };
            Bytes::from(request.encode_to_vec())
        };
        let held = pipeline.admission.admit(4096).expect("take the whole budget");
        let status = export::<Traces>(&ingest, request()).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(meshlens_common::rpc::retry_delay(status.details()), Some(super::super::admission::RETRY_AFTER));
        drop(held);
        assert!(export::<Traces>(&ingest, request()).await.is_ok(), "accepted once there is room");
        let mut exposition = String::new();
        prometheus_client::encoding::text::encode(&mut exposition, &pipeline.metrics.registry()).expect("encode");
        assert!(exposition.contains("meshlens_collector_refused_requests_total{signal=\"spans\",transport=\"grpc\"} 1"), "{exposition}");
    }

    #[test]
    fn a_body_is_one_whole_message() {
        let framed = |flag: u8, len: u32, payload: &[u8]| {
            let mut body = vec![flag];
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(payload);
            Bytes::from(body)
        };
        assert_eq!(unframe(framed(0, 3, b"abc")).expect("whole"), Unframed { compressed: false, bytes: Bytes::from_static(b"abc") });
        assert!(unframe(framed(1, 0, b"")).expect("empty").compressed);
        let refused = |body: Bytes| unframe(body).expect_err("refused");
        assert_eq!(refused(framed(0, 4, b"abc")).code(), Code::InvalidArgument, "cut short");
        assert_eq!(refused(framed(0, 2, b"abc")).code(), Code::InvalidArgument, "bytes after the message");
        assert_eq!(refused(framed(2, 3, b"abc")).code(), Code::Internal, "no such compression flag");
        assert_eq!(refused(Bytes::from_static(&[0, 0, 0])).code(), Code::Internal, "no prefix");
        assert_eq!(refused(framed(0, u32::MAX, b"")).code(), Code::OutOfRange);
    }

    /// Serves `pipeline` on a loopback port; the address and a stop handle.
    async fn serve(pipeline: Arc<Pipeline>) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let grpc = OtlpGrpc::new(Ingest::new(pipeline, None));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = grpc
                .serve(crate::tls::Listener::Plain(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        (addr, stop, server)
    }

    #[tokio::test]
    async fn a_tonic_client_exports_plain_and_gzip_compressed_requests() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        let pipeline = Pipeline::new(&CollectorConfig::default());
        let (addr, stop, server) = serve(pipeline.clone()).await;
        let spans = |first: u8| {
            let span = |n: u8| Span {
                trace_id: vec![first; 16],
                span_id: vec![n; 8],
                // 201 spans of 6 KB: over 1 MiB, so more than one HTTP/2 frame.
                name: "x".repeat(6_000),
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                ..Default::default()
            };
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: (1..=200).map(span).chain([Span { span_id: vec![], ..span(0) }]).collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
        let channel = endpoint.connect().await.expect("connect");
        let plain = TraceServiceClient::new(channel.clone()).export(spans(1)).await.expect("plain export").into_inner();
        let mut gzip_client = TraceServiceClient::new(channel.clone()).send_compressed(tonic::codec::CompressionEncoding::Gzip);
        let gzip = gzip_client.export(spans(2)).await.expect("gzip export").into_inner();
        let mut zstd_client = TraceServiceClient::new(channel).send_compressed(tonic::codec::CompressionEncoding::Zstd);
        let zstd = zstd_client.export(spans(3)).await.expect("zstd export").into_inner();
        for answer in [plain, gzip, zstd] {
            let partial = answer.partial_success.expect("the span without an ID is named");
            assert_eq!(partial.rejected_spans, 1, "{partial:?}");
        }
        assert_eq!(pipeline.tables.read().expect("tables").spans.span_count(), 600);
        let _ = stop.send(());
        let _ = server.await;
    }

    #[tokio::test]
    async fn undecodable_protobuf_is_invalid_argument_and_counted() {
        use http_body_util::{BodyExt, Full};
        let pipeline = Pipeline::new(&CollectorConfig::default());
        let (addr, stop, server) = serve(pipeline.clone()).await;
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
