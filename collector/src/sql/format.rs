//! Query results as JSON (`{columns, rows, row_count, truncated, elapsed_ms}`) or CSV
//! (RFC 4180 quoting, a header row). Numbers stay numbers in JSON; timestamps are
//! RFC 3339 text; dictionary columns are their text.

use datafusion::arrow::{
    array::{Array, ArrayRef, AsArray},
    compute::cast,
    datatypes::{DataType, Float64Type, Int64Type, UInt64Type},
    error::ArrowError,
    record_batch::RecordBatch,
    util::display::{ArrayFormatter, FormatOptions},
};

use super::QueryResult;

/// A column of a result, ready to print cell by cell.
enum Cells {
    Int(ArrayRef),
    UInt(ArrayRef),
    Float(ArrayRef),
    Bool(ArrayRef),
    Text(ArrayRef),
}

fn cells(array: &ArrayRef) -> Result<Cells, ArrowError> {
    let to = |t: DataType| cast(array, &t);
    Ok(match array.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Cells::Int(to(DataType::Int64)?),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => Cells::UInt(to(DataType::UInt64)?),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Cells::Float(to(DataType::Float64)?),
        DataType::Boolean => Cells::Bool(array.clone()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _) => {
            match to(DataType::Utf8) {
                Ok(text) => Cells::Text(text),
                Err(_) => Cells::Text(formatted(array)?),
            }
        }
        _ => Cells::Text(formatted(array)?),
    })
}

/// Any array as display text (timestamps as RFC 3339).
fn formatted(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let options = FormatOptions::default().with_null("");
    let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
    let values: Vec<Option<String>> =
        (0..array.len()).map(|i| array.is_valid(i).then(|| formatter.value(i).to_string())).collect();
    Ok(std::sync::Arc::new(datafusion::arrow::array::StringArray::from(values)))
}

impl Cells {
    fn json(&self, row: usize) -> serde_json::Value {
        let array = match self {
            Self::Int(a) | Self::UInt(a) | Self::Float(a) | Self::Bool(a) | Self::Text(a) => a,
        };
        if array.is_null(row) {
            return serde_json::Value::Null;
        }
        match self {
            Self::Int(a) => a.as_primitive::<Int64Type>().value(row).into(),
            Self::UInt(a) => a.as_primitive::<UInt64Type>().value(row).into(),
            Self::Float(a) => serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(row))
                .map_or(serde_json::Value::Null, Into::into),
            Self::Bool(a) => a.as_boolean().value(row).into(),
            Self::Text(a) => a.as_string::<i32>().value(row).into(),
        }
    }

    fn text(&self, row: usize) -> String {
        match self.json(row) {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

fn batch_cells(batch: &RecordBatch) -> Result<Vec<Cells>, ArrowError> {
    batch.columns().iter().map(cells).collect()
}

/// The result as a JSON document.
pub fn to_json(result: &QueryResult) -> Result<serde_json::Value, ArrowError> {
    let columns: Vec<serde_json::Value> = result
        .schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let mut rows = Vec::with_capacity(result.rows);
    for batch in &result.batches {
        let cells = batch_cells(batch)?;
        for row in 0..batch.num_rows() {
            rows.push(serde_json::Value::Array(cells.iter().map(|c| c.json(row)).collect()));
        }
    }
    Ok(serde_json::json!({
        "columns": columns,
        "rows": rows,
        "row_count": result.rows,
        "truncated": result.truncated,
        "elapsed_ms": result.elapsed.as_secs_f64() * 1000.0,
    }))
}

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// The result as CSV with a header row.
pub fn to_csv(result: &QueryResult) -> Result<String, ArrowError> {
    let mut out = String::new();
    let names: Vec<&str> = result.schema.fields().iter().map(|f| f.name().as_str()).collect();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(&mut out, name);
    }
    out.push_str("\r\n");
    for batch in &result.batches {
        let cells = batch_cells(batch)?;
        for row in 0..batch.num_rows() {
            for (i, c) in cells.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                csv_field(&mut out, &c.text(row));
            }
            out.push_str("\r\n");
        }
    }
    Ok(out)
}
