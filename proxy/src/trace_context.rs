//! W3C Trace Context (`traceparent`): parsing, formatting and span identifiers.
//!
//! Each side of a sidecar continues the incoming trace (or starts one), gives its own
//! span a fresh span ID, and rewrites `traceparent` so that the next hop's span becomes
//! its child. `tracestate` is passed through untouched.

use std::fmt;

use http::{HeaderMap, HeaderValue};

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

/// A 16-byte trace ID; never all zeroes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span ID; never all zeroes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero trace ID.
    pub fn random() -> Self {
        loop {
            let id = fastrand::u128(..).to_be_bytes();
            if id != [0; 16] {
                return Self(id);
            }
        }
    }
}

impl SpanId {
    /// A random, non-zero span ID.
    pub fn random() -> Self {
        loop {
            let id = fastrand::u64(..).to_be_bytes();
            if id != [0; 8] {
                return Self(id);
            }
        }
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        // Upper-case hex is invalid in traceparent.
        if pair.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The span context a sidecar works in for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace this request belongs to.
    pub trace_id: TraceId,
    /// This sidecar's span for the request.
    pub span_id: SpanId,
    /// The caller's span, if the request arrived with a valid `traceparent`.
    pub parent_span_id: Option<SpanId>,
    /// Whether the trace is sampled (the `01` flag).
    pub sampled: bool,
}

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// Trace ID.
    pub trace_id: TraceId,
    /// The caller's span ID.
    pub parent_id: SpanId,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; future versions are read by their first four fields.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || flags.len() != 2 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = TraceId(parse_hex::<16>(trace)?);
        let parent_id = SpanId(parse_hex::<8>(parent)?);
        let [flags] = parse_hex::<1>(flags)?;
        if trace_id.0 == [0; 16] || parent_id.0 == [0; 8] {
            return None;
        }
        Some(Self { trace_id, parent_id, flags })
    }

    /// Reads the `traceparent` header, if present and valid.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers.get(TRACEPARENT)?.to_str().ok().and_then(Self::parse)
    }
}

impl SpanContext {
    /// Continues the trace in `headers` with a new span, or starts a sampled trace.
    pub fn continue_from(headers: &HeaderMap) -> Self {
        match TraceParent::from_headers(headers) {
            Some(parent) => Self {
                trace_id: parent.trace_id,
                span_id: SpanId::random(),
                parent_span_id: Some(parent.parent_id),
                sampled: parent.flags & 1 == 1,
            },
            None => Self {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                parent_span_id: None,
                sampled: true,
            },
        }
    }

    /// The `traceparent` value that makes the next hop's span a child of this one.
    pub fn to_header(&self) -> HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        );
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Writes [`Self::to_header`] into `headers`, replacing any `traceparent`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.to_header());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn continuing_keeps_trace_and_links_parent() {
        let mut headers = HeaderMap::new();
        let root = SpanContext::continue_from(&headers);
        assert!(root.parent_span_id.is_none() && root.sampled);
        root.inject(&mut headers);
        let child = SpanContext::continue_from(&headers);
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.parent_span_id, Some(root.span_id));
        assert_ne!(child.span_id, root.span_id);
    }
}
