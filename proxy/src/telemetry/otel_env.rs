//! What OpenTelemetry's environment variables mean to the sidecar: the list format of
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` (`key=value` members joined by
//! commas, W3C Baggage's format without its properties), and the values of the exporter's
//! (the signal-specific ones too), sampler's and propagators' variables ([`crate::config::RawTelemetry::fill_from_environment`]
//! reads them).

use crate::trace_context::Format;

/// Whether a message about a list may repeat what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    /// Yes: its values are no secret (resource attributes).
    Yes,
    /// No: its values may be secrets (export headers).
    No,
}

/// Adds the pairs of the variable `var`'s list `value` through `add`, which takes a pair or
/// says why it leaves it out; returns what was left out, and why. A list that does not parse
/// is ignored whole, as OpenTelemetry's SDKs ignore it.
pub fn add_list(var: &str, value: &str, quote: Quote, mut add: impl FnMut(String, String) -> Result<(), String>) -> Vec<String> {
    match parse_list(value) {
        Ok(pairs) => pairs.into_iter().filter_map(|(key, value)| add(key, value).err()).collect(),
        Err(error) if quote == Quote::Yes => vec![format!("{var} ignored: {error}")],
        Err(_) => vec![format!("{var} ignored: it is not a list of name=value pairs")],
    }
}

/// `key=value` pairs joined by commas, blanks around each trimmed, values (and keys)
/// percent-decoded; empty members are allowed, as in W3C Baggage.
fn parse_list(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for member in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let Some((key, value)) = member.split_once('=') else {
            return Err(format!("{member:?} is not key=value"));
        };
        let key = percent_decoded(key.trim())?;
        if key.is_empty() {
            return Err(format!("{member:?} has no key"));
        }
        pairs.push((key, percent_decoded(value.trim())?));
    }
    Ok(pairs)
}

/// `text` with its `%XX` escapes decoded; an error for a broken escape or bytes that are not
/// UTF-8.
fn percent_decoded(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| format!("a broken %-escape in {text:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} decodes to bytes that are not UTF-8"))
}

/// The setting of the variable `name`'s `value`, one of `known`; none for a value not
/// known, which `ignored` notes.
pub fn choice<T: Copy>(value: Option<String>, name: &str, known: &[(&str, T)], ignored: &mut Vec<String>) -> Option<T> {
    let value = value?;
    let chosen = known.iter().find(|(text, _)| *text == value).map(|(_, v)| *v);
    if chosen.is_none() {
        let names: Vec<&str> = known.iter().map(|(text, _)| *text).collect();
        ignored.push(format!("{name}={value:?} ignored: the sidecar takes {}", names.join(" or ")));
    }
    chosen
}

/// A signal's endpoint setting from its variables (`signal` is `TRACES`, `LOGS` or
/// `METRICS`): empty (not exported) when `OTEL_<signal>_EXPORTER` is `none`, else
/// `OTEL_EXPORTER_OTLP_<signal>_ENDPOINT`, if set. An exporter the sidecar does not have
/// (`zipkin`, `console`, ...) is noted in `ignored`: the signal goes on as OTLP.
pub fn signal_endpoint(signal: &str, read: &dyn Fn(&str) -> Option<String>, ignored: &mut Vec<String>) -> Option<String> {
    let name = format!("OTEL_{signal}_EXPORTER");
    if let Some(exporters) = read(&name) {
        let exporters: Vec<&str> = exporters.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        if exporters == ["none"] {
            return Some(String::new());
        }
        let others: Vec<&str> = exporters.iter().copied().filter(|e| *e != "otlp").collect();
        if !others.is_empty() {
            ignored.push(format!("{name}: {} ignored: the sidecar exports OTLP (or none)", others.join(", ")));
        }
    }
    read(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
}

/// Notes for the `insecure` variables (`OTEL_EXPORTER_OTLP_INSECURE` and each signal's):
/// the sidecar takes its endpoints' scheme for it, `http://` plain and `https://` TLS.
pub fn insecure_settings(read: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    ["", "TRACES_", "LOGS_", "METRICS_"]
        .into_iter()
        .map(|signal| format!("OTEL_EXPORTER_OTLP_{signal}INSECURE"))
        .filter(|name| read(name).is_some())
        .map(|name| format!("{name} ignored: an endpoint's scheme says it, http:// plain text and https:// TLS"))
        .collect()
}

