//! The OTLP edge: receivers for gRPC ([`grpc`], port 4317) and HTTP ([`http`], port 4318,
//! protobuf and JSON), and the conversion into the collector's own types ([`convert`]).
//!
//! Each signal (traces, metrics, logs) is a [`Signal`]: how its export request is
//! converted, fed to the [`Pipeline`], and answered — with OTLP's partial success when
//! some items were invalid. Both receivers are thin adapters over that one path. Protobuf
//! requests (gRPC, HTTP, the journal) are converted from their bytes ([`wire`] for traces
//! and logs, the bulk of what arrives; prost for metrics), JSON ones after decoding. A
//! sidecar's spans and access logs get their own end of the hop back from their resource
//! as each is converted (`own_side`), while its attributes are still in cache.

pub mod admission;
pub mod convert;
pub mod grpc;
pub mod http;
mod key_order;
mod own_side;
pub mod wire;

use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse},
    metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse},
};

use std::sync::Arc;

use prost::Message;

use crate::{
    journal::{Journal, RecordKind},
    pipeline::{Pipeline, Record, Transport},
};

/// One OTLP signal: its messages, how a request is converted, and how the converted items
/// are fed to the pipeline and answered.
pub trait Signal {
    /// `spans`, `log_records` or `metric_points` (the metrics' `signal` label).
    const NAME: &'static str;
    /// How its requests are tagged in the journal.
    const KIND: RecordKind;
    /// The gRPC service, e.g. `opentelemetry.proto.collector.trace.v1.TraceService`.
    const SERVICE: &'static str;
    /// The export request.
    type Request: prost::Message + Default + serde::de::DeserializeOwned + Send + 'static;
    /// The export response.
    type Response: prost::Message + serde::Serialize + Send + 'static;
    /// What one request converts into.
    type Item: Send;
    /// Converts a decoded request (OTLP/JSON).
    fn convert(request: &Self::Request) -> convert::Converted<Self::Item>;
    /// Converts an encoded request (OTLP/gRPC, OTLP/HTTP protobuf, the journal). By
    /// default it is decoded first; traces and logs are read straight from the bytes.
    fn convert_encoded(encoded: &[u8]) -> Result<convert::Converted<Self::Item>, wire::DecodeError> {
        Self::Request::decode(encoded).map(|request| Self::convert(&request)).map_err(wire::DecodeError::from)
    }
    /// Ingests converted items and answers with what was rejected.
    fn ingest(pipeline: &Pipeline, converted: convert::Converted<Self::Item>, transport: Transport, record: Record) -> Self::Response;
}

/// Traces.
#[derive(Debug)]
pub struct Traces;
/// Logs.
#[derive(Debug)]
pub struct Logs;
/// Metrics.
#[derive(Debug)]
pub struct Metrics;

impl Signal for Traces {
    const NAME: &'static str = "spans";
    const KIND: RecordKind = RecordKind::Traces;
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    type Item = crate::model::Span;
    fn convert(request: &Self::Request) -> convert::Converted<Self::Item> {
        convert::spans(request)
    }
    fn convert_encoded(encoded: &[u8]) -> Result<convert::Converted<Self::Item>, wire::DecodeError> {
        wire::spans(encoded)
    }
    fn ingest(pipeline: &Pipeline, converted: convert::Converted<Self::Item>, transport: Transport, record: Record) -> Self::Response {
        let partial_success = (converted.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: converted.rejected as i64,
            error_message: converted.message(),
        });
        pipeline.ingest_spans(converted, transport, record);
        ExportTraceServiceResponse { partial_success }
    }
}

impl Signal for Logs {
    const NAME: &'static str = "log_records";
    const KIND: RecordKind = RecordKind::Logs;
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    type Item = crate::model::LogRecord;
    fn convert(request: &Self::Request) -> convert::Converted<Self::Item> {
        convert::logs(request)
    }
    fn convert_encoded(encoded: &[u8]) -> Result<convert::Converted<Self::Item>, wire::DecodeError> {
        wire::logs(encoded)
    }
    fn ingest(pipeline: &Pipeline, converted: convert::Converted<Self::Item>, transport: Transport, record: Record) -> Self::Response {
        let partial_success = (converted.rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: converted.rejected as i64,
            error_message: converted.message(),
        });
        pipeline.ingest_logs(converted, transport, record);
        ExportLogsServiceResponse { partial_success }
    }
}

