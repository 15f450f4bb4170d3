//! Writes log records into the `logs` table's columns ([`super::schema::LOGS`]).

use datafusion::arrow::{
    array::{ArrayBuilder, Int64Builder, StringBuilder, StringDictionaryBuilder, TimestampNanosecondBuilder},
    datatypes::Int32Type,
};

use super::{
    columnar::{NextBatch, RowWriter, column_builders, dict_like, text_like, with_headroom},
    spans::signed,
};
use super::json::{ResourceJson, write_attributes};
use crate::model::{LogRecord, attr};

type Dict = StringDictionaryBuilder<Int32Type>;

/// The builders of the `logs` table.
pub struct LogRows {
    time: TimestampNanosecondBuilder,
    service: Dict,
    severity_number: Int64Builder,
    severity: Dict,
    body: StringBuilder,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    event_name: Dict,
    attributes: StringBuilder,
    resource: Dict,
    json: Vec<u8>,
    resource_json: ResourceJson,
}

column_builders!(LogRows { time, service, severity_number, severity, body, trace_id, span_id, event_name, attributes, resource });

impl Default for LogRows {
    fn default() -> Self {
        Self {
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            service: Dict::new(),
            severity_number: Int64Builder::new(),
            severity: Dict::new(),
            body: StringBuilder::new(),
            trace_id: StringBuilder::new(),
            span_id: StringBuilder::new(),
            event_name: Dict::new(),
            attributes: StringBuilder::new(),
            resource: Dict::new(),
            json: Vec::with_capacity(256),
            resource_json: ResourceJson::default(),
        }
    }
}

impl NextBatch for LogRows {
    fn next_batch(&self) -> Self {
        let rows = with_headroom(ArrayBuilder::len(&self.body));
        Self {
            time: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            service: dict_like(&self.service),
            severity_number: Int64Builder::with_capacity(rows),
            severity: dict_like(&self.severity),
            body: text_like(&self.body),
            trace_id: text_like(&self.trace_id),
            span_id: text_like(&self.span_id),
            event_name: dict_like(&self.event_name),
            attributes: text_like(&self.attributes),
            resource: dict_like(&self.resource),
            ..Self::default()
        }
    }
}

impl RowWriter<LogRecord> for LogRows {
    fn append(&mut self, log: &LogRecord) -> u64 {
        self.time.append_value(signed(log.time_unix_nanos));
        self.service.append_value(&*log.resource.service);
        self.severity_number.append_value(i64::from(log.severity_number));
        self.severity.append_option(Some(log.severity_text.as_str()).filter(|s| !s.is_empty()));
        self.body.append_option(Some(log.body.as_str()).filter(|s| !s.is_empty()));
        self.trace_id.append_option(log.trace_id.map(|t| t.hex()).as_ref().map(|h| h.as_str()));
        self.span_id.append_option(log.span_id.map(|s| s.hex()).as_ref().map(|h| h.as_str()));
        self.event_name.append_option(attr(&log.attributes, "event.name").and_then(|v| v.as_str()));
        self.json.clear();
        write_attributes(&mut self.json, &log.attributes, |_, _| false);
        self.attributes.append_value(std::str::from_utf8(&self.json).unwrap_or("{}"));
        self.resource.append_value(self.resource_json.of(&log.resource));
        log.time_unix_nanos
    }
}
