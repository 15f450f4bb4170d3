//! Background export of spans, access logs and metrics to the collector over OTLP/gRPC or
//! OTLP/HTTP (`otlp_http`).
//!
//! Spans and logs are encoded into their batches as requests finish (`batch`); their
//! tasks here send each batch when it fills (`max_batch` records) or at its flush time: every
//! `flush_interval` on a fixed schedule, the logs' half an interval after the spans'. Metrics
//! are exported every `metrics_interval`. Each signal goes to the shared endpoint, to one of
//! its own, or nowhere, over the shared transport, compression and time limit or its own
//! (`[telemetry.traces]` and the like). A batch is encoded once whatever
//! the retries, and copied once into the gRPC frame; a few requests of each signal may be out at once
//! (`MAX_IN_FLIGHT`; one while exports fail). Requests are gzip-compressed when configured.
//! An export that fails with a code OTLP calls retryable (gRPC UNAVAILABLE and the like, or
//! RESOURCE_EXHAUSTED carrying a RetryInfo; HTTP 429, 502, 503, 504) is retried with
//! exponential backoff and jitter, waiting what RetryInfo or `Retry-After` asks when the
//! collector says, for at most `max_retry_time`; then the batch is
//! dropped and counted. Meanwhile the batches keep taking records until they hold
//! `queue_capacity` and drop the rest, so memory stays bounded and the request path never
//! waits. The channel reconnects lazily, so export resumes by itself when the collector comes
//! back. On shutdown the open batches are closed and flushed once more.
//!
//! The export tasks run on the request runtime (with one worker thread, the sidecar's one
//! thread). On a thread of their own they made the sidecar a second thread waking hundreds
//! of times a second: sharing two cores with the load and the upstream, the machine left
//! 0.42–0.44 of them idle and the sidecar exporting to a receiver that does nothing ran at
//! 49,000–52,500 req/s, against 55,700–60,400 and 0.19–0.24 idle here (`meshlens bench
//! proxy`, docs/performance.md). Gzip compression, several times the cost of encoding,
//! keeps a thread of its own: the gRPC client compresses each request in one piece, which
//! would hold up the requests behind it. The metrics request is built and encoded on a
//! short-lived thread at the lowest scheduling priority (thousands of series take tens of
//! milliseconds) and sent as bytes.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Buf;
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse, trace::v1::ExportTraceServiceResponse,
    },
    resource::v1::Resource,
};
use prost::Message;
use tokio::{
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tonic::{
    Code, Status,
    codec::CompressionEncoding,
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};

use meshlens_common::tls::ClientTls;

use crate::{
    config::{Compression, OtlpProtocol, SignalExport, TelemetryConfig},
    error::StartError,
    identity::WorkloadIdentity,
};

use super::{
    RequestMetrics, RequestRecord, Side, TelemetryStats,
    batch::{Batches, Closed},
    export_headers::ExportHeaders,
    metrics::unix_nanos,
    otlp,
    export_tls::{self, Alpn},
    otlp_http::{HttpClient, Target},
    temporality::Deltas,
    wire,
};

/// First retry delay.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Export requests of one signal out at once. With one, the queue filled while a request
/// waited for its answer, and a collector slow to answer for a third of a second (busy on
/// the same cores) made a sidecar at 25,000 req/s drop records (`meshlens bench proxy`).
/// A few in flight ride out shorter stalls; each holds one encoded batch. A fresh collector's
/// first second under a sudden jump to that rate can still outlast them (records dropped,
/// counted): see the benchmark's `delivered` column.
const MAX_IN_FLIGHT: usize = 4;

/// Why an export attempt failed, whichever the transport.
#[derive(Debug)]
pub(super) struct Failed {
    /// What the retry counter and the log call it: the gRPC code (`unavailable`,
    /// `resource_exhausted`, ...) or the HTTP status (`http_503`, ...).
    pub reason: &'static str,
    /// Whether and when to try again.
    pub retry: Retry,
    /// What the collector or the connection said.
    pub message: String,
}

/// Whether a failed export is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// No: the collector will not take this request.
    Never,
    /// Yes, after the exporter's backoff.
    Backoff,
    /// Yes, after what the collector asked.
    After(Duration),
}

impl Failed {
    /// A failure worth retrying after the backoff (the connection, a timeout).
    pub(super) fn backoff(reason: &'static str, message: String) -> Self {
        Self { reason, retry: Retry::Backoff, message }
    }

    /// A failure no retry would mend.
    pub(super) fn final_error(reason: &'static str, message: String) -> Self {
        Self { reason, retry: Retry::Never, message }
    }
}

