//! A sample workload: a real HTTP/1.1 + HTTP/2 server that behaves as its spec says
//! (latency, error ratio, calls to other services) and calls those services through its
//! sidecar's outbound side, propagating the trace context as an instrumented app would.
//!
//! It speaks plain HTTP and unary gRPC as gRPC's own libraries do, so the mesh carries both
//! protocols: length-prefixed messages, streamed with no `content-length`; `grpc-status` in
//! the trailers after the answer's message, or alone in the headers of a call that failed
//! (a trailers-only response, the answer gRPC servers give an error).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A call a workload makes while handling a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Destination service.
    pub service: String,
    /// Path (for gRPC, `/package.Service/Method`).
    pub path: String,
    /// Unary gRPC over HTTP/2 instead of HTTP/1.1.
    pub grpc: bool,
    /// Probability of making the call on each request.
    pub probability: f64,
}

impl std::str::FromStr for Call {
    type Err = String;

    /// `http://service/path[@probability]` or `grpc://service/pkg.Svc/Method[@probability]`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (target, probability) = match text.rsplit_once('@') {
            Some((t, p)) => (t, p.parse::<f64>().map_err(|e| format!("probability in {text:?}: {e}"))?),
            None => (text, 1.0),
        };
        if !(0.0..=1.0).contains(&probability) {
            return Err(format!("probability in {text:?} must be between 0 and 1"));
        }
        let uri: Uri = target.parse().map_err(|e| format!("call {text:?}: {e}"))?;
        let grpc = match uri.scheme_str() {
            Some("http") => false,
            Some("grpc") => true,
            _ => return Err(format!("call {text:?} must start with http:// or grpc://")),
        };
        let service = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("call {text:?} names no service"))?;
        Ok(Self { service: service.to_owned(), path: uri.path().to_owned(), grpc, probability })
    }
}

/// How a sample workload behaves.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Service name (reported in responses).
    pub service: String,
    /// Version (reported in responses).
    pub version: String,
    /// Base latency added to every request.
    pub latency: Duration,
    /// Random extra latency, up to this much.
    pub jitter: Duration,
    /// Share of requests answered with 503 (or gRPC UNAVAILABLE).
    pub error_ratio: f64,
    /// Calls made on each request.
    pub calls: Vec<Call>,
    /// The sidecar's outbound address.
    pub sidecar: SocketAddr,
}

/// A client that sends every request to the sidecar's outbound side, whatever its URI
/// says; the URI's authority (the service name) tells the sidecar where it should go.
#[derive(Debug, Clone)]
pub struct SidecarClient {
    http1: Client<SidecarConnector, Body>,
    http2: Client<SidecarConnector, Body>,
}

/// Connects to the sidecar.
#[derive(Debug, Clone, Copy)]
pub struct SidecarConnector(SocketAddr);

impl tower::Service<Uri> for SidecarConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// What one call through the sidecar returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallResult {
    /// HTTP status.
    pub status: u16,
    /// gRPC status, for gRPC calls.
    pub grpc_status: Option<i32>,
}

impl CallResult {
    /// Whether the call succeeded.
    pub fn ok(&self) -> bool {
        self.status < 500 && self.grpc_status.is_none_or(|c| c == 0)
    }
}

fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed_unsync()
}

impl SidecarClient {
    /// A client for the sidecar at `sidecar`.
    pub fn new(sidecar: SocketAddr) -> Self {
        let connector = SidecarConnector(sidecar);
        Self {
            http1: Client::builder(TokioExecutor::new()).build(connector),
            http2: Client::builder(TokioExecutor::new()).http2_only(true).build(connector),
        }
    }

