//! Istio-compatible metrics, as an option (`--istio-metrics`): the mesh's requests under
//! Istio's standard names and labels, so existing Istio Grafana dashboards and Kiali's graph
//! queries work against meshlens unchanged.
//!
//! `reporter` is `source` for what a caller's sidecar (or an SDK's CLIENT span) saw and
//! `destination` for requests from callers outside the mesh. Identity labels meshlens does
//! not know (principals, clusters) are `unknown`; `connection_security_policy` is `none`
//! until the mesh has mTLS.
//!
//! `istio_request_messages_total` and `istio_response_messages_total` count the messages of
//! gRPC calls, from the counts sidecars put on their records.
//!
//! TCP series (`istio_tcp_connections_opened_total`, `…_closed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`, reporter `source`) come
//! from the sidecars' per-upstream connection counters, exported as cumulative OTLP sums
//! (`meshlens.proxy.tcp.*` with `meshlens.direction=upstream`): the collector adds each
//! sum's growth since the previous export. As in Istio, `sent` is what the destination sent
//! back (bytes the caller's sidecar read) and `received` what it received.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use std::{sync::Arc, time::Duration};

use crate::{
    model::{MetricKind, MetricPoint, Value, attr},
    series_ttl::LastSeen,
    topology::{EdgeObservation, NodeKind, NodeRef},
};

/// Istio's default buckets for `istio_request_duration_milliseconds`.
const DURATION_MS_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
    300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Buckets for request and response sizes, bytes.
const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Istio's standard labels naming both ends.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioPeers {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: &'static str,
    source_app: String,
    source_version: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_cluster: &'static str,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: &'static str,
    destination_app: String,
    destination_version: String,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_cluster: &'static str,
}

/// Istio's standard request metric labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    #[prometheus(flatten)]
    peers: IstioPeers,
    request_protocol: String,
    response_code: String,
    grpc_response_status: String,
    response_flags: String,
    connection_security_policy: &'static str,
}

fn known(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("unknown").to_owned()
}

/// Istio's standard TCP metric labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioTcpLabels {
    #[prometheus(flatten)]
    peers: IstioPeers,
    request_protocol: &'static str,
    response_flags: &'static str,
    connection_security_policy: &'static str,
}

impl IstioPeers {
    fn of(s: &NodeRef, d: &NodeRef) -> Self {
        let reporter = if s.kind == NodeKind::Unknown { "destination" } else { "source" };
        let service_host = match d.kind {
            NodeKind::Service if !d.namespace.is_empty() => format!("{}.{}.svc.cluster.local", d.service, d.namespace),
            _ => d.service.to_string(),
        };
        let source_app = if s.kind == NodeKind::Unknown { "unknown".to_owned() } else { s.service.to_string() };
        Self {
            reporter,
            source_workload: known(s.workload.as_deref().or((s.kind == NodeKind::Service).then_some(&*s.service))),
            source_workload_namespace: known(Some(&s.namespace)),
            source_principal: "unknown",
            source_canonical_service: source_app.clone(),
            source_app,
            source_version: known(s.version.as_deref()),
            source_canonical_revision: known(s.version.as_deref()),
            source_cluster: "unknown",
            destination_workload: known(d.workload.as_deref().or((d.kind == NodeKind::Service).then_some(&*d.service))),
            destination_workload_namespace: known(Some(&d.namespace)),
            destination_principal: "unknown",
            destination_app: d.service.to_string(),
            destination_version: known(d.version.as_deref()),
            destination_service: service_host,
            destination_service_name: d.service.to_string(),
            destination_service_namespace: known(Some(&d.namespace)),
            destination_canonical_service: d.service.to_string(),
            destination_canonical_revision: known(d.version.as_deref()),
            destination_cluster: "unknown",
        }
    }
}

impl IstioLabels {
    /// The labels of one observed request.
    pub fn of(o: &EdgeObservation) -> Self {
        Self {
            peers: IstioPeers::of(&o.source, &o.destination),
            request_protocol: o.protocol.to_string(),
            response_code: o.http_status.map_or_else(|| "0".to_owned(), |c| c.to_string()),
            grpc_response_status: o.grpc_status.map(|c| c.to_string()).unwrap_or_default(),
            response_flags: o.response_flags.to_string(),
            connection_security_policy: "none",
        }
    }
}

