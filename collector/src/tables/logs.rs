//! Writes log records into the `logs` table's columns ([`super::schema::LOGS`]), and reads
//! the newest of them back for the logs API ([`newest`]).

use datafusion::arrow::{
    array::{
        Array, ArrayBuilder, ArrayRef, AsArray, FixedSizeBinaryBuilder, Int64Builder, StringArray, TimestampNanosecondBuilder,
    },
    compute::cast,
    datatypes::{DataType, TimestampNanosecondType},
    error::ArrowError,
};

use super::{
    Sealed,
    columnar::{NextBatch, RowWriter, column_builders, with_headroom},
    packed::TextPacker,
    spans::signed,
};
use super::json::{ResourceJson, read_attributes};
use crate::model::{Attributes, LogRecord, attr};
use meshlens_common::ids::{SpanId, TraceId};

use super::dict::Dict;

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
            service: Dict::like(&self.service),
            severity_number: Int64Builder::with_capacity(rows),
            severity: Dict::like(&self.severity),
            body: TextPacker::like(&self.body),
            trace_id: FixedSizeBinaryBuilder::with_capacity(rows, TraceId::LEN as i32),
            span_id: FixedSizeBinaryBuilder::with_capacity(rows, SpanId::LEN as i32),
            event_name: Dict::like(&self.event_name),
            attributes: TextPacker::like(&self.attributes),
            resource: Dict::like(&self.resource),
            ..Self::default()
        }
    }
}

impl RowWriter<LogRecord> for LogRows {
    fn append(&mut self, log: &LogRecord) -> u64 {
        self.time.append_value(signed(log.time_unix_nanos));
        self.service.append_value(&log.resource.service);
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
        self.attributes.append_attributes(&log.attributes, |_, _, _| false);
        self.resource.append_value(self.resource_json.of(&log.resource));
        log.time_unix_nanos
    }
}

/// A stored log record, as [`newest`] reads it back (and the logs API shows it, attribute
/// values as text).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredLog {
    /// Unix nanoseconds.
    pub time_unix_nanos: u64,
    /// Producing service.
    pub service: String,
    /// Severity text (empty when unset).
    pub severity: String,
    /// The body (empty when unset).
    pub body: String,
    /// Related trace, hex.
    pub trace_id: Option<String>,
    /// Related span, hex.
    pub span_id: Option<String>,
    /// The attributes.
    #[serde(serialize_with = "values_as_text")]
    pub attributes: Attributes,
}

fn values_as_text<S: serde::Serializer>(attributes: &Attributes, out: S) -> Result<S::Ok, S::Error> {
    out.collect_map(attributes.iter().map(|(key, value)| (&**key, value.to_text())))
}

/// The `logs` columns [`newest`] reads, by position in [`super::schema::LOGS`].
const TIME: usize = 0;
const SERVICE: usize = 1;
const SEVERITY: usize = 3;
const BODY: usize = 4;
const TRACE_ID: usize = 5;
const SPAN_ID: usize = 6;
const ATTRIBUTES: usize = 8;

/// The newest rows of the `logs` table (`parts`, its snapshot, oldest first) from `service`
/// and about `trace` (hex), newest first, at most `limit`. A part's service and trace ID
/// columns are read to find its matching rows; its compressed body and attributes are
/// unpacked only when it holds one, so the newest records of a large table cost about one part.
pub fn newest(parts: &[Sealed], service: Option<&str>, trace: Option<&str>, limit: usize) -> Result<Vec<StoredLog>, ArrowError> {
    let mut out = Vec::new();
    for part in parts.iter().rev() {
        let room = limit.saturating_sub(out.len());
        if room == 0 {
            break;
        }
        // Only the columns a filter needs (none without filters: the time column, for the count).
        let wanted: Vec<usize> = [(SERVICE, service.is_some()), (TRACE_ID, trace.is_some())].iter().filter(|w| w.1).map(|w| w.0).collect();
        let filters = part.project(Some(if wanted.is_empty() { &[TIME] } else { &wanted }))?;
        let column = |index| wanted.iter().position(|&w| w == index).map(|i| text(filters.column(i))).transpose();
        let (services, traces) = (column(SERVICE)?, column(TRACE_ID)?);
        let matches = |values: Option<&StringArray>, wanted: Option<&str>, i: usize| match (values, wanted) {
            (Some(values), Some(wanted)) => values.is_valid(i) && values.value(i) == wanted,
            _ => true,
        };
        let rows: Vec<usize> = (0..filters.num_rows())
            .rev()
            .filter(|&i| matches(services.as_ref(), service, i) && matches(traces.as_ref(), trace, i))
            .take(room)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let batch = part.project(Some(&[TIME, SERVICE, SEVERITY, BODY, TRACE_ID, SPAN_ID, ATTRIBUTES]))?;
        let time = batch
            .column(0)
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(|| ArrowError::SchemaError("the logs table's time column is not a timestamp".into()))?;
        let [services, severities, body, trace_ids, span_ids, attributes] = [1, 2, 3, 4, 5, 6].map(|i| text(batch.column(i)));
        let [services, severities, body, trace_ids, span_ids, attributes] =
            [services?, severities?, body?, trace_ids?, span_ids?, attributes?];
        let value = |column: &StringArray, i: usize| column.is_valid(i).then(|| column.value(i).to_owned());
        out.extend(rows.into_iter().map(|i| StoredLog {
            time_unix_nanos: u64::try_from(time.value(i)).unwrap_or(0),
            service: value(&services, i).unwrap_or_default(),
            severity: value(&severities, i).unwrap_or_default(),
            body: value(&body, i).unwrap_or_default(),
            trace_id: value(&trace_ids, i),
            span_id: value(&span_ids, i),
            attributes: if attributes.is_valid(i) { read_attributes(attributes.value(i)) } else { Attributes::new() },
        }));
    }
    Ok(out)
}

