//! The OTLP edge: receivers for gRPC ([`grpc`], port 4317) and HTTP ([`http`], port 4318,
//! protobuf and JSON), and the conversion into the collector's own types ([`convert`]).
//!
//! Each signal (traces, metrics, logs) is a [`Signal`]: how its export request is
//! converted, fed to the [`Pipeline`], and answered — with OTLP's partial success when
//! some items were invalid. Both receivers are thin adapters over that one path.

pub mod admission;
pub mod convert;
pub mod grpc;
pub mod http;
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

/// One OTLP signal: its messages and how an export request is accepted.
pub trait Signal {
    /// `spans`, `log_records` or `metric_points` (the metrics' `signal` label).
    const NAME: &'static str;
    /// How its requests are tagged in the journal.
    const KIND: RecordKind;
    /// The export request.
    type Request: prost::Message + Default + serde::de::DeserializeOwned + Send + 'static;
    /// The export response.
    type Response: prost::Message + serde::Serialize + Send + 'static;
    /// Converts, ingests and answers one export request.
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport, record: Record) -> Self::Response;
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

/// A signal whose export requests are also converted straight from their bytes ([`wire`]),
/// as the OTLP/gRPC receiver does.
pub trait WireSignal: Signal {
    /// The gRPC service, e.g. `opentelemetry.proto.collector.trace.v1.TraceService`.
    const SERVICE: &'static str;
    /// What one request converts into.
    type Item: Send;
    /// Converts a decoded request.
    fn convert(request: &Self::Request) -> convert::Converted<Self::Item>;
    /// Converts an encoded request.
    fn convert_encoded(encoded: &[u8]) -> Result<convert::Converted<Self::Item>, wire::DecodeError>;
    /// Ingests converted items and answers with what was rejected.
    fn ingest(pipeline: &Pipeline, converted: convert::Converted<Self::Item>, transport: Transport, record: Record) -> Self::Response;
}

impl Signal for Traces {
    const NAME: &'static str = "spans";
    const KIND: RecordKind = RecordKind::Traces;
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport, record: Record) -> Self::Response {
        Self::ingest(pipeline, Self::convert(request), transport, record)
    }
}

impl WireSignal for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
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
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport, record: Record) -> Self::Response {
        Self::ingest(pipeline, Self::convert(request), transport, record)
    }
}

impl WireSignal for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
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
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport, record: Record) -> Self::Response {
        let converted = convert::metrics(request);
        let partial_success = (converted.rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: converted.rejected as i64,
            error_message: converted.message(),
        });
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

    /// The pipeline fed, shared.
    pub fn pipeline_arc(&self) -> Arc<Pipeline> {
        self.pipeline.clone()
    }

    /// Journals and accepts one export request; `encoded` is its protobuf form, if at hand.
    pub async fn export<S: Signal>(
        &self,
        request: &S::Request,
        encoded: Option<Vec<u8>>,
        transport: Transport,
    ) -> Result<S::Response, Unavailable> {
        let record = match &self.journal {
            Some(journal) => {
                let bytes = encoded.unwrap_or_else(|| request.encode_to_vec());
                Record::Journaled(journal.append(S::KIND, bytes).await.map_err(|e| Unavailable(e.to_string()))?)
            }
            None => Record::Unjournaled,
        };
        Ok(S::accept(&self.pipeline, request, transport, record))
    }

    /// Converts ([`wire`]), journals and accepts one encoded export request. Bytes that are
    /// not a valid request are refused before anything is journaled.
    pub async fn export_encoded<S: WireSignal>(
        &self,
        encoded: &[u8],
        transport: Transport,
    ) -> Result<Result<S::Response, wire::DecodeError>, Unavailable> {
        let converted = match S::convert_encoded(encoded) {
            Ok(converted) => converted,
            Err(error) => return Ok(Err(error)),
        };
        let record = match &self.journal {
            Some(journal) => Record::Journaled(
                journal.append(S::KIND, encoded.to_vec()).await.map_err(|e| Unavailable(e.to_string()))?,
            ),
            None => Record::Unjournaled,
        };
        Ok(Ok(S::ingest(&self.pipeline, converted, transport, record)))
    }
}

/// Replays one journal record into `pipeline` (`record` says whether its rows are already
/// in a loaded segment).
pub fn replay(pipeline: &Pipeline, kind: RecordKind, record: Record, payload: &[u8]) {
    fn apply<S: Signal>(pipeline: &Pipeline, record: Record, payload: &[u8]) {
        match S::Request::decode(payload) {
            Ok(request) => {
                S::accept(pipeline, &request, Transport::Journal, record);
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
