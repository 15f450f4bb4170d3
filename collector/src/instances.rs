//! The process figures of the instances that export them: each sidecar's (and any
//! OpenTelemetry SDK's) `process.cpu.time`, `process.memory.usage`, `process.memory.virtual`,
//! `process.thread.count` and `process.unix.file_descriptor.count`, kept per instance
//! (`service.namespace`, `service.name`, `meshlens.workload`, `service.version`,
//! `service.instance.id`, `telemetry.sdk.name` of its resource), so what the mesh's proxies
//! cost shows per workload as Istio's performance dashboard and Linkerd's health dashboard
//! show it.
//!
//! On `/metrics` they are `meshlens_process_cpu_seconds_total` (by `mode`),
//! `meshlens_process_resident_memory_bytes`, `meshlens_process_virtual_memory_bytes`,
//! `meshlens_process_threads` and `meshlens_process_open_fds`; `GET /api/v1/instances`
//! lists them with each one's CPU use between its last two readings, in cores. Only
//! cumulative CPU sums are read. An instance not heard from for the series TTL is forgotten,
//! and at most [`MAX_INSTANCES`] are kept, each part of their identity cut to
//! [`MAX_PART_BYTES`]: a sender past that is counted, not kept.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use meshlens_common::semconv::RESOURCE_KEYS;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};
use serde::Serialize;

use crate::{
    ingest::convert::char_prefix,
    model::{MetricKind, MetricPoint, Resource, Value, attr},
};

/// The most instances kept.
pub const MAX_INSTANCES: usize = 10_000;

/// The longest identity part kept, in bytes: longer ones are cut (on a character boundary),
/// so 10,000 instances stay within a few tens of megabytes whatever their resources say.
pub const MAX_PART_BYTES: usize = 256;

/// The most CPU modes kept per instance (OpenTelemetry names `user`, `system`, `wait`, and
/// a few more for a host).
const MAX_MODES: usize = 8;

/// `text`, cut to [`MAX_PART_BYTES`].
fn part(text: &str) -> String {
    char_prefix(text, MAX_PART_BYTES).to_owned()
}

/// What tells one instance from another: its resource's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct InstanceKey {
    /// `service.namespace`.
    pub namespace: String,
    /// `service.name`.
    pub service: String,
    /// `meshlens.workload` (empty when not reported).
    pub workload: String,
    /// `service.version`.
    pub version: String,
    /// `service.instance.id` (empty when not reported: replicas then share one entry).
    pub instance: String,
    /// `telemetry.sdk.name`: `meshlens-proxy` for a sidecar.
    pub sdk: String,
}

impl InstanceKey {
    fn of(resource: &Resource) -> Self {
        let text = |key: &str| part(attr(&resource.attributes, key).and_then(Value::as_str).unwrap_or_default());
        Self {
            namespace: text(RESOURCE_KEYS.namespace),
            service: part(&resource.service),
            workload: text(RESOURCE_KEYS.workload),
            version: text(RESOURCE_KEYS.version),
            instance: text("service.instance.id"),
            sdk: text("telemetry.sdk.name"),
        }
    }

    fn labels(&self) -> [(&'static str, &str); 6] {
        [
            ("namespace", &self.namespace),
            ("service", &self.service),
            ("workload", &self.workload),
            ("version", &self.version),
            ("instance", &self.instance),
            ("sdk", &self.sdk),
        ]
    }
}

/// One reading of an instance's CPU time: when, and seconds by mode.
#[derive(Debug, Clone, Default, PartialEq)]
struct Cpu {
    at_unix_nanos: u64,
    modes: Vec<(String, f64)>,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.modes.iter().map(|(_, seconds)| seconds).sum()
    }
}

/// The latest figures of one instance.
#[derive(Debug, Clone)]
struct Figures {
    cpu: Option<Cpu>,
    /// The reading before `cpu`: when, and its total.
    previous_cpu: Option<(u64, f64)>,
    /// The CPU seconds by mode of a sender exporting them as deltas, added up.
    cpu_from_deltas: Vec<(String, f64)>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    threads: Option<f64>,
    open_fds: Option<f64>,
    last_unix_nanos: u64,
    seen: Instant,
}