impl From<Status> for Failed {
    /// OTLP/gRPC's retryable codes; RESOURCE_EXHAUSTED only from a server that says when
    /// to come back (a RetryInfo).
    fn from(status: Status) -> Self {
        let hinted = meshlens_common::rpc::retry_delay(status.details());
        let retry = match status.code() {
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::OutOfRange | Code::DataLoss => {
                hinted.map_or(Retry::Backoff, Retry::After)
            }
            Code::ResourceExhausted => hinted.map_or(Retry::Never, Retry::After),
            _ => Retry::Never,
        };
        // A connection's failure (a refused TLS certificate, say) is in the status's sources.
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message = format!("{message}: {cause_text}");
            }
            source = cause.source();
        }
        Self { reason: code_label(status.code()), retry, message }
    }
}

/// When and how long to retry a failed export.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    max_elapsed: Duration,
}

impl RetryPolicy {
    /// The wait before the next attempt after `failed`, or `None` if it must not be retried.
    fn delay(failed: &Failed, backoff: Duration) -> Option<Duration> {
        match failed.retry {
            Retry::Never => None,
            Retry::Backoff => Some(backoff.mul_f64(0.5 + fastrand::f64())),
            Retry::After(delay) => Some(delay),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the time is up.
    async fn run<F, Fut>(&self, stats: &TelemetryStats, signal: &'static str, mut attempt: F) -> Result<u64, Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<u64, Failed>>,
    {
        let started = Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let failed = match attempt().await {
                Ok(rejected) => return Ok(rejected),
                Err(failed) => failed,
            };
            let Some(delay) = Self::delay(&failed, backoff) else { return Err(failed) };
            if started.elapsed() + delay > self.max_elapsed {
                return Err(failed);
            }
            stats.retried(signal, failed.reason);
            tokio::time::sleep(delay).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "unavailable",
        Code::ResourceExhausted => "resource_exhausted",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Cancelled => "cancelled",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::DataLoss => "data_loss",
        _ => "other",
    }
}

/// Sends export requests already encoded ([`wire`]) and decodes the response `R`.
#[derive(Debug)]
struct WireCodec<R>(std::marker::PhantomData<fn() -> R>);

impl<R> Default for WireCodec<R> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

#[derive(Debug)]
struct RequestEncoder;

impl tonic::codec::Encoder for RequestEncoder {
    type Item = Arc<wire::Request>;
    type Error = Status;
    fn encode(&mut self, item: Arc<wire::Request>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.write_to(dst);
        Ok(())
    }
}

#[derive(Debug)]
struct ProstDecoder<R>(std::marker::PhantomData<fn() -> R>);

impl<R: Message + Default + 'static> tonic::codec::Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<R>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        R::decode(bytes).map(Some).map_err(|e| Status::internal(format!("undecodable export response: {e}")))
    }
}

impl<R: Message + Default + Send + 'static> tonic::codec::Codec for WireCodec<R> {
    type Encode = Arc<wire::Request>;
    type Decode = R;
    type Encoder = RequestEncoder;
    type Decoder = ProstDecoder<R>;
    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }
    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder(std::marker::PhantomData)
    }
}

/// One exported signal: where its requests are sent and what its answer says.
trait Signal: Send + Sync + 'static {
    /// `spans`, `logs` or `metrics`.
    const SIGNAL: &'static str;
    /// The gRPC method.
    const PATH: &'static str;
    /// The OTLP/HTTP path under the endpoint.
    const HTTP_PATH: &'static str;
    /// The export response.
    type Response: Message + Default + Send + 'static;
    /// Records (data points, for metrics) the collector rejected, from its response.
    fn rejected(response: &Self::Response) -> u64;
}

/// A signal made of request records, encoded into [`Batches`] as requests finish.
trait RecordSignal: Signal {
    /// Where in each flush interval this signal's batches close, as a share of it.
    const PHASE: f64;
    /// Appends a record to the request being built.
    fn push(encoder: &mut wire::Encoder, record: &RequestRecord);
}

struct Spans;
struct Logs;
struct Metrics;

impl Signal for Spans {
    const SIGNAL: &'static str = "spans";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";
    type Response = ExportTraceServiceResponse;
    fn rejected(response: &Self::Response) -> u64 {
        response.partial_success.as_ref().map_or(0, |p| p.rejected_spans.max(0) as u64)
    }
}

impl RecordSignal for Spans {
    const PHASE: f64 = 0.0;
    fn push(encoder: &mut wire::Encoder, record: &RequestRecord) {
        encoder.push_span(record);
    }
}

impl Signal for Logs {
    const SIGNAL: &'static str = "logs";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";
    type Response = ExportLogsServiceResponse;
    fn rejected(response: &Self::Response) -> u64 {
        response.partial_success.as_ref().map_or(0, |p| p.rejected_log_records.max(0) as u64)
    }
}

impl RecordSignal for Logs {
    /// Halfway between the spans' flushes: a request's span and access-log record are queued
    /// together, and batches closing together made one burst of export work (the sidecar's
    /// encoding, the collector's handling) twice the size of each of these two.
    const PHASE: f64 = 0.5;
    fn push(encoder: &mut wire::Encoder, record: &RequestRecord) {
        encoder.push_log(record);
    }
}

