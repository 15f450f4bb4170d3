//! Sidecar configuration: a TOML file read into [`RawConfig`], validated once into the
//! typed [`ProxyConfig`] that the rest of the proxy uses.
//!
//! The service table is static for now: each service lists its endpoints (the inbound
//! addresses of its workloads' sidecars) with their workload, version and weight.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use meshlens_common::tls::{ClientTls, TlsFiles};
use serde::Deserialize;

use crate::{
    classify::ResponseFlags,
    http_route::RouteTemplates,
    identity::WorkloadIdentity,
    telemetry::{
        access_log::{self, AccessLogFormat, LogFilter},
        export_headers::{self, ExportHeaders},
        metrics::{Label, LabelPolicy},
        otel_env,
        resource::{self, ResourceAttributes},
        temporality::Temporality,
    },
    trace_context::{Format, Formats},
};

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file")]
    Read(#[from] std::io::Error),
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("invalid configuration")]
    Parse(#[from] toml::de::Error),
    /// The values are well-formed but inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The workload this sidecar speaks for.
    pub workload: RawWorkload,
    /// The inbound side.
    pub inbound: RawInbound,
    /// The outbound side.
    pub outbound: RawOutbound,
    /// The admin server (`/metrics`, `/ready`).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Telemetry export.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Access logs on stdout.
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// Ordinary exchanges' streams.
    #[serde(default)]
    pub streams: RawStreams,
    /// Connections the sidecar accepts.
    #[serde(default)]
    pub connections: RawConnections,
    /// Upgraded connections (WebSocket and the like).
    #[serde(default)]
    pub upgrades: RawUpgrades,
    /// The services this sidecar can route to.
    #[serde(default)]
    pub services: Vec<RawService>,
}

/// `[workload]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    /// Service name.
    pub service: String,
    /// Workload name; defaults to `<service>-<version>`.
    pub workload: Option<String>,
    /// Version label; defaults to `v1`.
    #[serde(default = "default_version")]
    pub version: String,
    /// Namespace; defaults to `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

/// `[inbound]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    /// Where the inbound side listens.
    pub listen: SocketAddr,
    /// The local application's address.
    pub app: SocketAddr,
    /// Route templates of the application's paths (`/products/{id}`), for `http.route`.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// `[outbound]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbound {
    /// Where the outbound side listens for the application's requests.
    pub listen: SocketAddr,
}

/// `[streams]`: ordinary (not upgraded) exchanges.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreams {
    /// Cut an exchange off once its response has started and neither body has carried a frame
    /// for this long (flag `SI`); `"0"` never.
    #[serde(default = "default_stream_idle", deserialize_with = "meshlens_common::duration::deserialize")]
    pub idle_timeout: Duration,
}

impl Default for RawStreams {
    fn default() -> Self {
        Self { idle_timeout: default_stream_idle() }
    }
}

fn default_stream_idle() -> Duration {
    crate::stream_idle::STREAM_IDLE_TIMEOUT
}

/// `[connections]`: connections the sidecar accepts (both sides and the admin server).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    /// Close a connection after this long without an exchange in flight or a byte either
    /// way; `"0"` never.
    #[serde(default = "default_connection_idle", deserialize_with = "meshlens_common::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Close a connection whose request head is still not whole this long after its first
    /// byte; `"0"` never.
    #[serde(default = "default_request_headers", deserialize_with = "meshlens_common::duration::deserialize")]
    pub request_headers_timeout: Duration,
    /// The largest request head taken, in KiB: an HTTP/1 request line and headers, an
    /// HTTP/2 header list (Envoy's `max_request_headers_kb`, 60 by default); a larger one
    /// gets `431`.
    #[serde(default = "default_max_request_headers_kb")]
    pub max_request_headers_kb: u32,
}

impl Default for RawConnections {
    fn default() -> Self {
        Self {
            idle_timeout: default_connection_idle(),
            request_headers_timeout: default_request_headers(),
            max_request_headers_kb: default_max_request_headers_kb(),
        }
    }
}

fn default_max_request_headers_kb() -> u32 {
    u32::try_from(crate::server::MAX_REQUEST_HEADERS / 1024).unwrap_or(u32::MAX)
}

/// `[connections] max_request_headers_kb` in bytes: from 8 KiB (the least an HTTP/1 reader
/// takes) to 8 MiB (Envoy's bound).
fn request_headers_bytes(kb: u32) -> Result<usize, ConfigError> {
    match kb {
        8..=8192 => Ok(kb as usize * 1024),
        _ => Err(ConfigError::Invalid(format!("connections.max_request_headers_kb must be from 8 to 8192, not {kb}"))),
    }
}

/// A configured time limit: `"0"` turns it off.
fn unless_zero(limit: Duration) -> Option<Duration> {
    Some(limit).filter(|d| !d.is_zero())
}

fn default_request_headers() -> Duration {
    crate::server::REQUEST_HEADERS_TIMEOUT
}

fn default_connection_idle() -> Duration {
    crate::server::CONNECTION_IDLE_TIMEOUT
}

/// `[upgrades]`: HTTP/1.1 upgraded connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpgrades {
    /// Close an upgraded connection after this long without a byte either way; `"0"` never.
    #[serde(default = "default_upgrade_idle", deserialize_with = "meshlens_common::duration::deserialize")]
    pub idle_timeout: Duration,
}

impl Default for RawUpgrades {
    fn default() -> Self {
        Self { idle_timeout: default_upgrade_idle() }
    }
}

fn default_upgrade_idle() -> Duration {
    crate::stack::forward::UPGRADE_IDLE_TIMEOUT
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Where the admin server listens; port 0 picks a free port.
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { listen: default_admin() }
    }
}

/// `[telemetry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// How telemetry reaches the collector: `grpc` (default) or `http/protobuf`.
    #[serde(default)]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// The collector's OTLP endpoint (default `http://127.0.0.1:4317` over gRPC,
    /// `http://127.0.0.1:4318` over HTTP, where `/v1/traces`, `/v1/logs` and `/v1/metrics` are
    /// appended to it); empty turns export off.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `[telemetry.traces]`: where spans go, if not with the rest.
    #[serde(default)]
    pub traces: RawSignal,
    /// `[telemetry.logs]`: where access-log records go, if not with the rest.
    #[serde(default)]
    pub logs: RawSignal,
    /// `[telemetry.metrics]`: where request metrics go, if not with the rest.
    #[serde(default)]
    pub metrics: RawSignal,
    /// Longest time a span or log record waits before its batch is sent.
    #[serde(default, deserialize_with = "some_duration")]
    pub flush_interval: Option<Duration>,
    /// How often request metrics are exported.
    #[serde(default, deserialize_with = "some_duration")]
    pub metrics_interval: Option<Duration>,
    /// `cumulative` (default), `delta` or `lowmemory`: the metrics export's temporality.
    #[serde(default)]
    pub metrics_temporality: Option<Temporality>,
    /// Time limit of one export call.
    #[serde(default, deserialize_with = "some_duration")]
    pub export_timeout: Option<Duration>,
    /// Records of each signal (spans, logs) held encoded and unsent at most; past that, new
    /// records are dropped and counted.
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// Largest number of records in one export batch.
    #[serde(default)]
    pub max_batch: Option<usize>,
    /// Trace-context formats written to the next hop (`w3c`, `b3`, `b3multi`); formats a
    /// request arrives with are always written back too.
    #[serde(default)]
    pub propagation: Option<Vec<Format>>,
    /// Share of new traces sampled (0 to 1, default 1); a caller's decision is always followed.
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    /// Keep the spans of failed requests even when their trace is not sampled.
    #[serde(default = "default_true")]
    pub keep_errors: bool,
    /// Keep the spans of requests at least this slow even when not sampled; `0` turns it off.
    #[serde(default = "default_slow", deserialize_with = "meshlens_common::duration::deserialize")]
    pub slow_threshold: Duration,
    /// Compress export requests: `none` (default) or `gzip`. gzip saves bandwidth between
    /// nodes at a measured cost of about 0.13 CPU-seconds per 1,000 requests.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Longest time one batch is retried (only for errors OTLP calls retryable); then it is dropped.
    #[serde(default = "default_retry_time", deserialize_with = "meshlens_common::duration::deserialize")]
    pub max_retry_time: Duration,
    /// Labels of the request metrics: `source`, `destination`, `status_code`, `method`,
    /// `route`, `response_flags` (default: all).
    #[serde(default = "default_labels")]
    pub metric_labels: Vec<Label>,
    /// Distinct values each label admits; the rest fold into `other` and are counted.
    #[serde(default = "default_max_label_values")]
    pub max_label_values: usize,
    /// Spans' `url.path`, `url.query` and `url.full` are cut to this many bytes (Istio's
    /// `max_path_tag_length`); `0` keeps them whole. Access-log records keep them whole.
    #[serde(default = "default_max_path_tag_length")]
    pub max_path_tag_length: usize,
    /// Resource attributes beyond the workload's (`deployment.environment.name`,
    /// `k8s.cluster.name`, ...): string values by key.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// Headers sent with every export request (`authorization`, a tenant, ...).
    #[serde(default)]
    pub otlp_headers: BTreeMap<String, String>,
    /// `[telemetry.tls]`: the TLS of `https://` endpoints.
    #[serde(default)]
    pub tls: RawExportTls,
    /// Request headers recorded on spans and access-log records as
    /// `http.request.header.<name>`.
    #[serde(default)]
    pub capture_request_headers: Vec<String>,
    /// Response headers recorded as `http.response.header.<name>`.
    #[serde(default)]
    pub capture_response_headers: Vec<String>,
}

/// `[telemetry.traces]`, `[telemetry.logs]`, `[telemetry.metrics]`: one signal's export,
/// where it differs from the rest's (OpenTelemetry's signal-specific variables say the same).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignal {
    /// Where the signal goes instead of `otlp_endpoint`: over HTTP the URL it is posted to,
    /// as written; empty: the signal is not exported.
    pub endpoint: Option<String>,
    /// Headers sent with the signal's exports instead of `otlp_headers`.
    pub headers: Option<BTreeMap<String, String>>,
    /// The transport instead of `otlp_protocol`.
    pub protocol: Option<OtlpProtocol>,
    /// Compression instead of `compression`.
    pub compression: Option<Compression>,
    /// Time limit of one export call instead of `export_timeout`.
    #[serde(default, deserialize_with = "some_duration")]
    pub timeout: Option<Duration>,
    /// How long failed exports are retried instead of `max_retry_time`.
    #[serde(default, deserialize_with = "some_duration")]
    pub max_retry_time: Option<Duration>,
    /// `[telemetry.<signal>.tls]`: TLS files of the signal's own; those it leaves out are
    /// `[telemetry.tls]`'s.
    pub tls: Option<RawExportTls>,
}

