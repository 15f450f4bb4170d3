//! The benchmark's upstream: the fastest HTTP server we can write, answering `200 ok` on
//! one thread, so that what the scenarios differ by is the proxy in front of it.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;

/// Serves `200 ok` on `listen` forever.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    super::serve_connections(tokio::net::TcpListener::bind(listen).await?, |io| async move {
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    })
    .await
}