impl Signal for Metrics {
    const SIGNAL: &'static str = "metrics";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const HTTP_PATH: &'static str = "/v1/metrics";
    type Response = ExportMetricsServiceResponse;
    fn rejected(response: &Self::Response) -> u64 {
        response.partial_success.as_ref().map_or(0, |p| p.rejected_data_points.max(0) as u64)
    }
}

/// Where export requests go, checked when the sidecar starts; connected once the export
/// runs. An `https://` endpoint carries the TLS configuration its connections use.
#[derive(Debug, Clone)]
enum Destination {
    Grpc(Box<Endpoint>, Option<Arc<rustls::ClientConfig>>),
    Http(Target, Option<Arc<rustls::ClientConfig>>),
}

impl Destination {
    /// Checks `endpoint`, reached over `protocol` with calls of at most `timeout`, and over
    /// `tls` when it is an `https://` endpoint; over HTTP, `exact` says it is the URL a signal
    /// is posted to rather than a prefix of one.
    fn parse(endpoint: &str, exact: bool, protocol: OtlpProtocol, timeout: Duration, tls: &ClientTls) -> Result<Self, StartError> {
        let invalid = |reason: String| StartError::OtlpEndpoint { endpoint: endpoint.to_owned(), reason };
        // The system's roots are read here, once per endpoint, only for TLS endpoints.
        let tls_config = |https: bool| {
            https.then(|| tls.config().map(Arc::new).map_err(|e| invalid(format!("its TLS: {e}")))).transpose()
        };
        match protocol {
            OtlpProtocol::Grpc => {
                let grpc = Endpoint::from_shared(endpoint.to_owned())
                    .map_err(|e| invalid(e.to_string()))?
                    .connect_timeout(export_tls::CONNECT_TIMEOUT)
                    .timeout(timeout);
                match grpc.uri().scheme_str() {
                    Some("http" | "https") => {}
                    _ => return Err(invalid("an OTLP/gRPC endpoint starts with http:// or https://".into())),
                }
                let config = tls_config(grpc.uri().scheme_str() == Some("https"))?;
                Ok(Self::Grpc(Box::new(grpc), config))
            }
            OtlpProtocol::HttpProtobuf => {
                let target = Target::parse(endpoint, exact)?;
                let config = tls_config(target.https())?;
                Ok(Self::Http(target, config))
            }
        }
    }

    /// A client the signals share (one lazily connecting gRPC channel, or one HTTP
    /// connection pool), sending `headers` with every request. Called within the runtime
    /// the export runs on.
    fn connect(self, compression: Compression, timeout: Duration, headers: &ExportHeaders) -> WireClient {
        match self {
            Self::Grpc(endpoint, tls) => {
                let channel = match tls {
                    Some(config) => endpoint.connect_with_connector_lazy(export_tls::tls(&config, Alpn::H2)),
                    None => endpoint.connect_lazy(),
                };
                let grpc = tonic::client::Grpc::new(channel);
                let grpc = match compression {
                    Compression::Gzip => grpc.send_compressed(CompressionEncoding::Gzip),
                    Compression::Zstd => grpc.send_compressed(CompressionEncoding::Zstd),
                    Compression::None => grpc,
                };
                WireClient::Grpc(grpc, MetadataMap::from_headers(headers.map().clone()))
            }
            Self::Http(target, tls) => {
                WireClient::Http(HttpClient::new(target, tls.as_ref(), compression, timeout, headers.map().clone()))
            }
        }
    }
}

/// Sends encoded export requests to the collector.
#[derive(Debug, Clone)]
enum WireClient {
    /// The channel, and the metadata every request carries ([`ExportHeaders`]).
    Grpc(tonic::client::Grpc<Channel>, MetadataMap),
    Http(HttpClient),
}

impl WireClient {
    /// Sends one encoded request; returns how many records the collector rejected.
    async fn export<S: Signal>(&mut self, request: Arc<wire::Request>) -> Result<u64, Failed> {
        match self {
            Self::Grpc(grpc, metadata) => {
                grpc.ready().await.map_err(|e| Failed::backoff("unavailable", format!("the collector's channel: {e}")))?;
                let path = http::uri::PathAndQuery::from_static(S::PATH);
                let request = tonic::Request::from_parts(metadata.clone(), tonic::Extensions::default(), request);
                let response = grpc.unary(request, path, WireCodec::<S::Response>::default()).await?;
                Ok(S::rejected(response.get_ref()))
            }
            Self::Http(client) => Ok(S::rejected(&client.export::<S::Response>(S::HTTP_PATH, &request).await?)),
        }
    }
}

/// The running export tasks.
#[derive(Debug)]
pub struct ExportHandle {
    shutdown: Option<watch::Sender<bool>>,
    running: Running,
}

/// Where the export tasks run.
#[derive(Debug)]
enum Running {
    Nothing,
    /// On the request runtime.
    Tasks(JoinHandle<()>),
    /// On a thread of their own (compression on).
    Thread(std::thread::JoinHandle<()>),
}

