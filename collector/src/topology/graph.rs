//! The topology graph of a time window, at service, workload or versioned-workload grain.
//!
//! Built with petgraph from the window's merged rollups: nodes are grouped by the chosen
//! grain, parallel edges (several workloads or protocols between the same two nodes) are
//! merged, and each node's inbound traffic is the merge of its incoming edges.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::{Direction, graph::DiGraph, visit::EdgeRef};
use serde::{Deserialize, Serialize};

use super::{
    edges::{NodeKind, NodeRef},
    rollup::{EdgeKey, EdgeStats},
};

/// How nodes are grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// One node per service.
    #[default]
    Service,
    /// One node per workload.
    Workload,
    /// One node per service version.
    Version,
}

/// Traffic figures of an edge or of a node's inbound side.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// Requests in the window.
    pub requests: u64,
    /// Failed requests in the window.
    pub errors: u64,
    /// Requests per second.
    pub request_rate: f64,
    /// Failed / all.
    pub error_ratio: f64,
    /// Linkerd's "actual" success: successful attempts over all attempts, the callers'
    /// retries included (`None` without requests). The sidecars retry only failed attempts,
    /// so a request that succeeded had exactly one successful attempt and every retry
    /// followed a failed one: (requests − errors) / (requests + retries).
    pub actual_success_ratio: Option<f64>,
    /// Median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 90th percentile latency, milliseconds.
    pub p90_ms: Option<f64>,
    /// 95th percentile latency, milliseconds.
    pub p95_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile latency, milliseconds.
    pub p999_ms: Option<f64>,
    /// Request bytes.
    pub request_bytes: u64,
    /// Response bytes.
    pub response_bytes: u64,
    /// Retries the callers' sidecars made for these requests (each request is counted once).
    pub retries: u64,
    /// gRPC messages the callers sent (counted by their sidecars; 0 for HTTP).
    pub request_messages: u64,
    /// gRPC messages the callers received.
    pub response_messages: u64,
    /// Requests by response code.
    pub response_codes: BTreeMap<String, u64>,
}

impl Traffic {
    /// Figures of `stats` over a window of `seconds`.
    pub fn from_stats(stats: &EdgeStats, seconds: f64) -> Self {
        let ms = |q| stats.latency.quantile(q).map(|ns| (ns / 1e4).round() / 100.0);
        Self {
            requests: stats.requests,
            errors: stats.errors,
            request_rate: if seconds > 0.0 { stats.requests as f64 / seconds } else { 0.0 },
            error_ratio: if stats.requests > 0 { stats.errors as f64 / stats.requests as f64 } else { 0.0 },
            actual_success_ratio: (stats.requests > 0).then(|| {
                stats.requests.saturating_sub(stats.errors) as f64 / (stats.requests + stats.retries) as f64
            }),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            request_bytes: stats.request_bytes,
            response_bytes: stats.response_bytes,
            retries: stats.retries,
            request_messages: stats.request_messages,
            response_messages: stats.response_messages,
            response_codes: stats.codes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }
}

/// A node of the view.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Stable ID within the grouping.
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Display name.
    pub label: String,
    /// Namespace.
    pub namespace: String,
    /// Service (or external host).
    pub service: String,
    /// Workload (workload grouping).
    pub workload: Option<String>,
    /// Version (version grouping).
    pub version: Option<String>,
    /// Traffic received.
    pub inbound: Traffic,
    /// Requests sent.
    pub outbound_requests: u64,
}

/// An edge of the view.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeView {
    /// `source->target`.
    pub id: String,
    /// Source node ID.
    pub source: String,
    /// Target node ID.
    pub target: String,
    /// Protocols seen (`http`, `grpc`, ...), joined with `+`.
    pub protocol: String,
    /// Traffic.
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// The topology of one window.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyView {
    /// Grouping used.
    pub grouping: Grouping,
    /// Window start, Unix milliseconds.
    pub start_unix_ms: u64,
    /// Window end, Unix milliseconds.
    pub end_unix_ms: u64,
    /// Seconds the rates are computed over.
    pub rate_seconds: f64,
    /// Nodes.
    pub nodes: Vec<NodeView>,
    /// Edges.
    pub edges: Vec<EdgeView>,
}

/// A node's ID under `grouping` (the `id` of [`NodeView`]).
pub fn node_id(node: &NodeRef, grouping: Grouping) -> String {
    grouped(node, grouping).0
}