impl Figures {
    fn new(now: Instant) -> Self {
        Self {
            cpu: None,
            previous_cpu: None,
            cpu_from_deltas: Vec::new(),
            resident_bytes: None,
            virtual_bytes: None,
            threads: None,
            open_fds: None,
            last_unix_nanos: 0,
            seen: now,
        }
    }

    /// Takes the CPU seconds of `mode` read at `at`: a later reading moves the current one
    /// to `previous_cpu`; an earlier one is stale and left out. A total that went down
    /// (the process restarted under the same instance ID) starts the rate afresh.
    fn cpu_seconds(&mut self, at: u64, mode: &str, seconds: f64) {
        match &mut self.cpu {
            Some(cpu) if cpu.at_unix_nanos == at => {
                if let Some(entry) = mode_entry(&mut cpu.modes, mode) {
                    *entry = seconds;
                }
            }
            Some(cpu) if cpu.at_unix_nanos > at => {}
            current => {
                self.previous_cpu = current.as_ref().map(|cpu| (cpu.at_unix_nanos, cpu.total()));
                *current = Some(Cpu { at_unix_nanos: at, modes: vec![(part(mode), seconds)] });
            }
        }
    }

    /// Adds a delta of the CPU seconds of `mode`; their total so far, or `None` past
    /// [`MAX_MODES`] modes.
    fn add_cpu_delta(&mut self, mode: &str, seconds: f64) -> Option<f64> {
        let total = mode_entry(&mut self.cpu_from_deltas, mode)?;
        *total += seconds;
        Some(*total)
    }

    /// CPU use between the last two readings, in cores.
    fn cpu_cores(&self) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        let (before, total_before) = self.previous_cpu?;
        let seconds = cpu.at_unix_nanos.checked_sub(before).filter(|&n| n > 0)? as f64 / 1e9;
        let used = cpu.total() - total_before;
        (used >= 0.0).then_some(used / seconds)
    }
}

/// The seconds of `mode` among `modes`, added at 0 if there is room for it
/// ([`MAX_MODES`]).
fn mode_entry<'a>(modes: &'a mut Vec<(String, f64)>, mode: &str) -> Option<&'a mut f64> {
    let at = match modes.iter().position(|(m, _)| m == mode) {
        Some(at) => at,
        None if modes.len() < MAX_MODES => {
            modes.push((part(mode), 0.0));
            modes.len() - 1
        }
        None => return None,
    };
    modes.get_mut(at).map(|(_, seconds)| seconds)
}

/// One instance as `GET /api/v1/instances` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceView {
    /// Its identity.
    #[serde(flatten)]
    pub key: InstanceKey,
    /// CPU use between its last two readings, in cores (none before its second one).
    pub cpu_cores: Option<f64>,
    /// CPU seconds since it started, all modes.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<f64>,
    /// Virtual memory, bytes.
    pub virtual_bytes: Option<f64>,
    /// Operating system threads.
    pub threads: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// Its latest reading, Unix milliseconds.
    pub last_seen_ms: u64,
}

/// The instances and their figures.
#[derive(Debug, Default)]
pub struct Instances {
    by_key: HashMap<InstanceKey, Figures>,
    /// Instances past [`MAX_INSTANCES`] whose figures were left out.
    overflowed: u64,
}

