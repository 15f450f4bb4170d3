//! Access logs on stdout, besides the OTLP log records: one JSON object or one line in an
//! Envoy-style format per request.
//!
//! The format is parsed once, when the configuration is loaded, so an unknown `%FIELD%` is
//! a configuration error rather than a surprise at runtime. As in Envoy, `%REQ(NAME)%`,
//! `%RESP(NAME)%` and `%TRAILER(NAME)%` print any request or response header or response
//! trailer (`%REQ(A?B)%` the first of two that is present, `-` when none is),
//! `%START_TIME(…)%` takes a `strftime` format, and any other field may end in `:N` to keep
//! its first N characters; `%HOSTNAME%` and `%ENVIRONMENT(NAME)%` are read once, at load. A
//! format dictionary (Envoy's `json_format`) names the keys of the JSON objects: each value is
//! a format, and one that is a single field keeps its type (a number, or `null` when unset).
//!
//! The headers a format names are the only ones a record keeps for it
//! ([`super::headers`]), and only when the format names any. A [`LogFilter`] may narrow the lines to the requests that
//! failed, were slow or had a response flag (Envoy's access-log filters, joined by *or*); the
//! OTLP log records cover every request whatever it says. Lines are handed to a writer task
//! through a bounded queue; when stdout cannot keep up, lines are dropped and counted
//! (`signal="stdout_access_log"`), never waited for.

use std::{fmt::Write as _, sync::Arc};

use http::HeaderName;
use meshlens_common::time::TimeFormat;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, sync::mpsc};

use super::{
    RequestRecord, TelemetryStats,
    headers::HeaderNames,
};
use crate::classify::ResponseFlags;

/// Envoy's default format, with meshlens's trace ID at the end.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %TRACE_ID%";

/// One field of a text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    StartTime,
    Method,
    /// The path without its query.
    Path,
    /// The path and its query (secrets redacted), as Envoy's `%REQ(:PATH)%`.
    PathAndQuery,
    Authority,
    /// The original request's scheme (`https` when its proxies say so), as `url.scheme`.
    Scheme,
    UserAgent,
    RequestId,
    Protocol,
    /// The HTTP version the request went upstream in.
    UpstreamProtocol,
    /// The downstream connection's ID.
    ConnectionId,
    /// The ID of the upstream connection that answered.
    UpstreamConnectionId,
    /// A new UUID for each line.
    UniqueId,
    ResponseCode,
    GrpcStatus,
    ResponseFlags,
    ResponseCodeDetails,
    AttemptCount,
    RouteName,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    /// Envoy's long flag names (`UpstreamConnectionFailure`).
    ResponseFlagsLong,
    UpstreamCluster,
    /// One of a connection's addresses, whole or a part of it.
    Address(Addr, AddrPart),
    RequestedServerName,
    UpstreamTransportFailureReason,
    ConnectionTerminationDetails,
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
            "METHOD" => Self::Method,
            "PATH" => Self::Path,
            "PROTOCOL" => Self::Protocol,
            "UPSTREAM_PROTOCOL" => Self::UpstreamProtocol,
            "CONNECTION_ID" => Self::ConnectionId,
            "UPSTREAM_CONNECTION_ID" => Self::UpstreamConnectionId,
            // Envoy's stream ID is the request's `x-request-id` for HTTP.
            "STREAM_ID" => Self::RequestId,
            "UNIQUE_ID" => Self::UniqueId,
            "RESPONSE_CODE" => Self::ResponseCode,
            "GRPC_STATUS" | "GRPC_STATUS_NUMBER" => Self::GrpcStatus,
            "RESPONSE_FLAGS" => Self::ResponseFlags,
            "RESPONSE_FLAGS_LONG" => Self::ResponseFlagsLong,
            "RESPONSE_CODE_DETAILS" => Self::ResponseCodeDetails,
            "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Self::AttemptCount,
            "ROUTE_NAME" => Self::RouteName,
            "BYTES_RECEIVED" => Self::BytesReceived,
            "BYTES_SENT" => Self::BytesSent,
            "DURATION" => Self::Duration,
            "REQUEST_DURATION" => Self::RequestDuration,
            "RESPONSE_DURATION" => Self::ResponseDuration,
            "RESPONSE_TX_DURATION" => Self::ResponseTxDuration,
            "UPSTREAM_CLUSTER" => Self::UpstreamCluster,
            "REQUESTED_SERVER_NAME" => Self::RequestedServerName,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => Self::UpstreamTransportFailureReason,
            "CONNECTION_TERMINATION_DETAILS" => Self::ConnectionTerminationDetails,
            "TRACE_ID" => Self::TraceId,
            "SPAN_ID" => Self::SpanId,
            "DIRECTION" => Self::Direction,
            "SOURCE_WORKLOAD" => Self::SourceWorkload,
            "DESTINATION_WORKLOAD" => Self::DestinationWorkload,
            _ => return Self::address(name),
        })
    }

    /// Envoy's address fields: `{DOWNSTREAM_REMOTE,DOWNSTREAM_DIRECT_REMOTE,DOWNSTREAM_LOCAL,
    /// UPSTREAM_REMOTE,UPSTREAM_LOCAL}_ADDRESS`, each also `_WITHOUT_PORT`, and `_PORT`; and
    /// `UPSTREAM_HOST`. The sidecar reads no PROXY protocol header, so the direct remote
    /// address is the remote one.
    fn address(name: &str) -> Option<Self> {
        if name == "UPSTREAM_HOST" {
            return Some(Self::Address(Addr::Upstream, AddrPart::Whole));
        }
        let (which, part) = if let Some(which) = name.strip_suffix("_ADDRESS_WITHOUT_PORT") {
            (which, AddrPart::WithoutPort)
        } else if let Some(which) = name.strip_suffix("_ADDRESS") {
            (which, AddrPart::Whole)
        } else {
            (name.strip_suffix("_PORT")?, AddrPart::Port)
        };
        let which = match which {
            "DOWNSTREAM_REMOTE" | "DOWNSTREAM_DIRECT_REMOTE" => Addr::DownstreamRemote,
            "DOWNSTREAM_LOCAL" => Addr::DownstreamLocal,
            "UPSTREAM_REMOTE" => Addr::Upstream,
            "UPSTREAM_LOCAL" => Addr::UpstreamLocal,
            _ => return None,
        };
        Some(Self::Address(which, part))
    }
}

/// A connection address a record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    /// The caller's end of the downstream connection.
    DownstreamRemote,
    /// The sidecar's end of it.
    DownstreamLocal,
    /// The upstream endpoint the request went to.
    Upstream,
    /// The sidecar's end of the upstream connection that answered.
    UpstreamLocal,
}

