//! The CLI's requests to a collector's web port (`--collector`, `--collector-ca`): plain HTTP,
//! or TLS for an `https://` address, trusting the CA file given or the system's roots.

use std::{fmt, net::SocketAddr, path::Path, str::FromStr};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use meshlens_common::tls::{ClientTls, TlsFiles};

/// A collector's web address: `PORT` (on 127.0.0.1), `HOST:PORT`, or either behind
/// `http://` or `https://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAddress {
    https: bool,
    /// `host:port`.
    authority: String,
}

impl FromStr for WebAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (https, rest) = match (text.strip_prefix("https://"), text.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => (false, text),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Ok(port) = rest.parse::<u16>() {
            return Ok(Self { https, authority: format!("127.0.0.1:{port}") });
        }
        let authority: http::uri::Authority = rest.parse().map_err(|e| format!("{text:?} is not a port or host:port: {e}"))?;
        if authority.port_u16().is_none() || authority.as_str().contains('@') {
            return Err(format!("{text:?} is not a port or host:port"));
        }
        Ok(Self { https, authority: authority.as_str().to_owned() })
    }
}

impl From<SocketAddr> for WebAddress {
    fn from(addr: SocketAddr) -> Self {
        Self { https: false, authority: addr.to_string() }
    }
}

impl fmt::Display for WebAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", if self.https { "https" } else { "http" }, self.authority)
    }
}

/// How requests go out.
#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// A client of one collector's web port.
#[derive(Clone)]
pub struct WebClient {
    address: WebAddress,
    transport: Transport,
}

impl fmt::Debug for WebClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebClient").field("address", &self.address).finish_non_exhaustive()
    }
}

impl WebClient {
    /// A client of `address`, trusting the CAs of `ca` (PEM) for an `https://` one, else
    /// the system's roots.
    pub fn new(address: WebAddress, ca: Option<&Path>) -> anyhow::Result<Self> {
        if !address.https {
            anyhow::ensure!(ca.is_none(), "--collector-ca is for an https:// --collector, not {address}");
            return Ok(Self::plain(address));
        }
        let files = TlsFiles { ca: ca.map(Path::to_path_buf), ..TlsFiles::default() };
        let config = ClientTls::read(&files, "--collector-ca")?.config()?;
        let connector = HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build();
        Ok(Self { address, transport: Transport::Tls(Client::builder(TokioExecutor::new()).build(connector)) })
    }

    /// A client of `address` over plain HTTP.
    pub fn plain(address: impl Into<WebAddress>) -> Self {
        let address = address.into();
        Self { address, transport: Transport::Plain(Client::builder(TokioExecutor::new()).build_http()) }
    }

    /// The address it asks.
    pub fn address(&self) -> &WebAddress {
        &self.address
    }

    /// `GET path`: the status and the body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        self.send(hyper::Request::get(self.url(path)).body(Full::default()).context("building the request")?).await
    }

    /// `POST path` with a JSON `body`: the status and the body.
    pub async fn post_json(&self, path: &str, body: String) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let request = hyper::Request::post(self.url(path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("building the request")?;
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    async fn send(&self, request: hyper::Request<Full<Bytes>>) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let response = match &self.transport {
            Transport::Plain(client) => client.request(request).await,
            Transport::Tls(client) => client.request(request).await,
        };
        let address = &self.address;
        let response = response.with_context(|| format!("cannot reach the collector at {address} (is it running? see --collector)"))?;
        let status = response.status();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_a_port_a_host_and_port_and_either_scheme() {
        let parsed = |text: &str| text.parse::<WebAddress>().map(|a| a.to_string());
        assert_eq!(parsed("16686").as_deref(), Ok("http://127.0.0.1:16686"));
        assert_eq!(parsed("10.0.0.7:16686").as_deref(), Ok("http://10.0.0.7:16686"));
        assert_eq!(parsed("https://collector.shop:16686/").as_deref(), Ok("https://collector.shop:16686"));
        assert_eq!(parsed("http://[::1]:80").as_deref(), Ok("http://[::1]:80"));
        assert_eq!(parsed("https://9000").as_deref(), Ok("https://127.0.0.1:9000"));
        for bad in ["collector.shop", "https://", "user@host:1", "host:port", "ftp://host:1"] {
            assert!(parsed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_is_for_https_only() {
        let plain = WebClient::new("16686".parse().expect("address"), Some(Path::new("ca.pem")));
        let error = plain.expect_err("refused").to_string();
        assert_eq!(error, "--collector-ca is for an https:// --collector, not http://127.0.0.1:16686");
        let missing = WebClient::new("https://16686".parse().expect("address"), Some(Path::new("/nonexistent/ca.pem")));
        assert!(format!("{:#}", missing.expect_err("no file")).contains("/nonexistent/ca.pem"));
    }
}
