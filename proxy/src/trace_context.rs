//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and B3
//! (single `b3` header and multi `X-B3-*` headers).
//!
//! Each side of a sidecar continues the incoming trace (or starts one), gives its own
//! span a fresh span ID, and rewrites the context headers so that the next hop's span
//! becomes its child. Every format is accepted; the sidecar emits the formats it is
//! configured to emit plus any format the request arrived with, so an application that
//! propagates B3 keeps working. `tracestate` passes through untouched with the `traceparent`
//! it came with, and is dropped when there is none to continue (W3C: a `tracestate` without
//! a valid `traceparent` is invalid).

use http::{HeaderMap, HeaderValue, header::HeaderName};
use meshlens_common::hex;

// Header names are built once: a `&str` name is parsed on every lookup.
/// The `traceparent` header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

pub use meshlens_common::ids::{SpanId, TraceId};

/// Parses exactly `2 * N` lower-case hex digits.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 || bytes.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A B3 trace ID: 16 or 32 hex digits (64-bit IDs are left-padded).
fn parse_b3_trace_id(text: &str) -> Option<TraceId> {
    let text = text.trim().to_ascii_lowercase();
    let id = match text.len() {
        32 => parse_hex::<16>(&text)?,
        16 => {
            let low = parse_hex::<8>(&text)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(TraceId(id))
}

fn parse_b3_span_id(text: &str) -> Option<SpanId> {
    parse_hex::<8>(&text.trim().to_ascii_lowercase()).filter(|id| *id != [0; 8]).map(SpanId)
}

/// A wire format of trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// W3C `traceparent` / `tracestate`.
    W3c,
    /// B3 single header (`b3: trace-span-sampled`).
    B3,
    /// B3 multiple headers (`X-B3-TraceId`, ...).
    B3multi,
}

/// A set of formats (emit these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Formats {
    /// W3C.
    pub w3c: bool,
    /// B3 single.
    pub b3: bool,
    /// B3 multi.
    pub b3multi: bool,
}

impl Formats {
    /// Only W3C.
    pub const W3C: Self = Self { w3c: true, b3: false, b3multi: false };

    /// The set of `formats`.
    pub fn of(formats: &[Format]) -> Self {
        let has = |f| formats.contains(&f);
        Self { w3c: has(Format::W3c), b3: has(Format::B3), b3multi: has(Format::B3multi) }
    }

    fn union(self, other: Self) -> Self {
        Self { w3c: self.w3c || other.w3c, b3: self.b3 || other.b3, b3multi: self.b3multi || other.b3multi }
    }
}

/// The caller's context, as read from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// Trace ID.
    pub trace_id: TraceId,
    /// The caller's span.
    pub parent_id: SpanId,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// W3C Trace Context level 2's random flag (`0x02`): the caller says the trace ID's
    /// right 7 bytes are random. B3 does not say.
    pub random: bool,
}

/// W3C trace flags: sampled.
const SAMPLED_FLAG: u8 = 0x01;
/// W3C trace flags (level 2): the trace ID is random.
const RANDOM_FLAG: u8 = 0x02;

/// Parses a W3C `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`; future versions are
/// read by their first four fields.
pub fn parse_traceparent(value: &str) -> Option<Incoming> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || flags.len() != 2 || (version == "00" && parts.next().is_some()) {
        return None;
    }
    parse_hex::<1>(version)?;
    let trace_id = TraceId(parse_hex::<16>(trace)?);
    let parent_id = SpanId(parse_hex::<8>(parent)?);
    let [flags] = parse_hex::<1>(flags)?;
    if trace_id.0 == [0; 16] || parent_id.0 == [0; 8] {
        return None;
    }
    Some(Incoming { trace_id, parent_id, sampled: Some(flags & SAMPLED_FLAG != 0), random: flags & RANDOM_FLAG != 0 })
}

