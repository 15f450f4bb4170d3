//! The load generator: sends requests through a sidecar at a steady rate, with bounded
//! concurrency, until told to stop or until it has sent its quota.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::HeaderMap;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use super::workload::{Call, SidecarClient};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The sidecar's outbound address.
    pub sidecar: SocketAddr,
    /// What each request calls (each tick picks one, weighted by `probability`).
    pub targets: Vec<Call>,
    /// Requests per second.
    pub rate: f64,
    /// Most requests in flight; a tick with none free is skipped and counted.
    pub concurrency: usize,
    /// Stop after this many requests.
    pub limit: Option<u64>,
    /// Append `/<n>` to each request's path, so every request has a path of its own.
    pub unique_paths: bool,
}

/// What was sent.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Requests that failed (5xx, gRPC error, or no answer).
    pub failed: u64,
    /// Ticks skipped because every slot was busy.
    pub skipped: u64,
}

fn pick(targets: &[Call]) -> Option<&Call> {
    let total: f64 = targets.iter().map(|t| t.probability).sum();
    let mut roll = fastrand::f64() * total;
    targets.iter().find(|t| {
        roll -= t.probability;
        roll < 0.0
    }).or(targets.last())
}

/// Sends load until `shutdown` turns true or the limit is reached, then waits for
/// in-flight requests.
pub async fn run(spec: LoadSpec, mut shutdown: watch::Receiver<bool>) -> LoadReport {
    let client = SidecarClient::new(spec.sidecar);
    let slots = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let succeeded = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut report = LoadReport::default();
    let period = Duration::from_secs_f64(1.0 / spec.rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let context = HeaderMap::new();
    loop {
        if spec.limit.is_some_and(|l| report.sent >= l) {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            report.skipped += 1;
            continue;
        };
        let Some(mut call) = pick(&spec.targets).cloned() else { break };
        if spec.unique_paths {
            call.path = format!("{}/{}", call.path.trim_end_matches('/'), report.sent);
        }
        report.sent += 1;
        let (client, context, succeeded, failed) = (client.clone(), context.clone(), succeeded.clone(), failed.clone());
        tokio::spawn(async move {
            match client.call(&call, &context).await {
                Ok(r) if r.ok() => succeeded.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        });
    }
    // Wait for every in-flight request (each holds a slot).
    let _ = slots.acquire_many(spec.concurrency.max(1) as u32).await;
    report.succeeded = succeeded.load(Ordering::Relaxed);
    report.failed = failed.load(Ordering::Relaxed);
    report
}
