//! OTLP/HTTP transport: export requests `POST`ed as protobuf to `/v1/traces`, `/v1/logs` and
//! `/v1/metrics` under the configured endpoint (or to a signal's own URL), optionally
//! gzip-compressed.
//!
//! What an answer means follows OTLP/HTTP: a 2xx carries the export response (with any
//! partial success); 429, 502, 503 and 504 are retryable, after the `Retry-After` the
//! server sent (seconds or an HTTP date) or else the exporter's backoff; every other status
//! is final. A connection that fails or an answer that does not come within the export
//! timeout is retryable too, as gRPC's UNAVAILABLE and DEADLINE_EXCEEDED are.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, ResponseFuture, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message;

use super::{
    export::{Failed, Retry},
    export_tls::{self, Alpn},
    wire,
};
use crate::{config::Compression, error::StartError};

/// Largest answer read: an export response is a few bytes, an error a short message.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where one collector takes OTLP/HTTP: its endpoint, checked when the sidecar starts.
#[derive(Debug, Clone)]
pub(super) struct Target {
    base: String,
    /// Whether `base` is the URL itself (a signal's own endpoint), not a prefix of one.
    exact: bool,
    /// Whether it is an `https://` endpoint.
    https: bool,
}

impl Target {
    /// Checks `endpoint` (`http://host:port` or `https://host:port`, perhaps with a path
    /// prefix), to which each signal's path is appended, or which is the URL itself when `exact`.
    pub(super) fn parse(endpoint: &str, exact: bool) -> Result<Self, StartError> {
        let invalid = |reason: String| StartError::OtlpEndpoint { endpoint: endpoint.to_owned(), reason };
        let uri: Uri = endpoint.parse().map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("an OTLP/HTTP endpoint starts with http:// or https://".into())),
        };
        if uri.authority().is_none() || uri.query().is_some() {
            return Err(invalid("an OTLP/HTTP endpoint is http(s)://host:port, perhaps with a path, without a query".into()));
        }
        Ok(Self { base: endpoint.to_owned(), exact, https })
    }

    /// Whether its connections are TLS.
    pub(super) fn https(&self) -> bool {
        self.https
    }

    /// The URI a signal is posted to (`path` is e.g. `/v1/traces`).
    pub(super) fn uri(&self, path: &str) -> Result<Uri, Failed> {
        let url = signal_url(&self.base, self.exact, path);
        url.parse().map_err(|e: http::uri::InvalidUri| Failed::final_error("invalid_uri", e.to_string()))
    }
}

/// The URL a signal whose OTLP/HTTP path is `path` (`/v1/traces`) is posted to: `endpoint`
/// itself when `exact` (a signal's own endpoint), else `path` under it.
pub(crate) fn signal_url(endpoint: &str, exact: bool, path: &str) -> String {
    if exact { endpoint.to_owned() } else { format!("{}{path}", endpoint.trim_end_matches('/')) }
}

/// Sends export requests to one collector over HTTP/1.1, on a pool of kept-alive connections.
#[derive(Debug, Clone)]
pub(super) struct HttpClient {
    client: Pool,
    target: Target,
    compression: Compression,
    timeout: Duration,
    /// Sent with every request ([`super::export_headers`]).
    headers: http::HeaderMap,
}

impl HttpClient {
    /// A client for `target` sending `headers` with every request, over TLS configured by
    /// `tls` (given for an `https://` target); each attempt is given up after `timeout`.
    /// Must be called within a tokio runtime, which runs its connections.
    pub(super) fn new(
        target: Target,
        tls: Option<&Arc<rustls::ClientConfig>>,
        compression: Compression,
        timeout: Duration,
        headers: http::HeaderMap,
    ) -> Self {
        let builder = Client::builder(TokioExecutor::new());
        let client = match tls {
            Some(config) => Pool::Tls(Box::new(builder.build(export_tls::tls(config, Alpn::Http1)))),
            None => Pool::Plain(Box::new(builder.build(export_tls::tcp()))),
        };
        Self { client, target, compression, timeout, headers }
    }