/// Parses a B3 single header: `{trace}-{span}[-{sampled}[-{parent}]]`. A lone `0`, `1` or
/// `d` carries only a decision and no context, which [`extract`] reads.
pub fn parse_b3_single(value: &str) -> Option<Incoming> {
    let mut parts = value.trim().split('-');
    let trace_id = parse_b3_trace_id(parts.next()?)?;
    let parent_id = parse_b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some("1") | Some("d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    Some(Incoming { trace_id, parent_id, sampled, random: false })
}

fn header(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name)?.to_str().ok()
}

/// Parses B3 multiple headers.
pub fn parse_b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let trace_id = parse_b3_trace_id(header(headers, B3_TRACE_ID)?)?;
    let parent_id = parse_b3_span_id(header(headers, B3_SPAN_ID)?)?;
    Some(Incoming { trace_id, parent_id, sampled: b3_multi_sampled(headers), random: false })
}

/// The decision of B3's multiple headers: `X-B3-Flags: 1` (debug) or `X-B3-Sampled`.
fn b3_multi_sampled(headers: &HeaderMap) -> Option<bool> {
    if header(headers, B3_FLAGS).map(str::trim) == Some("1") {
        return Some(true);
    }
    match header(headers, B3_SAMPLED).map(str::trim) {
        Some("1") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        _ => None,
    }
}

/// Whether the caller set B3's debug flag: `d` as the sampling field of `b3` (alone or after
/// the IDs), or `X-B3-Flags: 1`.
fn b3_debug(headers: &HeaderMap) -> bool {
    let single = header(headers, B3).is_some_and(|v| v.trim() == "d" || v.trim().split('-').nth(2) == Some("d"));
    single || header(headers, B3_FLAGS).map(str::trim) == Some("1")
}

/// A sampling decision sent without a trace: B3 allows a caller to say only "sample" or
/// "do not sample" (`b3: 0`, `b3: 1`, `b3: d`, or `X-B3-Sampled` / `X-B3-Flags` without
/// IDs). The trace the sidecar then starts follows that decision instead of its ratio.
fn decision_only(b3: Option<&str>, headers: &HeaderMap) -> (Option<bool>, Formats) {
    let single = match b3.map(str::trim) {
        Some("0") => Some(false),
        Some("1") | Some("d") => Some(true),
        _ => None,
    };
    let multi = single.is_none().then(|| b3_multi_sampled(headers)).flatten();
    (single.or(multi), Formats { w3c: false, b3: single.is_some(), b3multi: multi.is_some() })
}

/// What the caller sent: the first valid context in `headers` (W3C, then B3 single, then
/// B3 multi), else a decision made without one; and the formats it came in.
pub fn extract(headers: &HeaderMap) -> (Caller, Formats) {
    // A repeated `traceparent` is invalid (W3C), whatever its values.
    let mut traceparents = headers.get_all(TRACEPARENT).iter();
    let first = traceparents.next().and_then(|v| v.to_str().ok());
    let w3c = if traceparents.next().is_some() { None } else { first.and_then(parse_traceparent) };
    let b3_value = header(headers, B3);
    let b3 = b3_value.and_then(parse_b3_single);
    let b3multi = parse_b3_multi(headers);
    let seen = Formats { w3c: w3c.is_some(), b3: b3.is_some(), b3multi: b3multi.is_some() };
    if let Some(context) = w3c.or(b3).or(b3multi) {
        return (Caller::Context(context), seen);
    }
    let (decision, seen) = decision_only(b3_value, headers);
    (Caller::Decision(decision), seen)
}

/// What a request brought of its caller's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A trace and the caller's span in it.
    Context(Incoming),
    /// No trace; maybe a sampling decision for the one the sidecar starts.
    Decision(Option<bool>),
}