/// The positive whole number (of `unit`) the variable `name`'s `value` holds, if set; one
/// that is not is noted in `ignored`.
pub fn positive(name: &str, value: Option<String>, unit: &str, ignored: &mut Vec<String>) -> Option<u64> {
    let value = value?;
    let number = value.parse::<u64>().ok().filter(|n| *n > 0);
    if number.is_none() {
        ignored.push(format!("{name}={value:?} ignored: it is a positive number of {unit}"));
    }
    number
}

/// The ratio of new traces `OTEL_TRACES_SAMPLER` (with `OTEL_TRACES_SAMPLER_ARG`) samples.
/// The sidecar's sampler always follows its caller's decision (`parentbased_*`): the
/// samplers that would not are taken as their parent-based forms, and said so. A ratio that
/// is missing or not in 0..=1 is 1, as OpenTelemetry's SDKs have it.
pub fn sampler_ratio(sampler: &str, arg: Option<String>, ignored: &mut Vec<String>) -> Option<f64> {
    let parent_based = sampler.strip_prefix("parentbased_");
    let ratio = match parent_based.unwrap_or(sampler) {
        "always_on" => 1.0,
        "always_off" => 0.0,
        "traceidratio" => match arg.as_deref().map(str::parse::<f64>) {
            Some(Ok(ratio)) if (0.0..=1.0).contains(&ratio) => ratio,
            Some(_) => {
                ignored.push(format!("OTEL_TRACES_SAMPLER_ARG={:?} ignored: a ratio is 0 to 1; 1 taken", arg.unwrap_or_default()));
                1.0
            }
            None => 1.0,
        },
        _ => {
            let known = "parentbased_always_on, _always_off or _traceidratio";
            ignored.push(format!("OTEL_TRACES_SAMPLER={sampler:?} ignored: the sidecar samples {known}"));
            return None;
        }
    };
    if parent_based.is_none() {
        ignored.push(format!("OTEL_TRACES_SAMPLER={sampler:?} taken as parentbased_{sampler}: the sidecar follows its caller's decision"));
    }
    Some(ratio)
}

/// The formats `OTEL_PROPAGATORS` names: `tracecontext`, `b3`, `b3multi`; `baggage` goes on
/// as it came anyway, and `none` writes no format beyond those a request arrived with.
/// Others are noted in `ignored`; a list of none the sidecar knows leaves the default.
pub fn propagators(value: &str, ignored: &mut Vec<String>) -> Option<Vec<Format>> {
    let mut formats = Vec::new();
    let mut none = false;
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "tracecontext" => formats.push(Format::W3c),
            "b3" => formats.push(Format::B3),
            "b3multi" => formats.push(Format::B3multi),
            "baggage" => {}
            "none" => none = true,
            other => ignored.push(format!("OTEL_PROPAGATORS: {other:?} ignored: the sidecar writes tracecontext, b3 and b3multi")),
        }
    }
    (!formats.is_empty() || none).then_some(formats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_trimmed_and_percent_decoded_and_broken_lists_refused() {
        let pairs = parse_list(" a = 1 ,, b=x%20y%2Cz,c=").expect("valid");
        let expected = [("a", "1"), ("b", "x y,z"), ("c", "")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(pairs, expected);
        for broken in ["a=1,oops", "=value", "a=%zz", "a=%e9"] {
            assert!(parse_list(broken).is_err(), "{broken}");
        }
    }
}