/// `[telemetry.tls]` and `[telemetry.<signal>.tls]`: the TLS of export to `https://`
/// endpoints (an `http://` endpoint is plain text whatever this says). PEM files.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExportTls {
    /// CA certificates trusted to issue the collector's certificate, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// The sidecar's certificate chain, presented when the collector asks for one (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name the collector's certificate is checked for, when the endpoint names an
    /// address the certificate does not (an IP address, a tunnel).
    pub server_name: Option<String>,
}

impl RawExportTls {
    /// Fills what the table leaves out from OpenTelemetry's variables `prefix` + `CERTIFICATE`,
    /// `CLIENT_CERTIFICATE` and `CLIENT_KEY`.
    fn fill_from_environment(&mut self, prefix: &str, read: &dyn Fn(&str) -> Option<String>) {
        let file = |setting: &str| read(&format!("{prefix}{setting}")).map(PathBuf::from);
        self.ca_file = self.ca_file.take().or_else(|| file("CERTIFICATE"));
        self.cert_file = self.cert_file.take().or_else(|| file("CLIENT_CERTIFICATE"));
        self.key_file = self.key_file.take().or_else(|| file("CLIENT_KEY"));
    }

    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() && self.server_name.is_none()
    }

    /// The files read and checked, and the server name; `setting` names the table in errors.
    fn read(self, setting: &str) -> Result<ClientTls, ConfigError> {
        let files = TlsFiles { ca: self.ca_file, certificate: self.cert_file, key: self.key_file };
        let tls = ClientTls::read(&files, setting).map_err(|e| ConfigError::Invalid(format!("{setting}: {e}")))?;
        match &self.server_name {
            None => Ok(tls),
            Some(name) => tls.with_server_name(name, &format!("{setting}.server_name")).map_err(|e| ConfigError::Invalid(e.to_string())),
        }
    }
}

/// The OTLP transport the sidecar exports with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The collector's endpoint on this machine, on the conventional port.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Self::Grpc => "http://127.0.0.1:4317",
            Self::HttpProtobuf => "http://127.0.0.1:4318",
        }
    }
}

/// Compression of export requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip: what every OTLP receiver takes.
    Gzip,
    /// Zstandard (level 1 over OTLP/HTTP; over gRPC tonic's level 3): as small as gzip for
    /// a tenth of its CPU or less; the OpenTelemetry Collector and meshlens's take it.
    Zstd,
    /// None.
    #[default]
    None,
}

impl Compression {
    /// The name the settings use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::None => "none",
        }
    }

    /// What `OTEL_EXPORTER_OTLP_COMPRESSION` and the like may say.
    const KNOWN: [(&'static str, Self); 3] = [("gzip", Self::Gzip), ("zstd", Self::Zstd), ("none", Self::None)];
}

impl RawTelemetry {
    /// Fills the settings the table leaves out from OpenTelemetry's variables, read through
    /// `env`, as a platform that sets them for every container expects: the exporter's
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `_PROTOCOL`, `_COMPRESSION`, `_TIMEOUT`), each signal's
    /// endpoint ([`otel_env::signal_endpoint`]), protocol, compression and timeout (and its
    /// processor's or reader's export timeout, its retry time), `OTEL_SDK_DISABLED`, the batch processors' and the
    /// metric reader's intervals and sizes, the sampler's ([`otel_env::sampler_ratio`]) and
    /// the propagators' ([`otel_env::propagators`]). The table wins what it sets. Returns
    /// the values ignored, and why.
    pub fn fill_from_environment(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        let mut ignored = Vec::new();
        let read = |name: &str| Some(env(name)?.trim().to_owned()).filter(|v| !v.is_empty());
        // `otlp_endpoint = ""` turns export off: no variable turns a signal back on.
        let table_off = self.otlp_endpoint.as_deref().is_some_and(|e| e.trim().is_empty());
        if let Some(disabled) = read("OTEL_SDK_DISABLED").filter(|v| v.eq_ignore_ascii_case("true")) {
            if self.otlp_endpoint.as_ref().is_some_and(|e| !e.trim().is_empty()) {
                ignored.push(format!("OTEL_SDK_DISABLED={disabled} ignored: [telemetry] otlp_endpoint is set"));
            } else {
                // OpenTelemetry: no signal is exported. The table's own endpoints stay.
                let signals = [&mut self.traces.endpoint, &mut self.logs.endpoint, &mut self.metrics.endpoint];
                for slot in signals.into_iter().chain([&mut self.otlp_endpoint]) {
                    slot.get_or_insert_with(String::new);
                }
            }
        }
        let signals = [("TRACES", &mut self.traces), ("LOGS", &mut self.logs), ("METRICS", &mut self.metrics)];
        for (signal, slot) in signals.map(|(signal, raw)| (signal, &mut raw.endpoint)) {
            let var = format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");
            if slot.is_some() {
                continue;
            } else if !table_off {
                *slot = otel_env::signal_endpoint(signal, &read, &mut ignored);
            } else if let Some(endpoint) = read(&var) {
                ignored.push(format!("{var}={endpoint:?} ignored: [telemetry] otlp_endpoint = \"\" turns export off"));
            }
        }
        let signals = [("TRACES", &mut self.traces), ("LOGS", &mut self.logs), ("METRICS", &mut self.metrics)];
        for (signal, raw) in signals {
            let name = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
            let known = [("grpc", OtlpProtocol::Grpc), ("http/protobuf", OtlpProtocol::HttpProtobuf)];
            raw.protocol = raw.protocol.or_else(|| otel_env::choice(read(&name), &name, &known, &mut ignored));
            let name = format!("OTEL_EXPORTER_OTLP_{signal}_COMPRESSION");
            raw.compression = raw.compression.or_else(|| otel_env::choice(read(&name), &name, &Compression::KNOWN, &mut ignored));
            let name = format!("OTEL_EXPORTER_OTLP_{signal}_TIMEOUT");
            let timeout = || otel_env::positive(&name, read(&name), "milliseconds", &mut ignored).map(Duration::from_millis);
            raw.timeout = raw.timeout.or_else(timeout);
            // The processors' (or the metric reader's) bound on one export, retries included.
            let name = match signal {
                "TRACES" => "OTEL_BSP_EXPORT_TIMEOUT",
                "LOGS" => "OTEL_BLRP_EXPORT_TIMEOUT",
                _ => "OTEL_METRIC_EXPORT_TIMEOUT",
            };
            let bound = || otel_env::positive(name, read(name), "milliseconds", &mut ignored).map(Duration::from_millis);
            raw.max_retry_time = raw.max_retry_time.or_else(bound);
            // A signal's TLS variables make a TLS table of its own, as its SDK exporter has.
            let mut tls = raw.tls.take().unwrap_or_default();
            tls.fill_from_environment(&format!("OTEL_EXPORTER_OTLP_{signal}_"), &read);
            raw.tls = Some(tls).filter(|tls| !tls.is_empty());
        }
        self.tls.fill_from_environment("OTEL_EXPORTER_OTLP_", &read);
        ignored.extend(otel_env::insecure_settings(&read));
        if self.otlp_endpoint.is_none() {
            self.otlp_endpoint = read("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        if self.otlp_protocol.is_none() {
            let known = [("grpc", OtlpProtocol::Grpc), ("http/protobuf", OtlpProtocol::HttpProtobuf)];
            let name = "OTEL_EXPORTER_OTLP_PROTOCOL";
            self.otlp_protocol = otel_env::choice(read(name), name, &known, &mut ignored);
        }
        if self.compression.is_none() {
            let name = "OTEL_EXPORTER_OTLP_COMPRESSION";
            self.compression = otel_env::choice(read(name), name, &Compression::KNOWN, &mut ignored);
        }
        if self.metrics_temporality.is_none() {
            // Case-insensitive, as OpenTelemetry has it.
            let name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
            let known = [Temporality::Cumulative, Temporality::Delta, Temporality::LowMemory].map(|t| (t.as_str(), t));
            self.metrics_temporality = otel_env::choice(read(name).map(|v| v.to_ascii_lowercase()), name, &known, &mut ignored);
        }
        let mut positive = |name: &str, unit: &str| otel_env::positive(name, read(name), unit, &mut ignored);
        let mut millis = |name: &str| positive(name, "milliseconds").map(Duration::from_millis);
        self.export_timeout = self.export_timeout.or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"));
        self.metrics_interval = self.metrics_interval.or_else(|| millis("OTEL_METRIC_EXPORT_INTERVAL"));
        // One setting for what OpenTelemetry's batch processors set per signal: the spans'
        // (`OTEL_BSP_*`), else the log records' (`OTEL_BLRP_*`).
        let (bsp, blrp) = ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BLRP_SCHEDULE_DELAY");
        self.flush_interval = self.flush_interval.or_else(|| millis(bsp).or_else(|| millis(blrp)));
        let mut records = |name: &str| positive(name, "records").and_then(|n| usize::try_from(n).ok());
        let (bsp, blrp) = ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BLRP_MAX_QUEUE_SIZE");
        self.queue_capacity = self.queue_capacity.or_else(|| records(bsp).or_else(|| records(blrp)));
        let (bsp, blrp) = ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE");
        self.max_batch = self.max_batch.or_else(|| records(bsp).or_else(|| records(blrp)));
        if let (None, Some(sampler)) = (self.sampling_ratio, read("OTEL_TRACES_SAMPLER")) {
            self.sampling_ratio = otel_env::sampler_ratio(&sampler, read("OTEL_TRACES_SAMPLER_ARG"), &mut ignored);
        }
        if let (None, Some(value)) = (&self.propagation, read("OTEL_PROPAGATORS")) {
            self.propagation = otel_env::propagators(&value, &mut ignored);
        }
        ignored
    }
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            otlp_protocol: None,
            otlp_endpoint: None,
            traces: RawSignal::default(),
            logs: RawSignal::default(),
            metrics: RawSignal::default(),
            flush_interval: None,
            metrics_interval: None,
            metrics_temporality: None,
            export_timeout: None,
            queue_capacity: None,
            max_batch: None,
            propagation: None,
            sampling_ratio: None,
            keep_errors: true,
            slow_threshold: default_slow(),
            compression: None,
            max_retry_time: default_retry_time(),
            metric_labels: default_labels(),
            max_label_values: default_max_label_values(),
            max_path_tag_length: default_max_path_tag_length(),
            resource_attributes: BTreeMap::new(),
            otlp_headers: BTreeMap::new(),
            tls: RawExportTls::default(),
            capture_request_headers: Vec::new(),
            capture_response_headers: Vec::new(),
        }
    }
}

