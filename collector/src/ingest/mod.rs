//! The OTLP edge: receivers for gRPC ([`grpc`], port 4317) and HTTP ([`http`], port 4318,
//! protobuf and JSON), and the conversion into the collector's own types ([`convert`]).
//!
//! Each signal (traces, metrics, logs) is a [`Signal`]: how its export request is
//! converted, fed to the [`Pipeline`], and answered — with OTLP's partial success when
//! some items were invalid. Both receivers are thin adapters over that one path.

pub mod convert;
pub mod grpc;
pub mod http;

use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse},
    metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse},
};

use crate::pipeline::{Pipeline, Transport};

/// One OTLP signal: its messages and how an export request is accepted.
pub trait Signal {
    /// `spans`, `log_records` or `metric_points` (the metrics' `signal` label).
    const NAME: &'static str;
    /// The export request.
    type Request: prost::Message + Default + serde::de::DeserializeOwned + Send + 'static;
    /// The export response.
    type Response: prost::Message + serde::Serialize + Send + 'static;
    /// Converts, ingests and answers one export request.
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport) -> Self::Response;
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
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport) -> Self::Response {
        let converted = convert::spans(request);
        let partial_success = (converted.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: converted.rejected as i64,
            error_message: converted.message(),
        });
        pipeline.ingest_spans(converted, transport);
        ExportTraceServiceResponse { partial_success }
    }
}

impl Signal for Logs {
    const NAME: &'static str = "log_records";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport) -> Self::Response {
        let converted = convert::logs(request);
        let partial_success = (converted.rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: converted.rejected as i64,
            error_message: converted.message(),
        });
        pipeline.ingest_logs(converted, transport);
        ExportLogsServiceResponse { partial_success }
    }
}

impl Signal for Metrics {
    const NAME: &'static str = "metric_points";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    fn accept(pipeline: &Pipeline, request: &Self::Request, transport: Transport) -> Self::Response {
        let converted = convert::metrics(request);
        let partial_success = (converted.rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: converted.rejected as i64,
            error_message: converted.message(),
        });
        pipeline.ingest_metrics(converted, transport);
        ExportMetricsServiceResponse { partial_success }
    }
}