impl Instances {
    /// Takes the process figures among `points`; other points are left alone.
    pub fn observe(&mut self, points: &[MetricPoint]) {
        let now = Instant::now();
        // An export request's points share a resource: its key is made once.
        let mut last: Option<(&Arc<Resource>, InstanceKey)> = None;
        for p in points {
            let field = match p.name.as_str() {
                "process.cpu.time" if matches!(p.kind, MetricKind::Sum | MetricKind::DeltaSum) => None,
                "process.memory.usage" => Some(Field::Resident),
                "process.memory.virtual" => Some(Field::Virtual),
                "process.thread.count" => Some(Field::Threads),
                "process.unix.file_descriptor.count" => Some(Field::OpenFds),
                _ => continue,
            };
            if !p.value.is_finite() || p.value < 0.0 {
                continue;
            }
            let key = match &last {
                Some((resource, key)) if Arc::ptr_eq(resource, &p.resource) => key.clone(),
                _ => {
                    let key = InstanceKey::of(&p.resource);
                    last = Some((&p.resource, key.clone()));
                    key
                }
            };
            let room = self.by_key.len() < MAX_INSTANCES;
            let figures = match self.by_key.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) if room => e.insert(Figures::new(now)),
                std::collections::hash_map::Entry::Vacant(_) => {
                    self.overflowed += 1;
                    continue;
                }
            };
            figures.seen = now;
            // A point older than the latest reading (a retried export arriving late) is stale.
            let fresh = p.time_unix_nanos >= figures.last_unix_nanos;
            figures.last_unix_nanos = figures.last_unix_nanos.max(p.time_unix_nanos);
            let value = Some(p.value);
            match field {
                None => {
                    let mode = attr(&p.attributes, "cpu.mode").and_then(Value::as_str).unwrap_or("total");
                    // A delta, even one arriving late, adds to the total the next reading shows.
                    let seconds = if p.kind == MetricKind::DeltaSum { figures.add_cpu_delta(mode, p.value) } else { Some(p.value) };
                    if let Some(seconds) = seconds {
                        figures.cpu_seconds(p.time_unix_nanos, mode, seconds);
                    }
                }
                _ if !fresh => {}
                Some(Field::Resident) => figures.resident_bytes = value,
                Some(Field::Virtual) => figures.virtual_bytes = value,
                Some(Field::Threads) => figures.threads = value,
                Some(Field::OpenFds) => figures.open_fds = value,
            }
        }
    }

    /// Forgets the instances not heard from within `ttl`; returns how many.
    pub fn expire_idle(&mut self, ttl: Duration) -> usize {
        let before = self.by_key.len();
        self.by_key.retain(|_, figures| figures.seen.elapsed() <= ttl);
        before - self.by_key.len()
    }

    /// Every instance, ordered by namespace, service, workload, version and instance.
    pub fn list(&self) -> Vec<InstanceView> {
        let mut list: Vec<InstanceView> = self
            .by_key
            .iter()
            .map(|(key, f)| InstanceView {
                key: key.clone(),
                cpu_cores: f.cpu_cores(),
                cpu_seconds: f.cpu.as_ref().map(Cpu::total),
                resident_bytes: f.resident_bytes,
                virtual_bytes: f.virtual_bytes,
                threads: f.threads,
                open_fds: f.open_fds,
                last_seen_ms: f.last_unix_nanos / 1_000_000,
            })
            .collect();
        list.sort_by(|a, b| a.key.cmp(&b.key));
        list
    }

    /// Instances whose figures were left out for lack of room.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

/// Which gauge a point sets.
#[derive(Debug, Clone, Copy)]
enum Field {
    Resident,
    Virtual,
    Threads,
    OpenFds,
}

/// Reads one gauge's figure.
type Read = fn(&Figures) -> Option<f64>;

/// The instances' figures as Prometheus families, written at each scrape.
#[derive(Debug, Clone, Default)]
pub struct InstancesCollector(pub Arc<Mutex<Instances>>);