/// The Istio families.
#[derive(Debug, Clone)]
pub struct IstioMetrics {
    requests: Family<IstioLabels, Counter>,
    duration: Family<IstioLabels, Histogram, fn() -> Histogram>,
    request_bytes: Family<IstioLabels, Histogram, fn() -> Histogram>,
    response_bytes: Family<IstioLabels, Histogram, fn() -> Histogram>,
    request_messages: Family<IstioLabels, Counter>,
    response_messages: Family<IstioLabels, Counter>,
    seen: Arc<LastSeen<IstioLabels>>,
    tcp_opened: Family<IstioTcpLabels, Counter>,
    tcp_closed: Family<IstioTcpLabels, Counter>,
    tcp_sent: Family<IstioTcpLabels, Counter>,
    tcp_received: Family<IstioTcpLabels, Counter>,
    tcp_seen: Arc<LastSeen<IstioTcpLabels>>,
    /// The last cumulative value of each sidecar's upstream sum, to count its growth.
    tcp_last: Arc<std::sync::Mutex<std::collections::HashMap<(IstioTcpLabels, &'static str), u64>>>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_MS_BUCKETS)
}

fn bytes_histogram() -> Histogram {
    Histogram::new(BYTES_BUCKETS)
}

impl Default for IstioMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            request_messages: Family::default(),
            response_messages: Family::default(),
            seen: Arc::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_seen: Arc::default(),
            tcp_last: Arc::default(),
        }
    }
}

impl IstioMetrics {
    /// Registers the families.
    pub fn register(&self, r: &mut Registry) {
        r.register("istio_requests", "Requests, as Istio counts them", self.requests.clone());
        r.register("istio_request_duration_milliseconds", "Request duration, as Istio measures it", self.duration.clone());
        r.register("istio_request_bytes", "Request body sizes", self.request_bytes.clone());
        r.register("istio_response_bytes", "Response body sizes", self.response_bytes.clone());
        r.register("istio_request_messages", "gRPC messages callers sent", self.request_messages.clone());
        r.register("istio_response_messages", "gRPC messages callers received", self.response_messages.clone());
        r.register("istio_tcp_connections_opened", "TCP connections opened, as Istio counts them", self.tcp_opened.clone());
        r.register("istio_tcp_connections_closed", "TCP connections closed, as Istio counts them", self.tcp_closed.clone());
        r.register("istio_tcp_sent_bytes", "Bytes the destination sent over TCP", self.tcp_sent.clone());
        r.register("istio_tcp_received_bytes", "Bytes the destination received over TCP", self.tcp_received.clone());
    }

    /// Counts the growth of sidecars' per-upstream TCP sums.
    pub fn observe_tcp(&self, points: &[MetricPoint]) {
        for p in points {
            let (family, metric) = match p.name.as_str() {
                "meshlens.proxy.tcp.connections.opened" => (&self.tcp_opened, "opened"),
                "meshlens.proxy.tcp.connections.closed" => (&self.tcp_closed, "closed"),
                // Read by the caller's sidecar: what the destination sent.
                "meshlens.proxy.tcp.received" => (&self.tcp_sent, "sent"),
                "meshlens.proxy.tcp.sent" => (&self.tcp_received, "received"),
                _ => continue,
            };
            // Growth is read between cumulative points, or is the point (a delta sum).
            if !matches!(p.kind, MetricKind::Sum | MetricKind::DeltaSum)
                || attr(&p.attributes, meshlens_common::semconv::DIRECTION).and_then(Value::as_str) != Some("upstream")
            {
                continue;
            }
            let Some(destination) = NodeRef::of_mesh_attrs(&p.attributes, &meshlens_common::semconv::DESTINATION_KEYS) else {
                continue;
            };
            let labels = IstioTcpLabels {
                peers: IstioPeers::of(&NodeRef::of_resource(&p.resource), &destination),
                request_protocol: "tcp",
                response_flags: "-",
                connection_security_policy: "none",
            };
            let value = p.value.max(0.0) as u64;
            let growth = if p.kind == MetricKind::DeltaSum {
                value
            } else {
                let Ok(mut last) = self.tcp_last.lock() else { return };
                let previous = last.insert((labels.clone(), metric), value);
                // A smaller value means the sidecar restarted: count from zero.
                match previous {
                    Some(before) if value >= before => value - before,
                    _ => value,
                }
            };
            self.tcp_seen.touch(&labels);
            family.get_or_create(&labels).inc_by(growth);
        }
    }

