//! The connections export opens: plain TCP for `http://` endpoints, rustls over TCP
//! (hyper-rustls) for `https://` ones, offering ALPN `h2` to a gRPC collector and
//! `http/1.1` to an OTLP/HTTP one. Both transports connect through here, so their TCP
//! settings are the same.

use std::{sync::Arc, time::Duration};

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

/// Longest wait for a TCP connection to the collector.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A TCP connector: no Nagle delay (export requests are written whole), a bounded connect,
/// and any scheme (TLS, when wanted, is layered on by [`tls`]).
pub fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    connector
}

/// The HTTP version a connection carries, which the TLS handshake offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 (OTLP/gRPC).
    H2,
    /// HTTP/1.1 (OTLP/HTTP).
    Http1,
}

/// A connector opening TLS connections configured by `config` (`https://` URIs only).
pub fn tls(config: &Arc<rustls::ClientConfig>, alpn: Alpn) -> HttpsConnector<HttpConnector> {
    let builder = HttpsConnectorBuilder::new().with_tls_config(rustls::ClientConfig::clone(config)).https_only();
    match alpn {
        Alpn::H2 => builder.enable_http2().wrap_connector(tcp()),
        Alpn::Http1 => builder.enable_http1().wrap_connector(tcp()),
    }
}