impl Addr {
    fn of(self, r: &RequestRecord) -> Option<std::net::SocketAddr> {
        match self {
            Self::DownstreamRemote => r.peer,
            Self::DownstreamLocal => r.local,
            Self::Upstream => r.upstream,
            Self::UpstreamLocal => r.upstream_local,
        }
    }
}

/// Which part of an address a field prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrPart {
    Whole,
    WithoutPort,
    Port,
}

/// Which headers a `%REQ(…)%`, `%RESP(…)%` or `%TRAILER(…)%` field reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Request,
    Response,
    Trailer,
}

/// Where a `%REQ(…)%`, `%RESP(…)%` or `%TRAILER(…)%` field reads its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A value the record keeps anyway (`:METHOD`, `:PATH`, `:AUTHORITY`, `USER-AGENT`, …).
    Record(Field),
    /// The request header in this slot of [`CapturedHeaders::request`].
    Request(usize),
    /// The response header in this slot of [`CapturedHeaders::response`].
    Response(usize),
    /// The response trailer in this slot of [`CapturedHeaders::trailer`].
    Trailer(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A field, and how many characters of it are kept.
    Field(Field, Option<usize>),
    /// A header field: the first of its sources that has a value, how many characters of it
    /// are kept, and whether its query (from the first `?`) is cut (`%REQ_WITHOUT_QUERY(…)%`).
    Header(Vec<Source>, Option<usize>, bool),
    /// `%START_TIME(…)%`.
    StartTime(TimeFormat),
    /// A value the same for every line, known when the format is loaded (`%HOSTNAME%`,
    /// `%ENVIRONMENT(…)%`), already cut to its `:N`; none prints `-`.
    Constant(Option<String>),
}

/// How access-log lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// A text line from a `%FIELD%` format.
    Text(TextFormat),
    /// One JSON object per line, its keys and values from a format dictionary.
    Dictionary(JsonFormat),
}

/// A parsed `%FIELD%` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFormat {
    pieces: Vec<Piece>,
    headers: Arc<HeaderNames>,
    /// A field or header with no value prints nothing instead of `-`.
    omit_empty: bool,
}

/// Which requests get a stdout line: every one, or those meeting any of the conditions set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Requests the classifier called failures (5xx, gRPC errors, resets, timeouts).
    pub failures: bool,
    /// Responses with at least this status.
    pub status_at_least: Option<u16>,
    /// Requests lasting at least this long.
    pub duration_at_least: Option<std::time::Duration>,
    /// Responses with any of these flags; an empty set means any flag at all.
    pub response_flags: Option<ResponseFlags>,
}

impl LogFilter {
    /// Whether `r` gets a line.
    pub fn admits(&self, r: &RequestRecord) -> bool {
        if *self == Self::default() {
            return true;
        }
        let flagged = |flags: ResponseFlags| if flags.is_empty() { !r.flags.is_empty() } else { r.flags.intersects(flags) };
        (self.failures && r.classification.outcome == crate::classify::Outcome::Failure)
            || self.status_at_least.is_some_and(|min| r.status >= min)
            || self.duration_at_least.is_some_and(|min| r.duration >= min)
            || self.response_flags.is_some_and(flagged)
    }
}

/// A format dictionary: JSON keys to `%FIELD%` formats, nested objects allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFormat {
    keys: Vec<(String, JsonEntry)>,
    /// Keys whose value is unset or empty are left out.
    omit_empty: bool,
    headers: Arc<HeaderNames>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JsonEntry {
    Object(Vec<(String, JsonEntry)>),
    Format(Vec<Piece>),
}

/// Parses `N` of a field's `:N` suffix.
fn max_len(suffix: Option<&str>, field: &str) -> Result<Option<usize>, String> {
    suffix
        .map(|n| n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| format!("bad length in access log field %{field}%")))
        .transpose()
}

/// Parses the inside of `REQ(…)`, `RESP(…)` or `TRAILER(…)`: header names separated by `?`.
fn header_sources(inner: &str, part: Part, without_query: bool, names: &mut HeaderNames, field: &str) -> Result<Vec<Source>, String> {
    let bad = || format!("bad header in access log field %{field}%");
    let alternatives: Vec<&str> = inner.split('?').collect();
    if alternatives.len() > 2 {
        return Err(bad());
    }
    alternatives
        .into_iter()
        .map(|name| {
            let known = match name.to_ascii_uppercase().as_str() {
                // The header Envoy adds to responses: the upstream's time to its headers.
                "X-ENVOY-UPSTREAM-SERVICE-TIME" if part == Part::Response => Some(Field::ResponseDuration),
                _ if part != Part::Request => None,
                ":METHOD" => Some(Field::Method),
                ":PATH" | "X-ENVOY-ORIGINAL-PATH" if without_query => Some(Field::Path),
                ":PATH" | "X-ENVOY-ORIGINAL-PATH" => Some(Field::PathAndQuery),
                ":AUTHORITY" | "HOST" => Some(Field::Authority),
                ":SCHEME" => Some(Field::Scheme),
                "USER-AGENT" => Some(Field::UserAgent),
                "X-REQUEST-ID" => Some(Field::RequestId),
                _ => None,
            };
            if let Some(field) = known {
                return Ok(Source::Record(field));
            }
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            Ok(match part {
                Part::Request => Source::Request(names.request_slot(header)),
                Part::Response => Source::Response(names.response_slot(header)),
                Part::Trailer => Source::Trailer(names.trailer_slot(header)),
            })
        })
        .collect()
}

/// The header fields: their prefix, the headers they read, and whether a value is cut at its
/// `?`.
const HEADER_FIELDS: [(&str, Part, bool); 4] = [
    ("REQ(", Part::Request, false),
    ("REQ_WITHOUT_QUERY(", Part::Request, true),
    ("RESP(", Part::Response, false),
    ("TRAILER(", Part::Trailer, false),
];