/// `[access_log]`: access logs on stdout, besides the OTLP log records.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `off` (default), `json`, or `text`.
    #[serde(default)]
    pub stdout: StdoutAccessLog,
    /// The text format, with Envoy-style `%FIELD%`s; defaults to Envoy's default format.
    pub format: Option<String>,
    /// With `stdout = "json"`: Envoy's format dictionary, JSON keys to `%FIELD%` formats
    /// (tables nest); without it, a fixed set of keys.
    pub json_format: Option<toml::Table>,
    /// With `json_format`: keys whose value is unset or empty are left out.
    #[serde(default)]
    pub omit_empty_values: bool,
    /// Write lines only for the requests meeting any of these conditions.
    pub filter: Option<RawLogFilter>,
}

/// `[access_log.filter]`: a stdout line is written for a request meeting any condition set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogFilter {
    /// Requests the classifier called failures.
    #[serde(default)]
    pub failures: bool,
    /// Responses with at least this status.
    pub status_at_least: Option<u16>,
    /// Requests lasting at least this long (`"500ms"`).
    pub duration_at_least: Option<String>,
    /// Responses with any of these Envoy flags (`UF`, `UH`, …); `[]` for any flag.
    pub response_flags: Option<Vec<String>>,
}

impl TryFrom<RawLogFilter> for LogFilter {
    type Error = ConfigError;

    fn try_from(raw: RawLogFilter) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("access_log.filter: {m}"));
        if let Some(status) = raw.status_at_least.filter(|s| !(100..=599).contains(s)) {
            return Err(invalid(format!("status_at_least = {status} is not an HTTP status")));
        }
        let duration = |d: String| meshlens_common::duration::parse_duration(&d).map_err(|e| invalid(format!("duration_at_least: {e}")));
        let duration_at_least = raw.duration_at_least.map(duration).transpose()?;
        let flag = |name: &String| ResponseFlags::from_name(name).ok_or_else(|| invalid(format!("unknown response flag {name:?}")));
        let flags = |names: Vec<String>| names.iter().map(flag).try_fold(ResponseFlags::empty(), |all, f| Ok::<_, ConfigError>(all | f?));
        let response_flags = raw.response_flags.map(flags).transpose()?;
        let filter = LogFilter { failures: raw.failures, status_at_least: raw.status_at_least, duration_at_least, response_flags };
        if filter == LogFilter::default() {
            return Err(invalid("no condition is set (failures, status_at_least, duration_at_least, response_flags)".into()));
        }
        Ok(filter)
    }
}

/// Whether and how access logs go to stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutAccessLog {
    /// Not written.
    #[default]
    Off,
    /// One JSON object per line.
    Json,
    /// A text line per request.
    Text,
}

/// The stdout access log of `[access_log]`, its format parsed; settings of a format other than
/// the chosen one are refused rather than ignored.
fn stdout_access_log(raw: RawAccessLog) -> Result<Option<AccessLogFormat>, ConfigError> {
    let misplaced = |key: &str, stdout: &str| ConfigError::Invalid(format!("access_log.{key} applies only to stdout = \"{stdout}\""));
    if raw.format.is_some() && raw.stdout != StdoutAccessLog::Text {
        return Err(misplaced("format", "text"));
    }
    if raw.json_format.is_some() && raw.stdout != StdoutAccessLog::Json {
        return Err(misplaced("json_format", "json"));
    }
    if raw.omit_empty_values && (raw.stdout == StdoutAccessLog::Off || (raw.stdout == StdoutAccessLog::Json && raw.json_format.is_none())) {
        return Err(ConfigError::Invalid("access_log.omit_empty_values applies to a text format or a json_format".into()));
    }
    let format = match raw.stdout {
        StdoutAccessLog::Off => return Ok(None),
        StdoutAccessLog::Text => AccessLogFormat::text(raw.format.as_deref().unwrap_or(access_log::DEFAULT_FORMAT))
            .map(|f| if raw.omit_empty_values { f.omitting_empty_values() } else { f }),
        StdoutAccessLog::Json => match raw.json_format {
            None => Ok(AccessLogFormat::Json),
            Some(table) => serde_json::to_value(table)
                .map_err(|e| e.to_string())
                .and_then(|keys| match keys {
                    serde_json::Value::Object(keys) => AccessLogFormat::dictionary(&keys, raw.omit_empty_values),
                    _ => Err("access_log.json_format must be a table".into()),
                }),
        },
    };
    format.map(Some).map_err(ConfigError::Invalid)
}

/// `[[services]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Service name, as applications address it (`http://<name>/...`).
    pub name: String,
    /// Namespace; defaults to the sidecar's own.
    pub namespace: Option<String>,
    /// The service's endpoints.
    pub endpoints: Vec<RawEndpoint>,
    /// Route templates of the service's paths, for `http.route`.
    #[serde(default)]
    pub routes: Vec<String>,
    /// How long the service may take to send its response headers; `0` means no limit. An
    /// HTTP request's limit, 15 s when not set; a gRPC call is bounded by its deadline
    /// (`grpc-timeout`) alone, capped at this only when it is set (as Istio's route timeout).
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// Retries of failed requests; none when absent.
    pub retry: Option<RawRetry>,
    /// Ejection of failing endpoints; none when absent.
    pub outlier: Option<RawOutlier>,
}

/// `[services.outlier]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failures in a row (5xx, connect failures, resets, timeouts) that eject an endpoint.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; the n-th lasts n times as long (at most 300 s).
    #[serde(default = "default_ejection_time", deserialize_with = "meshlens_common::duration::deserialize")]
    pub base_ejection_time: Duration,
    /// Most of the service's endpoints ejected at once, in percent (at least one endpoint
    /// may always be ejected when there are two or more).
    #[serde(default = "default_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_ejection_time() -> Duration {
    Duration::from_secs(30)
}
fn default_ejection_percent() -> u32 {
    50
}

/// `[services.retry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts in all, the first included (2 to 10).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// What is retried: `5xx`, `gateway-error`, `reset`, `connect-failure`, and for gRPC
    /// `unavailable`, `cancelled`, `deadline-exceeded`, `resource-exhausted`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    /// Time limit of one attempt (until response headers); `0` means only the service timeout.
    #[serde(default, deserialize_with = "meshlens_common::duration::deserialize")]
    pub per_try_timeout: Duration,
    /// First backoff; each retry doubles it (with jitter), up to ten times it.
    #[serde(default = "default_backoff", deserialize_with = "meshlens_common::duration::deserialize")]
    pub backoff: Duration,
    /// Most request body bytes kept for replay as the body streams; a request whose body
    /// turns out larger (or is announced larger) is not retried.
    #[serde(default = "default_replay_bytes")]
    pub max_body_bytes: u64,
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<String> {
    vec!["gateway-error".into(), "reset".into(), "connect-failure".into(), "unavailable".into()]
}
fn default_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_replay_bytes() -> u64 {
    64 * 1024
}

/// `[[services.endpoints]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// The inbound address of the endpoint's sidecar.
    pub address: SocketAddr,
    /// Workload name; defaults to `<service>-<version>`.
    pub workload: Option<String>,
    /// Version label; defaults to `v1`.
    #[serde(default = "default_version")]
    pub version: String,
    /// Share of the service's traffic, relative to the other endpoints' weights.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_version() -> String {
    "v1".into()
}
fn default_namespace() -> String {
    "default".into()
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_flush() -> Duration {
    Duration::from_millis(200)
}
fn default_metrics_interval() -> Duration {
    Duration::from_secs(10)
}
/// A duration a table may leave out.
fn some_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    meshlens_common::duration::deserialize(d).map(Some)
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_queue() -> usize {
    4096
}
fn default_batch() -> usize {
    256
}
fn default_weight() -> u32 {
    1
}
fn default_propagation() -> Vec<Format> {
    vec![Format::W3c]
}
fn default_ratio() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_max_path_tag_length() -> usize {
    256
}
fn default_slow() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_time() -> Duration {
    Duration::from_secs(15)
}
fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

/// A duration that may be left out.
fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    meshlens_common::duration::deserialize(d).map(Some)
}
fn default_labels() -> Vec<Label> {
    Label::ALL.to_vec()
}
fn default_max_label_values() -> usize {
    LabelPolicy::default().max_values
}

/// A validated sidecar configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The workload this sidecar speaks for.
    pub identity: WorkloadIdentity,
    /// Inbound listener.
    pub inbound_listen: SocketAddr,
    /// The local application.
    pub app: SocketAddr,
    /// Route templates of the local application.
    pub inbound_routes: Arc<RouteTemplates>,
    /// Outbound listener.
    pub outbound_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Bounds on accepted connections: their idle and request headers timeouts.
    pub connections: crate::server::ConnectionLimits,
    /// How long an upgraded connection may carry nothing before it is closed; `None`: never.
    pub upgrade_idle_timeout: Option<Duration>,
    /// How long an exchange whose response has started may carry nothing before it is cut
    /// off; `None`: never.
    pub stream_idle_timeout: Option<Duration>,
    /// Telemetry export settings.
    pub telemetry: TelemetryConfig,
    /// Routable services.
    pub services: Vec<Arc<ServiceConfig>>,
}

