//! Headers sent with every export request: a backend's API key or tenant
//! (`authorization`, `x-scope-orgid`, ...), from the `[telemetry] otlp_headers` table and
//! OpenTelemetry's `OTEL_EXPORTER_OTLP_HEADERS` variable (`key=value` pairs joined by commas,
//! values percent-encoded), the table winning a name both set; a signal's own
//! (`[telemetry.logs] headers`, `OTEL_EXPORTER_OTLP_LOGS_HEADERS`) replace them for it.
//!
//! Over OTLP/gRPC they go as metadata, over OTLP/HTTP as headers. The headers the exporter
//! writes itself (the content's type, encoding and length, the transport's) cannot be set:
//! a configuration error in the table, skipped with a warning from the variable. Values are
//! secrets: they never appear in logs or in this type's `Debug`.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::otel_env;

/// The variable OpenTelemetry's SDKs read export headers from.
pub const ENV_VAR: &str = "OTEL_EXPORTER_OTLP_HEADERS";

/// Export headers, by name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExportHeaders(HeaderMap);

impl std::fmt::Debug for ExportHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Why a header cannot be set, if it cannot: the exporter writes it, or HTTP/2 forbids it.
fn reserved(name: &HeaderName) -> Option<&'static str> {
    const OWN: [&str; 6] = ["content-type", "content-encoding", "content-length", "te", "host", "user-agent"];
    const CONNECTION: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];
    let name = name.as_str();
    if OWN.contains(&name) || name.starts_with("grpc-") {
        Some("the exporter sets it")
    } else if CONNECTION.contains(&name) {
        Some("it is the connection's, not the request's")
    } else {
        None
    }
}

/// `name` and `value` as a header, checked.
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("{name:?} is not a header name"))?;
    if let Some(why) = reserved(&header) {
        return Err(format!("{header:?} cannot be set: {why}"));
    }
    // The value is a secret: the error does not repeat it.
    let value = HeaderValue::from_str(value.trim()).map_err(|_| format!("the value of {header:?} is not a header value"))?;
    Ok((header, value))
}

impl ExportHeaders {
    /// A table of headers (the `setting` named in errors), checked.
    pub fn from_table(setting: &str, table: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in table {
            let (name, value) = header(name, value).map_err(|e| format!("{setting}: {e}"))?;
            headers.insert(name, value);
        }
        Ok(Self(headers))
    }

    /// Adds the headers of the variable `var`'s `value` (`OTEL_EXPORTER_OTLP_HEADERS`, or a
    /// signal's) the table does not name: what was left out, and why, for the log. A
    /// variable that does not parse is ignored whole, as OpenTelemetry's SDKs ignore it.
    pub fn add_environment(&mut self, var: &str, value: &str) -> Vec<String> {
        // The values are secrets: a list that does not parse is not quoted.
        otel_env::add_list(var, value, otel_env::Quote::No, |name, value| {
            let (name, value) = header(&name, &value).map_err(|e| format!("{var}: skipped, {e}"))?;
            self.0.entry(name).or_insert(value);
            Ok(())
        })
    }

    /// The headers.
    pub fn map(&self) -> &HeaderMap {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn listed(headers: &ExportHeaders) -> Vec<(String, String)> {
        headers.map().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())).collect()
    }

    #[test]
    fn the_table_sets_headers_but_not_the_exporters_own_and_the_variable_adds_what_it_does_not_name() {
        let set = table(&[("Authorization", "Bearer s3cret"), ("x-scope-orgid", "shop")]);
        let mut headers = ExportHeaders::from_table("telemetry.otlp_headers", &set).expect("valid");
        let skipped = headers.add_environment(ENV_VAR, "x-scope-orgid=other, x-tenant=east%20side,content-type=text/plain,bad name=1");
        assert_eq!(
            listed(&headers),
            [("authorization", "Bearer s3cret"), ("x-scope-orgid", "shop"), ("x-tenant", "east side")].map(|(k, v)| (k.into(), v.into())),
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("content-type") && skipped[1].contains("bad name"), "{skipped:?}");
        for (name, value) in [("content-type", "x"), ("grpc-timeout", "1S"), ("connection", "close"), ("x a", "1"), ("x-key", "a\nb")] {
            let error = ExportHeaders::from_table("telemetry.otlp_headers", &table(&[(name, value)])).expect_err("refused");
            assert!(error.starts_with("telemetry.otlp_headers: ") && !error.contains("a\nb"), "{error}");
        }
        assert_eq!(format!("{headers:?}"), r#"{"authorization", "x-scope-orgid", "x-tenant"}"#, "no value in Debug");
    }

    #[test]
    fn a_variable_that_does_not_parse_is_ignored_whole_without_repeating_it() {
        let mut headers = ExportHeaders::default();
        let skipped = headers.add_environment(ENV_VAR, "authorization=Bearer%zzs3cret");
        assert!(headers.map().is_empty());
        assert!(skipped.len() == 1 && !skipped[0].contains("s3cret"), "{skipped:?}");
    }
}
