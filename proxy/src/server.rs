//! Accepts connections on a listener and serves HTTP/1.1 and HTTP/2 with one service.
//!
//! Each connection is served on its own task; the protocol is detected per connection
//! (HTTP/2 prior knowledge or HTTP/1.1), and an HTTP/1.1 connection may switch protocols
//! ([`crate::stack::upgrade`]). On shutdown the listener closes, open
//! connections are asked to finish, and stragglers are cut after a grace period.

use std::{convert::Infallible, time::Duration};

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch};
use tower::{Service, ServiceExt};

use crate::{
    body,
    connection::ConnectionMeter,
    stack::{PeerAddr, Request, Response},
};

/// How long open connections get to finish after shutdown starts.
pub const GRACE: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until `shutdown` turns true, counting connections in `meter`.
pub async fn serve<S>(listener: TcpListener, service: S, meter: ConnectionMeter, mut shutdown: watch::Receiver<bool>)
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let hyper_service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let mut req = req.map(body::boxed);
                    req.extensions_mut().insert(PeerAddr(peer));
                    service.clone().oneshot(req)
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(meter.meter(stream)), hyper_service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection closed with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("connections still open after the grace period were closed");
    }
}
