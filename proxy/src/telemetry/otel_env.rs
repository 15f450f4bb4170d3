//! The list format of OpenTelemetry's environment variables `OTEL_RESOURCE_ATTRIBUTES` and
//! `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` members joined by commas, W3C Baggage's
//! format without its properties.

/// `key=value` pairs joined by commas, blanks around each trimmed, values (and keys)
/// percent-decoded; empty members are allowed, as in W3C Baggage.
pub fn parse_list(value: &str) -> Result<Vec<(String, String)>, String> {
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
