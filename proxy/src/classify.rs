//! The one response classifier: decides whether an exchange succeeded.
//!
//! Metrics, spans and access logs all consume this verdict, so they never disagree.
//! A failure is a 5xx status, a non-zero gRPC status, a stream that broke, or an error
//! raised by the sidecar itself (flagged with an Envoy-style [`ResponseFlags`]).

use std::fmt;

use http::HeaderMap;

use crate::body::BodyEnd;

/// Envoy-style response flags: what the sidecar itself observed going wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No route: the destination service is unknown (`NR`).
    pub const NO_ROUTE: Self = Self(1);
    /// Upstream connection failure (`UF`).
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self(1 << 1);
    /// Upstream connection terminated after the request was sent (`UC`).
    pub const UPSTREAM_RESET: Self = Self(1 << 2);
    /// Downstream connection terminated before the response finished (`DC`).
    pub const DOWNSTREAM_TERMINATED: Self = Self(1 << 3);
    /// No healthy upstream (`UH`).
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 4);
    /// Invalid request the sidecar could not forward (`DPE`).
    pub const BAD_REQUEST: Self = Self(1 << 5);
    /// The upstream did not answer in time (`UT`).
    pub const UPSTREAM_TIMEOUT: Self = Self(1 << 6);
    /// An upgraded connection carried nothing for its idle timeout and was closed (`SI`).
    pub const STREAM_IDLE_TIMEOUT: Self = Self(1 << 7);
    /// The upstream's answer broke the HTTP protocol (`UPE`).
    pub const UPSTREAM_PROTOCOL_ERROR: Self = Self(1 << 8);

    const NAMES: [(Self, &'static str); 9] = [
        (Self::NO_ROUTE, "NR"),
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::UPSTREAM_RESET, "UC"),
        (Self::DOWNSTREAM_TERMINATED, "DC"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::BAD_REQUEST, "DPE"),
        (Self::UPSTREAM_TIMEOUT, "UT"),
        (Self::STREAM_IDLE_TIMEOUT, "SI"),
        (Self::UPSTREAM_PROTOCOL_ERROR, "UPE"),
    ];

    /// Envoy's long names of the flags (`%RESPONSE_FLAGS_LONG%`), in [`Self::NAMES`]'s order.
    const LONG_NAMES: [&'static str; 9] = [
        "NoRouteFound",
        "UpstreamConnectionFailure",
        "UpstreamConnectionTermination",
        "DownstreamConnectionTermination",
        "NoHealthyUpstream",
        "DownstreamProtocolError",
        "UpstreamRequestTimeout",
        "StreamIdleTimeout",
        "UpstreamProtocolError",
    ];

    /// No flag set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Both sets of flags.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether all of `other`'s flags are set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl ResponseFlags {
    /// The span event that marks the failure these flags say the sidecar saw, if any
    /// (`upstream_connect_failure`, `timeout`, ...).
    pub fn failure_event(self) -> Option<&'static str> {
        const EVENTS: [(ResponseFlags, &str); 9] = [
            (ResponseFlags::UPSTREAM_CONNECT_FAILURE, "upstream_connect_failure"),
            (ResponseFlags::UPSTREAM_RESET, "upstream_reset"),
            (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, "upstream_protocol_error"),
            (ResponseFlags::UPSTREAM_TIMEOUT, "timeout"),
            (ResponseFlags::NO_ROUTE, "no_route"),
            (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
            (ResponseFlags::STREAM_IDLE_TIMEOUT, "idle_timeout"),
            (ResponseFlags::BAD_REQUEST, "bad_request"),
            (ResponseFlags::DOWNSTREAM_TERMINATED, "downstream_terminated"),
        ];
        EVENTS.iter().find(|(flag, _)| self.contains(*flag)).map(|(_, name)| *name)
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl ResponseFlags {
    /// Hands `piece` the Envoy form a piece at a time: `-` when empty, else the flag names
    /// separated by commas (`UF,DC`).
    fn each_piece(self, mut piece: impl FnMut(&'static str)) {
        if self.is_empty() {
            return piece("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    piece(",");
                }
                piece(name);
                first = false;
            }
        }
    }

    /// Envoy's long form: `-` when empty, else the long names joined by commas
    /// (`UpstreamConnectionFailure,DownstreamConnectionTermination`).
    pub fn long_names(self) -> String {
        if self.is_empty() {
            return "-".into();
        }
        let set = Self::NAMES.iter().zip(Self::LONG_NAMES).filter(|((flag, _), _)| self.contains(*flag));
        set.map(|(_, long)| long).collect::<Vec<_>>().join(",")
    }

    /// The flag Envoy writes as `name` (`UF`, `NR`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(_, n)| *n == name).map(|(flag, _)| *flag)
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Appends the Envoy form (as `Display` writes it) without `core::fmt`: every exported
    /// record carries it.
    pub fn push_to(self, out: &mut String) {
        self.each_piece(|p| out.push_str(p));
    }
}

impl fmt::Display for ResponseFlags {
    /// `-` when empty, else the flags joined by commas (`UF,DC`), as Envoy writes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut result = Ok(());
        self.each_piece(|p| result = result.and_then(|()| f.write_str(p)));
        result
    }
}