impl ExportHandle {
    /// A handle with nothing to stop (export turned off).
    pub fn disabled() -> Self {
        Self { shutdown: None, running: Running::Nothing }
    }

    /// Flushes what is queued and stops, waiting at most `limit`; then gives up on the rest.
    pub async fn shutdown(mut self, limit: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        let flushed = match std::mem::replace(&mut self.running, Running::Nothing) {
            Running::Nothing => true,
            Running::Tasks(tasks) => tokio::time::timeout(limit, tasks).await.is_ok(),
            Running::Thread(thread) => tokio::time::timeout(limit, tokio::task::spawn_blocking(move || thread.join())).await.is_ok(),
        };
        if !flushed {
            tracing::warn!("telemetry flush did not finish in {limit:?}; remaining records dropped");
        }
    }
}

/// Where one signal's export requests go.
enum Route {
    /// To the shared endpoint with the shared headers and settings, on the client the
    /// signals sharing all of them share.
    Shared,
    /// To an endpoint, or with headers, a transport, compression, time limit or TLS of the
    /// signal's own.
    Own(OwnRoute),
}

/// A signal's own destination, and how its requests are sent there.
struct OwnRoute {
    destination: Destination,
    headers: ExportHeaders,
    compression: Compression,
    timeout: Duration,
}

impl Route {
    /// Where `export` goes, if it is exported, checked.
    fn of(export: &SignalExport, config: &TelemetryConfig) -> Result<Option<Self>, StartError> {
        let Some((endpoint, shared)) = config.signal_endpoint(export) else {
            return Ok(None);
        };
        let (protocol, timeout) = (config.signal_protocol(export), config.signal_timeout(export));
        let compression = config.signal_compression(export);
        let same_settings = (protocol, compression, timeout) == (config.otlp_protocol, config.compression, config.export_timeout);
        if shared && export.headers.is_none() && export.tls.is_none() && same_settings {
            return Ok(Some(Self::Shared));
        }
        let destination = Destination::parse(endpoint, !shared, protocol, timeout, config.signal_tls(export))?;
        let headers = config.signal_headers(export).clone();
        Ok(Some(Self::Own(OwnRoute { destination, headers, compression, timeout })))
    }

    /// How its requests are compressed, `shared` saying it for the shared route.
    fn compression(&self, shared: Compression) -> Compression {
        match self {
            Self::Shared => shared,
            Self::Own(own) => own.compression,
        }
    }
}

/// Where spans, logs and metrics go (none: not exported), and the shared endpoint when one
/// of them goes there; every endpoint checked.
fn routes(config: &TelemetryConfig) -> Result<([Option<Route>; 3], Option<Destination>), StartError> {
    let signals = &config.signals;
    let routes = [Route::of(&signals.traces, config)?, Route::of(&signals.logs, config)?, Route::of(&signals.metrics, config)?];
    let shared = match &config.otlp_endpoint {
        Some(endpoint) if routes.iter().any(|r| matches!(r, Some(Route::Shared))) => {
            Some(Destination::parse(endpoint, false, config.otlp_protocol, config.export_timeout, &config.tls)?)
        }
        _ => None,
    };
    Ok((routes, shared))
}

/// Checks the export endpoints as the sidecar's start would, without starting anything
/// (`--check`).
pub fn check_endpoints(config: &TelemetryConfig) -> Result<(), StartError> {
    routes(config).map(drop)
}