/// The span context a sidecar works in for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace this request belongs to.
    pub trace_id: TraceId,
    /// This sidecar's span for the request.
    pub span_id: SpanId,
    /// The caller's span, if the request arrived with a valid context.
    pub parent_span_id: Option<SpanId>,
    /// The head sampling decision: the caller's, or the ratio's for a new trace.
    pub sampled: bool,
    /// The formats to write towards the next hop.
    pub emit: Formats,
    /// Whether the trace was continued from a valid `traceparent`, whose `tracestate` is
    /// passed on; any other `tracestate` is dropped.
    pub w3c_parent: bool,
    /// B3's debug flag (`b3: …-d`, `X-B3-Flags: 1`): the caller asked for this trace to be
    /// recorded whatever any sampler says. Sampled, and written on in B3 as it came.
    pub debug: bool,
    /// W3C level 2's random flag: set on a trace the sidecar starts (its IDs are random)
    /// and kept as a `traceparent` caller sent it; unknown, so unset, for a B3 caller's.
    pub random: bool,
}

impl SpanContext {
    /// Continues the trace in `headers` with a new span, or starts one. A caller's decision
    /// is kept (parent-based sampling); without one, `ratio` decides from the trace ID.
    pub fn continue_from(headers: &HeaderMap, ratio: f64, emit: Formats) -> Self {
        let (caller, seen) = extract(headers);
        let emit = emit.union(seen);
        // Only a request that came with B3 can carry its debug flag.
        let debug = (seen.b3 || seen.b3multi) && b3_debug(headers);
        match caller {
            Caller::Context(parent) => Self {
                trace_id: parent.trace_id,
                span_id: SpanId::random(),
                parent_span_id: Some(parent.parent_id),
                sampled: parent.sampled.unwrap_or_else(|| parent.trace_id.within_ratio(ratio)),
                emit,
                // A valid `traceparent` is the context read first.
                w3c_parent: seen.w3c,
                debug,
                random: parent.random,
            },
            Caller::Decision(decision) => {
                let trace_id = TraceId::random();
                let sampled = decision.unwrap_or_else(|| trace_id.within_ratio(ratio));
                Self { trace_id, span_id: SpanId::random(), parent_span_id: None, sampled, emit, w3c_parent: false, debug, random: true }
            }
        }
    }

    /// The `tracestate` this span carries in its record: the one the caller sent with the
    /// `traceparent` it continues (its header fields joined by commas, as RFC 9110 combines
    /// them), else none. A combined value over [`MAX_TRACE_STATE`] bytes, or one W3C Trace
    /// Context's grammar does not allow, is not recorded (as OpenTelemetry's SDKs drop it);
    /// the header itself goes on untouched.
    pub fn trace_state(&self, headers: &HeaderMap) -> Option<String> {
        if !self.w3c_parent {
            return None;
        }
        let mut joined = String::new();
        for value in headers.get_all(TRACESTATE) {
            let value = value.to_str().ok()?.trim();
            if value.is_empty() {
                continue;
            }
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(value);
            if joined.len() > MAX_TRACE_STATE {
                return None;
            }
        }
        (!joined.is_empty() && valid_trace_state(&joined)).then_some(joined)
    }

    /// The trace ID as B3 writes it: 16 hex digits when its upper half is zero (a 64-bit
    /// trace, as a B3 caller may have sent it), else 32.
    fn b3_trace_id(&self) -> ([u8; 32], usize) {
        let mut text = [b'0'; 32];
        hex::encode_into(&self.trace_id.0, &mut text);
        let skip = if self.trace_id.0[..8] == [0; 8] { 16 } else { 0 };
        (text, skip)
    }

    /// The W3C trace flags of this span: sampled (`0x01`) and random (`0x02`), the others
    /// unset. OTLP's span and log-record `flags` carry them in their low byte.
    pub fn trace_flags(&self) -> u8 {
        (if self.sampled { SAMPLED_FLAG } else { 0 }) | (if self.random { RANDOM_FLAG } else { 0 })
    }

    /// The `traceparent` value that makes the next hop's span a child of this one.
    pub fn traceparent(&self) -> HeaderValue {
        // 00-<32 digits>-<16 digits>-<flags>
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex::encode_into(&self.trace_id.0, &mut text[3..35]);
        hex::encode_into(&self.span_id.0, &mut text[36..52]);
        hex::encode_into(&[self.trace_flags()], &mut text[53..55]);
        header_value(&text)
    }

