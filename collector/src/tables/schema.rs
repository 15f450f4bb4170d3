//! The Arrow schemas of the SQL tables, defined once. Each column carries its own
//! documentation; `docs/sql.md` and `GET /api/v1/sql/tables` are generated from this list.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// How a column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    Text,
    /// Repeating UTF-8 text, dictionary-encoded (32-bit keys) per batch.
    Dict,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit unsigned integer.
    UInt64,
    /// 64-bit float.
    Float64,
    /// Timestamp, nanoseconds, UTC.
    Timestamp,
}

impl ColumnType {
    /// The Arrow type.
    pub fn data_type(self) -> DataType {
        match self {
            Self::Text => DataType::Utf8,
            Self::Dict => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            Self::Int64 => DataType::Int64,
            Self::UInt64 => DataType::UInt64,
            Self::Float64 => DataType::Float64,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        }
    }

    /// The SQL-facing type name shown to users.
    pub fn sql_name(self) -> &'static str {
        match self {
            Self::Text | Self::Dict => "text",
            Self::Int64 => "bigint",
            Self::UInt64 => "bigint unsigned",
            Self::Float64 => "double",
            Self::Timestamp => "timestamp (UTC, ns)",
        }
    }
}

/// How a column of a sealed batch is kept in memory (queries always see [`ColumnType`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// As its Arrow type.
    Plain,
    /// Hex IDs kept as their bytes.
    HexBytes,
    /// Large text kept compressed in blocks.
    Compressed,
    /// Dictionary-encoded text with 8- or 16-bit keys when its dictionary fits (a sealed
    /// batch rarely has more than a few hundred distinct values in a column).
    SmallKeys,
    /// 64-bit integers kept as 16- or 32-bit ones when all of a sealed batch's fit.
    SmallInts,
}

impl Storage {
    /// Whether a query can share the stored column, or has to rebuild it only cheaply
    /// (no decompression).
    pub fn is_cheap(self) -> bool {
        matches!(self, Self::Plain | Self::SmallKeys | Self::SmallInts)
    }
}

/// One documented column.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Name.
    pub name: &'static str,
    /// SQL type.
    pub ty: ColumnType,
    /// May be null.
    pub nullable: bool,
    /// What it holds.
    pub doc: &'static str,
    /// How sealed batches keep it.
    pub storage: Storage,
}

const fn col(name: &'static str, ty: ColumnType, nullable: bool, doc: &'static str) -> Column {
    let storage = match ty {
        Dict => Storage::SmallKeys,
        Int64 => Storage::SmallInts,
        _ => Storage::Plain,
    };
    Column { name, ty, nullable, doc, storage }
}

/// A hex ID column, kept as bytes in sealed batches.
const fn id(name: &'static str, nullable: bool, doc: &'static str) -> Column {
    Column { name, ty: Text, nullable, doc, storage: Storage::HexBytes }
}

/// A large text column (JSON), kept compressed in sealed batches.
const fn packed(name: &'static str, nullable: bool, doc: &'static str) -> Column {
    Column { name, ty: Text, nullable, doc, storage: Storage::Compressed }
}

use ColumnType::{Dict, Float64, Int64, Text, Timestamp, UInt64};

/// `spans`: one row per span, from sidecars and SDKs.
pub const SPANS: &[Column] = &[
    id("trace_id", false, "Trace ID, 32 lower-case hex digits."),
    id("span_id", false, "Span ID, 16 hex digits."),
    id("parent_span_id", true, "Parent span ID; null for a root span."),
    col("service", Dict, false, "Producing service (`service.name`)."),
    col("operation", Dict, false, "Span name."),
    col("kind", Dict, false, "server, client, internal, producer, consumer or unspecified."),
    col("start_time", Timestamp, false, "Span start."),
    col("duration_ns", Int64, false, "Duration in nanoseconds."),
    col("status", Dict, false, "unset, ok or error."),
    packed("status_message", true, "Status message, when set."),
    col("http_method", Dict, true, "`http.request.method`."),
    col("http_route", Dict, true, "`http.route` (a template, never a raw path)."),
    col("http_status_code", Int64, true, "`http.response.status_code`."),
    col("peer_service", Dict, true, "`peer.service`, else the destination service, else `server.address` of a client span."),
    col("source_workload", Dict, true, "`meshlens.source.workload` (sidecar spans)."),
    col("source_version", Dict, true, "`meshlens.source.version`."),
    col("source_namespace", Dict, true, "`meshlens.source.namespace`."),
    col("destination_service", Dict, true, "`meshlens.destination.service`."),
    col("destination_workload", Dict, true, "`meshlens.destination.workload`."),
    col("destination_version", Dict, true, "`meshlens.destination.version`."),
    col("destination_namespace", Dict, true, "`meshlens.destination.namespace`."),
    col("response_flags", Dict, true, "`meshlens.response_flags` (Envoy-style: UF, UT, NR, …)."),
    packed("attributes", false, "Every other span attribute (incl. `peer.service`), as a JSON object, keys sorted."),
    col("resource", Dict, false, "Resource attributes, as a JSON object."),
    packed("events", true, "Span events as a JSON array of {time_unix_nano, name, attributes}; null when none."),
    packed(
        "links",
        true,
        "Links to other spans as a JSON array of {trace_id, span_id}, with trace_state, flags and attributes when the link has them; \
         null when none.",
    ),
    col("scope", Dict, false, "Instrumentation scope name (empty when not given)."),
    packed("trace_state", true, "The W3C `tracestate` of the span's context; null when it has none."),
    col(
        "flags",
        Int64,
        true,
        "OTLP span flags: the W3C trace flags in bits 0–7 (1: sampled), whether the parent's remoteness is known (256) and \
         whether it is remote (512); null when 0 (unset).",
    ),
];

