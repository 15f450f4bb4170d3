//! Plain text sent to a TLS port, answered in words the sender can show.
//!
//! A sender configured with an `http://` endpoint for a collector whose OTLP receivers speak
//! TLS would otherwise get a TLS alert back, which its HTTP or gRPC client reports as a
//! garbled response or a bare protocol error. A connection whose first byte is an ASCII
//! capital (an HTTP/1 method, or the `PRI` of HTTP/2's preface; no TLS record starts so) is
//! answered in its own protocol instead: HTTP/1 with `400 Bad Request`, HTTP/2 with a
//! `GOAWAY` of `INADEQUATE_SECURITY` whose debug data says the same.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What the sender is told.
pub const MESSAGE: &str = "this port expects TLS: send to an https:// endpoint";

/// How long the sender's unread bytes are drained after the answer, so that closing the
/// connection does not reset it before the sender reads the answer.
const LINGER: Duration = Duration::from_secs(1);

/// The most bytes drained after the answer.
const LINGER_BYTES: usize = 64 * 1024;

/// Whether the connection's first byte says it speaks plain HTTP. Waits for that byte.
pub async fn speaks_http(tcp: &TcpStream) -> bool {
    let mut first = [0_u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answers a plain HTTP sender in its protocol and ends the sending side; [`linger`] then
/// lets it read the answer.
pub async fn answer(tcp: &mut TcpStream) {
    let mut start = [0_u8; 4];
    if tcp.read_exact(&mut start).await.is_err() {
        return;
    }
    let answer = if &start == b"PRI " { h2_goaway() } else { http1_bad_request() };
    if tcp.write_all(&answer).await.is_ok() {
        let _ = tcp.shutdown().await;
    }
}

/// Reads and drops what the sender still sends, for at most [`LINGER`], then closes: closing
/// with unread bytes would reset the connection, and the sender could lose the answer.
pub async fn linger(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0_u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

fn http1_bad_request() -> Vec<u8> {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{MESSAGE}\n",
        MESSAGE.len() + 1
    )
    .into_bytes()
}

/// An empty `SETTINGS` frame (the server's preface), then `GOAWAY` with no stream taken,
/// error code `INADEQUATE_SECURITY` and [`MESSAGE`] as its debug data.
fn h2_goaway() -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const INADEQUATE_SECURITY: u32 = 0xc;
    let frame = |kind: u8, payload: &[u8]| {
        let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    };
    let mut goaway = 0_u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&INADEQUATE_SECURITY.to_be_bytes());
    goaway.extend_from_slice(MESSAGE.as_bytes());
    let mut answer = frame(SETTINGS, &[]);
    answer.extend(frame(GOAWAY, &goaway));
    answer
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A listener answering its first connection as a TLS port answers plain text.
    async fn port() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            assert!(speaks_http(&tcp).await);
            answer(&mut tcp).await;
            linger(tcp).await;
        });
        addr
    }

    #[tokio::test]
    async fn an_http1_request_gets_a_400_saying_tls_is_expected() {
        let mut tcp = TcpStream::connect(port().await).await.expect("connect");
        tcp.write_all(b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc").await.expect("write");
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.expect("read to the end");
        assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{response}");
        assert!(response.ends_with(&format!("\r\n\r\n{MESSAGE}\n")), "{response}");
        let length = response.lines().find_map(|l| l.strip_prefix("content-length: ")).expect("a length");
        assert_eq!(length.parse::<usize>().ok(), Some(MESSAGE.len() + 1));
    }

    #[tokio::test]
    async fn an_h2_client_is_told_by_goaway_with_the_reason_in_its_error() {
        let tcp = TcpStream::connect(port().await).await.expect("connect");
        let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let connection = tokio::spawn(connection);
        let request = http::Request::post("/opentelemetry.proto.collector.trace.v1.TraceService/Export").body(()).expect("request");
        let error = match client.send_request(request, true) {
            Ok((response, _)) => response.await.expect_err("no response"),
            Err(error) => error,
        };
        assert_eq!(error.reason(), Some(h2::Reason::INADEQUATE_SECURITY), "{error}");
        assert!(error.to_string().contains(MESSAGE), "{error}");
        let _ = connection.await;
    }
}
