//! Request heads that never became requests, recorded as requests all the same.
//!
//! No layer sees a head hyper could not read (it answers 400, 414 or 431 itself and closes
//! the connection), one the request headers timeout cut off, or one the caller stopped
//! sending half-way and closed on. [`UnreadHeads`] records each as one exchange, as Envoy's
//! access log records a codec error, so the access log and the request metrics count every
//! request a caller began. Neither method nor path was read, so the record has neither
//! (`_OTHER` in OpenTelemetry's attributes and labels, `-` in access-log lines); it has the
//! connection's two addresses and
//!
//! - for a broken head, the status hyper answered, response flag `DPE` and a
//!   `downstream_protocol_error` event saying what was wrong;
//! - for a late head, status 408 (nginx logs so the head it closes the connection on
//!   without an answer) and a `request_headers_timeout` event;
//! - for a head cut off, no status and response flag `DC`.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    body::BodyEnd,
    classify::{self, ResponseFlags},
    trace_context::SpanContext,
};

use super::{RequestRecord, Side, SpanEvent, Telemetry, metrics::unix_nanos};
use crate::stack::ConnectionAddrs;

/// The event of a broken head.
const BROKEN_EVENT: &str = "downstream_protocol_error";

/// The event of a late head.
const LATE_EVENT: &str = "request_headers_timeout";

/// What became of a request head that did not make a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnreadHead {
    /// It broke HTTP; hyper answered `status` (none: it closed without an answer).
    Broken {
        /// The status hyper answered, or 0.
        status: u16,
        /// What was wrong with it.
        reason: String,
    },
    /// It was still not whole when the request headers timeout cut its connection.
    Late {
        /// The request headers timeout.
        after: Duration,
    },
    /// The caller closed its connection in the middle of it.
    CutOff,
}

impl UnreadHead {
    /// What a connection's `error` says of the head it was reading. `head_on_its_way`: a
    /// head had begun and no exchange was in flight ([`crate::connection::Activity`]), since
    /// hyper reports a caller that closes in the middle of a head and in the middle of a
    /// body alike.
    pub fn of_error(error: &(dyn std::error::Error + 'static), head_on_its_way: bool) -> Option<Self> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(error) = e.downcast_ref::<hyper::Error>() {
                return Self::of_hyper_error(error, head_on_its_way);
            }
            cause = e.source();
        }
        None
    }

    fn of_hyper_error(error: &hyper::Error, head_on_its_way: bool) -> Option<Self> {
        if error.is_incomplete_message() {
            return head_on_its_way.then_some(Self::CutOff);
        }
        if !error.is_parse() {
            return None;
        }
        // As hyper's server answers its parse errors; the HTTP/2 preface met in the middle of
        // an HTTP/1.1 connection gets no answer.
        let status = match (error.is_parse_too_large(), error.is_parse_version_h2()) {
            (_, true) => 0,
            (true, _) if error.to_string() == "URI too long" => 414,
            (true, _) => 431,
            (false, _) => 400,
        };
        Some(Self::Broken { status, reason: error.to_string() })
    }
}

/// Records the unread heads of one side's listener.
#[derive(Debug, Clone)]
pub struct UnreadHeads {
    telemetry: Telemetry,
    side: Side,
}

impl UnreadHeads {
    /// Records to `telemetry` the unread heads of `side`'s listener.
    pub fn new(telemetry: Telemetry, side: Side) -> Self {
        Self { telemetry, side }
    }

    /// Records `head`, which came on `connection`, as one exchange that ended now.
    pub fn record(&self, connection: ConnectionAddrs, head: UnreadHead) {
        self.telemetry.record(self.record_of(connection, head));
    }

