//! Builds the `edges` and `services` tables ([`super::schema::EDGES`], [`super::schema::SERVICES`])
//! from the topology's per-second rollups when a query reads them. The rollups are already
//! aggregated, so this is one row per edge and second, never a scan of spans.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use datafusion::arrow::{
    array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder, UInt64Builder},
    error::ArrowError,
    record_batch::RecordBatch,
};

use super::{
    columnar::{Builders, column_builders},
    schema,
};
use crate::topology::{
    edges::NodeRef,
    rollup::{EdgeKey, EdgeStats},
};

use super::dict::Dict;

/// Nanoseconds per millisecond.
const MS: f64 = 1e6;

struct EdgeRows {
    time: TimestampNanosecondBuilder,
    source_kind: Dict,
    source_namespace: Dict,
    source_service: Dict,
    source_workload: Dict,
    source_version: Dict,
    destination_kind: Dict,
    destination_namespace: Dict,
    destination_service: Dict,
    destination_workload: Dict,
    destination_version: Dict,
    protocol: Dict,
    requests: UInt64Builder,
    errors: UInt64Builder,
    request_bytes: UInt64Builder,
    response_bytes: UInt64Builder,
    retries: UInt64Builder,
    request_messages: UInt64Builder,
    response_messages: UInt64Builder,
    p50_ms: Float64Builder,
    p90_ms: Float64Builder,
    p99_ms: Float64Builder,
    p999_ms: Float64Builder,
    response_codes: StringBuilder,
}

column_builders!(EdgeRows {
    time, source_kind, source_namespace, source_service, source_workload, source_version,
    destination_kind, destination_namespace, destination_service, destination_workload,
    destination_version, protocol, requests, errors, request_bytes, response_bytes, retries,
    request_messages, response_messages, p50_ms, p90_ms, p99_ms, p999_ms, response_codes,
});

impl Default for EdgeRows {
    fn default() -> Self {
        Self {
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            source_kind: Dict::new(),
            source_namespace: Dict::new(),
            source_service: Dict::new(),
            source_workload: Dict::new(),
            source_version: Dict::new(),
            destination_kind: Dict::new(),
            destination_namespace: Dict::new(),
            destination_service: Dict::new(),
            destination_workload: Dict::new(),
            destination_version: Dict::new(),
            protocol: Dict::new(),
            requests: UInt64Builder::new(),
            errors: UInt64Builder::new(),
            request_bytes: UInt64Builder::new(),
            response_bytes: UInt64Builder::new(),
            retries: UInt64Builder::new(),
            request_messages: UInt64Builder::new(),
            response_messages: UInt64Builder::new(),
            p50_ms: Float64Builder::new(),
            p90_ms: Float64Builder::new(),
            p99_ms: Float64Builder::new(),
            p999_ms: Float64Builder::new(),
            response_codes: StringBuilder::new(),
        }
    }
}

fn node(kind: &mut Dict, ns: &mut Dict, service: &mut Dict, workload: &mut Dict, version: &mut Dict, n: &NodeRef) {
    kind.append_value(n.kind.as_str());
    ns.append_value(&n.namespace);
    service.append_value(&n.service);
    workload.append_option(n.workload.as_deref());
    version.append_option(n.version.as_deref());
}

impl EdgeRows {
    fn append(&mut self, key: &EdgeKey, second: u64, stats: &EdgeStats) {
        self.time.append_value(i64::try_from(second).unwrap_or(i64::MAX / 1_000_000_000) * 1_000_000_000);
        node(
            &mut self.source_kind,
            &mut self.source_namespace,
            &mut self.source_service,
            &mut self.source_workload,
            &mut self.source_version,
            &key.source,
        );
        node(
            &mut self.destination_kind,
            &mut self.destination_namespace,
            &mut self.destination_service,
            &mut self.destination_workload,
            &mut self.destination_version,
            &key.destination,
        );
        self.protocol.append_value(&key.protocol);
        self.requests.append_value(stats.requests);
        self.errors.append_value(stats.errors);
        self.request_bytes.append_value(stats.request_bytes);
        self.response_bytes.append_value(stats.response_bytes);
        self.retries.append_value(stats.retries);
        self.request_messages.append_value(stats.request_messages);
        self.response_messages.append_value(stats.response_messages);
        let q = |q| stats.latency.quantile(q).unwrap_or(0.0) / MS;
        self.p50_ms.append_value(q(0.5));
        self.p90_ms.append_value(q(0.9));
        self.p99_ms.append_value(q(0.99));
        self.p999_ms.append_value(q(0.999));
        let codes: serde_json::Map<String, serde_json::Value> =
            stats.codes.iter().map(|(code, n)| (code.to_string(), (*n).into())).collect();
        self.response_codes.append_value(serde_json::Value::Object(codes).to_string());
    }
}

