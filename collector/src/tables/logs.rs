//! Writes log records into the `logs` table's columns ([`super::schema::LOGS`]).

use datafusion::arrow::{
    array::{
        ArrayBuilder, FixedSizeBinaryBuilder, Int64Builder, StringDictionaryBuilder, TimestampNanosecondBuilder,
    },
    datatypes::Int32Type,
};

use super::{
    columnar::{NextBatch, RowWriter, column_builders, dict_like, with_headroom},
    packed::TextPacker,
    spans::signed,
};
use super::json::{ResourceJson, write_attributes};
use crate::model::{LogRecord, attr};
use meshlens_common::ids::{SpanId, TraceId};

type Dict = StringDictionaryBuilder<Int32Type>;

/// The builders of the `logs` table.
pub struct LogRows {
    time: TimestampNanosecondBuilder,
    service: Dict,
    severity_number: Int64Builder,
    severity: Dict,
    /// Packed as they are written, as the `spans` attributes ([`TextPacker`]).
    body: TextPacker,
    /// IDs are written as bytes, as in `spans` (the column reads as hex text).
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    event_name: Dict,
    attributes: TextPacker,
    resource: Dict,
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
            body: TextPacker::default(),
            trace_id: FixedSizeBinaryBuilder::new(TraceId::LEN as i32),
            span_id: FixedSizeBinaryBuilder::new(SpanId::LEN as i32),
            event_name: Dict::new(),
            attributes: TextPacker::default(),
            resource: Dict::new(),
            resource_json: ResourceJson::default(),
        }
    }
}

impl NextBatch for LogRows {
    fn next_batch(&self) -> Self {
        let rows = with_headroom(ArrayBuilder::len(&self.time));
        Self {
            time: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            service: dict_like(&self.service),
            severity_number: Int64Builder::with_capacity(rows),
            severity: dict_like(&self.severity),
            body: TextPacker::default(),
            trace_id: FixedSizeBinaryBuilder::with_capacity(rows, TraceId::LEN as i32),
            span_id: FixedSizeBinaryBuilder::with_capacity(rows, SpanId::LEN as i32),
            event_name: dict_like(&self.event_name),
            attributes: TextPacker::default(),
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
        // The widths are the builders' own, so these appends cannot fail.
        match log.trace_id {
            Some(id) => {
                let _ = self.trace_id.append_value(id.0);
            }
            None => self.trace_id.append_null(),
        }
        match log.span_id {
            Some(id) => {
                let _ = self.span_id.append_value(id.0);
            }
            None => self.span_id.append_null(),
        }
        self.event_name.append_option(attr(&log.attributes, "event.name").and_then(|v| v.as_str()));
        self.attributes.append_with(|out| write_attributes(out, &log.attributes, |_, _, _| false));
        self.resource.append_value(self.resource_json.of(&log.resource));
        log.time_unix_nanos
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray};

    use super::*;
    use crate::{
        model::{Resource, Value},
        tables::{columnar::Table, packed::Stored, schema},
    };

    fn log(trace: Option<u8>, span: Option<u8>) -> LogRecord {
        LogRecord {
            time_unix_nanos: 5,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: "GET / 200".into(),
            attributes: vec![("event.name".into(), Value::Str("access".into()))],
            trace_id: trace.map(|b| TraceId([b; TraceId::LEN])),
            span_id: span.map(|b| SpanId([b; SpanId::LEN])),
            resource: Arc::new(Resource {
                service: "checkout".into(),
                attributes: Vec::new(),
            }),
        }
    }

    #[test]
    fn log_ids_are_kept_as_bytes_and_read_as_hex_text() {
        let mut table: Table<LogRows> = Table::new(schema::LOGS);
        let logs = [
            log(Some(0xab), Some(0x01)),
            log(None, None),
            log(Some(0x02), None),
        ];
        table.extend(logs.iter(), None);
        let open = table.snapshot()[0].project(None).expect("open copy");
        let trace = open
            .column_by_name("trace_id")
            .expect("col")
            .as_string::<i32>();
        assert_eq!(trace.value(0), "ab".repeat(16));
        assert!(trace.is_null(1));
        assert_eq!(trace.value(2), "02".repeat(16));
        let span = open
            .column_by_name("span_id")
            .expect("col")
            .as_string::<i32>();
        assert_eq!(span.value(0), "01".repeat(8));
        assert!(span.is_null(1) && span.is_null(2));
        assert_eq!(
            open.column_by_name("event_name")
                .expect("col")
                .as_dictionary::<Int32Type>()
                .len(),
            3
        );

        let sealed = table.seal().expect("sealed");
        let unpacked = sealed.batch().expect("unpacked");
        for id in ["trace_id", "span_id"] {
            assert_eq!(
                unpacked.column_by_name(id).expect("col").as_ref(),
                open.column_by_name(id).expect("col").as_ref(),
                "{id}"
            );
            let Some(Stored::Hex(bytes)) = sealed.column_by_name(id) else {
                panic!("{id} kept as bytes")
            };
            assert_eq!(
                bytes.value_data().len(),
                3 * bytes.value_length() as usize,
                "{id}"
            );
        }
    }
}