/// Starts the export of the signals exported, if any: a task each, on one client for those
/// sharing `otlp_endpoint` and `otlp_headers` (a lazily connecting gRPC channel, or a pool
/// of HTTP connections) and a client of its own for a signal with its own endpoint,
/// headers, transport, compression or time limit; on the runtime this is called from, or on
/// a thread of their own when any signal's requests are compressed (or when called outside
/// a runtime). A signal not exported is not encoded.
pub(super) fn spawn(
    config: &TelemetryConfig,
    identity: Arc<WorkloadIdentity>,
    metrics: RequestMetrics,
    stats: TelemetryStats,
    own_process: bool,
) -> Result<Option<Started>, StartError> {
    let (routes, shared) = routes(config)?;
    if routes.iter().all(Option::is_none) {
        return Ok(None);
    }
    let export_timeout = config.export_timeout;
    let compression = config.compression;
    let any_compressed = routes.iter().flatten().any(|route| route.compression(compression) != Compression::None);
    let headers = config.otlp_headers.clone();
    let resource = otlp::resource(&identity, &config.resource_attributes.with_instance_id());
    let resource_bytes = resource.encode_to_vec();
    let signals = &config.signals;
    let retry = [&signals.traces, &signals.logs, &signals.metrics].map(|export| config.signal_max_retry_time(export));
    let drain = Drain {
        flush_interval: config.flush_interval,
        anchor: Instant::now(),
        retry: RetryPolicy { max_elapsed: config.max_retry_time },
        resource: Arc::new(resource),
        stats,
    };
    let (resource, scope) = (Arc::new(resource_bytes), Arc::new(otlp::scope().encode_to_vec()));
    let batches = |encoding| Batches::new(config.queue_capacity, config.max_batch, encoding, resource.clone(), scope.clone());
    let [to_spans, to_logs, to_metrics] = routes;
    let span_batches = to_spans.is_some().then(|| batches((wire::Encoder::with_url_limit(config.max_path_tag_length), Spans::push)));
    let log_batches = to_logs.is_some().then(|| batches((wire::Encoder::default(), Logs::push)));
    let exports_metrics = to_metrics.is_some();
    let (metrics_interval, metrics_temporality) = (config.metrics_interval, config.metrics_temporality);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (spans, logs) = (span_batches.clone(), log_batches.clone());
    let export = async move {
        let shared = shared.map(|destination| destination.connect(compression, export_timeout, &headers));
        let client = |route: Option<Route>| match route? {
            Route::Shared => shared.clone(),
            Route::Own(own) => Some(own.destination.connect(own.compression, own.timeout, &own.headers)),
        };
        let mut tasks = Vec::new();
        let [spans_retry, logs_retry, metrics_retry] = retry;
        if let (Some(client), Some(batches)) = (client(to_spans), spans) {
            tasks.push(drain.retrying(spans_retry).spawn::<Spans>(client, batches, shutdown_rx.clone()));
        }
        if let (Some(client), Some(batches)) = (client(to_logs), logs) {
            tasks.push(drain.retrying(logs_retry).spawn::<Logs>(client, batches, shutdown_rx.clone()));
        }
        if let Some(client) = client(to_metrics) {
            let drain = drain.retrying(metrics_retry);
            let deltas = Deltas::new(metrics_temporality);
            tasks.push(tokio::spawn(export_metrics(client, drain, metrics, metrics_interval, own_process, deltas, shutdown_rx)));
        }
        for task in tasks {
            let _ = task.await;
        }
    };
    let running = match tokio::runtime::Handle::try_current() {
        Ok(runtime) if !any_compressed => Running::Tasks(runtime.spawn(export)),
        _ => Running::Thread(export_thread(&identity.workload, export)?),
    };
    let handle = ExportHandle { shutdown: Some(shutdown_tx), running };
    Ok(Some(Started { handle, spans: span_batches, logs: log_batches, metrics: exports_metrics }))
}

/// The running export and the batches the request path encodes records into, for the
/// signals exported.
pub(super) struct Started {
    pub handle: ExportHandle,
    pub spans: Option<Arc<Batches>>,
    pub logs: Option<Arc<Batches>>,
    /// Whether metrics are exported.
    pub metrics: bool,
}

/// Runs `export` on a thread of its own, with a single-threaded runtime.
fn export_thread(workload: &str, export: impl Future<Output = ()> + Send + 'static) -> Result<std::thread::JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(format!("export-{workload}"))
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(export),
            Err(error) => tracing::error!(%error, "cannot start the telemetry export runtime; telemetry is dropped"),
        })
        .map_err(|e| StartError::OtlpEndpoint { endpoint: "(export thread)".into(), reason: e.to_string() })
}

/// Tracks whether a signal's export works, so failures are logged once per outage.
struct Health {
    signal: &'static str,
    failing: bool,
}

impl Health {
    fn new(signal: &'static str) -> Self {
        Self { signal, failing: false }
    }

    /// Counts an export request of `n` records and `bytes` bytes, sent or given up on.
    fn account(&mut self, stats: &TelemetryStats, n: u64, bytes: u64, result: Result<u64, Failed>) {
        match result {
            Ok(rejected) => {
                stats.exported(self.signal, n - rejected.min(n), bytes);
                if rejected > 0 {
                    stats.dropped(self.signal, "rejected", rejected);
                }
                if std::mem::replace(&mut self.failing, false) {
                    tracing::info!(signal = self.signal, "telemetry export recovered");
                }
            }
            Err(failed) => {
                stats.dropped(self.signal, "export_failed", n);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(signal = self.signal, reason = failed.reason, error = %failed.message, "telemetry export failing; dropping batches until the collector answers");
                }
            }
        }
    }
}

/// How batches are sent.
#[derive(Debug, Clone)]
struct Drain {
    flush_interval: Duration,
    /// Where the flush schedule starts.
    anchor: Instant,
    retry: RetryPolicy,
    resource: Arc<Resource>,
    stats: TelemetryStats,
}

impl Drain {
    /// This drain, retrying failed exports for at most `max_elapsed`.
    fn retrying(&self, max_elapsed: Duration) -> Self {
        Self { retry: RetryPolicy { max_elapsed }, ..self.clone() }
    }

