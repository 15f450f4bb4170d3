//! `meshlens sql "SELECT …"`: runs a query through a collector's `POST /api/v1/sql` and
//! prints the rows as a table, JSON or CSV. `--schema-markdown` prints the documented
//! table schemas (the source of `docs/sql.md`).

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value;

use crate::web_client::WebClient;

/// How to print the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlOutput {
    /// Aligned columns.
    Table,
    /// The API's JSON document.
    Json,
    /// CSV with a header row.
    Csv,
}

/// Posts `query` to the collector's SQL API; returns the status and body.
pub async fn post(collector: &WebClient, query: &str, format: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    collector.post_json("/api/v1/sql", serde_json::json!({ "query": query, "format": format }).to_string()).await
}

/// Runs `query` and prints the result.
pub async fn run(collector: &WebClient, query: &str, output: SqlOutput) -> anyhow::Result<()> {
    let format = if output == SqlOutput::Csv { "csv" } else { "json" };
    let (status, body) = post(collector, query, format).await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{message} (HTTP {})", status.as_u16());
    }
    match output {
        SqlOutput::Csv => print!("{}", String::from_utf8_lossy(&body)),
        SqlOutput::Json => println!("{}", String::from_utf8_lossy(&body)),
        SqlOutput::Table => {
            let doc: Value = serde_json::from_slice(&body).context("the collector answered with no JSON")?;
            let header: Vec<&str> = doc["columns"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
            let rows: Vec<Vec<String>> = doc["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|row| {
                    row.as_array()
                        .into_iter()
                        .flatten()
                        .map(|cell| match cell {
                            Value::Null => "NULL".to_owned(),
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect();
            crate::views::print_table(&header, &rows);
            let truncated = if doc["truncated"].as_bool() == Some(true) { " (cut at the row limit)" } else { "" };
            eprintln!("{} rows{truncated} in {:.1} ms", rows.len(), doc["elapsed_ms"].as_f64().unwrap_or(0.0));
        }
    }
    Ok(())
}
