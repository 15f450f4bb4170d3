//! `meshlens demo`: the collector, a sample mesh with a sidecar beside every workload,
//! and a load generator, until Ctrl-C. The collector, the workloads and the load generator
//! run in the demo's process; each sidecar is a process of its own ([`sidecars`]).

pub mod loadgen;
pub mod mesh;
pub mod sidecars;
pub mod workload;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use meshlens_collector::{Collector, CollectorConfig};
use meshlens_proxy::{WorkloadIdentity, config::OtlpProtocol};
use tokio::{net::TcpListener, sync::watch};

use self::{loadgen::LoadSpec, mesh::Listeners, sidecars::SidecarProcess, workload::WorkloadSpec};

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
    let exe = std::env::current_exe().context("locating the meshlens binary, which runs the sidecars")?;
    let dir = std::env::temp_dir().join(format!("meshlens-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
        let at = Listeners { inbound: p.inbound, app: p.app, outbound: p.outbound, admin: mesh::free_addr()? };
        let config = mesh::sidecar_toml(&p.identity, at, &planned, (OtlpProtocol::Grpc, addrs.otlp_grpc));
        sidecars.push((SidecarProcess::start(&exe, &dir, &p.identity.workload, &config, at.admin)?, at));
    }

    // The load generator is a meshed workload too: its requests leave through its sidecar,
    // which exports over OTLP/HTTP (the others over gRPC), so the demo runs both transports.
    let loadgen_identity = WorkloadIdentity::new(mesh::NAMESPACE, "loadgen", "loadgen", "v1");
    let at = Listeners { inbound: mesh::free_addr()?, app: mesh::free_addr()?, outbound: mesh::free_addr()?, admin: mesh::free_addr()? };
    let config = mesh::sidecar_toml(&loadgen_identity, at, &planned, (OtlpProtocol::HttpProtobuf, addrs.otlp_http));
    sidecars.push((SidecarProcess::start(&exe, &dir, "loadgen", &config, at.admin)?, at));
    for (sidecar, at) in &mut sidecars {
        sidecar.ready(&[at.inbound, at.outbound, at.admin]).await?;
    }
    let loadgen_out = at.outbound;
    let sidecars: Vec<SidecarProcess> = sidecars.into_iter().map(|(sidecar, _)| sidecar).collect();
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
    let services: std::collections::BTreeSet<&str> = planned.iter().map(|p| p.def.service).collect();
    println!("  meshlens demo is running: {} workloads in {} services, each with its sidecar.", planned.len(), services.len());
    println!();
    println!("  Dashboard        http://{}/", addrs.web);
    println!("  Topology API     http://{}/api/v1/topology?window=60s", addrs.web);
    println!("  Jaeger API       http://{}/api/services", addrs.web);
    println!("  Prometheus       http://{}/metrics", addrs.web);
    println!("  OTLP/gRPC        {}   (the services' sidecars export here)", addrs.otlp_grpc);
    println!("  OTLP/HTTP        http://{}/v1/traces   (the load generator's sidecar exports here)", addrs.otlp_http);
    // The frontend's sidecar, the first planned: its requests as they finish.
    if let (Some(first), Some(sidecar)) = (planned.first(), sidecars.first()) {
        println!("  Tap {:<12} meshlens tap --admin {}", first.def.service, sidecar.admin);
    }
    println!("  Sidecar logs     {}   (removed when the demo stops)", dir.display());
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
    sidecars::stop_all(sidecars).await;
    for app in apps {
        let _ = app.await;
    }
    collector.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "stopped. load generator sent {} requests ({} succeeded, {} failed).",
        report.sent, report.succeeded, report.failed
    );
    Ok(())
}