    /// Spawns a task that sends `batches` as they fill or their flush time comes, until
    /// shutdown; then flushes what they hold.
    fn spawn<S: RecordSignal>(self, sink: WireClient, batches: Arc<Batches>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut health = Health::new(S::SIGNAL);
            let mut in_flight = JoinSet::new();
            let origin = self.anchor + self.flush_interval.mul_f64(S::PHASE);
            loop {
                while let Some(batch) = batches.take_closed() {
                    self.send::<S>(batch, &sink, &batches, &mut in_flight, &mut health).await;
                }
                // Woken for a batch's first record (to learn its flush time) and for a full
                // batch; not for every record.
                let deadline = batches.open_since().map(|since| flush_at(origin, self.flush_interval, since));
                let stopping = tokio::select! {
                    _ = batches.changed() => false,
                    _ = sleep_until_some(deadline) => {
                        batches.close_open();
                        false
                    }
                    _ = shutdown.changed() => true,
                    Some(sent) = in_flight.join_next(), if !in_flight.is_empty() => {
                        self.finished(sent, &mut health, &batches);
                        false
                    }
                };
                if stopping {
                    batches.shut();
                    while let Some(batch) = batches.take_closed() {
                        self.send::<S>(batch, &sink, &batches, &mut in_flight, &mut health).await;
                    }
                    while let Some(sent) = in_flight.join_next().await {
                        self.finished(sent, &mut health, &batches);
                    }
                    return;
                }
            }
        })
    }

    /// Sends `batch` once there is room among the requests out: at most [`MAX_IN_FLIGHT`],
    /// one while exports are failing (no more retries at a collector that is down). Past that
    /// the batches fill, and what does not fit is dropped and counted.
    async fn send<S: RecordSignal>(
        &self,
        batch: Closed,
        sink: &WireClient,
        batches: &Batches,
        in_flight: &mut JoinSet<Sent>,
        health: &mut Health,
    ) {
        while let Some(sent) = in_flight.try_join_next() {
            self.finished(sent, health, batches);
        }
        let limit = if health.failing { 1 } else { MAX_IN_FLIGHT };
        while in_flight.len() >= limit
            && let Some(sent) = in_flight.join_next().await
        {
            self.finished(sent, health, batches);
        }
        // Encoded once; a retry resends the same bytes.
        let request = Arc::new(batch.request);
        let (retry, stats, sink, records) = (self.retry, self.stats.clone(), sink.clone(), batch.records);
        in_flight.spawn(async move {
            let result = retry
                .run(&stats, S::SIGNAL, || {
                    let (mut sink, request) = (sink.clone(), request.clone());
                    async move { sink.export::<S>(request).await }
                })
                .await;
            Sent { records, result, request }
        });
    }

    /// Counts a finished export and hands its buffer back for a later batch.
    fn finished(&self, sent: Result<Sent, tokio::task::JoinError>, health: &mut Health, batches: &Batches) {
        match sent {
            Ok(Sent { records, result, request }) => {
                health.account(&self.stats, records, request.encoded_len() as u64, result);
                if let Ok(request) = Arc::try_unwrap(request) {
                    batches.recycle(request);
                }
            }
            Err(e) => tracing::warn!(signal = health.signal, "an export task ended abnormally: {e}"),
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One export request, sent or given up on.
struct Sent {
    records: u64,
    result: Result<u64, Failed>,
    request: Arc<wire::Request>,
}

/// When a batch begun at `started` is sent at the latest: the first point of the schedule
/// `origin + k × interval` after it. Batches close on a fixed schedule rather than an interval
/// after their first record, so that the two signals, offset by their [`RecordSignal::PHASE`],
/// stay apart; a record still waits at most one interval.
fn flush_at(origin: Instant, interval: Duration, started: Instant) -> Instant {
    let Some(since) = started.checked_duration_since(origin) else { return origin };
    let interval_ns = interval.as_nanos().max(1);
    let periods = since.as_nanos() / interval_ns + 1;
    let at = u64::try_from(periods * interval_ns).ok().and_then(|ns| origin.checked_add(Duration::from_nanos(ns)));
    // An interval too long to add to a clock reading: a year is as good as never.
    at.or_else(|| started.checked_add(interval)).unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600))
}

