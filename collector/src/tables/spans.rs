//! Writes spans into the `spans` table's columns ([`super::schema::SPANS`]): the attributes
//! queries filter on most get their own (dictionary-encoded) columns; the rest stay together
//! as one JSON object.

use datafusion::arrow::{
    array::{Int64Builder, StringBuilder, StringDictionaryBuilder, TimestampNanosecondBuilder},
    datatypes::Int32Type,
};
use meshlens_common::semconv;

use super::columnar::{RowWriter, column_builders};
use crate::model::{Span, StatusCode, Value, attributes_json};

type Dict = StringDictionaryBuilder<Int32Type>;

/// Span attributes that have their own column.
const COLUMN_ATTRIBUTES: &[&str] = &[
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "peer.service",
    semconv::SOURCE_KEYS.workload,
    semconv::SOURCE_KEYS.version,
    semconv::SOURCE_KEYS.namespace,
    semconv::DESTINATION_KEYS.service,
    semconv::DESTINATION_KEYS.workload,
    semconv::DESTINATION_KEYS.version,
    semconv::DESTINATION_KEYS.namespace,
    semconv::RESPONSE_FLAGS,
];

/// The builders of the `spans` table.
pub struct SpanRows {
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    service: Dict,
    operation: Dict,
    kind: Dict,
    start_time: TimestampNanosecondBuilder,
    duration_ns: Int64Builder,
    status: Dict,
    status_message: StringBuilder,
    http_method: Dict,
    http_route: Dict,
    http_status_code: Int64Builder,
    peer_service: Dict,
    source_workload: Dict,
    source_version: Dict,
    source_namespace: Dict,
    destination_service: Dict,
    destination_workload: Dict,
    destination_version: Dict,
    destination_namespace: Dict,
    response_flags: Dict,
    attributes: StringBuilder,
    resource: Dict,
    events: StringBuilder,
    scratch: String,
}

column_builders!(SpanRows {
    trace_id, span_id, parent_span_id, service, operation, kind, start_time, duration_ns, status,
    status_message, http_method, http_route, http_status_code, peer_service, source_workload,
    source_version, source_namespace, destination_service, destination_workload,
    destination_version, destination_namespace, response_flags, attributes, resource, events,
});

impl Default for SpanRows {
    fn default() -> Self {
        Self {
            trace_id: StringBuilder::new(),
            span_id: StringBuilder::new(),
            parent_span_id: StringBuilder::new(),
            service: Dict::new(),
            operation: Dict::new(),
            kind: Dict::new(),
            start_time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            duration_ns: Int64Builder::new(),
            status: Dict::new(),
            status_message: StringBuilder::new(),
            http_method: Dict::new(),
            http_route: Dict::new(),
            http_status_code: Int64Builder::new(),
            peer_service: Dict::new(),
            source_workload: Dict::new(),
            source_version: Dict::new(),
            source_namespace: Dict::new(),
            destination_service: Dict::new(),
            destination_workload: Dict::new(),
            destination_version: Dict::new(),
            destination_namespace: Dict::new(),
            response_flags: Dict::new(),
            attributes: StringBuilder::new(),
            resource: Dict::new(),
            events: StringBuilder::new(),
            scratch: String::with_capacity(32),
        }
    }
}

/// Nanoseconds as Arrow's signed timestamp (saturating far in the future).
pub fn signed(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attr_str(key).filter(|s| !s.is_empty())
}

/// The span's peer: `peer.service`, the mesh destination service, or the address a
/// client span called.
fn peer(span: &Span) -> Option<&str> {
    text(span, "peer.service").or_else(|| text(span, semconv::DESTINATION_KEYS.service)).or_else(|| {
        (span.kind == crate::model::SpanKind::Client).then(|| text(span, "server.address")).flatten()
    })
}

/// Events as a JSON array, or `None` when there are none.
fn events_json(span: &Span) -> Option<String> {
    if span.events.is_empty() {
        return None;
    }
    let events: Vec<serde_json::Value> = span
        .events
        .iter()
        .map(|e| {
            let attributes: serde_json::Map<String, serde_json::Value> =
                e.attributes.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect();
            serde_json::json!({ "time_unix_nano": e.time_unix_nanos, "name": e.name, "attributes": attributes })
        })
        .collect();
    Some(serde_json::Value::Array(events).to_string())
}