/// Success or failure of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The exchange succeeded.
    Success,
    /// The exchange failed.
    Failure,
}

impl Outcome {
    /// `success` or `failure`, the label value used everywhere.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The verdict on one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Success or failure.
    pub outcome: Outcome,
    /// OpenTelemetry `error.type`: the status code, the gRPC status name or the failure kind.
    pub error_type: Option<String>,
}

/// Reads `grpc-status` from headers or trailers.
pub fn grpc_status(map: &HeaderMap) -> Option<i32> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    map.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The canonical name of a gRPC status code.
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

/// Classifies an exchange from its HTTP status, gRPC status, how the body ended and the flags.
pub fn classify(
    status: u16,
    grpc_status: Option<i32>,
    end: BodyEnd,
    flags: ResponseFlags,
) -> Classification {
    let failure = |kind: String| Classification { outcome: Outcome::Failure, error_type: Some(kind) };
    if flags.contains(ResponseFlags::NO_ROUTE) {
        return failure("no_route".into());
    }
    if flags.contains(ResponseFlags::UPSTREAM_CONNECT_FAILURE) {
        return failure("connection_failure".into());
    }
    if flags.contains(ResponseFlags::UPSTREAM_RESET) {
        return failure("upstream_reset".into());
    }
    if flags.contains(ResponseFlags::UPSTREAM_PROTOCOL_ERROR) {
        return failure("upstream_protocol_error".into());
    }
    if flags.contains(ResponseFlags::UPSTREAM_TIMEOUT) {
        return failure("timeout".into());
    }
    if flags.contains(ResponseFlags::STREAM_IDLE_TIMEOUT) {
        return failure("stream_idle_timeout".into());
    }
    if status >= 500 {
        return failure(status.to_string());
    }
    if let Some(code) = grpc_status.filter(|c| *c != 0) {
        return failure(grpc_code_name(code).into());
    }
    match end {
        BodyEnd::Error => failure("stream_error".into()),
        BodyEnd::Dropped => failure("cancelled".into()),
        BodyEnd::Complete if !flags.is_empty() => failure(flags.to_string()),
        BodyEnd::Complete => Classification { outcome: Outcome::Success, error_type: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses() {
        let ok = classify(200, None, BodyEnd::Complete, ResponseFlags::empty());
        assert_eq!(ok.outcome, Outcome::Success);
        let not_found = classify(404, None, BodyEnd::Complete, ResponseFlags::empty());
        assert_eq!(not_found.outcome, Outcome::Success, "4xx is the caller's failure, not the edge's");
        let unavailable = classify(503, None, BodyEnd::Complete, ResponseFlags::empty());
        assert_eq!(unavailable.error_type.as_deref(), Some("503"));
    }

    #[test]
    fn grpc_status_in_trailers_decides() {
        let c = classify(200, Some(14), BodyEnd::Complete, ResponseFlags::empty());
        assert_eq!(c.outcome, Outcome::Failure);
        assert_eq!(c.error_type.as_deref(), Some("UNAVAILABLE"));
        assert_eq!(classify(200, Some(0), BodyEnd::Complete, ResponseFlags::empty()).outcome, Outcome::Success);
    }

    #[test]
    fn broken_streams_and_flags_fail() {
        assert_eq!(classify(200, None, BodyEnd::Dropped, ResponseFlags::empty()).outcome, Outcome::Failure);
        let nr = classify(404, None, BodyEnd::Complete, ResponseFlags::NO_ROUTE);
        assert_eq!(nr.error_type.as_deref(), Some("no_route"));
        for end in [BodyEnd::Error, BodyEnd::Complete] {
            let idle = classify(200, None, end, ResponseFlags::STREAM_IDLE_TIMEOUT);
            assert_eq!(idle.error_type.as_deref(), Some("stream_idle_timeout"), "cut off or closed for idleness");
        }
        assert_eq!((ResponseFlags::UPSTREAM_CONNECT_FAILURE | ResponseFlags::DOWNSTREAM_TERMINATED).to_string(), "UF,DC");
        assert_eq!(ResponseFlags::empty().to_string(), "-");
    }

    #[test]
    fn flags_pushed_read_as_displayed() {
        let all = ResponseFlags::NAMES.iter().fold(ResponseFlags::empty(), |acc, (f, _)| acc | *f);
        for flags in [
            ResponseFlags::empty(),
            ResponseFlags::UPSTREAM_TIMEOUT,
            ResponseFlags::NO_ROUTE | ResponseFlags::UPSTREAM_RESET,
            all,
        ] {
            let mut pushed = String::from("x=");
            flags.push_to(&mut pushed);
            assert_eq!(pushed, format!("x={flags}"));
        }
        assert_eq!(all.to_string().split(',').count(), ResponseFlags::NAMES.len());
    }
}