    /// Posts `request` to `path` and decodes the export response `R`.
    pub(super) async fn export<R: Message + Default>(&self, path: &str, request: &wire::Request) -> Result<R, Failed> {
        let body = compressed(self.compression, request.to_vec())?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.target.uri(path)?)
            .header(header::CONTENT_TYPE, "application/x-protobuf");
        if self.compression != Compression::None {
            builder = builder.header(header::CONTENT_ENCODING, self.compression.as_str());
        }
        if let Some(headers) = builder.headers_mut() {
            headers.extend(self.headers.iter().map(|(name, value)| (name.clone(), value.clone())));
        }
        let post = builder.body(Full::new(Bytes::from(body))).map_err(|e| Failed::final_error("invalid_request", e.to_string()))?;
        let exchange = async {
            let response = self.client.request(post).await.map_err(|e| Failed::backoff("unavailable", format!("{e:?}")))?;
            let status = response.status();
            let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
            let answer = match Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await {
                Ok(answer) => answer.to_bytes(),
                Err(e) if status.is_success() => return Err(Failed::backoff("unavailable", format!("reading the answer: {e}"))),
                // A refusal is judged by its status, whatever its body.
                Err(_) => Bytes::new(),
            };
            Ok::<_, Failed>((status, retry_after, answer))
        };
        let (status, retry_after, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Failed::backoff("deadline_exceeded", format!("no answer within {:?}", self.timeout)))??;
        if status.is_success() {
            return R::decode(answer).map_err(|e| Failed::final_error("undecodable_answer", format!("undecodable export response: {e}")));
        }
        Err(refused(status, retry_after.as_ref(), &answer, SystemTime::now()))
    }
}

/// The kept-alive connections, plain or TLS (boxed: a client is a few hundred bytes).
#[derive(Debug, Clone)]
enum Pool {
    Plain(Box<Client<HttpConnector, Full<Bytes>>>),
    Tls(Box<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>),
}

impl Pool {
    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Self::Plain(client) => client.request(request),
            Self::Tls(client) => client.request(request),
        }
    }
}

