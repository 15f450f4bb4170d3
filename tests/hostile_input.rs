//! Hostile input, generated: thousands of malformed, oversized and contradictory requests
//! (HTTP/1.1 text and HTTP/2 frames, with broken trace-context, request-ID and forwarding
//! headers) against a pair of real sidecars, and mangled OTLP export bodies (protobuf and
//! JSON over OTLP/HTTP, protobuf over OTLP/gRPC) against a real collector.
//!
//! Each run draws its cases from one seed, printed first; `MESHLENS_HOSTILE_SEED` replays a
//! run. What must hold afterwards: no process panicked or stopped, each still answers a
//! well-formed request, and what was accepted before the hostile traffic is still there.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event},
};
use prost::Message;
use support::{
    CollectorProc, Proc, TestDir, Workload, get, http, prom_sum, read_head, serve_raw, sidecar_toml, start_mesh, wait_for, wait_listening,
};

/// Cases a run sends to each target: `MESHLENS_HOSTILE_CASES`, or 2,000.
fn cases() -> usize {
    std::env::var("MESHLENS_HOSTILE_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
}
/// Connections sending cases at once.
const SENDERS: usize = 6;

/// The run's seed: `MESHLENS_HOSTILE_SEED` or a fresh one, printed so a failure can be replayed.
fn seed() -> u64 {
    let seed = std::env::var("MESHLENS_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("MESHLENS_HOSTILE_SEED={seed}");
    seed
}

/// Sends every case of `cases` to `addr`, `SENDERS` connections at a time: each case on a
/// connection of its own, the write side closed after it if `half_close`, the answer read
/// until the connection closes or nothing comes for a second.
fn send_all(addr: SocketAddr, cases: Vec<Vec<u8>>, half_close: bool) {
    let cases = Arc::new(std::sync::Mutex::new(cases));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let cases = Arc::clone(&cases);
            std::thread::spawn(move || {
                loop {
                    // Taken in a statement of its own: the lock is not held while the case runs.
                    let next = cases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
                    let Some(case) = next else { break };
                    let Ok(mut stream) = TcpStream::connect(addr) else { continue };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = stream.write_all(&case);
                    if half_close {
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    }
                    let mut answer = [0u8; 16 * 1024];
                    while matches!(stream.read(&mut answer), Ok(n) if n > 0) {}
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender");
    }
}

/// Random bytes, as many as a draw from `len`.
fn bytes(rng: &mut fastrand::Rng, len: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.usize(len);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Random text from `alphabet`, as many characters as a draw from `len`.
fn text(rng: &mut fastrand::Rng, alphabet: &[u8], len: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.usize(len);
    (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect()
}

/// One of the lengths trace-context parsers look at, or far beyond them.
fn trace_len(rng: &mut fastrand::Rng) -> std::ops::Range<usize> {
    const LENGTHS: [usize; 11] = [0, 1, 15, 16, 17, 31, 32, 33, 64, 300, 9000];
    let len = LENGTHS[rng.usize(..LENGTHS.len())];
    len..len + 1
}

const HEX: &[u8] = b"0123456789abcdef";
/// Characters header values may hold, and some that mean something in the values parsed.
const ODD: &[u8] = b"0123456789abcdefABCDEFxyz-_=;,. \t\"'%/\\:@?#*{}[]\x80\xff";
/// Bytes no header value may hold.
const FORBIDDEN: &[u8] = b"\x7f\x00\x01\r\n";

/// A value for a trace-context or request-ID header: well-formed, almost, or noise.
fn trace_value(rng: &mut fastrand::Rng, name: &str) -> Vec<u8> {
    let hex = |rng: &mut fastrand::Rng, n: usize| text(rng, HEX, n..n + 1);
    let mut v = match (name, rng.u8(..4)) {
        ("traceparent", 0) => [b"00-".to_vec(), hex(rng, 32), b"-".to_vec(), hex(rng, 16), b"-01".to_vec()].concat(),
        ("traceparent", 1) => {
            let version = if rng.bool() { b"ff".to_vec() } else { hex(rng, 2) };
            let (t, s) = (trace_len(rng), trace_len(rng));
            [
                version,
                b"-".to_vec(),
                text(rng, HEX, t),
                b"-".to_vec(),
                text(rng, HEX, s),
                b"-".to_vec(),
                text(rng, HEX, 0..4),
                bytes(rng, 0..3),
            ]
            .concat()
        }
        ("b3", 0) => {
            [hex(rng, 32), b"-".to_vec(), hex(rng, 16), b"-".to_vec(), text(rng, b"01d", 1..2), b"-".to_vec(), hex(rng, 16)].concat()
        }
        ("b3", 1) => {
            let parts = rng.usize(1..7);
            let mut v = Vec::new();
            for i in 0..parts {
                if i > 0 {
                    v.push(b'-');
                }
                let len = trace_len(rng);
                v.extend(text(rng, HEX, len));
            }
            v
        }
        ("tracestate", 0 | 1) => {
            let members = rng.usize(0..40);
            let list: Vec<Vec<u8>> =
                (0..members).map(|_| [text(rng, b"abcz09_-*/@", 0..300), b"=".to_vec(), text(rng, ODD, 0..300)].concat()).collect();
            list.join(&b","[..])
        }
        (_, 0 | 1) => {
            let len = trace_len(rng);
            text(rng, HEX, len)
        }
        _ => {
            let len = trace_len(rng);
            text(rng, ODD, len)
        }
    };
    if rng.u8(..40) == 0 {
        let at = rng.usize(..=v.len());
        v.insert(at, FORBIDDEN[rng.usize(..FORBIDDEN.len())]);
    }
    v
}

/// Headers a request may carry, each with a value drawn for it.
fn hostile_headers(rng: &mut fastrand::Rng) -> Vec<(Vec<u8>, Vec<u8>)> {
    const TRACE: &[&str] = &[
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-request-id",
        "baggage",
        "grpc-timeout",
        "max-forwards",
        "idempotency-key",
    ];
    const OTHER: &[(&str, &[&str])] = &[
        ("forwarded", &["proto=https", "for=\"[::1]:80\";proto=http, for=unknown", "proto=", ";;;", "proto=\"https"]),
        ("x-forwarded-proto", &["https", "http", "", "gopher, https"]),
        ("x-forwarded-for", &["10.0.0.1", "::1, 300.1.1.1", ""]),
        ("content-length", &["0", "5", "-1", "18446744073709551616", "3, 4", "0x10", " 7 "]),
        ("transfer-encoding", &["chunked", "gzip, chunked", "chunked, chunked", "identity", "CHUNKED", ""]),
        ("te", &["trailers", "gzip", "trailers, deflate;q=0.5"]),
        ("connection", &["close", "keep-alive", "upgrade", "Upgrade, HTTP2-Settings", "te, close", "x-b3-sampled"]),
        ("upgrade", &["websocket", "h2c", "", "websocket, foo/1"]),
        ("http2-settings", &["AAMAAABkAARAAAAAAAIAAAAA", "!!"]),
        ("expect", &["100-continue", "200-ok"]),
        ("content-type", &["application/grpc", "application/grpc+proto", "application/grpc-web", "text/plain", ""]),
        ("host", &["echo", "echo:80", "echo:99999", "", "a b", "echo, other", "[::1", "user@echo", "ECHO."]),
        ("accept-encoding", &["gzip", "*", ""]),
        ("trailer", &["grpc-status", "content-length"]),
    ];
    let mut headers = Vec::new();
    if rng.u8(..10) > 0 {
        headers.push((b"host".to_vec(), b"echo".to_vec()));
    }
    for _ in 0..rng.usize(0..12) {
        if rng.bool() {
            let name = TRACE[rng.usize(..TRACE.len())];
            headers.push((name.as_bytes().to_vec(), trace_value(rng, name)));
        } else {
            let (name, values) = OTHER[rng.usize(..OTHER.len())];
            headers.push((name.as_bytes().to_vec(), values[rng.usize(..values.len())].as_bytes().to_vec()));
        }
    }
    match rng.u8(..20) {
        0 => headers.push((b"x-big".to_vec(), text(rng, b"a", 8_000..120_000))),
        1 => headers.extend((0..rng.usize(100..300)).map(|i| (format!("x-many-{i}").into_bytes(), b"v".to_vec()))),
        2 if rng.u8(..4) == 0 => headers.push((text(rng, ODD, 1..20), text(rng, ODD, 0..40))),
        3 if rng.u8(..4) == 0 => headers.push((b"x-folded".to_vec(), b"first\r\n second".to_vec())),
        _ => {}
    }
    headers
}

/// One HTTP/1.1 request: drawn parts, then perhaps cut short or with bytes changed. One in
/// four has a request line HTTP does not allow or the sidecar refuses.
fn http1_case(rng: &mut fastrand::Rng) -> Vec<u8> {
    const METHODS: &[&str] = &["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "TRACE", "X-CUSTOM"];
    const TARGETS: &[&str] = &["/", "/work", "/a/b/../../c", "/%00%ff", "/?q=1&q=2", "http://echo/abs", "//double", "/#frag"];
    const ODD_METHODS: &[&str] = &["CONNECT", "PRI", "get", "", "G\x01T"];
    const ODD_TARGETS: &[&str] = &["*", "echo:80", "/\u{e9}t\u{e9}", "/ sp", "http://user@echo/", "https://echo:443/", ""];
    const ODD_VERSIONS: &[&str] = &["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 extra", "http/1.1", ""];
    let pick = |rng: &mut fastrand::Rng, list: &[&str]| list[rng.usize(..list.len())].as_bytes().to_vec();
    let odd = rng.u8(..4) == 0;
    let method = if odd && rng.bool() { pick(rng, ODD_METHODS) } else { pick(rng, METHODS) };
    let mut target = if odd && rng.bool() { pick(rng, ODD_TARGETS) } else { pick(rng, TARGETS) };
    if rng.u8(..4) == 0 {
        target.extend(text(rng, b"abc/%?=&;.-~!$'()*+,:@", 0..200));
    }
    if odd && rng.u8(..4) == 0 {
        target.extend(text(rng, ODD, 0..20));
    }
    let version = if odd && rng.bool() { pick(rng, ODD_VERSIONS) } else { b"HTTP/1.1".to_vec() };
    let mut out = [method, b" ".to_vec(), target, b" ".to_vec(), version, b"\r\n".to_vec()].concat();
    for (name, value) in hostile_headers(rng) {
        out.extend([name, b": ".to_vec(), value, b"\r\n".to_vec()].concat());
    }
    const TAILS: [&[u8]; 4] = [
        b"5\r\nhello\r\n0\r\n\r\n",
        b"4\r\nhalf\r\nzz\r\n",
        b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx: y\r\n\r\n",
        b"GET /second HTTP/1.1\r\nHost: echo\r\n\r\n",
    ];
    end_message(rng, &mut out, TAILS, 6);
    out
}

/// Ends a message's head, adds one of `tails` (a body, a broken one, the next message on
/// the connection), noise or nothing, then sometimes (one in `odds`) mangles the whole.
fn end_message(rng: &mut fastrand::Rng, out: &mut Vec<u8>, tails: [&[u8]; 4], odds: u8) {
    out.extend(b"\r\n");
    match rng.usize(..6) {
        i @ 0..4 => out.extend(tails[i]),
        4 => out.extend(bytes(rng, 0..3000)),
        _ => {}
    }
    mangle(rng, out, odds);
}

/// Sometimes (one in `odds`) cuts `out` short, changes a few bytes or repeats a slice.
fn mangle(rng: &mut fastrand::Rng, out: &mut Vec<u8>, odds: u8) {
    if out.is_empty() || rng.u8(..odds) != 0 {
        return;
    }
    match rng.u8(..3) {
        0 => out.truncate(rng.usize(..out.len())),
        1 => {
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(..out.len());
                out[at] = rng.u8(..);
            }
        }
        _ => {
            let from = rng.usize(..out.len());
            let to = rng.usize(from..=out.len().min(from + 64));
            let slice = out[from..to].to_vec();
            let at = rng.usize(..=out.len());
            out.splice(at..at, slice);
        }
    }
}

/// An HPACK integer with an `prefix`-bit prefix, its first byte or'ed with `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields (no indexing, no Huffman coding).
fn hpack(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend(value);
    }
    out
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(0xff_ffff);
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(&payload[..len]);
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request's HEADERS frame on `stream`: pseudo-headers and then drawn headers, perhaps
/// without END_STREAM (a body follows).
fn h2_request(rng: &mut fastrand::Rng, stream: u32, path: &str, end_stream: bool) -> Vec<u8> {
    let mut fields = vec![
        (b":method".to_vec(), if end_stream { b"GET".to_vec() } else { b"POST".to_vec() }),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), b"echo".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ];
    if rng.u8(..5) == 0 {
        let i = rng.usize(..fields.len());
        fields.remove(i);
    }
    let drawn = hostile_headers(rng).into_iter().filter(|(name, _)| name.as_slice() != b"host").map(|(n, v)| (n.to_ascii_lowercase(), v));
    fields.extend(drawn);
    if rng.u8(..6) == 0 {
        fields.push((b":status".to_vec(), b"200".to_vec()));
    }
    frame(1, 0x4 | u8::from(end_stream), stream, &hpack(&fields))
}

/// One HTTP/2 connection: the preface, settings, then well-formed requests among frames of
/// any type, with any flags, on any stream, with any payload.
fn http2_case(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let mut stream = 1u32;
    for _ in 0..rng.usize(1..12) {
        match rng.u8(..6) {
            0 | 1 => {
                out.extend(h2_request(rng, stream, "/work", true));
                stream += 2;
            }
            2 => {
                out.extend(h2_request(rng, stream, "/upload", false));
                let body = bytes(rng, 0..3000);
                out.extend(frame(0, u8::from(rng.bool()), stream, &body));
                if rng.bool() {
                    out.extend(frame(1, 0x5, stream, &hpack(&[(b"grpc-status".to_vec(), b"0".to_vec())])));
                }
                stream += 2;
            }
            3 => out.extend(frame(3, 0, stream.saturating_sub(2), &rng.u32(..16).to_be_bytes())),
            _ => {
                let kind = rng.u8(..12);
                let payload = bytes(rng, 0..64);
                let (flags, stream) = (rng.u8(..), rng.u32(..8));
                out.extend(frame(kind, flags, stream, &payload));
            }
        }
    }
    mangle(rng, &mut out, 8);
    out
}

/// A request to a sidecar's admin server: a tap with any query, a log filter of any text,
/// or any of its other paths with any method.
fn admin_case(rng: &mut fastrand::Rng) -> Vec<u8> {
    const PARAMS: &[&str] = &["direction", "method", "path", "authority", "destination", "source", "failures", "limit", "duration", "x"];
    const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE"];
    let method = METHODS[rng.usize(..METHODS.len())];
    let target = match rng.u8(..3) {
        0 => {
            let mut params = Vec::new();
            for _ in 0..rng.usize(0..5) {
                let name = PARAMS[rng.usize(..PARAMS.len())];
                params.push(format!("{name}={}", String::from_utf8_lossy(&text(rng, b"0123456789smh%-_/a.", 0..12))));
            }
            format!("/tap?{}&duration=1s", params.join("&"))
        }
        1 => "/proxy-log-level".to_owned(),
        _ => ["/metrics", "/ready", "/live", "/", "/metrics?x=%ff"][rng.usize(..5)].to_owned(),
    };
    // A filter of any text, never a level that would flood the test's logs.
    let bodies = [b"info".to_vec(), text(rng, b"abc=,[]{}_:.*/info", 0..60), bytes(rng, 0..40), text(rng, b"x", 2000..3000)];
    let body = &bodies[rng.usize(..bodies.len())];
    let mut out = format!("{method} {target} HTTP/1.1\r\nhost: admin\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend(body);
    mangle(rng, &mut out, 8);
    out
}

/// A request to `addr` that must be answered `200`, through the sidecars.
fn answered(addr: SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path, &[("host", "echo")], b"").map(|reply| reply.status).unwrap_or(0)
}

#[test]
fn sidecars_keep_serving_and_exporting_through_hostile_requests() {
    let seed = seed();
    let dir = TestDir::new("hostile-sidecar");
    let collector = CollectorProc::start(&dir);
    let tester = Workload::new("tester", &[]);
    let echo = Workload::new("echo", &[]);
    let mut procs = start_mesh(&dir, &[&tester, &echo], collector.grpc);
    assert_eq!(answered(tester.outbound, "/before"), 200);

    let mut rng = fastrand::Rng::with_seed(seed);
    for target in [tester.outbound, echo.inbound] {
        let cases: Vec<Vec<u8>> = (0..cases()).map(|i| if i % 3 == 2 { http2_case(&mut rng) } else { http1_case(&mut rng) }).collect();
        send_all(target, cases, true);
    }
    // And at an admin server: its tap and log filter take queries and bodies.
    let admin: Vec<Vec<u8>> = (0..cases() / 4).map(|_| admin_case(&mut rng)).collect();
    send_all(echo.admin, admin, true);
    let restored = http(echo.admin, "PUT", "/proxy-log-level", &[], b"info").expect("answered");
    assert_eq!((restored.status, restored.body.as_str()), (200, "info\n"), "the log filter still takes a directive");

    for proc in &mut procs {
        assert!(proc.running(), "a process stopped under hostile requests (seed {seed}):\n{}", proc.output());
        assert!(!proc.output().contains("panicked"), "a process panicked (seed {seed}):\n{}", proc.output());
    }
    assert_eq!(answered(tester.outbound, "/after"), 200, "the sidecars still serve (seed {seed})");
    // Both sides of the well-formed requests reach the collector, the hostile traffic's
    // records between them.
    let both = "SELECT count(*) FROM spans WHERE attributes LIKE '%\"/before\"%' OR attributes LIKE '%\"/after\"%'";
    wait_for("the spans of the requests before and after", Duration::from_secs(20), || {
        let rows = collector.sql_rows(both);
        (rows.first().and_then(|r| r[0].as_u64()) == Some(4)).then_some(())
    });
    // The cases reached where they aim: many to the app, many refused as broken HTTP. Every
    // request and every connection they opened has ended, and been counted as it ended.
    let counted = |admin, metric, labels: &[(&str, &str)]| prom_sum(&get(admin, "/metrics").body, metric, labels);
    let reached = counted(echo.admin, "meshlens_proxy_requests_total", &[("direction", "inbound"), ("classification", "success")]);
    assert!(reached >= (cases() / 10) as f64, "{reached} requests reached the app");
    for (admin, direction) in [(tester.admin, "outbound"), (echo.admin, "inbound")] {
        let refused = counted(admin, "meshlens_proxy_downstream_protocol_errors_total", &[("direction", direction)]);
        assert!(refused >= (cases() / 10) as f64, "{direction}: {refused} connections refused as broken HTTP");
        wait_for(&format!("{direction}: no request in flight"), Duration::from_secs(10), || {
            (counted(admin, "meshlens_proxy_active_requests", &[("direction", direction)]) == 0.0).then_some(())
        });
    }
    wait_for("every connection to the caller's sidecar closed", Duration::from_secs(10), || {
        let opened = counted(tester.admin, "meshlens_proxy_tcp_connections_opened_total", &[("direction", "outbound")]);
        let closed = counted(tester.admin, "meshlens_proxy_tcp_connections_closed_total", &[("direction", "outbound")]);
        (opened == closed && opened >= cases() as f64).then_some(())
    });
    assert!(!collector.proc.output().contains("panicked"), "{}", collector.proc.output());
}

/// One response an application might send, drawn: odd status lines, framing that
/// contradicts itself, gRPC statuses and messages of any text, informational and switching
/// responses, trailers, bodies cut short or running long; sometimes with bytes changed.
fn hostile_response(rng: &mut fastrand::Rng) -> Vec<u8> {
    const STATUSES: &[&str] = &["200 OK", "204 No Content", "304 Not Modified", "404 Not Found", "500 Oops", "503 Busy", "206 Part"];
    const ODD_STATUSES: &[&str] =
        &["100 Continue", "101 Switching Protocols", "103 Early Hints", "199 Odd", "999 Nine", "42 Low", "200", "abc"];
    const HEADERS: &[(&str, &[&str])] = &[
        ("content-length", &["0", "5", "100", "-1", "18446744073709551616", "5, 6", " 5"]),
        ("transfer-encoding", &["chunked", "gzip, chunked", "identity", "chunked, chunked"]),
        ("content-type", &["application/grpc", "application/grpc+proto", "text/plain", ""]),
        ("grpc-status", &["0", "2", "14", "-1", "99999999999", "abc", ""]),
        ("grpc-message", &["ok", "%E2%9C%93", "%zz", "tr\u{e9}s", ""]),
        ("connection", &["close", "keep-alive", "upgrade"]),
        ("upgrade", &["websocket", "h2c"]),
        ("trailer", &["grpc-status", "grpc-message, x-end"]),
        ("content-encoding", &["gzip", "br"]),
        ("set-cookie", &["a=b", "c=d; Path=/"]),
        ("traceparent", &["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "garbage"]),
    ];
    let pick = |rng: &mut fastrand::Rng, list: &[&str]| list[rng.usize(..list.len())].as_bytes().to_vec();
    let status = if rng.u8(..5) == 0 { pick(rng, ODD_STATUSES) } else { pick(rng, STATUSES) };
    let version = if rng.u8(..12) == 0 { b"HTTP/1.0".to_vec() } else { b"HTTP/1.1".to_vec() };
    let mut out = [version, b" ".to_vec(), status, b"\r\n".to_vec()].concat();
    if rng.u8(..8) == 0 {
        // An informational response first, then the real one.
        out = [b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), out].concat();
    }
    for _ in 0..rng.usize(0..6) {
        let (name, values) = HEADERS[rng.usize(..HEADERS.len())];
        out.extend([name.as_bytes(), b": ", &pick(rng, values), b"\r\n"].concat());
    }
    match rng.u8(..16) {
        0 => out.extend([b"x-big: ".to_vec(), text(rng, b"b", 8_000..120_000), b"\r\n".to_vec()].concat()),
        1 => (0..rng.usize(100..300)).for_each(|i| out.extend(format!("x-many-{i}: v\r\n").into_bytes())),
        _ => {}
    }
    const TAILS: [&[u8]; 4] = [
        b"hello",
        b"5\r\nhello\r\n0\r\ngrpc-status: 13\r\ngrpc-message: broke\r\n\r\n",
        b"5\r\nhel",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ];
    end_message(rng, &mut out, TAILS, 8);
    out
}

/// An application answering each request with [`hostile_response`], drawn from `seed` and
/// the request's order; it mostly closes the connection after it (a body without framing
/// ends there), and otherwise waits 100 ms for the next request on it.
fn hostile_app(addr: SocketAddr, seed: u64) {
    let answered = std::sync::atomic::AtomicU64::new(0);
    serve_raw(addr, move |stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        let Ok(reader) = stream.try_clone() else { return };
        let (mut reader, mut stream) = (std::io::BufReader::new(reader), stream);
        loop {
            if read_head(&mut reader).is_empty() {
                return;
            }
            let n = answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut rng = fastrand::Rng::with_seed(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            if stream.write_all(&hostile_response(&mut rng)).is_err() || rng.u8(..4) > 0 {
                return;
            }
        }
    });
}

/// A caller's sidecar and the sidecar of an application `app` serves, reporting to one
/// collector; `echo`, a well-behaved service, answers probes.
struct OddHop {
    collector: CollectorProc,
    caller: Workload,
    odd: Workload,
    procs: Vec<Proc>,
}

impl OddHop {
    fn start(dir: &TestDir, app: fn(SocketAddr, u64), seed: u64) -> Self {
        let collector = CollectorProc::start(dir);
        let (caller, echo, odd) = (Workload::new("caller", &[]), Workload::new("echo", &[]), Workload::new("odd", &[]));
        let mut procs = start_mesh(dir, &[&echo], collector.grpc);
        app(odd.app, seed);
        for w in [&odd, &caller] {
            let config = dir.path(&format!("{}.toml", w.service));
            std::fs::write(&config, sidecar_toml(w, &[&caller, &echo, &odd], collector.grpc)).expect("write");
            let args = ["proxy", "--config", config.to_str().unwrap_or_default()];
            procs.push(Proc::start(dir, &format!("{}-sidecar", w.service), &args));
            wait_listening(w.outbound, "a sidecar");
        }
        Self { collector, caller, odd, procs }
    }

    /// After `sent` requests: no process panicked or stopped, the sidecars still serve,
    /// every request was recorded on the calling side and has ended on both, and at least
    /// a tenth were failures on the called side.
    fn check(&mut self, seed: u64, sent: usize) {
        for proc in &mut self.procs {
            assert!(proc.running(), "a process stopped (seed {seed}):\n{}", proc.output());
            assert!(!proc.output().contains("panicked"), "a process panicked (seed {seed}):\n{}", proc.output());
        }
        assert_eq!(answered(self.caller.outbound, "/after"), 200, "the sidecars still serve (seed {seed})");
        let counted = |admin, metric, labels: &[(&str, &str)]| prom_sum(&get(admin, "/metrics").body, metric, labels);
        wait_for("every request recorded, none in flight", Duration::from_secs(15), || {
            let recorded = counted(self.caller.admin, "meshlens_proxy_requests_total", &[("direction", "outbound")]);
            let active = counted(self.caller.admin, "meshlens_proxy_active_requests", &[("direction", "outbound")])
                + counted(self.odd.admin, "meshlens_proxy_active_requests", &[("direction", "inbound")]);
            (recorded >= sent as f64 && active == 0.0).then_some(())
        });
        let failed = counted(self.odd.admin, "meshlens_proxy_requests_total", &[("direction", "inbound"), ("classification", "failure")]);
        assert!(failed >= (sent / 10) as f64, "the odd answers were recorded as failures: {failed} (seed {seed})");
        assert!(!self.collector.proc.output().contains("panicked"), "{}", self.collector.proc.output());
    }
}

#[test]
fn sidecars_answer_every_request_to_an_application_that_answers_anything() {
    let seed = seed();
    let dir = TestDir::new("hostile-upstream");
    let mut hop = OddHop::start(&dir, hostile_app, seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let requests: Vec<Vec<u8>> = (0..cases() / 2)
        .map(|_| {
            let (method, body) = match rng.u8(..4) {
                0 => ("HEAD", "\r\n"),
                1 => ("POST", "content-length: 5\r\n\r\nhello"),
                2 => ("GET", "connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
                _ => ("GET", "\r\n"),
            };
            format!("{method} /odd/{} HTTP/1.1\r\nhost: odd\r\nconnection: close\r\n{body}", rng.u32(..)).into_bytes()
        })
        .collect();
    let sent = requests.len();
    send_all(hop.caller.outbound, requests, false);
    hop.check(seed, sent);
    // A switch of protocols the request did not ask for never reaches the caller: it would
    // wait for an answer after it.
    let probe = |path: &str| http(hop.caller.outbound, "GET", path, &[("host", "odd")], b"").map(|r| r.status).unwrap_or(0);
    assert!((0..200).all(|i| probe(&format!("/odd/probe/{i}")) != 101), "an unasked-for 101 went on to the caller");
}

/// One HTTP/2 answer to the request on `stream`, drawn: a gRPC response with any status
/// in its trailers, a trailers-only one, the stream reset or refused, the connection gone
/// away, a head HTTP/2 does not allow, data before any head, an informational head first,
/// a body cut off; and whether the connection stays open after it.
fn hostile_h2_answer(rng: &mut fastrand::Rng, stream: u32) -> (Vec<u8>, bool) {
    let field = |name: &str, value: &str| (name.as_bytes().to_vec(), value.as_bytes().to_vec());
    let status = |code: &str| vec![field(":status", code), field("content-type", "application/grpc")];
    let grpc = [&["0", "2", "13", "14", "99", "-1", "abc", ""][..], &["ok", "%zz", "caf\u{e9}"][..]];
    let trailers = |rng: &mut fastrand::Rng| {
        vec![field("grpc-status", grpc[0][rng.usize(..grpc[0].len())]), field("grpc-message", grpc[1][rng.usize(..grpc[1].len())])]
    };
    let message = [&[0u8, 0, 0, 0, 3][..], b"abc"].concat();
    let mut out = Vec::new();
    let mut keep = true;
    match rng.u8(..10) {
        0 | 1 => {
            out.extend(frame(1, 0x4, stream, &hpack(&status("200"))));
            out.extend(frame(0, 0, stream, &message));
            out.extend(frame(1, 0x5, stream, &hpack(&trailers(rng))));
        }
        2 => out.extend(frame(1, 0x5, stream, &hpack(&[status("200"), trailers(rng)].concat()))),
        3 => out.extend(frame(3, 0, stream, &[0, 0, 0, rng.u8(..14)])),
        4 => {
            let last = [0, stream.saturating_sub(2), stream][rng.usize(..3)];
            out.extend(frame(7, 0, 0, &[last.to_be_bytes(), rng.u32(..14).to_be_bytes()].concat()));
            keep = false;
        }
        5 => {
            let heads = [vec![field("content-type", "application/grpc")], status("abc"), [status("200"), status("204")].concat()];
            let odd = [heads[rng.usize(..3)].clone(), vec![field("connection", "close")], vec![field("Upper", "x")]];
            out.extend(frame(1, 0x5, stream, &hpack(&odd[rng.usize(..3)])));
        }
        6 => out.extend(frame(0, 0x1, stream, &message)),
        7 => {
            out.extend(frame(1, 0x4, stream, &hpack(&[field(":status", ["100", "103"][rng.usize(..2)])])));
            out.extend(frame(1, 0x5, stream, &hpack(&[status("200"), trailers(rng)].concat())));
        }
        8 => {
            out.extend(frame(1, 0x4, stream, &hpack(&[status("200"), vec![field("content-length", "100")]].concat())));
            out.extend(frame(0, 0, stream, &message));
            keep = false;
        }
        _ => {
            out.extend(frame(1, 0x4, stream, &hpack(&status("503"))));
            out.extend(frame(8, 0, 0, &[0x7f, 0xff, 0xff, 0xff]));
            out.extend(frame(8, 0, 0, &[0x7f, 0xff, 0xff, 0xff]));
        }
    }
    mangle(rng, &mut out, 10);
    (out, keep)
}

/// An HTTP/2 application (prior knowledge, as gRPC servers take calls from the sidecar)
/// answering each request with [`hostile_h2_answer`], drawn from `seed` and the
/// connection's order. It reads frames only to know when a request is whole.
fn hostile_h2_app(addr: SocketAddr, seed: u64) {
    let connections = std::sync::atomic::AtomicU64::new(0);
    serve_raw(addr, move |stream| {
        let n = connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rng = fastrand::Rng::with_seed(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let Ok(mut reader) = stream.try_clone() else { return };
        let mut writer = stream;
        let mut preface = [0u8; PREFACE.len()];
        if reader.read_exact(&mut preface).is_err() || writer.write_all(&frame(4, 0, 0, &[])).is_err() {
            return;
        }
        let mut head = [0u8; 9];
        while reader.read_exact(&mut head).is_ok() {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).is_err() {
                return;
            }
            let reply = match kind {
                4 if flags & 1 == 0 => frame(4, 1, 0, &[]),
                6 if flags & 1 == 0 => frame(6, 1, 0, &payload),
                0 | 1 if flags & 1 == 1 => {
                    let (answer, keep) = hostile_h2_answer(&mut rng, stream);
                    if writer.write_all(&answer).is_err() || !keep {
                        return;
                    }
                    continue;
                }
                _ => continue,
            };
            if writer.write_all(&reply).is_err() {
                return;
            }
        }
    });
}

#[test]
fn sidecars_answer_every_grpc_call_to_an_application_that_answers_anything() {
    let seed = seed();
    let dir = TestDir::new("hostile-h2-upstream");
    let mut hop = OddHop::start(&dir, hostile_h2_app, seed);
    // gRPC calls over HTTP/2 from the caller: a few on each connection.
    let calls_per_connection = 4;
    let mut rng = fastrand::Rng::with_seed(seed);
    let connections: Vec<Vec<u8>> = (0..cases() / 8)
        .map(|_| {
            let mut out = PREFACE.to_vec();
            out.extend(frame(4, 0, 0, &[]));
            for i in 0..calls_per_connection {
                let stream = 2 * i + 1;
                let fields = [
                    (b":method".to_vec(), b"POST".to_vec()),
                    (b":scheme".to_vec(), b"http".to_vec()),
                    (b":authority".to_vec(), b"odd".to_vec()),
                    (b":path".to_vec(), format!("/odd.Svc/Call{}", rng.u8(..4)).into_bytes()),
                    (b"content-type".to_vec(), b"application/grpc".to_vec()),
                    (b"te".to_vec(), b"trailers".to_vec()),
                ];
                out.extend(frame(1, 0x4, stream, &hpack(&fields)));
                out.extend(frame(0, 0x1, stream, &[0, 0, 0, 0, 2, b'h', b'i']));
            }
            // No more calls on this connection: the sidecar closes it once they are answered.
            out.extend(frame(7, 0, 0, &[0; 8]));
            out
        })
        .collect();
    let sent = connections.len() * calls_per_connection as usize;
    send_all(hop.caller.outbound, connections, false);
    hop.check(seed, sent);
}

/// One export body of each signal, valid, with some of everything a collector reads.
fn valid_exports(now: u64, trace: [u8; 16]) -> [(&'static str, Vec<u8>); 3] {
    let attr = |k: &str, v: any_value::Value| KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() };
    let resource = Resource {
        attributes: vec![
            attr("service.name", any_value::Value::StringValue("hostile-seed".into())),
            attr("k8s.namespace.name", any_value::Value::StringValue("test".into())),
        ],
        ..Default::default()
    };
    let span = |id: u8, parent: Option<u8>, kind: i32| Span {
        trace_id: trace.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: "GET /seed".into(),
        kind,
        start_time_unix_nano: now,
        end_time_unix_nano: now + 1_000_000,
        attributes: vec![
            attr("http.request.method", any_value::Value::StringValue("GET".into())),
            attr("http.response.status_code", any_value::Value::IntValue(200)),
            attr("server.address", any_value::Value::StringValue("seed-peer".into())),
        ],
        events: vec![Event { name: "retry".into(), time_unix_nano: now, ..Default::default() }],
        ..Default::default()
    };
    let traces = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans { spans: vec![span(1, None, 2), span(2, Some(1), 3)], ..Default::default() }],
            ..Default::default()
        }],
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now,
                    body: Some(AnyValue { value: Some(any_value::Value::StringValue("seed log line".into())) }),
                    trace_id: trace.to_vec(),
                    span_id: vec![1; 8],
                    attributes: vec![attr("http.request.method", any_value::Value::StringValue("GET".into()))],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let point = NumberDataPoint { time_unix_nano: now, value: Some(number_data_point::Value::AsDouble(1.5)), ..Default::default() };
    let histogram = HistogramDataPoint {
        time_unix_nano: now,
        count: 3,
        sum: Some(0.3),
        bucket_counts: vec![1, 1, 1],
        explicit_bounds: vec![0.1, 0.2],
        ..Default::default()
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "process.memory.usage".into(),
                        data: Some(metric::Data::Gauge(Gauge { data_points: vec![point] })),
                        ..Default::default()
                    },
                    Metric {
                        name: "http.server.request.duration".into(),
                        data: Some(metric::Data::Histogram(Histogram { data_points: vec![histogram], aggregation_temporality: 2 })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    [("traces", traces.encode_to_vec()), ("logs", logs.encode_to_vec()), ("metrics", metrics.encode_to_vec())]
}

/// An OTLP/HTTP request for `signal` carrying `body` as `content_type`.
fn otlp_http_case(signal: &str, content_type: &str, body: &[u8], gzip: bool) -> Vec<u8> {
    let mut out =
        format!("POST /v1/{signal} HTTP/1.1\r\nHost: collector\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    if gzip {
        out.push_str("Content-Encoding: gzip\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    [out.into_bytes(), body.to_vec()].concat()
}

/// An OTLP/gRPC call for `signal` carrying `message` in one length-prefixed gRPC message.
fn otlp_grpc_case(rng: &mut fastrand::Rng, signal: &str, message: &[u8]) -> Vec<u8> {
    let service = match signal {
        "traces" => "trace.v1.TraceService",
        "logs" => "logs.v1.LogsService",
        _ => "metrics.v1.MetricsService",
    };
    let fields = [
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), b"collector".to_vec()),
        (b":path".to_vec(), format!("/opentelemetry.proto.collector.{service}/Export").into_bytes()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
    ];
    let mut grpc = vec![0];
    let len = if rng.u8(..8) == 0 { rng.u32(..) } else { message.len() as u32 };
    grpc.extend(len.to_be_bytes());
    grpc.extend(message);
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x4, 1, &hpack(&fields)));
    for chunk in grpc.chunks(16_384) {
        out.extend(frame(0, 0, 1, chunk));
    }
    out.extend(frame(0, 0x1, 1, &[]));
    out
}

/// A protobuf varint.
fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited protobuf field.
fn field(number: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![number << 3 | 2];
    varint(body.len(), &mut out);
    out.extend(body);
    out
}

/// A trace export whose one span has an attribute `levels` arrays deep, encoded by hand
/// (a message that deep would overflow the encoder's own stack).
fn deep_protobuf(levels: usize) -> Vec<u8> {
    let mut value = field(1, b"x");
    for _ in 0..levels {
        value = field(5, &field(1, &value));
    }
    let attribute = [field(1, b"deep"), field(2, &value)].concat();
    let span = [field(1, &[7; 16]), field(2, &[7; 8]), field(5, b"deep"), field(9, &attribute)].concat();
    field(1, &field(2, &field(2, &span)))
}

/// The same in OTLP/JSON.
fn deep_json(levels: usize) -> Vec<u8> {
    let value = format!("{}{{\"stringValue\":\"x\"}}{}", "{\"arrayValue\":{\"values\":[".repeat(levels), "]}}".repeat(levels));
    let (trace, span) = ("07".repeat(16), "07".repeat(8));
    let span = format!(r#"{{"traceId":"{trace}","spanId":"{span}","name":"deep","attributes":[{{"key":"deep","value":{value}}}]}}"#);
    format!("{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"spans\":[{span}]}}]}}]}}").into_bytes()
}

/// `body` with a few bytes changed, cut short, a slice repeated, or noise in place of it.
fn mangled_body(rng: &mut fastrand::Rng, body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    match rng.u8(..8) {
        0 => return bytes(rng, 0..4000),
        1 => {
            // A field of the largest length a varint can say.
            let at = rng.usize(..=out.len());
            out.splice(at..at, [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        _ => {
            for _ in 0..rng.usize(1..4) {
                let before = out.clone();
                mangle(rng, &mut out, 1);
                if out.is_empty() {
                    out = before;
                }
            }
        }
    }
    out
}

#[test]
fn the_collector_refuses_mangled_exports_and_keeps_what_it_accepted() {
    let seed = seed();
    let dir = TestDir::new("hostile-collector");
    let mut collector = CollectorProc::start(&dir);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    let trace: [u8; 16] = fastrand::u128(1..).to_be_bytes();
    let trace_hex: String = trace.iter().map(|b| format!("{b:02x}")).collect();
    let valid = valid_exports(now, trace);
    for (signal, body) in &valid {
        let reply =
            http(collector.http, "POST", &format!("/v1/{signal}"), &[("content-type", "application/x-protobuf")], body).expect("post");
        assert_eq!(reply.status, 200, "{signal}: {}", reply.body);
    }
    let kept = wait_for("the accepted trace", Duration::from_secs(10), || {
        let trace = collector.json(&format!("/api/traces/{trace_hex}"));
        (trace["data"][0]["spans"].as_array().map(Vec::len) == Some(2)).then_some(trace)
    });

    // The hostile bodies are made from exports of another trace: a changed byte may still
    // leave a valid export, which the collector rightly keeps, but not one of this trace.
    let template = valid_exports(now, fastrand::u128(1..).to_be_bytes());
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut http_cases = Vec::new();
    let mut grpc_cases = Vec::new();
    for i in 0..cases() {
        let (signal, body) = &template[i % 3];
        let mangled = mangled_body(&mut rng, body);
        match rng.u8(..4) {
            0 => {
                let decoded: Option<serde_json::Value> = match *signal {
                    "traces" => ExportTraceServiceRequest::decode(body.as_slice()).ok().and_then(|r| serde_json::to_value(r).ok()),
                    "logs" => ExportLogsServiceRequest::decode(body.as_slice()).ok().and_then(|r| serde_json::to_value(r).ok()),
                    _ => ExportMetricsServiceRequest::decode(body.as_slice()).ok().and_then(|r| serde_json::to_value(r).ok()),
                };
                let mut json = decoded.map(|v| v.to_string().into_bytes()).unwrap_or_default();
                mangle(&mut rng, &mut json, 1);
                http_cases.push(otlp_http_case(signal, "application/json", &json, false));
            }
            1 => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = gz.write_all(&mangled);
                let mut compressed = gz.finish().unwrap_or_default();
                if rng.bool() {
                    mangle(&mut rng, &mut compressed, 1);
                }
                http_cases.push(otlp_http_case(signal, "application/x-protobuf", &compressed, true));
            }
            2 => http_cases.push(otlp_http_case(signal, "application/x-protobuf", &mangled, false)),
            _ => grpc_cases.push(otlp_grpc_case(&mut rng, signal, &mangled)),
        }
    }
    send_all(collector.http, http_cases, true);
    send_all(collector.grpc, grpc_cases, true);
    // Hostile HTTP itself at each of the collector's ports: the web server, OTLP/HTTP and
    // OTLP/gRPC's HTTP/2.
    for port in [collector.web, collector.http, collector.grpc] {
        let cases: Vec<Vec<u8>> = (0..cases() / 4).map(|i| if i % 2 == 0 { http2_case(&mut rng) } else { http1_case(&mut rng) }).collect();
        send_all(port, cases, true);
    }
    // Values nested far past any recursion limit, in protobuf and in JSON: each is refused
    // whole, and the collector's stack holds. Three levels are taken.
    for (levels, status) in [(3, 200), (50_000, 400)] {
        for (content_type, body) in [("application/x-protobuf", deep_protobuf(levels)), ("application/json", deep_json(levels))] {
            let reply = http(collector.http, "POST", "/v1/traces", &[("content-type", content_type)], &body).expect("answered");
            assert_eq!(reply.status, status, "{content_type}, {levels} levels: {}", reply.body);
        }
    }
    // Queries that nest past what DataFusion's recursion can take (2,000 chained operators
    // once aborted the collector) are refused before they are planned.
    let chained = format!("SELECT 1{}", " + 1".repeat(20_000));
    let negated = format!("SELECT count(*) FROM spans WHERE {}true", "NOT ".repeat(20_000));
    for query in [chained, negated] {
        let reply = collector.sql(&query);
        assert_eq!(reply.status, 400, "{}", reply.body);
    }

    assert!(collector.proc.running(), "the collector stopped (seed {seed}):\n{}", collector.proc.output());
    assert!(!collector.proc.output().contains("panicked"), "the collector panicked (seed {seed}):\n{}", collector.proc.output());
    let after = collector.json(&format!("/api/traces/{trace_hex}"));
    assert_eq!(after["data"][0]["spans"], kept["data"][0]["spans"], "the trace accepted before is unchanged (seed {seed})");
    let logs = collector.logs(&format!("trace_id={trace_hex}"), 1);
    assert!(logs.to_string().contains("seed log line"), "the log record accepted before is still there: {logs}");
    let reply = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/x-protobuf")], &valid[0].1).expect("post");
    assert_eq!(reply.status, 200, "a valid export is still accepted (seed {seed})");
    let sql = collector.sql("SELECT count(*) AS n FROM spans WHERE service = 'hostile-seed'");
    assert_eq!(sql.status, 200, "{}", sql.body);
}

#[test]
fn a_sender_naming_a_new_service_in_every_span_cannot_grow_the_collector_without_bound() {
    let dir = TestDir::new("hostile-edges");
    let collector = CollectorProc::start_with_args(&dir, &["--max-edges", "100"]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    // 300 requests, each from and to services of their own (a request ID in `service.name`):
    // both sides of each hop in one export, so each completes an edge at once.
    let side = |service: String, trace: &str, id: String, parent: &str, kind: u8| {
        serde_json::json!({
            "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": service } }] },
            "scopeSpans": [{ "spans": [{
                "traceId": trace, "spanId": id, "parentSpanId": parent, "name": "GET /", "kind": kind,
                "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1_000_000).to_string(),
                "attributes": [{ "key": "http.response.status_code", "value": { "intValue": "200" } }],
            }] }],
        })
    };
    let mut spans = Vec::new();
    for i in 0..300 {
        let (trace, client) = (format!("{:032x}", i + 1), format!("{:016x}", 2 * i + 1));
        spans.push(side(format!("client-{i}"), &trace, client.clone(), "", 3));
        spans.push(side(format!("server-{i}"), &trace, format!("{:016x}", 2 * i + 2), &client, 2));
    }
    let body = serde_json::json!({ "resourceSpans": spans }).to_string();
    let reply = http(collector.http, "POST", "/v1/traces", &[("content-type", "application/json")], body.as_bytes()).expect("post");
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The first 100 edges are kept; the other 200 requests are counted, not kept.
    let metrics = wait_for("the overflow counted", Duration::from_secs(10), || {
        let metrics = get(collector.web, "/metrics").body;
        (prom_sum(&metrics, "meshlens_collector_edge_overflow_total", &[]) == 200.0).then_some(metrics)
    });
    assert_eq!(prom_sum(&metrics, "meshlens_collector_stored", &[("kind", "edges")]), 100.0);
    assert_eq!(prom_sum(&metrics, "meshlens_requests_total", &[]), 100.0, "per-edge series only for the kept edges");
    let topology = collector.json("/api/v1/topology?window=5m");
    assert_eq!(topology["edges"].as_array().map(Vec::len), Some(100), "{topology}");
    // The spans themselves are all stored.
    let rows = collector.sql_rows("SELECT count(*) FROM spans");
    assert_eq!(rows, [serde_json::json!([600])]);
}
