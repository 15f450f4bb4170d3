//! The demo mesh: a small shop of services, its port plan, and each sidecar's config.
//!
//! ```text
//!  loadgen ─▶ frontend ─┬─▶ catalog ─┬─▶ reviews v1 (80%) / v2 (15%) / v3 (5%) ─▶ ratings (slow)
//!                       │            └─▶ inventory (gRPC)
//!                       └─▶ checkout ─┬─▶ payments (fails ~5%)
//!            (502s retried once)      └─▶ inventory (gRPC)
//! ```

use std::net::SocketAddr;

use meshlens_proxy::{WorkloadIdentity, config::OtlpProtocol};

use super::workload::Call;

/// One workload of the mesh.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadDef {
    /// Service.
    pub service: &'static str,
    /// Version.
    pub version: &'static str,
    /// Share of the service's traffic.
    pub weight: u32,
    /// Base latency, milliseconds.
    pub latency_ms: u64,
    /// Extra random latency, milliseconds.
    pub jitter_ms: u64,
    /// Share of requests that fail.
    pub error_ratio: f64,
    /// Calls made per request (see [`Call`]'s syntax).
    pub calls: &'static [&'static str],
}

const fn workload(service: &'static str, version: &'static str, weight: u32, latency_ms: u64, jitter_ms: u64, error_ratio: f64, calls: &'static [&'static str]) -> WorkloadDef {
    WorkloadDef { service, version, weight, latency_ms, jitter_ms, error_ratio, calls }
}

/// The shop: 7 services, 9 workloads, one canary split, one flaky edge, one slow
/// workload, and a gRPC edge.
pub const SHOP: &[WorkloadDef] = &[
    workload("frontend", "v1", 1, 1, 2, 0.0, &["http://catalog/products", "http://checkout/cart@0.3"]),
    workload("catalog", "v1", 1, 2, 2, 0.0, &["http://reviews/reviews", "grpc://inventory/shop.Inventory/Check"]),
    workload("reviews", "v1", 80, 2, 2, 0.0, &[]),
    workload("reviews", "v2", 15, 3, 3, 0.0, &["http://ratings/ratings"]),
    workload("reviews", "v3", 5, 3, 3, 0.0, &["http://ratings/ratings"]),
    workload("ratings", "v1", 1, 60, 80, 0.0, &[]),
    workload("inventory", "v1", 1, 1, 1, 0.0, &[]),
    workload("checkout", "v1", 1, 3, 3, 0.0, &["http://payments/charge", "grpc://inventory/shop.Inventory/Reserve"]),
    workload("payments", "v1", 1, 5, 5, 0.05, &[]),
];

/// The namespace of the demo's services.
pub const NAMESPACE: &str = "shop";

/// A workload with its addresses.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its definition.
    pub def: WorkloadDef,
    /// Its identity.
    pub identity: WorkloadIdentity,
    /// The application's address.
    pub app: SocketAddr,
    /// Its sidecar's inbound address.
    pub inbound: SocketAddr,
    /// Its sidecar's outbound address.
    pub outbound: SocketAddr,
}

impl Planned {
    /// The calls it makes.
    pub fn calls(&self) -> anyhow::Result<Vec<Call>> {
        self.def.calls.iter().map(|c| c.parse::<Call>().map_err(anyhow::Error::msg)).collect()
    }
}

/// Ports this process has handed out: a port is free only until its owner binds it, so
/// the same one must not be handed out twice meanwhile.
static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free loopback address, below the kernel's ephemeral range (32768 and up) so that no
/// outgoing connection takes it as its source port before the demo binds it, and never
/// one this process handed out before.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !given.contains(&port) && std::net::TcpListener::bind(addr).is_ok() {
            given.insert(port);
            return Ok(addr);
        }
    }
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// Gives each workload its three addresses.
pub fn plan(defs: &[WorkloadDef]) -> std::io::Result<Vec<Planned>> {
    defs.iter()
        .map(|def| {
            Ok(Planned {
                def: *def,
                identity: WorkloadIdentity::new(NAMESPACE, def.service, &format!("{}-{}", def.service, def.version), def.version),
                app: free_addr()?,
                inbound: free_addr()?,
                outbound: free_addr()?,
            })
        })
        .collect()
}

/// The paths callers use on `service` (the load generator calls the frontend's `/`): its
/// route templates.
pub fn route_paths(service: &str) -> Vec<String> {
    let mut paths: Vec<String> = SHOP
        .iter()
        .flat_map(|w| w.calls)
        .filter_map(|c| c.parse::<Call>().ok())
        .filter(|c| c.service == service && !c.grpc)
        .map(|c| c.path)
        .collect();
    if service == "frontend" {
        paths.push("/".into());
    }
    paths.sort();
    paths.dedup();
    paths
}

/// The service whose callers retry: checkout, which fails when payments does. Traces show
/// each attempt, and the flaky `checkout → payments` edge keeps its ~5 % of errors.
pub const RETRIED: &str = "checkout";

/// Where one sidecar listens, and its application.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// Other sidecars call it here.
    pub inbound: SocketAddr,
    /// Its application.
    pub app: SocketAddr,
    /// Its application calls out through here.
    pub outbound: SocketAddr,
    /// Its admin server (`/metrics`, `/tap`).
    pub admin: SocketAddr,
}

