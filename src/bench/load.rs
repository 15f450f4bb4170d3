//! The benchmark's HTTP/1.1 load generator: closed-loop maximum throughput over N
//! keep-alive connections, and open-loop latency at a fixed rate measured from each
//! request's scheduled send time (so a stall is charged to every request it delays).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The `Host` header (the service name, for a sidecar).
    pub host: String,
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, host: &str) -> anyhow::Result<()> {
    sender.ready().await?;
    let request = http::Request::get("/").header("host", host).body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let ok = response.status().is_success();
    response.into_body().collect().await?;
    anyhow::ensure!(ok, "non-success status");
    Ok(())
}

/// Requests completed per second with `connections` connections, each sending as fast as
/// it gets answers, for `duration`.
pub async fn max_throughput(target: &Target, connections: usize, duration: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut sender = connect(target).await?;
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                if send(&mut sender, &target.host).await.is_ok() {
                    done += 1;
                    continue;
                }
                // The server closed the connection (as nginx does after `keepalive_requests`).
                match connect(&target).await {
                    Ok(fresh) => sender = fresh,
                    Err(_) => break,
                }
            }
            done
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    Ok(total as f64 / started.elapsed().as_secs_f64().max(duration.as_secs_f64()))
}

/// Latencies, in microseconds, of requests sent at a fixed `rate` for `duration`.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// One per completed request, sorted.
    pub micros: Vec<f64>,
    /// Requests that failed.
    pub errors: u64,
}

impl Latencies {
    /// The `q` quantile, microseconds.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.micros.len() - 1) as f64 * q).round() as usize;
        self.micros[rank]
    }
}

/// Sends `rate` requests per second for `duration` over a pool of `connections`
/// connections; each latency runs from the request's scheduled time to its last byte.
pub async fn fixed_rate(target: &Target, rate: f64, duration: Duration, connections: usize) -> anyhow::Result<Latencies> {
    let mut pool = Vec::with_capacity(connections);
    for _ in 0..connections {
        pool.push(Arc::new(Mutex::new(connect(target).await?)));
    }
    let total = (rate * duration.as_secs_f64()) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    // The schedule is kept by a thread of its own with the OS's precise sleeps: tokio's
    // timer has a 1 ms grain, which would be charged to every request as latency.
    let runtime = tokio::runtime::Handle::current();
    let host = target.host.clone();
    let tasks = tokio::task::spawn_blocking(move || {
        let start = Instant::now() + Duration::from_millis(20);
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let scheduled = start + period.mul_f64(i as f64);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let connection = pool[(i as usize) % connections].clone();
            let host = host.clone();
            tasks.push(runtime.spawn(async move {
                let mut sender = connection.lock().await;
                let result = send(&mut sender, &host).await;
                result.map(|()| scheduled.elapsed())
            }));
        }
        tasks
    })
    .await?;
    let mut latencies = Latencies::default();
    for task in tasks {
        match task.await {
            Ok(Ok(elapsed)) => latencies.micros.push(elapsed.as_secs_f64() * 1e6),
            _ => latencies.errors += 1,
        }
    }
    latencies.micros.sort_by(f64::total_cmp);
    Ok(latencies)
}
