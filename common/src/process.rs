//! The process's own figures under the names Prometheus's client libraries give them, read
//! from `/proc/self` at each scrape, so a sidecar's or the collector's CPU and memory are
//! on its `/metrics` as Linkerd's proxy and Envoy show theirs: `process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_threads` and `process_start_time_seconds`. A figure that
//! cannot be read (another system than Linux, a `/proc` not mounted) is left out. A sidecar
//! exports the same [`Reading`] over OTLP too.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

/// The figures, read at each scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

/// One reading of the process's figures; each `None` when it cannot be read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reading {
    /// CPU time in user mode, seconds.
    pub cpu_user_seconds: Option<f64>,
    /// CPU time in the kernel on the process's behalf, seconds.
    pub cpu_system_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The most file descriptors the process may open.
    pub max_fds: Option<u64>,
    /// Operating system threads.
    pub threads: Option<u64>,
    /// When the process started, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl Reading {
    /// Reads `/proc/self` (and `/proc/stat` for the boot time).
    pub fn now() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let ticks = clock_ticks_per_second();
        let stat = read("/proc/self/stat").and_then(|text| Stat::parse(&text));
        let boot = read("/proc/stat").and_then(|text| field(&text, "btime").and_then(|v| v.parse::<u64>().ok()));
        let status = read("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| field(&status, key).and_then(|v| v.trim_end_matches(" kB").trim().parse::<u64>().ok()).map(|k| k * 1024);
        Self {
            cpu_user_seconds: stat.map(|s| s.utime as f64 / ticks as f64),
            cpu_system_seconds: stat.map(|s| s.stime as f64 / ticks as f64),
            resident_bytes: kib("VmRSS"),
            virtual_bytes: kib("VmSize"),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|entries| entries.count() as u64),
            max_fds: read("/proc/self/limits").and_then(|text| max_open_files(&text)),
            threads: stat.map(|s| s.threads),
            start_time_seconds: stat.zip(boot).map(|(s, boot)| boot as f64 + s.start_ticks as f64 / ticks as f64),
        }
    }
}

/// Ticks of the clock `/proc/self/stat` counts CPU time in.
fn clock_ticks_per_second() -> u64 {
    #[cfg(target_os = "linux")]
    {
        rustix::param::clock_ticks_per_second()
    }
    #[cfg(not(target_os = "linux"))]
    {
        100
    }
}

/// The value of `key:` (or `key ` in `/proc/stat`) in a `key value` listing.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix([':', ' ']).map(str::trim))
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The fields of `/proc/self/stat` that are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
}

impl Stat {
    /// Parses the line: the fields after the command name (in parentheses, which may hold
    /// spaces and parentheses itself), from the third, `state`.
    fn parse(text: &str) -> Option<Self> {
        let after = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        Some(Self { utime: number(14)?, stime: number(15)?, threads: number(20)?, start_ticks: number(22)? })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let r = Reading::now();
        if let (Some(user), Some(system)) = (r.cpu_user_seconds, r.cpu_system_seconds) {
            let seconds = user + system;
            let metric = ConstCounter::new(seconds);
            let help = "CPU time, user and system";
            let descriptor = encoder.encode_descriptor("process_cpu", help, Some(&Unit::Seconds), metric.metric_type())?;
            metric.encode(descriptor)?;
        }
        let gauges: [(&str, &str, Option<Unit>, Option<u64>); 5] = [
            ("process_resident_memory", "Resident memory", Some(Unit::Bytes), r.resident_bytes),
            ("process_virtual_memory", "Virtual memory", Some(Unit::Bytes), r.virtual_bytes),
            ("process_open_fds", "Open file descriptors", None, r.open_fds),
            ("process_max_fds", "Most file descriptors the process may open", None, r.max_fds),
            ("process_threads", "Operating system threads", None, r.threads),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(value) = value.and_then(|v| i64::try_from(v).ok()) {
                let metric = ConstGauge::new(value);
                metric.encode(encoder.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?)?;
            }
        }
        if let Some(start) = r.start_time_seconds {
            let metric = ConstGauge::new(start);
            let help = "Start time, since the Unix epoch";
            let descriptor = encoder.encode_descriptor("process_start_time", help, Some(&Unit::Seconds), metric.metric_type())?;
            metric.encode(descriptor)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn the_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (meshlens (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 3 0 123456 27000000 3000 \
                    18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(Stat::parse(line), Some(Stat { utime: 250, stime: 75, threads: 3, start_ticks: 123456 }));
        assert_eq!(Stat::parse("4242 (cut"), None);
    }

    #[test]
    fn limits_and_status_fields_are_found_by_their_names() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(field("Name:\tmeshlens\nVmRSS:\t  12345 kB\n", "VmRSS"), Some("12345 kB"));
        assert_eq!(field("cpu  1 2 3\nbtime 1700000000\n", "btime"), Some("1700000000"));
    }

    #[test]
    fn this_process_reads_as_prometheus_client_libraries_name_it() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_virtual_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_threads ",
                "process_start_time_seconds ",
            ] {
                assert!(text.lines().any(|l| l.starts_with(name)), "{name} in {text}");
            }
            let start = text.lines().find_map(|l| l.strip_prefix("process_start_time_seconds "));
            let start: f64 = start.and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            assert!(start > 1.6e9 && start <= now + 1.0, "started {start}, now {now}");
        }
    }
}
