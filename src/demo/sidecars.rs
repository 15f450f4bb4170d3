//! The demo's sidecars, each a `meshlens proxy` process of its own, as it would run beside
//! a workload: so each reports its own CPU and memory (the dashboard's and `meshlens stat`'s
//! sidecar figures) and has its own log filter. Each reads the demo's pipe on its standard
//! input and stops when it closes: when the demo stops them, and when the demo ends in any
//! other way, a kill included, so none outlives it.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

/// How long a sidecar has to listen after its start, and to stop after its pipe closes
/// (draining requests and flushing telemetry take a few seconds at most).
const START_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// One running sidecar process.
#[derive(Debug)]
pub struct SidecarProcess {
    child: Child,
    name: String,
    log: PathBuf,
    /// Its admin server.
    pub admin: SocketAddr,
}

impl SidecarProcess {
    /// Writes `config` to `dir` and starts `exe proxy` on it, its output to `<name>.log` there.
    pub fn start(exe: &Path, dir: &Path, name: &str, config: &str, admin: SocketAddr) -> anyhow::Result<Self> {
        let (file, log) = (dir.join(format!("{name}.toml")), dir.join(format!("{name}.log")));
        std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .args(["proxy", "--stop-when-stdin-closes", "--config"])
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting the sidecar of {name}"))?;
        Ok(Self { child, name: name.to_owned(), log, admin })
    }

    /// Waits until it listens on `addrs`; an error with its log's end if it exits first.
    pub async fn ready(&mut self, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        let started = Instant::now();
        for addr in addrs {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if let Some(status) = self.child.try_wait()? {
                    anyhow::bail!("the sidecar of {} exited ({status}):\n{}", self.name, self.log_tail());
                }
                anyhow::ensure!(started.elapsed() < START_WITHIN, "the sidecar of {} did not listen on {addr}", self.name);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

/// Stops `sidecars` together: closes their pipes, so each drains its requests and flushes
/// its telemetry, and waits for them; one that does not stop in time is killed.
pub async fn stop_all(mut sidecars: Vec<SidecarProcess>) {
    for s in &mut sidecars {
        drop(s.child.stdin.take());
    }
    let deadline = Instant::now() + STOP_WITHIN;
    while !sidecars.is_empty() {
        sidecars.retain_mut(|s| !matches!(s.child.try_wait(), Ok(Some(_)) | Err(_)));
        if Instant::now() > deadline {
            for s in &mut sidecars {
                eprintln!("the sidecar of {} did not stop in {STOP_WITHIN:?}: killed", s.name);
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