    fn record_of(&self, connection: ConnectionAddrs, head: UnreadHead) -> RequestRecord {
        let (side, telemetry) = (self.side, &self.telemetry);
        // A trace of its own: the head's trace context, if it had any, was not read.
        let context = SpanContext::continue_from(&http::HeaderMap::new(), telemetry.sampling().ratio, telemetry.propagation());
        let local = telemetry.identity();
        let duration = match head {
            UnreadHead::Late { after } => after,
            UnreadHead::Broken { .. } | UnreadHead::CutOff => Duration::ZERO,
        };
        let start = unix_nanos(SystemTime::now()).saturating_sub(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        let destination_service = match side {
            Side::Inbound => local.service.clone(),
            Side::Outbound => Arc::from("unknown"),
        };
        let mut record = RequestRecord {
            duration,
            peer: Some(connection.peer),
            local: Some(connection.local),
            connection_id: Some(connection.id),
            source: (side == Side::Outbound).then(|| local.clone()),
            destination: (side == Side::Inbound).then(|| local.clone()),
            ..RequestRecord::new(side, context, start, None, destination_service)
        };
        // Envoy's response code details for the first two; `DC` says the third's.
        let (status, flags, details, event, message) = match head {
            UnreadHead::Broken { status, reason } => {
                (status, ResponseFlags::BAD_REQUEST, Some("http1.codec_error"), BROKEN_EVENT, Some(reason))
            }
            UnreadHead::Late { after } => {
                let message = format!("the request head was not whole {after:?} after its first byte");
                (408, ResponseFlags::empty(), Some("request_header_timeout"), LATE_EVENT, Some(message))
            }
            UnreadHead::CutOff => (0, ResponseFlags::DOWNSTREAM_TERMINATED, None, "downstream_terminated", None),
        };
        record.status = status;
        record.flags = flags;
        record.code_details = details;
        record.events.push(SpanEvent { offset: duration, name: event, message });
        record.classification = classify::classify(status, None, BodyEnd::Complete, flags);
        record
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// The error hyper's server gives for `bytes` sent as a connection's first request.
    async fn hyper_error(bytes: &'static [u8]) -> hyper::Error {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream.write_all(bytes).expect("write");
            stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        });
        let (stream, _) = listener.accept().expect("accept");
        stream.set_nonblocking(true).expect("nonblocking");
        let stream = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::from_std(stream).expect("tokio stream"));
        let service = hyper::service::service_fn(|_req| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) });
        let error = hyper::server::conn::http1::Builder::new().serve_connection(stream, service).await.expect_err("a broken head");
        client.join().expect("client");
        error
    }

    #[tokio::test]
    async fn broken_heads_get_the_status_hyper_answered_and_a_head_cut_off_none() {
        let long_uri = Box::leak(format!("GET /{} HTTP/1.1\r\nhost: a\r\n\r\n", "a".repeat(70_000)).into_bytes().into_boxed_slice());
        let headers: String = (0..200).map(|i| format!("x-{i}: a\r\n")).collect();
        let many_headers = Box::leak(format!("GET / HTTP/1.1\r\n{headers}\r\n").into_bytes().into_boxed_slice());
        let cases: [(&'static [u8], u16); 4] = [
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
            (long_uri, 414),
            (many_headers, 431),
        ];
        for (bytes, status) in cases {
            let error = hyper_error(bytes).await;
            match UnreadHead::of_error(&error, true) {
                Some(UnreadHead::Broken { status: got, reason }) => assert_eq!(got, status, "{reason}"),
                other => panic!("{other:?} for {error}, not {status}"),
            }
        }
        let cut = hyper_error(b"GET / HTTP/1.1\r\nhost: a\r\n").await;
        assert_eq!(UnreadHead::of_error(&cut, true), Some(UnreadHead::CutOff));
        assert_eq!(UnreadHead::of_error(&cut, false), None, "a body cut off is its exchange's to record");
        let other: Box<dyn std::error::Error + Send + Sync> = "something else".into();
        assert_eq!(UnreadHead::of_error(other.as_ref(), true), None);
    }

    #[test]
    fn access_logs_say_what_became_of_an_unread_head_and_spans_name_no_path() {
        let unread = UnreadHeads::new(crate::telemetry::tests::telemetry(), Side::Inbound);
        let connection = ConnectionAddrs { peer: ([127, 0, 0, 1], 4711).into(), local: ([127, 0, 0, 1], 15006).into(), id: 7 };
        let format = "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DURATION% \
                      %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %CONNECTION_ID%";
        let text = crate::telemetry::access_log::AccessLogFormat::text(format).expect("valid");
        let broken = unread.record_of(connection, UnreadHead::Broken { status: 431, reason: "message head is too large".into() });
        assert_eq!(text.render(&broken), "- - HTTP/1.1 431 DPE http1.codec_error 0 127.0.0.1:4711 127.0.0.1:15006 7");
        let late = unread.record_of(connection, UnreadHead::Late { after: Duration::from_secs(30) });
        assert_eq!(text.render(&late), "- - HTTP/1.1 408 - request_header_timeout 30000 127.0.0.1:4711 127.0.0.1:15006 7");
        assert_eq!(late.events[0].message.as_deref(), Some("the request head was not whole 30s after its first byte"));
        let cut = unread.record_of(connection, UnreadHead::CutOff);
        assert_eq!(text.render(&cut), "- - HTTP/1.1 0 DC downstream_remote_disconnect 0 127.0.0.1:4711 127.0.0.1:15006 7");
        let attributes = crate::telemetry::otlp::reference::record_attributes(&broken);
        let method = attributes.iter().find(|kv| kv.key == "http.request.method").and_then(|kv| kv.value.clone()?.value);
        assert_eq!(method, Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("_OTHER".into())));
        let keys: Vec<_> = attributes.into_iter().map(|kv| kv.key).collect();
        for absent in ["url.path", "http.request.method_original"] {
            assert!(!keys.iter().any(|k| k == absent), "{absent} in {keys:?}");
        }
        let mut name = String::new();
        crate::telemetry::otlp::write_span_name(&broken, &mut name);
        assert_eq!(name, "HTTP");
    }

    #[test]
    fn an_unread_head_is_one_request_of_the_side_that_got_it() {
        let telemetry = crate::telemetry::tests::telemetry();
        let unread = UnreadHeads::new(telemetry.clone(), Side::Inbound);
        let peer: std::net::SocketAddr = ([127, 0, 0, 1], 4711).into();
        let connection = ConnectionAddrs::accepted(peer, peer);
        unread.record(connection, UnreadHead::Broken { status: 400, reason: "invalid HTTP header parsed".into() });
        unread.record(connection, UnreadHead::Late { after: Duration::from_secs(30) });
        UnreadHeads::new(telemetry.clone(), Side::Outbound).record(connection, UnreadHead::CutOff);
        let mut registry = prometheus_client::registry::Registry::default();
        telemetry.stats().register(&mut registry);
        let mut exposed = String::new();
        prometheus_client::encoding::text::encode(&mut exposed, &registry).expect("encode");
        for line in [
            // The broken head is a failure (`DPE`), the late one a caller's error (a 4xx).
            "meshlens_proxy_requests_total{direction=\"inbound\",classification=\"success\"} 1",
            "meshlens_proxy_requests_total{direction=\"inbound\",classification=\"failure\"} 1",
            "meshlens_proxy_requests_total{direction=\"outbound\",classification=\"failure\"} 1",
        ] {
            assert!(exposed.lines().any(|l| l == line), "{line} in\n{exposed}");
        }
        let mut series: Vec<_> = telemetry.metrics().snapshot().into_iter().map(|(key, _)| (key.side, key.status, key.flags.to_string())).collect();
        series.sort_by_key(|(side, status, _)| (side.index(), *status));
        let expected = [(Side::Inbound, 400, "DPE"), (Side::Inbound, 408, "-"), (Side::Outbound, 0, "DC")];
        assert_eq!(series, expected.map(|(side, status, flags)| (side, status, flags.to_owned())));
    }
}