    /// Rewrites the context headers in `headers` for the next hop.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let sampled = if self.sampled { "1" } else { "0" };
        if self.emit.w3c {
            headers.insert(TRACEPARENT, self.traceparent());
        }
        if !self.w3c_parent {
            headers.remove(TRACESTATE);
        }
        let (trace_id, skip) = self.b3_trace_id();
        if self.emit.b3 {
            // <32 or 16 digits>-<16 digits>-<sampled, or d>
            let mut text = *b"00000000000000000000000000000000-0000000000000000-0";
            text[..32].copy_from_slice(&trace_id);
            hex::encode_into(&self.span_id.0, &mut text[33..49]);
            text[50] = if self.debug { b'd' } else { sampled.as_bytes()[0] };
            headers.insert(B3, header_value(&text[skip..]));
        }
        if self.emit.b3multi {
            headers.insert(B3_TRACE_ID, header_value(&trace_id[skip..]));
            headers.insert(B3_SPAN_ID, header_value(self.span_id.hex().as_str().as_bytes()));
            // Debug implies sampled: B3 sends `X-B3-Flags: 1` instead of `X-B3-Sampled`.
            if self.debug {
                headers.insert(B3_FLAGS, HeaderValue::from_static("1"));
                headers.remove(B3_SAMPLED);
            } else {
                headers.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
                headers.remove(B3_FLAGS);
            }
            match self.parent_span_id {
                Some(p) => headers.insert(B3_PARENT_SPAN_ID, header_value(p.hex().as_str().as_bytes())),
                None => headers.remove(B3_PARENT_SPAN_ID),
            };
        }
    }
}

/// The longest combined `tracestate` a span records: the 512 characters W3C Trace Context
/// asks every participant to propagate.
pub const MAX_TRACE_STATE: usize = 512;

/// Whether `list` is a `tracestate` W3C Trace Context allows: at most 32 `key=value`
/// members between commas (empty ones and spaces or tabs around them aside); a key in
/// lower case, `vendor` or `tenant@vendor`; a value of 1 to 256 printable ASCII characters
/// or spaces, no `,` or `=` (spaces at its end are the list's, not the value's).
fn valid_trace_state(list: &str) -> bool {
    let extra = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/');
    // A first character and up to `rest` more.
    let part = |s: &[u8], first: fn(u8) -> bool, rest: usize| {
        s.first().is_some_and(|c| first(*c)) && s.len() <= rest + 1 && s[1..].iter().all(|c| extra(*c))
    };
    let key = |k: &str| match k.split_once('@') {
        None => part(k.as_bytes(), |c| c.is_ascii_lowercase(), 255),
        Some((tenant, system)) => {
            part(tenant.as_bytes(), |c| c.is_ascii_lowercase() || c.is_ascii_digit(), 240)
                && part(system.as_bytes(), |c| c.is_ascii_lowercase(), 13)
        }
    };
    let value = |v: &str| {
        (1..=256).contains(&v.len()) && v.bytes().all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
    };
    let members = list.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty());
    let mut count = 0;
    for member in members {
        count += 1;
        let valid = member.split_once('=').is_some_and(|(k, v)| key(k) && value(v));
        if !valid || count > 32 {
            return false;
        }
    }
    true
}

/// The `x-request-id` header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A new random UUID (version 4), as its 36 characters of text.
pub fn uuid_v4() -> [u8; 36] {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = 0x40 | (b[6] & 0x0f); // version 4
    b[8] = 0x80 | (b[8] & 0x3f); // RFC 4122 variant
    let mut text = [b'-'; 36];
    for (bytes, at) in [(&b[..4], 0), (&b[4..6], 9), (&b[6..8], 14), (&b[8..10], 19), (&b[10..], 24)] {
        hex::encode_into(bytes, &mut text[at..at + 2 * bytes.len()]);
    }
    text
}

/// Returns the request's `x-request-id`, first setting a new one (UUID v4) if it has none.
pub fn ensure_request_id(headers: &mut HeaderMap) -> String {
    if let Some(id) = header(headers, REQUEST_ID).filter(|v| !v.is_empty()) {
        return id.to_owned();
    }
    let value = header_value(&uuid_v4());
    let id = value.to_str().unwrap_or_default().to_owned();
    headers.insert(REQUEST_ID, value);
    id
}

