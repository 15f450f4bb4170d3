//! A real Prometheus (Debian's `prometheus` package) on a loopback port, and PromQL queries.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;

use super::{TestDir, free_addr, get, wait_for, wait_listening};

/// `/usr/bin/<program>`, which must be installed.
pub fn require(program: &str) -> String {
    let path = format!("/usr/bin/{program}");
    assert!(Path::new(&path).is_file(), "{path} is missing: install Debian's prometheus package (./scripts/test does)");
    path
}

/// Percent-encodes a query-string value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    /// Its web address.
    pub web: SocketAddr,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) written to the test directory, and waits
    /// until it scrapes the job `meshlens`.
    pub fn start(dir: &TestDir, config: &str) -> Self {
        let web = free_addr();
        let path = dir.path("prometheus.yml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(dir.path("prometheus.log")).expect("log");
        let child = Command::new(require("prometheus"))
            .args([
                &format!("--config.file={}", path.display()),
                &format!("--storage.tsdb.path={}", dir.path("tsdb").display()),
                &format!("--web.listen-address={web}"),
                "--enable-feature=exemplar-storage",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self { web, child };
        wait_listening(web, "prometheus");
        wait_for("Prometheus to scrape the collector", Duration::from_secs(30), || {
            (prometheus.value("up{job=\"meshlens\"}") == Some(1.0)).then_some(())
        });
        prometheus
    }

    /// An instant query's full answer.
    pub fn query(&self, query: &str) -> Value {
        serde_json::from_str(&get(self.web, &format!("/api/v1/query?query={}", encode(query))).body).unwrap_or_default()
    }

    /// An instant query's vector: each series' labels and value.
    pub fn vector(&self, query: &str) -> Vec<(Value, f64)> {
        self.query(query)["data"]["result"]
            .as_array()
            .map(|r| r.iter().filter_map(|s| Some((s["metric"].clone(), s["value"][1].as_str()?.parse().ok()?))).collect())
            .unwrap_or_default()
    }

    /// An instant query's single value.
    pub fn value(&self, query: &str) -> Option<f64> {
        self.query(query)["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