/// Parses a `%FIELD%` format into pieces, adding the headers it names to `names`; `%%` is a
/// literal `%`.
fn parse_pieces(format: &str, names: &mut HeaderNames) -> Result<Vec<Piece>, String> {
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
        // `START_TIME(…)` holds `%`s of its own: it ends at `)%`.
        if let Some(time) = after.strip_prefix("START_TIME(") {
            let end = time.find(")%").ok_or_else(|| format!("unterminated %START_TIME(…)% in access log format {format:?}"))?;
            pieces.push(Piece::StartTime(TimeFormat::parse(&time[..end])?));
            rest = &time[end + 2..];
            continue;
        }
        let end = after.find('%').ok_or_else(|| format!("unterminated %FIELD% in access log format {format:?}"))?;
        let field = &after[..end];
        // `NAME`, `NAME:N`, `REQ(A?B)` or `REQ(A?B):N`.
        let (name, suffix) = match field.rfind(')') {
            Some(close) => (&field[..=close], field[close + 1..].strip_prefix(':')),
            None => field.split_once(':').map_or((field, None), |(name, n)| (name, Some(n))),
        };
        let max = max_len(suffix, field)?;
        let header = HEADER_FIELDS.iter().find_map(|&(prefix, part, without_query)| {
            let inner = name.strip_prefix(prefix)?.strip_suffix(')')?;
            Some((inner, part, without_query))
        });
        let piece = match header {
            Some((inner, part, without_query)) => {
                Piece::Header(header_sources(inner, part, without_query, names, field)?, max, without_query)
            }
            None => match constant(name, field)? {
                Some(value) => Piece::Constant(value.map(|v| cut(v, max))),
                None => Piece::Field(Field::parse(name).ok_or_else(|| format!("unknown access log field %{field}%"))?, max),
            },
        };
        pieces.push(piece);
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// The value of a field that is the same on every line, read once: `HOSTNAME` (the host's
/// name) and `ENVIRONMENT(NAME)` (the sidecar's environment variable `NAME`), as Envoy has
/// them; `None` for any other field.
fn constant(name: &str, field: &str) -> Result<Option<Option<String>>, String> {
    if name == "HOSTNAME" {
        return Ok(Some(hostname()));
    }
    let Some(variable) = name.strip_prefix("ENVIRONMENT(").and_then(|n| n.strip_suffix(')')) else { return Ok(None) };
    if variable.is_empty() || variable.contains(['(', ')', '=']) {
        return Err(format!("bad variable name in access log field %{field}%"));
    }
    Ok(Some(std::env::var(variable).ok().filter(|v| !v.is_empty())))
}

/// The host's name, as the kernel has it (`uname -n`).
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok())?;
    Some(name.trim().to_owned()).filter(|n| !n.is_empty())
}

/// `value`'s first `max` characters.
fn cut(mut value: String, max: Option<usize>) -> String {
    if let Some((end, _)) = max.and_then(|max| value.char_indices().nth(max)) {
        value.truncate(end);
    }
    value
}

/// Parses one level of a format dictionary: strings are formats, tables nest.
fn parse_dictionary(
    keys: &serde_json::Map<String, Value>,
    names: &mut HeaderNames,
    path: &str,
) -> Result<Vec<(String, JsonEntry)>, String> {
    keys.iter()
        .map(|(key, value)| {
            let entry = match value {
                Value::String(format) => JsonEntry::Format(parse_pieces(format, names)?),
                Value::Object(inner) => JsonEntry::Object(parse_dictionary(inner, names, &format!("{path}{key}."))?),
                _ => return Err(format!("access log json_format key {path}{key} must be a format string or a table")),
            };
            Ok((key.clone(), entry))
        })
        .collect()
}

impl AccessLogFormat {
    /// Parses a text format; `%%` is a literal `%`.
    pub fn text(format: &str) -> Result<Self, String> {
        let mut names = HeaderNames::default();
        let pieces = parse_pieces(format, &mut names)?;
        Ok(Self::Text(TextFormat { pieces, headers: Arc::new(names), omit_empty: false }))
    }

    /// The same text format, printing a field or header with no value as nothing instead of
    /// `-` (Envoy's `omit_empty_values` for text formats). Other formats are unchanged.
    pub fn omitting_empty_values(mut self) -> Self {
        if let Self::Text(text) = &mut self {
            text.omit_empty = true;
        }
        self
    }

    /// Parses a format dictionary (Envoy's `json_format`): each string value is a format,
    /// each table a nested object. With `omit_empty`, keys whose value is unset or empty are
    /// left out of the line.
    pub fn dictionary(keys: &serde_json::Map<String, Value>, omit_empty: bool) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("access log json_format has no keys".into());
        }
        let mut names = HeaderNames::default();
        let keys = parse_dictionary(keys, &mut names, "")?;
        Ok(Self::Dictionary(JsonFormat { keys, omit_empty, headers: Arc::new(names) }))
    }

    /// What kind of line it writes, for a person: `json`, `json (format dictionary)` or
    /// `text (format)`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text(_) => "text (format)",
            Self::Dictionary(_) => "json (format dictionary)",
        }
    }

    /// The headers the format prints, when it prints any beyond what every record keeps.
    pub fn header_names(&self) -> Option<Arc<HeaderNames>> {
        match self {
            Self::Text(TextFormat { headers, .. }) | Self::Dictionary(JsonFormat { headers, .. }) if !headers.is_empty() => {
                Some(headers.clone())
            }
            _ => None,
        }
    }

    /// One line (without the newline) for `r`.
    pub fn render(&self, r: &RequestRecord) -> String {
        match self {
            Self::Json => json_line(r),
            Self::Text(TextFormat { pieces, omit_empty, .. }) => render_pieces(pieces, r, *omit_empty),
            Self::Dictionary(JsonFormat { keys, omit_empty, .. }) => Value::Object(render_object(keys, *omit_empty, r)).to_string(),
        }
    }
}

/// A text format's output for `r`; with `omit_empty`, what has no value prints nothing
/// instead of `-`.
fn render_pieces(pieces: &[Piece], r: &RequestRecord, omit_empty: bool) -> String {
    let mut line = String::with_capacity(256);
    for piece in pieces {
        let start = line.len();
        let max = match piece {
            Piece::Text(t) => {
                line.push_str(t);
                continue;
            }
            Piece::StartTime(format) => {
                format.write(r.start_unix_nanos, &mut line);
                continue;
            }
            Piece::Constant(value) => {
                match value {
                    Some(value) => line.push_str(value),
                    None if !omit_empty => line.push('-'),
                    None => {}
                }
                continue;
            }
            Piece::Field(f, max) => {
                write_field(&mut line, *f, r);
                // Every field writes an unset value as `-`; a set value that is `-` alone (a
                // user agent of `-`) is omitted with it, which prints the same nothing.
                if omit_empty && &line[start..] == "-" {
                    line.truncate(start);
                }
                max
            }
            Piece::Header(sources, max, without_query) => {
                if !write_header(&mut line, sources, *without_query, r) && !omit_empty {
                    line.push('-');
                }
                max
            }
        };
        if let Some((cut, _)) = max.and_then(|max| line[start..].char_indices().nth(max)) {
            line.truncate(start + cut);
        }
    }
    line
}