/// `logs`: one row per log record (sidecar access logs and application logs).
pub const LOGS: &[Column] = &[
    col("time", Timestamp, false, "When the record was emitted (or observed)."),
    col("service", Dict, false, "Producing service (`service.name`)."),
    col("severity_number", Int64, false, "OTLP severity number (0 when unset)."),
    col("severity", Dict, true, "Severity text."),
    packed("body", true, "The body, as text."),
    id("trace_id", true, "Related trace ID, hex."),
    id("span_id", true, "Related span ID, hex."),
    col("event_name", Dict, true, "`event.name`; `meshlens.access_log` for sidecar access logs."),
    packed("attributes", false, "All record attributes, as a JSON object."),
    col("resource", Dict, false, "Resource attributes, as a JSON object."),
];

/// `edges`: per-second rollups of the requests on each edge.
pub const EDGES: &[Column] = &[
    col("time", Timestamp, false, "Start of the one-second bucket."),
    col("source_kind", Dict, false, "service, unknown (a caller that sent no telemetry) or external."),
    col("source_namespace", Dict, false, "Caller's namespace (empty when unknown)."),
    col("source_service", Dict, false, "Caller's service (`unknown` for unknown callers)."),
    col("source_workload", Dict, true, "Caller's workload."),
    col("source_version", Dict, true, "Caller's version."),
    col("destination_kind", Dict, false, "service, unknown or external (a host outside the mesh)."),
    col("destination_namespace", Dict, false, "Callee's namespace."),
    col("destination_service", Dict, false, "Callee's service (or external host)."),
    col("destination_workload", Dict, true, "Callee's workload."),
    col("destination_version", Dict, true, "Callee's version."),
    col("protocol", Dict, false, "http, grpc, …"),
    col("requests", UInt64, false, "Requests started in the bucket."),
    col("errors", UInt64, false, "Failed requests (5xx, gRPC failures, resets, timeouts)."),
    col("request_bytes", UInt64, false, "Request body bytes."),
    col("response_bytes", UInt64, false, "Response body bytes."),
    col("retries", UInt64, false, "Retries the callers' sidecars made for these requests (`meshlens.retry.count`)."),
    col("request_messages", UInt64, false, "gRPC messages the callers sent, as their sidecars counted them (0 for HTTP)."),
    col("response_messages", UInt64, false, "gRPC messages the callers received."),
    col("p50_ms", Float64, false, "Median latency, milliseconds (sketch, within 1%)."),
    col("p90_ms", Float64, false, "90th percentile latency, milliseconds."),
    col("p99_ms", Float64, false, "99th percentile latency, milliseconds."),
    col("p999_ms", Float64, false, "99.9th percentile latency, milliseconds."),
    col("response_codes", Text, false, "Requests by response code, as a JSON object."),
];

/// `services`: one row per known service.
pub const SERVICES: &[Column] = &[
    col("service", Text, false, "Service name."),
    col("namespace", Text, false, "Namespace (empty when unknown)."),
    col("kind", Text, false, "service, unknown or external."),
    col("workloads", Text, false, "Its workloads, comma-separated."),
    col("versions", Text, false, "Its versions, comma-separated."),
    col("operations", Int64, false, "Distinct operations (span names) it reported."),
    col("inbound_requests", UInt64, false, "Requests it received over the rollup retention."),
    col("inbound_errors", UInt64, false, "Of those, failed requests."),
    col("outbound_requests", UInt64, false, "Requests it sent over the rollup retention."),
    col("first_seen", Timestamp, true, "Earliest rollup bucket with its traffic."),
    col("last_seen", Timestamp, true, "Latest rollup bucket with its traffic."),
];

/// Every table: (name, one-line description, columns).
pub const TABLES: &[(&str, &str, &[Column])] = &[
    ("spans", "One row per span.", SPANS),
    ("logs", "One row per log record (access logs and application logs).", LOGS),
    ("edges", "Per-second request rollups per edge (source workload → destination workload, protocol).", EDGES),
    ("services", "One row per service seen in spans or edges.", SERVICES),
];

/// The Arrow schema of a column list.
pub fn schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(|c| Field::new(c.name, c.ty.data_type(), c.nullable)).collect::<Vec<_>>(),
    ))
}

/// The tables as Markdown, for `docs/sql.md`.
pub fn markdown() -> String {
    let mut out = String::new();
    for (name, about, columns) in TABLES {
        out.push_str(&format!("### `{name}`\n\n{about}\n\n| column | type | null | meaning |\n|---|---|---|---|\n"));
        for c in *columns {
            let null = if c.nullable { "yes" } else { "" };
            out.push_str(&format!("| `{}` | {} | {} | {} |\n", c.name, c.ty.sql_name(), null, c.doc));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_unique_per_table() {
        for (name, _, columns) in TABLES {
            let mut names: Vec<_> = columns.iter().map(|c| c.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), columns.len(), "duplicate column in {name}");
        }
    }

    #[test]
    fn docs_match_the_schemas() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sql.md")).expect("docs/sql.md");
        assert!(
            docs.contains(&markdown()),
            "docs/sql.md is out of date; regenerate its table section with `meshlens sql --schema-markdown`"
        );
    }
}
