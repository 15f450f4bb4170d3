//! Access logs on stdout, besides the OTLP log records: one JSON object or one line in an
//! Envoy-style format per request.
//!
//! The format is parsed once, when the configuration is loaded, so an unknown `%FIELD%` is
//! a configuration error rather than a surprise at runtime. Lines are handed to a writer
//! task through a bounded queue; when stdout cannot keep up, lines are dropped and counted
//! (`signal="stdout_access_log"`), never waited for.

use std::{fmt::Write as _, sync::Arc};

use serde_json::json;
use tokio::{io::AsyncWriteExt, sync::mpsc};

use super::{RequestRecord, TelemetryStats};

/// Envoy's default format, with meshlens's trace ID at the end.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %TRACE_ID%";

/// One field of a text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    StartTime,
    Method,
    Path,
    Authority,
    UserAgent,
    RequestId,
    Protocol,
    ResponseCode,
    GrpcStatus,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    TraceId,
    SpanId,
    Direction,
    SourceWorkload,
    DestinationWorkload,
}

impl Field {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "START_TIME" => Self::StartTime,
            "REQ(:METHOD)" | "METHOD" => Self::Method,
            "REQ(:PATH)" | "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)" | "PATH" => Self::Path,
            "REQ(:AUTHORITY)" | "REQ(HOST)" => Self::Authority,
            "REQ(USER-AGENT)" => Self::UserAgent,
            "REQ(X-REQUEST-ID)" => Self::RequestId,
            "PROTOCOL" => Self::Protocol,
            "RESPONSE_CODE" => Self::ResponseCode,
            "GRPC_STATUS" | "GRPC_STATUS_NUMBER" => Self::GrpcStatus,
            "RESPONSE_FLAGS" => Self::ResponseFlags,
            "BYTES_RECEIVED" => Self::BytesReceived,
            "BYTES_SENT" => Self::BytesSent,
            "DURATION" => Self::Duration,
            "UPSTREAM_HOST" => Self::UpstreamHost,
            "UPSTREAM_CLUSTER" => Self::UpstreamCluster,
            "DOWNSTREAM_REMOTE_ADDRESS" => Self::DownstreamRemoteAddress,
            "TRACE_ID" => Self::TraceId,
            "SPAN_ID" => Self::SpanId,
            "DIRECTION" => Self::Direction,
            "SOURCE_WORKLOAD" => Self::SourceWorkload,
            "DESTINATION_WORKLOAD" => Self::DestinationWorkload,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// How access-log lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// A text line from a `%FIELD%` format.
    Text(TextFormat),
}

/// A parsed `%FIELD%` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFormat(Vec<Piece>);

impl AccessLogFormat {
    /// Parses a text format; `%%` is a literal `%`.
    pub fn text(format: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = format;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 1..];
            if let Some(stripped) = after.strip_prefix('%') {
                pieces.push(Piece::Text("%".into()));
                rest = stripped;
                continue;
            }
            let end = after.find('%').ok_or_else(|| format!("unterminated %FIELD% in access log format {format:?}"))?;
            let name = &after[..end];
            let field = Field::parse(name).ok_or_else(|| format!("unknown access log field %{name}%"))?;
            pieces.push(Piece::Field(field));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self::Text(TextFormat(pieces)))
    }

    /// One line (without the newline) for `r`.
    pub fn render(&self, r: &RequestRecord) -> String {
        match self {
            Self::Json => json_line(r),
            Self::Text(TextFormat(pieces)) => {
                let mut line = String::with_capacity(256);
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => line.push_str(t),
                        Piece::Field(f) => write_field(&mut line, *f, r),
                    }
                }
                line
            }
        }
    }
}