/// What a non-2xx answer means (OTLP/HTTP's retryable statuses, and `Retry-After`).
fn refused(status: StatusCode, retry_after: Option<&HeaderValue>, answer: &[u8], now: SystemTime) -> Failed {
    // The body of an OTLP/HTTP error is a `google.rpc.Status`; else say what the status says.
    let message = meshlens_common::rpc::RpcStatus::decode(answer)
        .ok()
        .map(|s| s.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    let message = format!("HTTP {}: {message}", status.as_u16());
    let reason = match status.as_u16() {
        429 => "http_429",
        502 => "http_502",
        503 => "http_503",
        504 => "http_504",
        400..=499 => "http_4xx",
        _ => "http_other",
    };
    let retry = match status.as_u16() {
        429 | 502 | 503 | 504 => retry_after.and_then(|v| after(v, now)).map_or(Retry::Backoff, Retry::After),
        _ => Retry::Never,
    };
    Failed { reason, retry, message }
}

/// How long a `Retry-After` asks to wait: delay-seconds or an HTTP date (past dates: no wait).
fn after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The Zstandard level of export requests: the fastest of the regular ones.
const ZSTD_LEVEL: i32 = 1;

/// An export request's bytes, compressed as `compression` says.
fn compressed(compression: Compression, bytes: Vec<u8>) -> Result<Vec<u8>, Failed> {
    let failed = |e: std::io::Error| Failed::final_error("compression", e.to_string());
    match compression {
        Compression::None => Ok(bytes),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::default());
            encoder.write_all(&bytes).and_then(|()| encoder.finish()).map_err(failed)
        }
        Compression::Zstd => zstd::bulk::compress(&bytes, ZSTD_LEVEL).map_err(failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u16, retry_after: Option<&str>) -> Failed {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = retry_after.map(|v| HeaderValue::from_str(v).expect("header"));
        refused(StatusCode::from_u16(code).expect("status"), header.as_ref(), b"", now)
    }

    #[test]
    fn only_the_statuses_otlp_calls_retryable_are_retried() {
        for code in [429, 502, 503, 504] {
            let failed = refusal(code, None);
            assert_eq!(failed.retry, Retry::Backoff, "{code} without Retry-After: the exporter's backoff");
            assert_eq!(failed.reason, format!("http_{code}"));
        }
        for code in [400, 401, 403, 404, 413, 415, 500, 501] {
            assert_eq!(refusal(code, Some("1")).retry, Retry::Never, "{code} is final, whatever Retry-After says");
        }
        assert_eq!(refusal(400, None).reason, "http_4xx");
        assert_eq!(refusal(500, None).reason, "http_other");
    }

    #[test]
    fn retry_after_is_honoured_as_seconds_or_as_a_date() {
        assert_eq!(refusal(503, Some("3")).retry, Retry::After(Duration::from_secs(3)));
        assert_eq!(refusal(429, Some(" 0 ")).retry, Retry::After(Duration::ZERO));
        // 1,700,000,000 s after the epoch is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(refusal(503, Some("Tue, 14 Nov 2023 22:13:25 GMT")).retry, Retry::After(Duration::from_secs(5)));
        assert_eq!(refusal(503, Some("Tue, 14 Nov 2023 22:13:00 GMT")).retry, Retry::After(Duration::ZERO), "a past date: no wait");
        assert_eq!(refusal(503, Some("soon")).retry, Retry::Backoff, "unreadable: the backoff");
        assert_eq!(refusal(503, Some("-1")).retry, Retry::Backoff);
    }

    #[test]
    fn the_error_body_s_message_is_kept() {
        let status = meshlens_common::rpc::RpcStatus { code: 3, message: "bad span".into(), details: vec![] };
        let failed = refused(StatusCode::BAD_REQUEST, None, &status.encode_to_vec(), SystemTime::now());
        assert_eq!(failed.message, "HTTP 400: bad span");
        let failed = refused(StatusCode::SERVICE_UNAVAILABLE, None, b"<html>busy</html>", SystemTime::now());
        assert_eq!(failed.message, "HTTP 503: Service Unavailable", "a body that is no Status: the status's own words");
    }

    #[test]
    fn endpoints_are_checked_and_signals_appended() {
        let target = Target::parse("http://127.0.0.1:4318/", false).expect("plain");
        assert_eq!(target.uri("/v1/traces").expect("uri"), "http://127.0.0.1:4318/v1/traces");
        let prefixed = Target::parse("http://collector:4318/otlp", false).expect("with a path");
        assert_eq!(prefixed.uri("/v1/logs").expect("uri"), "http://collector:4318/otlp/v1/logs");
        let own = Target::parse("http://logs:3100/otlp/v1/logs", true).expect("a signal's own URL");
        assert_eq!(own.uri("/v1/logs").expect("uri"), "http://logs:3100/otlp/v1/logs", "as written");
        for bad in ["collector:4318", "ftp://collector:4318", "http://", "http://c:4318/?x=1", "not a uri"] {
            assert!(Target::parse(bad, false).is_err() && Target::parse(bad, true).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn gzip_and_zstd_bodies_inflate_to_the_request() {
        let bytes: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let packed = compressed(Compression::Gzip, bytes.clone()).expect("gzip");
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(packed.as_slice()), &mut out).expect("gunzip");
        assert_eq!(out, bytes);
        let packed = compressed(Compression::Zstd, bytes.clone()).expect("zstd");
        assert!(packed.len() < bytes.len() / 4);
        assert_eq!(zstd::bulk::decompress(&packed, bytes.len()).expect("unzstd"), bytes);
        assert_eq!(compressed(Compression::None, bytes.clone()).expect("as is"), bytes);
    }
}