    /// Calls `call`, copying the trace headers from `context`.
    pub async fn call(&self, call: &Call, context: &HeaderMap) -> Result<CallResult, String> {
        let uri = format!("http://{}{}", call.service, call.path);
        let mut builder = Request::builder().uri(&uri);
        for name in ["traceparent", "tracestate", "x-request-id"] {
            if let Some(v) = context.get(name) {
                builder = builder.header(name, v.clone());
            }
        }
        let (client, request) = if call.grpc {
            let req = builder
                .method("POST")
                .version(http::Version::HTTP_2)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Frames([Frame::data(grpc_frame(b"\x0a\x04demo"))].into()).boxed_unsync());
            (&self.http2, req)
        } else {
            (&self.http1, builder.method("GET").body(full(Bytes::new())))
        };
        let request = request.map_err(|e| format!("building {uri}: {e}"))?;
        let response = client.request(request).await.map_err(|e| format!("{uri}: {e}"))?;
        let status = response.status().as_u16();
        let header_status = grpc_status(response.headers());
        let collected = response.into_body().collect().await.map_err(|e| format!("{uri}: body: {e}"))?;
        let trailer_status = collected.trailers().and_then(grpc_status);
        Ok(CallResult { status, grpc_status: trailer_status.or(header_status) })
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Serves the workload on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, spec: WorkloadSpec, mut shutdown: watch::Receiver<bool>) {
    let spec = Arc::new(spec);
    let client = SidecarClient::new(spec.sidecar);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = meshlens_common::accept::next(&listener) => accepted,
            _ = shutdown.changed() => return,
        };
        let (spec, client) = (spec.clone(), client.clone());
        let service = hyper::service::service_fn(move |req| handle(req, spec.clone(), client.clone()));
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn handle(req: Request<Incoming>, spec: Arc<WorkloadSpec>, client: SidecarClient) -> Result<Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let context = req.headers().clone();
    // Read the request to its end, as a real handler would.
    let _ = req.into_body().collect().await;

    let jitter = spec.jitter.mul_f64(fastrand::f64());
    tokio::time::sleep(spec.latency + jitter).await;

    let mut failed = None;
    for call in &spec.calls {
        if fastrand::f64() >= call.probability {
            continue;
        }
        match client.call(call, &context).await {
            Ok(result) if result.ok() => {}
            Ok(result) => failed = Some(format!("{} answered {}", call.service, result.status)),
            Err(e) => failed = Some(e),
        }
    }
    let injected = fastrand::f64() < spec.error_ratio;
    let error = match (injected, failed) {
        (true, _) => Some("injected failure".to_owned()),
        (false, Some(f)) => Some(format!("downstream failure: {f}")),
        (false, None) => None,
    };
    Ok(if grpc { grpc_response(&spec, error) } else { http_response(&spec, error, injected) })
}

fn http_response(spec: &WorkloadSpec, error: Option<String>, injected: bool) -> Response<Body> {
    let status = match (&error, injected) {
        (None, _) => StatusCode::OK,
        (Some(_), true) => StatusCode::SERVICE_UNAVAILABLE,
        (Some(_), false) => StatusCode::BAD_GATEWAY,
    };
    let body = serde_json::json!({ "service": spec.service, "version": spec.version, "error": error });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    response
}

fn grpc_response(spec: &WorkloadSpec, error: Option<String>) -> Response<Body> {
    let mut response = match &error {
        None => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let payload = format!("\x0a{}{}", char::from(spec.version.len() as u8), spec.version);
            let frames = [Frame::data(grpc_frame(payload.as_bytes())), Frame::trailers(trailers)];
            Response::new(Frames(frames.into()).boxed_unsync())
        }
        // UNAVAILABLE, in the headers of an empty answer.
        Some(message) => {
            let mut response = Response::new(full(Bytes::new()));
            response.headers_mut().insert("grpc-status", HeaderValue::from_static("14"));
            if let Ok(v) = HeaderValue::from_str(message) {
                response.headers_mut().insert("grpc-message", v);
            }
            response
        }
    };
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A body of prepared frames with no size announced: a gRPC call's request (its message),
/// or its answer (the message, then the trailers).
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_parse_from_urls() {
        let c: Call = "http://catalog/products@0.3".parse().expect("valid");
        assert_eq!(c, Call { service: "catalog".into(), path: "/products".into(), grpc: false, probability: 0.3 });
        let g: Call = "grpc://inventory/shop.Inventory/Check".parse().expect("valid");
        assert!(g.grpc && g.probability == 1.0 && g.path == "/shop.Inventory/Check");
        for bad in ["ftp://x/y", "http:///y", "http://x/y@2", "http://x/y@abc"] {
            assert!(bad.parse::<Call>().is_err(), "{bad}");
        }
    }
}
