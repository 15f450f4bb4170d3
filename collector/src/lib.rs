//! meshlens-collector: receives OTLP from sidecars and OpenTelemetry SDKs, and turns it
//! into answers.
//!
//! ```text
//!  OTLP/gRPC :4317 ─┐                         ┌─ topology (edges → per-second rollups)
//!  OTLP/HTTP :4318 ─┴─ ingest::convert ─ Pipeline ─┼─ `spans` table (trace store, by trace, service index)
//!                     (protobuf stops here)        ├─ `logs` table (the logs API)
//!                                                  └─ Prometheus metrics (per edge, self)
//!  web :16686 ─ api::app: UI, /api/v1/topology, Jaeger /api/*, /api/v1/logs, /metrics
//! ```
//!
//! The receivers convert OTLP into [`model`] types at the edge; everything behind them
//! works on those. Each store is bounded and evicts its oldest data first.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod ingest;
pub mod instances;
pub mod istio;
pub mod journal;
pub mod lookup;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod segments;
pub mod series_ttl;
pub mod sql;
pub mod tables;
pub mod tls;
pub mod topology;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use meshlens_common::tls::ServerTls;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use config::CollectorConfig;
pub use pipeline::Pipeline;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A listener could not be bound.
    #[error("could not bind the {what} listener on {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid collector configuration: {0}")]
    Config(String),
    /// The data directory could not be used.
    #[error("cannot use the data directory")]
    Journal(#[from] journal::JournalError),
    /// The data directory's segments could not be read.
    #[error("cannot read the data directory's segments")]
    Segments(#[from] segments::SegmentError),
}

/// The addresses a running collector listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorAddrs {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// Web UI and APIs.
    pub web: SocketAddr,
}

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    addrs: CollectorAddrs,
    pipeline: Arc<Pipeline>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    journal: Option<journal::JournalWriter>,
    segments: Option<segments::SegmentWriter>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), CollectorError> {
    let err = |source| CollectorError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves `app` on `listener` until `rx` says stop.
async fn serve(listener: tls::Listener, app: axum::Router, rx: watch::Receiver<bool>, what: &'static str) {
    let served = match listener {
        tls::Listener::Plain(listener) => axum::serve(listener, app).with_graceful_shutdown(stopped(rx)).await,
        tls::Listener::Tls(listener) => axum::serve(listener, app).with_graceful_shutdown(stopped(rx)).await,
    };
    if let Err(error) = served {
        tracing::error!(%error, "{what} server failed");
    }
}

impl Collector {
    /// Binds every listener, then starts serving.
    pub async fn start(config: CollectorConfig) -> Result<Self, CollectorError> {
        config.validate().map_err(CollectorError::Config)?;
        let (grpc_listener, otlp_grpc) = bind("OTLP/gRPC", config.otlp_grpc).await?;
        let (http_listener, otlp_http) = bind("OTLP/HTTP", config.otlp_http).await?;
        let (web_listener, web) = bind("web", config.web).await?;
        let pipeline = Pipeline::new(&config);
        // Read back the segments, replay what the journal has beyond them, keep journaling.
        let (journal, journal_writer, segment_writer) = match &config.data_dir {
            Some(dir) => {
                let (journal, journal_writer, segment_writer) = restore(&pipeline, dir)?;
                (Some(journal), Some(journal_writer), Some(segment_writer))
            }
            None => (None, None, None),
        };
        let ingest = ingest::Ingest::new(pipeline.clone(), journal);
        // A listener speaking `tls` if given, counting its handshakes under `transport`.
        let listen = |listener: TcpListener, tls: Option<&ServerTls>, alpn: &[&[u8]], transport, what, addr| {
            let Some(tls) = tls else { return Ok(tls::Listener::Plain(listener)) };
            let config = tls.config(alpn).map(Arc::new).map_err(|e| CollectorError::Config(e.to_string()))?;
            tls::TlsListener::new(listener, config, pipeline.metrics.tls_handshakes.clone(), transport)
                .map(tls::Listener::Tls)
                .map_err(|source| CollectorError::Bind { what, addr, source })
        };
        // gRPC is HTTP/2 only; OTLP/HTTP and the web port are served over either version.
        let both: &[&[u8]] = &[b"h2", b"http/1.1"];
        let otlp_tls = config.otlp_tls.as_ref();
        let grpc_listener = listen(grpc_listener, otlp_tls, &[b"h2"], "grpc", "OTLP/gRPC", otlp_grpc)?;
        let http_listener = listen(http_listener, otlp_tls, both, "http", "OTLP/HTTP", otlp_http)?;
        let web_listener = listen(web_listener, config.web_tls.as_ref(), both, "web", "web", web)?;
        let (shutdown, rx) = watch::channel(false);

        let grpc = {
            let receiver = ingest::grpc::OtlpGrpc::new(ingest.clone());
            let rx = rx.clone();
            tokio::spawn(async move {
                if let Err(error) = receiver.serve(grpc_listener, stopped(rx)).await {
                    tracing::error!(%error, "OTLP/gRPC server failed");
                }
            })
        };
        let http = tokio::spawn(serve(http_listener, ingest::http::routes().with_state(Arc::new(ingest)), rx.clone(), "OTLP/HTTP"));
        let web_task = tokio::spawn(serve(web_listener, api::app(pipeline.clone()), rx.clone(), "web"));
        let ticker = {
            let pipeline = pipeline.clone();
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = interval.tick() => pipeline.tick(),
                        _ = rx.changed() => return,
                    }
                }
            })
        };
        Ok(Self {
            addrs: CollectorAddrs { otlp_grpc, otlp_http, web },
            pipeline,
            shutdown,
            tasks: vec![grpc, http, web_task, ticker],
            journal: journal_writer,
            segments: segment_writer,
        })
    }

    /// Where the collector listens.
    pub fn addrs(&self) -> CollectorAddrs {
        self.addrs
    }

    /// The collector's state.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Stops the servers, letting in-flight requests finish (at most 5 seconds), then
    /// writes and syncs every journaled record.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let all = async {
            for task in self.tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), all).await.is_err() {
            tracing::warn!("collector servers did not stop within 5s");
        }
        if let Some(writer) = self.journal {
            let finish = tokio::task::spawn_blocking(move || writer.finish());
            if tokio::time::timeout(Duration::from_secs(10), finish).await.is_err() {
                tracing::error!("the journal did not finish writing within 10s");
            }
        }
        if let Some(writer) = self.segments {
            // Everything is journaled already; sealing now only saves the next start a replay.
            if let Ok(mut tables) = self.pipeline.tables.write() {
                tables.seal_all();
            }
            let finish = tokio::task::spawn_blocking(move || writer.finish());
            if tokio::time::timeout(Duration::from_secs(10), finish).await.is_err() {
                tracing::error!("the last segments were not written within 10s");
            }
        }
    }
}