/// Validated telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The collector's OTLP endpoint; `None` turns export off (telemetry is still recorded
    /// and counted).
    pub otlp_endpoint: Option<String>,
    /// Where each signal goes: to `otlp_endpoint`, to one of its own, or nowhere.
    pub signals: SignalExports,
    /// How export requests are sent.
    pub otlp_protocol: OtlpProtocol,
    /// Longest wait of a record before its batch is sent.
    pub flush_interval: Duration,
    /// Metric export period.
    pub metrics_interval: Duration,
    /// The metrics export's temporality.
    pub metrics_temporality: Temporality,
    /// Time limit of one export call.
    pub export_timeout: Duration,
    /// Records of each signal held encoded and unsent at most.
    pub queue_capacity: usize,
    /// Largest batch.
    pub max_batch: usize,
    /// Trace-context formats to emit.
    pub propagation: Formats,
    /// Which spans are kept.
    pub sampling: Sampling,
    /// Export compression.
    pub compression: Compression,
    /// Longest time one batch is retried.
    pub max_retry_time: Duration,
    /// Access logs on stdout, if wanted.
    pub stdout_access_log: Option<AccessLogFormat>,
    /// Which requests get a stdout line.
    pub stdout_access_log_filter: LogFilter,
    /// Labels of the request metrics.
    pub labels: LabelPolicy,
    /// Longest URL attributes of a span, in bytes; `None`: whole.
    pub max_path_tag_length: Option<usize>,
    /// Resource attributes beyond the workload's.
    pub resource_attributes: ResourceAttributes,
    /// Headers sent with every export request.
    pub otlp_headers: ExportHeaders,
    /// The TLS of `https://` endpoints.
    pub tls: ClientTls,
    /// Request headers recorded as attributes.
    pub capture_request_headers: Vec<http::HeaderName>,
    /// Response headers recorded as attributes.
    pub capture_response_headers: Vec<http::HeaderName>,
}

/// Where each signal is exported ([`TelemetryConfig::signal_endpoint`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalExports {
    /// Spans.
    pub traces: SignalExport,
    /// Access-log records.
    pub logs: SignalExport,
    /// Request and connection metrics.
    pub metrics: SignalExport,
}

/// Where one signal is exported, and how, where it differs from the other signals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalExport {
    /// Where.
    pub to: SignalEndpoint,
    /// Headers instead of `otlp_headers`, if the signal has its own.
    pub headers: Option<ExportHeaders>,
    /// Transport instead of `otlp_protocol`, if the signal has its own.
    pub protocol: Option<OtlpProtocol>,
    /// Compression instead of `compression`, if the signal has its own.
    pub compression: Option<Compression>,
    /// Time limit of one export call instead of `export_timeout`, if the signal has its own.
    pub timeout: Option<Duration>,
    /// How long failed exports are retried instead of `max_retry_time`, if the signal has its own.
    pub max_retry_time: Option<Duration>,
    /// TLS instead of `tls`, if the signal has files of its own.
    pub tls: Option<ClientTls>,
}

/// Where one signal's export requests go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SignalEndpoint {
    /// To `otlp_endpoint`, if export is on: over HTTP under the signal's `/v1/...` path.
    #[default]
    Shared,
    /// To an endpoint of its own, over HTTP the URL posted to as written.
    Own(String),
    /// Nowhere: the signal is not exported (metrics are still served on `/metrics`).
    Off,
}

impl SignalExport {
    /// `[telemetry.<signal>]`, checked: an unset endpoint shares `otlp_endpoint`, an empty
    /// one is off; a TLS table of its own takes the files it leaves out from `shared_tls`.
    fn from_raw(signal: &str, raw: RawSignal, shared_tls: &RawExportTls) -> Result<Self, ConfigError> {
        let to = match raw.endpoint.as_deref().map(str::trim) {
            None => SignalEndpoint::Shared,
            Some("") => SignalEndpoint::Off,
            Some(endpoint) => SignalEndpoint::Own(endpoint.to_owned()),
        };
        let setting = format!("telemetry.{signal}.headers");
        let headers = raw.headers.map(|table| ExportHeaders::from_table(&setting, &table)).transpose().map_err(ConfigError::Invalid)?;
        if raw.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::Invalid(format!("telemetry.{signal}.timeout must be positive")));
        }
        let tls = raw.tls.map(|own| {
            let shared = shared_tls.clone();
            let tls = RawExportTls {
                ca_file: own.ca_file.or(shared.ca_file),
                cert_file: own.cert_file.or(shared.cert_file),
                key_file: own.key_file.or(shared.key_file),
                server_name: own.server_name.or(shared.server_name),
            };
            tls.read(&format!("telemetry.{signal}.tls"))
        });
        // A zero retry time, as the shared one, means a failed export is not retried.
        let (protocol, compression, timeout, max_retry_time) = (raw.protocol, raw.compression, raw.timeout, raw.max_retry_time);
        Ok(Self { to, headers, protocol, compression, timeout, max_retry_time, tls: tls.transpose()? })
    }
}

impl TelemetryConfig {
    /// Where a signal exported as `export` goes, if anywhere: the endpoint, and whether the
    /// signal's OTLP/HTTP path is appended to it (it is for the shared `otlp_endpoint`).
    pub fn signal_endpoint<'a>(&'a self, export: &'a SignalExport) -> Option<(&'a str, bool)> {
        match &export.to {
            SignalEndpoint::Shared => self.otlp_endpoint.as_deref().map(|endpoint| (endpoint, true)),
            SignalEndpoint::Own(endpoint) => Some((endpoint, false)),
            SignalEndpoint::Off => None,
        }
    }

    /// The headers a signal exported as `export` is sent with: its own, or `otlp_headers`.
    pub fn signal_headers<'a>(&'a self, export: &'a SignalExport) -> &'a ExportHeaders {
        export.headers.as_ref().unwrap_or(&self.otlp_headers)
    }

    /// The TLS of a signal exported as `export`: its own, or `tls`.
    pub fn signal_tls<'a>(&'a self, export: &'a SignalExport) -> &'a ClientTls {
        export.tls.as_ref().unwrap_or(&self.tls)
    }

    /// The transport of a signal exported as `export`: its own, or `otlp_protocol`.
    pub fn signal_protocol(&self, export: &SignalExport) -> OtlpProtocol {
        export.protocol.unwrap_or(self.otlp_protocol)
    }

    /// The compression of a signal exported as `export`: its own, or `compression`.
    pub fn signal_compression(&self, export: &SignalExport) -> Compression {
        export.compression.unwrap_or(self.compression)
    }

    /// The time limit of one export call of a signal exported as `export`: its own, or
    /// `export_timeout`.
    pub fn signal_timeout(&self, export: &SignalExport) -> Duration {
        export.timeout.unwrap_or(self.export_timeout)
    }

    /// How long a signal exported as `export` retries a failed export: its own time, or
    /// `max_retry_time`.
    pub fn signal_max_retry_time(&self, export: &SignalExport) -> Duration {
        export.max_retry_time.unwrap_or(self.max_retry_time)
    }

    /// The longest time limit of one export call, whichever signal: what the last flush at
    /// shutdown may take.
    pub fn longest_export_timeout(&self) -> Duration {
        let s = &self.signals;
        [&s.traces, &s.logs, &s.metrics].into_iter().map(|export| self.signal_timeout(export)).fold(self.export_timeout, Duration::max)
    }

    /// Whether any signal is exported.
    pub fn exports(&self) -> bool {
        let s = &self.signals;
        [&s.traces, &s.logs, &s.metrics].into_iter().any(|export| self.signal_endpoint(export).is_some())
    }
}

/// Which spans are kept. Metrics and access logs always cover every request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Share of new traces sampled, 0 to 1.
    pub ratio: f64,
    /// Keep failed requests' spans regardless.
    pub keep_errors: bool,
    /// Keep spans of requests at least this slow regardless.
    pub slow_threshold: Option<Duration>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: Some(OtlpProtocol::Grpc.default_endpoint().to_owned()),
            signals: SignalExports::default(),
            otlp_protocol: OtlpProtocol::Grpc,
            flush_interval: default_flush(),
            metrics_interval: default_metrics_interval(),
            metrics_temporality: Temporality::Cumulative,
            export_timeout: default_export_timeout(),
            queue_capacity: default_queue(),
            max_batch: default_batch(),
            propagation: Formats::W3C,
            sampling: Sampling { ratio: default_ratio(), keep_errors: true, slow_threshold: Some(default_slow()) },
            compression: Compression::None,
            max_retry_time: default_retry_time(),
            stdout_access_log: None,
            stdout_access_log_filter: LogFilter::default(),
            labels: LabelPolicy::default(),
            max_path_tag_length: Some(default_max_path_tag_length()),
            resource_attributes: ResourceAttributes::default(),
            otlp_headers: ExportHeaders::default(),
            tls: ClientTls::default(),
            capture_request_headers: Vec::new(),
            capture_response_headers: Vec::new(),
        }
    }
}

impl TryFrom<RawTelemetry> for TelemetryConfig {
    type Error = ConfigError;

    fn try_from(t: RawTelemetry) -> Result<Self, ConfigError> {
        let (queue_capacity, max_batch) = (t.queue_capacity.unwrap_or_else(default_queue), t.max_batch.unwrap_or_else(default_batch));
        if queue_capacity == 0 || max_batch == 0 {
            return Err(ConfigError::Invalid(
                "telemetry.queue_capacity and telemetry.max_batch must be positive".into(),
            ));
        }
        let export_timeout = t.export_timeout.unwrap_or_else(default_export_timeout);
        let flush_interval = t.flush_interval.unwrap_or_else(default_flush);
        let metrics_interval = t.metrics_interval.unwrap_or_else(default_metrics_interval);
        if flush_interval.is_zero() || metrics_interval.is_zero() || export_timeout.is_zero() {
            return Err(ConfigError::Invalid("telemetry intervals must be positive".into()));
        }
        let sampling_ratio = t.sampling_ratio.unwrap_or_else(default_ratio);
        if !(0.0..=1.0).contains(&sampling_ratio) {
            return Err(ConfigError::Invalid(format!("telemetry.sampling_ratio must be between 0 and 1, not {sampling_ratio}")));
        }
        let otlp_protocol = t.otlp_protocol.unwrap_or_default();
        let mut signals = SignalExports {
            traces: SignalExport::from_raw("traces", t.traces, &t.tls)?,
            logs: SignalExport::from_raw("logs", t.logs, &t.tls)?,
            metrics: SignalExport::from_raw("metrics", t.metrics, &t.tls)?,
        };
        if t.otlp_endpoint.is_none() {
            // No endpoint set: a signal sent over a transport of its own goes to that
            // transport's port on this machine, as OpenTelemetry's SDKs default it.
            for (signal, export) in [("traces", &mut signals.traces), ("logs", &mut signals.logs), ("metrics", &mut signals.metrics)] {
                if let (SignalEndpoint::Shared, Some(protocol)) = (&export.to, export.protocol.filter(|p| *p != otlp_protocol)) {
                    export.to = SignalEndpoint::Own(match protocol {
                        OtlpProtocol::Grpc => protocol.default_endpoint().to_owned(),
                        OtlpProtocol::HttpProtobuf => format!("{}/v1/{signal}", protocol.default_endpoint()),
                    });
                }
            }
        }
        Ok(Self {
            otlp_endpoint: match t.otlp_endpoint {
                None => Some(otlp_protocol.default_endpoint().to_owned()),
                Some(e) => Some(e).filter(|e| !e.trim().is_empty()),
            },
            signals,
            otlp_protocol,
            flush_interval,
            metrics_interval,
            metrics_temporality: t.metrics_temporality.unwrap_or_default(),
            export_timeout,
            queue_capacity,
            max_batch,
            propagation: Formats::of(&t.propagation.unwrap_or_else(default_propagation)),
            sampling: Sampling {
                ratio: sampling_ratio,
                keep_errors: t.keep_errors,
                slow_threshold: unless_zero(t.slow_threshold),
            },
            compression: t.compression.unwrap_or_default(),
            max_retry_time: t.max_retry_time,
            stdout_access_log: None,
            stdout_access_log_filter: LogFilter::default(),
            labels: LabelPolicy { labels: t.metric_labels.into_iter().collect(), max_values: t.max_label_values.max(1) },
            max_path_tag_length: Some(t.max_path_tag_length).filter(|n| *n > 0),
            resource_attributes: ResourceAttributes::from_table(t.resource_attributes).map_err(ConfigError::Invalid)?,
            otlp_headers: ExportHeaders::from_table("telemetry.otlp_headers", &t.otlp_headers).map_err(ConfigError::Invalid)?,
            tls: t.tls.read("telemetry.tls")?,
            capture_request_headers: header_names("telemetry.capture_request_headers", &t.capture_request_headers)?,
            capture_response_headers: header_names("telemetry.capture_response_headers", &t.capture_response_headers)?,
        })
    }
}