/// A header value from text known to be valid (hex digits and dashes).
fn header_value(text: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("ascii"));
        }
        h
    }

    #[test]
    fn the_random_flag_is_set_on_new_traces_and_kept_as_a_caller_sent_it() {
        let flags = |h: &HeaderMap| h.get(TRACEPARENT).and_then(|v| v.to_str().ok()).map(|v| v[53..].to_owned());
        let mut new = HeaderMap::new();
        SpanContext::continue_from(&new.clone(), 1.0, Formats::W3C).inject(&mut new);
        assert_eq!(flags(&new).as_deref(), Some("03"), "sampled, and the sidecar's trace IDs are random");
        for (sent, kept) in [("00", "00"), ("01", "01"), ("02", "02"), ("03", "03"), ("ff", "03")] {
            let mut h = headers(&[("traceparent", &format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{sent}"))]);
            SpanContext::continue_from(&h, 1.0, Formats::W3C).inject(&mut h);
            assert_eq!(flags(&h).as_deref(), Some(kept), "{sent}: flags not defined are not passed on");
        }
        let mut b3 = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        SpanContext::continue_from(&b3, 1.0, Formats::W3C).inject(&mut b3);
        assert_eq!(flags(&b3).as_deref(), Some("01"), "B3 does not say its trace ID is random");
    }

    #[test]
    fn parses_the_w3c_example() {
        let tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(tp.sampled, Some(true));
    }

    #[test]
    fn rejects_invalid_traceparents() {
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
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_b3_single_and_multi() {
        let one = parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").expect("valid");
        assert_eq!(one.trace_id.to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!((one.parent_id.to_string().as_str(), one.sampled), ("e457b5a2e4d86bd1", Some(true)));
        let short = parse_b3_single("a3ce929d0e0e4736-00f067aa0ba902b7-d").expect("64-bit trace id");
        assert_eq!(short.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(parse_b3_single("0"), None, "a bare decision carries no context");
        let multi = parse_b3_multi(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]))
        .expect("valid");
        assert_eq!(multi.sampled, Some(false));
    }

    #[test]
    fn continuing_links_parent_keeps_decision_and_reemits_seen_formats() {
        let incoming = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0")]);
        let ctx = SpanContext::continue_from(&incoming, 1.0, Formats::W3C);
        assert_eq!(ctx.trace_id.to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(ctx.parent_span_id.map(|p| p.to_string()).as_deref(), Some("e457b5a2e4d86bd1"));
        assert!(!ctx.sampled, "the caller's decision wins over the ratio");
        let mut out = incoming.clone();
        ctx.inject(&mut out);
        let b3 = out.get("b3").and_then(|v| v.to_str().ok()).expect("b3 re-emitted");
        assert_eq!(b3, format!("{}-{}-0", ctx.trace_id, ctx.span_id));
        let child = SpanContext::continue_from(&out, 1.0, Formats::W3C);
        assert_eq!((child.trace_id, child.parent_span_id), (ctx.trace_id, Some(ctx.span_id)));
    }

    #[test]
    fn a_decision_without_a_trace_decides_the_new_trace() {
        for (pairs, sampled, b3, b3multi) in [
            (&[("b3", "0")][..], false, true, false),
            (&[("b3", "1")][..], true, true, false),
            (&[("b3", "d")][..], true, true, false),
            (&[("x-b3-sampled", "0")][..], false, false, true),
            (&[("x-b3-sampled", "true")][..], true, false, true),
            (&[("x-b3-flags", "1")][..], true, false, true),
        ] {
            let incoming = headers(pairs);
            let ratio = if sampled { 0.0 } else { 1.0 };
            let ctx = SpanContext::continue_from(&incoming, ratio, Formats::W3C);
            assert_eq!((ctx.sampled, ctx.parent_span_id), (sampled, None), "{pairs:?}");
            assert_eq!((ctx.emit.b3, ctx.emit.b3multi), (b3, b3multi), "{pairs:?}: the caller's format is written on");
            let mut out = incoming.clone();
            ctx.inject(&mut out);
            let next = SpanContext::continue_from(&out, 1.0 - ratio, Formats::W3C);
            assert_eq!((next.trace_id, next.sampled), (ctx.trace_id, sampled), "{pairs:?}: the next hop keeps it");
        }
        let ctx = SpanContext::continue_from(&headers(&[("b3", "2")]), 1.0, Formats::W3C);
        assert!(ctx.sampled && !ctx.emit.b3, "an unreadable b3 is ignored");
        let both = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("b3", "0")]);
        assert!(SpanContext::continue_from(&both, 0.0, Formats::W3C).sampled, "a full context wins over a bare decision");
    }

    #[test]
    fn tracestate_goes_on_only_with_the_traceparent_it_came_with() {
        let traceparent = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let b3 = ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
        let state = ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        let invalid = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01");
        for (pairs, kept) in [
            (&[traceparent, state][..], true),
            (&[traceparent, b3, state][..], true),
            (&[state][..], false),
            (&[b3, state][..], false),
            (&[invalid, state][..], false),
        ] {
            let mut h = headers(pairs);
            let ctx = SpanContext::continue_from(&h, 1.0, Formats::W3C);
            ctx.inject(&mut h);
            let out = h.get("tracestate").and_then(|v| v.to_str().ok()).map(str::to_owned);
            assert_eq!(out.as_deref(), kept.then_some(state.1), "{pairs:?}");
            assert_eq!(ctx.trace_state(&h).as_deref(), kept.then_some(state.1), "{pairs:?}: the span records what goes on");
            let retried = SpanContext { span_id: SpanId::random(), parent_span_id: Some(ctx.span_id), ..ctx };
            retried.inject(&mut h);
            assert_eq!(h.get("tracestate").and_then(|v| v.to_str().ok()), out.as_deref(), "{pairs:?}: an attempt keeps it too");
        }
    }

    #[test]
    fn a_spans_trace_state_joins_the_callers_fields_and_skips_one_too_long() {
        let mut h = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        for value in ["rojo=00f067aa0ba902b7", " ", "congo=t61rcWkgMzE "] {
            h.append(TRACESTATE, HeaderValue::from_static(value));
        }
        let ctx = SpanContext::continue_from(&h, 1.0, Formats::W3C);
        assert_eq!(ctx.trace_state(&h).as_deref(), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        h.append(TRACESTATE, HeaderValue::from_str(&format!("long={}", "v".repeat(MAX_TRACE_STATE))).expect("ascii"));
        assert_eq!(ctx.trace_state(&h), None, "over 512 bytes combined");
        h.remove(TRACESTATE);
        assert_eq!(ctx.trace_state(&h), None, "no tracestate sent");
    }

    #[test]
    fn a_tracestate_w3c_does_not_allow_is_not_recorded_but_goes_on() {
        let valid = ["congo=t61rcWkgMzE", "a@b=c, ,x1=y z", "fw529a3039@dt=ZmY0ZmU5Y2Y", "k= leading space", "a*/_-9=~"];
        let thirty_two = (0..32).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        let too_long_key = format!("{}=v", "k".repeat(257));
        let invalid = ["Congo=1", "a=", "a=b,c", "a=b=c", "1a=b", "a@B=c", "a@b12345678901234=c", "a=b\tc", "a=\u{e9}"];
        for (list, ok) in valid.iter().map(|l| (l.to_string(), true)).chain(invalid.iter().map(|l| (l.to_string(), false))) {
            assert_eq!(valid_trace_state(&list), ok, "{list:?}");
        }
        assert!(valid_trace_state(&thirty_two));
        assert!(!valid_trace_state(&format!("{thirty_two},k32=v")), "33 members");
        assert!(!valid_trace_state(&too_long_key));

        let mut h = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("tracestate", "Rojo=1")]);
        let ctx = SpanContext::continue_from(&h, 1.0, Formats::W3C);
        assert_eq!(ctx.trace_state(&h), None, "not recorded");
        ctx.inject(&mut h);
        assert_eq!(h.get("tracestate").and_then(|v| v.to_str().ok()), Some("Rojo=1"), "passed on as it came");
    }

    #[test]
    fn a_repeated_traceparent_starts_a_new_trace() {
        let mut h = HeaderMap::new();
        for value in ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"] {
            h.append(TRACEPARENT, HeaderValue::from_static(value));
        }
        h.insert("tracestate", HeaderValue::from_static("rojo=00f067aa0ba902b7"));
        let ctx = SpanContext::continue_from(&h, 1.0, Formats::W3C);
        assert_eq!((ctx.parent_span_id, ctx.w3c_parent), (None, false));
        assert_ne!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        ctx.inject(&mut h);
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1, "one traceparent goes on");
        assert!(h.get("tracestate").is_none());
    }

    #[test]
    fn multi_headers_are_rewritten_when_emitted() {
        let mut h = HeaderMap::new();
        let ctx = SpanContext::continue_from(&h, 1.0, Formats::of(&[Format::B3multi]));
        ctx.inject(&mut h);
        assert!(h.get(TRACEPARENT).is_none());
        let read = parse_b3_multi(&h).expect("written");
        assert_eq!((read.trace_id, read.parent_id, read.sampled), (ctx.trace_id, ctx.span_id, Some(true)));
    }

    #[test]
    fn b3_is_written_on_with_the_trace_id_width_and_debug_flag_it_came_with() {
        let b3 = |h: &HeaderMap, name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // A 64-bit trace stays 64-bit in B3 (the traceparent pads it); debug stays debug.
        let mut h = headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")]);
        let ctx = SpanContext::continue_from(&h, 0.0, Formats::W3C);
        assert!(ctx.sampled && ctx.debug);
        ctx.inject(&mut h);
        assert_eq!(b3(&h, "b3"), Some(format!("a3ce929d0e0e4736-{}-d", ctx.span_id)));
        assert_eq!(b3(&h, "traceparent"), Some(format!("00-0000000000000000a3ce929d0e0e4736-{}-01", ctx.span_id)));

        let mut h = headers(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"), ("x-b3-flags", "1")]);
        let ctx = SpanContext::continue_from(&h, 0.0, Formats::W3C);
        assert!(ctx.sampled && ctx.debug);
        ctx.inject(&mut h);
        assert_eq!(b3(&h, "x-b3-traceid").as_deref(), Some("a3ce929d0e0e4736"));
        assert_eq!((b3(&h, "x-b3-flags").as_deref(), b3(&h, "x-b3-sampled")), (Some("1"), None), "debug implies sampled");
        let next = SpanContext::continue_from(&h, 0.0, Formats::W3C);
        assert_eq!((next.trace_id, next.parent_span_id, next.debug), (ctx.trace_id, Some(ctx.span_id), true));

        // A 128-bit trace, not debug.
        let mut h = headers(&[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "1")]);
        let ctx = SpanContext::continue_from(&h, 0.0, Formats::of(&[Format::B3]));
        assert!(!ctx.debug);
        ctx.inject(&mut h);
        assert_eq!(b3(&h, "x-b3-traceid").as_deref(), Some("463ac35c9f6413ad48485a3953bb6124"));
        assert_eq!(b3(&h, "b3"), Some(format!("463ac35c9f6413ad48485a3953bb6124-{}-1", ctx.span_id)));
        assert_eq!((b3(&h, "x-b3-flags"), b3(&h, "x-b3-sampled").as_deref()), (None, Some("1")));
    }

    #[test]
    fn request_ids_are_generated_once_and_kept() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4', "version 4");
        assert!(b"89ab".contains(&id.as_bytes()[19]), "RFC 4122 variant: {id}");
        let dashes: Vec<usize> = id.char_indices().filter(|(_, c)| *c == '-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(ensure_request_id(&mut h), id);
    }
}