/// Loads the segments in `<dir>/segments`, replays the journal records in `<dir>/journal`
/// they do not hold, and opens the journal and the segment writer.
fn restore(
    pipeline: &Pipeline,
    dir: &std::path::Path,
) -> Result<(journal::Journal, journal::JournalWriter, segments::SegmentWriter), CollectorError> {
    let started = std::time::Instant::now();
    let segment_dir = dir.join("segments");
    let schemas = match pipeline.tables.read() {
        Ok(tables) => tables.schemas(),
        Err(_) => return Err(CollectorError::Config("the tables' lock is poisoned".into())),
    };
    let loaded = segments::load(&segment_dir, &schemas)?;
    let persisted = loaded.records;
    let (segment_count, skipped) = (loaded.segments.iter().map(|(_, s)| s.len()).sum::<usize>(), loaded.skipped);
    let (segments, segment_writer) = segments::Segments::start(segment_dir)?;
    if let Ok(mut tables) = pipeline.tables.write() {
        tables.restore(loaded.segments);
        tables.persist_to(segments);
    }
    tracing::info!(segments = segment_count, skipped, elapsed = ?started.elapsed(), "segments loaded");

    let journal_dir = dir.join("journal");
    std::fs::create_dir_all(&journal_dir).map_err(|source| journal::JournalError::Io { path: journal_dir.clone(), source })?;
    let report = journal::replay(&journal_dir, |kind, id, payload| {
        let record = if persisted.contains(&id) { pipeline::Record::Persisted } else { pipeline::Record::Journaled(id) };
        ingest::replay(pipeline, kind, record, payload);
    })?;
    tracing::info!(records = report.records, torn = report.torn_segments, elapsed = ?started.elapsed(), "journal replayed");
    let first_id = report.last_id.max(persisted.iter().copied().max().unwrap_or(0)) + 1;
    let (journal, journal_writer) = journal::Journal::open(journal::JournalConfig::new(journal_dir), first_id)?;
    Ok((journal, journal_writer, segment_writer))
}