/// Header `names` as `HeaderName`s (lower case); an error naming `setting` for one that is
/// not a header name.
fn header_names(setting: &str, names: &[String]) -> Result<Vec<http::HeaderName>, ConfigError> {
    names
        .iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ConfigError::Invalid(format!("{setting}: {name:?} is not a header name")))
        })
        .collect()
}

/// A routable service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The name applications use.
    pub name: Arc<str>,
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Its endpoints, each with a positive weight.
    pub endpoints: Vec<Endpoint>,
    /// Its route templates.
    pub routes: Arc<RouteTemplates>,
    /// Its response timeout, if any (HTTP requests).
    pub timeout: Option<Duration>,
    /// The most its gRPC calls may wait, whatever their deadline: its timeout, when one was
    /// set (Envoy's `max_grpc_timeout`).
    pub max_grpc_timeout: Option<Duration>,
    /// How its failed requests are retried, if they are.
    pub retry: Option<Arc<RetryPolicy>>,
    /// When its endpoints are ejected, if they are.
    pub outlier: Option<OutlierPolicy>,
}

/// A service's outlier-ejection policy, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl TryFrom<RawOutlier> for OutlierPolicy {
    type Error = ConfigError;
    fn try_from(raw: RawOutlier) -> Result<Self, ConfigError> {
        if raw.consecutive_failures == 0 || raw.base_ejection_time.is_zero() || raw.max_ejection_percent > 100 {
            return Err(ConfigError::Invalid(
                "outlier: consecutive_failures and base_ejection_time must be positive, max_ejection_percent at most 100".into(),
            ));
        }
        Ok(Self {
            consecutive_failures: raw.consecutive_failures,
            base_ejection_time: raw.base_ejection_time,
            max_ejection_percent: raw.max_ejection_percent,
        })
    }
}

/// What a failed attempt may be retried for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx response, and an attempt that timed out.
    pub server_error: bool,
    /// 502, 503 and 504 responses, and an attempt that timed out.
    pub gateway_error: bool,
    /// The upstream connection failed after the request was sent.
    pub reset: bool,
    /// The upstream could not be reached.
    pub connect_failure: bool,
    /// gRPC status codes retried (UNAVAILABLE 14, CANCELLED 1, DEADLINE_EXCEEDED 4, RESOURCE_EXHAUSTED 8).
    pub grpc_codes: [bool; 17],
}

/// A service's retry policy, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// What is retried.
    pub on: RetryOn,
    /// Time limit of one attempt, if any.
    pub per_try_timeout: Option<Duration>,
    /// First backoff.
    pub backoff: Duration,
    /// Most request body bytes kept for replay.
    pub max_body_bytes: u64,
}

impl TryFrom<RawRetry> for RetryPolicy {
    type Error = ConfigError;
    fn try_from(raw: RawRetry) -> Result<Self, ConfigError> {
        if !(2..=10).contains(&raw.attempts) {
            return Err(ConfigError::Invalid(format!("retry.attempts must be 2 to 10 (attempts in all), not {}", raw.attempts)));
        }
        let mut on = RetryOn::default();
        for condition in &raw.on {
            match condition.as_str() {
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "unavailable" => on.grpc_codes[14] = true,
                "cancelled" => on.grpc_codes[1] = true,
                "deadline-exceeded" => on.grpc_codes[4] = true,
                "resource-exhausted" => on.grpc_codes[8] = true,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "unknown retry condition {other:?}; known: 5xx, gateway-error, reset, connect-failure, unavailable, cancelled, deadline-exceeded, resource-exhausted"
                    )));
                }
            }
        }
        if raw.backoff.is_zero() {
            return Err(ConfigError::Invalid("retry.backoff must be positive".into()));
        }
        Ok(Self {
            attempts: raw.attempts,
            on,
            per_try_timeout: Some(raw.per_try_timeout).filter(|t| !t.is_zero()),
            backoff: raw.backoff,
            max_body_bytes: raw.max_body_bytes,
        })
    }
}

/// One endpoint of a service: a workload's sidecar inbound address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to send requests.
    pub address: SocketAddr,
    /// Which workload answers there.
    pub identity: Arc<WorkloadIdentity>,
    /// Relative share of traffic.
    pub weight: u32,
}