fn start_time(r: &RequestRecord) -> String {
    meshlens_common::time::format_rfc3339_millis(r.start_unix_nanos)
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn write_field(line: &mut String, field: Field, r: &RequestRecord) {
    let _ = match field {
        Field::StartTime => write!(line, "{}", start_time(r)),
        Field::Method => write!(line, "{}", r.method),
        Field::Path => write!(line, "{}", r.path),
        Field::Authority => write!(line, "{}", dash(r.authority.as_ref())),
        Field::UserAgent => write!(line, "{}", dash(r.user_agent.as_ref())),
        Field::RequestId => write!(line, "{}", dash(r.request_id.as_ref())),
        Field::Protocol => write!(line, "HTTP/{}", r.protocol_version()),
        Field::ResponseCode => write!(line, "{}", r.status),
        Field::GrpcStatus => write!(line, "{}", dash(r.grpc_status)),
        Field::ResponseFlags => write!(line, "{}", r.flags),
        Field::BytesReceived => write!(line, "{}", r.request_bytes),
        Field::BytesSent => write!(line, "{}", r.response_bytes),
        Field::Duration => write!(line, "{}", r.duration.as_millis()),
        Field::UpstreamHost => write!(line, "{}", dash(r.upstream)),
        Field::UpstreamCluster => write!(line, "{}", r.destination_service),
        Field::DownstreamRemoteAddress => write!(line, "{}", dash(r.peer)),
        Field::TraceId => write!(line, "{}", r.context.trace_id),
        Field::SpanId => write!(line, "{}", r.context.span_id),
        Field::Direction => write!(line, "{}", r.side.as_str()),
        Field::SourceWorkload => write!(line, "{}", dash(r.source.as_ref().map(|s| &s.workload))),
        Field::DestinationWorkload => write!(line, "{}", dash(r.destination.as_ref().map(|d| &d.workload))),
    };
}

fn json_line(r: &RequestRecord) -> String {
    json!({
        "start_time": start_time(r),
        "direction": r.side.as_str(),
        "method": r.method.as_str(),
        "path": r.path,
        "authority": r.authority.as_deref(),
        "protocol": format!("HTTP/{}", r.protocol_version()),
        "response_code": r.status,
        "grpc_status": r.grpc_status,
        "response_flags": r.flags.to_string(),
        "classification": r.classification.outcome.as_str(),
        "bytes_received": r.request_bytes,
        "bytes_sent": r.response_bytes,
        "duration_ms": r.duration.as_secs_f64() * 1000.0,
        "upstream_host": r.upstream.map(|u| u.to_string()),
        "upstream_cluster": &*r.destination_service,
        "downstream_remote_address": r.peer.map(|p| p.to_string()),
        "user_agent": r.user_agent,
        "request_id": r.request_id,
        "trace_id": r.context.trace_id.to_string(),
        "span_id": r.context.span_id.to_string(),
        "source_workload": r.source.as_ref().map(|s| &*s.workload),
        "source_namespace": r.source.as_ref().map(|s| &*s.namespace),
        "destination_workload": r.destination.as_ref().map(|d| &*d.workload),
        "destination_namespace": r.destination.as_ref().map(|d| &*d.namespace),
    })
    .to_string()
}

/// Queues rendered lines for the stdout writer.
#[derive(Debug, Clone)]
pub struct StdoutAccessLog {
    format: Arc<AccessLogFormat>,
    tx: mpsc::Sender<String>,
}

impl StdoutAccessLog {
    /// Starts the writer task; `capacity` lines may wait for it.
    pub fn start(format: AccessLogFormat, capacity: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<String>(capacity.max(1));
        tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            let mut lines = Vec::with_capacity(256);
            while rx.recv_many(&mut lines, 256).await > 0 {
                for line in lines.drain(..) {
                    if out.write_all(line.as_bytes()).await.is_err() || out.write_all(b"\n").await.is_err() {
                        return;
                    }
                }
                if out.flush().await.is_err() {
                    return;
                }
            }
        });
        Self { format: Arc::new(format), tx }
    }

    /// Renders and queues one line; drops it (counted) when the writer is behind.
    pub fn write(&self, record: &RequestRecord, stats: &TelemetryStats) {
        if self.tx.try_send(self.format.render(record)).is_err() {
            stats.dropped("stdout_access_log", "queue_full", 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::record;

    #[test]
    fn text_formats_parse_and_render_envoy_fields() {
        let f = AccessLogFormat::text("%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% 100%% %DURATION%ms").expect("valid");
        let r = record(true, crate::classify::Outcome::Success, 12);
        assert_eq!(f.render(&r), "GET / 200 - 100% 12ms");
        assert!(AccessLogFormat::text(DEFAULT_FORMAT).is_ok());
        assert!(AccessLogFormat::text("%NOPE%").expect_err("unknown").contains("%NOPE%"));
        assert!(AccessLogFormat::text("%START_TIME").is_err());
    }

    #[test]
    fn json_lines_carry_the_request() {
        let r = record(false, crate::classify::Outcome::Failure, 5);
        let v: serde_json::Value = serde_json::from_str(&AccessLogFormat::Json.render(&r)).expect("json");
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["classification"], "failure");
        assert_eq!(v["trace_id"], r.context.trace_id.to_string());
        assert_eq!(v["start_time"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn start_time_is_utc_iso8601() {
        let mut r = record(true, crate::classify::Outcome::Success, 1);
        r.start_unix_nanos = 1_795_269_600_123_000_000;
        assert_eq!(start_time(&r), "2026-11-21T14:00:00.123Z");
    }
}
