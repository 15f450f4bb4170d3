//! The TLS of the OTLP receivers (`--otlp-tls-cert`, `--otlp-tls-key`, `--otlp-tls-client-ca`)
//! and of the web port (`--web-tls-*`).
//!
//! A [`TlsListener`] accepts TCP connections and runs each one's handshake on a task of its
//! own, so a client that stalls its handshake holds up no other and one that never finishes
//! is dropped after [`HANDSHAKE_TIMEOUT`]. Completed connections go to the server: axum's,
//! as an [`axum::serve::Listener`], or tonic's, as a stream ([`TlsListener::into_incoming`]).
//! Every handshake is counted by outcome in `meshlens_collector_tls_handshakes_total`, so a
//! sender that does not trust the collector's certificate, or presents none when one is
//! required, shows there as well as in the collector's debug log. A sender speaking plain
//! HTTP to the port is told so in its own protocol ([`plain`]).

mod plain;

use std::{io, net::SocketAddr, pin::Pin, sync::Arc, task::Poll, time::Duration};

use futures_util::Stream;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::metrics::HandshakeLabels;

/// Longest time a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completed connections waiting for the server to take them.
const READY: usize = 64;

/// A TLS connection a receiver serves.
#[derive(Debug)]
pub struct TlsConnection(TlsStream<TcpStream>);

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

/// Where a receiver takes its connections: plain TCP, or TLS.
#[derive(Debug)]
pub enum Listener {
    /// Plain text.
    Plain(TcpListener),
    /// TLS.
    Tls(TlsListener),
}

/// Stops the accepting task when the listener is dropped (the server stopped).
#[derive(Debug)]
struct Accepting(JoinHandle<()>);

impl Drop for Accepting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP listener whose connections are TLS, handshakes done.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local: SocketAddr,
    _accepting: Accepting,
}

impl TlsListener {
    /// Accepts on `listener` with `config` from now on, counting handshakes in `handshakes`
    /// under `transport` (`grpc` or `http`). Must be called within a tokio runtime.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        handshakes: Family<HandshakeLabels, Counter>,
        transport: &'static str,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let count = move |outcome| {
            handshakes.get_or_create(&HandshakeLabels { transport, outcome }).inc();
        };
        let accepting = tokio::spawn(accept(listener, TlsAcceptor::from(config), tx, count));
        Ok(Self { ready, local, _accepting: Accepting(accepting) })
    }

    /// The connections as tonic's server takes them.
    pub fn into_incoming(self) -> impl Stream<Item = io::Result<TlsConnection>> + Send + 'static {
        futures_util::stream::unfold(self, |mut listener| async move {
            let (connection, _) = listener.ready.recv().await?;
            Some((Ok(connection), listener))
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// How a connection's handshake went.
#[allow(clippy::large_enum_variant, reason = "one per accepted connection, moved once")]
enum Handshake {
    /// The TLS handshake, done or failed.
    Tls(io::Result<TlsStream<TcpStream>>),
    /// Plain HTTP, answered ([`plain`]).
    Plain(TcpStream),
}

/// Accepts connections until the listener is dropped, each handshake on a task of its own.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsConnection, SocketAddr)>,
    count: impl Fn(&'static str) + Clone + Send + Sync + 'static,
) {
    loop {
        let (mut tcp, peer) = meshlens_common::accept::next(&listener).await;
        let (acceptor, ready, count) = (acceptor.clone(), ready.clone(), count.clone());
        tokio::spawn(async move {
            let handshake = async {
                if plain::speaks_http(&tcp).await {
                    plain::answer(&mut tcp).await;
                    return Handshake::Plain(tcp);
                }
                Handshake::Tls(acceptor.accept(tcp).await)
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Handshake::Tls(Ok(tls))) => {
                    count("ok");
                    let _ = ready.send((TlsConnection(tls), peer)).await;
                }
                Ok(Handshake::Plain(tcp)) => {
                    count("plaintext");
                    tracing::debug!(%peer, "plain text on the TLS port, answered: {}", plain::MESSAGE);
                    plain::linger(tcp).await;
                }
                // Closed before the handshake ended, without a TLS error: a port probe, or a
                // client that gave up.
                Ok(Handshake::Tls(Err(error))) if error.kind() == io::ErrorKind::UnexpectedEof => count("closed"),
                Ok(Handshake::Tls(Err(error))) => {
                    count("refused");
                    tracing::debug!(%peer, %error, "TLS handshake refused");
                }
                Err(_) => {
                    count("timeout");
                    tracing::debug!(%peer, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                }
            }
        });
    }
}