impl ProxyConfig {
    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)?;
        Self::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        Self::try_from(raw)
    }

    /// Reads and validates a TOML configuration file, taking what it leaves out of the
    /// export from OpenTelemetry's variables, read through `env`
    /// ([`RawTelemetry::fill_from_environment`]), and adding the resource attributes of
    /// `OTEL_RESOURCE_ATTRIBUTES` and the export headers of `OTEL_EXPORTER_OTLP_HEADERS`.
    /// Returns the configuration and what of the variables was ignored, and why.
    pub fn from_file_with_environment(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<(Self, Vec<String>), ConfigError> {
        Self::from_toml_with_environment(&std::fs::read_to_string(path)?, env)
    }

    pub(crate) fn from_toml_with_environment(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(Self, Vec<String>), ConfigError> {
        let mut raw: RawConfig = toml::from_str(text)?;
        let mut ignored = raw.telemetry.fill_from_environment(env);
        let mut config = Self::try_from(raw)?;
        if let Some(value) = env(resource::ENV_VAR) {
            ignored.extend(config.telemetry.resource_attributes.add_environment(&value));
        }
        if let Some(value) = env(export_headers::ENV_VAR) {
            ignored.extend(config.telemetry.otlp_headers.add_environment(export_headers::ENV_VAR, &value));
        }
        let signals = &mut config.telemetry.signals;
        for (signal, export) in [("TRACES", &mut signals.traces), ("LOGS", &mut signals.logs), ("METRICS", &mut signals.metrics)] {
            let var = format!("OTEL_EXPORTER_OTLP_{signal}_HEADERS");
            if let Some(value) = env(&var) {
                ignored.extend(export.headers.get_or_insert_with(ExportHeaders::default).add_environment(&var, &value));
            }
        }
        Ok((config, ignored))
    }
}

fn non_empty(what: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() || value.contains('/') {
        return Err(ConfigError::Invalid(format!(
            "{what} must be non-empty and contain no '/': {value:?}"
        )));
    }
    Ok(())
}

impl TryFrom<RawConfig> for ProxyConfig {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let w = raw.workload;
        non_empty("workload.service", &w.service)?;
        non_empty("workload.version", &w.version)?;
        non_empty("workload.namespace", &w.namespace)?;
        let workload = w.workload.unwrap_or_else(|| format!("{}-{}", w.service, w.version));
        non_empty("workload.workload", &workload)?;
        let identity = WorkloadIdentity::new(&w.namespace, &w.service, &workload, &w.version);

        let mut telemetry = TelemetryConfig::try_from(raw.telemetry)?;
        let mut access_log = raw.access_log;
        if access_log.filter.is_some() && access_log.stdout == StdoutAccessLog::Off {
            return Err(ConfigError::Invalid("access_log.filter needs stdout = \"json\" or \"text\"".into()));
        }
        telemetry.stdout_access_log_filter = access_log.filter.take().map(LogFilter::try_from).transpose()?.unwrap_or_default();
        telemetry.stdout_access_log = stdout_access_log(access_log)?;

        let mut seen = HashSet::new();
        let mut services = Vec::with_capacity(raw.services.len());
        for s in raw.services {
            non_empty("services.name", &s.name)?;
            if !seen.insert(s.name.clone()) {
                return Err(ConfigError::Invalid(format!("service {:?} is listed twice", s.name)));
            }
            let namespace = s.namespace.unwrap_or_else(|| w.namespace.clone());
            let mut endpoints = Vec::with_capacity(s.endpoints.len());
            for e in s.endpoints {
                non_empty("services.endpoints.version", &e.version)?;
                let workload = e.workload.unwrap_or_else(|| format!("{}-{}", s.name, e.version));
                non_empty("services.endpoints.workload", &workload)?;
                endpoints.push(Endpoint {
                    address: e.address,
                    identity: Arc::new(WorkloadIdentity::new(&namespace, &s.name, &workload, &e.version)),
                    weight: e.weight,
                });
            }
            if endpoints.iter().all(|e| e.weight == 0) {
                return Err(ConfigError::Invalid(format!(
                    "service {:?} needs at least one endpoint with a positive weight",
                    s.name
                )));
            }
            let routes = RouteTemplates::parse(&s.routes).map_err(ConfigError::Invalid)?;
            services.push(Arc::new(ServiceConfig {
                name: s.name.into(),
                namespace: namespace.into(),
                endpoints,
                routes: Arc::new(routes),
                timeout: unless_zero(s.timeout.unwrap_or_else(default_timeout)),
                max_grpc_timeout: s.timeout.and_then(unless_zero),
                retry: s.retry.map(RetryPolicy::try_from).transpose()?.map(Arc::new),
                outlier: s.outlier.map(OutlierPolicy::try_from).transpose()?,
            }));
        }

        Ok(Self {
            identity,
            inbound_listen: raw.inbound.listen,
            app: raw.inbound.app,
            inbound_routes: Arc::new(RouteTemplates::parse(&raw.inbound.routes).map_err(ConfigError::Invalid)?),
            outbound_listen: raw.outbound.listen,
            admin_listen: raw.admin.listen,
            connections: crate::server::ConnectionLimits {
                idle_timeout: unless_zero(raw.connections.idle_timeout),
                request_headers_timeout: unless_zero(raw.connections.request_headers_timeout),
                max_request_headers: request_headers_bytes(raw.connections.max_request_headers_kb)?,
            },
            upgrade_idle_timeout: unless_zero(raw.upgrades.idle_timeout),
            stream_idle_timeout: unless_zero(raw.streams.idle_timeout),
            telemetry,
            services,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use meshlens_common::test_pki::Pki;

    /// A valid configuration: one service of two endpoints.
    pub(crate) const GOOD: &str = r#"
        [workload]
        service = "catalog"
        namespace = "shop"
        [inbound]
        listen = "127.0.0.1:4143"
        app = "127.0.0.1:8080"
        [outbound]
        listen = "127.0.0.1:4140"
        [telemetry]
        flush_interval = "500ms"
        [[services]]
        name = "reviews"
        endpoints = [
            { address = "127.0.0.1:5001", version = "v1", weight = 80 },
            { address = "127.0.0.1:5002", version = "v2", weight = 20 },
        ]
    "#;

    #[test]
    fn valid_config_gets_defaults() {
        let cfg = ProxyConfig::from_toml(GOOD).expect("valid");
        assert_eq!(&*cfg.identity.workload, "catalog-v1");
        assert_eq!(cfg.telemetry.flush_interval, Duration::from_millis(500));
        let reviews = &cfg.services[0];
        assert_eq!(&*reviews.namespace, "shop");
        assert_eq!(&*reviews.endpoints[1].identity.workload, "reviews-v2");
    }

    #[test]
    fn the_readmes_example_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n[workload]").expect("the README shows a sidecar's config") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("the block ends");
        let cfg = ProxyConfig::from_toml(&readme[start..end]).expect("the README's example loads");
        assert_eq!(cfg.connections, crate::server::ConnectionLimits::default());
    }

    #[test]
    fn idle_timeouts_default_to_envoys_and_zero_turns_them_off() {
        let cfg = ProxyConfig::from_toml(GOOD).expect("valid");
        let timeouts = |c: &ProxyConfig| {
            let connections = c.connections;
            (connections.idle_timeout, connections.request_headers_timeout, c.upgrade_idle_timeout, c.stream_idle_timeout)
        };
        let secs = |s| Some(Duration::from_secs(s));
        let (hour, half_a_minute, five_minutes) = (secs(3600), secs(30), secs(300));
        assert_eq!(timeouts(&cfg), (hour, half_a_minute, five_minutes, five_minutes));
        let off = "[connections]\nidle_timeout = \"0\"\nrequest_headers_timeout = \"0\"\n[upgrades]\nidle_timeout = \"0\"\n\
                   [streams]\nidle_timeout = \"0\"\n[outbound]";
        let cfg = ProxyConfig::from_toml(&GOOD.replace("[outbound]", off)).expect("valid");
        assert_eq!(timeouts(&cfg), (None, None, None, None));
        let set = "[connections]\nidle_timeout = \"10m\"\nrequest_headers_timeout = \"5s\"\n[outbound]";
        let cfg = ProxyConfig::from_toml(&GOOD.replace("[outbound]", set)).expect("valid");
        assert_eq!((cfg.connections.idle_timeout, cfg.connections.request_headers_timeout), (secs(600), secs(5)));
    }

    #[test]
    fn a_service_timeout_bounds_http_by_default_and_grpc_calls_only_when_set() {
        let timeouts = |entry: &str| {
            let cfg = ProxyConfig::from_toml(&GOOD.replace("name = \"reviews\"", &format!("name = \"reviews\"\n{entry}"))).expect("valid");
            (cfg.services[0].timeout, cfg.services[0].max_grpc_timeout)
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(timeouts(""), (secs(15), None), "gRPC calls: their deadline alone");
        assert_eq!(timeouts("timeout = \"2s\""), (secs(2), secs(2)));
        assert_eq!(timeouts("timeout = \"0\""), (None, None));
    }

    #[test]
    fn request_heads_are_bounded_at_60_kib_unless_set_from_8_kib_to_8_mib() {
        let limit = |connections: &str| {
            let cfg = ProxyConfig::from_toml(&GOOD.replace("[outbound]", &format!("[connections]\n{connections}\n[outbound]")));
            cfg.map(|c| c.connections.max_request_headers).map_err(|e| e.to_string())
        };
        assert_eq!(limit(""), Ok(60 * 1024));
        assert_eq!(limit("max_request_headers_kb = 96"), Ok(96 * 1024));
        assert_eq!(limit("max_request_headers_kb = 8"), Ok(8 * 1024));
        for refused in ["max_request_headers_kb = 7", "max_request_headers_kb = 9000"] {
            assert!(limit(refused).is_err_and(|e| e.contains("max_request_headers_kb must be from 8 to 8192")), "{refused}");
        }
    }

    #[test]
    fn the_default_endpoint_follows_the_otlp_protocol() {
        let with = |lines: &str| ProxyConfig::from_toml(&GOOD.replace("[telemetry]", &format!("[telemetry]\n{lines}"))).map(|c| c.telemetry);
        let grpc = with("").expect("valid");
        assert_eq!((grpc.otlp_protocol, grpc.otlp_endpoint.as_deref()), (OtlpProtocol::Grpc, Some("http://127.0.0.1:4317")));
        let http = with("otlp_protocol = \"http/protobuf\"").expect("valid");
        assert_eq!((http.otlp_protocol, http.otlp_endpoint.as_deref()), (OtlpProtocol::HttpProtobuf, Some("http://127.0.0.1:4318")));
        let chosen = with("otlp_protocol = \"http/protobuf\"\notlp_endpoint = \"http://collector:4318/otlp\"").expect("valid");
        assert_eq!(chosen.otlp_endpoint.as_deref(), Some("http://collector:4318/otlp"));
        assert_eq!(with("otlp_endpoint = \"\"").expect("valid").otlp_endpoint, None, "empty: export off");
        assert!(with("otlp_protocol = \"http/json\"").is_err(), "an unknown protocol is refused at load");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let text = GOOD.replace("[outbound]", "[outbound]\nbogus = 1");
        let err = ProxyConfig::from_toml(&text).expect_err("unknown field");
        let cause = std::error::Error::source(&err).map(|c| c.to_string()).unwrap_or_default();
        assert!(cause.contains("unknown field `bogus`"), "{cause}");
    }

    #[test]
    fn captured_headers_resource_attributes_and_export_headers_are_checked_at_load() {
        let with = |keys: &str| ProxyConfig::from_toml(&GOOD.replace("[telemetry]", &format!("[telemetry]\n{keys}")));
        let cfg = with("capture_request_headers = [\"X-Tenant\"]\nresource_attributes = { \"k8s.cluster.name\" = \"east\" }");
        let telemetry = cfg.expect("valid").telemetry;
        assert_eq!(telemetry.capture_request_headers, [http::HeaderName::from_static("x-tenant")], "in lower case");
        assert_eq!(telemetry.resource_attributes.iter().collect::<Vec<_>>(), [("k8s.cluster.name", "east")]);
        let err = with("capture_response_headers = [\"bad name\"]").expect_err("not a header name").to_string();
        assert!(err.contains("capture_response_headers") && err.contains("bad name"), "{err}");
        let err = with("resource_attributes = { \"service.name\" = \"x\" }").expect_err("the sidecar's own").to_string();
        assert!(err.contains("service.name"), "{err}");
        let cfg = with("otlp_headers = { Authorization = \"Bearer s3cret\" }").expect("valid");
        assert_eq!(cfg.telemetry.otlp_headers.map()["authorization"], "Bearer s3cret");
        let err = with("otlp_headers = { \"content-type\" = \"text/plain\" }").expect_err("the exporter's own").to_string();
        assert!(err.contains("otlp_headers") && err.contains("content-type"), "{err}");
    }

    /// An environment of `pairs`.
    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn a_server_name_is_checked_and_a_signal_s_own_table_may_name_another() {
        let toml = "[telemetry.traces.tls]\nserver_name = \"tempo.example\"\n\
                    [telemetry.tls]\nserver_name = \"collector.example\"\n[telemetry]";
        let t = ProxyConfig::from_toml(&GOOD.replace("[telemetry]", toml)).expect("valid").telemetry;
        assert_eq!(t.tls.describe(), "TLS trusting the system's roots for the name collector.example");
        let traces = t.signals.traces.tls.as_ref().map(ClientTls::describe);
        assert_eq!(traces.as_deref(), Some("TLS trusting the system's roots for the name tempo.example"));
        let bad = GOOD.replace("[telemetry]", "[telemetry.tls]\nserver_name = \"a b\"\n[telemetry]");
        let error = ProxyConfig::from_toml(&bad).expect_err("not a name").to_string();
        assert!(error.contains("telemetry.tls.server_name: \"a b\" is not a DNS name or an IP address"), "{error}");
    }

    #[test]
    fn the_metrics_temporality_comes_from_the_table_else_opentelemetry_s_preference() {
        let load = |toml: &str, vars: &'static [(&'static str, &'static str)]| {
            let (cfg, ignored) = ProxyConfig::from_toml_with_environment(&GOOD.replace("[telemetry]", toml), &env(vars)).expect("valid");
            (cfg.telemetry.metrics_temporality, ignored)
        };
        const VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
        let var = VAR;
        assert_eq!(load("[telemetry]", &[]), (Temporality::Cumulative, vec![]));
        assert_eq!(load("[telemetry]\nmetrics_temporality = \"lowmemory\"", &[(VAR, "delta")]).0, Temporality::LowMemory, "the table wins");
        assert_eq!(load("[telemetry]", &[(VAR, "Delta")]).0, Temporality::Delta, "any case");
        let (temporality, ignored) = load("[telemetry]", &[(VAR, "sometimes")]);
        assert_eq!(temporality, Temporality::Cumulative);
        assert_eq!(ignored, [format!("{var}=\"sometimes\" ignored: the sidecar takes cumulative or delta or lowmemory")]);
        let error = ProxyConfig::from_toml(&GOOD.replace("[telemetry]", "[telemetry]\nmetrics_temporality = \"monthly\"")).expect_err("bad");
        let why = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
        assert!(why.contains("unknown variant `monthly`, expected one of `cumulative`, `delta`, `lowmemory`"), "{why}");
    }

    #[test]
    fn a_signal_may_have_a_transport_compression_and_time_limit_of_its_own() {
        let load = |toml: &str, vars: &'static [(&'static str, &'static str)]| {
            let (cfg, ignored) = ProxyConfig::from_toml_with_environment(&GOOD.replace("[telemetry]", toml), &env(vars)).expect("valid");
            (cfg.telemetry, ignored)
        };
        let table = "[telemetry.logs]\nprotocol = \"http/protobuf\"\ncompression = \"gzip\"\ntimeout = \"2s\"\n[telemetry]";
        let (t, _) = load(table, &[]);
        let logs = &t.signals.logs;
        assert_eq!(
            (t.signal_protocol(logs), t.signal_compression(logs), t.signal_timeout(logs)),
            (OtlpProtocol::HttpProtobuf, Compression::Gzip, Duration::from_secs(2)),
        );
        let traces = &t.signals.traces;
        assert_eq!((t.signal_protocol(traces), t.signal_compression(traces)), (OtlpProtocol::Grpc, Compression::None), "the shared ones");
        assert_eq!(t.longest_export_timeout(), t.export_timeout.max(Duration::from_secs(2)));
        // No endpoint set anywhere: the HTTP signal goes to the HTTP port on this machine.
        assert_eq!(logs.to, SignalEndpoint::Own("http://127.0.0.1:4318/v1/logs".into()));
        assert_eq!(traces.to, SignalEndpoint::Shared);
        // With an endpoint set, the signal goes there under its path (`signal_endpoint`).
        let (t, _) = load(&format!("{table}\notlp_endpoint = \"http://collector:4317\""), &[]);
        assert_eq!(t.signal_endpoint(&t.signals.logs), Some(("http://collector:4317", true)));
        // From OpenTelemetry's variables; the table wins what it sets; bad values are said.
        let vars = &[
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1500"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "30000"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "7000"),
        ];
        let (t, ignored) = load(table, vars);
        let metrics = &t.signals.metrics;
        assert_eq!(
            (t.signal_protocol(metrics), t.signal_compression(metrics), t.signal_timeout(metrics)),
            (OtlpProtocol::HttpProtobuf, Compression::Gzip, Duration::from_millis(1500)),
        );
        assert_eq!(t.signal_protocol(&t.signals.logs), OtlpProtocol::HttpProtobuf, "the table wins");
        assert_eq!(t.signal_protocol(&t.signals.traces), OtlpProtocol::Grpc);
        let retry = [&t.signals.traces, &t.signals.logs, &t.signals.metrics].map(|e| t.signal_max_retry_time(e));
        assert_eq!(retry, [Duration::from_secs(30), t.max_retry_time, Duration::from_secs(7)], "the processors' export timeouts");
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored[0].starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"http/json\" ignored"), "{ignored:?}");
        assert!(ignored[1].starts_with("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=\"soon\" ignored"), "{ignored:?}");
        let zero = GOOD.replace("[telemetry]", "[telemetry.traces]\ntimeout = \"0s\"\n[telemetry]");
        assert!(ProxyConfig::from_toml(&zero).is_err_and(|e| e.to_string().contains("telemetry.traces.timeout")));
    }

    #[test]
    fn tls_files_come_from_the_table_then_the_variables_and_a_signal_s_own_take_the_rest_shared() {
        let dir = std::env::temp_dir().join(format!("meshlens-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("directory");
        let text = |path: std::path::PathBuf| path.to_string_lossy().into_owned();
        let (shared, own) = (Pki::new(&dir, "shared").expect("a test CA"), Pki::new(&dir, "own").expect("a test CA"));
        let (shared_ca, own_ca) = (text(shared.ca.clone()), text(own.ca.clone()));
        let (cert, key) = shared.issue("sidecar", &["sidecar"]).expect("a test certificate");
        let (cert, key) = (text(cert), text(key));
        let vars = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", own_ca.clone()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.clone()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.clone()),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", own_ca.clone()),
            ("OTEL_EXPORTER_OTLP_INSECURE", "false".to_owned()),
        ];
        let env = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        let toml = format!("[telemetry.logs.tls]\nca_file = \"{own_ca}\"\n[telemetry.tls]\nca_file = \"{shared_ca}\"\n[telemetry]");
        let (cfg, ignored) = ProxyConfig::from_toml_with_environment(&GOOD.replace("[telemetry]", &toml), &env).expect("valid");
        let t = &cfg.telemetry;
        let files = |ca: &str| TlsFiles { ca: Some(ca.into()), certificate: Some(cert.clone().into()), key: Some(key.clone().into()) };
        let read = |ca: &str| ClientTls::read(&files(ca), "expected").expect("expected");
        assert_eq!(t.tls, read(&shared_ca), "the table's CA, the variables' certificate and key");
        assert!(t.tls.presents_certificate());
        assert_eq!(t.signals.traces.tls, None, "shared");
        assert_eq!(t.signals.logs.tls, Some(read(&own_ca)), "its own CA, the shared certificate and key");
        assert_eq!(t.signals.metrics.tls, Some(read(&own_ca)), "from its own variable");
        assert_eq!(t.signal_tls(&t.signals.traces), &t.tls);
        assert_eq!(ignored, ["OTEL_EXPORTER_OTLP_INSECURE ignored: an endpoint's scheme says it, http:// plain text and https:// TLS"]);

        let missing = dir.join("missing.pem").to_string_lossy().into_owned();
        let toml = format!("[telemetry.traces.tls]\nca_file = \"{missing}\"\n[telemetry]");
        let error = ProxyConfig::from_toml_with_environment(&GOOD.replace("[telemetry]", &toml), &|_| None).expect_err("missing");
        let error = error.to_string();
        assert!(error.contains("telemetry.traces.tls") && error.contains("missing.pem") && error.contains("cannot read it"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_signal_goes_to_the_shared_endpoint_to_its_own_or_nowhere() {
        use SignalEndpoint::{Off, Own, Shared};
        let signals = |toml: &str, vars: &'static [(&'static str, &'static str)]| {
            let (cfg, ignored) = ProxyConfig::from_toml_with_environment(&GOOD.replace("[telemetry]", toml), &env(vars)).expect("valid");
            let s = cfg.telemetry.signals.clone();
            (cfg.telemetry, [s.traces, s.logs, s.metrics], ignored)
        };
        let to = |exports: &[SignalExport; 3]| exports.clone().map(|e| e.to);
        let table = "[telemetry.traces]\nendpoint = \"http://tempo:4318/v1/traces\"\n[telemetry.metrics]\nendpoint = \"\"\n[telemetry]";
        let (t, got, _) = signals(table, &[]);
        assert_eq!(to(&got), [Own("http://tempo:4318/v1/traces".into()), Shared, Off]);
        assert_eq!(t.signal_endpoint(&got[0]), Some(("http://tempo:4318/v1/traces", false)), "as written");
        assert_eq!(t.signal_endpoint(&got[1]), Some(("http://127.0.0.1:4317", true)), "under the shared endpoint");
        assert!(t.exports());
        // OpenTelemetry's signal-specific variables; the table wins what it sets.
        let vars = &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=shared"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://loki:3100/otlp/v1/logs"),
            ("OTEL_LOGS_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x-scope-orgid=shop"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_LOGS_INSECURE", "true"),
        ];
        let (t, got, ignored) = signals("[telemetry]", vars);
        assert_eq!(to(&got), [Own("http://jaeger:4317".into()), Own("http://loki:3100/otlp/v1/logs".into()), Off]);
        assert_eq!(t.signal_timeout(&got[1]), Duration::from_secs(1));
        let insecure = "OTEL_EXPORTER_OTLP_LOGS_INSECURE ignored: an endpoint's scheme says it, http:// plain text and https:// TLS";
        assert_eq!(ignored, [insecure]);
        let names = |export| t.signal_headers(export).map().keys().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!((names(&got[0]), names(&got[1])), (vec!["authorization".to_owned()], vec!["x-scope-orgid".to_owned()]), "replaced");
        let (t, got, _) = signals("[telemetry.logs]\nheaders = { \"x-scope-orgid\" = \"ops\" }\n[telemetry]", vars);
        assert_eq!(t.signal_headers(&got[1]).map()["x-scope-orgid"], "ops", "the table wins");
        let (_, got, _) = signals("[telemetry.traces]\nendpoint = \"\"\n[telemetry]", vars);
        assert_eq!(got[0].to, Off);
        let (_, got, ignored) = signals("[telemetry]", &[("OTEL_TRACES_EXPORTER", "zipkin, otlp")]);
        assert_eq!(got[0].to, Shared);
        assert_eq!(ignored, ["OTEL_TRACES_EXPORTER: zipkin ignored: the sidecar exports OTLP (or none)"]);
        // otlp_endpoint = "" turns export off whatever the variables say, and says so.
        let (t, got, ignored) = signals("[telemetry]\notlp_endpoint = \"\"", vars);
        assert_eq!((got[0].to.clone(), t.exports()), (Shared, false));
        let skipped = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=\"http://jaeger:4317\" ignored: [telemetry] otlp_endpoint";
        assert_eq!(ignored[0], format!("{skipped} = \"\" turns export off"), "{ignored:?}");
        let logs_only = "[telemetry.logs]\nendpoint = \"http://loki:3100/v1/logs\"\n[telemetry]\notlp_endpoint = \"\"";
        let (t, got, _) = signals(logs_only, &[]);
        assert_eq!((t.signal_endpoint(&got[0]), t.signal_endpoint(&got[1]).is_some()), (None, true), "logs only");
        // OTEL_SDK_DISABLED: nothing exported but what the table sets.
        let disabled = &[("OTEL_SDK_DISABLED", "true"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4317")];
        let (t, _, ignored) = signals("[telemetry]", disabled);
        assert!(!t.exports() && ignored.is_empty(), "{ignored:?}");
        let (t, got, _) = signals("[telemetry.logs]\nendpoint = \"http://loki:3100/v1/logs\"\n[telemetry]", disabled);
        assert_eq!((t.signal_endpoint(&got[0]), t.signal_endpoint(&got[1]).is_some()), (None, true));
        let (t, _, ignored) = signals("[telemetry]\notlp_endpoint = \"http://collector:4317\"", disabled);
        assert!(t.exports() && ignored[0].contains("OTEL_SDK_DISABLED=true ignored"), "{ignored:?}");
        let (t, _, _) = signals("[telemetry]", &[("OTEL_SDK_DISABLED", "false")]);
        assert!(t.exports());
        let bad = GOOD.replace("[telemetry]", "[telemetry.traces]\nheaders = { \"content-type\" = \"x\" }\n[telemetry]");
        let err = ProxyConfig::from_toml(&bad).expect_err("the exporter's own header").to_string();
        assert!(err.contains("telemetry.traces.headers"), "{err}");
    }

    #[test]
    fn opentelemetrys_variables_fill_what_the_table_leaves_out() {
        let otel = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gateway:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=east"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "1000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2048"),
            ("OTEL_BLRP_MAX_QUEUE_SIZE", "512"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "128"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
        ]);
        let unset = GOOD.replace("flush_interval = \"500ms\"", "");
        let (cfg, ignored) = ProxyConfig::from_toml_with_environment(&unset, &otel).expect("valid");
        let t = &cfg.telemetry;
        let chosen = (Some("http://gateway:4318"), OtlpProtocol::HttpProtobuf, Compression::Gzip);
        assert_eq!((t.otlp_endpoint.as_deref(), t.otlp_protocol, t.compression), chosen);
        assert_eq!(t.export_timeout, Duration::from_millis(2500));
        let intervals = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!((t.flush_interval, t.metrics_interval), intervals, "the logs' delay, none for spans");
        assert_eq!((t.queue_capacity, t.max_batch), (2048, 128), "the spans' first");
        assert_eq!(t.resource_attributes.iter().collect::<Vec<_>>(), [("k8s.cluster.name", "east")]);
        assert_eq!(t.otlp_headers.map()["authorization"], "Bearer s3cret");
        assert_eq!(ignored, Vec::<String>::new());
        // The table wins what it sets.
        let set = "[telemetry]\notlp_endpoint = \"\"\notlp_protocol = \"grpc\"\ncompression = \"none\"\nexport_timeout = \"1s\"\n\
                   queue_capacity = 64\nmax_batch = 32\nmetrics_interval = \"5s\"";
        let (cfg, _) = ProxyConfig::from_toml_with_environment(&GOOD.replace("[telemetry]", set), &otel).expect("valid");
        let t = &cfg.telemetry;
        assert_eq!((t.otlp_endpoint.as_deref(), t.otlp_protocol, t.compression), (None, OtlpProtocol::Grpc, Compression::None));
        assert_eq!(t.export_timeout, Duration::from_secs(1));
        let table = (Duration::from_millis(500), Duration::from_secs(5), 64, 32);
        assert_eq!((t.flush_interval, t.metrics_interval, t.queue_capacity, t.max_batch), table);
        // Values the sidecar cannot use are ignored, and said so; an empty one is unset.
        let odd = env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "br"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ]);
        let (cfg, ignored) = ProxyConfig::from_toml_with_environment(GOOD, &odd).expect("valid");
        assert_eq!((cfg.telemetry.otlp_protocol, cfg.telemetry.compression), (OtlpProtocol::Grpc, Compression::None));
        assert_eq!(cfg.telemetry.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert!(ignored.len() == 4 && ignored[0].contains("http/json"), "{ignored:?}");
        assert_eq!(ignored[1], "OTEL_EXPORTER_OTLP_COMPRESSION=\"br\" ignored: the sidecar takes gzip or zstd or none");
        assert!(ignored[2].contains("OTEL_EXPORTER_OTLP_TIMEOUT=\"5s\""), "{ignored:?}");
        assert_eq!(ignored[3], "OTEL_BSP_MAX_QUEUE_SIZE=\"0\" ignored: it is a positive number of records");
        assert_eq!(cfg.telemetry.queue_capacity, 4096);
    }

    #[test]
    fn opentelemetrys_sampler_and_propagators_set_what_the_table_leaves_out() {
        let read = |sampler: &'static str, arg: &'static str, propagators: &'static str| {
            let env = move |name: &str| match name {
                "OTEL_TRACES_SAMPLER" => Some(sampler.to_owned()),
                "OTEL_TRACES_SAMPLER_ARG" => Some(arg.to_owned()),
                "OTEL_PROPAGATORS" => Some(propagators.to_owned()),
                _ => None,
            };
            let (cfg, ignored) = ProxyConfig::from_toml_with_environment(GOOD, &env).expect("valid");
            (cfg.telemetry.sampling.ratio, cfg.telemetry.propagation, ignored.len())
        };
        let formats = |f: &[Format]| Formats::of(f);
        assert_eq!(read("parentbased_traceidratio", "0.25", "tracecontext,baggage,b3"), (0.25, formats(&[Format::W3c, Format::B3]), 0));
        assert_eq!(read("parentbased_always_off", "", "b3multi"), (0.0, formats(&[Format::B3multi]), 0));
        assert_eq!(read("traceidratio", "0.5", "none"), (0.5, formats(&[]), 1), "taken as parent-based, and said so");
        assert_eq!(read("parentbased_traceidratio", "2", ""), (1.0, Formats::W3C, 1), "a ratio past 1 is 1");
        assert_eq!(read("jaeger_remote", "", "jaeger,xray"), (1.0, Formats::W3C, 3), "unknown: the defaults");
        let set = GOOD.replace("[telemetry]", "[telemetry]\nsampling_ratio = 0.1\npropagation = [\"b3\"]");
        let env = |name: &str| (name == "OTEL_TRACES_SAMPLER").then(|| "parentbased_always_on".to_owned());
        let (cfg, _) = ProxyConfig::from_toml_with_environment(&set, &env).expect("valid");
        assert_eq!((cfg.telemetry.sampling.ratio, cfg.telemetry.propagation), (0.1, formats(&[Format::B3])), "the table wins");
    }

    #[test]
    fn access_log_formats_are_checked_at_load() {
        let text = format!("{GOOD}\n[access_log]\nstdout = \"text\"\nformat = \"%REQ(:METHOD)% %BOGUS%\"\n");
        let err = ProxyConfig::from_toml(&text).expect_err("unknown field");
        assert!(err.to_string().contains("%BOGUS%"), "{err}");
        let json = format!("{GOOD}\n[access_log]\nstdout = \"json\"\n");
        assert!(ProxyConfig::from_toml(&json).expect("valid").telemetry.stdout_access_log.is_some());
        let keys = "[access_log.json_format]\nstatus = \"%RESPONSE_CODE%\"";
        let dictionary = format!("{GOOD}\n[access_log]\nstdout = \"json\"\nomit_empty_values = true\n{keys}\n");
        let parsed = ProxyConfig::from_toml(&dictionary).expect("valid").telemetry.stdout_access_log;
        assert!(matches!(parsed, Some(AccessLogFormat::Dictionary(_))), "{parsed:?}");
        let text = format!("{GOOD}\n[access_log]\nstdout = \"text\"\nomit_empty_values = true\nformat = \"%UPSTREAM_HOST%\"\n");
        let parsed = ProxyConfig::from_toml(&text).expect("valid").telemetry.stdout_access_log;
        assert_eq!(parsed, AccessLogFormat::text("%UPSTREAM_HOST%").ok().map(AccessLogFormat::omitting_empty_values));
        for (extra, named) in [
            ("stdout = \"text\"\n[access_log.json_format]\nstatus = \"%RESPONSE_CODE%\"", "json_format"),
            ("stdout = \"json\"\nformat = \"%DURATION%\"", "format"),
            ("stdout = \"json\"\nomit_empty_values = true", "omit_empty_values"),
            ("omit_empty_values = true", "omit_empty_values"),
            ("stdout = \"json\"\n[access_log.json_format]\nstatus = \"%BOGUS%\"", "%BOGUS%"),
        ] {
            let err = ProxyConfig::from_toml(&format!("{GOOD}\n[access_log]\n{extra}\n")).expect_err(extra).to_string();
            assert!(err.contains(named), "{extra}: {err}");
        }
    }

    #[test]
    fn access_log_filters_are_checked_at_load() {
        let filtered =
            |filter: &str| ProxyConfig::from_toml(&format!("{GOOD}\n[access_log]\nstdout = \"text\"\nfilter = {{ {filter} }}\n"));
        let parsed = filtered("failures = true, status_at_least = 500, duration_at_least = \"1.5s\", response_flags = [\"UF\", \"UH\"]")
            .expect("valid")
            .telemetry
            .stdout_access_log_filter;
        let flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE | ResponseFlags::NO_HEALTHY_UPSTREAM;
        let expected = LogFilter {
            failures: true,
            status_at_least: Some(500),
            duration_at_least: Some(Duration::from_millis(1500)),
            response_flags: Some(flags),
        };
        assert_eq!(parsed, expected);
        let any_flag = filtered("response_flags = []").expect("valid").telemetry.stdout_access_log_filter;
        assert_eq!(any_flag.response_flags, Some(ResponseFlags::empty()));
        for (bad, named) in [
            ("", "no condition"),
            ("failures = false", "no condition"),
            ("status_at_least = 42", "42"),
            ("response_flags = [\"XX\"]", "XX"),
            ("duration_at_least = \"soon\"", "duration_at_least"),
            ("bogus = 1", "bogus"),
        ] {
            let err = filtered(bad).expect_err(bad);
            let err = format!("{err} {}", std::error::Error::source(&err).map(|c| c.to_string()).unwrap_or_default());
            assert!(err.contains(named), "{bad}: {err}");
        }
        let off = ProxyConfig::from_toml(&format!("{GOOD}\n[access_log]\nfilter = {{ failures = true }}\n")).expect_err("no stdout log");
        assert!(off.to_string().contains("stdout"), "{off}");
    }

    #[test]
    fn duplicate_service_and_zero_weights_are_rejected() {
        let dup = format!("{GOOD}\n[[services]]\nname = \"reviews\"\nendpoints = []\n");
        assert!(ProxyConfig::from_toml(&dup).is_err());
        let zero = GOOD.replace("weight = 80", "weight = 0").replace("weight = 20", "weight = 0");
        assert!(ProxyConfig::from_toml(&zero).is_err());
    }
}
