//! `meshlens demo`: the collector, a sample mesh with a sidecar beside every workload,
//! and a load generator, in one process, until Ctrl-C.

pub mod loadgen;
pub mod mesh;
pub mod workload;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use meshlens_collector::{Collector, CollectorConfig};
use meshlens_proxy::{Sidecar, WorkloadIdentity, config::OtlpProtocol};
use tokio::{net::TcpListener, sync::watch};

use self::{loadgen::LoadSpec, workload::WorkloadSpec};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// OTLP/gRPC listener.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP listener.
    pub otlp_http: SocketAddr,
    /// Web listener.
    pub web: SocketAddr,
    /// Expose Istio-compatible metrics too.
    pub istio_metrics: bool,
    /// Load generator rate, requests per second.
    pub rate: f64,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
}

/// Runs the demo until Ctrl-C (or `duration`).
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let collector = Collector::start(CollectorConfig {
        otlp_grpc: options.otlp_grpc,
        otlp_http: options.otlp_http,
        web: options.web,
        istio_metrics: options.istio_metrics,
        ..CollectorConfig::default()
    })
    .await
    .context("starting the collector (is another meshlens running? choose other ports with --web, --otlp-grpc, --otlp-http)")?;
    let addrs = collector.addrs();

    let planned = mesh::plan(mesh::SHOP).context("choosing ports for the sample mesh")?;
    let services = mesh::services(&planned);
    let (stop, stop_rx) = watch::channel(false);
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for p in &planned {
        let listener = TcpListener::bind(p.app).await.with_context(|| format!("binding {} on {}", p.identity.workload, p.app))?;
        let spec = WorkloadSpec {
            service: p.def.service.into(),
            version: p.def.version.into(),
            latency: Duration::from_millis(p.def.latency_ms),
            jitter: Duration::from_millis(p.def.jitter_ms),
            error_ratio: p.def.error_ratio,
            calls: p.calls()?,
            sidecar: p.outbound,
        };
        apps.push(tokio::spawn(workload::serve(listener, spec, stop_rx.clone())));
        let otlp = (OtlpProtocol::Grpc, addrs.otlp_grpc);
        let config = mesh::sidecar_config(p.identity.clone(), p.inbound, p.app, p.outbound, services.clone(), otlp);
        sidecars.push(Sidecar::start_embedded(config).await.with_context(|| format!("starting the sidecar of {}", p.identity.workload))?);
    }

    // The load generator is a meshed workload too: its requests leave through its sidecar,
    // which exports over OTLP/HTTP (the others over gRPC), so the demo runs both transports.
    let loadgen_out = mesh::free_addr()?;
    let loadgen_identity = WorkloadIdentity::new(mesh::NAMESPACE, "loadgen", "loadgen", "v1");
    let otlp = (OtlpProtocol::HttpProtobuf, addrs.otlp_http);
    let loadgen_config = mesh::sidecar_config(loadgen_identity, mesh::free_addr()?, mesh::free_addr()?, loadgen_out, services, otlp);
    sidecars.push(Sidecar::start_embedded(loadgen_config).await.context("starting the load generator's sidecar")?);
    let load = tokio::spawn(loadgen::run(
        LoadSpec {
            sidecar: loadgen_out,
            targets: vec!["http://frontend/".parse().map_err(anyhow::Error::msg)?],
            rate: options.rate,
            concurrency: 64,
            limit: None,
            unique_paths: false,
        },
        stop_rx.clone(),
    ));

    println!();
    println!("  meshlens demo is running: {} workloads in {} services, each with its sidecar.", planned.len(), mesh::services(&planned).len());
    println!();
    println!("  Dashboard        http://{}/", addrs.web);
    println!("  Topology API     http://{}/api/v1/topology?window=60s", addrs.web);
    println!("  Jaeger API       http://{}/api/services", addrs.web);
    println!("  Prometheus       http://{}/metrics", addrs.web);
    println!("  OTLP/gRPC        {}   (the services' sidecars export here)", addrs.otlp_grpc);
    println!("  OTLP/HTTP        http://{}/v1/traces   (the load generator's sidecar exports here)", addrs.otlp_http);
    // The frontend's sidecar, the first planned: its requests as they finish.
    if let (Some(first), Some(sidecar)) = (planned.first(), sidecars.first()) {
        println!("  Tap {:<12} meshlens tap --admin {}", first.def.service, sidecar.addrs().admin);
    }
    println!();
    println!("  Load: {} requests/s to frontend. Press Ctrl-C to stop.", options.rate);
    println!();

    match options.duration {
        Some(d) => tokio::select! {
            () = tokio::time::sleep(d) => {},
            () = meshlens_proxy::cli::shutdown_signal() => {},
        },
        None => meshlens_proxy::cli::shutdown_signal().await,
    }
    println!("stopping: draining requests and flushing telemetry...");
    let _ = stop.send(true);
    let report = load.await.unwrap_or_default();
    for sidecar in sidecars {
        sidecar.shutdown().await;
    }
    for app in apps {
        let _ = app.await;
    }
    collector.shutdown().await;
    println!(
        "stopped. load generator sent {} requests ({} succeeded, {} failed).",
        report.sent, report.succeeded, report.failed
    );
    Ok(())
}