/// One level of a format dictionary's object for `r`.
fn render_object(keys: &[(String, JsonEntry)], omit_empty: bool, r: &RequestRecord) -> serde_json::Map<String, Value> {
    let mut object = serde_json::Map::new();
    for (key, entry) in keys {
        let value = match entry {
            JsonEntry::Object(inner) => Value::Object(render_object(inner, omit_empty, r)),
            JsonEntry::Format(pieces) => match pieces.as_slice() {
                [Piece::Field(field, None)] => typed_field(*field, r),
                [Piece::Constant(value)] => value.as_deref().into(),
                [Piece::Header(sources, None, without_query)] => {
                    let mut value = String::new();
                    if write_header(&mut value, sources, *without_query, r) { Value::String(value) } else { Value::Null }
                }
                _ => Value::String(render_pieces(pieces, r, false)),
            },
        };
        let empty = match &value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !(omit_empty && empty) {
            object.insert(key.clone(), value);
        }
    }
    object
}

/// A field alone as a dictionary value: numbers as numbers, an unset value as `null`, as
/// Envoy's typed JSON logs have them.
fn typed_field(field: Field, r: &RequestRecord) -> Value {
    let millis = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    match field {
        Field::ResponseCode => r.status.into(),
        Field::GrpcStatus => r.grpc_status.into(),
        Field::AttemptCount => attempt_count(r).into(),
        Field::RouteName => r.route.as_deref().into(),
        Field::BytesReceived => r.request_bytes.into(),
        Field::BytesSent => r.response_bytes.into(),
        Field::Duration => millis(Some(r.duration)).into(),
        Field::RequestDuration => millis(r.request_duration).into(),
        Field::ResponseDuration => millis(r.response_duration).into(),
        Field::ResponseTxDuration => millis(r.response_duration.map(|d| r.duration.saturating_sub(d))).into(),
        Field::Authority => r.authority.as_deref().into(),
        Field::UserAgent => r.user_agent.as_deref().into(),
        Field::RequestId => r.request_id.as_deref().into(),
        Field::ConnectionId => r.connection_id.into(),
        Field::UpstreamConnectionId => r.upstream_connection_id.into(),
        Field::UpstreamProtocol => upstream_protocol(r).into(),
        Field::Address(which, AddrPart::Port) => which.of(r).map(|a| a.port()).into(),
        Field::Address(which, AddrPart::WithoutPort) => which.of(r).map(|a| a.ip().to_string()).into(),
        Field::Address(which, AddrPart::Whole) => which.of(r).map(|a| a.to_string()).into(),
        Field::RequestedServerName | Field::ConnectionTerminationDetails => Value::Null,
        Field::UpstreamTransportFailureReason => transport_failure(r).into(),
        Field::SourceWorkload => r.source.as_ref().map(|s| &*s.workload).into(),
        Field::DestinationWorkload => r.destination.as_ref().map(|d| &*d.workload).into(),
        _ => {
            let mut value = String::new();
            write_field(&mut value, field, r);
            Value::String(value)
        }
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%`: who set the status and why, from the record's flags.
fn response_code_details(r: &RequestRecord) -> &'static str {
    if let Some(details) = r.code_details {
        return details;
    }
    let answered = r.response_duration.is_some();
    let details = [
        (ResponseFlags::NO_ROUTE, "route_not_found"),
        (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
        (ResponseFlags::UPSTREAM_CONNECT_FAILURE, "upstream_reset_before_response_started{connection_failure}"),
        (ResponseFlags::UPSTREAM_TIMEOUT, "upstream_response_timeout"),
        (ResponseFlags::BAD_REQUEST, "invalid_request"),
        (ResponseFlags::STREAM_IDLE_TIMEOUT, "stream_idle_timeout"),
    ];
    if let Some((_, detail)) = details.iter().find(|(flag, _)| r.flags.contains(*flag)) {
        return detail;
    }
    if r.flags.contains(ResponseFlags::UPSTREAM_PROTOCOL_ERROR) {
        return if answered {
            "upstream_reset_after_response_started{protocol_error}"
        } else {
            "upstream_reset_before_response_started{protocol_error}"
        };
    }
    match (r.flags.contains(ResponseFlags::UPSTREAM_RESET), answered) {
        (true, true) => "upstream_reset_after_response_started{connection_termination}",
        (true, false) => "upstream_reset_before_response_started{connection_termination}",
        (false, true) => "via_upstream",
        (false, false) if r.flags.contains(ResponseFlags::DOWNSTREAM_TERMINATED) => "downstream_remote_disconnect",
        (false, false) => "-",
    }
}

/// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the connection to the upstream failed,
/// if it did.
fn transport_failure(r: &RequestRecord) -> Option<&str> {
    r.events.iter().find(|e| e.name == "upstream_connect_failure").and_then(|e| e.message.as_deref())
}

/// Envoy's `%UPSTREAM_PROTOCOL%`: the HTTP version the request went upstream in, if it went.
fn upstream_protocol(r: &RequestRecord) -> Option<&'static str> {
    r.upstream.map(|_| if r.upstream_version() == http::Version::HTTP_2 { "HTTP/2" } else { "HTTP/1.1" })
}

/// Envoy's `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`: the tries sent upstream, 0 when none was.
fn attempt_count(r: &RequestRecord) -> u32 {
    if r.upstream.is_some() { r.retries + 1 } else { 0 }
}

fn start_time(r: &RequestRecord) -> String {
    meshlens_common::time::format_rfc3339_millis(r.start_unix_nanos)
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Writes the first of `sources` that has a value; false when none has.
fn write_header(line: &mut String, sources: &[Source], without_query: bool, r: &RequestRecord) -> bool {
    for source in sources {
        let value = match *source {
            Source::Record(field) => {
                let present = match field {
                    Field::Authority => r.authority.is_some(),
                    Field::UserAgent => r.user_agent.is_some(),
                    Field::RequestId => r.request_id.is_some(),
                    _ => true,
                };
                if present {
                    write_field(line, field, r);
                    return true;
                }
                None
            }
            Source::Request(slot) => r.headers.as_deref().and_then(|h| h.request(slot)),
            Source::Response(slot) => r.headers.as_deref().and_then(|h| h.response(slot)),
            Source::Trailer(slot) => r.headers.as_deref().and_then(|h| h.trailer(slot)),
        };
        if let Some(value) = value {
            let bytes = value.as_bytes();
            let end = if without_query { bytes.iter().position(|&b| b == b'?').unwrap_or(bytes.len()) } else { bytes.len() };
            line.push_str(&String::from_utf8_lossy(&bytes[..end]));
            return true;
        }
    }
    false
}

fn write_field(line: &mut String, field: Field, r: &RequestRecord) {
    let _ = match field {
        Field::StartTime => write!(line, "{}", start_time(r)),
        Field::Method => write!(line, "{}", r.method.as_ref().map_or("-", http::Method::as_str)),
        Field::Path => write!(line, "{}", path(r)),
        Field::PathAndQuery => match &r.query {
            Some(query) => write!(line, "{}?{query}", r.path),
            None => write!(line, "{}", path(r)),
        },
        Field::Authority => write!(line, "{}", dash(r.authority.as_ref())),
        Field::Scheme => write!(line, "{}", r.origin.scheme),
        Field::UserAgent => write!(line, "{}", dash(r.user_agent.as_ref())),
        Field::RequestId => write!(line, "{}", dash(r.request_id.as_ref())),
        Field::Protocol => write!(line, "HTTP/{}", r.protocol_version()),
        Field::UpstreamProtocol => write!(line, "{}", dash(upstream_protocol(r))),
        Field::ConnectionId => write!(line, "{}", dash(r.connection_id)),
        Field::UpstreamConnectionId => write!(line, "{}", dash(r.upstream_connection_id)),
        Field::UniqueId => write!(line, "{}", String::from_utf8_lossy(&crate::trace_context::uuid_v4())),
        Field::ResponseCode => write!(line, "{}", r.status),
        Field::GrpcStatus => write!(line, "{}", dash(r.grpc_status)),
        Field::ResponseFlags => write!(line, "{}", r.flags),
        Field::ResponseFlagsLong => write!(line, "{}", r.flags.long_names()),
        Field::ResponseCodeDetails => write!(line, "{}", response_code_details(r)),
        Field::AttemptCount => write!(line, "{}", attempt_count(r)),
        Field::RouteName => write!(line, "{}", dash(r.route.as_ref())),
        Field::BytesReceived => write!(line, "{}", r.request_bytes),
        Field::BytesSent => write!(line, "{}", r.response_bytes),
        Field::Duration => write!(line, "{}", r.duration.as_millis()),
        Field::RequestDuration => write!(line, "{}", dash(r.request_duration.map(|d| d.as_millis()))),
        Field::ResponseDuration => write!(line, "{}", dash(r.response_duration.map(|d| d.as_millis()))),
        Field::ResponseTxDuration => write!(line, "{}", dash(r.response_duration.map(|d| r.duration.saturating_sub(d).as_millis()))),
        Field::UpstreamCluster => write!(line, "{}", r.destination_service),
        Field::Address(which, AddrPart::Whole) => write!(line, "{}", dash(which.of(r))),
        Field::Address(which, AddrPart::WithoutPort) => write!(line, "{}", dash(which.of(r).map(|a| a.ip()))),
        Field::Address(which, AddrPart::Port) => write!(line, "{}", dash(which.of(r).map(|a| a.port()))),
        // Plaintext connections name no server (SNI), and no network filter ends one.
        Field::RequestedServerName | Field::ConnectionTerminationDetails => write!(line, "-"),
        Field::UpstreamTransportFailureReason => write!(line, "{}", dash(transport_failure(r))),
        Field::TraceId => write!(line, "{}", r.context.trace_id),
        Field::SpanId => write!(line, "{}", r.context.span_id),
        Field::Direction => write!(line, "{}", r.side.as_str()),
        Field::SourceWorkload => write!(line, "{}", dash(r.source.as_ref().map(|s| &s.workload))),
        Field::DestinationWorkload => write!(line, "{}", dash(r.destination.as_ref().map(|d| &d.workload))),
    };
}

/// The path, `-` for a head never read ([`super::unread`]).
fn path(r: &RequestRecord) -> &str {
    if r.path.is_empty() { "-" } else { &r.path }
}

/// The stdout JSON access log's line for `r` (also what the admin `/tap` streams).
pub(crate) fn json_line(r: &RequestRecord) -> String {
    json!({
        "start_time": start_time(r),
        "direction": r.side.as_str(),
        "method": r.method.as_ref().map(http::Method::as_str),
        "path": (!r.path.is_empty()).then_some(&r.path),
        "authority": r.authority.as_deref(),
        "protocol": format!("HTTP/{}", r.protocol_version()),
        "response_code": r.status,
        "grpc_status": r.grpc_status,
        "response_flags": r.flags.to_string(),
        "classification": r.classification.outcome.as_str(),
        "bytes_received": r.request_bytes,
        "bytes_sent": r.response_bytes,
        "duration_ms": r.duration.as_secs_f64() * 1000.0,
        "request_duration_ms": r.request_duration.map(|d| d.as_secs_f64() * 1000.0),
        "response_duration_ms": r.response_duration.map(|d| d.as_secs_f64() * 1000.0),
        "upstream_host": r.upstream.map(|u| u.to_string()),
        "upstream_cluster": &*r.destination_service,
        "downstream_remote_address": r.peer.map(|p| p.to_string()),
        "downstream_local_address": r.local.map(|a| a.to_string()),
        "upstream_local_address": r.upstream_local.map(|a| a.to_string()),
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
    filter: Arc<LogFilter>,
    tx: mpsc::Sender<String>,
}

impl StdoutAccessLog {
    /// Starts the writer task; `capacity` lines may wait for it.
    pub fn start(format: AccessLogFormat, filter: LogFilter, capacity: usize) -> Self {
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
        Self { format: Arc::new(format), filter: Arc::new(filter), tx }
    }

    /// Renders and queues one line, if the filter admits the record; drops it (counted) when
    /// the writer is behind.
    pub fn write(&self, record: &RequestRecord, stats: &TelemetryStats) {
        if !self.filter.admits(record) {
            return;
        }
        if self.tx.try_send(self.format.render(record)).is_err() {
            stats.dropped("stdout_access_log", "queue_full", 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::telemetry::tests::record;

    #[test]
    fn text_formats_parse_and_render_envoy_fields() {
        let f = AccessLogFormat::text("%REQ(:METHOD)% %REQ(:SCHEME)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% 100%% %DURATION%ms");
        let mut r = record(true, crate::classify::Outcome::Success, 12);
        assert_eq!(f.as_ref().expect("valid").render(&r), "GET http / 200 - 100% 12ms");
        r.origin.scheme = "https";
        assert_eq!(f.expect("valid").render(&r), "GET https / 200 - 100% 12ms", "as the caller's proxies say");
        assert!(AccessLogFormat::text(DEFAULT_FORMAT).is_ok());
        assert!(AccessLogFormat::text("%NOPE%").expect_err("unknown").contains("%NOPE%"));
        assert!(AccessLogFormat::text("%START_TIME").is_err());
    }

    #[test]
    fn a_text_format_omitting_empty_values_prints_nothing_for_what_is_unset() {
        let format = "%REQ(:METHOD)%|%RESPONSE_FLAGS%|%REQ(X-NONE)%|%REQ(USER-AGENT)%|%UPSTREAM_HOST%|%RESPONSE_CODE%|-";
        let mut r = record(true, crate::classify::Outcome::Success, 12);
        r.user_agent = None;
        r.upstream = None;
        let plain = AccessLogFormat::text(format).expect("valid");
        assert_eq!(plain.render(&r), "GET|-|-|-|-|200|-");
        let omitting = plain.clone().omitting_empty_values();
        assert_eq!(omitting.render(&r), "GET|||||200|-", "literal text stays");
        r.user_agent = Some("curl/8.0".into());
        r.flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE;
        assert_eq!(omitting.render(&r), "GET|UF||curl/8.0||200|-");
        assert_eq!(AccessLogFormat::Json.omitting_empty_values(), AccessLogFormat::Json, "only text formats change");
    }

    #[test]
    fn any_request_or_response_header_prints_as_in_envoy() {
        let format = "%REQ(X-FORWARDED-FOR)% %RESP(content-type)% %REQ(X-ORIGINAL-HOST?:AUTHORITY)% %REQ(X-A?X-B)% \
                      %REQ(USER-AGENT):4% %REQ(X-FORWARDED-FOR):5% %RESP(X-NONE)% %REQ(X-NAME):3% %DURATION:1%";
        let f = AccessLogFormat::text(format).expect("valid");
        let names = f.header_names().expect("headers to keep");
        let mut request = HeaderMap::new();
        request.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7, 10.0.0.1"));
        request.insert("x-b", HeaderValue::from_static("second"));
        request.insert("x-name", HeaderValue::from_str("Zoë Ågren").expect("value"));
        request.insert("x-unprinted", HeaderValue::from_static("kept by no one"));
        let mut response = HeaderMap::new();
        response.insert("content-type", HeaderValue::from_static("text/plain"));
        let mut captured = names.capture_request(&request);
        captured.add_response(&response);
        let mut r = record(true, crate::classify::Outcome::Success, 12);
        r.user_agent = Some("curl/8.0".into());
        r.authority = Some("backend".into());
        r.headers = Some(Box::new(captured));
        assert_eq!(f.render(&r), "203.0.113.7, 10.0.0.1 text/plain backend second curl 203.0 - Zoë 1");
        r.headers = None;
        assert!(f.render(&r).starts_with("- - backend - curl - -"), "{}", f.render(&r));
    }

    #[test]
    fn response_trailers_print_as_in_envoy() {
        let f = AccessLogFormat::text("%TRAILER(GRPC-MESSAGE)% %TRAILER(X-NONE?grpc-status)% %TRAILER(x-none)% %TRAILER(GRPC-MESSAGE):2%")
            .expect("valid");
        let names = f.header_names().expect("trailers to keep");
        let mut captured = names.capture_request(&HeaderMap::new());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        trailers.insert("grpc-message", HeaderValue::from_static("no such book"));
        captured.add_trailers(&trailers);
        let mut r = record(true, crate::classify::Outcome::Failure, 3);
        r.headers = Some(Box::new(captured));
        assert_eq!(f.render(&r), "no such book 5 - no");
        // A record keeps the slots of the format it is written for.
        let json = dictionary("message = \"%TRAILER(GRPC-MESSAGE)%\"\nabsent = \"%TRAILER(X-NONE)%\"").expect("valid");
        let mut captured = json.header_names().expect("trailers to keep").capture_request(&HeaderMap::new());
        captured.add_trailers(&trailers);
        r.headers = Some(Box::new(captured));
        assert_eq!(json.render(&r), r#"{"absent":null,"message":"no such book"}"#);
        assert!(AccessLogFormat::text("%TRAILER(bad name)%").is_err());
    }

    #[test]
    fn the_phases_of_an_exchange_print_as_envoys_durations() {
        let f = AccessLogFormat::text("%REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION% %DURATION%").expect("valid");
        let mut r = record(true, crate::classify::Outcome::Success, 250);
        assert_eq!(f.render(&r), "- - - 250", "a response the sidecar made, a request that never arrived whole");
        r.request_duration = Some(std::time::Duration::from_micros(1_500));
        r.response_duration = Some(std::time::Duration::from_millis(40));
        assert_eq!(f.render(&r), "1 40 210 250");
        let v: serde_json::Value = serde_json::from_str(&AccessLogFormat::Json.render(&r)).expect("json");
        assert_eq!((v["request_duration_ms"].as_f64(), v["response_duration_ms"].as_f64()), (Some(1.5), Some(40.0)));
    }

    #[test]
    fn formats_of_known_fields_keep_no_headers_and_bad_fields_are_refused() {
        assert_eq!(AccessLogFormat::text(DEFAULT_FORMAT).expect("valid").header_names(), None);
        assert_eq!(AccessLogFormat::Json.header_names(), None);
        for bad in ["%REQ()%", "%REQ(A?B?C)%", "%REQ(a b)%", "%RESP(:STATUS)%", "%DURATION:0%", "%DURATION:x%", "%REQ(X):%"] {
            assert!(AccessLogFormat::text(bad).is_err(), "{bad} is refused");
        }
    }

    fn dictionary(toml: &str) -> Result<AccessLogFormat, String> {
        let table: toml::Table = toml::from_str(toml).expect("toml");
        match serde_json::to_value(table).expect("json") {
            Value::Object(keys) => AccessLogFormat::dictionary(&keys, false),
            _ => unreachable!("a table"),
        }
    }

    #[test]
    fn format_dictionaries_keep_the_types_of_lone_fields_as_envoys_json_format_does() {
        let f = dictionary(
            r#"
            status = "%RESPONSE_CODE%"
            duration = "%DURATION%"
            duration_text = "%DURATION%ms"
            upstream = "%UPSTREAM_HOST%"
            response_ms = "%RESPONSE_DURATION%"
            request = { method = "%REQ(:METHOD)%", line = "%REQ(:METHOD)% %REQ(:PATH)%", forwarded = "%REQ(X-FORWARDED-FOR)%" }
            agent = "%REQ(USER-AGENT):4%"
            when = "%START_TIME(%s.%3f)%"
            flags = "%RESPONSE_FLAGS%"
            "#,
        )
        .expect("valid");
        let mut r = record(true, crate::classify::Outcome::Success, 12);
        r.start_unix_nanos = 1_795_269_600_123_000_000;
        r.user_agent = Some("curl/8.0".into());
        let line = f.render(&r);
        let v: Value = serde_json::from_str(&line).expect("one JSON object");
        let expected = json!({
            "status": 200, "duration": 12, "duration_text": "12ms", "upstream": null, "response_ms": null,
            "request": { "method": "GET", "line": "GET /", "forwarded": null },
            "agent": "curl", "when": "1795269600.123", "flags": "-",
        });
        assert_eq!(v, expected, "{line}");
        assert!(!line.contains('\n'));

        let names = f.header_names().expect("the dictionary's header is kept");
        let mut request = HeaderMap::new();
        request.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        r.headers = Some(Box::new(names.capture_request(&request)));
        let v: Value = serde_json::from_str(&f.render(&r)).expect("json");
        assert_eq!(v["request"]["forwarded"], "203.0.113.7");
    }

    #[test]
    fn format_dictionaries_can_leave_out_empty_values_and_refuse_what_is_not_a_format() {
        let source = "a = \"%UPSTREAM_HOST%\"\nb = \"%RESPONSE_CODE%\"\nc = { d = \"%REQ(X-NONE)%\" }\ne = \"\"";
        let table: toml::Table = toml::from_str(source).expect("toml");
        let Value::Object(keys) = serde_json::to_value(table).expect("json") else { unreachable!("a table") };
        let f = AccessLogFormat::dictionary(&keys, true).expect("valid");
        let r = record(true, crate::classify::Outcome::Success, 1);
        assert_eq!(f.render(&r), r#"{"b":200}"#);
        for bad in ["a = 1", "a = \"%NOPE%\"", "a = { b = [\"%DURATION%\"] }", "a = \"%START_TIME(%Q)%\"", "a = \"%START_TIME(%s\""] {
            let err = dictionary(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(dictionary("").is_err(), "an empty dictionary");
        assert!(dictionary("a = { b = true }").expect_err("a bool").contains("a.b"), "the key is named");
    }

    #[test]
    fn start_time_takes_a_strftime_format_in_text_formats_too() {
        let f = AccessLogFormat::text("[%START_TIME(%Y-%m-%dT%H:%M:%S.%6f%z)%] %RESPONSE_CODE% %START_TIME%").expect("valid");
        let mut r = record(true, crate::classify::Outcome::Success, 1);
        r.start_unix_nanos = 1_795_269_600_123_456_000;
        assert_eq!(f.render(&r), "[2026-11-21T14:00:00.123456+0000] 200 2026-11-21T14:00:00.123Z");
    }

    #[test]
    fn istios_default_format_prints_every_field() {
        const ISTIO: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
            %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
            \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
            %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
            \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% \
            %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%";
        let format = AccessLogFormat::text(ISTIO).expect("Istio's default format");
        let mut r = record(true, crate::classify::Outcome::Success, 5);
        r.response_duration = Some(std::time::Duration::from_millis(4));
        r.upstream = Some(([10, 0, 0, 7], 8080).into());
        r.upstream_local = Some(([10, 0, 0, 2], 40_000).into());
        r.local = Some(([10, 0, 0, 2], 15_001).into());
        r.peer = Some(([10, 0, 0, 9], 50_000).into());
        let line = format.render(&r);
        let tail = "\"GET / HTTP/1.1\" 200 - via_upstream - \"-\" 0 0 5 4 \"-\" \"-\" \"-\" \"-\" \"10.0.0.7:8080\" svc \
                    10.0.0.2:40000 10.0.0.2:15001 10.0.0.9:50000 - -";
        assert!(line.starts_with('[') && line.ends_with(tail), "{line}");
        r.events.push(crate::telemetry::SpanEvent {
            offset: std::time::Duration::ZERO,
            name: "upstream_connect_failure",
            message: Some("connection refused".into()),
        });
        assert!(format.render(&r).contains(" \"connection refused\" 0 0 "), "{}", format.render(&r));
    }

    #[test]
    fn every_address_field_of_envoy_prints_whole_or_in_parts_and_flags_in_long_form() {
        let text = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% \
                    %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT% %UPSTREAM_REMOTE_ADDRESS% \
                    %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_REMOTE_PORT% %UPSTREAM_LOCAL_PORT% %RESPONSE_FLAGS_LONG%";
        let format = AccessLogFormat::text(text).expect("Envoy's fields");
        let mut r = record(true, crate::classify::Outcome::Failure, 5);
        r.peer = Some("[2001:db8::9]:50000".parse().expect("addr"));
        r.local = Some(([10, 0, 0, 2], 15_001).into());
        r.upstream = Some(([10, 0, 0, 7], 8080).into());
        r.flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE.union(ResponseFlags::DOWNSTREAM_TERMINATED);
        assert_eq!(
            format.render(&r),
            "2001:db8::9 50000 [2001:db8::9]:50000 10.0.0.2 15001 10.0.0.7:8080 10.0.0.7 8080 - \
             UpstreamConnectionFailure,DownstreamConnectionTermination",
        );
        r.flags = ResponseFlags::empty();
        assert!(format.render(&r).ends_with(" - -"), "no upstream local port, no flag: {}", format.render(&r));
        let json = dictionary("port = \"%UPSTREAM_REMOTE_PORT%\"\nip = \"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\"").expect("valid");
        assert_eq!(json.render(&r), r#"{"ip":"2001:db8::9","port":8080}"#, "a port is a number");
        for bad in ["%UPSTREAM_ADDRESS%", "%DOWNSTREAM_PORT%", "%REMOTE_ADDRESS_WITHOUT_PORT%"] {
            assert!(AccessLogFormat::text(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn stream_ids_are_request_ids_and_unique_ids_are_new_uuids_as_in_envoy() {
        let format = AccessLogFormat::text("%STREAM_ID% %UNIQUE_ID%").expect("Envoy's fields");
        let mut r = record(true, crate::classify::Outcome::Success, 5);
        r.request_id = Some("a3f1c2d4-0000-4000-8000-000000000001".into());
        let (first, second) = (format.render(&r), format.render(&r));
        let (stream, unique) = first.split_once(' ').expect("two fields");
        assert_eq!(stream, "a3f1c2d4-0000-4000-8000-000000000001");
        assert!(unique.len() == 36 && unique.as_bytes()[14] == b'4', "a UUID v4: {unique}");
        assert_ne!(second.split_once(' ').map(|(_, u)| u), Some(unique), "a new one each line");
    }

    #[test]
    fn connection_ids_upstream_protocols_hostnames_and_environment_variables_print_as_in_envoy() {
        let text = "%CONNECTION_ID% %PROTOCOL% %UPSTREAM_PROTOCOL% %HOSTNAME% %ENVIRONMENT(PATH):1% %ENVIRONMENT(MESHLENS_UNSET_VARIABLE)%";
        let format = AccessLogFormat::text(&format!("{text} %UPSTREAM_CONNECTION_ID%")).expect("Envoy's fields");
        let host = hostname().expect("a hostname");
        let mut r = record(true, crate::classify::Outcome::Success, 5);
        r.version = http::Version::HTTP_10;
        assert_eq!(format.render(&r), format!("- HTTP/1.0 - {host} / - -"), "no connection, no upstream");
        (r.connection_id, r.upstream_connection_id) = (Some(42), Some(43));
        r.upstream = Some(([10, 0, 0, 7], 8080).into());
        assert_eq!(format.render(&r), format!("42 HTTP/1.0 HTTP/1.1 {host} / - 43"), "HTTP/1.0 goes on in HTTP/1.1");
        r.version = http::Version::HTTP_2;
        assert_eq!(format.render(&r), format!("42 HTTP/2 HTTP/2 {host} / - 43"));
        let omitting = AccessLogFormat::text("[%ENVIRONMENT(MESHLENS_UNSET_VARIABLE)%]").expect("valid").omitting_empty_values();
        assert_eq!(omitting.render(&r), "[]");
        let keys = "id = \"%CONNECTION_ID%\"\nhost = \"%HOSTNAME%\"\nunset = \"%ENVIRONMENT(MESHLENS_UNSET_VARIABLE)%\"";
        let json = dictionary(keys).expect("valid");
        assert_eq!(json.render(&r), format!(r#"{{"host":"{host}","id":42,"unset":null}}"#), "an ID is a number, an unset variable null");
        let json = dictionary("upstream = \"%UPSTREAM_PROTOCOL%\"").expect("valid");
        assert_eq!(json.render(&r), r#"{"upstream":"HTTP/2"}"#);
        r.upstream = None;
        assert_eq!(json.render(&r), r#"{"upstream":null}"#, "no upstream");
        for bad in ["%ENVIRONMENT()%", "%ENVIRONMENT(A=B)%", "%ENVIRONMENT(PATH):0%", "%HOSTNAMES%"] {
            assert!(AccessLogFormat::text(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn response_code_details_attempts_and_routes_print_as_in_envoy() {
        let f = AccessLogFormat::text("%RESPONSE_CODE_DETAILS%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%ROUTE_NAME%").expect("valid");
        let mut r = record(true, crate::classify::Outcome::Success, 5);
        assert_eq!(f.render(&r), "-|0|-", "nothing answered, nothing sent upstream");
        r.response_duration = Some(std::time::Duration::from_millis(3));
        r.upstream = Some(([127, 0, 0, 1], 9).into());
        r.retries = 2;
        r.route = Some("/items/{id}".into());
        assert_eq!(f.render(&r), "via_upstream|3|/items/{id}");
        r.flags = ResponseFlags::UPSTREAM_RESET;
        assert_eq!(f.render(&r), "upstream_reset_after_response_started{connection_termination}|3|/items/{id}");
        r.response_duration = None;
        assert!(f.render(&r).starts_with("upstream_reset_before_response_started{connection_termination}|"));
        r.flags = ResponseFlags::UPSTREAM_PROTOCOL_ERROR;
        assert!(f.render(&r).starts_with("upstream_reset_before_response_started{protocol_error}|"));
        r.response_duration = Some(std::time::Duration::from_millis(3));
        assert!(f.render(&r).starts_with("upstream_reset_after_response_started{protocol_error}|"), "a bad chunk after the head");
        r.response_duration = None;
        for (flag, detail) in [
            (ResponseFlags::NO_ROUTE, "route_not_found"),
            (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
            (ResponseFlags::UPSTREAM_CONNECT_FAILURE, "upstream_reset_before_response_started{connection_failure}"),
            (ResponseFlags::UPSTREAM_TIMEOUT, "upstream_response_timeout"),
            (ResponseFlags::BAD_REQUEST, "invalid_request"),
            (ResponseFlags::DOWNSTREAM_TERMINATED, "downstream_remote_disconnect"),
            (ResponseFlags::STREAM_IDLE_TIMEOUT, "stream_idle_timeout"),
        ] {
            r.flags = flag;
            assert_eq!(response_code_details(&r), detail, "{flag}");
        }
        let typed = dictionary("attempts = \"%UPSTREAM_REQUEST_ATTEMPT_COUNT%\"\nroute = \"%ROUTE_NAME%\"").expect("valid");
        r.route = None;
        assert_eq!(typed.render(&r), r#"{"attempts":3,"route":null}"#);
    }

    #[test]
    fn the_path_carries_its_query_unless_asked_without_as_in_envoy() {
        let format = "%REQ(:PATH)% %REQ_WITHOUT_QUERY(:PATH)% %PATH% %REQ_WITHOUT_QUERY(X-ORIGINAL-URL)% %REQ(X-ORIGINAL-URL)%";
        let f = AccessLogFormat::text(format).expect("valid");
        let mut request = HeaderMap::new();
        request.insert("x-original-url", HeaderValue::from_static("/a/b?token=1"));
        let mut r = record(true, crate::classify::Outcome::Success, 5);
        r.path = "/items".into();
        r.query = Some("page=2&api_key=REDACTED".into());
        r.headers = Some(Box::new(f.header_names().expect("one header").capture_request(&request)));
        assert_eq!(f.render(&r), "/items?page=2&api_key=REDACTED /items /items /a/b /a/b?token=1");
        r.query = None;
        assert!(f.render(&r).starts_with("/items /items /items "));
        assert!(AccessLogFormat::text("%REQ_WITHOUT_QUERY()%").is_err());
    }

    #[test]
    fn a_filter_admits_the_requests_meeting_any_of_its_conditions() {
        let ok = record(true, crate::classify::Outcome::Success, 20);
        let failed = record(true, crate::classify::Outcome::Failure, 20);
        assert!(LogFilter::default().admits(&ok), "no filter: every request");
        let failures = LogFilter { failures: true, ..LogFilter::default() };
        assert!(failures.admits(&failed) && !failures.admits(&ok));
        let status = LogFilter { status_at_least: Some(400), ..LogFilter::default() };
        let mut not_found = ok.clone();
        not_found.status = 404;
        assert!(status.admits(&not_found) && status.admits(&failed) && !status.admits(&ok));
        let slow = LogFilter { duration_at_least: Some(std::time::Duration::from_millis(20)), ..LogFilter::default() };
        let mut quick = ok.clone();
        quick.duration = std::time::Duration::from_millis(19);
        assert!(slow.admits(&ok) && !slow.admits(&quick));
        let mut flagged = quick.clone();
        flagged.flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE | ResponseFlags::DOWNSTREAM_TERMINATED;
        let any_flag = LogFilter { response_flags: Some(ResponseFlags::empty()), ..LogFilter::default() };
        let timeouts = LogFilter { response_flags: Some(ResponseFlags::UPSTREAM_TIMEOUT), ..LogFilter::default() };
        let connect = LogFilter { response_flags: Some(ResponseFlags::UPSTREAM_CONNECT_FAILURE), ..LogFilter::default() };
        assert!(any_flag.admits(&flagged) && !any_flag.admits(&quick));
        assert!(connect.admits(&flagged) && !timeouts.admits(&flagged));
        let either = LogFilter { failures: true, ..slow };
        assert!(either.admits(&ok) && either.admits(&failed) && !either.admits(&quick), "conditions are joined by or");
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
