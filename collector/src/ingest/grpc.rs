//! OTLP/gRPC receiver: the trace, metrics and logs services on one tonic server.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_server::{LogsService, LogsServiceServer}},
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::{TraceService, TraceServiceServer}},
};
use tonic::{Request, Response, Status, codec::CompressionEncoding::Gzip};

use crate::pipeline::Transport;

use super::{Ingest, Logs, Metrics, Signal, Traces};

/// Largest export request accepted, bytes.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// The three OTLP services over one ingest path.
#[derive(Debug, Clone)]
pub struct OtlpGrpc {
    ingest: Arc<Ingest>,
}

impl OtlpGrpc {
    /// Services feeding `ingest`.
    pub fn new(ingest: Ingest) -> Self {
        Self { ingest: Arc::new(ingest) }
    }

    /// Serves the three services on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).accept_compressed(Gzip),
            )
            .add_service(
                MetricsServiceServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).accept_compressed(Gzip),
            )
            .add_service(LogsServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES).accept_compressed(Gzip))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    async fn accept<S: Signal>(&self, request: Request<S::Request>) -> Result<Response<S::Response>, Status> {
        match self.ingest.export::<S>(request.get_ref(), None, Transport::Grpc).await {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(&self, r: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.accept::<Traces>(r).await
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(&self, r: Request<ExportLogsServiceRequest>) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.accept::<Logs>(r).await
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(&self, r: Request<ExportMetricsServiceRequest>) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.accept::<Metrics>(r).await
    }
}