/// A dictionary or plain text column as plain text (an error for any other column).
fn text(column: &ArrayRef) -> Result<StringArray, ArrowError> {
    let plain = cast(column, &DataType::Utf8)?;
    plain.as_string_opt::<i32>().cloned().ok_or_else(|| ArrowError::SchemaError("a logs text column is not text".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::{
        array::{Array, AsArray},
        datatypes::Int32Type,
    };

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

    #[test]
    fn newest_records_are_read_back_newest_first_across_sealed_and_open_rows() {
        let columns = [(TIME, "time"), (SERVICE, "service"), (SEVERITY, "severity"), (BODY, "body"), (TRACE_ID, "trace_id")];
        for (i, name) in columns.into_iter().chain([(SPAN_ID, "span_id"), (ATTRIBUTES, "attributes")]) {
            assert_eq!(schema::LOGS[i].name, name);
        }
        let mut table: Table<LogRows> = Table::new(schema::LOGS);
        let record = |n: u64| {
            let mut l = log(Some((n % 3) as u8), None);
            l.time_unix_nanos = n;
            l.body = format!("request {n}");
            if n.is_multiple_of(2) {
                l.resource = Arc::new(Resource { service: "cart".into(), attributes: Vec::new() });
            }
            l.attributes.push(("http.response.status_code".into(), Value::Int(200 + n as i64)));
            l
        };
        let sealed: Vec<_> = (1..=3).map(record).collect();
        table.extend(sealed.iter(), None);
        assert!(table.seal().is_some());
        let open: Vec<_> = (4..=6).map(record).collect();
        table.extend(open.iter(), None);
        let parts = table.snapshot();
        assert_eq!(parts.iter().map(Sealed::rows).collect::<Vec<_>>(), [3, 3], "the sealed batch and a copy of the open one");

        let bodies = |service, trace: Option<&str>, limit| -> Vec<String> {
            newest(&parts, service, trace, limit).expect("read").into_iter().map(|l| l.body).collect()
        };
        assert_eq!(bodies(None, None, 4), ["request 6", "request 5", "request 4", "request 3"]);
        assert_eq!(bodies(Some("cart"), None, 10), ["request 6", "request 4", "request 2"]);
        assert_eq!(bodies(Some("checkout"), Some(&"00".repeat(16)), 10), ["request 3"]);
        assert_eq!(bodies(None, Some(&"01".repeat(16)), 10), ["request 4", "request 1"]);
        assert!(bodies(Some("nobody"), None, 10).is_empty());
        assert!(bodies(None, None, 0).is_empty());

        let got = newest(&parts, None, None, 1).expect("read").remove(0);
        assert_eq!((got.time_unix_nanos, got.service.as_str(), got.severity.as_str()), (6, "cart", "INFO"));
        assert_eq!((got.trace_id, got.span_id), (Some("00".repeat(16)), None));
        let text: Vec<_> = got.attributes.iter().map(|(k, v)| (k.to_string(), v.to_text())).collect();
        assert_eq!(text, [("event.name".into(), "access".into()), ("http.response.status_code".into(), "206".into())]);
    }
}