impl Collector for InstancesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Ok(instances) = self.0.lock() else { return Ok(()) };
        let mut entries: Vec<(&InstanceKey, &Figures)> = instances.by_key.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        {
            let help = "CPU time of the instances that export process.cpu.time, by mode";
            let counter = ConstCounter::new(0.0);
            let mut family =
                encoder.encode_descriptor("meshlens_process_cpu", help, Some(&Unit::Seconds), counter.metric_type())?;
            for (key, figures) in &entries {
                for (mode, seconds) in figures.cpu.iter().flat_map(|cpu| &cpu.modes) {
                    let [a, b, c, d, e, f] = key.labels();
                    let labels = [a, b, c, d, e, f, ("mode", mode.as_str())];
                    ConstCounter::new(*seconds).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let gauges: [(&str, &str, Option<Unit>, Read); 4] = [
            ("meshlens_process_resident_memory", "Resident memory of the instances that export it", Some(Unit::Bytes), |f| f.resident_bytes),
            ("meshlens_process_virtual_memory", "Virtual memory of the instances that export it", Some(Unit::Bytes), |f| f.virtual_bytes),
            ("meshlens_process_threads", "Operating system threads of the instances that export them", None, |f| f.threads),
            ("meshlens_process_open_fds", "Open file descriptors of the instances that export them", None, |f| f.open_fds),
        ];
        for (name, help, unit, read) in gauges {
            let gauge = ConstGauge::new(0.0);
            let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?;
            for (key, figures) in &entries {
                if let Some(value) = read(figures) {
                    ConstGauge::new(value).encode(family.encode_family(&key.labels())?)?;
                }
            }
        }
        let overflow = ConstCounter::new(instances.overflowed);
        let help = "Process figures left out because the collector already kept the most instances it keeps";
        let descriptor = encoder.encode_descriptor("meshlens_collector_process_instances_overflow", help, None, overflow.metric_type())?;
        overflow.encode(descriptor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::model::key;

    pub(crate) fn resource(service: &str, instance: &str) -> Arc<Resource> {
        let text = |k: &str, v: &str| (key(k), Value::Str(v.into()));
        Arc::new(Resource {
            service: service.into(),
            attributes: vec![
                text("service.namespace", "shop"),
                text("meshlens.workload", &format!("{service}-v1")),
                text("service.version", "v1"),
                text("service.instance.id", instance),
                text("telemetry.sdk.name", "meshlens-proxy"),
            ],
        })
    }

    fn point(resource: &Arc<Resource>, name: &str, at_secs: u64, value: f64, mode: Option<&str>) -> MetricPoint {
        MetricPoint {
            name: name.into(),
            unit: String::new(),
            kind: MetricKind::Sum,
            time_unix_nanos: at_secs * 1_000_000_000,
            value,
            count: 0,
            attributes: mode.map(|m| vec![(key("cpu.mode"), Value::Str(m.into()))]).unwrap_or_default(),
            resource: resource.clone(),
        }
    }

    pub(crate) fn reading(resource: &Arc<Resource>, at: u64, user: f64, system: f64, rss: f64) -> Vec<MetricPoint> {
        vec![
            point(resource, "process.cpu.time", at, user, Some("user")),
            point(resource, "process.cpu.time", at, system, Some("system")),
            point(resource, "process.memory.usage", at, rss, None),
            point(resource, "process.thread.count", at, 2.0, None),
            point(resource, "http.server.request.duration", at, 9.0, None),
        ]
    }

    #[test]
    fn each_instance_keeps_its_latest_figures_and_the_cpu_rate_of_its_last_two_readings() {
        let (a, b) = (resource("checkout", "a"), resource("checkout", "b"));
        let mut instances = Instances::default();
        instances.observe(&reading(&a, 100, 1.0, 0.5, 10e6));
        instances.observe(&reading(&b, 100, 4.0, 0.0, 20e6));
        let first = instances.list();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].key.instance, "a");
        assert_eq!(first[0].key.workload, "checkout-v1");
        assert_eq!(first[0].cpu_cores, None, "one reading gives no rate");
        assert_eq!(first[0].cpu_seconds, Some(1.5));
        // 10 s later, 0.5 s more CPU: 0.05 cores.
        instances.observe(&reading(&a, 110, 1.3, 0.7, 12e6));
        // A stale reading is left out.
        instances.observe(&reading(&a, 105, 9.0, 9.0, 99e6));
        instances.observe(&[point(&a, "process.memory.virtual", 110, 50e6, None)]);
        let a_now = instances.list().into_iter().find(|i| i.key.instance == "a").expect("kept");
        assert!((a_now.cpu_cores.expect("two readings") - 0.05).abs() < 1e-9, "{a_now:?}");
        assert_eq!(a_now.resident_bytes, Some(12e6));
        assert_eq!(a_now.virtual_bytes, Some(50e6), "a figure of the latest reading sent on its own");
        assert_eq!(a_now.threads, Some(2.0));
        assert_eq!(a_now.last_seen_ms, 110_000);

        // Restarted under the same ID: the total went down, so no rate until the next reading.
        instances.observe(&reading(&a, 120, 0.1, 0.0, 8e6));
        let restarted = instances.list().into_iter().find(|i| i.key.instance == "a").expect("kept");
        assert_eq!(restarted.cpu_cores, None);
        instances.observe(&reading(&a, 130, 0.3, 0.0, 8e6));
        let again = instances.list().into_iter().find(|i| i.key.instance == "a").expect("kept");
        assert!((again.cpu_cores.expect("rate") - 0.02).abs() < 1e-9, "{again:?}");
    }

    #[test]
    fn broken_values_and_other_metrics_are_left_out() {
        let a = resource("checkout", "a");
        let mut instances = Instances::default();
        instances.observe(&[point(&a, "process.memory.usage", 100, f64::NAN, None), point(&a, "other", 100, 1.0, None)]);
        assert_eq!(instances.list(), []);
    }

    #[test]
    fn cpu_time_sent_as_deltas_adds_up_to_the_same_figures() {
        let a = resource("checkout", "a");
        let delta = |at, user, system| {
            let mut points = reading(&a, at, user, system, 10e6);
            points.iter_mut().filter(|p| p.name == "process.cpu.time").for_each(|p| p.kind = MetricKind::DeltaSum);
            points
        };
        let mut instances = Instances::default();
        instances.observe(&delta(100, 1.0, 0.5));
        instances.observe(&delta(110, 0.15, 0.05));
        let a_now = instances.list().into_iter().next().expect("listed");
        assert!((a_now.cpu_seconds.expect("total") - 1.7).abs() < 1e-9, "{a_now:?}");
        assert!((a_now.cpu_cores.expect("rate") - 0.02).abs() < 1e-9, "{a_now:?}");
    }

    #[test]
    fn long_identity_parts_are_cut_on_a_character_boundary() {
        let mut instances = Instances::default();
        let long = format!("a{}", "é".repeat(MAX_PART_BYTES));
        instances.observe(&reading(&resource(&long, &long), 100, 1.0, 0.0, 1.0));
        let listed = instances.list();
        let key = &listed[0].key;
        assert_eq!((key.service.len(), key.instance.len()), (MAX_PART_BYTES - 1, MAX_PART_BYTES - 1), "{key:?}");
        assert!(key.service.starts_with("aé") && key.workload.len() <= MAX_PART_BYTES);

        let shop = resource("shop", "a");
        let modes: Vec<MetricPoint> = (0..20).map(|i| point(&shop, "process.cpu.time", 100, 1.0, Some(&i.to_string()))).collect();
        instances.observe(&modes);
        let shop = instances.list().into_iter().find(|i| i.key.service == "shop").expect("kept");
        assert_eq!(shop.cpu_seconds, Some(MAX_MODES as f64), "at most {MAX_MODES} modes kept");
    }

    #[test]
    fn idle_instances_are_forgotten_and_the_count_is_bounded() {
        let mut instances = Instances::default();
        instances.observe(&reading(&resource("checkout", "a"), 100, 1.0, 0.0, 1.0));
        assert_eq!(instances.expire_idle(Duration::from_secs(60)), 0);
        assert_eq!(instances.expire_idle(Duration::ZERO), 1);
        let points: Vec<MetricPoint> = (0..MAX_INSTANCES + 3)
            .map(|i| point(&resource("checkout", &i.to_string()), "process.memory.usage", 100, 1.0, None))
            .collect();
        instances.observe(&points);
        assert_eq!(instances.list().len(), MAX_INSTANCES);
        assert_eq!(instances.overflowed(), 3);
    }

    #[test]
    fn the_figures_are_exposed_per_instance_with_prometheus_names() {
        let shared = Arc::new(Mutex::new(Instances::default()));
        if let Ok(mut instances) = shared.lock() {
            instances.observe(&reading(&resource("checkout", "a\"b"), 100, 1.5, 0.25, 10485760.0));
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(InstancesCollector(shared)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let labels = r#"namespace="shop",service="checkout",workload="checkout-v1",version="v1",instance="a\"b",sdk="meshlens-proxy""#;
        for line in [
            "# TYPE meshlens_process_cpu_seconds counter".to_owned(),
            format!("meshlens_process_cpu_seconds_total{{{labels},mode=\"user\"}} 1.5"),
            format!("meshlens_process_cpu_seconds_total{{{labels},mode=\"system\"}} 0.25"),
            format!("meshlens_process_resident_memory_bytes{{{labels}}} 10485760.0"),
            format!("meshlens_process_threads{{{labels}}} 2.0"),
            "meshlens_collector_process_instances_overflow_total 0".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("meshlens_process_open_fds{"), "a figure not sent is not written:\n{text}");
    }
}