/// Exports the request metrics every `interval`, and once more on shutdown; with them, when
/// the sidecar is its process's one (`own_process`), the process's CPU, memory, threads and
/// file descriptors ([`otlp`]'s `process_metrics`).
///
/// The OTLP message and its encoding are made on a thread of their own at the lowest
/// priority: for 1,900 series they held the request thread for about 40 ms (a request at
/// 1.2 KB a series), holding up every request behind them, every interval. What takes a
/// lock the request path also takes (the table, the counters) is copied here first.
/// `deltas`, if the export is not cumulative, turns each request into deltas there
/// ([`super::temporality`]).
async fn export_metrics(
    sink: WireClient,
    drain: Drain,
    metrics: RequestMetrics,
    interval: Duration,
    own_process: bool,
    deltas: Option<Deltas>,
    mut shutdown: watch::Receiver<bool>,
) {
    let deltas = deltas.map(|deltas| Arc::new(std::sync::Mutex::new(deltas)));
    let mut health = Health::new(Metrics::SIGNAL);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = shutdown.changed() => true,
        };
        let snapshot = MetricsSnapshot {
            series: metrics.snapshot_for_export(),
            tcp: tcp_counters(&drain.stats),
            active: [Side::Inbound, Side::Outbound].map(|side| (side, drain.stats.active(side).get())),
            start_unix_nanos: metrics.start_unix_nanos(),
            own_process,
        };
        // The process's figures go out even while no request has come.
        let series = snapshot.series.len() as u64;
        if (series > 0 || own_process)
            && let Some(request) = encode_in_background(snapshot, drain.resource.clone(), deltas.clone()).await
        {
            let request = Arc::new(request);
            let bytes = request.encoded_len() as u64;
            let result = drain
                .retry
                .run(&drain.stats, Metrics::SIGNAL, || {
                    let (mut sink, request) = (sink.clone(), request.clone());
                    async move { sink.export::<Metrics>(request).await }
                })
                .await;
            health.account(&drain.stats, series, bytes, result);
        }
        if last {
            return;
        }
    }
}

/// What a metrics export holds, copied on the request thread.
struct MetricsSnapshot {
    series: Vec<(super::metrics::RequestKey, super::metrics::RequestStats)>,
    tcp: Vec<otlp::TcpCounters>,
    active: [(Side, i64); 2],
    start_unix_nanos: u64,
    /// Whether the sidecar is its process's one, whose figures are its own.
    own_process: bool,
}

/// Builds and encodes the export request of `snapshot` on a thread of its own at the lowest
/// scheduling priority: on a core shared with the request thread, requests come first.
/// `None` if the thread could not start or panicked (logged).
async fn encode_in_background(
    snapshot: MetricsSnapshot,
    resource: Arc<Resource>,
    deltas: Option<Arc<std::sync::Mutex<Deltas>>>,
) -> Option<wire::Request> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("metrics-encode".into()).spawn(move || {
        lowest_priority();
        let now = unix_nanos(SystemTime::now());
        // Read here, off the request thread: four files and a directory of `/proc/self`.
        let process = snapshot.own_process.then(meshlens_common::process::Reading::now);
        let (series, tcp, active) = (&snapshot.series, &snapshot.tcp, &snapshot.active);
        let mut request = otlp::metrics_request(&resource, snapshot.start_unix_nanos, now, series, tcp, active, process.as_ref());
        if let Some(deltas) = &deltas {
            deltas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).apply(&mut request);
        }
        let _ = tx.send(wire::Request::encoded(request.encode_to_vec()));
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the metrics encoder thread: {e}");
        return None;
    }
    rx.await.map_err(|_| tracing::warn!("encoding the request metrics failed")).ok()
}

/// Lowers the calling thread's scheduling priority to nice 19 (on Linux the nice value is
/// the thread's, not the process's).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!("cannot lower the metrics encoder's priority: {e}");
    }
}