fn finish(builders: &mut impl Builders, columns: &[schema::Column]) -> Result<RecordBatch, ArrowError> {
    let arrays: Vec<ArrayRef> = builders.each_mut().into_iter().map(|b| b.finish()).collect();
    RecordBatch::try_new(schema::schema(columns), arrays)
}

/// The `edges` table from rollup buckets, in time order.
pub fn edges_batch<'a>(buckets: impl Iterator<Item = (&'a EdgeKey, u64, &'a EdgeStats)>) -> Result<RecordBatch, ArrowError> {
    let mut sorted: Vec<_> = buckets.collect();
    sorted.sort_by_key(|(_, second, _)| *second);
    let mut rows = EdgeRows::default();
    for (key, second, stats) in sorted {
        rows.append(key, second, stats);
    }
    finish(&mut rows, schema::EDGES)
}

#[derive(Debug, Default)]
struct ServiceFacts {
    kind: &'static str,
    workloads: BTreeSet<Arc<str>>,
    versions: BTreeSet<Arc<str>>,
    operations: usize,
    inbound: u64,
    inbound_errors: u64,
    outbound: u64,
    first: Option<u64>,
    last: Option<u64>,
}

impl ServiceFacts {
    fn seen(&mut self, node: &NodeRef, second: u64) {
        self.kind = node.kind.as_str();
        self.workloads.extend(node.workload.clone());
        self.versions.extend(node.version.clone());
        self.first = Some(self.first.map_or(second, |f| f.min(second)));
        self.last = Some(self.last.map_or(second, |l| l.max(second)));
    }
}

struct ServiceRows {
    service: StringBuilder,
    namespace: StringBuilder,
    kind: StringBuilder,
    workloads: StringBuilder,
    versions: StringBuilder,
    operations: Int64Builder,
    inbound_requests: UInt64Builder,
    inbound_errors: UInt64Builder,
    outbound_requests: UInt64Builder,
    first_seen: TimestampNanosecondBuilder,
    last_seen: TimestampNanosecondBuilder,
}

column_builders!(ServiceRows {
    service, namespace, kind, workloads, versions, operations, inbound_requests, inbound_errors,
    outbound_requests, first_seen, last_seen,
});

fn join(set: &BTreeSet<Arc<str>>) -> String {
    set.iter().map(|s| &**s).collect::<Vec<_>>().join(",")
}

/// The `services` table: every service in the rollups or with stored spans
/// (`operations` maps a service to its distinct operation count).
pub fn services_batch<'a>(
    buckets: impl Iterator<Item = (&'a EdgeKey, u64, &'a EdgeStats)>,
    operations: &BTreeMap<Arc<str>, usize>,
) -> Result<RecordBatch, ArrowError> {
    let mut facts: BTreeMap<(Arc<str>, Arc<str>), ServiceFacts> = BTreeMap::new();
    let key = |n: &NodeRef| (n.service.clone(), n.namespace.clone());
    for (edge, second, stats) in buckets {
        let source = facts.entry(key(&edge.source)).or_default();
        source.seen(&edge.source, second);
        source.outbound += stats.requests;
        let destination = facts.entry(key(&edge.destination)).or_default();
        destination.seen(&edge.destination, second);
        destination.inbound += stats.requests;
        destination.inbound_errors += stats.errors;
    }
    for (service, n) in operations {
        let known = facts.iter_mut().find(|((s, _), _)| s == service);
        match known {
            Some((_, f)) => f.operations = *n,
            None => {
                let f = facts.entry((service.clone(), "".into())).or_default();
                f.kind = "service";
                f.operations = *n;
            }
        }
    }
    let mut rows = ServiceRows {
        service: StringBuilder::new(),
        namespace: StringBuilder::new(),
        kind: StringBuilder::new(),
        workloads: StringBuilder::new(),
        versions: StringBuilder::new(),
        operations: Int64Builder::new(),
        inbound_requests: UInt64Builder::new(),
        inbound_errors: UInt64Builder::new(),
        outbound_requests: UInt64Builder::new(),
        first_seen: TimestampNanosecondBuilder::new().with_timezone("UTC"),
        last_seen: TimestampNanosecondBuilder::new().with_timezone("UTC"),
    };
    let nanos = |s: u64| i64::try_from(s).unwrap_or(0).saturating_mul(1_000_000_000);
    for ((service, namespace), f) in &facts {
        rows.service.append_value(&**service);
        rows.namespace.append_value(&**namespace);
        rows.kind.append_value(f.kind);
        rows.workloads.append_value(join(&f.workloads));
        rows.versions.append_value(join(&f.versions));
        rows.operations.append_value(i64::try_from(f.operations).unwrap_or(i64::MAX));
        rows.inbound_requests.append_value(f.inbound);
        rows.inbound_errors.append_value(f.inbound_errors);
        rows.outbound_requests.append_value(f.outbound);
        rows.first_seen.append_option(f.first.map(nanos));
        rows.last_seen.append_option(f.last.map(nanos));
    }
    finish(&mut rows, schema::SERVICES)
}
