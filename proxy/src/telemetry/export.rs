//! Background export of spans, access logs and metrics to the collector over OTLP/gRPC.
//!
//! Spans and logs are drained from their bounded queues in batches (up to `max_batch`
//! records, or whatever arrived within `flush_interval`); metrics are exported every
//! `metrics_interval`. A failed export drops its batch and counts it; the next batch tries
//! again on the same lazily reconnecting channel, so export resumes by itself when the
//! collector comes back. On shutdown the queues are drained and flushed once more.

use std::{future::Future, sync::Arc, time::{Duration, SystemTime}};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::logs_service_client::LogsServiceClient,
        metrics::v1::metrics_service_client::MetricsServiceClient,
        trace::v1::trace_service_client::TraceServiceClient,
    },
    resource::v1::Resource,
};
use tokio::{sync::{mpsc, watch}, task::JoinHandle, time::Instant};
use tonic::transport::{Channel, Endpoint};

use crate::{config::TelemetryConfig, error::StartError, identity::WorkloadIdentity};

use super::{RequestMetrics, RequestRecord, TelemetryStats, metrics::unix_nanos, otlp};

/// An OTLP client that exports batches of records as one signal.
trait RecordSink: Clone + Send + 'static {
    /// `spans` or `logs`.
    const SIGNAL: &'static str;
    /// Exports a batch; returns how many records the collector rejected.
    fn export(
        &mut self,
        resource: &Resource,
        batch: &[Arc<RequestRecord>],
    ) -> impl Future<Output = Result<u64, tonic::Status>> + Send;
}

impl RecordSink for TraceServiceClient<Channel> {
    const SIGNAL: &'static str = "spans";
    async fn export(&mut self, resource: &Resource, batch: &[Arc<RequestRecord>]) -> Result<u64, tonic::Status> {
        let response = TraceServiceClient::export(self, otlp::trace_request(resource, batch)).await?;
        Ok(response.get_ref().partial_success.as_ref().map_or(0, |p| p.rejected_spans.max(0) as u64))
    }
}

impl RecordSink for LogsServiceClient<Channel> {
    const SIGNAL: &'static str = "logs";
    async fn export(&mut self, resource: &Resource, batch: &[Arc<RequestRecord>]) -> Result<u64, tonic::Status> {
        let response = LogsServiceClient::export(self, otlp::logs_request(resource, batch)).await?;
        Ok(response.get_ref().partial_success.as_ref().map_or(0, |p| p.rejected_log_records.max(0) as u64))
    }
}

/// Running export tasks.
#[derive(Debug)]
pub struct ExportHandle {
    shutdown: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ExportHandle {
    /// A handle with nothing to stop (export turned off).
    pub fn disabled() -> Self {
        Self { shutdown: None, tasks: Vec::new() }
    }

    /// Flushes what is queued and stops, waiting at most `limit`.
    pub async fn shutdown(mut self, limit: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        let all = futures_join(std::mem::take(&mut self.tasks));
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("telemetry flush did not finish in {limit:?}; remaining records dropped");
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// Starts the three export tasks on a shared lazily connecting channel.
pub(super) fn spawn(
    endpoint: &str,
    config: &TelemetryConfig,
    identity: Arc<WorkloadIdentity>,
    span_rx: mpsc::Receiver<Arc<RequestRecord>>,
    log_rx: mpsc::Receiver<Arc<RequestRecord>>,
    metrics: RequestMetrics,
    stats: TelemetryStats,
) -> Result<ExportHandle, StartError> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| StartError::OtlpEndpoint { endpoint: endpoint.to_owned(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(1))
        .timeout(config.export_timeout)
        .connect_lazy();
    let resource = Arc::new(otlp::resource(&identity));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let batching = Batching { max_batch: config.max_batch, flush_interval: config.flush_interval };

    let spans = batching.spawn(
        TraceServiceClient::new(channel.clone()),
        span_rx,
        resource.clone(),
        stats.clone(),
        shutdown_rx.clone(),
    );
    let logs = batching.spawn(
        LogsServiceClient::new(channel.clone()),
        log_rx,
        resource.clone(),
        stats.clone(),
        shutdown_rx.clone(),
    );
    let metric_task = tokio::spawn(export_metrics(
        MetricsServiceClient::new(channel),
        resource,
        metrics,
        stats,
        config.metrics_interval,
        shutdown_rx,
    ));
    Ok(ExportHandle { shutdown: Some(shutdown_tx), tasks: vec![spans, logs, metric_task] })
}

/// Tracks whether a signal's export works, so failures are logged once per outage.
#[derive(Clone)]
struct Health {
    signal: &'static str,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Health {
    fn new(signal: &'static str) -> Self {
        Self { signal, failing: Arc::default() }
    }

    fn account(&self, stats: &TelemetryStats, n: u64, result: Result<u64, tonic::Status>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(rejected) => {
                stats.exported(self.signal, n - rejected.min(n));
                if rejected > 0 {
                    stats.dropped(self.signal, "rejected", rejected);
                }
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(signal = self.signal, "telemetry export recovered");
                }
            }
            Err(status) => {
                stats.dropped(self.signal, "export_failed", n);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(signal = self.signal, error = %status.message(), "telemetry export failing; dropping batches until the collector answers");
                }
            }
        }
    }
}

/// Batching settings of a queue drain.
#[derive(Debug, Clone, Copy)]
struct Batching {
    max_batch: usize,
    flush_interval: Duration,
}

impl Batching {
    /// Spawns a task that drains `rx` in batches into `sink` until shutdown, then flushes.
    fn spawn<S: RecordSink>(
        self,
        mut sink: S,
        mut rx: mpsc::Receiver<Arc<RequestRecord>>,
        resource: Arc<Resource>,
        stats: TelemetryStats,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let health = Health::new(S::SIGNAL);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(self.max_batch);
            loop {
                // Wait for the first record of a batch.
                let mut stopping = tokio::select! {
                    n = rx.recv_many(&mut batch, self.max_batch) => n == 0,
                    _ = shutdown.changed() => true,
                };
                // Fill the batch until it is full, the flush interval passes, or shutdown.
                let deadline = Instant::now() + self.flush_interval;
                while !stopping && batch.len() < self.max_batch {
                    let room = self.max_batch - batch.len();
                    tokio::select! {
                        n = rx.recv_many(&mut batch, room) => stopping = n == 0,
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = shutdown.changed() => stopping = true,
                    }
                }
                if stopping {
                    rx.close();
                    while let Ok(record) = rx.try_recv() {
                        batch.push(record);
                    }
                }
                for chunk in batch.chunks(self.max_batch) {
                    let result = sink.export(&resource, chunk).await;
                    health.account(&stats, chunk.len() as u64, result);
                }
                batch.clear();
                if stopping {
                    return;
                }
            }
        })
    }
}

async fn export_metrics(
    mut client: MetricsServiceClient<Channel>,
    resource: Arc<Resource>,
    metrics: RequestMetrics,
    stats: TelemetryStats,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let health = Health::new("metrics");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = shutdown.changed() => true,
        };
        let snapshot = metrics.snapshot();
        if !snapshot.is_empty() {
            let now = unix_nanos(SystemTime::now());
            let request = otlp::metrics_request(&resource, metrics.start_unix_nanos(), now, &snapshot);
            let points = snapshot.len() as u64;
            let result = client.export(request).await.map(|r| {
                r.get_ref().partial_success.as_ref().map_or(0, |p| p.rejected_data_points.max(0) as u64)
            });
            health.account(&stats, points, result);
        }
        if last {
            return;
        }
    }
}