fn grouped(node: &NodeRef, grouping: Grouping) -> (String, String, Option<String>, Option<String>) {
    let ns = &*node.namespace;
    let qualify = |name: &str| if ns.is_empty() { name.to_owned() } else { format!("{name}.{ns}") };
    match node.kind {
        NodeKind::Unknown => ("unknown".into(), "unknown".into(), None, None),
        NodeKind::External => (format!("external:{}", node.service), node.service.to_string(), None, None),
        NodeKind::Service => match grouping {
            Grouping::Service => (qualify(&node.service), node.service.to_string(), None, None),
            Grouping::Workload => {
                let workload = node.workload.as_deref().unwrap_or(&node.service);
                (format!("workload:{}", qualify(workload)), workload.to_owned(), Some(workload.to_owned()), None)
            }
            Grouping::Version => {
                let version = node.version.as_deref().unwrap_or("unknown");
                (
                    format!("version:{}:{version}", qualify(&node.service)),
                    format!("{} {version}", node.service),
                    None,
                    Some(version.to_owned()),
                )
            }
        },
    }
}

struct NodeAcc {
    view: NodeView,
}

struct EdgeAcc {
    stats: EdgeStats,
    /// Requests per second: the sum of its edges' (one per protocol).
    rate: f64,
    protocols: BTreeSet<String>,
}

/// Builds the view of a window from its merged edge stats and their request rates; a
/// node's inbound rate is the sum of its incoming edges'.
pub fn build(
    edges: &[(EdgeKey, EdgeStats, f64)],
    grouping: Grouping,
    start_unix_ms: u64,
    end_unix_ms: u64,
    rate_seconds: f64,
) -> TopologyView {
    let mut graph: DiGraph<NodeAcc, EdgeAcc> = DiGraph::new();
    let mut index = HashMap::new();
    let mut node = |graph: &mut DiGraph<NodeAcc, EdgeAcc>, n: &NodeRef| {
        let (id, label, workload, version) = grouped(n, grouping);
        *index.entry(id.clone()).or_insert_with(|| {
            graph.add_node(NodeAcc {
                view: NodeView {
                    id,
                    kind: n.kind,
                    label,
                    namespace: n.namespace.to_string(),
                    service: n.service.to_string(),
                    workload,
                    version,
                    inbound: Traffic::from_stats(&EdgeStats::default(), rate_seconds),
                    outbound_requests: 0,
                },
            })
        })
    };
    for (key, stats, rate) in edges {
        let a = node(&mut graph, &key.source);
        let b = node(&mut graph, &key.destination);
        match graph.find_edge(a, b) {
            Some(e) => {
                graph[e].stats.merge(stats);
                graph[e].rate += rate;
                graph[e].protocols.insert(key.protocol.to_string());
            }
            None => {
                graph.add_edge(a, b, EdgeAcc { stats: stats.clone(), rate: *rate, protocols: [key.protocol.to_string()].into() });
            }
        }
    }
    let mut nodes = Vec::with_capacity(graph.node_count());
    for n in graph.node_indices() {
        let mut inbound = EdgeStats::default();
        let mut inbound_rate = 0.0;
        for e in graph.edges_directed(n, Direction::Incoming) {
            inbound.merge(&e.weight().stats);
            inbound_rate += e.weight().rate;
        }
        let outbound: u64 = graph.edges_directed(n, Direction::Outgoing).map(|e| e.weight().stats.requests).sum();
        let mut view = graph[n].view.clone();
        view.inbound = Traffic { request_rate: inbound_rate, ..Traffic::from_stats(&inbound, rate_seconds) };
        view.outbound_requests = outbound;
        nodes.push(view);
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut edge_views: Vec<EdgeView> = graph
        .edge_references()
        .map(|e| {
            let (source, target) = (&graph[e.source()].view.id, &graph[e.target()].view.id);
            EdgeView {
                id: format!("{source}->{target}"),
                source: source.clone(),
                target: target.clone(),
                protocol: e.weight().protocols.iter().cloned().collect::<Vec<_>>().join("+"),
                traffic: Traffic { request_rate: e.weight().rate, ..Traffic::from_stats(&e.weight().stats, rate_seconds) },
            }
        })
        .collect();
    edge_views.sort_by(|a, b| a.id.cmp(&b.id));
    TopologyView { grouping, start_unix_ms, end_unix_ms, rate_seconds, nodes, edges: edge_views }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actual_success_counts_every_attempt_retries_included() {
        // 400 requests, one failed after its retries; 10 retries in all: 399 of 410 attempts
        // succeeded.
        let stats = EdgeStats { requests: 400, errors: 1, retries: 10, ..EdgeStats::default() };
        let traffic = Traffic::from_stats(&stats, 60.0);
        assert_eq!(traffic.error_ratio, 0.0025);
        assert_eq!(traffic.actual_success_ratio, Some(399.0 / 410.0));
        // Without retries it is the success ratio; without requests there is none.
        let plain = Traffic::from_stats(&EdgeStats { requests: 4, errors: 1, ..EdgeStats::default() }, 60.0);
        assert_eq!(plain.actual_success_ratio, Some(0.75));
        assert_eq!(Traffic::from_stats(&EdgeStats::default(), 60.0).actual_success_ratio, None);
    }
}
