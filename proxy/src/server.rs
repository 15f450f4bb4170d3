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
                let protocol_errors = meter.protocol_errors.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        if crate::error::broke_http(error.as_ref()) {
                            protocol_errors.inc();
                        }
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[tokio::test]
    async fn connections_that_break_http_are_counted_and_closed_ones_are_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let meter = ConnectionMeter::default();
        let (_stop, stop) = watch::channel(false);
        let ok = tower::service_fn(|_req: Request| async { Ok::<_, Infallible>(Response::new(body::full("ok"))) });
        tokio::spawn(serve(listener, ok, meter.clone(), stop));
        let exchange = move |bytes: &'static [u8], answered: bool| {
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                stream.write_all(bytes).expect("write");
                // What gets no answer ends with the client's end of the stream (hyper would
                // drop an answer once the client has closed its half).
                if !answered {
                    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
                }
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                answer
            })
        };
        let cases: [(&[u8], &str, bool); 5] = [
            (b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "HTTP/1.1 200", false),
            (b"GET /x?q=\xff HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400", true),
            // A TLS ClientHello's first bytes on a plaintext port.
            (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "", true),
            // The HTTP/2 preface, then a SETTINGS frame of 5 bytes (a multiple of 6 is required).
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x05\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "", true),
            // Closed half-way through a head: the peer left, it did not break HTTP.
            (b"GET /ok HTTP/1.1\r\nHo", "", false),
        ];
        let mut broken = 0;
        for (i, (bytes, expected, breaks)) in cases.into_iter().enumerate() {
            let answered = !expected.is_empty();
            let answer = tokio::task::spawn_blocking(move || exchange(bytes, answered).join().expect("client")).await.expect("join");
            assert!(answer.starts_with(expected), "{bytes:?}: {answer}");
            // The counters move as the connection's task ends.
            for _ in 0..100 {
                if meter.closed.get() == i as u64 + 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            broken += u64::from(breaks);
            assert_eq!((meter.closed.get(), meter.protocol_errors.get()), (i as u64 + 1, broken), "{bytes:?}");
        }
    }
}