/// A list of TOML strings.
fn toml_strings(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The configuration file of one workload's sidecar: its identity and listeners, the shop's
/// service table (each service's endpoints with their weights and its routes, the default
/// timeouts;
/// checkout's callers retry a 502, 503 or 504, or gRPC UNAVAILABLE, once after 25 ms, as a
/// mesh user would set it for an idempotent call), and the collector at `otlp`, reached
/// over `protocol`.
pub fn sidecar_toml(
    identity: &WorkloadIdentity,
    at: Listeners,
    planned: &[Planned],
    (protocol, otlp): (OtlpProtocol, SocketAddr),
) -> String {
    let protocol = match protocol {
        OtlpProtocol::Grpc => "grpc",
        OtlpProtocol::HttpProtobuf => "http/protobuf",
    };
    let mut toml = format!(
        "[workload]\nservice = {:?}\nworkload = {:?}\nversion = {:?}\nnamespace = {:?}\n\n\
         [inbound]\nlisten = \"{}\"\napp = \"{}\"\nroutes = {}\n\n[outbound]\nlisten = \"{}\"\n\n[admin]\nlisten = \"{}\"\n\n\
         [telemetry]\notlp_endpoint = \"http://{otlp}\"\notlp_protocol = \"{protocol}\"\nflush_interval = \"500ms\"\n\
         metrics_interval = \"5s\"\n",
        &*identity.service, &*identity.workload, &*identity.version, &*identity.namespace,
        at.inbound, at.app, toml_strings(&route_paths(&identity.service)), at.outbound, at.admin,
    );
    let mut seen = std::collections::HashSet::new();
    for name in planned.iter().map(|p| p.def.service).filter(|s| seen.insert(*s)) {
        let endpoints: Vec<String> = planned
            .iter()
            .filter(|p| p.def.service == name)
            .map(|p| format!("{{ address = \"{}\", version = {:?}, weight = {} }}", p.inbound, p.def.version, p.def.weight))
            .collect();
        toml.push_str(&format!(
            "\n[[services]]\nname = {name:?}\nnamespace = {NAMESPACE:?}\nendpoints = [{}]\nroutes = {}\n",
            endpoints.join(", "),
            toml_strings(&route_paths(name)),
        ));
        if name == RETRIED {
            toml.push_str("[services.retry]\nattempts = 2\non = [\"gateway-error\", \"unavailable\"]\n");
            toml.push_str("backoff = \"25ms\"\nmax_body_bytes = 65536\n");
        }
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shop_is_the_mesh_the_demo_promises() {
        let services: std::collections::BTreeSet<_> = SHOP.iter().map(|w| w.service).collect();
        assert!(services.len() >= 5 && SHOP.len() >= 7);
        let reviews: Vec<u32> = SHOP.iter().filter(|w| w.service == "reviews").map(|w| w.weight).collect();
        assert_eq!(reviews, [80, 15, 5]);
        assert!(SHOP.iter().any(|w| w.error_ratio > 0.0), "a flaky edge");
        let flaky: Vec<&str> = SHOP.iter().filter(|w| w.error_ratio > 0.0).map(|w| w.service).collect();
        let retried = SHOP.iter().find(|w| w.service == RETRIED).expect("the retried service is in the shop");
        assert!(
            retried.calls.iter().filter_map(|c| c.parse::<Call>().ok()).any(|c| flaky.contains(&c.service.as_str())),
            "the retried service calls the flaky one, whose own edge stays flaky"
        );
        assert!(SHOP.iter().any(|w| w.latency_ms >= 50), "a slow workload");
        assert!(SHOP.iter().flat_map(|w| w.calls).any(|c| c.starts_with("grpc://")), "a gRPC edge");
        for w in SHOP {
            for c in w.calls {
                let call: Call = c.parse().expect("valid call");
                assert!(services.contains(call.service.as_str()), "{c} calls an unknown service");
            }
        }
    }

    #[test]
    fn every_sidecar_configuration_loads_as_the_shop_describes_it() {
        use meshlens_proxy::ProxyConfig;
        let planned = plan(SHOP).expect("ports");
        let otlp = (OtlpProtocol::HttpProtobuf, SocketAddr::from(([127, 0, 0, 1], 4318)));
        for p in &planned {
            let at = Listeners { inbound: p.inbound, app: p.app, outbound: p.outbound, admin: free_addr().expect("port") };
            let toml = sidecar_toml(&p.identity, at, &planned, otlp);
            let config = ProxyConfig::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
            assert_eq!(config.identity.workload, p.identity.workload);
            let listeners = (config.inbound_listen, config.app, config.outbound_listen, config.admin_listen);
            assert_eq!(listeners, (p.inbound, p.app, p.outbound, at.admin));
            assert_eq!(config.telemetry.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
            assert_eq!(config.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
            assert_eq!(config.services.len(), 7, "{toml}");
            let reviews = config.services.iter().find(|s| &*s.name == "reviews").expect("reviews");
            assert_eq!(reviews.endpoints.iter().map(|e| e.weight).collect::<Vec<_>>(), [80, 15, 5]);
            assert_eq!(reviews.endpoints[1].identity.workload.as_ref(), "reviews-v2");
            for service in &config.services {
                let retry = service.retry.as_deref();
                assert_eq!(retry.is_some(), &*service.name == RETRIED, "{}", service.name);
                if let Some(retry) = retry {
                    assert_eq!(retry.attempts, 2);
                    assert!(retry.on.gateway_error && retry.on.grpc_codes[14] && !retry.on.server_error);
                }
            }
        }
    }
}
