//! The proxy benchmark's null OTLP receiver: accepts every gRPC export and keeps nothing.
//!
//! It reads each request's body to the end (so HTTP/2 flow control moves as with a real
//! collector), takes HTTP/2 frames as large as the collector does (so the sidecar writes an
//! export in as few calls), and answers an empty message with `grpc-status: 0`, without
//! decoding: what the sidecar pays for its telemetry, measured apart from what a collector
//! on the same cores costs the machine (a collector normally runs on other nodes).

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioExecutor;

/// An empty protobuf message in a gRPC frame: not compressed, length 0.
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

/// Serves the null receiver on `listen` forever.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    serve_on(tokio::net::TcpListener::bind(listen).await?).await
}

async fn serve_on(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    super::serve_connections(listener, |io| async move {
        let service = hyper::service::service_fn(answer);
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_frame_size(meshlens_collector::ingest::grpc::MAX_FRAME_BYTES)
            .serve_connection(io, service)
            .await;
    })
    .await
}

type Answer = StreamBody<futures_util::stream::Iter<std::array::IntoIter<Result<Frame<Bytes>, Infallible>, 2>>>;

async fn answer(request: http::Request<Incoming>) -> Result<http::Response<Answer>, Infallible> {
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = [Ok(Frame::data(Bytes::from_static(EMPTY_MESSAGE))), Ok(Frame::trailers(trailers))];
    let mut response = http::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_an_export_with_an_empty_ok_message() {
        // Bound here and kept: no other process can take the port between bind and serve.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(serve_on(listener));
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("an endpoint");
        let channel = endpoint.connect().await.expect("the receiver accepts connections");
        use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient};
        let answer = TraceServiceClient::new(channel).export(ExportTraceServiceRequest::default()).await.expect("export accepted");
        assert!(answer.into_inner().partial_success.is_none());
    }

    #[tokio::test]
    async fn takes_frames_as_large_as_the_collector_does() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(serve_on(listener));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the receiver accepts connections");
        // The client preface and an empty SETTINGS frame; the server's first frame is its SETTINGS.
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface sent");
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.expect("a frame header");
        assert_eq!(head[3], 4, "the first frame is SETTINGS");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("the settings");
        let max_frame = payload
            .chunks_exact(6)
            .find(|s| s[..2] == [0, 5]) // SETTINGS_MAX_FRAME_SIZE
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
        assert_eq!(max_frame, Some(meshlens_collector::ingest::grpc::MAX_FRAME_BYTES));
    }
}
