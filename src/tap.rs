//! `meshlens tap`: a sidecar's requests as they finish, read from its admin `/tap`, as
//! `linkerd viz tap` shows a proxy's: one line each (start time, direction, method,
//! authority and path, status, response flags, duration, upstream, trace ID), or the JSON
//! access-log lines as they come with `-o json`. It ends with the tap: after `--limit`
//! requests or `--duration`.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

/// Which sidecar, which of its requests, for how long.
#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The sidecar's admin address (or port), its `[admin] listen`.
    #[arg(long, value_parser = crate::parse_addr)]
    admin: SocketAddr,
    /// Only `inbound` or only `outbound` requests.
    #[arg(long)]
    direction: Option<String>,
    /// Only requests of this method.
    #[arg(long)]
    method: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    path: Option<String>,
    /// Only requests to this authority (`Host`).
    #[arg(long)]
    authority: Option<String>,
    /// Only requests to this service.
    #[arg(long)]
    destination: Option<String>,
    /// Only requests from this workload.
    #[arg(long)]
    source: Option<String>,
    /// Only failed requests (5xx, gRPC errors, resets, timeouts).
    #[arg(long)]
    failures: bool,
    /// Stop after this many requests (at most 10,000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Stop after this long (at most 10m).
    #[arg(long, default_value = "60s")]
    duration: String,
    /// One line per request, or the JSON lines as the sidecar sends them.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: TapOutput,
}

/// How requests are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TapOutput {
    /// One line per request.
    Text,
    /// The sidecar's JSON lines.
    Json,
}

impl TapArgs {
    /// The `/tap` query string.
    fn query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let filters = [
            ("direction", &self.direction),
            ("method", &self.method),
            ("path", &self.path),
            ("authority", &self.authority),
            ("destination", &self.destination),
            ("source", &self.source),
        ];
        for (key, value) in filters {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        if self.failures {
            query.append_pair("failures", "true");
        }
        query.append_pair("limit", &self.limit.to_string()).append_pair("duration", &self.duration).finish()
    }
}

/// Streams the tap to stdout until the sidecar ends it.
pub async fn run(args: TapArgs) -> anyhow::Result<()> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{}/tap?{}", args.admin, args.query());
    let response = client
        .get(url.parse().context("building the URL")?)
        .await
        .with_context(|| format!("cannot reach the sidecar's admin server at {} (see its [admin] listen)", args.admin))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        anyhow::bail!("the sidecar refused the tap ({status}): {}", String::from_utf8_lossy(&text).trim());
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("the tap broke off")?.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            match args.output {
                TapOutput::Json => println!("{line}"),
                TapOutput::Text => println!("{}", text_line(&line)),
            }
        }
    }
    Ok(())
}

/// One request's line: `start direction method authority+path status flags duration ->
/// upstream trace=…`; a note for records the terminal fell behind on.
fn text_line(json: &str) -> String {
    let Ok(r) = serde_json::from_str::<Value>(json) else { return json.to_owned() };
    if let Some(missed) = r["tap_missed"].as_u64() {
        return format!("… {missed} requests missed: this terminal fell behind the sidecar");
    }
    if let Some(reason) = r["tap_end"].as_str() {
        return format!("… ended: {reason}");
    }
    let text = |key: &str| r[key].as_str().unwrap_or("-").to_owned();
    let status = match (r["response_code"].as_u64(), r["grpc_status"].as_i64()) {
        (Some(code), Some(grpc)) => format!("{code} grpc:{grpc}"),
        (Some(code), None) => code.to_string(),
        _ => "-".to_owned(),
    };
    let duration = r["duration_ms"].as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}ms"));
    let authority = r["authority"].as_str().unwrap_or_default();
    format!(
        "{} {:<8} {} {authority}{} {status} {} {duration} -> {} trace={}",
        text("start_time"),
        text("direction"),
        text("method"),
        text("path"),
        text("response_flags"),
        text("upstream_host"),
        text("trace_id"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_as_one_line_and_a_missed_run_as_a_note() {
        let json = r#"{"start_time":"2026-12-07T10:00:00.000Z","direction":"outbound","method":"GET","authority":"shop",
            "path":"/cart","response_code":503,"grpc_status":null,"response_flags":"UF","duration_ms":1.234,
            "upstream_host":"127.0.0.1:9","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;
        assert_eq!(
            text_line(&json.replace('\n', "")),
            "2026-12-07T10:00:00.000Z outbound GET shop/cart 503 UF 1.23ms -> 127.0.0.1:9 trace=4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(text_line(r#"{"tap_missed":7}"#), "… 7 requests missed: this terminal fell behind the sidecar");
        assert_eq!(text_line(r#"{"tap_end":"the sidecar is stopping"}"#), "… ended: the sidecar is stopping");
        assert_eq!(text_line("not json"), "not json");
    }
}
