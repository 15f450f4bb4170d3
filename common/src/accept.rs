//! Accepting TCP connections through the errors a busy server meets.
//!
//! `accept` fails when the process runs out of file descriptors, or a connection is reset
//! while queued. Neither is the listener's end: the server logs it, waits a moment for
//! descriptors to be freed instead of spinning, and accepts again.

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed accept.
const BACKOFF: Duration = Duration::from_millis(50);

/// The next connection on `listener`, with Nagle's algorithm off: every server here writes
/// whole responses and wants them sent at once.
pub async fn next(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_the_connection_with_nodelay_and_its_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (stream, peer) = next(&listener).await;
        assert_eq!(peer, client.local_addr().expect("client addr"));
        assert!(stream.nodelay().expect("nodelay"));
    }
}
