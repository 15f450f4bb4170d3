//! Starting and stopping one sidecar: its listeners, stacks, admin server and exporters.
//!
//! All listeners are bound before anything is spawned, so a port that is already taken
//! fails the start with a clear error and leaves nothing running.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    admin,
    config::ProxyConfig,
    error::StartError,
    inbound, outbound, server,
    drain::{Closing, Drain},
    stack::forward::Forward,
    connection::ConnectionMeter,
    telemetry::{ExportHandle, Side, Telemetry, unread::UnreadHeads},
};

/// How long the connections still open at the end of the grace period get to end, and
/// their exchanges to be recorded, once closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The addresses a running sidecar listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarAddrs {
    /// Inbound side.
    pub inbound: SocketAddr,
    /// Outbound side.
    pub outbound: SocketAddr,
    /// Admin server.
    pub admin: SocketAddr,
}

/// Whether a sidecar has its process to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    Own,
    Shared,
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    addrs: SidecarAddrs,
    telemetry: Telemetry,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    /// [`keep_timer_armed`](crate::stack::timeout::keep_timer_armed) on the request thread.
    timer_anchor: JoinHandle<()>,
    /// Closes the connections, upgraded or not, still open at the end of the grace period.
    closing: Closing,
    export: ExportHandle,
    export_timeout: Duration,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(what: &'static str, addr: SocketAddr, l: &TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind { what, addr, source })
}

impl Sidecar {
    /// Binds the listeners and starts serving, as the one sidecar of its process: its admin
    /// `/metrics` and its metrics export report the process's CPU and memory as its own.
    pub async fn start(config: ProxyConfig) -> Result<Self, StartError> {
        Self::start_with(config, Process::Own).await
    }

    /// Binds the listeners and starts serving in a process shared with others (the demo
    /// runs every workload and sidecar in one): the process's CPU and memory are not this
    /// sidecar's, so its admin `/metrics` and its metrics export leave them out.
    pub async fn start_embedded(config: ProxyConfig) -> Result<Self, StartError> {
        Self::start_with(config, Process::Shared).await
    }

    async fn start_with(config: ProxyConfig, process: Process) -> Result<Self, StartError> {
        let inbound_listener = bind("inbound", config.inbound_listen).await?;
        let outbound_listener = bind("outbound", config.outbound_listen).await?;
        let admin_listener = bind("admin", config.admin_listen).await?;
        let addrs = SidecarAddrs {
            inbound: local_addr("inbound", config.inbound_listen, &inbound_listener)?,
            outbound: local_addr("outbound", config.outbound_listen, &outbound_listener)?,
            admin: local_addr("admin", config.admin_listen, &admin_listener)?,
        };

        let own_process = process == Process::Own;
        let (telemetry, export) = Telemetry::start(Arc::new(config.identity.clone()), &config.telemetry, own_process)?;
        // Connections to each upstream workload are counted under its identity.
        let upstreams = config
            .services
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| (e.address, telemetry.stats().upstream_connections(e.identity.clone())))
            .collect();
        let (drain, closing) = Drain::new();
        let forward = Forward::new(upstreams, telemetry.stats().resends(), config.upgrade_idle_timeout, drain.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let servers = vec![
            tokio::spawn(server::serve(
                inbound_listener,
                inbound::stack(&config, telemetry.clone(), forward.clone()),
                telemetry.stats().connections(Side::Inbound),
                config.connections,
                Some(UnreadHeads::new(telemetry.clone(), Side::Inbound)),
                drain.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(server::serve(
                outbound_listener,
                outbound::stack(&config, telemetry.clone(), forward),
                telemetry.stats().connections(Side::Outbound),
                config.connections,
                Some(UnreadHeads::new(telemetry.clone(), Side::Outbound)),
                drain.clone(),
                shutdown_rx.clone(),
            )),
            // The admin server's own connections are not the mesh's traffic.
            tokio::spawn(server::serve(
                admin_listener,
                admin::service(&telemetry, own_process, shutdown_rx.clone()),
                ConnectionMeter::default(),
                config.connections,
                None,
                drain,
                shutdown_rx,
            )),
        ];
        Ok(Self {
            addrs,
            telemetry,
            shutdown,
            servers,
            timer_anchor: tokio::spawn(crate::stack::timeout::keep_timer_armed()),
            closing,
            export,
            export_timeout: config.telemetry.longest_export_timeout(),
        })
    }

    /// Where the sidecar listens.
    pub fn addrs(&self) -> SidecarAddrs {
        self.addrs
    }

    /// The sidecar's telemetry recorder.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Stops accepting, lets open exchanges finish (for the grace period), closes the
    /// connections still open, upgraded ones included, then flushes telemetry.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        // Exchanges dropped from now on are the sidecar's doing, not their callers'.
        self.telemetry.shutting_down();
        if !self.closing.close_all(CLOSE_WAIT).await {
            // Each exchange records itself as it lets go: one that has not by now may miss
            // the last export.
            tracing::warn!("exchanges still open {CLOSE_WAIT:?} after they were told to close; their records may miss the last export");
        }
        self.timer_anchor.abort();
        self.export.shutdown(self.export_timeout + Duration::from_secs(1)).await;
    }
}