impl RowWriter<Span> for SpanRows {
    fn append(&mut self, span: &Span) -> u64 {
        self.scratch.clear();
        span.trace_id.push_hex(&mut self.scratch);
        self.trace_id.append_value(&self.scratch);
        self.scratch.clear();
        span.span_id.push_hex(&mut self.scratch);
        self.span_id.append_value(&self.scratch);
        match span.parent_span_id {
            Some(parent) => {
                self.scratch.clear();
                parent.push_hex(&mut self.scratch);
                self.parent_span_id.append_value(&self.scratch);
            }
            None => self.parent_span_id.append_null(),
        }
        self.service.append_value(&**span.service());
        self.operation.append_value(&span.name);
        self.kind.append_value(span.kind.as_str());
        self.start_time.append_value(signed(span.start_unix_nanos));
        self.duration_ns.append_value(signed(span.duration_nanos()));
        self.status.append_value(match span.status {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        });
        self.status_message.append_option(Some(span.status_message.as_str()).filter(|m| !m.is_empty()));
        self.http_method.append_option(text(span, "http.request.method"));
        self.http_route.append_option(text(span, "http.route"));
        self.http_status_code.append_option(span.attr("http.response.status_code").and_then(Value::as_i64));
        self.peer_service.append_option(peer(span));
        self.source_workload.append_option(text(span, semconv::SOURCE_KEYS.workload));
        self.source_version.append_option(text(span, semconv::SOURCE_KEYS.version));
        self.source_namespace.append_option(text(span, semconv::SOURCE_KEYS.namespace));
        self.destination_service.append_option(text(span, semconv::DESTINATION_KEYS.service));
        self.destination_workload.append_option(text(span, semconv::DESTINATION_KEYS.workload));
        self.destination_version.append_option(text(span, semconv::DESTINATION_KEYS.version));
        self.destination_namespace.append_option(text(span, semconv::DESTINATION_KEYS.namespace));
        self.response_flags.append_option(text(span, semconv::RESPONSE_FLAGS));
        self.attributes.append_value(attributes_json(&span.attributes, |k| COLUMN_ATTRIBUTES.contains(&k)));
        self.resource.append_value(attributes_json(&span.resource.attributes, |_| false));
        self.events.append_option(events_json(span));
        span.start_unix_nanos
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};

    use super::*;
    use crate::{
        model::{SpanEvent, SpanKind},
        store::traces::tests::span,
        tables::{columnar::Table, schema},
    };

    #[test]
    fn spans_fill_every_column_in_schema_order() {
        let mut table: Table<SpanRows> = Table::new(schema::schema(schema::SPANS));
        let mut client = (*span(1, 2, Some(1), "frontend", SpanKind::Client, 10, 5)).clone();
        client.attributes.push(("server.address".into(), Value::Str("reviews".into())));
        client.attributes.push(("http.request.method".into(), Value::Str("GET".into())));
        client.attributes.push(("custom".into(), Value::Str("<b>x</b>".into())));
        client.events.push(SpanEvent { time_unix_nanos: 12, name: "retry".into(), attributes: vec![] });
        let root = span(1, 1, None, "frontend", SpanKind::Server, 9, 20);
        table.extend([&*root, &client]);
        let batches = table.snapshot();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column_by_name("trace_id").expect("col").as_string::<i32>().value(0), "01".repeat(16));
        assert!(batch.column_by_name("parent_span_id").expect("col").is_null(0));
        let peer = batch.column_by_name("peer_service").expect("col");
        assert!(peer.is_null(0) && peer.is_valid(1));
        let attrs = batch.column_by_name("attributes").expect("col").as_string::<i32>();
        assert_eq!(attrs.value(1), r#"{"custom":"<b>x</b>","server.address":"reviews"}"#);
        assert!(attrs.value(0).contains("\"http.response.status_code\"").then_some(()).is_none(), "column attributes are not repeated");
        let events = batch.column_by_name("events").expect("col").as_string::<i32>();
        assert!(events.is_null(0) && events.value(1).contains("\"retry\""));
        table.seal();
        assert_eq!(table.snapshot().len(), 1, "sealing moves the open rows, it does not copy them");
        assert_eq!(table.rows(), 2);
    }
}