    /// Counts one request.
    pub fn observe(&self, o: &EdgeObservation) {
        let labels = IstioLabels::of(o);
        self.seen.touch(&labels);
        self.duration.get_or_create(&labels).observe(o.duration_nanos as f64 / 1e6);
        self.request_bytes.get_or_create(&labels).observe(o.request_bytes as f64);
        self.response_bytes.get_or_create(&labels).observe(o.response_bytes as f64);
        if let Some((sent, received)) = o.messages {
            self.request_messages.get_or_create(&labels).inc_by(sent);
            self.response_messages.get_or_create(&labels).inc_by(received);
        }
        self.requests.get_or_create(&labels).inc();
    }

    /// Removes the series not updated within `ttl`; returns how many label sets.
    pub fn expire_idle(&self, ttl: Duration) -> usize {
        let idle = self.seen.expire(ttl);
        for labels in &idle {
            self.requests.remove(labels);
            self.duration.remove(labels);
            self.request_bytes.remove(labels);
            self.response_bytes.remove(labels);
            self.request_messages.remove(labels);
            self.response_messages.remove(labels);
        }
        let idle_tcp = self.tcp_seen.expire(ttl);
        for labels in &idle_tcp {
            for family in [&self.tcp_opened, &self.tcp_closed, &self.tcp_sent, &self.tcp_received] {
                family.remove(labels);
            }
            if let Ok(mut last) = self.tcp_last.lock() {
                last.retain(|(l, _), _| l != labels);
            }
        }
        idle.len() + idle_tcp.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::intern,
        topology::{Node, NodeKind},
    };

    fn call(messages: Option<(u64, u64)>) -> EdgeObservation {
        let node = |service: &str| -> NodeRef {
            Node { kind: NodeKind::Service, namespace: intern("shop"), service: intern(service), workload: None, version: None }.into()
        };
        EdgeObservation {
            source: node("web"),
            destination: node("feed"),
            protocol: intern("grpc"),
            start_unix_nanos: 1,
            duration_nanos: 2_000_000,
            error: false,
            response_code: intern("200"),
            http_status: Some(200),
            grpc_status: Some(0),
            response_flags: intern("-"),
            request_bytes: 10,
            response_bytes: 20,
            retries: 0,
            messages,
            trace_id: None,
        }
    }

    #[test]
    fn grpc_calls_count_their_messages_as_istio_does() {
        let metrics = IstioMetrics::default();
        metrics.observe(&call(Some((1, 40))));
        metrics.observe(&call(Some((1, 1))));
        metrics.observe(&call(None));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let total = |name: &str| {
            let values = text.lines().filter(|l| l.starts_with(name)).map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned());
            values.collect::<Vec<_>>()
        };
        assert_eq!(total("istio_request_messages_total{"), ["2"], "{text}");
        assert_eq!(total("istio_response_messages_total{"), ["41"], "{text}");
        assert_eq!(total("istio_requests_total{"), ["3"], "a call without counts still counts as a request");
    }

    #[test]
    fn tcp_bytes_grow_between_cumulative_sums_and_by_each_delta() {
        use crate::model::{Resource, key};
        let text = |k: &str, v: &str| (key(k), Value::Str(v.into()));
        let resource = Arc::new(Resource { service: "shop".into(), attributes: vec![text("service.namespace", "test")] });
        let point = |kind, value| MetricPoint {
            name: "meshlens.proxy.tcp.sent".into(),
            unit: "By".into(),
            kind,
            time_unix_nanos: 1,
            value,
            count: 0,
            attributes: vec![
                text(meshlens_common::semconv::DIRECTION, "upstream"),
                text("meshlens.destination.service", "db"),
                text("meshlens.destination.namespace", "test"),
            ],
            resource: resource.clone(),
        };
        let metrics = IstioMetrics::default();
        metrics.observe_tcp(&[point(MetricKind::Sum, 100.0), point(MetricKind::Sum, 150.0), point(MetricKind::DeltaSum, 7.0)]);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        let received: Vec<&str> = out.lines().filter(|l| l.starts_with("istio_tcp_received_bytes_total{")).collect();
        assert!(received.len() == 1 && received[0].ends_with(" 157"), "150 grown, then 7 more:\n{out}");
    }
}
