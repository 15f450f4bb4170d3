//! What the meshlens sidecar and collector agree on.
//!
//! The sidecar writes mesh attributes on every span, log record and metric point; the
//! collector reads them to build the topology. Their names live here, once, so the two
//! sides cannot drift apart. Duration syntax (`250ms`, `1.5s`, `1m30s`) is shared too, and
//! so are trace and span IDs and the `google.rpc` messages that carry OTLP errors and retry
//! hints, as is the `/metrics` collector of the process's own CPU and memory, and the
//! negotiation of `/metrics`' format, and the TLS settings read from PEM files.
#![forbid(unsafe_code)]

pub mod accept;
pub mod duration;
pub mod exposition;
pub mod hex;
pub mod ids;
pub mod process;
pub mod rpc;
pub mod semconv;
#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki;
pub mod time;
pub mod tls;
