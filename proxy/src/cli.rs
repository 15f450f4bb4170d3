//! Command-line entry shared by the `meshlens-proxy` binary and `meshlens proxy`.
//!
//! Loads the TOML configuration (and OpenTelemetry's variables: `OTEL_EXPORTER_OTLP_*`,
//! `OTEL_RESOURCE_ATTRIBUTES`),
//! starts the sidecar and runs it until Ctrl-C or SIGTERM (or, when a parent asks, until its
//! standard input closes), then drains connections and flushes telemetry.

use std::path::PathBuf;

use anyhow::Context;

use crate::{ProxyConfig, Sidecar};

/// Arguments of the sidecar command.
#[derive(Debug, clap::Parser)]
#[command(name = "meshlens-proxy", about = "The meshlens sidecar proxy", version)]
pub struct ProxyArgs {
    /// Path to the sidecar's TOML configuration (workload identity, listeners, services).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Number of tokio worker threads.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: usize,
    /// Check the configuration (the TOML file and OpenTelemetry's variables), print it as
    /// the sidecar would run with it, and exit without starting.
    #[arg(long)]
    pub check: bool,
    /// Also stop when standard input closes: a parent process that keeps the other end of
    /// the pipe open (`meshlens demo`) then stops its sidecars by closing it, and they stop
    /// with it however it ends.
    #[arg(long)]
    pub stop_when_stdin_closes: bool,
}

/// The runtime the sidecar runs on. With one worker thread (the default) it is tokio's
/// single-threaded scheduler, which the requests then never leave: no work-stealing
/// queues, no cross-thread wake-ups. More threads get the multi-threaded scheduler.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads).enable_all().build()
    }
}

/// Installs a `tracing` subscriber reading `RUST_LOG` (default `info`), writing to stderr;
/// the admin `/proxy-log-level` changes its filter ([`crate::log_level`]).
pub fn init_logging() {
    crate::log_level::init();
}

/// Runs one sidecar until a shutdown signal arrives.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let (config, ignored) = ProxyConfig::from_file_with_environment(&args.config, &|name| std::env::var(name).ok())
        .with_context(|| format!("loading {}", args.config.display()))?;
    for ignored in ignored {
        tracing::warn!("{ignored}");
    }
    if args.check {
        crate::telemetry::export::check_endpoints(&config.telemetry).with_context(|| format!("checking {}", args.config.display()))?;
        print!("{}", crate::describe::effective(&config));
        return Ok(());
    }
    let sidecar = Sidecar::start(config).await?;
    let addrs = sidecar.addrs();
    tracing::info!(
        inbound = %addrs.inbound, outbound = %addrs.outbound, admin = %addrs.admin,
        "sidecar ready"
    );
    tokio::select! {
        () = shutdown_signal() => {},
        () = stdin_closed(), if args.stop_when_stdin_closes => {},
    }
    tracing::info!("shutting down");
    sidecar.shutdown().await;
    Ok(())
}

/// Resolves when standard input reaches its end or fails. The read blocks a thread of its
/// own, which the process's exit ends: tokio's `stdin` would hold the runtime's shutdown
/// until the read returned.
async fn stdin_closed() {
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    let reader = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 256];
        while std::io::Read::read(&mut stdin, &mut buf).is_ok_and(|n| n > 0) {}
        drop(closed);
    });
    match reader {
        // The sender dropped: the end of the input.
        Ok(_) => {
            let _ = on_close.await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