/// The TCP counters of both listeners and of every upstream workload.
fn tcp_counters(stats: &TelemetryStats) -> Vec<otlp::TcpCounters> {
    let mut tcp: Vec<otlp::TcpCounters> =
        [Side::Inbound, Side::Outbound].iter().map(|side| otlp::TcpCounters::listener(*side, &stats.connections(*side))).collect();
    tcp.extend(stats.upstreams().iter().map(|(id, m)| otlp::TcpCounters::upstream(id, m)));
    tcp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_a_signal_goes_to_is_checked_and_no_other() {
        use crate::config::{SignalEndpoint, SignalExport};
        let http = TelemetryConfig { otlp_protocol: OtlpProtocol::HttpProtobuf, ..TelemetryConfig::default() };
        assert!(check_endpoints(&http).is_ok());
        let own = |to: &str| SignalExport { to: SignalEndpoint::Own(to.into()), ..SignalExport::default() };
        let mut tls = http.clone();
        tls.signals.logs = own("https://loki:3100/otlp/v1/logs");
        assert!(check_endpoints(&tls).is_ok(), "TLS, trusting the system's roots");
        tls.signals.logs = own("ftp://loki:3100/otlp/v1/logs");
        let error = check_endpoints(&tls).expect_err("not HTTP").to_string();
        assert!(error.contains("ftp://loki:3100/otlp/v1/logs"), "{error}");
        // A shared endpoint no signal uses is not.
        let mut unused = http.clone();
        unused.otlp_endpoint = Some("ftp://unused:4318".into());
        unused.signals.traces = own("http://tempo:4318/v1/traces");
        unused.signals.logs.to = SignalEndpoint::Off;
        unused.signals.metrics.to = SignalEndpoint::Off;
        assert!(check_endpoints(&unused).is_ok());
        unused.signals.metrics.to = SignalEndpoint::Shared;
        assert!(check_endpoints(&unused).is_err());
    }

    #[test]
    fn a_signal_with_settings_of_its_own_gets_a_client_of_its_own() {
        use crate::config::SignalExport;
        let grpc = TelemetryConfig { otlp_endpoint: Some("http://collector:4317".into()), ..TelemetryConfig::default() };
        let mut config = grpc.clone();
        config.signals.logs = SignalExport { protocol: Some(OtlpProtocol::HttpProtobuf), ..SignalExport::default() };
        config.signals.metrics = SignalExport { compression: Some(Compression::Gzip), ..SignalExport::default() };
        config.signals.traces = SignalExport { timeout: Some(grpc.export_timeout), ..SignalExport::default() };
        let Ok(([Some(traces), Some(logs), Some(metrics)], Some(Destination::Grpc(..)))) = routes(&config) else {
            panic!("three routes and the shared gRPC endpoint");
        };
        assert!(matches!(traces, Route::Shared), "its own timeout is the shared one");
        let Route::Own(OwnRoute { destination: Destination::Http(target, None), compression: Compression::None, .. }) = logs else {
            panic!("logs over HTTP, uncompressed")
        };
        let uri = target.uri("/v1/logs").map(|u| u.to_string()).unwrap_or_default();
        assert_eq!(uri, "http://collector:4317/v1/logs", "the shared endpoint, the signal's path");
        assert!(matches!(metrics, Route::Own(OwnRoute { destination: Destination::Grpc(..), compression: Compression::Gzip, .. })), "gzip");
        assert_eq!(metrics.compression(Compression::None), Compression::Gzip);
        assert_eq!(traces.compression(Compression::Zstd), Compression::Zstd, "the shared one");
    }

    #[test]
    fn batches_close_on_the_schedule_and_the_logs_halfway_between_the_spans() {
        let (origin, ms) = (Instant::now(), Duration::from_millis);
        let interval = ms(200);
        assert_eq!(flush_at(origin, interval, origin), origin + interval, "on a point: the next one");
        assert_eq!(flush_at(origin, interval, origin + ms(1)), origin + interval);
        assert_eq!(flush_at(origin, interval, origin + ms(199)), origin + interval, "a batch begun late is short");
        assert_eq!(flush_at(origin, interval, origin + ms(1_000)), origin + ms(1_200));
        let logs = origin + interval.mul_f64(Logs::PHASE);
        assert_eq!(flush_at(logs, interval, origin + ms(1)), origin + ms(100), "before its first point");
        assert_eq!(flush_at(logs, interval, origin + ms(1_150)), origin + ms(1_300));
        for begun in (0..2_000).step_by(7).map(ms) {
            let (spans_at, logs_at) = (flush_at(origin, interval, origin + begun), flush_at(logs, interval, origin + begun));
            assert!(spans_at > origin + begun && spans_at <= origin + begun + interval, "a record waits at most an interval");
            assert!(logs_at > origin + begun && logs_at <= origin + begun + interval);
            assert_eq!(spans_at.max(logs_at) - spans_at.min(logs_at), ms(100), "the signals flush half an interval apart");
        }
        assert!(flush_at(origin, Duration::MAX, origin + ms(5)) > origin + ms(5), "no overflow");
    }

    #[test]
    fn only_retryable_codes_are_retried() {
        let backoff = Duration::from_millis(100);
        let wait = |s: Status| RetryPolicy::delay(&Failed::from(s), backoff);
        assert!(wait(Status::unavailable("down")).is_some_and(|d| d >= backoff / 2 && d <= backoff * 3 / 2));
        assert!(wait(Status::deadline_exceeded("slow")).is_some());
        assert_eq!(wait(Status::invalid_argument("bad")), None);
        assert_eq!(wait(Status::internal("bug")), None);
        assert_eq!(wait(Status::resource_exhausted("full")), None, "no RetryInfo: not retried");
        let details = meshlens_common::rpc::status_with_retry(8, "full", Duration::from_secs(2));
        let hinted = Status::with_details(Code::ResourceExhausted, "full", details.into());
        assert_eq!(wait(hinted), Some(Duration::from_secs(2)), "RetryInfo's delay is honoured");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_time_is_up() {
        let stats = TelemetryStats::default();
        let policy = RetryPolicy { max_elapsed: Duration::from_secs(3) };
        let mut attempts = 0;
        let result = policy
            .run(&stats, "spans", || {
                attempts += 1;
                async { Err::<u64, _>(Failed::from(Status::unavailable("down"))) }
            })
            .await;
        assert!(result.is_err());
        assert!((3..=8).contains(&attempts), "{attempts} attempts in 3s of backoff");
        let mut attempts = 0;
        let ok = policy
            .run(&stats, "spans", || {
                attempts += 1;
                let outcome = if attempts < 3 { Err(Failed::from(Status::unavailable("down"))) } else { Ok(0) };
                async move { outcome }
            })
            .await;
        assert_eq!((ok.ok(), attempts), (Some(0), 3), "a retried batch gets through");
    }
}