impl Signal for Metrics {
    const NAME: &'static str = "metric_points";
    const KIND: RecordKind = RecordKind::Metrics;
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    type Item = crate::model::MetricPoint;
    fn convert(request: &Self::Request) -> convert::Converted<Self::Item> {
        convert::metrics(request)
    }
    fn ingest(pipeline: &Pipeline, converted: convert::Converted<Self::Item>, transport: Transport, record: Record) -> Self::Response {
        let partial_success = (converted.rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: converted.rejected as i64,
            error_message: converted.message(),
        });
        // Metric points live in the pipeline's aggregates, not in journaled tables.
        let _ = record;
        pipeline.ingest_metrics(converted, transport);
        ExportMetricsServiceResponse { partial_success }
    }
}

/// The request could not be accepted now; the sender should retry later.
#[derive(Debug, thiserror::Error)]
#[error("telemetry cannot be stored durably right now: {0}")]
pub struct Unavailable(String);

/// What both receivers call: journal the request (when a data directory is set), then
/// accept it. The sender is answered only after both.
#[derive(Debug, Clone)]
pub struct Ingest {
    pipeline: Arc<Pipeline>,
    journal: Option<Journal>,
}

impl Ingest {
    /// Ingest into `pipeline`, journaling to `journal` if given.
    pub fn new(pipeline: Arc<Pipeline>, journal: Option<Journal>) -> Self {
        Self { pipeline, journal }
    }

    /// The pipeline fed.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Journals and accepts one decoded export request (OTLP/JSON).
    pub async fn export<S: Signal>(&self, request: &S::Request, transport: Transport) -> Result<S::Response, Unavailable> {
        let record = self.journal::<S>(|| request.encode_to_vec()).await?;
        Ok(S::ingest(&self.pipeline, S::convert(request), transport, record))
    }

    /// Converts, journals and accepts one encoded export request. Bytes that are not a
    /// valid request are refused before anything is journaled.
    pub async fn export_encoded<S: Signal>(
        &self,
        encoded: &[u8],
        transport: Transport,
    ) -> Result<Result<S::Response, wire::DecodeError>, Unavailable> {
        let converted = match S::convert_encoded(encoded) {
            Ok(converted) => converted,
            Err(error) => return Ok(Err(error)),
        };
        let record = self.journal::<S>(|| encoded.to_vec()).await?;
        Ok(Ok(S::ingest(&self.pipeline, converted, transport, record)))
    }

    /// Appends a request's protobuf form to the journal, when there is one.
    async fn journal<S: Signal>(&self, encoded: impl FnOnce() -> Vec<u8>) -> Result<Record, Unavailable> {
        match &self.journal {
            Some(journal) => {
                Ok(Record::Journaled(journal.append(S::KIND, encoded()).await.map_err(|e| Unavailable(e.to_string()))?))
            }
            None => Ok(Record::Unjournaled),
        }
    }
}

/// Replays one journal record into `pipeline` (`record` says whether its rows are already
/// in a loaded segment).
pub fn replay(pipeline: &Pipeline, kind: RecordKind, record: Record, payload: &[u8]) {
    fn apply<S: Signal>(pipeline: &Pipeline, record: Record, payload: &[u8]) {
        match S::convert_encoded(payload) {
            Ok(converted) => {
                S::ingest(pipeline, converted, Transport::Journal, record);
            }
            Err(error) => tracing::warn!(%error, signal = S::NAME, "skipping an undecodable journal record"),
        }
    }
    match kind {
        RecordKind::Traces => apply::<Traces>(pipeline, record, payload),
        RecordKind::Metrics => apply::<Metrics>(pipeline, record, payload),
        RecordKind::Logs => apply::<Logs>(pipeline, record, payload),
    }
}
