//! The request and response headers and trailers records keep, by name, when the
//! configuration names any: for the stdout access log's `%REQ(…)%`, `%RESP(…)%` and
//! `%TRAILER(…)%` fields, and as OpenTelemetry's
//! `http.request.header.<name>` and `http.response.header.<name>` attributes of spans and
//! access-log records (`[telemetry] capture_request_headers` and `capture_response_headers`;
//! Istio's header custom tags). A record keeps only the named headers, each value sharing the
//! bytes of the header it came from, and nothing at all when none is named.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The headers records keep, each in a slot, and which of them are attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderNames {
    request: Vec<HeaderName>,
    response: Vec<HeaderName>,
    /// Response trailers (gRPC's `grpc-message`, ...).
    trailer: Vec<HeaderName>,
    /// Request slots written as attributes, with their attribute keys.
    request_attributes: Vec<(usize, Box<str>)>,
    /// Response slots written as attributes, with their attribute keys.
    response_attributes: Vec<(usize, Box<str>)>,
}

/// The slot of `name` in `list`, added if new.
fn slot(list: &mut Vec<HeaderName>, name: HeaderName) -> usize {
    list.iter().position(|n| *n == name).unwrap_or_else(|| {
        list.push(name);
        list.len() - 1
    })
}

/// Keeps `names` in `list` and writes each, once, as the attribute `{prefix}{name}`.
fn add_attributes(list: &mut Vec<HeaderName>, attributes: &mut Vec<(usize, Box<str>)>, names: &[HeaderName], prefix: &str) {
    for name in names {
        let slot = slot(list, name.clone());
        if !attributes.iter().any(|(s, _)| *s == slot) {
            attributes.push((slot, format!("{prefix}{name}").into()));
        }
    }
}

impl HeaderNames {
    /// The slot of request header `name`, added if new.
    pub fn request_slot(&mut self, name: HeaderName) -> usize {
        slot(&mut self.request, name)
    }

    /// The slot of response header `name`, added if new.
    pub fn response_slot(&mut self, name: HeaderName) -> usize {
        slot(&mut self.response, name)
    }

    /// The slot of response trailer `name`, added if new.
    pub fn trailer_slot(&mut self, name: HeaderName) -> usize {
        slot(&mut self.trailer, name)
    }

    /// Whether no header or trailer is named.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty() && self.trailer.is_empty()
    }

    /// Adds `request` and `response` headers kept as attributes (`http.request.header.<name>`,
    /// `http.response.header.<name>`, names in lower case as `HeaderName`s are).
    pub fn with_attributes(mut self, request: &[HeaderName], response: &[HeaderName]) -> Self {
        add_attributes(&mut self.request, &mut self.request_attributes, request, "http.request.header.");
        add_attributes(&mut self.response, &mut self.response_attributes, response, "http.response.header.");
        self
    }

    /// What a record keeps of a request's `headers` (none of its response's yet).
    pub fn capture_request(self: &Arc<Self>, headers: &HeaderMap) -> CapturedHeaders {
        CapturedHeaders {
            request: self.request.iter().map(|n| values(headers, n)).collect(),
            response: vec![Vec::new(); self.response.len()],
            trailer: vec![Vec::new(); self.trailer.len()],
            names: self.clone(),
        }
    }
}

/// Every value of header `name`, in order.
fn values(headers: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
    headers.get_all(name).iter().cloned().collect()
}

/// The header values one record keeps, by [`HeaderNames`] slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedHeaders {
    names: Arc<HeaderNames>,
    request: Vec<Vec<HeaderValue>>,
    response: Vec<Vec<HeaderValue>>,
    trailer: Vec<Vec<HeaderValue>>,
}

impl CapturedHeaders {
    /// Adds what the record keeps of its response's `headers`.
    pub fn add_response(&mut self, headers: &HeaderMap) {
        for (slot, name) in self.response.iter_mut().zip(&self.names.response) {
            *slot = values(headers, name);
        }
    }

    /// Adds what the record keeps of its response's `trailers`.
    pub fn add_trailers(&mut self, trailers: &HeaderMap) {
        for (slot, name) in self.trailer.iter_mut().zip(&self.names.trailer) {
            *slot = values(trailers, name);
        }
    }

    /// The first value of the response trailer in `slot`.
    pub fn trailer(&self, slot: usize) -> Option<&HeaderValue> {
        self.trailer.get(slot)?.first()
    }

    /// The first value of the request header in `slot`.
    pub fn request(&self, slot: usize) -> Option<&HeaderValue> {
        self.request.get(slot)?.first()
    }

    /// The first value of the response header in `slot`.
    pub fn response(&self, slot: usize) -> Option<&HeaderValue> {
        self.response.get(slot)?.first()
    }

    /// The headers kept as attributes that were present: their keys and values.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &[HeaderValue])> {
        let request = self.names.request_attributes.iter().map(|(slot, key)| (&**key, self.request.get(*slot)));
        let response = self.names.response_attributes.iter().map(|(slot, key)| (&**key, self.response.get(*slot)));
        request.chain(response).filter_map(|(key, values)| values.filter(|v| !v.is_empty()).map(|v| (key, v.as_slice())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_headers_are_kept_with_every_value_and_attributes_only_for_those_asked() {
        let mut names = HeaderNames::default();
        let printed = names.request_slot(HeaderName::from_static("x-forwarded-for"));
        let names = names.with_attributes(
            &[HeaderName::from_static("x-tenant"), HeaderName::from_static("x-forwarded-for"), HeaderName::from_static("x-tenant")],
            &[HeaderName::from_static("x-cache"), HeaderName::from_static("x-absent")],
        );
        let names = Arc::new(names);
        let mut request = HeaderMap::new();
        request.append("x-tenant", HeaderValue::from_static("acme"));
        request.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        request.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        request.append("x-unnamed", HeaderValue::from_static("not kept"));
        let mut captured = names.capture_request(&request);
        let mut response = HeaderMap::new();
        response.append("x-cache", HeaderValue::from_static("HIT"));
        captured.add_response(&response);
        assert_eq!(captured.trailer(0), None, "no trailer named");

        assert_eq!(captured.request(printed), Some(&HeaderValue::from_static("203.0.113.7")), "the access log's: the first value");
        let attributes: Vec<(&str, Vec<&str>)> =
            captured.attributes().map(|(k, v)| (k, v.iter().map(|v| v.to_str().unwrap_or_default()).collect())).collect();
        assert_eq!(
            attributes,
            [
                ("http.request.header.x-tenant", vec!["acme"]),
                ("http.request.header.x-forwarded-for", vec!["203.0.113.7", "10.0.0.1"]),
                ("http.response.header.x-cache", vec!["HIT"]),
            ],
            "each named once, absent ones left out",
        );
        assert_eq!(captured.request.len(), 2, "one slot per named header");
    }

    #[test]
    fn named_trailers_are_kept_from_the_response_s_end() {
        let mut names = HeaderNames::default();
        let message = names.trailer_slot(HeaderName::from_static("grpc-message"));
        let names = Arc::new(names);
        assert!(!names.is_empty(), "a trailer alone makes records keep headers");
        let mut captured = names.capture_request(&HeaderMap::new());
        assert_eq!(captured.trailer(message), None);
        let mut trailers = HeaderMap::new();
        trailers.append("grpc-status", HeaderValue::from_static("5"));
        trailers.append("grpc-message", HeaderValue::from_static("no such book"));
        captured.add_trailers(&trailers);
        assert_eq!(captured.trailer(message), Some(&HeaderValue::from_static("no such book")));
        assert_eq!(captured.attributes().count(), 0, "trailers are not attributes");
    }
}
